from modules import _standin, cmd_args, script_loading
from modules.paths_internal import extensions_dir

parser = cmd_args.parser

# Extensions' preload.py add their flags first (the real host also filters out disabled ones).
script_loading.preload_extensions(extensions_dir, parser)

# The real module parses sys.argv; the stand-in parses the flags the test installed it with.
cmd_opts = parser.parse_args(_standin.ARGV)

import os

from modules.paths_internal import data_path, extensions_builtin_dir, extensions_dir, models_path, script_path  # noqa: F401

# The stand-in has no repositories/: sgm comes from the host's sys.path (the real one in the webui
# tier, tests/fakewebui/sgm otherwise) and the SDXL config lives in tests/fakewebui/configs.
sd_path = script_path

paths = {
    'Stable Diffusion': sd_path,
    'Stable Diffusion XL': os.path.join(sd_path, 'configs'),
}

"""Extension scripts, as in A1111's modules/scripts.py (the parts that run without a UI).

Release differences kept: ``post_sample`` (and ``PostSampleArgs``) from v1.8.0,
``process_before_every_sampling`` from v1.10.0.  Hook errors are reported, not raised, as in the
real ``ScriptRunner``.
"""

import inspect
import os
import sys
from collections import namedtuple

from modules import _standin, errors, paths, script_callbacks, script_loading, timer

AlwaysVisible = object()


if _standin.at_least("1.8.0"):
    class PostSampleArgs:
        def __init__(self, samples):
            self.samples = samples


class PostprocessImageArgs:
    def __init__(self, image):
        self.image = image


class PostprocessBatchListArgs:
    def __init__(self, images):
        self.images = images


class Script:
    name = None
    """script's internal name derived from title"""

    section = None
    """name of UI section that the script's controls will be placed into"""

    filename = None
    args_from = None
    args_to = None
    alwayson = False

    is_txt2img = False
    is_img2img = False
    tabname = None

    group = None
    """A gr.Group component that has all script's UI inside it."""

    create_group = True
    """If False, for alwayson scripts, a group component will not be created."""

    infotext_fields = None
    """if set in ui(), this is a list of pairs of gradio component + text; the text will be used when
    parsing infotext to set the value for the component"""

    paste_field_names = None
    """if set in ui(), this is a list of names of infotext fields; the fields will be sent through the
    various "Send to <X>" buttons when clicked"""

    api_info = None

    on_before_component_elem_id = None

    on_after_component_elem_id = None

    setup_for_ui_only = False
    """If true, the script setup will only be run in Gradio UI, not in API"""

    if _standin.at_least("1.8.0"):
        controls = None
        """A list of controls returned by the ui()."""

    def title(self):
        """this function should return the title of the script. This is what will be displayed in the dropdown menu."""

        raise NotImplementedError()

    def ui(self, is_img2img):
        """this function should create gradio UI elements; the values of the returned components are passed to run() and process()"""

        pass

    def show(self, is_img2img):
        """False: not shown; True: shown if selected in the scripts dropdown; scripts.AlwaysVisible: always shown"""

        return True

    def run(self, p, *args):
        pass

    def setup(self, p, *args):
        pass

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def before_process_batch(self, p, *args, **kwargs):
        pass

    def after_extra_networks_activate(self, p, *args, **kwargs):
        pass

    if _standin.at_least("1.10.0"):
        def process_before_every_sampling(self, p, *args, **kwargs):
            """Similar to process(), called before every sampling. If you use high-res fix, this will be called twice."""

            pass

    def process_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch_list(self, p, pp: PostprocessBatchListArgs, *args, **kwargs):
        pass

    if _standin.at_least("1.8.0"):
        def post_sample(self, p, ps: PostSampleArgs, *args):
            """Called after the samples have been generated, but before they have been decoded by the VAE, if applicable."""

            pass

    def postprocess_image(self, p, pp: PostprocessImageArgs, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def before_component(self, component, **kwargs):
        pass

    def after_component(self, component, **kwargs):
        pass

    def on_before_component(self, callback, *, elem_id):
        if self.on_before_component_elem_id is None:
            self.on_before_component_elem_id = []

        self.on_before_component_elem_id.append((elem_id, callback))

    def on_after_component(self, callback, *, elem_id):
        if self.on_after_component_elem_id is None:
            self.on_after_component_elem_id = []

        self.on_after_component_elem_id.append((elem_id, callback))

    def describe(self):
        """unused"""
        return ""

    def elem_id(self, item_id):
        """helper function to generate id for a HTML element, constructs final id out of script name, tab and user-supplied item_id"""

        need_tabname = self.show(True) == self.show(False)
        tabkind = 'img2img' if self.is_img2img else 'txt2img'
        tabname = f"{tabkind}_" if need_tabname else ""
        title = self.title().lower().replace(' ', '_')

        return f'script_{tabname}{title}_{item_id}'

    def before_hr(self, p, *args):
        pass


current_basedir = paths.script_path


def basedir():
    """returns the base directory for the current script: the extension's directory while its scripts are imported"""
    return current_basedir


ScriptFile = namedtuple("ScriptFile", ["basedir", "filename", "path"])

scripts_data = []
ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])


def list_scripts(scriptdirname, extension, *, include_extensions=True):
    """webui's own scripts are not part of the stand-in; extensions live in <data-dir>/extensions/<name>/"""
    scripts_list = []

    from modules import shared
    if include_extensions and os.path.isdir(paths.extensions_dir) and shared.opts.disable_all_extensions == "none":
        for name in sorted(os.listdir(paths.extensions_dir)):
            if name in shared.opts.disabled_extensions:
                continue
            dirpath = os.path.join(paths.extensions_dir, name, scriptdirname)
            if os.path.isdir(dirpath):
                for filename in sorted(os.listdir(dirpath)):
                    scripts_list.append(ScriptFile(os.path.join(paths.extensions_dir, name), filename, os.path.join(dirpath, filename)))

    return [x for x in scripts_list if os.path.splitext(x.path)[1].lower() == extension and os.path.isfile(x.path)]


def load_scripts():
    global current_basedir
    scripts_data.clear()
    script_callbacks.clear_callbacks()

    scripts_list = list_scripts("scripts", ".py")

    syspath = sys.path

    def register_scripts_from_module(module):
        for script_class in module.__dict__.values():
            if not inspect.isclass(script_class):
                continue

            if issubclass(script_class, Script):
                scripts_data.append(ScriptClassData(script_class, scriptfile.path, scriptfile.basedir, module))

    for scriptfile in scripts_list:
        try:
            if scriptfile.basedir != paths.script_path:
                sys.path = [scriptfile.basedir] + sys.path
            current_basedir = scriptfile.basedir

            script_module = script_loading.load_module(scriptfile.path)
            register_scripts_from_module(script_module)

        except Exception:
            errors.report(f"Error loading script: {scriptfile.filename}", exc_info=True)

        finally:
            sys.path = syspath
            current_basedir = paths.script_path
            timer.startup_timer.record(scriptfile.filename)

    global scripts_txt2img, scripts_img2img

    scripts_txt2img = ScriptRunner()
    scripts_img2img = ScriptRunner()


def wrap_call(func, filename, funcname, *args, default=None, **kwargs):
    try:
        return func(*args, **kwargs)
    except Exception:
        errors.report(f"Error calling: {filename}/{funcname}", exc_info=True)

    return default


class ScriptRunner:
    def __init__(self):
        self.scripts = []
        self.selectable_scripts = []
        self.alwayson_scripts = []
        self.titles = []
        self.title_map = {}
        self.infotext_fields = []
        self.paste_field_names = []
        self.inputs = [None]

    def initialize_scripts(self, is_img2img):
        self.scripts.clear()
        self.alwayson_scripts.clear()
        self.selectable_scripts.clear()

        for script_data in scripts_data:
            try:
                script = script_data.script_class()
            except Exception:
                errors.report(f"Error # failed to initialize Script {script_data.module}: ", exc_info=True)
                continue

            script.filename = script_data.path
            script.is_txt2img = not is_img2img
            script.is_img2img = is_img2img
            script.tabname = "img2img" if is_img2img else "txt2img"

            visibility = script.show(script.is_img2img)

            if visibility == AlwaysVisible:
                self.scripts.append(script)
                self.alwayson_scripts.append(script)
                script.alwayson = True

            elif visibility:
                self.scripts.append(script)
                self.selectable_scripts.append(script)

    def create_script_ui(self, script):
        script.args_from = len(self.inputs)
        script.args_to = len(self.inputs)

        controls = wrap_call(script.ui, script.filename, "ui", script.is_img2img)
        if _standin.at_least("1.8.0"):
            script.controls = controls

        if controls is None:
            return

        script.name = wrap_call(script.title, script.filename, "title", default=script.filename).lower()

        if script.infotext_fields is not None:
            self.infotext_fields += script.infotext_fields

        if script.paste_field_names is not None:
            self.paste_field_names += script.paste_field_names

        self.inputs += controls
        script.args_to = len(self.inputs)

    def prepare_ui(self):
        self.inputs = [None]

    def setup_ui(self):
        """builds every always-on script's controls (the stand-in has no selectable-script dropdown)"""
        all_titles = [wrap_call(script.title, script.filename, "title") or script.filename for script in self.scripts]
        self.title_map = {title.lower(): script for title, script in zip(all_titles, self.scripts)}

        for script in self.alwayson_scripts:
            self.create_script_ui(script)

        return self.inputs

    def _run_hook(self, method_name, p, *before_args, **kwargs):
        for script in self.alwayson_scripts:
            if not hasattr(script, method_name):
                continue
            try:
                script_args = p.script_args[script.args_from:script.args_to]
                getattr(script, method_name)(p, *before_args, *script_args, **kwargs)
            except Exception:
                errors.report(f"Error running {method_name}: {script.filename}", exc_info=True)

    def before_process(self, p):
        self._run_hook('before_process', p)

    def process(self, p):
        self._run_hook('process', p)

    if _standin.at_least("1.10.0"):
        def process_before_every_sampling(self, p, **kwargs):
            self._run_hook('process_before_every_sampling', p, **kwargs)

    def postprocess(self, p, processed):
        self._run_hook('postprocess', p, processed)

    if _standin.at_least("1.8.0"):
        def post_sample(self, p, ps: PostSampleArgs):
            self._run_hook('post_sample', p, ps)

    def postprocess_image(self, p, pp: PostprocessImageArgs):
        self._run_hook('postprocess_image', p, pp)

    def setup_scrips(self, p, *, is_ui=True):
        for script in self.alwayson_scripts:
            if not is_ui and script.setup_for_ui_only:
                continue

            try:
                script_args = p.script_args[script.args_from:script.args_to]
                script.setup(p, *script_args)
            except Exception:
                errors.report(f"Error running setup: {script.filename}", exc_info=True)


scripts_txt2img: ScriptRunner = None
scripts_img2img: ScriptRunner = None

"""Callback registry, as in A1111's modules/script_callbacks.py.

Release differences kept: from v1.9.0 every ``on_*`` takes ``*, name=None`` and callbacks carry a
``name`` (``<extension>/<file>/<category>[/<name>]``); before that ``ScriptCallback`` is a
``(script, callback)`` namedtuple.  ``CFGDenoiserParams`` gains ``denoiser`` in v1.8.0.
"""

import dataclasses
import inspect
import os
from collections import namedtuple
from typing import Any

from modules import _standin, errors

_NAMED = _standin.at_least("1.9.0")


def report_exception(c, job):
    errors.report(f"Error executing callback {job} for {c.script}", exc_info=True)


class ImageSaveParams:
    def __init__(self, image, p, filename, pnginfo):
        self.image = image
        """the PIL image itself"""

        self.p = p
        """p object with processing parameters; either StableDiffusionProcessing or an object with same fields"""

        self.filename = filename
        """name of file that the image would be saved to"""

        self.pnginfo = pnginfo
        """dictionary with parameters for image's PNG info data; infotext will have the key 'parameters'"""


class _CFGDenoiserParams:
    def __init__(self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond, denoiser=None):
        self.x = x
        """Latent image representation in the process of being denoised"""

        self.image_cond = image_cond
        """Conditioning image"""

        self.sigma = sigma
        """Current sigma noise step value"""

        self.sampling_step = sampling_step
        """Current Sampling step number"""

        self.total_sampling_steps = total_sampling_steps
        """Total number of sampling steps planned"""

        self.text_cond = text_cond
        """ Encoder hidden states of text conditioning from prompt"""

        self.text_uncond = text_uncond
        """ Encoder hidden states of text conditioning from negative prompt"""

        self.denoiser = denoiser
        """Current CFGDenoiser object with processing parameters (v1.8.0+)"""


if _standin.at_least("1.8.0"):
    class CFGDenoiserParams(_CFGDenoiserParams):
        def __init__(self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond, denoiser=None):
            super().__init__(x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond, denoiser)
else:
    class CFGDenoiserParams(_CFGDenoiserParams):
        def __init__(self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond):
            super().__init__(x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond)


class CFGDenoisedParams:
    def __init__(self, x, sampling_step, total_sampling_steps, inner_model):
        self.x = x
        """Latent image representation in the process of being denoised"""

        self.sampling_step = sampling_step
        """Current Sampling step number"""

        self.total_sampling_steps = total_sampling_steps
        """Total number of sampling steps planned"""

        self.inner_model = inner_model
        """Inner model reference used for denoising"""


if _NAMED:
    @dataclasses.dataclass
    class ScriptCallback:
        script: str
        callback: Any
        name: str = "unnamed"
else:
    ScriptCallback = namedtuple("ScriptCallback", ["script", "callback"])


callback_map = dict(
    callbacks_app_started=[],
    callbacks_model_loaded=[],
    callbacks_ui_tabs=[],
    callbacks_ui_settings=[],
    callbacks_before_image_saved=[],
    callbacks_image_saved=[],
    callbacks_cfg_denoiser=[],
    callbacks_cfg_denoised=[],
    callbacks_infotext_pasted=[],
    callbacks_script_unloaded=[],
    callbacks_before_ui=[],
    callbacks_list_unets=[],
)


def clear_callbacks():
    for callback_list in callback_map.values():
        callback_list.clear()


def _callbacks(category):
    # v1.9+ sorts by metadata/user priority; the stand-in keeps registration order.
    return list(callback_map['callbacks_' + category])


def app_started_callback(demo, app):
    for c in _callbacks('app_started'):
        try:
            c.callback(demo, app)
        except Exception:
            report_exception(c, 'app_started_callback')


def model_loaded_callback(sd_model):
    for c in _callbacks('model_loaded'):
        try:
            c.callback(sd_model)
        except Exception:
            report_exception(c, 'model_loaded_callback')


def ui_tabs_callback():
    res = []

    for c in _callbacks('ui_tabs'):
        try:
            res += c.callback() or []
        except Exception:
            report_exception(c, 'ui_tabs_callback')

    return res


def ui_settings_callback():
    for c in _callbacks('ui_settings'):
        try:
            c.callback()
        except Exception:
            report_exception(c, 'ui_settings_callback')


def before_image_saved_callback(params: ImageSaveParams):
    for c in _callbacks('before_image_saved'):
        try:
            c.callback(params)
        except Exception:
            report_exception(c, 'before_image_saved_callback')


def image_saved_callback(params: ImageSaveParams):
    for c in _callbacks('image_saved'):
        try:
            c.callback(params)
        except Exception:
            report_exception(c, 'image_saved_callback')


def cfg_denoiser_callback(params: CFGDenoiserParams):
    for c in _callbacks('cfg_denoiser'):
        try:
            c.callback(params)
        except Exception:
            report_exception(c, 'cfg_denoiser_callback')


def cfg_denoised_callback(params: CFGDenoisedParams):
    for c in _callbacks('cfg_denoised'):
        try:
            c.callback(params)
        except Exception:
            report_exception(c, 'cfg_denoised_callback')


def infotext_pasted_callback(infotext: str, params: dict[str, Any]):
    for c in _callbacks('infotext_pasted'):
        try:
            c.callback(infotext, params)
        except Exception:
            report_exception(c, 'infotext_pasted')


def script_unloaded_callback():
    for c in reversed(_callbacks('script_unloaded')):
        try:
            c.callback()
        except Exception:
            report_exception(c, 'script_unloaded')


def before_ui_callback():
    for c in reversed(_callbacks('before_ui')):
        try:
            c.callback()
        except Exception:
            report_exception(c, 'before_ui')


def list_unets_callback():
    res = []

    for c in _callbacks('list_unets'):
        try:
            c.callback(res)
        except Exception:
            report_exception(c, 'list_unets')

    return res


def _caller_filename():
    stack = [x for x in inspect.stack() if x.filename != __file__]
    return stack[0].filename if stack else 'unknown file'


def _extension_name(filename):
    # the real code asks modules.extensions; an extension's scripts live in <extensions>/<name>/scripts/
    parts = os.path.normpath(filename).split(os.sep)
    return parts[-3].lower() if len(parts) >= 3 and parts[-2] == "scripts" else 'base'


if _NAMED:
    def add_callback(callbacks, fun, *, name=None, category='unknown', filename=None):
        if filename is None:
            filename = _caller_filename()

        callback_name = f"{_extension_name(filename)}/{os.path.basename(filename)}/{category}"
        if name is not None:
            callback_name += f'/{name}'

        unique_callback_name = callback_name
        for index in range(1000):
            existing = any(x.name == unique_callback_name for x in callbacks)
            if not existing:
                break

            unique_callback_name = f'{callback_name}-{index+1}'

        callbacks.append(ScriptCallback(filename, fun, unique_callback_name))
else:
    def add_callback(callbacks, fun):
        callbacks.append(ScriptCallback(_caller_filename(), fun))


def remove_current_script_callbacks():
    filename = _caller_filename()
    if filename == 'unknown file':
        return
    for callback_list in callback_map.values():
        for callback_to_remove in [cb for cb in callback_list if cb.script == filename]:
            callback_list.remove(callback_to_remove)


def remove_callbacks_for_function(callback_func):
    for callback_list in callback_map.values():
        for callback_to_remove in [cb for cb in callback_list if cb.callback == callback_func]:
            callback_list.remove(callback_to_remove)


def _registrar(category, doc):
    """``on_<category>`` with the imitated release's signature."""
    callbacks = callback_map['callbacks_' + category]

    if _NAMED:
        def register(callback, *, name=None):
            add_callback(callbacks, callback, name=name, category=category)
    else:
        def register(callback):
            add_callback(callbacks, callback)

    register.__name__ = register.__qualname__ = f"on_{category}"
    register.__doc__ = doc
    return register


on_app_started = _registrar('app_started', "register a function to be called when the webui started, the gradio `Block` component and fastapi `FastAPI` object are passed as the arguments")
on_model_loaded = _registrar('model_loaded', "register a function to be called when the stable diffusion model is created; the model is passed as an argument; this function is also called when the script is reloaded.")
on_ui_tabs = _registrar('ui_tabs', "register a function to be called when the UI is creating new tabs.")
on_ui_settings = _registrar('ui_settings', "register a function to be called before UI settings are populated; add your settings by using shared.opts.add_option(shared.OptionInfo(...))")
on_before_image_saved = _registrar('before_image_saved', "register a function to be called before an image is saved to a file.")
on_image_saved = _registrar('image_saved', "register a function to be called after an image is saved to a file.")
on_cfg_denoiser = _registrar('cfg_denoiser', "register a function to be called in the kdiffussion cfg_denoiser method after building the inner model inputs.")
on_cfg_denoised = _registrar('cfg_denoised', "register a function to be called in the kdiffussion cfg_denoiser method after building the inner model inputs.")
on_infotext_pasted = _registrar('infotext_pasted', "register a function to be called before applying an infotext.")
on_script_unloaded = _registrar('script_unloaded', "register a function to be called before the script is unloaded.")
on_before_ui = _registrar('before_ui', "register a function to be called before the UI is created.")
on_list_unets = _registrar('list_unets', "register a function to be called when UI is making a list of alternative options for unet.")

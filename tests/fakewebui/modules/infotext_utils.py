"""Infotext parsing (v1.8.0+; before that the module was generation_parameters_copypaste)."""

from __future__ import annotations

import sys

from modules import _standin

if not _standin.at_least("1.8.0"):
    raise ModuleNotFoundError("No module named 'modules.infotext_utils'", name="modules.infotext_utils")

from modules import _infotext, shared

sys.modules['modules.generation_parameters_copypaste'] = sys.modules[__name__]  # alias for old name

re_param_code = _infotext.re_param_code
re_param = _infotext.re_param
re_imagesize = _infotext.re_imagesize
paste_fields = _infotext.paste_fields
quote = _infotext.quote
unquote = _infotext.unquote
infotext_to_setting_name_mapping = _infotext.infotext_to_setting_name_mapping
create_override_settings_dict = _infotext.create_override_settings_dict
get_override_settings = _infotext.get_override_settings


def parse_generation_parameters(x: str, skip_fields: list[str] | None = None):
    """parses generation parameters string, the one you see in text field under the picture in UI"""
    if skip_fields is None:
        skip_fields = shared.opts.infotext_skip_pasting

    return _infotext.parse(x, skip_fields)

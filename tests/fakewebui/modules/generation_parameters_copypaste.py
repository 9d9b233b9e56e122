"""Infotext parsing under its pre-v1.8.0 name.

From v1.8.0 the real file is gone and ``modules.infotext_utils`` registers itself under this name
when imported; the stand-in does the same by handing the import over to it.
"""

import sys

from modules import _standin

if _standin.at_least("1.8.0"):
    from modules import infotext_utils

    sys.modules[__name__] = infotext_utils
else:
    from modules import _infotext

    re_param_code = _infotext.re_param_code
    re_param = _infotext.re_param
    re_imagesize = _infotext.re_imagesize
    paste_fields = _infotext.paste_fields
    quote = _infotext.quote
    unquote = _infotext.unquote
    infotext_to_setting_name_mapping = _infotext.infotext_to_setting_name_mapping
    create_override_settings_dict = _infotext.create_override_settings_dict

    def parse_generation_parameters(x: str):
        """parses generation parameters string, the one you see in text field under the picture in UI"""
        return _infotext.parse(x, None)

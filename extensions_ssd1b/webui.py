"""Compatibility: the build target named by webui configs that earlier versions generated (now in ``host.config``).

Those YAML files say ``target: extensions_ssd1b.webui.build_distilled_unet``; configs generated now
name :data:`extensions_ssd1b.host.config.BUILD_TARGET` (and, their text being different, get a
new file name), so this module only keeps an old config a user still has building the same UNet.
"""

from .host.config import build_distilled_unet

__all__ = ["build_distilled_unet"]

"""The extension's settings as data: the host adapter turns each :class:`Setting` into an ``OptionInfo``.

Keys share the prefix ``ssd1b_``.  The section is ``("ssd1b", "SSD-1B")``; from v1.7 on it goes
into the "sd" category (v1.6's settings UI crashes on a 3-tuple section, so the adapter only adds
the category where ``OptionInfo`` accepts ``category_id``).  Nothing here imports torch or the host.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Literal

from . import infotext

log = logging.getLogger(__name__)

KEY_PREFIX = "ssd1b_"
SECTION_ID = "ssd1b"
SECTION_LABEL = "SSD-1B"
CATEGORY_ID = "sd"


class Precision(str, Enum):
    """VAE compute precision.  The values are what the settings store and the infotext shows."""

    AUTO = "Auto"
    FP16 = "fp16"
    BF16 = "bf16"
    FP32 = "fp32"


class NanPolicy(str, Enum):
    OFF = "Off"  # no check at all
    WARN = "Warn"  # check, report, keep the result
    RECOVER = "Recover"  # check, redo in a safer precision, remember what worked


class Scope(str, Enum):
    DISTILLED = "Distilled models only"
    SDXL_FAMILY = "Every SDXL-family model"


VAE_AUTOMATIC = "Automatic"
VAE_TAESD_XL = infotext.VAE_TAESD_XL

Kind = Literal["dropdown", "radio", "checkbox"]


@dataclass(frozen=True)
class Setting:
    key: str
    default: str
    label: str
    info: str  # one line for OptionInfo(...).info(): what the choices do, in the user's words
    kind: Kind
    choices: tuple[str, ...]
    lists_webui_vaes: bool = False  # choices continue with the webui's VAE names (sd_vae.vae_dict)
    infotext: str | None = None  # "Key" whose pasted value sets this setting
    reloads_vae: bool = False  # a change may pick another VAE file: the host reloads the VAE weights

    def choices_with(self, vae_names: Iterable[str] = ()) -> list[str]:
        """The dropdown's choices: fixed ones first, then (for the VAE setting) the webui's VAEs."""
        extra = [name for name in vae_names if name not in self.choices] if self.lists_webui_vaes else []
        return [*self.choices, *extra]

    def accepts(self, value: object) -> bool:
        # A VAE name not listed right now is still accepted: it may be in a folder not yet refreshed,
        # and the VAE resolution names the missing file instead of silently falling back.
        return isinstance(value, str) and (value in self.choices or (self.lists_webui_vaes and bool(value.strip())))


_POLICY_CHOICES = tuple(policy.value for policy in NanPolicy)

SCOPE = Setting(
    key="ssd1b_scope",
    default=Scope.DISTILLED.value,
    label="Apply these VAE and NaN settings to",
    info="distilled = SSD-1B, Segmind-Vega, KOALA and other distilled SDXL UNets; "
    "every SDXL-family model adds SDXL base, refiner and their fine-tunes",
    kind="radio",
    choices=tuple(scope.value for scope in Scope),
    reloads_vae=True,
)
VAE = Setting(
    key="ssd1b_vae",
    default=VAE_AUTOMATIC,
    label="VAE for distilled models",
    info="Automatic = the checkpoint's own VAE, else sdxl-vae-fp16-fix (or another SDXL VAE) from models/VAE, "
    "else TAESD-XL; takes the place of 'SD VAE' for these models; a checkpoint's Preferred VAE "
    "and --vae-path are still honoured",
    kind="dropdown",
    choices=(VAE_AUTOMATIC, VAE_TAESD_XL),
    lists_webui_vaes=True,
    infotext=infotext.KEY_VAE,
    reloads_vae=True,
)
VAE_PRECISION = Setting(
    key="ssd1b_vae_precision",
    default=Precision.AUTO.value,
    label="VAE precision",
    info="Auto = fp16 for fp16-safe VAEs (sdxl-vae-fp16-fix, TAESD-XL), bf16 for others where the GPU "
    "supports it (RTX 30xx and newer), else fp16 with NaN recovery; fp32 when the webui runs with --no-half-vae",
    kind="radio",
    choices=tuple(precision.value for precision in Precision),
    infotext=infotext.KEY_VAE_PRECISION,
)
NAN_DECODE = Setting(
    key="ssd1b_nan_vae_decode",
    default=NanPolicy.RECOVER.value,
    label="NaN/Inf after VAE decode",
    info="Recover = decode only that image again in bf16 or fp32 and remember it for this VAE "
    "(no black images, no session-wide fp32 switch); Warn = report it and keep the image; Off = no check",
    kind="radio",
    choices=_POLICY_CHOICES,
)
NAN_ENCODE = Setting(
    key="ssd1b_nan_vae_encode",
    default=NanPolicy.RECOVER.value,
    label="NaN/Inf after VAE encode (img2img, inpaint, hires fix)",
    info="the webui never checks this; Recover = encode that image again in bf16 or fp32 and remember it "
    "for this VAE; Warn = report it; Off = no check",
    kind="radio",
    choices=_POLICY_CHOICES,
)
NAN_UNET = Setting(
    key="ssd1b_nan_unet",
    default=NanPolicy.RECOVER.value,
    label="NaN/Inf at the end of sampling",
    info="watched on the GPU at every step without slowing it down; Recover = sample that image again "
    "with attention in fp32, then with the whole UNet in fp32 (costs one more sampling run each); "
    "Warn = report it; Off = leave it to the webui",
    kind="radio",
    choices=_POLICY_CHOICES,
)

SETTINGS: tuple[Setting, ...] = (SCOPE, VAE, VAE_PRECISION, NAN_DECODE, NAN_ENCODE, NAN_UNET)
SETTINGS_BY_KEY = {setting.key: setting for setting in SETTINGS}


@dataclass(frozen=True)
class Values:
    """The settings as typed values, read once per generation."""

    scope: Scope = Scope.DISTILLED
    vae: str = VAE_AUTOMATIC
    vae_precision: Precision = Precision.AUTO
    nan_decode: NanPolicy = NanPolicy.RECOVER
    nan_encode: NanPolicy = NanPolicy.RECOVER
    nan_unet: NanPolicy = NanPolicy.RECOVER

    def applies_to(self, *, sdxl_family: bool, distilled: bool) -> bool:
        """Whether this model gets our VAE choice and NaN handling at all."""
        if not sdxl_family:
            return False
        return distilled or self.scope is Scope.SDXL_FAMILY


def read_values(get: Callable[[str], object]) -> Values:
    """Typed settings from ``get(key)`` (e.g. ``lambda k: getattr(shared.opts, k, None)``).

    A missing key (``--nowebui`` before the settings were registered) gives the default; an invalid
    stored value gives the default with one warning naming the key and the value.
    """

    def value(setting: Setting) -> str:
        raw = get(setting.key)
        if raw is None:
            return setting.default
        if not setting.accepts(raw):
            log.warning("setting %s has an invalid value %r; using %r", setting.key, raw, setting.default)
            return setting.default
        return str(raw)

    return Values(
        scope=Scope(value(SCOPE)),
        vae=value(VAE),
        vae_precision=Precision(value(VAE_PRECISION)),
        nan_decode=NanPolicy(value(NAN_DECODE)),
        nan_encode=NanPolicy(value(NAN_ENCODE)),
        nan_unet=NanPolicy(value(NAN_UNET)),
    )


INFOTEXT_TO_SETTING = {setting.infotext: setting.key for setting in SETTINGS if setting.infotext}


def settings_from_infotext(params: Mapping[str, str]) -> dict[str, str]:
    """Setting key → value for every pasted infotext key that maps to one of our settings.

    Understands v1.6.x's mangled keys ("1B VAE") and our recorded values ("checkpoint").
    Values the setting would not accept are left out.
    """
    normalised = dict(params)
    infotext.pasted_values(normalised, vae_automatic=VAE_AUTOMATIC)
    result = {}
    for key, setting_key in INFOTEXT_TO_SETTING.items():
        if key in normalised and SETTINGS_BY_KEY[setting_key].accepts(normalised[key]):
            result[setting_key] = normalised[key]
    return result

"""Infotext keys written by the extension, with format/parse functions that round-trip.

The host writes ``p.extra_generation_params[key] = value`` as ``key: value`` and quotes the value
itself when it holds ``,``, ``:`` or a newline (``infotext_utils.quote``, identical in v1.6–v1.10).
Values produced here never need quoting except file names, which the host quotes.

Paste-back: :func:`pasted_values` turns our infotext values into values the settings accept, so the
host's own ``OptionInfo(infotext=key)`` mapping can apply them (call it from ``on_infotext_pasted``);
:func:`extensions_ssd1b.core.settings.settings_from_infotext` gives the same mapping as a dict.
This module imports nothing from the rest of the package: it is the bottom layer.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass

KEY_ARCH = "SSD-1B arch"
KEY_VAE = "SSD-1B VAE"
KEY_VAE_PRECISION = "SSD-1B VAE precision"
KEY_NAN_RECOVERY = "SSD-1B NaN recovery"
KEY_LORA = "SSD-1B LoRA"  # what each LoRA did on the loaded UNet; a report, never pasted back into settings
ALL_KEYS = (KEY_ARCH, KEY_VAE, KEY_VAE_PRECISION, KEY_NAN_RECOVERY)

VAE_FROM_CHECKPOINT = "checkpoint"  # the checkpoint's own (baked) VAE
VAE_TAESD_XL = "TAESD-XL"
PRECISIONS = ("fp16", "bf16", "fp32")  # concrete precisions only: "Auto" is never written

# Host's parsing rule for one "key: value" pair (infotext_utils.re_param_code).  v1.6.x allows no
# hyphen in keys, so "SSD-1B VAE: x" is read there as "1B VAE: x"; v1.7.0 (c2279da5) fixed that.
_HOST_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_HOST_PARAM_V16 = re.compile(r'\s*([\w ]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_HOST_IMAGE_SIZE = re.compile(r"^(\d+)x(\d+)$")
# What v1.6.x makes of our keys (everything after "SSD-"), mapped back on paste.
V16_KEY_ALIASES = {key.split("-", 1)[1]: key for key in ALL_KEYS}


# --- architecture -------------------------------------------------------------------------------


def format_arch(family_key: str) -> str:
    """The family key ("ssd-1b", "koala-700m", "custom" …): stable across versions and locales."""
    if not family_key or not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", family_key):
        raise ValueError(f"not a family key: {family_key!r}")
    return family_key


def parse_arch(value: str) -> str | None:
    value = value.strip()
    return value if re.fullmatch(r"[a-z0-9][a-z0-9._-]*", value) else None


# --- VAE ----------------------------------------------------------------------------------------


def format_vae(name: str | None) -> str:
    """``None`` (the checkpoint's own VAE) → "checkpoint"; "TAESD-XL"; else the VAE file name."""
    if name is None:
        return VAE_FROM_CHECKPOINT
    if not name.strip() or "\n" in name:
        raise ValueError(f"not a VAE name: {name!r}")
    return name


def parse_vae(value: str) -> str | None:
    """Inverse of :func:`format_vae`: ``None`` for the checkpoint's own VAE, else the name."""
    value = value.strip()
    return None if value == VAE_FROM_CHECKPOINT else value


# --- precision ----------------------------------------------------------------------------------


def format_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"not a concrete precision: {precision!r} (expected one of {', '.join(PRECISIONS)})")
    return precision


def parse_precision(value: str) -> str | None:
    value = value.strip().lower()
    return value if value in PRECISIONS else None


# --- NaN recovery record ------------------------------------------------------------------------

STAGES = ("decode", "encode", "unet")
UNRECOVERED = "none"  # "after" of a note when nothing fixed it (warn mode, or every retry failed)
UNET_REMEDIES = ("upcast-attention", "fp32")

_NOTE = re.compile(
    r"(?P<stage>decode|encode|unet) (?P<before>[a-z0-9-]+)->(?P<after>[a-z0-9-]+)"
    r"(?: at step (?P<step>\d+))?(?P<remembered> remembered)?(?: x(?P<count>\d+))?"
)


@dataclass(frozen=True)
class RecoveryNote:
    """One line of what the NaN handling did, e.g. ``decode fp16->bf16`` or ``unet fp16->fp32 at step 17``.

    ``remembered``: no retry was needed, the precision learned for this VAE was used from the start.
    ``after == "none"``: the NaN/Inf was seen and not fixed.  ``count``: how many images it happened to.
    """

    stage: str
    before: str
    after: str
    step: int | None = None
    remembered: bool = False
    count: int = 1

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, not {self.stage!r}")
        allowed_after = (*PRECISIONS, UNRECOVERED, *(UNET_REMEDIES if self.stage == "unet" else ()))
        if self.before not in PRECISIONS or self.after not in allowed_after:
            raise ValueError(f"bad precisions {self.before!r} -> {self.after!r} for {self.stage}")
        if self.step is not None and (self.stage != "unet" or self.step < 0):
            raise ValueError("only a unet note carries a step, and it is not negative")
        if self.count < 1:
            raise ValueError("count must be at least 1")

    def text(self) -> str:
        parts = [f"{self.stage} {self.before}->{self.after}"]
        if self.step is not None:
            parts.append(f" at step {self.step}")
        if self.remembered:
            parts.append(" remembered")
        if self.count > 1:
            parts.append(f" x{self.count}")
        return "".join(parts)


def merge_notes(notes: Iterable[RecoveryNote]) -> list[RecoveryNote]:
    """Collapse repeats (same stage/before/after/step/remembered) into one note with a count."""
    merged: dict[tuple[object, ...], RecoveryNote] = {}
    for note in notes:
        key = (note.stage, note.before, note.after, note.step, note.remembered)
        if key in merged:
            old = merged[key]
            merged[key] = RecoveryNote(*key, count=old.count + note.count)  # type: ignore[arg-type]
        else:
            merged[key] = note
    return list(merged.values())


def format_recovery(notes: Iterable[RecoveryNote]) -> str | None:
    """``"; "``-joined notes, or ``None`` when nothing happened (the host then omits the key)."""
    merged = merge_notes(notes)
    return "; ".join(note.text() for note in merged) if merged else None


def parse_recovery(value: str) -> list[RecoveryNote]:
    """Inverse of :func:`format_recovery`; unreadable parts are skipped, never raised."""
    notes = []
    for part in value.split(";"):
        match = _NOTE.fullmatch(part.strip())
        if not match:
            continue
        try:
            notes.append(
                RecoveryNote(
                    stage=match["stage"],
                    before=match["before"],
                    after=match["after"],
                    step=int(match["step"]) if match["step"] else None,
                    remembered=bool(match["remembered"]),
                    count=int(match["count"]) if match["count"] else 1,
                )
            )
        except ValueError:
            continue
    return notes


# --- paste-back ---------------------------------------------------------------------------------


def pasted_values(params: MutableMapping[str, str], *, vae_automatic: str = "Automatic") -> None:
    """Rewrite our pasted infotext values in place into values the settings accept.

    "SSD-1B VAE: checkpoint" becomes the setting's "Automatic" (which picks the checkpoint's own
    VAE when it has one); an unreadable precision is dropped rather than pasted as garbage.  The
    record keys (arch, NaN recovery) describe what happened and are not settings: left untouched.
    Keys mangled by v1.6.x's parser ("1B VAE") are renamed back first.
    """
    for alias, key in V16_KEY_ALIASES.items():
        if alias in params and key not in params:
            params[key] = params.pop(alias)
    if KEY_VAE in params:
        name = parse_vae(str(params[KEY_VAE]))
        params[KEY_VAE] = vae_automatic if name is None else name
    if KEY_VAE_PRECISION in params:
        precision = parse_precision(str(params[KEY_VAE_PRECISION]))
        if precision is None:
            del params[KEY_VAE_PRECISION]
        else:
            params[KEY_VAE_PRECISION] = precision


# --- the host's own quoting and parsing (for round-trip checks and for the adapter's logging) ---


def host_quote(value: str) -> str:
    """``infotext_utils.quote`` (v1.6–v1.10): JSON-quote values holding ``,`` ``:`` or a newline."""
    if "," not in value and "\n" not in value and ":" not in value:
        return value
    return json.dumps(value, ensure_ascii=False)


def host_render(params: Mapping[str, str | None]) -> str:
    """The host's parameter line: ``k: v`` pairs joined with ``", "``, ``None`` values omitted."""
    return ", ".join(f"{key}: {host_quote(value)}" for key, value in params.items() if value is not None)


def host_parse(line: str, *, v16: bool = False) -> dict[str, str]:
    """The host's parser for one parameter line (``parse_generation_parameters``' loop).

    ``v16`` uses v1.6.x's key pattern (no hyphens).  "WxH" values split into ``key-1``/``key-2``
    as the host does.
    """
    result = {}
    for key, value in (_HOST_PARAM_V16 if v16 else _HOST_PARAM).findall(line):
        if not value:  # the host's value[0] raises here and the pair is skipped
            continue
        if value[:1] == '"' and value[-1:] == '"':
            with contextlib.suppress(ValueError):  # the host keeps an unparsable quoted value as is
                value = json.loads(value)
        if size := _HOST_IMAGE_SIZE.match(value):
            result[f"{key}-1"], result[f"{key}-2"] = size.group(1), size.group(2)
        else:
            result[key] = value
    return result

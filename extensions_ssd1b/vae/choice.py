"""Which VAE a distilled SDXL model decodes with, and in which precision: one pure function.

:func:`resolve_vae` follows the webui's own order (``sd_vae.resolve_vae`` v1.6–v1.10) with our
"VAE for distilled models" setting standing in for "SD VAE" when it is not Automatic, so what a
user chose is honoured exactly and never replaced; it only differs where the webui would load
nothing: with everything on Automatic and a checkpoint without a VAE, the webui leaves the VAE's
weights at zero (every image a flat gray, no error).  There we pick, in order: an fp16-safe SDXL
VAE (sdxl-vae-fp16-fix), another SDXL VAE in a safe precision, TAESD-XL, or refuse with a message
that names the file to download and the folder to put it in.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import torch

from ..core import infotext
from ..core.errors import CheckpointError
from ..core.settings import VAE_AUTOMATIC, VAE_TAESD_XL, Precision
from ..io.header import SafetensorsHeader, is_safetensors_name, read_header
from .nan import (
    TAESD_DIR,
    TAESD_URL,
    TAESDXL_DECODER,
    TAESDXL_ENCODER,
    VAE_KEY_PREFIXES,
    VaeIdentity,
    file_fingerprint,
)

FP16_FIX_FILE = "sdxl.vae.safetensors"
FP16_FIX_URL = "https://huggingface.co/madebyollin/sdxl-vae-fp16-fix"
WEBUI_NONE = "None"  # the webui's "SD VAE: None": the checkpoint's own VAE


class VaeKind(str, Enum):
    FP16_FIX = "sdxl-vae-fp16-fix"  # rescaled SDXL VAE: no fp16 overflow
    SDXL = "SDXL VAE"  # Stability's SDXL VAE (0.9/1.0): overflows fp16 in its up-blocks
    SDXL_NAMED = "SDXL VAE (by name)"  # the name says XL; which weights is unknown
    SD1 = "SD 1.x VAE"  # same shapes as SDXL's, other latent space: wrong colours on SDXL models
    NOT_SDXL = "not an SDXL VAE"  # another latent width (SD3, FLUX: 16 channels)
    UNKNOWN = "unknown VAE"


# sha256 of whole published files (A1111 shows the first 10 hex digits as "VAE hash"), as download
# manifests pin them:
# - fp16-fix: https://huggingface.co/madebyollin/sdxl-vae-fp16-fix/resolve/207b116dae70ace3637169f1ddd2434b91b3a8cd/
#   sdxl.vae.safetensors (334,641,162 B); the repo's sdxl_vae.safetensors has the same hash, and so has
#   Civitai's Pony Diffusion V6 XL VAE (https://civitai.com/api/download/models/290640?type=VAE).
# - SDXL 1.0: https://huggingface.co/stabilityai/sdxl-vae/resolve/main/sdxl_vae.safetensors.
# - SD 1.x ft-MSE: https://huggingface.co/stabilityai/sd-vae-ft-mse-original/resolve/main/
#   vae-ft-mse-840000-ema-pruned.safetensors.
# Not found in any citable source, so not listed: the SDXL 0.9 VAE, and the fp16-fix repo's diffusers
# diffusion_pytorch_model.safetensors (a diffusers-format file the webui cannot load anyway).
KNOWN_SHA256 = {
    "235745af8d86bf4a4c1b5b4f529868b37019a10f7c0b2e79ad0abca3a22bc6e1": VaeKind.FP16_FIX,
    "63aeecb90ff7bc1c115395962d3e803571385b61938377bc7089b36e81e92e2e": VaeKind.SDXL,
    "735e4c3a447a3255760d7f86845f09f937809baa529c17370d83e4c3758f3c75": VaeKind.SD1,
}
# nan.vae_fingerprint of known VAEs.  Empty until computed from the real files (no weights here):
# run nan.file_fingerprint() on sdxl.vae.safetensors and sdxl_vae.safetensors and add them.  Until
# then a baked-in VAE is recognised through an installed VAE file of the same fingerprint whose
# sha256 is known (see _Context.checkpoint_vae).
KNOWN_FINGERPRINTS: dict[str, VaeKind] = {}
# What the header can tell: SD 1.x, SD 2.x and SDXL VAEs are all KL-f8 autoencoders with 4 latent
# channels and identical tensor names and shapes, so only the content (sha256, fingerprint) tells them
# apart.  The header does tell a VAE of another latent width (SD3 and FLUX: 16), which never fits SDXL.
SDXL_LATENT_CHANNELS = 4

# fp16-fix as it is usually saved: its repo's "sdxl.vae.safetensors", or any name saying fp16-fix.
_FP16_FIX_NAME = re.compile(r"fp16[-_. ]?fix|sdxl[-_. ]?vae[-_. ]?fp16|^sdxl\.vae\.[a-z]+$", re.IGNORECASE)
_XL_NAME = re.compile(r"xl(?![a-z])", re.IGNORECASE)  # sdxl_vae, ponyxl, juggernautXL_vae, xl-vae


class KeyFormat(str, Enum):
    LDM = "ldm"  # "decoder.mid.block_1…" without prefix: the only form the webui's strict load takes
    LDM_PREFIXED = "ldm-prefixed"  # "first_stage_model.decoder…": a checkpoint, not a VAE file
    DIFFUSERS = "diffusers"  # "decoder.mid_block.resnets…": the webui fails with "Missing key(s)"
    NOT_A_VAE = "not-a-vae"
    UNKNOWN = "unknown"  # .pt/.ckpt: not opened (pickle), assumed loadable


@dataclass(frozen=True)
class VaeFile:
    name: str  # the webui's vae_dict key (the file's base name)
    path: str
    sha256: str | None = None  # full or the webui's 10-digit short hash, when known
    fingerprint: str | None = None
    key_format: KeyFormat = KeyFormat.UNKNOWN
    problem: str | None = None  # why it cannot be used, e.g. an unreadable header
    latent_channels: int | None = None  # from the header (decoder.conv_in); None when not read

    @property
    def loadable(self) -> bool:
        return self.problem is None and self.key_format in (KeyFormat.LDM, KeyFormat.UNKNOWN)


def vae_key_format(names: Sequence[str] | set[str]) -> KeyFormat:
    keys = set(names)
    for prefix in VAE_KEY_PREFIXES:
        if f"{prefix}decoder.mid.block_1.conv1.weight" in keys:
            return KeyFormat.LDM if not prefix else KeyFormat.LDM_PREFIXED
        if f"{prefix}decoder.mid_block.resnets.0.conv1.weight" in keys:
            return KeyFormat.DIFFUSERS
    return KeyFormat.NOT_A_VAE


def describe_vae_file(name: str, path: str, *, sha256: str | None = None) -> VaeFile:
    """A :class:`VaeFile` for one webui VAE; reads the safetensors header and ~0.3 MB of weights.

    .pt/.ckpt files are not opened (unpickling runs code): they keep ``KeyFormat.UNKNOWN``.
    """
    if not is_safetensors_name(path):
        return VaeFile(name, path, sha256)
    try:
        header = read_header(path)
        key_format = vae_key_format(header.tensors.keys())
        fingerprint = file_fingerprint(path, header) if key_format is not KeyFormat.NOT_A_VAE else None
    except CheckpointError as error:
        return VaeFile(name, path, sha256, problem=error.reason)
    return VaeFile(name, path, sha256, fingerprint, key_format, latent_channels=latent_channels(header))


def latent_channels(header: SafetensorsHeader) -> int | None:
    """The latent width a VAE decodes from (its decoder's first convolution), in any key naming."""
    for prefix in VAE_KEY_PREFIXES:
        conv_in = header.tensors.get(f"{prefix}decoder.conv_in.weight")
        if conv_in is not None and len(conv_in.shape) == 4:
            return conv_in.shape[1]
    return None


@dataclass(frozen=True)
class Identification:
    kind: VaeKind
    evidence: str  # "sha256", "fingerprint", "file name", "" — shown in the reason

    @property
    def strength(self) -> int:
        return {"sha256": 3, "fingerprint": 3, "header": 2, "file name": 1}.get(self.evidence, 0)

    @property
    def by_content(self) -> bool:
        return self.evidence in ("sha256", "fingerprint", "header")


def identify(vae: VaeFile) -> Identification:
    """What ``vae`` is, from the strongest evidence at hand: content, then header, then file name."""
    if vae.sha256 and len(vae.sha256) >= 10:
        for known, kind in KNOWN_SHA256.items():
            if known.startswith(vae.sha256.lower()):
                return Identification(kind, "sha256")
    if vae.fingerprint and vae.fingerprint in KNOWN_FINGERPRINTS:
        return Identification(KNOWN_FINGERPRINTS[vae.fingerprint], "fingerprint")
    if vae.latent_channels is not None and vae.latent_channels != SDXL_LATENT_CHANNELS:
        return Identification(VaeKind.NOT_SDXL, "header")
    if _FP16_FIX_NAME.search(vae.name):
        return Identification(VaeKind.FP16_FIX, "file name")
    if _XL_NAME.search(vae.name):
        return Identification(VaeKind.SDXL_NAMED, "file name")
    return Identification(VaeKind.UNKNOWN, "")


# --- inputs and outputs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WebuiVae:
    """The webui's own VAE choices for this checkpoint, as its ``sd_vae.resolve_vae`` sees them."""

    sd_vae: str = VAE_AUTOMATIC  # opts.sd_vae: "Automatic", "None" or a vae_dict name
    overrides_per_model: bool = True  # opts.sd_vae_overrides_per_model_preferences
    preferred: str | None = None  # the checkpoint's user metadata "vae" ("Preferred VAE" on its card)
    near_checkpoint: str | None = None  # vae_dict name of a file named like the checkpoint
    commandline_path: str | None = None  # --vae-path


@dataclass(frozen=True)
class TaesdFiles:
    decoder: bool  # models/VAE-taesd/taesdxl_decoder.pth exists
    encoder: bool  # models/VAE-taesd/taesdxl_encoder.pth exists


@dataclass(frozen=True)
class DeviceCaps:
    bf16: bool  # bf16 is fast here (CUDA compute capability >= 8, recent MPS, XPU)
    vae_fp32_forced: bool = False  # --no-half / --no-half-vae: the user asked for fp32

    @classmethod
    def of(cls, device: torch.device, *, no_half_vae: bool) -> DeviceCaps:
        """``no_half_vae``: ``cmd_opts.no_half or cmd_opts.no_half_vae``, not ``devices.dtype_vae``,
        which the webui's own NaN fallback also flips to fp32 for the rest of the session."""
        return cls(bf16=bf16_is_fast(device), vae_fp32_forced=no_half_vae)


def bf16_is_fast(device: torch.device) -> bool:
    """bf16 in hardware: CUDA compute capability 8.0+ (Ampere on), MPS where it works, XPU.

    ``torch.cuda.is_bf16_supported()`` is not used: by default it also says yes to the slow
    emulation on older cards.  CPUs say no: the webui runs the VAE there in fp32 anyway.
    """
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "mps":
        try:
            torch.ones(1, dtype=torch.bfloat16, device=device)  # macOS < 14 raises here
        except (RuntimeError, TypeError):
            return False
        return True
    return device.type == "xpu"


class VaeSource(str, Enum):
    CHECKPOINT = "checkpoint"
    FILE = "file"
    TAESD_XL = "TAESD-XL"


@dataclass(frozen=True)
class VaeDecision:
    source: VaeSource
    name: str  # for people: the file name, "checkpoint VAE", "TAESD-XL"
    path: str | None  # the file to load when source is FILE
    precision: Precision  # concrete: fp16, bf16 or fp32
    precision_auto: bool  # chosen by "Auto": NaN recovery may start in a learned precision
    fp16_safe: bool
    chosen_by: str  # "automatic", "--vae-path", "SSD-1B setting", "SD VAE setting", …
    reason: str  # one sentence for the console
    fingerprint: str | None = None
    notes: tuple[str, ...] = ()  # warnings worth one console line each

    def identity(self) -> VaeIdentity:
        return VaeIdentity(self.name, self.fingerprint)

    def infotext(self) -> dict[str, str]:
        name = {VaeSource.CHECKPOINT: None, VaeSource.TAESD_XL: infotext.VAE_TAESD_XL}.get(self.source, self.name)
        return {
            infotext.KEY_VAE: infotext.format_vae(name),
            infotext.KEY_VAE_PRECISION: infotext.format_precision(self.precision.value),
        }


@dataclass(frozen=True)
class Download:
    file: str
    url: str
    folder: str
    why: str


@dataclass(frozen=True)
class VaeRefusal:
    """No usable VAE: generating would give gray or broken images.  ``message`` says what to do."""

    message: str
    downloads: tuple[Download, ...] = ()


def fp16_fix_download(models_dir: str) -> Download:
    return Download(FP16_FIX_FILE, FP16_FIX_URL, f"{models_dir}/VAE", "full quality, safe in fp16")


def taesd_downloads(models_dir: str, *, decoder: bool = True, encoder: bool = True) -> tuple[Download, ...]:
    folder = f"{models_dir}/{TAESD_DIR}"
    wanted = ((decoder, TAESDXL_DECODER, "decoding"), (encoder, TAESDXL_ENCODER, "img2img, inpaint, hires fix"))
    return tuple(Download(file, TAESD_URL, folder, why) for needed, file, why in wanted if needed)


# --- precision --------------------------------------------------------------------------------------


def choose_precision(
    setting: Precision, *, fp16_safe: bool, overflows_fp16: bool, device: DeviceCaps
) -> tuple[Precision, str]:
    """The concrete precision and why.  An explicit setting is kept unless the device cannot run it."""
    if setting is not Precision.AUTO:
        if setting is Precision.BF16 and not device.bf16:
            return Precision.FP32, "bf16 was chosen but this device has no fast bf16: fp32 instead"
        return setting, f"{setting.value} as set"
    if device.vae_fp32_forced:
        return Precision.FP32, "fp32: the webui runs the VAE in full precision (--no-half-vae / --no-half)"
    if fp16_safe:
        return Precision.FP16, "fp16: this VAE is fp16-safe"
    if device.bf16:
        return Precision.BF16, "bf16: fp32's range at fp16's cost"
    if overflows_fp16:
        return Precision.FP32, "fp32: this VAE overflows fp16 and the device has no fast bf16"
    return Precision.FP16, "fp16, with NaN recovery (no fast bf16 on this device)"


# --- the resolution -----------------------------------------------------------------------------------


def resolve_vae(
    *,
    checkpoint: str,
    checkpoint_has_vae: bool,
    setting: str,
    precision: Precision,
    available: Sequence[VaeFile],
    taesd: TaesdFiles,
    device: DeviceCaps,
    webui: WebuiVae = WebuiVae(),
    checkpoint_vae_fingerprint: str | None = None,
    models_dir: str = "models",
    content_sha256: Callable[[VaeFile], str | None] | None = None,
) -> VaeDecision | VaeRefusal:
    """Decide the VAE for ``checkpoint`` (its file name) and the precision to run it in.

    ``setting``: our "VAE for distilled models" ("Automatic", "TAESD-XL" or a VAE name);
    ``checkpoint_has_vae``: from the header (``detect.has_vae``); ``available``: the webui's VAE files
    (``describe_vae_file`` over ``sd_vae.vae_dict``); ``models_dir``: shown in messages;
    ``content_sha256``: a file's full sha256 (the host's cached hash), asked only for the files whose
    identity the decision depends on and that neither a known hash nor the header settles.
    """
    context = _Context(
        checkpoint, checkpoint_has_vae, precision, {v.name: v for v in available}, taesd, device,
        checkpoint_vae_fingerprint, models_dir, content_sha256,
    )  # fmt: skip
    if webui.commandline_path:
        path = webui.commandline_path
        return context.file(VaeFile(Path(path).name, path), "--vae-path")
    ours = setting if setting and not _is_automatic(setting) else None
    effective = ours or webui.sd_vae
    effective_by = "SSD-1B setting 'VAE for distilled models'" if ours else "webui setting 'SD VAE'"
    if webui.overrides_per_model and not _is_automatic(effective):
        return context.explicit(effective, effective_by)
    if webui.preferred and not _is_automatic(webui.preferred):
        return context.explicit(webui.preferred, f"Preferred VAE of {checkpoint}")
    if webui.near_checkpoint and (not webui.overrides_per_model or _is_automatic(effective)):
        return context.explicit(webui.near_checkpoint, f"VAE file named like {checkpoint}")
    if not _is_automatic(effective):
        return context.explicit(effective, effective_by)
    return context.automatic()


def _is_automatic(value: str) -> bool:
    return value in (VAE_AUTOMATIC, "auto")  # "auto": old webui configs


@dataclass(frozen=True)
class _Context:
    checkpoint: str
    has_vae: bool
    precision: Precision
    files: dict[str, VaeFile]
    taesd: TaesdFiles
    device: DeviceCaps
    checkpoint_fingerprint: str | None
    models_dir: str
    content_sha256: Callable[[VaeFile], str | None] | None = None

    def identify(self, vae: VaeFile) -> Identification:
        """:func:`identify`, hashing the file's content first where nothing stronger than its name is known."""
        found = identify(vae)
        if found.by_content or vae.sha256 or self.content_sha256 is None or not vae.loadable:
            return found
        digest = self.content_sha256(vae)
        return identify(dataclasses.replace(vae, sha256=digest)) if digest else found

    def explicit(self, choice: str, chosen_by: str) -> VaeDecision | VaeRefusal:
        if choice == WEBUI_NONE:
            if not self.has_vae:
                return VaeRefusal(
                    f"{chosen_by} is 'None' (the checkpoint's own VAE), but {self.checkpoint} has no VAE: every image "
                    f"would be flat gray. Set it to Automatic, or pick an SDXL VAE.",
                    (fp16_fix_download(self.models_dir),),
                )
            return self.checkpoint_vae(chosen_by)
        if choice == VAE_TAESD_XL:
            return self.taesd_xl(chosen_by)
        vae = self.files.get(choice)
        if vae is None:
            return VaeRefusal(
                f"{chosen_by} names the VAE '{choice}', which is not in {self.models_dir}/VAE (or next to the "
                f"checkpoints). Put the file back and refresh the VAE list, or choose another VAE."
            )
        return self.file(vae, chosen_by)

    def file(self, vae: VaeFile, chosen_by: str) -> VaeDecision | VaeRefusal:
        if vae.problem:
            return VaeRefusal(f"VAE '{vae.name}' ({chosen_by}) cannot be read: {vae.problem}")
        if not vae.loadable:
            return VaeRefusal(_unloadable_message(vae, chosen_by), (fp16_fix_download(self.models_dir),))
        found = self.identify(vae)
        fp16_safe = found.kind is VaeKind.FP16_FIX
        chosen, why = choose_precision(
            self.precision, fp16_safe=fp16_safe, overflows_fp16=found.kind is VaeKind.SDXL, device=self.device
        )
        evidence = f" (recognised by {found.evidence})" if found.evidence else ""
        return VaeDecision(
            VaeSource.FILE, vae.name, vae.path, chosen, self.precision is Precision.AUTO, fp16_safe, chosen_by,
            f"VAE {vae.name}: {found.kind.value}{evidence}, {chosen_by}; {why}.", vae.fingerprint,
        )  # fmt: skip

    def baked_in_kind(self) -> VaeKind:
        """The checkpoint's VAE by its fingerprint: a known one, or that of an installed file known by content."""
        fingerprint = self.checkpoint_fingerprint
        if not fingerprint:
            return VaeKind.UNKNOWN
        if fingerprint in KNOWN_FINGERPRINTS:
            return KNOWN_FINGERPRINTS[fingerprint]
        same = (self.identify(vae) for vae in self.files.values() if vae.fingerprint == fingerprint)
        return next((found.kind for found in same if found.evidence == "sha256"), VaeKind.UNKNOWN)

    def checkpoint_vae(self, chosen_by: str) -> VaeDecision:
        kind = self.baked_in_kind()
        fp16_safe = kind is VaeKind.FP16_FIX
        chosen, why = choose_precision(
            self.precision, fp16_safe=fp16_safe, overflows_fp16=kind is VaeKind.SDXL, device=self.device
        )
        return VaeDecision(
            VaeSource.CHECKPOINT, f"checkpoint VAE of {self.checkpoint}", None, chosen,
            self.precision is Precision.AUTO, fp16_safe, chosen_by,
            f"VAE baked into {self.checkpoint} ({kind.value}), {chosen_by}; {why}.", self.checkpoint_fingerprint,
        )  # fmt: skip

    def taesd_xl(self, chosen_by: str) -> VaeDecision:
        chosen, why = choose_precision(self.precision, fp16_safe=True, overflows_fp16=False, device=self.device)
        notes = []
        if not self.taesd.decoder:
            notes.append(
                f"{TAESDXL_DECODER} is not in {self.models_dir}/{TAESD_DIR}: the webui downloads it from "
                f"{TAESD_URL} on first use (needs internet)."
            )
        if not self.taesd.encoder:
            notes.append(
                f"img2img, inpaint and hires fix also need {TAESDXL_ENCODER} in {self.models_dir}/{TAESD_DIR} "
                f"(the webui downloads it on first use, needs internet)."
            )
        return VaeDecision(
            VaeSource.TAESD_XL, VAE_TAESD_XL, None, chosen, self.precision is Precision.AUTO, True, chosen_by,
            f"TAESD-XL (fast, less fine detail), {chosen_by}; {why}.", None, tuple(notes),
        )  # fmt: skip

    def automatic(self) -> VaeDecision | VaeRefusal:
        if self.has_vae:
            return self.checkpoint_vae("automatic: the checkpoint has its own VAE")
        usable = [vae for vae in self.files.values() if vae.loadable]
        # VAEs the webui cannot load: worth telling, since the user probably meant one of them.
        skipped = [vae for vae in self.files.values() if vae.key_format in _UNLOADABLE_VAE_FORMATS]
        notes = tuple(_unloadable_message(vae, "skipped") for vae in skipped)
        ranked = sorted(
            ((self.identify(vae), vae) for vae in usable), key=lambda pair: (-pair[0].strength, pair[1].name.lower())
        )
        for wanted in (VaeKind.FP16_FIX, VaeKind.SDXL, VaeKind.SDXL_NAMED):
            for found, vae in ranked:
                if found.kind is wanted:
                    decision = self.file(vae, f"automatic: {self.checkpoint} has no VAE of its own")
                    return _with_notes(decision, notes)
        if self.taesd.decoder:
            decision = self.taesd_xl(f"automatic: {self.checkpoint} has no VAE and no SDXL VAE is installed")
            return _with_notes(decision, notes)
        return self.refusal(ranked, skipped)

    def refusal(self, considered: list[tuple[Identification, VaeFile]], skipped: list[VaeFile]) -> VaeRefusal:
        fix = fp16_fix_download(self.models_dir)
        tiny = taesd_downloads(self.models_dir, decoder=not self.taesd.decoder, encoder=not self.taesd.encoder)
        lines = [
            f"{self.checkpoint} has no VAE of its own and no SDXL VAE was found, so images would be flat gray.",
            f"Download {fix.file} from {fix.url} into {fix.folder} ({fix.why}),",
            f"or {' and '.join(d.file for d in tiny) or 'the TAESD-XL files'} from {TAESD_URL} "
            f"into {self.models_dir}/{TAESD_DIR} (fast, less fine detail).",
            "Then refresh the VAE list (or restart) and generate again.",
        ]
        if skipped:
            lines.append(" ".join(_unloadable_message(vae, "found") for vae in skipped))
        if considered:
            found = "; ".join(f"{vae.name}: {_what_was_found(identification)}" for identification, vae in considered)
            lines.append(
                f"VAE files considered: {found}. None is known to be an SDXL VAE: an SD 1.x VAE has the same shapes "
                "but gives wrong colours on SDXL models, so only a known file hash, or a name saying XL, is trusted. "
                "If one of them is an SDXL VAE, pick it in Settings → SSD-1B → 'VAE for distilled models'."
            )
        return VaeRefusal(" ".join(lines), (fix, *tiny))


_UNLOADABLE_VAE_FORMATS = (KeyFormat.DIFFUSERS, KeyFormat.LDM_PREFIXED)


def _what_was_found(found: Identification) -> str:
    if found.kind is VaeKind.UNKNOWN:
        return "contents not a known VAE (an SD 1.x and an SDXL VAE look alike in the header)"
    return f"{found.kind.value} (by {found.evidence})"


def _unloadable_message(vae: VaeFile, verb: str) -> str:
    if vae.key_format is KeyFormat.DIFFUSERS:
        return (
            f"VAE '{vae.name}' ({verb}) is in diffusers format, which the webui cannot load "
            f'("Missing key(s)"): use {FP16_FIX_FILE} from {FP16_FIX_URL} instead.'
        )
    if vae.key_format is KeyFormat.LDM_PREFIXED:
        return (
            f"VAE '{vae.name}' ({verb}) has checkpoint-style key names (first_stage_model.…), "
            "which the webui's VAE loader rejects."
        )
    return f"'{vae.name}' ({verb}) holds no VAE weights."


def _with_notes(decision: VaeDecision | VaeRefusal, notes: tuple[str, ...]) -> VaeDecision | VaeRefusal:
    if isinstance(decision, VaeRefusal) or not notes:
        return decision
    return VaeDecision(**{**decision.__dict__, "notes": decision.notes + notes})

"""NaN/Inf safety for fp16 VAE decode/encode and sampling, as host-free pieces.

* :func:`all_finite`: one fused reduction over the whole tensor (NaN and ±Inf anywhere), one sync.
* :class:`NanRecovery`: wraps a decode/encode call; on a non-finite result it redoes only that
  image in a safer precision and remembers, per VAE content fingerprint, where to start next time.
* :func:`vae_fingerprint` and the header-side helpers that pick and read its tensors.
* :class:`StepWatch`: a per-step UNet watch kept on the device (no host sync until the end), and
  :func:`unet_recovery_plan`, the pure decision of what to redo after a UNet NaN.
* TAESD-XL latent/image scaling as A1111's ``sd_vae_taesd`` and ``sd_samplers_common`` use it.

The host's pieces (the VAE module, how to cast it, where to report) are injected by the adapter.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import torch
import torch.nn as nn

from ..core import infotext
from ..core.errors import CheckpointError, Ssd1bError
from ..core.settings import NanPolicy, Precision
from ..io import dtypes
from ..io.header import SafetensorsHeader, read_header
from ..io.read import read_tensors
from ..io.write import write_text

log = logging.getLogger(__name__)

DTYPES: Mapping[Precision, torch.dtype] = {
    precision: getattr(torch, dtypes.DTYPES[dtypes.BY_VARIANT[precision.value]].torch)
    for precision in (Precision.FP16, Precision.BF16, Precision.FP32)
}
_RANGE_ORDER = (Precision.FP16, Precision.BF16, Precision.FP32)  # by exponent range: fp16 overflows first
_PRECISION_NAMES = frozenset(precision.value for precision in DTYPES)


def precision_of(dtype: torch.dtype) -> Precision:
    for precision, candidate in DTYPES.items():
        if candidate == dtype:
            return precision
    if dtype == torch.float64:
        return Precision.FP32  # already past fp32's range: nothing safer to retry in
    raise ValueError(f"no VAE precision for {dtype}")


def is_safer(candidate: Precision, than: Precision) -> bool:
    """True when ``candidate`` has a wider range than ``than`` (fp16 < bf16 < fp32)."""
    return _RANGE_ORDER.index(candidate) > _RANGE_ORDER.index(than)


def safer_precisions(current: Precision, *, bf16_supported: bool) -> tuple[Precision, ...]:
    """The precisions to retry in after a NaN/Inf in ``current``, cheapest first."""
    return tuple(p for p in _RANGE_ORDER if is_safer(p, current) and (p is not Precision.BF16 or bf16_supported))


# --- the check ----------------------------------------------------------------------------------


def checksum(tensor: torch.Tensor) -> torch.Tensor:
    """The fp32 sum of every element: one reduction kernel, a 0-d tensor on the device, no host sync.

    It is non-finite whenever any element is: NaN anywhere makes it NaN, +Inf anywhere makes it +Inf
    or (with a -Inf) NaN, so nothing can hide.  The reverse can err: finite bf16/fp32 values near
    3e38 can overflow an fp32 sum.  fp16 cannot (65504 × numel stays far below fp32's 3.4e38).
    """
    if tensor.is_complex():
        tensor = torch.view_as_real(tensor)
    return tensor.sum(dtype=torch.float32)


def all_finite(tensor: torch.Tensor) -> bool:
    """True when no element is NaN or ±Inf.  One reduction and one 4-byte read in the common case."""
    if tensor.numel() == 0 or not (tensor.is_floating_point() or tensor.is_complex()):
        return True
    if math.isfinite(checksum(tensor).item()):
        return True
    if tensor.dtype == torch.float16:
        return False  # an fp16 sum cannot overflow fp32, so the sum is non-finite only through NaN/Inf
    # Rare path: the fp32 sum overflowed or a value really is non-finite; decide element-wise.
    return bool(torch.isfinite(tensor).all())


# --- casting a module for one call --------------------------------------------------------------


@contextlib.contextmanager
def module_precision(module: nn.Module, precision: Precision) -> Iterator[None]:
    """Run ``module`` in ``precision`` inside the block and give back the *original* tensors after.

    The originals are kept, not cast back: fp16→bf16→fp16 would lose mantissa bits for good.
    Parameter objects stay the same (hooks, optimizers and patches keep working).  A tensor moved
    inside the block (the host's ``--medvram``/``--lowvram`` hook sends the module to the GPU when
    it runs) gets its original back on the device it was moved to, or the host's bookkeeping of
    what is on the GPU would be wrong.  Lightning modules (the webui's sgm ``AutoencoderKL``)
    report ``.dtype`` from a ``_dtype`` attribute, which the webui reads to cast the decoder's
    input: it is switched along.
    """
    with _tensors_in(module.modules(), DTYPES[precision]):
        yield


@contextlib.contextmanager
def _tensors_in(modules: Iterable[nn.Module], dtype: torch.dtype) -> Iterator[None]:
    """The own parameters and buffers of ``modules`` (not their children's) in ``dtype``; see module_precision."""
    saved: list[tuple[dict[str, torch.Tensor | None], str, torch.Tensor]] = []
    reported: list[tuple[nn.Module, torch.dtype]] = []
    try:
        for sub in modules:
            if isinstance(getattr(sub, "_dtype", None), torch.dtype):
                reported.append((sub, sub._dtype))
                sub._dtype = dtype
            for store in (sub._parameters, sub._buffers):
                for name, tensor in store.items():
                    if tensor is None or not tensor.is_floating_point() or tensor.dtype == dtype:
                        continue
                    saved.append((store, name, tensor.data))
                    if isinstance(tensor, nn.Parameter):
                        tensor.data = tensor.data.to(dtype)
                    else:
                        store[name] = tensor.to(dtype)
        yield
    finally:
        for sub, original_dtype in reported:
            sub._dtype = original_dtype
        for store, name, original in reversed(saved):
            current = store[name]
            if current is not None and current.device != original.device:
                original = original.to(current.device)  # a move, not a cast: nothing is lost
            if isinstance(current, nn.Parameter):
                current.data = original
            else:
                store[name] = original


def _cast_inputs(
    args: tuple[object, ...], kwargs: dict[str, object], dtype: torch.dtype
) -> tuple[tuple[object, ...], dict[str, object]]:
    def cast(value: object) -> object:
        return value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value

    return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}


@contextlib.contextmanager
def _forward_in(module: nn.Module, dtype: torch.dtype, after_call: Callable[[], None] | None = None) -> Iterator[None]:
    """Every call of ``module`` gets its floating-point inputs in ``dtype`` and runs without autocast.

    Autocast is switched off for the device the inputs are on (with ``--lowvram`` the weights may
    still be on the CPU when the call starts), since under the host's ``torch.autocast`` fp32
    weights would still multiply in fp16.  The override is an instance attribute; one already there
    (extensions such as ControlNet set one) is called through and put back on exit.
    ``after_call`` runs when each call ends, also on an exception.
    """
    original = module.forward
    previous = vars(module).get("forward")

    def forward(*args: object, **kwargs: object) -> object:
        tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)]
        device_type = tensors[0].device.type if tensors else next((t.device.type for t in module.parameters()), "cpu")
        try:
            with _autocast_off(device_type):
                args, kwargs = _cast_inputs(args, kwargs, dtype)
                return original(*args, **kwargs)
        finally:
            if after_call is not None:
                after_call()

    module.forward = forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        if previous is None:
            del module.forward
        else:
            module.forward = previous  # type: ignore[method-assign]


@contextlib.contextmanager
def module_forward_precision(module: nn.Module, precision: Precision) -> Iterator[None]:
    """:func:`module_precision`, and every call of ``module`` computes in ``precision`` too (:func:`_forward_in`).

    This holds a whole copy of the module in ``precision`` next to the originals; for a UNet use
    :func:`blockwise_forward_precision`.
    """
    with module_precision(module, precision), _forward_in(module, DTYPES[precision]):
        yield


def sequential_blocks(module: nn.Module) -> list[nn.Module]:
    """The parts ``module`` runs one after another: its children, with a ``ModuleList`` child's elements
    in its place (an SGM UNet: ``time_embed``, ``label_emb``, each input block, ``middle_block``, each
    output block, ``out``; the host's ``--lowvram`` moves the UNet in the same pieces)."""
    blocks: list[nn.Module] = []
    for child in module.children():
        blocks.extend(child if isinstance(child, nn.ModuleList) else (child,))
    return blocks


@contextlib.contextmanager
def blockwise_forward_precision(
    module: nn.Module, precision: Precision, blocks: Sequence[nn.Module] | None = None
) -> Iterator[None]:
    """:func:`module_forward_precision` with only one block in ``precision`` at a time.

    A whole fp32 copy of SSD-1B's UNet is 5.3 GB next to its 2.7 GB in fp16: an out-of-memory on
    the very cards this remedy is for.  Here a forward pre-hook casts a block when it starts (its
    inputs too) and a forward hook gives it back its originals when it ends, so the extra memory
    peaks at one block's copy (``benchmarks/bench_unet_remedy.py``).  Tensors outside every block
    (none in an SGM UNet) stay cast for the whole time.  ``blocks``: default :func:`sequential_blocks`.
    """
    dtype = DTYPES[precision]
    blocks = list(sequential_blocks(module) if blocks is None else blocks)
    in_blocks = {id(sub) for block in blocks for sub in block.modules()}
    outside = [sub for sub in module.modules() if id(sub) not in in_blocks]
    open_casts: dict[int, contextlib.ExitStack] = {}

    def cast_block(block: nn.Module, args: tuple[object, ...], kwargs: dict[str, object]) -> object:
        if id(block) not in open_casts:  # a block that calls itself stays cast until its outer call ends
            stack = contextlib.ExitStack()
            stack.enter_context(module_precision(block, precision))
            open_casts[id(block)] = stack
        return _cast_inputs(args, kwargs, dtype)

    def restore_block(block: nn.Module, _args: object, _kwargs: object, _output: object) -> None:
        stack = open_casts.pop(id(block), None)
        if stack is not None:
            stack.close()

    def restore_all() -> None:  # a block that raised never reached its forward hook
        while open_casts:
            open_casts.popitem()[1].close()

    with contextlib.ExitStack() as stack:
        for block in blocks:
            stack.callback(block.register_forward_pre_hook(cast_block, with_kwargs=True).remove)
            stack.callback(block.register_forward_hook(restore_block, with_kwargs=True).remove)
        stack.callback(restore_all)
        stack.enter_context(_tensors_in(outside, dtype))
        stack.enter_context(_forward_in(module, dtype, after_call=restore_all))
        yield


def _autocast_off(device_type: str) -> AbstractContextManager[object]:
    try:
        return torch.autocast(device_type, enabled=False)
    except (RuntimeError, ValueError):  # a device type this torch has no autocast for
        return contextlib.nullcontext()


# --- what happened -------------------------------------------------------------------------------


class Stage(str, Enum):
    DECODE = "decode"
    ENCODE = "encode"


@dataclass(frozen=True)
class VaeIdentity:
    name: str  # what users read: a file name, "checkpoint VAE of X", "TAESD-XL"
    fingerprint: str | None  # content fingerprint; None = outcomes are kept for this session only


@dataclass(frozen=True)
class NanEvent:
    """One decode/encode whose first output was not finite, or that started in a learned precision."""

    stage: Stage
    vae: VaeIdentity
    configured: Precision  # what the VAE was set to run in
    used: Precision | None  # the precision of the result handed back; None = no finite result
    tried: tuple[Precision, ...] = ()  # precisions that gave NaN/Inf
    remembered: bool = False  # started in the precision learned for this VAE: no retry needed
    upstream: bool = False  # the input was already non-finite (UNet or image): not the VAE's fault

    def note(self) -> infotext.RecoveryNote | None:
        if self.upstream:
            return None
        after = self.used.value if self.used else infotext.UNRECOVERED
        return infotext.RecoveryNote(self.stage.value, self.configured.value, after, remembered=self.remembered)

    def console_line(self) -> str:
        where = f"VAE {self.stage.value} ({self.vae.name})"
        if self.upstream:
            return f"SSD-1B: the input to {where} already held NaN/Inf; nothing the VAE can fix, nothing remembered."
        if self.remembered:
            return f"SSD-1B: {where} runs in {self.used.value if self.used else '?'}: learned earlier for this VAE."
        tried = ", ".join(p.value for p in self.tried)
        if self.used is None:
            return f"SSD-1B: {where} produced NaN/Inf in {tried}; the image is left as it came out."
        return (
            f"SSD-1B: {where} produced NaN/Inf in {tried}; redone in {self.used.value}. "
            f"This VAE now starts in {self.used.value}."
        )

    def toast(self) -> str | None:
        if self.remembered or self.upstream:
            return None
        if self.used is None:
            return f"VAE {self.stage.value}: NaN/Inf in {self.configured.value}, not recovered"
        return f"VAE {self.stage.value}: NaN/Inf in {self.configured.value}, redone in {self.used.value}"


class NonFiniteError(Ssd1bError):
    """Every precision gave NaN/Inf: the VAE (or its input) is broken, not just fp16 overflow."""


# --- remembered outcomes -------------------------------------------------------------------------


class PrecisionStore:
    """VAE fingerprint → the precision each stage must start in, persisted as one JSON file.

    Writes are atomic (temp file + ``os.replace``).  An unreadable or corrupt file is ignored with one
    warning and replaced at the next write; an unwritable directory keeps outcomes in memory.
    """

    FILE_NAME = "vae_precision.json"
    FORMAT = 1

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = Path(directory) / self.FILE_NAME
        self._entries: dict[str, dict[str, str]] = self._load()

    def _load(self) -> dict[str, dict[str, str]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as error:
            log.warning("cannot read %s (%s); starting without remembered VAE precisions", self.path, error)
            return {}
        try:
            document = json.loads(text)
            if not isinstance(document, dict) or document.get("format") != self.FORMAT:
                raise ValueError("not a format-1 document")
            vaes = document["vaes"]
            if not isinstance(vaes, dict):
                raise ValueError("'vaes' is not an object")
        except (ValueError, KeyError) as error:
            log.warning("ignoring corrupt %s (%s); it is rewritten at the next NaN recovery", self.path, error)
            return {}
        entries = {}
        for fingerprint, entry in vaes.items():
            if not isinstance(entry, dict):
                continue
            kept = {k: v for k, v in entry.items() if k == "name" and isinstance(v, str)}
            kept.update({s.value: entry[s.value] for s in Stage if entry.get(s.value) in _PRECISION_NAMES})
            entries[str(fingerprint)] = kept
        return entries

    def get(self, fingerprint: str, stage: Stage) -> Precision | None:
        value = self._entries.get(fingerprint, {}).get(stage.value)
        return Precision(value) if value in _PRECISION_NAMES else None

    def remember(self, fingerprint: str, stage: Stage, precision: Precision, *, name: str = "") -> None:
        entry = self._entries.setdefault(fingerprint, {})
        if entry.get(stage.value) == precision.value:
            return
        entry[stage.value] = precision.value
        if name:
            entry["name"] = name
        self._save()

    def forget(self, fingerprint: str | None = None) -> None:
        """Forget one VAE, or every VAE when ``fingerprint`` is None."""
        if fingerprint is None:
            self._entries.clear()
        else:
            self._entries.pop(fingerprint, None)
        self._save()

    def snapshot(self) -> dict[str, dict[str, str]]:
        return {fingerprint: dict(entry) for fingerprint, entry in self._entries.items()}

    def _save(self) -> None:
        document = {"format": self.FORMAT, "vaes": self._entries}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Atomic (temp file + rename in the same folder): a crash leaves the old file or the new one.
            write_text(self.path, json.dumps(document, indent=1, sort_keys=True))
        except OSError as error:
            log.warning("cannot write %s (%s); VAE precisions are kept for this session only", self.path, error)


WithPrecision = Callable[[Precision], AbstractContextManager[object]]


@dataclass
class NanRecovery:
    """The policy object: run a VAE call, check once, redo only that image in a safer precision.

    ``with_precision(p)`` is the host's way to run the VAE in ``p`` for one call and restore it after
    (e.g. :func:`module_precision` on ``first_stage_model`` plus the host's ``dtype_vae``).
    ``report(event)`` gets each retry or failure once (console line, toast); remembered starts are
    reported once per VAE and session.  :meth:`take_notes` gives the infotext record.
    """

    store: PrecisionStore | None
    bf16_supported: bool
    report: Callable[[NanEvent], None] | None = None
    events: list[NanEvent] = field(default_factory=list, init=False)
    _session: dict[tuple[str, Stage], Precision] = field(default_factory=dict, init=False, repr=False)
    _announced: set[tuple[str, Stage]] = field(default_factory=set, init=False, repr=False)

    def learned(self, vae: VaeIdentity, stage: Stage) -> Precision | None:
        if vae.fingerprint and self.store is not None and (stored := self.store.get(vae.fingerprint, stage)):
            return stored
        return self._session.get((_session_key(vae), stage))

    def starting_precision(self, vae: VaeIdentity, stage: Stage, configured: Precision) -> Precision:
        """Where a call starts: ``configured``, or the learned precision when that is safer."""
        learned = self.learned(vae, stage)
        return learned if learned is not None and is_safer(learned, configured) else configured

    def run(
        self,
        call: Callable[[], torch.Tensor],
        *,
        stage: Stage,
        vae: VaeIdentity,
        precision: Precision,
        with_precision: WithPrecision,
        policy: NanPolicy = NanPolicy.RECOVER,
        learn: bool = True,
        inputs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``call()`` under the policy.  ``precision``: what the VAE runs in right now.

        ``learn``: start in the precision learned for this VAE (the "Auto" setting); outcomes are
        remembered either way.  ``inputs``: looked at only when the result is not finite, so a NaN
        that came *into* the VAE (from the UNet) is not blamed on it, retried or remembered, and a
        good decode costs one check, not two.
        """
        if policy is NanPolicy.OFF:
            return call()
        start = self.starting_precision(vae, stage, precision) if learn else precision
        result = _call_in(call, start, precision, with_precision)
        if all_finite(result):
            if start is not precision:
                self._record(NanEvent(stage, vae, precision, start, remembered=True))
            return result
        if inputs is not None and not all_finite(inputs):
            self._record(NanEvent(stage, vae, precision, None, (start,), upstream=True))
            return result
        tried = [start]
        if policy is NanPolicy.WARN:
            self._record(NanEvent(stage, vae, precision, None, tuple(tried)))
            return result
        for safer in safer_precisions(start, bf16_supported=self.bf16_supported):
            with with_precision(safer):
                result = call()
            if all_finite(result):
                self._remember(vae, stage, safer)
                self._record(NanEvent(stage, vae, precision, safer, tuple(tried)))
                return result
            tried.append(safer)
        self._record(NanEvent(stage, vae, precision, None, tuple(tried)))
        raise NonFiniteError(
            f"VAE {stage.value} with {vae.name} gave NaN/Inf in {', '.join(p.value for p in tried)}: this is not "
            "fp16 overflow. The VAE file is probably damaged or not an SDXL VAE; pick another VAE."
        )

    def take_notes(self) -> list[infotext.RecoveryNote]:
        """The infotext notes of the events since the last call, and forget those events."""
        notes = [note for event in self.events if (note := event.note()) is not None]
        self.events.clear()
        return notes

    def _remember(self, vae: VaeIdentity, stage: Stage, precision: Precision) -> None:
        self._session[(_session_key(vae), stage)] = precision
        if vae.fingerprint and self.store is not None:
            self.store.remember(vae.fingerprint, stage, precision, name=vae.name)

    def _record(self, event: NanEvent) -> None:
        self.events.append(event)
        if event.remembered:
            key = (_session_key(event.vae), event.stage)
            if key in self._announced:
                return
            self._announced.add(key)
        if self.report is not None:
            self.report(event)


def _session_key(vae: VaeIdentity) -> str:
    return vae.fingerprint or f"name:{vae.name}"


def _call_in(
    call: Callable[[], torch.Tensor], precision: Precision, current: Precision, with_precision: WithPrecision
) -> torch.Tensor:
    if precision is current:
        return call()
    with with_precision(precision):
        return call()


# --- VAE content fingerprint ---------------------------------------------------------------------

# A few decoder tensors (LDM names), ~0.3 MB in fp16: enough to tell VAEs apart, cheap to read.
FINGERPRINT_TENSORS = (
    "decoder.conv_in.weight",
    "decoder.up.0.block.2.conv2.weight",
    "decoder.conv_out.weight",
    "post_quant_conv.weight",
)
# The same tensors in diffusers naming (up blocks are numbered the other way round).
_DIFFUSERS_NAMES = {"decoder.up.0.block.2.conv2.weight": "decoder.up_blocks.3.resnets.2.conv2.weight"}
VAE_KEY_PREFIXES = ("first_stage_model.", "vae.", "")


def fingerprint_sources(names: Collection[str]) -> dict[str, str] | None:
    """Canonical fingerprint tensor → its key among ``names`` (checkpoint, VAE file, diffusers), or None."""
    for prefix in VAE_KEY_PREFIXES:
        for diffusers in (False, True):
            found = {}
            for canonical in FINGERPRINT_TENSORS:
                key = prefix + (_DIFFUSERS_NAMES.get(canonical, canonical) if diffusers else canonical)
                if key not in names:
                    break
                found[canonical] = key
            else:
                return found
    return None


def vae_fingerprint(tensors: Mapping[str, torch.Tensor]) -> str:
    """A short hex fingerprint of a VAE's content, the same for fp32 and fp16 copies of one VAE.

    ``tensors``: a VAE state dict in any naming of :func:`fingerprint_sources` (the whole dict, or
    only the fingerprint tensors).  Values are hashed after a cast to fp16, which is deterministic,
    so the fp32 original and its fp16 export agree; a bf16 export differs (rounded differently).
    """
    sources = fingerprint_sources(tensors.keys())
    if sources is None:
        raise KeyError(f"not a VAE state dict: needs {', '.join(FINGERPRINT_TENSORS)} (any prefix or diffusers names)")
    digest = hashlib.sha256(b"ssd1b-vae-fingerprint-1")
    for canonical in FINGERPRINT_TENSORS:
        tensor = tensors[sources[canonical]].detach().to("cpu", torch.float16).contiguous()
        digest.update(f"\0{canonical}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]


def file_fingerprint(path: str | os.PathLike[str], header: SafetensorsHeader | None = None) -> str | None:
    """Fingerprint of the VAE inside a .safetensors checkpoint or VAE file, or None if it has none."""
    header = header or read_header(path)
    sources = fingerprint_sources(header.tensors.keys())
    if sources is None:
        return None
    for name in sources.values():
        if not dtypes.DTYPES[stored := header.tensors[name].dtype].castable:
            raise CheckpointError(header.path, f"tensor {name!r} is {stored}, not a float VAE weight")
    return vae_fingerprint(read_tensors(header.path, sources.values()))


# --- UNet NaN: watch every step on the device, decide once at the end ----------------------------


@dataclass(frozen=True)
class WatchResult:
    nonfinite: bool
    first_step: int | None  # the first observed step whose output was not finite
    steps: int  # how many steps were observed


class StepWatch:
    """Per-step NaN/Inf watch that never syncs: one reduction per step stays on the device, and
    :meth:`result` reads all of them at once after sampling.

    Call :meth:`observe` from ``on_cfg_denoised`` (``params.x``, ``params.sampling_step``) and
    :meth:`result` after sampling.  A step whose fp32 sum overflows without a NaN/Inf (values near
    3e38) also counts as bad: such a latent is broken anyway.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._sums: list[torch.Tensor] = []
        self._steps: list[int] = []

    def observe(self, x: torch.Tensor, step: int | None = None) -> None:
        self._sums.append(checksum(x.detach()))
        self._steps.append(len(self._steps) if step is None else step)

    def result(self) -> WatchResult:
        if not self._sums:
            return WatchResult(False, None, 0)
        finite = torch.isfinite(torch.stack(self._sums)).tolist()  # the one sync
        first = next((step for step, ok in zip(self._steps, finite, strict=True) if not ok), None)
        return WatchResult(first is not None, first, len(self._steps))


class UnetRemedy(str, Enum):
    UPCAST_ATTENTION = "upcast-attention"  # the host's "Upcast cross attention layer to float32"
    UNET_FP32 = "fp32"  # the whole UNet in fp32 for that image


@dataclass(frozen=True)
class UnetPlan:
    remedy: UnetRemedy | None  # what to redo the image with; None = nothing (more) to try
    message: str  # for the console and, when giving up, for the error the user sees


UNET_ADVICE = (
    "Try Settings → Stable Diffusion → 'Upcast cross attention layer to float32', or --upcast-sampling / --no-half."
)


def unet_recovery_plan(
    *,
    policy: NanPolicy,
    watch: WatchResult,
    tried: Collection[UnetRemedy] = (),
    attention_upcast: bool = False,
    unet_precision: Precision = Precision.FP16,
    input_nonfinite: bool = False,
) -> UnetPlan:
    """What to do after sampling, given what the watch saw and what was already tried for this image.

    Order: attention in fp32 (cheap: the usual overflow is Q·Kᵀ), then the whole UNet in fp32.
    A non-finite *input* latent (img2img/hires encode) is the VAE encoder's fault: no UNet redo.
    """
    if not watch.nonfinite or policy is NanPolicy.OFF:
        return UnetPlan(None, "")
    at = f" (first at step {watch.first_step})" if watch.first_step is not None else ""
    if input_nonfinite:
        return UnetPlan(None, "SSD-1B: the latent given to the sampler already held NaN/Inf: check the VAE encode.")
    if policy is NanPolicy.WARN:
        return UnetPlan(None, f"SSD-1B: sampling produced NaN/Inf{at}. {UNET_ADVICE}")
    if not attention_upcast and UnetRemedy.UPCAST_ATTENTION not in tried:
        message = f"SSD-1B: sampling produced NaN/Inf{at}; redoing it with attention in fp32."
        return UnetPlan(UnetRemedy.UPCAST_ATTENTION, message)
    if unet_precision is not Precision.FP32 and UnetRemedy.UNET_FP32 not in tried:
        return UnetPlan(UnetRemedy.UNET_FP32, f"SSD-1B: still NaN/Inf{at}; redoing it with the UNet in fp32.")
    return UnetPlan(None, f"SSD-1B: sampling produced NaN/Inf{at} even in fp32: the model or its inputs are broken.")


def unet_note(watch: WatchResult, configured: Precision, remedy: UnetRemedy | None) -> infotext.RecoveryNote:
    """The infotext note for a UNet NaN: ``unet fp16->upcast-attention at step 7`` or ``->none``."""
    after = remedy.value if remedy is not None else infotext.UNRECOVERED
    return infotext.RecoveryNote("unet", configured.value, after, step=watch.first_step)


@dataclass(frozen=True)
class SamplingRecovery:
    """What happened to one sampling run whose watch saw NaN/Inf."""

    note: infotext.RecoveryNote  # for the infotext
    message: str  # one line for the console and the toast
    fixed: bool


def sample_with_recovery(
    sample: Callable[[], torch.Tensor],
    *,
    watch: StepWatch,
    policy: NanPolicy,
    remedy: Callable[[UnetRemedy], AbstractContextManager[object]],
    rewind: Callable[[], None],
    unet_precision: Precision,
    attention_upcast: bool = False,
    nan_errors: tuple[type[BaseException], ...] = (),
    input_nonfinite: Callable[[], bool] = lambda: False,
    stopped: Callable[[], bool] = lambda: False,
) -> tuple[torch.Tensor, SamplingRecovery | None]:
    """Run ``sample()`` and, while the watch saw NaN/Inf and the plan has a remedy, run it again.

    ``remedy(r)`` enters one remedy; remedies add up and all are left when this returns, so the
    decode after sampling runs as configured.  ``rewind()`` resets the noise before each redo, so
    the redo samples the same image.  ``nan_errors``: the host's own per-step NaN exception
    (A1111 up to v1.9 raises it inside sampling); it counts as NaN and is raised again only when
    nothing fixed it.  ``stopped()``: the user interrupted, so nothing is redone.
    """
    tried: list[UnetRemedy] = []
    first: WatchResult | None = None
    with contextlib.ExitStack() as remedies:
        while True:
            watch.reset()
            error: BaseException | None = None
            samples: torch.Tensor | None = None
            try:
                samples = sample()
            except nan_errors as raised:
                error = raised
            seen = watch.result()
            if error is not None and not seen.nonfinite:
                seen = WatchResult(True, seen.first_step, seen.steps)
            if not seen.nonfinite:
                break
            if stopped():  # interrupted or skipped: what came out is what the user asked to keep
                if error is not None:
                    raise error
                assert samples is not None
                return samples, None
            first = first or seen
            plan = unet_recovery_plan(
                policy=policy,
                watch=first,
                tried=tried,
                attention_upcast=attention_upcast,
                unet_precision=Precision.FP32 if UnetRemedy.UNET_FP32 in tried else unet_precision,
                input_nonfinite=bool(not tried and input_nonfinite()),
            )
            if plan.remedy is None:
                recovery = SamplingRecovery(unet_note(first, unet_precision, None), plan.message, fixed=False)
                if error is not None:
                    raise error
                assert samples is not None
                return samples, recovery
            tried.append(plan.remedy)
            remedies.enter_context(remedy(plan.remedy))
            rewind()
    if error is not None:
        raise error
    assert samples is not None
    if first is None:
        return samples, None
    fixed_by = tried[-1]
    how = "attention in fp32" if fixed_by is UnetRemedy.UPCAST_ATTENTION else "the UNet in fp32"
    at = f" at step {first.first_step}" if first.first_step is not None else ""
    message = f"SSD-1B: sampling produced NaN/Inf{at}; redone with {how}, and that image is fine."
    return samples, SamplingRecovery(unet_note(first, unet_precision, fixed_by), message, fixed=True)


# --- TAESD-XL --------------------------------------------------------------------------------------

SDXL_LATENT_SCALE = 0.13025  # SDXL VAE scale_factor: UNet latent = VAE latent × 0.13025
TAESD_DIR = "VAE-taesd"  # models/VAE-taesd, where the webui looks (and downloads to)
TAESDXL_DECODER = "taesdxl_decoder.pth"
TAESDXL_ENCODER = "taesdxl_encoder.pth"
TAESD_URL = "https://github.com/madebyollin/taesd"


def unet_latent_from_vae_latent(z: torch.Tensor, scale: float = SDXL_LATENT_SCALE) -> torch.Tensor:
    return z * scale


def vae_latent_from_unet_latent(x: torch.Tensor, scale: float = SDXL_LATENT_SCALE) -> torch.Tensor:
    return x / scale


def taesd_decode(decoder: nn.Module, unet_latent: torch.Tensor) -> torch.Tensor:
    """Image in [-1, 1] from a UNet-scaled latent, as the webui's "TAESD" decode method does.

    The webui's TAESD decoder (raw ``taesdxl_decoder.pth``) takes the latent the UNet sees, not
    divided by the scale factor, and returns [0, 1]; the full VAE path returns [-1, 1].
    """
    weight = next(decoder.parameters())
    return decoder(unet_latent.to(weight.device, weight.dtype)).mul_(2).sub_(1)


def taesd_encode(encoder: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """UNet-scaled latent from an image in [0, 1] (the webui's ``images_tensor_to_samples`` input)."""
    weight = next(encoder.parameters())
    return encoder(image.to(weight.device, weight.dtype))

"""VAE safety while generating: each decode and encode runs in the decided VAE and precision, redone on NaN/Inf.

The decisions are the core's (:func:`~extensions_ssd1b.vae.choice.resolve_vae`,
:class:`~extensions_ssd1b.vae.nan.NanRecovery`, :func:`~extensions_ssd1b.vae.nan.sample_with_recovery`);
this module only reads the host's state for them and puts their answers where the host looks:

* ``processing.decode_first_stage`` / ``images_tensor_to_samples`` (processing imports both names):
  every decode and encode of an in-scope model runs in the decided precision under NanRecovery;
* a generation's record: the decided VAE loaded before the first decode, and every recovery in
  the infotext (``Script.process`` / ``postprocess``).  Sampling is :mod:`.sampling`'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

from ..core import infotext, settings
from ..core.errors import Ssd1bError
from ..vae import choice, nan
from . import checkpoints, vae
from .console import toast
from .patching import patch

log = logging.getLogger(__name__)

DATA_FOLDER = "ssd1b"  # under the webui's data dir: the extension's own folder may be a read-only checkout


class VaeUnavailable(Ssd1bError):
    """No VAE can decode this model: every image would be flat gray (or TAESD-XL cannot be had)."""


@dataclasses.dataclass
class _Generation:
    """What one generation collects for its infotext."""

    p: Any
    notes: list[infotext.RecoveryNote] = dataclasses.field(default_factory=list)
    told: set[str] = dataclasses.field(default_factory=set)


_active: _Generation | None = None
_recovery: nan.NanRecovery | None = None
# Held while a VAE is cast for one call: a live preview (decoded on the progress API's thread)
# waits instead of running a half-cast VAE or with our dtype_vae.  Re-entrant: the host's own calls nest
# inside ours (decode_first_stage → samples_to_images_tensor).
_vae_lock = threading.RLock()
_in_our_call = threading.local()


# -- one generation's record -----------------------------------------------------------------------


def begin_generation(p: Any) -> None:
    """Script.process: load the decided VAE before the first decode and put it into the infotext."""
    global _active
    from modules import sd_vae, shared

    _active = None
    model = shared.sd_model
    decision = vae.decide_vae(checkpoints.model_file(model))
    if decision is None:
        return
    _active = _Generation(p)
    if isinstance(decision, choice.VaeRefusal):
        return  # raised from sample(), outside the script runner that would only log it
    vae.announce(decision)
    if decision.source is not choice.VaeSource.TAESD_XL:
        expected = decision.path if decision.source is choice.VaeSource.FILE else None
        if sd_vae.loaded_vae_file != expected:  # e.g. the file was added after the checkpoint loaded
            sd_vae.reload_vae_weights(model)
            # The host read these for the infotext's "VAE" and "VAE hash" before Script.process.
            p.sd_vae_name, p.sd_vae_hash = sd_vae.get_loaded_vae_name(), sd_vae.get_loaded_vae_hash()
    p.extra_generation_params.update(decision.infotext())


def end_generation(p: Any) -> None:
    global _active
    if _active is not None and _active.p is p:
        _active = None


def tell(message: str) -> None:
    """One console line and one toast per generation for the same message."""
    if _active is not None:
        if message in _active.told:
            return
        _active.told.add(message)
    log.info("%s", message.removeprefix("SSD-1B: "))
    toast(message.removeprefix("SSD-1B: "))


def record(notes: list[infotext.RecoveryNote]) -> None:
    if _active is None or not notes:
        return
    _active.notes.extend(notes)
    _active.p.extra_generation_params[infotext.KEY_NAN_RECOVERY] = infotext.format_recovery(_active.notes)


# -- decode and encode -----------------------------------------------------------------------------


def _nan_recovery() -> nan.NanRecovery:
    global _recovery
    if _recovery is None:
        from modules import devices, paths_internal

        store = nan.PrecisionStore(os.path.join(paths_internal.data_path, DATA_FOLDER))
        _recovery = nan.NanRecovery(store, choice.bf16_is_fast(devices.device), report=_report_event)
    return _recovery


def _report_event(event: nan.NanEvent) -> None:
    log.info("%s", event.console_line().removeprefix("SSD-1B: "))
    toast(event.toast())


@contextlib.contextmanager
def _vae_in(module: Any, precision: settings.Precision) -> Iterator[None]:
    """The VAE module and the host's ``dtype_vae`` in ``precision`` for one call, then as they were.

    ``dtype_vae`` goes along because the host casts the latent (decode) and the whole VAE (encode)
    to it inside the call.
    """
    from modules import devices

    saved = devices.dtype_vae
    devices.dtype_vae = nan.DTYPES[precision]
    try:
        with nan.module_precision(module, precision):
            yield
    finally:
        devices.dtype_vae = saved


def _precision_for(module: Any, decided: settings.Precision) -> settings.Precision:
    """``decided``, unless the host has converted the VAE and ``dtype_vae`` to something safer.

    That is the host's own NaN fallback (``decode_latent_batch``: fp32, or bf16 from v1.8) redoing
    a decode that our policy (Warn/Off) handed back with NaN: forcing ``decided`` again would redo
    it in the precision that just failed, and the image would stay black.
    """
    from modules import devices

    weights = next((t.dtype for t in module.parameters()), None)
    if weights != devices.dtype_vae or weights not in nan.DTYPES.values():
        return decided
    host = nan.precision_of(weights)
    return host if nan.is_safer(host, decided) else decided


def _run_vae(
    call: Callable[[], Any],
    module: Any,
    stage: nan.Stage,
    decision: choice.VaeDecision,
    policy: settings.NanPolicy,
    inputs: Any,
) -> Any:
    recovery = _nan_recovery()
    precision = _precision_for(module, decision.precision)
    try:
        with _vae_lock, _ours(), _vae_in(module, precision):
            return recovery.run(
                call,
                stage=stage,
                vae=decision.identity(),
                precision=precision,
                with_precision=functools.partial(_vae_in, module),
                policy=policy,
                learn=decision.precision_auto,
                inputs=inputs,
            )
    finally:
        record(recovery.take_notes())


@contextlib.contextmanager
def _ours() -> Iterator[None]:
    """Marks this thread as inside one of our decode/encode calls (the host's inner calls pass through)."""
    outer = getattr(_in_our_call, "active", False)
    _in_our_call.active = True
    try:
        yield
    finally:
        _in_our_call.active = outer


def _samples_to_images_tensor(
    original: Callable[..., Any], sample: Any, approximation: Any = None, model: Any = None, *args: Any, **kwargs: Any
) -> Any:
    """Live previews ("Full") decode with the decided VAE, in the precision the main decode starts in.

    The host decodes previews through ``model.decode_first_stage``, past our decode wrapper and on
    another thread; without this a preview would run an fp16 VAE the decision keeps out of fp16
    (or a VAE half-way through our cast).  No NaN retry and no record: it is a preview.
    """
    from modules import lowvram, sd_samplers_common, shared

    call = functools.partial(original, sample, approximation, model, *args, **kwargs)
    if getattr(_in_our_call, "active", False):
        return call()  # our own decode, already in the decided VAE and precision
    target = model if model is not None else shared.sd_model
    resolved = approximation
    if resolved is None:  # how the host picks the preview method
        resolved = sd_samplers_common.approximation_indexes.get(shared.opts.show_progress_type, 0)
        if resolved == 0 and lowvram.is_enabled(target) and not shared.opts.live_preview_allow_lowvram_full:
            resolved = 1
    decision = in_scope_vae(target, resolved == 0)
    if decision is None:
        return call()
    if decision.source is choice.VaeSource.TAESD_XL:
        module = _taesd(nan.Stage.DECODE)
        call = functools.partial(nan.taesd_decode, module, sample)
    else:
        module = target.first_stage_model
    configured = _precision_for(module, decision.precision)
    recovery = _nan_recovery()
    start = recovery.starting_precision(decision.identity(), nan.Stage.DECODE, configured)
    with _vae_lock, _ours(), _vae_in(module, start if decision.precision_auto else configured):
        return call()


def _taesd(stage: nan.Stage) -> Any:
    """The host's TAESD-XL decoder or encoder module (it picks the XL files for SDXL-family models)."""
    from modules import paths, sd_vae_taesd

    decoder = stage is nan.Stage.DECODE
    try:
        return sd_vae_taesd.decoder_model() if decoder else sd_vae_taesd.encoder_model()
    except Exception as error:  # the host downloads missing files: offline that fails in several ways
        file = nan.TAESDXL_DECODER if decoder else nan.TAESDXL_ENCODER
        folder = os.path.join(paths.models_path, nan.TAESD_DIR)
        raise VaeUnavailable(
            f"TAESD-XL needs {file} in {folder}, and the webui could not get it ({error}). "
            f"Download it from {nan.TAESD_URL} into that folder, or choose another VAE in Settings → SSD-1B."
        ) from error


def in_scope_vae(model: Any, full_vae: bool) -> choice.VaeDecision | None:
    """The decision for ``model``; None where the host's own handling applies: out of scope, or
    ``full_vae`` False (the user chose the host's TAESD method, which needs no VAE weights)."""
    if not full_vae:
        return None
    decision = vae.decide_vae(checkpoints.model_file(model))
    if isinstance(decision, choice.VaeRefusal):
        tell(decision.message)
        raise VaeUnavailable(decision.message)  # never decode gray
    return decision


def _decode_first_stage(original: Callable[..., Any], model: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    from modules import shared

    decision = in_scope_vae(model, shared.opts.sd_vae_decode_method == "Full")
    if decision is None:
        return original(model, x, *args, **kwargs)
    policy = vae.read_settings().nan_decode
    if decision.source is choice.VaeSource.TAESD_XL:
        decoder = _taesd(nan.Stage.DECODE)
        call = functools.partial(nan.taesd_decode, decoder, x)
        return _run_vae(call, decoder, nan.Stage.DECODE, decision, policy, x)
    call = functools.partial(original, model, x, *args, **kwargs)
    return _run_vae(call, model.first_stage_model, nan.Stage.DECODE, decision, policy, x)


def _images_tensor_to_samples(
    original: Callable[..., Any], image: Any, approximation: Any = None, model: Any = None, *args: Any, **kwargs: Any
) -> Any:
    from modules import sd_samplers_common, shared

    target = model if model is not None else shared.sd_model
    if approximation is None:
        approximation = sd_samplers_common.approximation_indexes.get(shared.opts.sd_vae_encode_method, 0)
    call = functools.partial(original, image, approximation, model, *args, **kwargs)
    decision = in_scope_vae(target, approximation == 0)  # 0: "Full"
    if decision is None:
        return call()
    policy = vae.read_settings().nan_encode
    if decision.source is choice.VaeSource.TAESD_XL:
        encoder = _taesd(nan.Stage.ENCODE)
        call = functools.partial(nan.taesd_encode, encoder, image)
        return _run_vae(call, encoder, nan.Stage.ENCODE, decision, policy, image)
    return _run_vae(call, target.first_stage_model, nan.Stage.ENCODE, decision, policy, image)


# -- installing ------------------------------------------------------------------------------------


def install_vae_safety() -> None:
    """VAE resolution and NaN-safe decode/encode (scripts/ wires it; idempotent)."""
    global _active, _recovery
    from modules import processing, sd_samplers_common, sd_vae

    _active, _recovery = None, None  # a new host (tests) or a reload starts afresh
    vae.forget_announcements()
    patch(sd_vae, "resolve_vae", vae.resolve_vae)
    patch(processing, "decode_first_stage", _decode_first_stage)
    patch(processing, "images_tensor_to_samples", _images_tensor_to_samples)
    patch(sd_samplers_common, "samples_to_images_tensor", _samples_to_images_tensor)

"""NaN/Inf detection, per-image recovery with memory, fingerprints, the UNet step watch, TAESD scaling.

The VAEs and UNets here are small real modules whose fp16 activations overflow for chosen inputs,
exactly like the SDXL VAE's up-blocks or an fp16 attention's Q·Kᵀ: bf16 and fp32 do not overflow.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from extensions_ssd1b.core import infotext
from extensions_ssd1b.core.settings import NanPolicy, Precision
from extensions_ssd1b.vae.nan import (
    FINGERPRINT_TENSORS,
    NanEvent,
    NanRecovery,
    NonFiniteError,
    PrecisionStore,
    Stage,
    StepWatch,
    UnetRemedy,
    VaeIdentity,
    WatchResult,
    all_finite,
    blockwise_forward_precision,
    checksum,
    file_fingerprint,
    fingerprint_sources,
    module_forward_precision,
    module_precision,
    precision_of,
    safer_precisions,
    sample_with_recovery,
    taesd_decode,
    taesd_encode,
    unet_latent_from_vae_latent,
    unet_note,
    unet_recovery_plan,
    vae_fingerprint,
    vae_latent_from_unet_latent,
)

FP16_MAX = torch.finfo(torch.float16).max
OVERFLOW = 300.0  # × GAIN = 90000 > 65504: overflows fp16, fine in bf16 and fp32
GAIN = 300.0


def fp16_exact(tensor: torch.Tensor) -> torch.Tensor:
    """Round to fp16 values so an fp16 copy of a module upcast to fp32 equals the fp32 original."""
    return tensor.half().float()


class OverflowVae(nn.Module):
    """A decoder whose fp16 activations overflow where the latent is large.

    ``spread`` sends each latent channel to a +GAIN and (``cancel``) a -GAIN branch; ``merge`` adds the
    branches with positive weights, so an fp16 overflow gives +Inf + -Inf = NaN (``cancel``) or +Inf.
    ``groupnorm`` spreads one bad pixel over the whole image, as the real SDXL VAE does.
    """

    def __init__(self, *, cancel: bool = True, groupnorm: bool = False, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.spread = nn.Conv2d(4, 8, 1, bias=False)
        self.norm = nn.GroupNorm(1, 8) if groupnorm else nn.Identity()
        self.merge = nn.Conv2d(8, 3, 1, bias=False)
        spread = torch.randn(8, 4, generator=generator) * 0.1
        for channel in range(4):
            spread[2 * channel, channel] = GAIN
            spread[2 * channel + 1, channel] = -GAIN if cancel else GAIN
        self.spread.weight.data = fp16_exact(spread.view(8, 4, 1, 1))
        self.merge.weight.data = fp16_exact(torch.rand(3, 8, 1, 1, generator=generator) * 0.9 + 0.1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        weight = self.spread.weight
        return self.merge(self.norm(self.spread(z.to(weight.dtype))))


def latent(pattern: str, size: int = 8) -> torch.Tensor:
    z = fp16_exact(torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(1)))
    if pattern == "middle":
        z[..., size // 2, size // 2] = OVERFLOW
    elif pattern == "all_but_first":
        z[...] = OVERFLOW
        z[..., 0, 0] = 1.0
    elif pattern != "none":
        raise ValueError(pattern)
    return z


def fp32_reference(vae: nn.Module, z: torch.Tensor) -> torch.Tensor:
    return copy.deepcopy(vae).float()(z)


def counting(vae: nn.Module) -> list[torch.dtype]:
    """The dtype of every forward call, via a hook (the module itself is untouched)."""
    calls: list[torch.dtype] = []
    vae.register_forward_hook(lambda _module, _inputs, output: calls.append(output.dtype))
    return calls


def host_v110_check(x: torch.Tensor) -> bool:
    """devices.test_for_nans in v1.10: only the first element is looked at.  True = 'has NaN'."""
    return bool(torch.isnan(x[(0,) * x.ndim]))


def host_v16_check(x: torch.Tensor) -> bool:
    """devices.test_for_nans in v1.6–v1.9: raises only when *all* elements are NaN."""
    return bool(torch.all(torch.isnan(x)))


# --- all_finite -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("first", math.nan),
        ("middle", math.nan),
        ("last", math.nan),
        ("middle", math.inf),
        ("middle", -math.inf),
    ],
)
def test_all_finite_finds_one_bad_element_anywhere(dtype: torch.dtype, where: str, value: float) -> None:
    x = torch.randn(2, 3, 17, 19).to(dtype)
    index = {"first": 0, "middle": x.numel() // 2, "last": x.numel() - 1}[where]
    assert all_finite(x)
    x.view(-1)[index] = value
    assert not all_finite(x)
    assert not math.isfinite(checksum(x).item())


def test_plus_and_minus_inf_do_not_cancel_into_a_finite_sum() -> None:
    x = torch.zeros(1000, dtype=torch.float16)
    x[10], x[900] = math.inf, -math.inf
    assert not all_finite(x)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_huge_finite_values_whose_sum_overflows_are_still_finite(dtype: torch.dtype) -> None:
    x = torch.full((64,), 3.0e38, dtype=torch.float64).to(dtype)  # the fp32 sum is +Inf
    assert torch.isfinite(x).all()
    assert not math.isfinite(checksum(x).item())  # the fast check alone would call it broken ...
    assert all_finite(x)  # ... the element-wise confirmation does not


def test_fp16_sum_cannot_overflow_fp32() -> None:
    x = torch.full((1, 3, 1024, 1024), FP16_MAX, dtype=torch.float16)
    assert all_finite(x)
    assert math.isfinite(checksum(x).item())


def test_trivial_tensors_are_finite() -> None:
    assert all_finite(torch.empty(0))
    assert all_finite(torch.tensor([1, 2, 3]))
    assert not all_finite(torch.tensor([1 + 1j, complex(math.nan, 0)]))
    assert not all_finite(torch.tensor([1 + 1j, complex(0, math.inf)]))
    assert all_finite(torch.tensor([1 + 1j, 2 - 3j]))


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    bad=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.sampled_from([math.nan, math.inf, -math.inf]))),
    dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32]),
    scale=st.sampled_from([1.0, 1e4, 6e4]),
)
def test_all_finite_agrees_with_elementwise_isfinite(shape, bad, dtype, scale) -> None:
    x = (torch.randn(shape) * scale).to(dtype)
    for position, value in bad:
        x.view(-1)[int(position * x.numel())] = value
    assert all_finite(x) == bool(torch.isfinite(x).all())


def test_overflow_patterns_the_host_checks_miss() -> None:
    """Why one fused check over the whole tensor: the webui's own checks miss these."""
    vae = OverflowVae().half()
    middle = vae(latent("middle"))
    assert torch.isnan(middle).sum() == 3  # one pixel, three channels
    assert not host_v110_check(middle) and not host_v16_check(middle) and not all_finite(middle)
    most = vae(latent("all_but_first"))
    assert torch.isfinite(most.flatten()[0]) and torch.isnan(most).sum() == most.numel() - 3
    assert not host_v110_check(most) and not host_v16_check(most) and not all_finite(most)
    inf_only = OverflowVae(cancel=False).half()(latent("middle"))
    assert torch.isinf(inf_only).any() and not torch.isnan(inf_only).any()
    assert not host_v110_check(inf_only) and not all_finite(inf_only)
    assert all_finite(fp32_reference(vae, latent("all_but_first")))


# --- precisions and casting -------------------------------------------------------------------------


def test_safer_precisions_by_range() -> None:
    assert safer_precisions(Precision.FP16, bf16_supported=True) == (Precision.BF16, Precision.FP32)
    assert safer_precisions(Precision.FP16, bf16_supported=False) == (Precision.FP32,)
    assert safer_precisions(Precision.BF16, bf16_supported=True) == (Precision.FP32,)
    assert safer_precisions(Precision.FP32, bf16_supported=True) == ()
    assert precision_of(torch.bfloat16) is Precision.BF16
    with pytest.raises(ValueError):
        precision_of(torch.int8)


def test_module_precision_gives_back_the_original_tensors_bit_for_bit() -> None:
    vae = OverflowVae(groupnorm=True).half()
    vae.register_buffer("scale", torch.tensor([0.1], dtype=torch.float16))
    parameters = {name: p for name, p in vae.named_parameters()}
    before = {name: t.clone() for name, t in vae.state_dict().items()}
    for precision in (Precision.BF16, Precision.FP32):
        with module_precision(vae, precision):
            assert {t.dtype for t in vae.state_dict().values()} == {_dtype(precision)}
    after = vae.state_dict()
    assert all(torch.equal(before[name], after[name]) and after[name].dtype == torch.float16 for name in before)
    assert all(p is parameters[name] for name, p in vae.named_parameters())  # same Parameter objects


def _dtype(precision: Precision) -> torch.dtype:
    return {Precision.FP16: torch.float16, Precision.BF16: torch.bfloat16, Precision.FP32: torch.float32}[precision]


class LightningLikeVae(OverflowVae):
    """Like sgm's AutoencoderKL (a LightningModule): ``.dtype`` is a stored attribute, not the weights'."""

    def __init__(self) -> None:
        super().__init__()
        self._dtype = torch.float32

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def half(self) -> LightningLikeVae:
        self._dtype = torch.float16
        return super().half()


def test_module_precision_switches_a_lightning_modules_reported_dtype() -> None:
    vae = LightningLikeVae().half()
    z = latent("middle")

    def webui_decode() -> torch.Tensor:  # samples_to_images_tensor: sample.to(first_stage_model.dtype)
        return vae.merge(vae.spread(z.to(vae.dtype)))

    with module_precision(vae, Precision.FP32):
        assert vae.dtype == torch.float32
        assert all_finite(webui_decode())
    assert vae.dtype == torch.float16 and not all_finite(webui_decode())


def test_module_precision_restores_after_an_exception() -> None:
    vae = OverflowVae().half()
    with pytest.raises(RuntimeError), module_precision(vae, Precision.FP32):
        raise RuntimeError("decode failed")
    assert vae.spread.weight.dtype == torch.float16


def test_module_precision_gives_back_the_originals_where_the_module_was_moved_meanwhile() -> None:
    """The host's --medvram/--lowvram hook moves the module to the GPU while it runs, inside our cast."""
    vae = OverflowVae().half()
    vae.register_buffer("scale", torch.tensor([0.1], dtype=torch.float16))
    with module_precision(vae, Precision.FP32):
        vae.to("meta")  # what send_me_to_gpu does; meta stands for the second device here
    assert {(t.device.type, t.dtype) for t in vae.state_dict().values()} == {("meta", torch.float16)}


class Chain(nn.Module):
    """A UNet in miniature: blocks run one after another, each recording how many blocks hold fp32 weights."""

    def __init__(self, width: int = 8, depth: int = 4) -> None:
        super().__init__()
        self.stem = nn.Linear(width, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(width, width), nn.GELU()) for _ in range(depth))
        self.out = nn.Linear(width, width)
        self.fp32_blocks_seen: list[int] = []
        for block in (self.stem, *self.blocks, self.out):
            block.register_forward_hook(lambda *_: self.fp32_blocks_seen.append(self.fp32_blocks()))

    def fp32_blocks(self) -> int:
        return sum(next(b.parameters()).dtype == torch.float32 for b in (self.stem, *self.blocks, self.out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.out(x)


def test_blockwise_precision_holds_one_block_in_fp32_and_computes_as_the_whole_copy_would() -> None:
    model = Chain().half()
    x = torch.randn(2, 8, generator=torch.Generator().manual_seed(0)).half()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    tensors = {k: v.data_ptr() for k, v in model.state_dict().items()}
    with module_forward_precision(model, Precision.FP32):
        whole = model(x)
    assert model.fp32_blocks_seen == [6] * 6
    model.fp32_blocks_seen.clear()

    with blockwise_forward_precision(model, Precision.FP32):
        blockwise = model(x)
        assert model.fp32_blocks() == 0  # nothing left cast between calls
    assert model.fp32_blocks_seen == [1] * 6
    assert blockwise.dtype == torch.float32 and torch.equal(blockwise, whole)
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == tensors  # the fp16 originals themselves
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert "forward" not in vars(model)
    assert all(not b._forward_pre_hooks and len(b._forward_hooks) == 1 for b in (model.stem, *model.blocks, model.out))


def test_blockwise_precision_restores_a_block_that_raised() -> None:
    model = Chain().half()

    def fail(*_: object) -> None:
        raise RuntimeError("out of memory")

    model.blocks[2].register_forward_hook(fail)
    with blockwise_forward_precision(model, Precision.FP32), pytest.raises(RuntimeError, match="out of memory"):
        model(torch.zeros(1, 8, dtype=torch.float16))
    assert model.fp32_blocks() == 0


# --- the recovery ----------------------------------------------------------------------------------


class Harness:
    """One fp16 VAE, its decode call and precision switch, wired to a NanRecovery."""

    def __init__(self, recovery: NanRecovery, vae: nn.Module, fingerprint: str | None = "vae-a") -> None:
        self.recovery, self.vae = recovery, vae
        self.identity = VaeIdentity(f"toy {fingerprint}", fingerprint)
        self.calls = counting(vae)

    def decode(self, z: torch.Tensor, **options: object) -> torch.Tensor:
        return self.recovery.run(
            lambda: self.vae(z),
            stage=options.pop("stage", Stage.DECODE),  # type: ignore[arg-type]
            vae=self.identity,
            precision=Precision.FP16,
            with_precision=lambda p: module_precision(self.vae, p),
            **options,  # type: ignore[arg-type]
        )


@pytest.fixture
def reports() -> list[NanEvent]:
    return []


def make_recovery(tmp_path: Path, reports: list[NanEvent], *, bf16: bool = False) -> NanRecovery:
    return NanRecovery(PrecisionStore(tmp_path), bf16_supported=bf16, report=reports.append)


@pytest.mark.parametrize(
    ("pattern", "cancel", "groupnorm"),
    [
        ("middle", True, False),  # a single NaN pixel in the middle
        ("all_but_first", True, False),  # first element finite, the rest NaN
        ("middle", False, False),  # +Inf only
        ("middle", True, True),  # the whole image NaN (GroupNorm), as the SDXL VAE does
    ],
)
def test_recovery_returns_the_fp32_result_and_records_it(
    tmp_path: Path, reports: list[NanEvent], pattern: str, cancel: bool, groupnorm: bool
) -> None:
    vae = OverflowVae(cancel=cancel, groupnorm=groupnorm).half()
    z = latent(pattern)
    reference = fp32_reference(vae, z)
    harness = Harness(make_recovery(tmp_path, reports), vae)

    image = harness.decode(z)

    assert all_finite(image) and torch.equal(image, reference)
    assert harness.calls == [torch.float16, torch.float32]  # the wasted fp16 try, one fp32 redo
    assert vae.spread.weight.dtype == torch.float16  # the VAE is given back as it was
    assert [(e.configured, e.used, e.tried) for e in reports] == [(Precision.FP16, Precision.FP32, (Precision.FP16,))]
    assert "redone in fp32" in reports[0].console_line() and "fp32" in (reports[0].toast() or "")
    notes = harness.recovery.take_notes()
    assert infotext.format_recovery(notes) == "decode fp16->fp32"
    assert harness.recovery.take_notes() == []


def test_retry_uses_bf16_when_the_device_has_it(tmp_path: Path, reports: list[NanEvent]) -> None:
    vae = OverflowVae(groupnorm=True).half()
    z = latent("middle")
    harness = Harness(make_recovery(tmp_path, reports, bf16=True), vae)
    image = harness.decode(z)
    assert harness.calls == [torch.float16, torch.bfloat16]
    assert all_finite(image)
    torch.testing.assert_close(image.float(), fp32_reference(vae, z), rtol=0.02, atol=0.05)


def test_second_image_with_the_same_vae_needs_no_retry(tmp_path: Path, reports: list[NanEvent]) -> None:
    vae = OverflowVae().half()
    harness = Harness(make_recovery(tmp_path, reports), vae)
    harness.decode(latent("middle"))
    harness.calls.clear()

    second = latent("all_but_first")
    image = harness.decode(second)

    assert harness.calls == [torch.float32]  # straight to the learned precision
    assert torch.equal(image, fp32_reference(vae, second))
    assert infotext.format_recovery(harness.recovery.take_notes()) == "decode fp16->fp32; decode fp16->fp32 remembered"
    harness.decode(latent("none"))
    assert len(reports) == 2  # the retry, then "remembered" announced once, not per image


def test_other_vaes_and_other_stages_keep_their_own_memory(tmp_path: Path, reports: list[NanEvent]) -> None:
    recovery = make_recovery(tmp_path, reports, bf16=True)
    broken_in_fp16 = Harness(recovery, OverflowVae(groupnorm=True).half(), "vae-a")
    broken_in_fp16.decode(latent("middle"), policy=NanPolicy.RECOVER)
    other = Harness(recovery, OverflowVae(seed=3).half(), "vae-b")
    other.decode(latent("none"))
    assert other.calls == [torch.float16]
    assert recovery.learned(other.identity, Stage.DECODE) is None
    assert recovery.learned(broken_in_fp16.identity, Stage.DECODE) is Precision.BF16
    assert recovery.learned(broken_in_fp16.identity, Stage.ENCODE) is None
    broken_in_fp16.decode(latent("middle"), stage=Stage.ENCODE)
    assert broken_in_fp16.calls[-2:] == [torch.float16, torch.bfloat16]  # encode learns on its own


def test_the_store_survives_a_new_process(tmp_path: Path, reports: list[NanEvent]) -> None:
    Harness(make_recovery(tmp_path, reports), OverflowVae().half()).decode(latent("middle"))
    stored = json.loads((tmp_path / PrecisionStore.FILE_NAME).read_text())
    assert stored["vaes"]["vae-a"]["decode"] == "fp32"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # atomic write left nothing behind

    fresh = Harness(NanRecovery(PrecisionStore(tmp_path), bf16_supported=False), OverflowVae().half())
    fresh.decode(latent("middle"))
    assert fresh.calls == [torch.float32]


def test_corrupt_store_is_ignored_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / PrecisionStore.FILE_NAME
    for garbage in ('{"format": 1, "vaes": [1, 2]', "[]", '{"format": 99, "vaes": {}}', "\x00\xff"):
        path.write_text(garbage, encoding="utf-8", errors="surrogateescape")
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            store = PrecisionStore(tmp_path)
        assert store.snapshot() == {}
        assert "corrupt" in caplog.text
    store.remember("vae-a", Stage.DECODE, Precision.BF16, name="x.safetensors")
    assert PrecisionStore(tmp_path).get("vae-a", Stage.DECODE) is Precision.BF16


def test_store_drops_unknown_values_and_forgets(tmp_path: Path) -> None:
    document = {"format": 1, "vaes": {"a": {"decode": "fp8", "encode": "fp32"}, "b": "nonsense"}}
    (tmp_path / PrecisionStore.FILE_NAME).write_text(json.dumps(document))
    store = PrecisionStore(tmp_path)
    assert store.get("a", Stage.DECODE) is None and store.get("a", Stage.ENCODE) is Precision.FP32
    store.forget("a")
    assert PrecisionStore(tmp_path).snapshot() == {}


def test_unwritable_store_keeps_the_session_memory(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    recovery = NanRecovery(PrecisionStore(blocker / "sub"), bf16_supported=False)  # a file where the dir should be
    harness = Harness(recovery, OverflowVae().half())
    with caplog.at_level(logging.WARNING):
        harness.decode(latent("middle"))
    assert "cannot write" in caplog.text
    harness.calls.clear()
    harness.decode(latent("middle"))
    assert harness.calls == [torch.float32]


def test_vae_without_fingerprint_is_remembered_for_the_session_only(tmp_path: Path) -> None:
    recovery = NanRecovery(PrecisionStore(tmp_path), bf16_supported=False)
    harness = Harness(recovery, OverflowVae().half(), fingerprint=None)
    harness.decode(latent("middle"))
    harness.calls.clear()
    harness.decode(latent("middle"))
    assert harness.calls == [torch.float32]
    assert not (tmp_path / PrecisionStore.FILE_NAME).exists()


def test_warn_reports_and_keeps_the_image(tmp_path: Path, reports: list[NanEvent]) -> None:
    harness = Harness(make_recovery(tmp_path, reports), OverflowVae().half())
    image = harness.decode(latent("middle"), policy=NanPolicy.WARN)
    assert not all_finite(image) and harness.calls == [torch.float16]
    assert reports[0].used is None and "left as it came out" in reports[0].console_line()
    assert infotext.format_recovery(harness.recovery.take_notes()) == "decode fp16->none"
    assert harness.recovery.learned(harness.identity, Stage.DECODE) is None


def test_off_does_not_even_check(tmp_path: Path, reports: list[NanEvent], monkeypatch: pytest.MonkeyPatch) -> None:
    harness = Harness(make_recovery(tmp_path, reports), OverflowVae().half())
    monkeypatch.setattr("extensions_ssd1b.vae.nan.all_finite", lambda _: pytest.fail("checked with policy Off"))
    image = harness.decode(latent("middle"), policy=NanPolicy.OFF)
    assert not torch.isfinite(image).all() and reports == []


def test_nan_coming_into_the_vae_is_not_blamed_on_it(tmp_path: Path, reports: list[NanEvent]) -> None:
    harness = Harness(make_recovery(tmp_path, reports), OverflowVae().half())
    z = latent("none")
    z[0, 0, 3, 3] = math.nan  # what a NaN UNet hands over
    harness.decode(z, inputs=z)
    assert harness.calls == [torch.float16]
    assert reports[0].upstream and "nothing remembered" in reports[0].console_line()
    assert harness.recovery.learned(harness.identity, Stage.DECODE) is None
    assert harness.recovery.take_notes() == []  # the UNet note tells that story


def test_explicit_precision_is_not_replaced_by_the_learned_one(tmp_path: Path, reports: list[NanEvent]) -> None:
    harness = Harness(make_recovery(tmp_path, reports), OverflowVae().half())
    harness.decode(latent("middle"))
    harness.calls.clear()
    image = harness.decode(latent("middle"), learn=False)  # the user set "fp16" explicitly
    assert harness.calls == [torch.float16, torch.float32] and all_finite(image)


def test_a_vae_broken_in_every_precision_raises_and_remembers_nothing(tmp_path: Path, reports: list[NanEvent]) -> None:
    vae = OverflowVae().half()
    vae.merge.weight.data[0, 0] = math.nan  # damaged weights: no precision helps
    harness = Harness(make_recovery(tmp_path, reports, bf16=True), vae)
    with pytest.raises(NonFiniteError, match="not fp16 overflow"):
        harness.decode(latent("none"))
    assert harness.calls == [torch.float16, torch.bfloat16, torch.float32]
    assert harness.recovery.learned(harness.identity, Stage.DECODE) is None
    assert infotext.format_recovery(harness.recovery.take_notes()) == "decode fp16->none"


# --- fingerprints ------------------------------------------------------------------------------------


def ldm_vae_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    """The fingerprint tensors at their real SDXL VAE shapes, plus one unrelated tensor."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {
        "decoder.conv_in.weight": (512, 4, 3, 3),
        "decoder.up.0.block.2.conv2.weight": (128, 128, 3, 3),
        "decoder.conv_out.weight": (3, 128, 3, 3),
        "post_quant_conv.weight": (4, 4, 1, 1),
        "decoder.mid.block_1.conv1.weight": (8, 8, 3, 3),
    }
    return {name: torch.randn(shape, generator=generator) * 0.05 for name, shape in shapes.items()}


def test_fingerprint_is_the_same_for_fp32_fp16_and_any_prefix() -> None:
    tensors = ldm_vae_tensors()
    reference = vae_fingerprint(tensors)
    assert vae_fingerprint({k: v.half() for k, v in tensors.items()}) == reference
    assert vae_fingerprint({f"first_stage_model.{k}": v for k, v in tensors.items()}) == reference
    assert vae_fingerprint({name: tensors[name] for name in FINGERPRINT_TENSORS}) == reference
    changed = dict(tensors)
    changed["decoder.up.0.block.2.conv2.weight"] = changed["decoder.up.0.block.2.conv2.weight"] * 0.5  # fp16-fix style
    assert vae_fingerprint(changed) != reference
    assert vae_fingerprint(ldm_vae_tensors(seed=1)) != reference
    with pytest.raises(KeyError):
        vae_fingerprint({"decoder.conv_in.weight": tensors["decoder.conv_in.weight"]})


def test_fingerprint_matches_across_ldm_and_diffusers_names() -> None:
    """diffusers' own LDM→diffusers converter decides the names, not this extension."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    tensors = ldm_vae_tensors()
    config = {"down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4}
    diffusers_named = convert_ldm_vae_checkpoint({f"first_stage_model.{k}": v for k, v in tensors.items()}, config)
    sources = fingerprint_sources(diffusers_named.keys())
    assert sources is not None and "decoder.up_blocks.3.resnets.2.conv2.weight" in sources.values()
    assert vae_fingerprint(diffusers_named) == vae_fingerprint(tensors)


def test_file_fingerprint_reads_only_the_header_and_four_tensors(tmp_path: Path) -> None:
    tensors = ldm_vae_tensors()
    fp32_file, fp16_file, checkpoint = (
        tmp_path / "a.safetensors",
        tmp_path / "b.safetensors",
        tmp_path / "c.safetensors",
    )
    save_file(tensors, fp32_file)
    save_file({k: v.half() for k, v in tensors.items()}, fp16_file)
    save_file(
        {"model.diffusion_model.x": torch.zeros(2), **{f"first_stage_model.{k}": v for k, v in tensors.items()}},
        checkpoint,
    )
    expected = vae_fingerprint(tensors)
    assert file_fingerprint(fp32_file) == file_fingerprint(fp16_file) == file_fingerprint(checkpoint) == expected
    save_file({"lora_unet_down.weight": torch.zeros(2)}, tmp_path / "lora.safetensors")
    assert file_fingerprint(tmp_path / "lora.safetensors") is None


# --- UNet: the step watch and the recovery plan --------------------------------------------------------


class TinyDenoiser(nn.Module):
    """One attention layer and one feed-forward layer, with the host's ``upcast_attn`` switch.

    fp16 overflows in Q·Kᵀ once the input is large enough (``attention_gain``), or in the
    feed-forward layer (``ff_gain``), which upcasting attention does not help.
    """

    def __init__(self, attention_gain: float = 1.0, ff_gain: float = 0.0) -> None:
        super().__init__()
        self.to_q = nn.Linear(4, 4, bias=False)
        self.to_k = nn.Linear(4, 4, bias=False)
        self.to_v = nn.Linear(4, 4, bias=False)
        self.ff = nn.Linear(4, 4, bias=False)
        eye = torch.eye(4)
        self.to_q.weight.data = eye * attention_gain
        self.to_k.weight.data = eye * attention_gain
        self.to_v.weight.data = eye * 0.5
        self.ff.weight.data = eye * ff_gain
        self.upcast_attention = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.to_q.weight.dtype
        tokens = x.to(dtype).flatten(2).transpose(1, 2)
        q, k, v = self.to_q(tokens), self.to_k(tokens), self.to_v(tokens)
        if self.upcast_attention:
            q, k = q.float(), k.float()
        attention = (q @ k.transpose(1, 2)).softmax(-1).to(dtype)
        out = attention @ v
        if self.ff.weight.abs().sum() > 0:
            out = out + (self.ff(tokens) - self.ff(tokens)) * 0.5  # Inf - Inf = NaN when ff overflows
        return out.transpose(1, 2).reshape(x.shape)


SCALES = [1.0, 4.0, 16.0, 64.0, 128.0, 256.0, 512.0]


def sample(model: nn.Module, watch: StepWatch) -> torch.Tensor:
    """A toy sampler: the model sees the latent at growing scales, like sigma-scaled inputs."""
    watch.reset()
    x = fp16_exact(torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(5)))
    for step, scale in enumerate(SCALES):
        denoised = model(x * scale).float() / scale
        watch.observe(denoised, step)
        x = x - 0.1 * denoised
    return x


def first_overflowing_step(model: TinyDenoiser) -> int:
    """Independently of the watch: the first step whose fp32 activations leave fp16's range."""
    x = fp16_exact(torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(5)))
    reference = copy.deepcopy(model).float()
    for step, scale in enumerate(SCALES):
        tokens = (x * scale).flatten(2).transpose(1, 2)
        logits = reference.to_q(tokens) @ reference.to_k(tokens).transpose(1, 2)
        if logits.abs().max() > FP16_MAX or reference.ff(tokens).abs().max() > FP16_MAX:
            return step
        x = x - 0.1 * reference(x * scale) / scale
    raise AssertionError("never overflows")


def redo_until_finite(model: TinyDenoiser) -> tuple[torch.Tensor, list[UnetRemedy], WatchResult]:
    """What the host adapter does after sampling: ask the plan, apply, sample that image again."""
    watch, tried = StepWatch(), []
    first_watch = None
    while True:
        result = sample(model, watch)
        seen = watch.result()
        first_watch = first_watch or seen
        plan = unet_recovery_plan(
            policy=NanPolicy.RECOVER,
            watch=seen,
            tried=tried,
            attention_upcast=model.upcast_attention,
            unet_precision=precision_of(model.to_q.weight.dtype),
        )
        if plan.remedy is None:
            return result, tried, first_watch
        tried.append(plan.remedy)
        if plan.remedy is UnetRemedy.UPCAST_ATTENTION:
            model.upcast_attention = True
        else:
            model.float()


def test_attention_overflow_is_fixed_by_upcasting_attention() -> None:
    model = TinyDenoiser(attention_gain=1.0).half()
    expected_step = first_overflowing_step(model)
    reference = sample(copy.deepcopy(model).float(), StepWatch())

    result, tried, first = redo_until_finite(model)

    assert first.nonfinite and first.first_step == expected_step and first.steps == len(SCALES)
    assert tried == [UnetRemedy.UPCAST_ATTENTION]
    assert all_finite(result)
    torch.testing.assert_close(result, reference, rtol=0.02, atol=0.02)


def test_overflow_outside_attention_needs_the_unet_in_fp32() -> None:
    model = TinyDenoiser(attention_gain=0.01, ff_gain=600.0).half()
    expected_step = first_overflowing_step(model)
    reference = sample(copy.deepcopy(model).float(), StepWatch())

    result, tried, first = redo_until_finite(model)

    assert first.first_step == expected_step
    assert tried == [UnetRemedy.UPCAST_ATTENTION, UnetRemedy.UNET_FP32]
    assert torch.equal(result, reference)  # the fp32 redo is exactly the fp32 run


def test_the_watch_never_reads_the_device_before_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    watch = StepWatch()
    x = torch.randn(2, 4, 8, 8, dtype=torch.float16)
    with monkeypatch.context() as patched:
        for reader in ("item", "tolist", "__bool__", "__int__", "cpu", "numpy"):
            patched.setattr(torch.Tensor, reader, lambda *_a, _r=reader, **_k: pytest.fail(f"host sync via {_r}"))
        for step in range(5):
            bad = x.clone()
            if step >= 3:
                bad[1, 2, 3, 4] = math.inf
            watch.observe(bad, step + 10)
    assert watch.result() == WatchResult(True, 13, 5)
    watch.reset()
    assert watch.result() == WatchResult(False, None, 0)
    watch.observe(x)
    assert watch.result() == WatchResult(False, None, 1)


def test_unet_plan_for_each_policy() -> None:
    bad = WatchResult(True, 4, 20)
    assert unet_recovery_plan(policy=NanPolicy.RECOVER, watch=WatchResult(False, None, 20)).remedy is None
    assert unet_recovery_plan(policy=NanPolicy.OFF, watch=bad).message == ""
    warn = unet_recovery_plan(policy=NanPolicy.WARN, watch=bad)
    assert warn.remedy is None and "step 4" in warn.message and "Upcast cross attention" in warn.message
    upcast_already = unet_recovery_plan(policy=NanPolicy.RECOVER, watch=bad, attention_upcast=True)
    assert upcast_already.remedy is UnetRemedy.UNET_FP32
    nothing_left = unet_recovery_plan(
        policy=NanPolicy.RECOVER, watch=bad, attention_upcast=True, unet_precision=Precision.FP32
    )
    assert nothing_left.remedy is None and "even in fp32" in nothing_left.message
    from_encode = unet_recovery_plan(policy=NanPolicy.RECOVER, watch=bad, input_nonfinite=True)
    assert from_encode.remedy is None and "VAE encode" in from_encode.message
    note = unet_note(bad, Precision.FP16, UnetRemedy.UPCAST_ATTENTION)
    assert infotext.format_recovery([note]) == "unet fp16->upcast-attention at step 4"


class HostNans(Exception):
    """Stands for the host's NansException (raised inside sampling by A1111 up to v1.9)."""


def remedies_for(model: TinyDenoiser, entered: list[UnetRemedy]):
    """The host adapter's remedies for the toy model: the upcast switch, or the whole model in fp32."""

    @contextlib.contextmanager
    def remedy(which: UnetRemedy):
        entered.append(which)
        if which is UnetRemedy.UPCAST_ATTENTION:
            model.upcast_attention = True
            try:
                yield
            finally:
                model.upcast_attention = False
        else:
            with module_forward_precision(model, Precision.FP32):
                yield

    return remedy


def test_sampling_is_redone_with_remedies_that_add_up_and_are_left_after() -> None:
    model = TinyDenoiser(attention_gain=0.01, ff_gain=600.0).half()
    reference = sample(copy.deepcopy(model).float(), StepWatch())
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    watch, entered, rewinds = StepWatch(), [], []

    result, recovery = sample_with_recovery(
        lambda: sample(model, watch),
        watch=watch,
        policy=NanPolicy.RECOVER,
        remedy=remedies_for(model, entered),
        rewind=lambda: rewinds.append(1),
        unet_precision=Precision.FP16,
    )

    assert entered == [UnetRemedy.UPCAST_ATTENTION, UnetRemedy.UNET_FP32] and len(rewinds) == 2
    assert torch.equal(result, reference)
    assert recovery is not None and recovery.fixed and "the UNet in fp32" in recovery.message
    step = first_overflowing_step(TinyDenoiser(attention_gain=0.01, ff_gain=600.0).half())
    assert recovery.note.text() == f"unet fp16->fp32 at step {step}"
    # Left as it was: the decode after sampling runs as configured.
    assert not model.upcast_attention and "forward" not in vars(model)
    assert all(torch.equal(v, weights[k]) and v.dtype == torch.float16 for k, v in model.state_dict().items())


def test_a_finite_sampling_run_is_returned_as_is() -> None:
    model = TinyDenoiser(attention_gain=0.01).half()
    watch = StepWatch()
    remedy = remedies_for(model, entered := [])
    result, recovery = sample_with_recovery(
        lambda: sample(model, watch), watch=watch, policy=NanPolicy.RECOVER, remedy=remedy, rewind=lambda: None,
        unet_precision=Precision.FP16,
    )  # fmt: skip
    assert recovery is None and entered == [] and all_finite(result)


def host_sampler(model: TinyDenoiser, watch: StepWatch) -> torch.Tensor:
    """The toy sampler with a host check that raises from inside sampling (A1111 ≤ v1.9)."""
    x = sample(model, watch)
    if not torch.isfinite(x).all():
        raise HostNans("A tensor with all NaNs was produced in Unet.")
    return x


@pytest.mark.parametrize(
    ("policy", "stopped", "redone"),
    [(NanPolicy.RECOVER, False, True), (NanPolicy.WARN, False, False), (NanPolicy.RECOVER, True, False)],
)
def test_the_hosts_own_nan_exception_counts_as_nan(policy: NanPolicy, stopped: bool, redone: bool) -> None:
    model = TinyDenoiser(attention_gain=1.0).half()  # fixed by upcasting attention
    watch, entered = StepWatch(), []
    run = contextlib.nullcontext() if redone else pytest.raises(HostNans)
    with run:
        result, recovery = sample_with_recovery(
            lambda: host_sampler(model, watch),
            watch=watch,
            policy=policy,
            remedy=remedies_for(model, entered),
            rewind=lambda: None,
            unet_precision=Precision.FP16,
            nan_errors=(HostNans,),
            stopped=lambda: stopped,
        )
    assert bool(entered) == redone
    if redone:
        assert all_finite(result) and recovery is not None and recovery.fixed


def test_nan_in_the_input_latent_is_not_redone() -> None:
    model = TinyDenoiser(attention_gain=1.0).half()
    watch, entered = StepWatch(), []
    result, recovery = sample_with_recovery(
        lambda: sample(model, watch), watch=watch, policy=NanPolicy.RECOVER, remedy=remedies_for(model, entered),
        rewind=lambda: None, unet_precision=Precision.FP16, input_nonfinite=lambda: True,
    )  # fmt: skip
    assert entered == [] and not all_finite(result)
    assert recovery is not None and not recovery.fixed and "VAE encode" in recovery.message
    assert recovery.note.after == infotext.UNRECOVERED


def test_forward_precision_casts_inputs_and_keeps_an_existing_forward_override() -> None:
    layer = nn.Linear(4, 4).half()
    seen: list[torch.dtype] = []
    original = layer.forward

    def instance_forward(x: torch.Tensor, *, scale: torch.Tensor) -> torch.Tensor:  # e.g. ControlNet's
        seen.append(x.dtype)
        return original(x) * scale

    layer.forward = instance_forward
    x, scale = torch.randn(2, 4).half(), torch.tensor(2.0, dtype=torch.float16)
    with module_forward_precision(layer, Precision.FP32):
        out = layer(x, scale=scale)
        assert layer.weight.dtype == torch.float32
    assert seen == [torch.float32] and out.dtype == torch.float32
    assert layer.forward is instance_forward and layer.weight.dtype == torch.float16


def test_a_finite_decode_is_checked_once_even_with_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    harness = Harness(make_recovery(tmp_path, []), OverflowVae().half())
    checked: list[torch.Size] = []
    real = all_finite
    monkeypatch.setattr("extensions_ssd1b.vae.nan.all_finite", lambda x: checked.append(x.shape) or real(x))
    z = latent("none")
    harness.decode(z, inputs=z)
    assert len(checked) == 1 and checked[0] != z.shape  # the image, not the latent


# --- TAESD-XL scaling ----------------------------------------------------------------------------------


def test_taesd_takes_unet_latents_and_returns_the_full_vae_range() -> None:
    decoder = nn.Sequential(nn.Conv2d(4, 3, 1))
    nn.init.zeros_(decoder[0].weight)
    nn.init.constant_(decoder[0].bias, 0.25)  # a [0, 1] image of 0.25 everywhere
    image = taesd_decode(decoder, torch.randn(1, 4, 8, 8, dtype=torch.float64))
    assert image.dtype == torch.float32 and torch.allclose(image, torch.full_like(image, -0.5))
    encoder = nn.Sequential(nn.Conv2d(3, 4, 1))
    assert taesd_encode(encoder, torch.rand(1, 3, 8, 8)).shape == (1, 4, 8, 8)
    z = torch.randn(1, 4, 8, 8)
    assert torch.allclose(vae_latent_from_unet_latent(unet_latent_from_vae_latent(z)), z)
    assert torch.allclose(unet_latent_from_vae_latent(torch.ones(1)), torch.tensor([0.13025]))


def test_webui_taesd_layout_matches_diffusers_autoencoder_tiny() -> None:
    """The webui's raw decoder (Clamp + layers, [0, 1] out) through taesd_decode = diffusers' DecoderTiny."""
    from diffusers import AutoencoderTiny

    class Clamp(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(x / 3) * 3

    tiny = AutoencoderTiny().eval()
    webui_decoder = nn.Sequential(Clamp(), *tiny.decoder.layers)
    z = torch.randn(1, 4, 4, 4) * 4  # beyond ±3: the clamp matters
    with torch.inference_mode():
        torch.testing.assert_close(taesd_decode(webui_decoder, z), tiny.decoder(z))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_watch_never_syncs_and_recovery_works() -> None:
    device = torch.device("cuda")
    watch = StepWatch()
    x = torch.randn(2, 4, 128, 128, device=device, dtype=torch.float16)
    broken = x.clone()
    broken[1, 3, 64, 64] = math.nan
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host sync inside raises
    try:
        for step in range(30):
            watch.observe(broken if step >= 17 else x, step)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert watch.result() == WatchResult(True, 17, 30)
    vae = OverflowVae(groupnorm=True).to(device).half()
    z = latent("middle").to(device)
    recovery = NanRecovery(None, bf16_supported=torch.cuda.is_bf16_supported(including_emulation=False))
    image = recovery.run(
        lambda: vae(z),
        stage=Stage.DECODE,
        vae=VaeIdentity("toy", None),
        precision=Precision.FP16,
        with_precision=lambda p: module_precision(vae, p),
    )
    assert all_finite(image) and vae.spread.weight.dtype == torch.float16
    torch.testing.assert_close(image.float().cpu(), fp32_reference(vae, z).cpu(), rtol=0.02, atol=0.05)

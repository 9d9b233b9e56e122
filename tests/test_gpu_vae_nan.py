"""On a CUDA GPU: real fp16 overflows (not injected NaNs) are recovered the way the host adapter does it.

* An SDXL-size VAE (diffusers ``AutoencoderKL``, SDXL config, random weights) whose ``conv_in`` is
  scaled up: its activations pass fp16's 65504 as the real SDXL VAE's up-blocks do, and every
  GroupNorm after it scales them back, so fp32 and bf16 decode to an ordinary image.  NanRecovery
  redoes the decode in bf16 (where the GPU has fast bf16), and the next decode starts there.
* :func:`module_forward_precision` under CUDA autocast: the host samples inside
  ``torch.autocast("cuda")``, where fp32 weights alone still multiply in fp16; the UNet-in-fp32
  remedy must really compute in fp32.

Skipped without CUDA; needs diffusers.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from extensions_ssd1b.core import infotext
from extensions_ssd1b.core.settings import Precision
from extensions_ssd1b.vae.choice import bf16_is_fast
from extensions_ssd1b.vae.nan import (
    NanRecovery,
    PrecisionStore,
    Stage,
    VaeIdentity,
    all_finite,
    module_forward_precision,
    module_precision,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
GAIN = 2e5  # conv_in's output is O(1): this puts it past fp16's 65504, far below bf16's 3e38


def overflowing_sdxl_vae() -> nn.Module:
    from bench_nan_check import SDXL_VAE_CONFIG
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(**SDXL_VAE_CONFIG).eval()
    with torch.no_grad():
        vae.decoder.conv_in.weight.mul_(GAIN)
        vae.decoder.conv_in.bias.mul_(GAIN)
    return vae.to("cuda", torch.float16)


def test_real_fp16_overflow_in_an_sdxl_vae_is_redone_in_bf16_and_remembered(tmp_path: Path) -> None:
    device = torch.device("cuda")
    assert bf16_is_fast(device), "an H100/H200 has fast bf16: the retry must pick it before fp32"
    vae = overflowing_sdxl_vae()
    z = torch.randn(1, 4, 64, 64, device=device, generator=torch.Generator(device).manual_seed(1))
    calls: list[torch.dtype] = []
    vae.decoder.register_forward_hook(lambda _m, _i, output: calls.append(output.dtype))

    def decode() -> torch.Tensor:
        return vae.decode(z.to(next(vae.parameters()).dtype)).sample

    with torch.no_grad():
        with module_precision(vae, Precision.FP32):
            reference = decode().float()
        plain = decode()
        assert not all_finite(plain), "the fp16 decode must really overflow"
        calls.clear()
        recovery = NanRecovery(PrecisionStore(tmp_path), bf16_supported=True)
        identity = VaeIdentity("sdxl_vae.safetensors", "f" * 16)

        def run() -> torch.Tensor:
            return recovery.run(
                decode,
                stage=Stage.DECODE,
                vae=identity,
                precision=Precision.FP16,
                with_precision=lambda p: module_precision(vae, p),
            )

        first = run()
        assert calls == [torch.float16, torch.bfloat16]
        assert all_finite(first) and first.dtype == torch.bfloat16
        error = (first.float() - reference).abs().mean() / reference.abs().mean()
        assert error < 0.03, f"bf16 decode differs from fp32 by {error:.3%}"
        assert infotext.format_recovery(recovery.take_notes()) == "decode fp16->bf16"

        calls.clear()
        second = run()
        assert calls == [torch.bfloat16]  # no wasted fp16 decode
        assert torch.equal(second, first)
        assert infotext.format_recovery(recovery.take_notes()) == "decode fp16->bf16 remembered"
    assert all(p.dtype == torch.float16 for p in vae.parameters())  # the VAE itself stays as loaded
    print(f"\nSDXL-size VAE, real fp16 overflow: bf16 redo differs from fp32 by {error:.3%} (mean abs, relative)")


def test_unet_fp32_remedy_computes_in_fp32_under_cuda_autocast() -> None:
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 64)).cuda().half()
    with torch.no_grad():
        layer[0].weight.fill_(100.0)  # 64 inputs of ~100 each: sums past fp16's 65504
    x = torch.full((4, 64), 100.0, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        fp32_copy = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 64)).cuda()
        fp32_copy.load_state_dict({k: v.float() for k, v in layer.state_dict().items()})
        expected = fp32_copy(x.float())
        with torch.autocast("cuda"):
            plain = layer(x)
            with module_forward_precision(layer, Precision.FP32):
                remedied = layer(x)
    assert not all_finite(plain) and plain.dtype == torch.float16
    assert remedied.dtype == torch.float32 and all_finite(remedied)
    torch.testing.assert_close(remedied, expected)
    assert all(p.dtype == torch.float16 for p in layer.parameters()) and "forward" not in vars(layer)

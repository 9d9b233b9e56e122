"""TAESD-XL against the full SDXL VAE, and our wrapped TAESD decode against the bare decoder.

1. Decode time of diffusers ``AutoencoderTiny`` (TAESD's architecture, random weights) against
   ``AutoencoderKL`` with the SDXL config, same latent.  Goal: TAESD ≥ 10× faster at 1024².
2. The webui's TAESD path — the raw ``taesdxl_decoder.pth`` network (Clamp + the same layers),
   then ``x * 2 - 1`` — against ours: :func:`taesd_decode` inside :meth:`NanRecovery.run` with the
   NaN check.  Goal: within 5 %.

A CPU cannot decode 1024² with the full VAE in reasonable time, so by default both run at a 32²
latent (256² image) and the table says so; the ratio at 1024² can only be larger, since only the
full VAE has a mid-block attention whose cost grows with the square of the pixel count.

    python benchmarks/bench_taesd.py
    python benchmarks/bench_taesd.py --device cuda --latent 128 --dtype fp16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_nan_check import DTYPES, SDXL_VAE_CONFIG, fmt, seconds
from extensions_ssd1b.core.settings import NanPolicy, Precision
from extensions_ssd1b.vae.nan import (
    NanRecovery,
    PrecisionStore,
    Stage,
    VaeIdentity,
    module_precision,
    precision_of,
    taesd_decode,
)


class Clamp(nn.Module):
    """The first layer of the webui's TAESD decoder (sd_vae_taesd.Clamp)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


def webui_taesd_decoder(tiny: nn.Module) -> nn.Sequential:
    """The webui's decoder network (Clamp, conv, Blocks …) sharing diffusers' weights: [0, 1] out."""
    return nn.Sequential(Clamp(), *tiny.decoder.layers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32")
    parser.add_argument("--latent", type=int, default=32, help="latent side (128 = 1024² image)")
    parser.add_argument("--repeats", type=int, default=0, help="0: 20 on GPU, 3 (full VAE 1) on CPU")
    args = parser.parse_args()
    from diffusers import AutoencoderKL, AutoencoderTiny
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # "modules that should be kept in float32: []" is noise here

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    gpu = device.type == "cuda"
    repeats = args.repeats or (20 if gpu else 3)
    name = torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} threads"
    side = args.latent * 8
    print(f"# TAESD-XL vs SDXL VAE — {name}, torch {torch.__version__}, {args.dtype}, {side}² image\n")
    torch.manual_seed(0)
    z = torch.randn(1, 4, args.latent, args.latent, device=device, dtype=dtype)

    with torch.inference_mode():
        tiny = AutoencoderTiny().to(device, dtype).eval()
        full = AutoencoderKL(**SDXL_VAE_CONFIG).to(device, dtype).eval()
        taesd = statistics.median(seconds(lambda: tiny.decode(z).sample, device, repeats, warmup=1))
        kl = statistics.median(seconds(lambda: full.decode(z).sample, device, repeats if gpu else 1, warmup=1))
        print("| decoder | parameters | decode | ratio |")
        print("|---|---|---|---|")
        kl_params = sum(p.numel() for m in (full.post_quant_conv, full.decoder) for p in m.parameters())
        tiny_params = sum(p.numel() for p in tiny.decoder.parameters())
        print(f"| SDXL VAE decoder (AutoencoderKL) | {kl_params:,} | {fmt(kl)} | 1 |")
        print(f"| TAESD-XL decoder (AutoencoderTiny) | {tiny_params:,} | {fmt(taesd)} | {kl / taesd:.1f}× faster |")
        if args.latent != 128:
            growth = (128 / args.latent) ** 4
            print(f"\n(measured at {side}²; at 1024² the full VAE's mid-block attention costs {growth:.0f}× more,")
            print(" the convolutions of both decoders scale alike, and TAESD has no attention)")

        decoder = webui_taesd_decoder(tiny)
        torch.testing.assert_close(taesd_decode(decoder, z), tiny.decoder(z), rtol=2e-2, atol=2e-2)  # same network
        with tempfile.TemporaryDirectory() as store_dir:
            recovery = NanRecovery(PrecisionStore(store_dir), bf16_supported=False)
            identity = VaeIdentity("TAESD-XL", None)
            precision = precision_of(dtype) if dtype != torch.float32 else Precision.FP32

            def webui_path() -> torch.Tensor:
                return decoder(z) * 2 - 1  # sd_samplers_common.samples_to_images_tensor, approximation 3

            def our_path() -> torch.Tensor:
                return recovery.run(
                    lambda: taesd_decode(decoder, z),
                    stage=Stage.DECODE,
                    vae=identity,
                    precision=precision,
                    with_precision=lambda p: module_precision(decoder, p),
                    policy=NanPolicy.RECOVER,
                )

            rounds = 20 if gpu else 6
            direct, wrapped = [], []
            for _ in range(rounds):  # interleaved, so drift in the machine hits both alike
                direct += seconds(webui_path, device, 1, warmup=1)
                wrapped += seconds(our_path, device, 1, warmup=1)
        bare, ours = statistics.median(direct), statistics.median(wrapped)
        print(f"\n| TAESD path, {side}² | median of {rounds} | overhead |")
        print("|---|---|---|")
        print(f"| webui: decoder(x) * 2 - 1 | {fmt(bare)} | |")
        print(f"| ours: NanRecovery.run(taesd_decode) + all_finite | {fmt(ours)} | {100 * (ours / bare - 1):+.2f} % |")


if __name__ == "__main__":
    main()

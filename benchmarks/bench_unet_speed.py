"""UNet forward time of each family as built by this extension, relative to SDXL (same run, same latent).

Run: .venv/bin/python benchmarks/bench_unet_speed.py [--latent 64] [--runs 3] [--device cpu|cuda] [--dtype fp32|fp16]
Prints a table: parameters, FLOPs of one forward (counted by torch's FlopCounterMode), median time,
and time / FLOP ratios against SDXL.  Goal: SSD-1B / SDXL ≤ 0.65 (the FLOP ratio at 1024² is 0.62).
The UNets are built by ``extensions_ssd1b.arch.unet_builder`` from the real sgm when ``SD_WEBUI_ROOT`` points
to an A1111 checkout, otherwise from the test stand-in (same modules, same maths); weights are random.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
root = os.environ.get("SD_WEBUI_ROOT")
sys.path.insert(
    0, str(Path(root) / "repositories" / "generative-models") if root else str(REPO / "tests" / "fakewebui")
)

from sgm.modules.diffusionmodules import openaimodel  # noqa: E402

from extensions_ssd1b.arch.families import FAMILIES_BY_KEY  # noqa: E402
from extensions_ssd1b.arch.layout import UNetLayout, parameter_count  # noqa: E402
from extensions_ssd1b.arch.unet_builder import build_unet  # noqa: E402

FAMILIES = ("sdxl", "ssd-1b", "segmind-vega", "koala-1b", "koala-700m")
GOAL_SSD1B = 0.65


def inputs(layout: UNetLayout, latent: int, batch: int, device: str, dtype: torch.dtype) -> tuple:
    x = torch.randn(batch, 4, latent, latent, device=device, dtype=dtype)
    t = torch.full((batch,), 500.0, device=device)
    context = torch.randn(batch, 77, layout.context_dim, device=device, dtype=dtype)
    y = torch.randn(batch, layout.adm_in_channels, device=device, dtype=dtype)
    return x, t, context, y


def flops(layout: UNetLayout, latent: int, batch: int) -> int:
    with torch.device("meta"):
        unet = build_unet(openaimodel, layout)
        x, t, context, y = inputs(layout, latent, batch, "meta", torch.float32)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        unet(x, timesteps=t, context=context, y=y)
    return counter.get_total_flops()


def seconds(layout: UNetLayout, latent: int, batch: int, runs: int, device: str, dtype: torch.dtype) -> float:
    with torch.device("meta"):
        unet = build_unet(openaimodel, layout)
    unet = unet.to_empty(device=device)
    with torch.no_grad():
        for parameter in unet.parameters():  # small random values: no denormals, no overflow
            parameter.normal_(0.0, 0.02)
    unet = unet.to(dtype).eval()
    x, t, context, y = inputs(layout, latent, batch, device, dtype)
    times = []
    # A1111 runs the UNet under autocast on CUDA; it also makes sgm's fp32 timestep embedding fit.
    autocast = torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32)
    with torch.no_grad(), autocast:
        for run in range(runs + 1):
            if device == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            unet(x, timesteps=t, context=context, y=y)
            if device == "cuda":
                torch.cuda.synchronize()
            if run:  # the first run warms caches and kernels
                times.append(time.perf_counter() - started)
    del unet
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latent", type=int, default=64, help="latent side (128 = 1024² images)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32")
    parser.add_argument("--families", default=",".join(FAMILIES))
    args = parser.parse_args()
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"sgm: {openaimodel.__file__}")
    print(f"device: {device_name}; {args.dtype}; latent {args.latent}² (image {args.latent * 8}²), batch {args.batch}")
    print(f"{'family':<14} {'params':>14} {'GFLOP':>9} {'FLOP/SDXL':>10} {'median s':>9} {'time/SDXL':>10}")
    base_time = base_flops = None
    for key in args.families.split(","):
        layout = FAMILIES_BY_KEY[key].layout
        count = flops(layout, args.latent, args.batch)
        took = seconds(layout, args.latent, args.batch, args.runs, args.device, dtype)
        base_time, base_flops = base_time or took, base_flops or count
        verdict = ""
        if key == "ssd-1b":
            verdict = "  ok" if took / base_time <= GOAL_SSD1B else "  OVER GOAL"
        print(
            f"{FAMILIES_BY_KEY[key].name:<14} {parameter_count(layout):>14,} {count / 1e9:>9.1f} "
            f"{count / base_flops:>10.3f} {took:>9.3f} {took / base_time:>10.3f}{verdict}"
        )
    at_1024 = [flops(FAMILIES_BY_KEY[key].layout, 128, 1) for key in ("ssd-1b", "sdxl")]
    print(f"FLOP ratio SSD-1B/SDXL at 1024² (latent 128): {at_1024[0] / at_1024[1]:.3f}")


if __name__ == "__main__":
    main()

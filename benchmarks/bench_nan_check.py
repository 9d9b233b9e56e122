"""What the NaN/Inf checks cost next to the work they guard: a VAE decode and a UNet step.

Prints two tables:
1. the cost of one check (ours, ``all_finite``, against the webui's v1.10 first-element test and a
   full ``isnan().any()``) on a 1024² image (1×3×1024×1024, fp16 and fp32) and its latent;
2. those costs as a share of one SDXL-VAE decode (diffusers ``AutoencoderKL`` with the SDXL config,
   random weights) and of one SSD-1B UNet step (``UNet2DConditionModel``, 1.33 B parameters, batch 2
   as with CFG), plus the per-step device-side watch (:class:`StepWatch`), whose cost is amortised:
   N observes and one read at the end.

A CPU cannot decode 1024² in reasonable time, so by default the decode runs at a 64² latent (512²
image) and the UNet step at a 64² latent, and the table says so.  The 1024² share is then taken
against 4 × the measured decode: a lower bound on a 1024² decode (convolutions scale with pixels,
the mid-block attention with their square), so the real share is smaller still.

    python benchmarks/bench_nan_check.py                      # CPU, scaled sizes
    python benchmarks/bench_nan_check.py --device cuda --decode-latent 128 --unet-latent 128 --dtype fp16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from extensions_ssd1b.vae.nan import StepWatch, all_finite

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
SDXL_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.13025,
)
SSD1B_UNET_CONFIG = dict(
    sample_size=128,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    transformer_layers_per_block=(1, 2, 4),
    reverse_transformer_layers_per_block=((4, 4, 10), (2, 1, 1), (1, 1, 1)),
    mid_block_type="UNetMidBlock2D",  # one ResBlock, no attention: SSD-1B's middle
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(run: Callable[[], object], device: torch.device, repeats: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        run()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def median_seconds(run: Callable[[], object], device: torch.device, repeats: int, warmup: int = 3) -> float:
    return statistics.median(seconds(run, device, repeats, warmup))


def fmt(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:8.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:8.2f} ms"
    return f"{seconds:8.2f} s "


def share(part: float, whole: float) -> str:
    return f"{100 * part / whole:.2g} %"


def check_costs(device: torch.device, repeats: int) -> dict[tuple[str, str], dict[str, tuple[float, float]]]:
    """(median, fastest) per check: on a shared CPU the fastest run is the better estimate of the cost."""
    shapes = {"image 1x3x1024x1024": (1, 3, 1024, 1024), "latent 1x4x128x128": (1, 4, 128, 128)}
    checks: dict[str, Callable[[torch.Tensor], bool]] = {
        "all_finite (ours)": all_finite,
        "first element (webui 1.10)": lambda x: bool(torch.isnan(x[(0,) * x.ndim])),
        "isnan().any()": lambda x: bool(torch.isnan(x).any()),
    }
    results = {}
    for label, shape in shapes.items():
        for dtype_name in ("fp16", "fp32"):
            x = torch.randn(shape, device=device).to(DTYPES[dtype_name])
            results[(label, dtype_name)] = {
                name: _median_and_min(seconds(lambda check=check, x=x: check(x), device, repeats))
                for name, check in checks.items()
            }
    return results


def _median_and_min(times: list[float]) -> tuple[float, float]:
    return statistics.median(times), min(times)


def decode_seconds(device: torch.device, dtype: torch.dtype, latent: int) -> float:
    from diffusers import AutoencoderKL
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    vae = AutoencoderKL(**SDXL_VAE_CONFIG).to(device, dtype).eval()
    z = torch.randn(1, 4, latent, latent, device=device, dtype=dtype)
    with torch.inference_mode():
        repeats = 3 if device.type == "cuda" else 1
        seconds = median_seconds(lambda: vae.decode(z).sample, device, repeats=repeats, warmup=1)
    return seconds


def unet_step_seconds(device: torch.device, dtype: torch.dtype, latent: int) -> float:
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**SSD1B_UNET_CONFIG).to(device, dtype).eval()
    batch = 2  # cond + uncond, as the webui batches CFG
    x = torch.randn(batch, 4, latent, latent, device=device, dtype=dtype)
    context = torch.randn(batch, 77, 2048, device=device, dtype=dtype)
    extra = {
        "text_embeds": torch.randn(batch, 1280, device=device, dtype=dtype),
        "time_ids": torch.tensor([[1024, 1024, 0, 0, 1024, 1024]] * batch, device=device, dtype=dtype),
    }
    timestep = torch.tensor([500.0] * batch, device=device)
    with torch.inference_mode():
        seconds = median_seconds(
            lambda: unet(x, timestep, context, added_cond_kwargs=extra).sample,
            device,
            repeats=5 if device.type == "cuda" else 1,
            warmup=1,
        )
    return seconds


def watch_seconds_per_step(device: torch.device, dtype: torch.dtype, steps: int = 200) -> float:
    """Per-step cost of StepWatch.observe on a CFG batch at 1024² (2×4×128×128), read once at the end."""
    watch = StepWatch()
    x = torch.randn(2, 4, 128, 128, device=device, dtype=dtype)

    def run() -> None:
        watch.reset()
        for step in range(steps):
            watch.observe(x, step)
        watch.result()

    return median_seconds(run, device, repeats=5) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32", help="precision of the decode and the UNet step")
    parser.add_argument("--decode-latent", type=int, default=64, help="latent side for the VAE decode (128 = 1024²)")
    parser.add_argument("--unet-latent", type=int, default=64, help="latent side for the UNet step (128 = 1024²)")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--skip-unet", action="store_true")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# NaN/Inf check cost — {name}, torch {torch.__version__}\n")

    costs = check_costs(device, args.repeats)
    columns = list(next(iter(costs.values())))
    print("| tensor | dtype | " + " | ".join(f"{c}: median (min)" for c in columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for (label, dtype_name), row in costs.items():
        cells = (f"{fmt(row[c][0])} (min {fmt(row[c][1]).strip()})" for c in columns)
        print(f"| {label} | {dtype_name} | " + " | ".join(cells) + " |")

    decode = decode_seconds(device, dtype, args.decode_latent)
    scale = (128 / args.decode_latent) ** 2  # pixel ratio to 1024²; a lower bound on the decode-time ratio
    decode_1024 = decode * scale
    image_check = costs[("image 1x3x1024x1024", args.dtype if args.dtype != "bf16" else "fp16")]["all_finite (ours)"][0]
    latent_check = costs[("latent 1x4x128x128", args.dtype if args.dtype != "bf16" else "fp16")]["all_finite (ours)"][0]
    side = args.decode_latent * 8
    print(f"\n| per decode ({args.dtype}) | time | share |")
    print("|---|---|---|")
    print(f"| SDXL-VAE decode, {side}² image (measured) | {fmt(decode)} | |")
    if scale != 1:
        print(f"| SDXL-VAE decode, 1024² (≥ {scale:.0f} × measured) | ≥{fmt(decode_1024)} | |")
    print(f"| all_finite on the 1024² image | {fmt(image_check)} | ≤ {share(image_check, decode_1024)} |")
    print(f"| all_finite on the 128² latent | {fmt(latent_check)} | ≤ {share(latent_check, decode_1024)} |")

    watch = watch_seconds_per_step(device, dtype)
    if args.skip_unet:
        print(f"\n| per UNet step | StepWatch.observe (2x4x128x128) | {fmt(watch)} |")
        return
    step = unet_step_seconds(device, dtype, args.unet_latent)
    step_scale = (128 / args.unet_latent) ** 2
    print(f"\n| per UNet step ({args.dtype}, SSD-1B, batch 2) | time | share |")
    print("|---|---|---|")
    print(f"| UNet step at {args.unet_latent}² latent (measured) | {fmt(step)} | |")
    if step_scale != 1:
        print(f"| UNet step at 128² latent (≥ {step_scale:.0f} × measured) | ≥{fmt(step * step_scale)} | |")
    print(f"| StepWatch.observe, 2x4x128x128, amortised | {fmt(watch)} | ≤ {share(watch, step * step_scale)} |")


if __name__ == "__main__":
    main()

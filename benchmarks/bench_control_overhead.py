"""What our sd-webui-controlnet glue adds to a sampling step, and to the start of a generation.

Run: .venv/bin/python benchmarks/bench_control_overhead.py [-n RUNS]
No webui is needed: the glue's wrappers are called with stand-in originals that return at once, so the figures are
our own work only.  Per step, sd-webui-controlnet calls the control model once per unit; our wrapper of its
``forward`` rearranges the 10 SDXL residuals for a UNet whose blocks differ (KOALA) and passes them through untouched
otherwise (SSD-1B, Vega, SDXL).  Once per generation, its ``UnetHook.hook`` runs through our wrapper (refusal check,
infotext) and an IP-Adapter binds SDXL's 70 cross-attention layers through our layer map.  The residuals are
full-size (1024², batch 2, fp16) tensors; the step time they are set against is the fastest in the README
(KOALA-700M, 25 ms at 1024², batch 2, fp16, H200: ``bench_unet_speed.py``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from extensions_ssd1b.arch.families import FAMILIES_BY_KEY
from extensions_ssd1b.arch.unet_builder import LAYOUT_ATTRIBUTE
from extensions_ssd1b.control import mapping
from extensions_ssd1b.host import controlnet

FASTEST_STEP_MS = 25.0  # KOALA-700M, README (bench_unet_speed.py on an H200)


def sdxl_residuals() -> list[torch.Tensor]:
    """SDXL ControlNet outputs at 1024² (latent 128²), batch 2: input blocks 0-8 then the middle."""
    shapes = [(320, 128), (320, 128), (320, 128), (320, 64), (640, 64), (640, 64), (640, 32), (1280, 32), (1280, 32)]
    shapes.append((1280, 32))
    return [torch.empty(2, c, s, s, dtype=torch.float16) for c, s in shapes]


def stand_in_unet(key: str) -> object:
    unet = types.SimpleNamespace()
    setattr(unet, LAYOUT_ATTRIBUTE, FAMILIES_BY_KEY[key].layout)
    return unet


def timed_us(function: Callable[[], object], runs: int, repeat: int) -> float:
    """Median over ``runs`` of the mean time of one call, in microseconds."""
    values = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(repeat):
            function()
        values.append((time.perf_counter() - start) / repeat * 1e6)
    return statistics.median(values)


def per_step(key: str, runs: int) -> float:
    outs = sdxl_residuals()
    layout = FAMILIES_BY_KEY[key].layout
    rmap = mapping.residual_map(layout)
    controlnet._residual_map = None if rmap.identity else rmap  # what our UnetHook.hook wrapper leaves for the steps
    try:
        return timed_us(lambda: controlnet._control_model_forward(lambda _self: outs, None), runs, 2000)
    finally:
        controlnet._residual_map = None


def per_generation(key: str, runs: int) -> float:
    unet = stand_in_unet(key)
    unit = types.SimpleNamespace(control_model_type=types.SimpleNamespace(name="ControlNet"))
    process = types.SimpleNamespace(extra_generation_params={})
    hook_self = types.SimpleNamespace(model=None, control_params=None)

    def bind_ip_adapter_and_hook() -> None:
        for layer in mapping.sdxl_attention_layers():
            controlnet._set_model_patch_replace(
                lambda *a: None, unet, None, layer.block_type, layer.block_id, layer.index
            )
        controlnet._unet_hook(lambda *a, **k: None, hook_self, unet, None, [unit], process)

    return timed_us(bind_ip_adapter_and_hook, runs, 200)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=7)
    args = parser.parse_args()
    print(f"{'model':<14} {'per step µs':>12} {'% of 25 ms':>11} {'per generation µs':>18}")
    for key in ("sdxl", "ssd-1b", "segmind-vega", "koala-700m", "koala-1b"):
        step = per_step(key, args.runs)
        share = step / (FASTEST_STEP_MS * 1000) * 100
        generation = f"{per_generation(key, args.runs):.0f}" if key != "sdxl" else "— (passes through)"
        print(f"{key:<14} {step:>12.1f} {share:>10.3f}% {generation:>18}")
    print("per step: our wrapper of the control model's forward, once per ControlNet unit and step")
    print("per generation: IP-Adapter binding SDXL's 70 layers + our UnetHook.hook wrapper (refusal check, infotext)")


if __name__ == "__main__":
    main()

"""What our LoRA key mapping adds to the first use of a LoRA, and to each step.

Run: .venv/bin/python benchmarks/bench_lora_mapping.py [-n RUNS] [--rank R]
Writes an SDXL LoRA in kohya LDM names on every attention, feed-forward and projection Linear of the SDXL UNet
(722 modules, like a typical full SDXL LoRA) and times, in milliseconds:
- the plan (header read, every key parsed and mapped onto the layout) cold, for SDXL, SSD-1B, Vega and KOALA-700M;
- the same call again (cached per file version: what every later load of the same file costs);
- reading the tensors and renaming them (what the host's own read_state_dict does anyway, plus a dict of renames);
- for comparison, safetensors' load_file of the same file (the host's cost for the first use without us).
Per step: the mapping runs when the Lora extension loads a file (once per file version and model), never inside
sampling, so it adds nothing to a step; the per-batch wrapper of load_networks is timed too (pure Python, no I/O).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from safetensors.torch import load_file, save_file

from extensions_ssd1b.arch.families import FAMILIES_BY_KEY
from extensions_ssd1b.arch.layout import unet_tensor_shapes
from extensions_ssd1b.io.read import read_tensors
from extensions_ssd1b.lora import mapping
from extensions_ssd1b.lora.mapping import plan_lora


def write_sdxl_lora(path: Path, rank: int) -> int:
    tensors = {}
    for key, shape in unet_tensor_shapes(FAMILIES_BY_KEY["sdxl"].layout).items():
        if key.endswith(".weight") and len(shape) == 2 and ("transformer_blocks" in key or "proj_" in key):
            base = "lora_unet_" + key.removesuffix(".weight").replace(".", "_")
            tensors[f"{base}.lora_down.weight"] = torch.zeros(rank, shape[1], dtype=torch.float16)
            tensors[f"{base}.lora_up.weight"] = torch.zeros(shape[0], rank, dtype=torch.float16)
            tensors[f"{base}.alpha"] = torch.tensor(float(rank))
    save_file(tensors, str(path))
    return len(tensors) // 3


def clear_caches() -> None:
    """Forget the plan and the per-layout tables: the first LoRA of a session pays for both."""
    plan_lora.cache_clear()
    mapping._blocks.cache_clear()
    mapping._module_shapes.cache_clear()


def timed(function: Callable[[], object], runs: int, setup: Callable[[], object] = lambda: None) -> list[float]:
    result = []
    for _ in range(runs):
        setup()
        start = time.perf_counter()
        function()
        result.append((time.perf_counter() - start) * 1000)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=5)
    parser.add_argument("--rank", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "sdxl-lora.safetensors"
        modules = write_sdxl_lora(path, args.rank)
        size = path.stat().st_size / 2**20
        print(f"SDXL LoRA: {modules} modules, rank {args.rank}, {size:.0f} MiB (page-cached after the first read)\n")
        rows: list[tuple[str, list[float]]] = []
        for key in ("sdxl", "ssd-1b", "segmind-vega", "koala-700m"):
            on = FAMILIES_BY_KEY[key].layout
            rows.append((f"plan, cold, on {key}", timed(lambda on=on: plan_lora(path, on), args.runs, clear_caches)))
        layout = FAMILIES_BY_KEY["ssd-1b"].layout
        plan = plan_lora(path, layout)
        rows.append(("plan, cached (same file version)", timed(lambda: plan_lora(path, layout), args.runs)))
        rows.append(
            (
                "read + rename the tensors (ssd-1b)",
                timed(lambda: {plan.renames[k]: v for k, v in read_tensors(path, plan.renames).items()}, args.runs),
            )
        )
        rows.append(("host alone: load_file of the file", timed(lambda: load_file(str(path)), args.runs)))
        print(f"{'what':<40} {'median ms':>10} {'min ms':>8}")
        for name, values in rows:
            print(f"{name:<40} {statistics.median(values):>10.2f} {min(values):>8.2f}")
        print(f"{'added per sampling step':<40} {0:>10.2f} {0:>8.2f}   (nothing of ours runs inside a step)")


if __name__ == "__main__":
    main()

"""Peak memory of `convert` against the size of the model it converts (goal: ≤ 25 %).

Run: .venv/bin/python benchmarks/bench_convert.py [--dir DIR] [--folder] [--dtypes fp16,bf16,fp32]

Generates a full-width Segmind-Vega diffusers UNet with real random fp16 values (1.49 GB: no holes,
every byte is read and written), plus a components file (SDXL text encoders and VAE at full size,
stored as a sparse hole), converts it to an A1111 single file once per output dtype, and prints wall
time, throughput and the converter's peak RSS as a share of the UNet's size.  ``--folder`` instead
converts a complete diffusers folder whose every part holds real data (3.3 GB).

Peak RSS is the child's ``ru_maxrss`` read by a small intermediate process: Linux carries the high-water
mark across fork and exec, so a child of this (bigger) process would report this process's size.  A
psutil sampler (every 10 ms) gives a second, lower-bound reading.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from extensions_ssd1b.tools.samples import write_diffusers_pipeline, write_sample

REPO = Path(__file__).resolve().parents[1]
GOAL = 0.25
WRAPPER = """
import json, resource, subprocess, sys, time
started = time.perf_counter()
child = subprocess.Popen([sys.executable, "-m", "extensions_ssd1b", *sys.argv[1:]], stdout=subprocess.DEVNULL)
print(child.pid, flush=True)
code = child.wait()
seconds = time.perf_counter() - started
print(json.dumps({"rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, "code": code,
                  "seconds": seconds}), flush=True)
"""


def measure(argv: list[str]) -> dict[str, float]:
    wrapper = subprocess.Popen([sys.executable, "-c", WRAPPER, *argv], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert wrapper.stdout is not None
    pid = int(wrapper.stdout.readline())
    sampled = {"peak": 0}

    def sample() -> None:
        try:
            process = psutil.Process(pid)
            while process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                sampled["peak"] = max(sampled["peak"], process.memory_info().rss)
                time.sleep(0.01)
        except psutil.Error:
            pass

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    result = json.loads(wrapper.stdout.readline())
    wrapper.wait()
    sampler.join(timeout=5)
    result["sampled"] = sampled["peak"]
    if result["code"] != 0:
        raise SystemExit(f"convert failed with exit status {result['code']}")
    return result


def size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="where to write (needs ~6 GB free; default: a temp dir)")
    parser.add_argument("--folder", action="store_true", help="convert a full diffusers folder of real data")
    parser.add_argument("--dtypes", default="fp16,bf16,fp32")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="ssd1b-bench-") as temporary:
        folder = Path(temporary)
        started = time.perf_counter()
        if args.folder:
            source = write_diffusers_pipeline(folder / "vega", "segmind-vega", sparse=False)
            extra: list[str] = []
            what = "diffusers folder, every part real data"
        else:
            source = write_sample(folder / "unet.safetensors", "segmind-vega", "diffusers-unet", sparse=False)
            components = write_sample(folder / "components.safetensors", "segmind-vega", sparse=True)
            extra = ["--components", str(components)]
            what = "diffusers UNet (real data) + --components (sparse)"
        model = size_of(source)
        print(f"source: Segmind-Vega, {what}: {model / 1e9:.2f} GB of real data "
              f"(generated in {time.perf_counter() - started:.1f} s)")  # fmt: skip
        print(f"{'output':<7} {'wall s':>7} {'MB/s':>7} {'peak RSS MB':>12} {'sampled MB':>11} {'RSS/model':>10}  goal")
        for dtype in args.dtypes.split(","):
            destination = folder / f"out-{dtype}.safetensors"
            result = measure(["convert", str(source), str(destination), "--dtype", dtype, "--no-progress", *extra])
            ratio = result["rss"] / model
            print(
                f"{dtype:<7} {result['seconds']:>7.1f} {model / 1e6 / result['seconds']:>7.0f} "
                f"{result['rss'] / 1e6:>12.0f} {result['sampled'] / 1e6:>11.0f} {ratio:>9.1%}  "
                f"{'ok' if ratio <= GOAL else 'OVER'} (≤ {GOAL:.0%})"
            )
            os.unlink(destination)
        print(f"free space left in {folder}: {shutil.disk_usage(folder).free / 1e9:.0f} GB")


if __name__ == "__main__":
    main()

"""How long `inspect` takes on a full-size SSD-1B single file (4.47 GB, header only).

Run: .venv/bin/python benchmarks/bench_inspect.py [-n RUNS]
Prints a table (milliseconds): reading and validating the header, detecting the layout from its
shapes, both together as a checkpoint is detected from its path (goal: ≤ 5 ms), the whole report,
and a cold `python -m extensions_ssd1b inspect --json` process for comparison.  A known family is
recognised by comparing the file with the family's tensors; a layout in no table row is counted
block by block instead, timed on its own row (SSD-1B without its middle block, same size).
The file is a sparse sample: its header is byte-for-byte what a real one of that layout has.
On a shared VM whole runs can be up to ~2x slower than others; the min column is the steadier one.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from extensions_ssd1b.arch.detect import detect
from extensions_ssd1b.arch.families import FAMILIES_BY_KEY
from extensions_ssd1b.arch.layout import Middle
from extensions_ssd1b.io.header import read_header
from extensions_ssd1b.tools.report import inspect_file
from extensions_ssd1b.tools.samples import sample_shapes, write_sample

GOAL_HEADER_DETECT_MS = 5.0


def timings(function: Callable[[], object], runs: int) -> tuple[list[float], list[float]]:
    """Wall and CPU milliseconds per run (CPU time is less disturbed by other load on the machine)."""
    function()  # warm up: imports, caches, page cache
    wall, cpu = [], []
    for _ in range(runs):
        started, started_cpu = time.perf_counter(), time.process_time()
        function()
        wall.append((time.perf_counter() - started) * 1e3)
        cpu.append((time.process_time() - started_cpu) * 1e3)
    return wall, cpu


def row(name: str, measured: tuple[list[float], list[float]], goal: float | None = None) -> str:
    wall, cpu = sorted(measured[0]), sorted(measured[1])
    p90 = wall[min(len(wall) - 1, int(0.9 * len(wall)))]
    median = statistics.median(wall)
    verdict = "" if goal is None else ("  ok" if median <= goal else "  OVER GOAL") + f" (≤ {goal:g} ms)"
    return f"{name:<34} {median:>9.2f} {wall[0]:>9.2f} {p90:>9.2f} {statistics.median(cpu):>9.2f}{verdict}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=50)
    parser.add_argument("--cli-runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = write_sample(Path(folder) / "SSD-1B.safetensors", "ssd-1b", sparse=True)
        header = read_header(path)
        shapes = header.shapes()
        print(
            f"file: {path.stat().st_size / 1e9:.2f} GB, header {header.data_start / 1e3:.0f} KB, "
            f"{len(shapes)} tensors, family {detect(shapes).family_name}; median of {args.runs} runs"
        )
        print(f"{'step (ms)':<34} {'median':>9} {'min':>9} {'p90':>9} {'cpu med':>9}")
        print(row("read_header (parse + validate)", timings(lambda: read_header(path), args.runs)))
        print(row("detect (layout from shapes)", timings(lambda: detect(shapes), args.runs)))
        header_detect = timings(lambda: detect(read_header(path).shapes()), args.runs)
        print(row("header + detect", header_detect, GOAL_HEADER_DETECT_MS))
        unlisted = dataclasses.replace(FAMILIES_BY_KEY["ssd-1b"].layout, middle=Middle.NONE)
        counted = sample_shapes("custom", layout=unlisted)
        print(row("detect, unlisted layout (counted)", timings(lambda: detect(counted), args.runs)))
        print(row("inspect_file (whole report)", timings(lambda: inspect_file(path), args.runs)))
        command = [sys.executable, "-m", "extensions_ssd1b", "inspect", "--json", str(path)]
        repo = Path(__file__).resolve().parents[1]

        def cli() -> None:
            subprocess.run(command, cwd=repo, check=True, capture_output=True)

        print(row("cold process: inspect --json", timings(cli, args.cli_runs)))
        print("(cpu med of the cold process is this process's share only: spawning and waiting)")


if __name__ == "__main__":
    main()

"""Memory over architecture switches in a real A1111: per-step peak and settled RSS of a chain of full-size loads.

Run (one webui process for the whole chain, fp32 on the CPU, as a user without a GPU would):
    .venv/bin/python benchmarks/bench_switch_memory.py --webui /path/to/webui --python /path/to/webui-venv/bin/python
        [--without-extension] [--chain sdxl,ssd-1b,segmind-vega,koala-700m,sdxl,ssd-1b]
The comparison the extension is held to, a stock host switching SDXL ↔ SD 1.5:
    ... --without-extension --chain sdxl,sd15,sdxl,sd15
Prints a table: for each load, the peak RSS while it ran (sampled every 20 ms) and the RSS once it settled (after a
garbage collection), the bytes of the model's state dict ("model") for comparison, and each step against the goals of
issue #11: peak ≤ 1.1 × the fresh-load peak of the bigger of the two models, settled ≤ 1.15 × a fresh load of the
new model (fresh loads are measured in their own processes first).  Checkpoints are full-size samples with random
fp16 values (about 18 GB of disk for the default chain, in a temporary folder or --samples); the SD 1.5 one takes its
tensor names and shapes from the host's own ``configs/v1-inference.yaml``, instantiated without weights.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from extensions_ssd1b.io.write import TensorSpec  # noqa: E402
from extensions_ssd1b.tools.samples import write_safetensors, write_sample  # noqa: E402

SD15 = "sd15"
# The names and shapes of an SD 1.5 checkpoint: the host's own config, built without weights (the way the webui
# builds a model before loading one) and its parameters listed.
SD15_SHAPES = """
import json, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from webui_tier import start_real_webui
webui = start_real_webui(Path({root!r}), with_extension=False)
from ldm.util import instantiate_from_config
from omegaconf import OmegaConf
from modules import sd_disable_initialization
config = OmegaConf.load(Path({root!r}) / "configs" / "v1-inference.yaml")
with sd_disable_initialization.DisableInitialization():
    model = instantiate_from_config(config.model)
print("SHAPES " + json.dumps({{name: list(p.shape) for name, p in model.named_parameters()}}), flush=True)
"""

DRIVER = """
import gc, json, os, sys, threading, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from webui_tier import start_real_webui
webui = start_real_webui(Path({root!r}), with_extension={with_extension!r})
for name, path in {files!r}.items():
    (webui.checkpoints_dir / name).symlink_to(path)
webui.refresh()
from modules import sd_models

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30

peak = [0.0]
def watch():
    while True:
        peak[0] = max(peak[0], rss())
        time.sleep(0.02)
threading.Thread(target=watch, daemon=True).start()
for name in {chain!r}:
    peak[0] = rss()
    started = time.perf_counter()
    model = sd_models.reload_model_weights(info=sd_models.checkpoint_aliases[name])
    seconds = time.perf_counter() - started
    # one count per storage: the host registers the SDXL conditioner again as cond_stage_model (sd_hijack.py)
    storages = {{t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in model.state_dict().values()}}
    live = sum(storages.values()) / 2**30
    del model
    gc.collect()
    time.sleep(0.5)
    print("RESULT " + json.dumps({{"name": name, "peak": peak[0], "settled": rss(), "live": live, "seconds": seconds}}),
          flush=True)
"""

PEAK_GOAL, SETTLED_GOAL = 1.1, 1.15


def run(python: str, root: str, files: dict[str, str], chain: list[str], with_extension: bool) -> list[dict]:
    tests = str(REPO / "tests")
    driver = DRIVER.format(tests=tests, root=root, with_extension=with_extension, files=files, chain=chain)
    done = subprocess.run([python, "-c", driver], capture_output=True, text=True, check=False)
    results = [json.loads(line[7:]) for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if len(results) < len(chain):
        print(f"the webui stopped after {len(results)} of {len(chain)} loads (exit {done.returncode})")
        print(done.stderr[-2000:])
    return results


def write_sd15(path: Path, python: str, root: str) -> None:
    """A full-size SD 1.5 checkpoint with random fp16 values, shaped by the host's v1-inference.yaml."""
    done = subprocess.run(
        [python, "-c", SD15_SHAPES.format(tests=str(REPO / "tests"), root=root)], capture_output=True, text=True
    )
    lines = [line[7:] for line in done.stdout.splitlines() if line.startswith("SHAPES ")]
    if not lines:
        raise SystemExit(
            f"could not list SD 1.5's tensors from {root}/configs/v1-inference.yaml:\n{done.stderr[-2000:]}"
        )
    shapes = json.loads(lines[0])
    write_safetensors(path, [TensorSpec(name, "F16", tuple(shape)) for name, shape in shapes.items()], sparse=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--webui", required=True, help="A1111 checkout (SD_WEBUI_ROOT)")
    parser.add_argument("--python", required=True, help="that webui's Python")
    parser.add_argument("--chain", default="sdxl,ssd-1b,segmind-vega,koala-700m,sdxl,ssd-1b")
    parser.add_argument("--without-extension", action="store_true", help="the stock host (fails on Vega/KOALA)")
    parser.add_argument("--samples", type=Path, help="folder for the checkpoints, kept and reused (default: temporary)")
    args = parser.parse_args()
    chain = args.chain.split(",")
    with_extension = not args.without_extension
    with tempfile.TemporaryDirectory() as temporary:
        folder = args.samples or Path(temporary)
        folder.mkdir(parents=True, exist_ok=True)
        files = {}
        for key in dict.fromkeys(chain):
            path = folder / f"{key}.safetensors"
            if not path.exists() and key == SD15:
                write_sd15(path, args.python, args.webui)
            elif not path.exists():
                write_sample(path, key, sparse=False, dtype="F16")
            files[path.name] = str(path)
        names = [f"{key}.safetensors" for key in chain]
        fresh = {n: run(args.python, args.webui, files, [n], with_extension)[0] for n in dict.fromkeys(names)}
        steps = run(args.python, args.webui, files, names, with_extension)
    label = "with the extension" if with_extension else "stock host"
    print(f"webui: {args.webui}; {label}; fp32 on the CPU; RSS in GiB")
    print(f"{'load':<26} {'peak':>6} {'settled':>8} {'model':>6} {'s':>6}  {'peak goal':>10} {'settled goal':>13}")
    previous = None
    for step in steps:
        name = step["name"]
        bigger = max(fresh[name]["peak"], fresh[previous]["peak"] if previous else 0.0)
        peak_ok = step["peak"] <= PEAK_GOAL * bigger
        settled_ok = step["settled"] <= SETTLED_GOAL * fresh[name]["settled"]
        print(
            f"{(previous or '-') + ' → ' + name:<26} {step['peak']:>6.2f} {step['settled']:>8.2f} {step['live']:>6.2f}"
            f" {step['seconds']:>6.1f}  {'ok' if peak_ok else 'OVER':>4} {PEAK_GOAL * bigger:>5.2f}"
            f" {'ok' if settled_ok else 'OVER':>5} {SETTLED_GOAL * fresh[name]['settled']:>7.2f}"
        )
        previous = name
    for name, result in fresh.items():
        print(f"fresh load {name:<20} peak {result['peak']:.2f}, settled {result['settled']:.2f}")


if __name__ == "__main__":
    main()

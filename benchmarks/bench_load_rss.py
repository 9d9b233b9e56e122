"""Peak RSS of loading a full-size SSD-1B checkpoint in a real A1111, with and without this extension.

Run (each load in its own fresh webui process, one after the other):
    .venv/bin/python benchmarks/bench_load_rss.py --webui /path/to/webui --python /path/to/webui-venv/bin/python
Prints a table: peak RSS of the process (start-up + load) and the UNet parameter count it ended with.
Goal: with / without ≤ 1.05 (the extension must not hold a second copy of the weights).  On v1.6.0
"without" builds the full SDXL UNet (the host's bug), so there the ratio is well below 1.
With --folder it also loads the same model as a diffusers folder (its unet/ file picked in the list,
the folder assembled in memory): goal folder / single file ≤ 1.05.
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

from extensions_ssd1b.tools.samples import write_diffusers_pipeline, write_sample  # noqa: E402

DRIVER = """
import json, resource, shutil, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from webui_tier import start_real_webui
webui = start_real_webui(Path({root!r}), with_extension={with_extension!r})
(webui.checkpoints_dir / {link!r}).symlink_to({checkpoint!r})
webui.refresh()
from modules import sd_models
model = sd_models.reload_model_weights(info=sd_models.checkpoint_aliases[{title!r}])
unet = model.model.diffusion_model
print("RESULT " + json.dumps({{
    "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    "unet_parameters": sum(p.numel() for p in unet.parameters()),
    "unet_class": type(unet).__name__,
}}))
"""

GOAL = 1.05


def measure(python: str, root: str, checkpoint: Path, with_extension: bool) -> dict:
    """One fresh webui process loading ``checkpoint``: a single file, or a diffusers folder."""
    link = "ssd-1b-diffusers" if checkpoint.is_dir() else "ssd-1b.safetensors"
    title = f"{link}/unet/diffusion_pytorch_model.safetensors" if checkpoint.is_dir() else link
    driver = DRIVER.format(
        tests=str(REPO / "tests"),
        root=root,
        with_extension=with_extension,
        checkpoint=str(checkpoint),
        link=link,
        title=title,
    )
    done = subprocess.run([python, "-c", driver], capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise SystemExit(f"the webui run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--webui", required=True, help="A1111 checkout (SD_WEBUI_ROOT)")
    parser.add_argument("--python", required=True, help="that webui's Python")
    parser.add_argument("--checkpoint", type=Path, help="a full-size SSD-1B file (default: generate one)")
    parser.add_argument("--folder", action="store_true", help="also load a full-size SSD-1B diffusers folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = args.checkpoint or write_sample(Path(folder) / "ssd-1b.safetensors", "ssd-1b", sparse=False)
        runs = {"without extension": (checkpoint.resolve(), False), "with extension": (checkpoint.resolve(), True)}
        if args.folder:
            pipeline = write_diffusers_pipeline(Path(folder) / "ssd-1b-diffusers", "ssd-1b", sparse=False)
            runs["with, diffusers folder"] = (pipeline, True)
        results = {label: measure(args.python, args.webui, path, mode) for label, (path, mode) in runs.items()}
    print(f"webui: {args.webui}; checkpoint: full-size SSD-1B ({checkpoint.name})")
    print(f"{'load':<24} {'peak RSS GiB':>13} {'UNet params':>15} {'UNet class':>20}")
    for label, r in results.items():
        print(f"{label:<24} {r['peak_rss_gib']:>13.2f} {r['unet_parameters']:>15,} {r['unet_class']:>20}")
    ratios = (("with extension", "without extension"), ("with, diffusers folder", "with extension"))
    for numerator, denominator in ratios:
        if numerator in results:
            ratio = results[numerator]["peak_rss_gib"] / results[denominator]["peak_rss_gib"]
            verdict = "ok" if ratio <= GOAL else "OVER GOAL"
            print(f"{numerator} / {denominator}: {ratio:.3f} ({verdict}, goal ≤ {GOAL})")


if __name__ == "__main__":
    main()

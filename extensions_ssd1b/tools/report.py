"""What ``inspect`` says about a checkpoint: a JSON-ready report built from the header alone.

The report names the family (or a custom distilled layout, or what else the file is), shows the
transformer depth of every block next to SDXL's, counts UNet parameters, lists components, dtypes,
size and modelspec metadata, gives the authors' recommended settings, and says how a stock
AUTOMATIC1111 without this extension would treat the file.  That last verdict is derived, not
looked up: the host's rules (config guess, v1.7's SSD-1B pruning, ``load_state_dict(strict=False)``
with zero-filled missing weights) are replayed against the file's shapes, so a custom layout gets
a reasoned answer too.  The schema is ``docs/inspect-schema.json``.
"""

from __future__ import annotations

import functools
import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..arch.classify import component_of, guess_unet_prefix, structure_problems
from ..arch.components import CLIP_G_BASE_PREFIX, CLIP_G_REFINER_PREFIX
from ..arch.detect import CLIP_L_PREFIX, LDM_UNET_PREFIX, Detection, Form, detect, detect_components
from ..arch.families import FAMILIES_BY_KEY, Family
from ..arch.layout import Middle, Shape, UNetLayout, layout_to_dict, parameter_count, unet_tensor_shapes
from ..core.errors import CheckpointError, LayoutError, NotSdxlFamily, error_json
from ..diffusers.folder import FORM_DIFFUSERS_FOLDER, is_diffusers_folder, pipeline_root, weight_files
from ..io.header import read_header

SCHEMA_ID = "sd-webui-ssd1b/inspect/1"
CHECKPOINT_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
A1111_IGNORED_SUFFIXES = (".vae.safetensors", ".vae.ckpt")  # A1111's checkpoint list skips these
MODELSPEC_KEYS = ("modelspec.title", "modelspec.architecture")

ShapeMap = Mapping[str, Sequence[int]]
Report = dict[str, Any]


# -- how stock A1111 would treat the file ---------------------------------------------------------


@dataclass(frozen=True)
class HostRange:
    """A range of webui versions that treat SDXL-family files the same way (a1111-host.md §1, §10)."""

    label: str
    prunes_to_ssd: bool  # v1.7+: no middle transformer → the SDXL UNet is pruned to SSD-1B's shape


HOSTS = (HostRange("v1.6.0", prunes_to_ssd=False), HostRange("v1.7.0–v1.10.1", prunes_to_ssd=True))

_SSD_PROBE = LDM_UNET_PREFIX + "middle_block.1.transformer_blocks.0.attn1.to_q.weight"
_BASE_PROBE = CLIP_G_BASE_PREFIX + "ln_final.weight"
_REFINER_PROBE = CLIP_G_REFINER_PREFIX + "ln_final.weight"

OUTCOMES = ("correct", "correct-oversized", "wrong", "fails")


def _units(names: Iterable[str]) -> dict[str, list[str]]:
    """Group LDM UNet tensor names into the residual units that zero weights turn into identities."""
    units: dict[str, list[str]] = defaultdict(list)
    for name in names:
        parts = name.split(".")
        if "transformer_blocks" in parts:
            cut = parts.index("transformer_blocks") + 2
        else:
            cut = {"input_blocks": 3, "output_blocks": 3, "middle_block": 2}.get(parts[0], 1)
        units[".".join(parts[:cut])].append(name)
    return units


def _identity_when_zero(unit: str, tensors: list[str]) -> bool:
    """A whole transformer block, SpatialTransformer or channel-preserving ResBlock adds 0 when zeroed."""
    if ".transformer_blocks." in unit + ".":
        return True
    relative = {t[len(unit) + 1 :] for t in tensors}
    if "proj_in.weight" in relative:  # SpatialTransformer: proj_out is zero, so it returns x_in
        return True
    return "in_layers.0.weight" in relative and "skip_connection.weight" not in relative


# Layouts are frozen and few (the hosts' three, the file's own): computing their tensors once per
# process keeps a header-only inspection in the milliseconds.
@functools.lru_cache(maxsize=16)
def _shapes_of(layout: UNetLayout) -> dict[str, Shape]:
    return unet_tensor_shapes(layout)


@functools.lru_cache(maxsize=16)
def _parameters_of(layout: UNetLayout) -> int:
    return parameter_count(layout)


@functools.lru_cache(maxsize=8)
def _units_of(layout: UNetLayout) -> dict[str, list[str]]:
    return _units(_shapes_of(layout))


def _compare_with_host(file_unet: Mapping[str, Shape], built: UNetLayout) -> dict[str, Any]:
    expected = _shapes_of(built)
    mismatched = [k for k, shape in file_unet.items() if k in expected and tuple(expected[k]) != tuple(shape)]
    dropped = [k for k in file_unet if k not in expected]
    missing = {k for k in expected if k not in file_unet}
    expected_units = _units_of(built)
    missing_units = _units(missing)
    identity = all(
        len(names) == len(expected_units[unit]) and _identity_when_zero(unit, expected_units[unit])
        for unit, names in missing_units.items()
    )
    return {"mismatched": mismatched, "dropped": dropped, "missing": len(missing), "identity": identity}


def stock_a1111(shapes: ShapeMap, detection: Detection) -> list[dict[str, Any]]:
    """For each host range: would a stock webui load this file, and compute the right model?"""
    n = len(LDM_UNET_PREFIX)
    file_unet = {k[n:]: tuple(v) for k, v in shapes.items() if k.startswith(LDM_UNET_PREFIX)}
    return [_verdict(host, shapes, file_unet, detection) for host in HOSTS]


def _verdict(host: HostRange, shapes: ShapeMap, file_unet: Mapping[str, Shape], detection: Detection) -> dict[str, Any]:
    verdict: dict[str, Any] = {
        "hosts": host.label,
        "outcome": "fails",
        "built_as": None,
        "built_parameters": None,
        "zero_filled": 0,
        "detail": "",
        "caveats": [],
    }
    if detection.form is not Form.SINGLE_FILE:
        verdict["outcome"] = "wrong"
        verdict["detail"] = (
            "a bare UNet is no webui checkpoint: A1111 takes it for SD 1.x and none of its tensor names match, "
            "so nothing from the file is loaded"
        )
        return verdict
    if _BASE_PROBE in shapes:
        built, built_as = FAMILIES_BY_KEY["sdxl"].layout, "SDXL"
    elif _REFINER_PROBE in shapes:
        built, built_as = FAMILIES_BY_KEY["sdxl-refiner"].layout, "SDXL refiner"
    else:
        verdict["built_as"] = "SD 1.x"
        verdict["detail"] = "no OpenCLIP-bigG text encoder, so A1111 guesses an SD 1.x config: size-mismatch error"
        return verdict
    if host.prunes_to_ssd and _SSD_PROBE not in shapes:
        if built_as != "SDXL":
            verdict["built_as"] = built_as
            verdict["detail"] = "pruned as if SSD-1B, which a refiner-shaped UNet cannot take: AttributeError"
            return verdict
        built, built_as = FAMILIES_BY_KEY["ssd-1b"].layout, "SSD-1B"
    found = _compare_with_host(file_unet, built)
    verdict.update(built_as=built_as, built_parameters=_parameters_of(built), zero_filled=found["missing"])
    own = _parameters_of(detection.layout)
    if found["mismatched"]:
        verdict["detail"] = (
            f"built as {built_as}; {len(found['mismatched'])} tensors have other shapes: "
            f"RuntimeError size mismatch (e.g. {found['mismatched'][0]})"
        )
        return verdict
    if found["dropped"]:
        verdict["outcome"] = "wrong"
        verdict["detail"] = (
            f"built as {built_as}; {len(found['dropped'])} of the file's tensors have no place in it and are "
            f"silently dropped (e.g. {found['dropped'][0]})"
        )
    elif found["missing"] and not found["identity"]:
        verdict["outcome"] = "wrong"
        verdict["detail"] = f"built as {built_as}; {found['missing']} missing tensors are zero-filled and break it"
    elif found["missing"]:
        verdict["outcome"] = "correct-oversized"
        verdict["detail"] = (
            f"built as {built_as} ({verdict['built_parameters'] / 1e9:.2f} B parameters for a {own / 1e9:.2f} B "
            f"UNet); the {found['missing']} tensors the file lacks are zero-filled and act as identities, so "
            "images are right but memory and time are those of the bigger UNet"
        )
        verdict["caveats"] += [
            "right only on a fresh load: after switching from another checkpoint the missing blocks keep "
            "that checkpoint's weights",
            "with --disable-model-loading-ram-optimization the missing weights are uninitialised (NaN images)",
        ]
    else:
        verdict["outcome"] = "correct"
        verdict["detail"] = f"built as {built_as}, every tensor in place"
    if built_as == "SSD-1B":
        verdict["caveats"].append(
            "loading another checkpoint that A1111 also prunes as SSD-1B right after this one fails with "
            "AttributeError in convert_sdxl_to_ssd"
        )
    has_clip_l = CLIP_L_PREFIX + "text_model.final_layer_norm.weight" in shapes
    if verdict["outcome"].startswith("correct") and not has_clip_l and built_as != "SDXL refiner":
        verdict["outcome"] = "wrong"
        verdict["detail"] += "; but there is no CLIP-L in the file, so it is zero-filled"
    if not detection.components.vae:
        verdict["caveats"].append("no VAE in the file: uniform grey images unless a VAE is selected by hand")
    return verdict


# -- the per-block depth table --------------------------------------------------------------------


def block_rows(layout: UNetLayout) -> list[dict[str, Any]]:
    """One row per ResBlock position (and the middle): its width and transformer depth, and SDXL's."""
    sdxl = FAMILIES_BY_KEY["sdxl"].layout
    comparable = layout.num_res_blocks == sdxl.num_res_blocks and layout.levels == sdxl.levels
    rows: list[dict[str, Any]] = []
    for level, depths in enumerate(layout.input_depths):
        for res, depth in enumerate(depths):
            rows.append(
                {
                    "side": "input",
                    "level": level,
                    "block": f"input_blocks.{layout.input_block_index(level, res)}",
                    "channels": layout.level_channels(level),
                    "transformer_depth": depth,
                    "sdxl_depth": sdxl.input_depths[level][res] if comparable else None,
                }
            )
    deepest = layout.levels - 1
    rows.append(
        {
            "side": "middle",
            "level": deepest,
            "block": "middle_block",
            "channels": layout.level_channels(deepest),
            "transformer_depth": layout.middle_depth,
            "sdxl_depth": sdxl.middle_depth if comparable else None,
            "middle": layout.middle.value,
        }
    )
    for position, depths in enumerate(layout.output_depths):
        level = deepest - position
        for res, depth in enumerate(depths):
            rows.append(
                {
                    "side": "output",
                    "level": level,
                    "block": f"output_blocks.{layout.output_block_index(position, res)}",
                    "channels": layout.level_channels(level),
                    "transformer_depth": depth,
                    "sdxl_depth": sdxl.output_depths[position][res] if comparable else None,
                }
            )
    return rows


def layout_json(layout: UNetLayout) -> dict[str, Any]:
    """The layout as JSON, without the head width (the weights don't show it)."""
    plain = {key: value for key, value in layout_to_dict(layout).items() if key != "num_head_channels"}
    return {**plain, "transformer_blocks": layout.transformer_count}


# -- building reports -----------------------------------------------------------------------------


def _empty(path: Path, form: str | None = None) -> Report:
    return {
        "path": str(path),
        "ok": False,
        "status": "unreadable",
        "error": None,
        "problems": [],
        "file_size": None,
        "form": form,
        "family": None,
        "layout": None,
        "blocks": [],
        "unet_parameters": None,
        "unet_tensors": None,
        "tensors": None,
        "components": None,
        "dtypes": {},
        "metadata": {"modelspec.title": None, "modelspec.architecture": None, "other_keys": 0},
        "recommended": None,
        "stock_a1111": [],
        "notes": [],
        "inspect_ms": 0.0,
    }


def _family_json(detection: Detection) -> dict[str, Any]:
    return {"key": detection.family_key, "name": detection.family_name, "distilled": detection.distilled}


# The host's LCM sampler exists from v1.8.0; before it, Euler a at the same steps and CFG is the closest.
LCM_SAMPLER = "LCM (A1111 v1.8+; on v1.6/v1.7: Euler a)"


def _recommended(family: Family | None) -> dict[str, Any] | None:
    if family is None:
        return None
    r = family.recommended
    lcm = r.lcm and {"lora": r.lcm.lora, "steps": list(r.lcm.steps), "cfg": list(r.lcm.cfg), "sampler": LCM_SAMPLER}
    return {"resolution": r.resolution, "steps": list(r.steps), "cfg": list(r.cfg), "lcm": lcm}


def _fill_detection(report: Report, shapes: ShapeMap, detection: Detection) -> None:
    report["status"] = "custom" if detection.family is None else "family"
    report["form"] = report["form"] or detection.form.value
    report["family"] = _family_json(detection)
    report["layout"] = layout_json(detection.layout)
    report["blocks"] = block_rows(detection.layout)
    report["unet_parameters"] = _parameters_of(detection.layout)
    report["unet_tensors"] = len(_shapes_of(detection.layout))
    report["recommended"] = _recommended(detection.family)


def _notes(report: Report, detection: Detection) -> list[str]:
    notes = []
    if detection.form is Form.DIFFUSERS_UNET and (root := pipeline_root(report["path"])) is not None:
        notes.append(
            f"the UNet of the diffusers folder {root}: with this extension, picking this file in the webui's "
            f"checkpoint list loads the whole folder; or make one file: `python -m extensions_ssd1b convert {root} "
            "OUT.safetensors`"
        )
    elif detection.form is not Form.SINGLE_FILE and report["form"] != FORM_DIFFUSERS_FOLDER:
        notes.append(
            "a bare UNet, not a webui checkpoint: make one with "
            "`python -m extensions_ssd1b convert UNET OUT.safetensors --components SDXL.safetensors`"
        )
    elif detection.form is Form.SINGLE_FILE and not detection.components.vae:
        notes.append("no VAE in the file: select an SDXL VAE (ideally the fp16-fix one), or images come out grey")
    return notes


def inspect_file(path: str | os.PathLike[str]) -> Report:
    """Inspect one safetensors file from its header."""
    started = time.perf_counter()
    path = Path(path)
    report = _empty(path)
    try:
        header = read_header(path)
    except CheckpointError as error:
        report["error"] = error_json(error, path)
        report["inspect_ms"] = (time.perf_counter() - started) * 1e3
        return report
    shapes = header.shapes()
    report["file_size"] = header.file_size
    report["tensors"] = len(shapes)
    report["components"] = _components_json(detect_components(shapes))
    report["metadata"] = _metadata_json(header.metadata)
    detection: Detection | None = None
    try:
        detection = detect(shapes)
    except NotSdxlFamily as error:
        report["status"] = "not-sdxl"
        report["error"] = error_json(error, path)
    except LayoutError as error:
        report["status"] = "refused"
        report["error"] = error_json(error, path)
    unet_prefix = detection.unet_prefix if detection else guess_unet_prefix(shapes)
    report["dtypes"] = _dtypes(((k, i.dtype) for k, i in header.tensors.items()), unet_prefix)
    if detection is not None:
        _fill_detection(report, shapes, detection)
        report["stock_a1111"] = stock_a1111(shapes, detection)
        report["notes"] = _notes(report, detection)
    if report["status"] in ("family", "custom") and (problems := structure_problems(shapes, detection)):
        report["status"] = "refused"
        report["error"] = error_json(LayoutError(problems), path)
    report["problems"] = report["error"]["problems"] if report["error"] else []
    report["ok"] = report["status"] in ("family", "custom")
    report["inspect_ms"] = (time.perf_counter() - started) * 1e3
    return report


def _components_json(components: Any) -> dict[str, bool]:
    return {"unet": components.unet, "clip_l": components.clip_l, "clip_g": components.clip_g, "vae": components.vae}


def _metadata_json(metadata: Mapping[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = {key: metadata.get(key) for key in MODELSPEC_KEYS}
    found["other_keys"] = sum(1 for key in metadata if key not in MODELSPEC_KEYS)
    return found


def _dtypes(items: Iterable[tuple[str, str]], unet_prefix: str | None) -> dict[str, dict[str, int]]:
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for name, dtype in items:
        counts[component_of(name, unet_prefix)][dtype] += 1
    return {component: dict(c) for component, c in sorted(counts.items())}


def inspect_diffusers_folder(path: str | os.PathLike[str]) -> Report:
    """Inspect a diffusers SDXL-family folder from the headers of its unet/ weights."""
    started = time.perf_counter()
    path = Path(path)
    report = _empty(path, FORM_DIFFUSERS_FOLDER)
    try:
        headers = [read_header(p) for p in weight_files(path / "unet", "diffusion_pytorch_model", "F16")]
        shapes = {k: v for h in headers for k, v in h.shapes().items()}
        detection = detect(shapes)
    except CheckpointError as error:
        report["error"] = {"type": type(error).__name__, "message": str(error), "problems": [str(error)]}
    except NotSdxlFamily as error:
        report["status"], report["error"] = "not-sdxl", error_json(error, path)
    except LayoutError as error:
        report["status"], report["error"] = "refused", error_json(error, path)
    else:
        report["file_size"] = sum(h.file_size for h in headers)
        report["tensors"] = len(shapes)
        report["components"] = {
            "unet": True,
            "clip_l": (path / "text_encoder").is_dir(),
            "clip_g": (path / "text_encoder_2").is_dir(),
            "vae": (path / "vae").is_dir(),
        }
        report["dtypes"] = _dtypes(((k, i.dtype) for h in headers for k, i in h.tensors.items()), "")
        _fill_detection(report, shapes, detection)
        report["stock_a1111"] = [
            {
                "hosts": host.label,
                "outcome": "fails",
                "built_as": None,
                "built_parameters": None,
                "zero_filled": 0,
                "detail": "A1111 loads single files only, not diffusers folders",
                "caveats": [],
            }
            for host in HOSTS
        ]
        report["notes"] = [
            f"make a webui checkpoint: `python -m extensions_ssd1b convert {path} OUT.safetensors`; or, with this "
            "extension, put the folder under models/Stable-diffusion and pick its unet/diffusion_pytorch_model file"
        ]
        report["ok"] = True
    report["problems"] = report["error"]["problems"] if report["error"] else []
    report["inspect_ms"] = (time.perf_counter() - started) * 1e3
    return report


def _message_report(path: Path, status: str, error_type: str, message: str) -> Report:
    report = _empty(path)
    report["status"] = status
    report["error"] = {"type": error_type, "message": f"{path}: {message}", "problems": [f"{path}: {message}"]}
    report["problems"] = report["error"]["problems"]
    return report


def expand(paths: Sequence[str | os.PathLike[str]]) -> list[tuple[str, Path]]:
    """What to inspect: ("file" | "diffusers" | "pickle" | "missing" | "empty", path), folders walked."""
    found: list[tuple[str, Path]] = []
    for raw in paths:
        path = Path(raw)
        if not os.path.lexists(path):
            found.append(("missing", path))
        elif not path.is_dir():
            found.append(("pickle" if path.name.endswith(PICKLE_SUFFIXES) else "file", path))
        elif is_diffusers_folder(path):
            found.append(("diffusers", path))
        else:
            inside = list(_walk(path))
            found.extend(inside or [("empty", path)])
    return found


def _walk(root: Path) -> Iterable[tuple[str, Path]]:
    for folder, dirs, files in os.walk(root, onerror=lambda _: None):  # symlinked folders are not followed
        here = Path(folder)
        for name in sorted(dirs):
            if is_diffusers_folder(here / name):
                yield "diffusers", here / name
        dirs[:] = sorted(d for d in dirs if not is_diffusers_folder(here / d))
        for name in sorted(files):
            lowered = name.lower()  # A1111 lists MODEL.SAFETENSORS too
            if lowered.endswith(A1111_IGNORED_SUFFIXES):
                continue
            if lowered.endswith(CHECKPOINT_SUFFIXES):
                yield "file", here / name
            elif lowered.endswith(PICKLE_SUFFIXES):
                yield "pickle", here / name


def inspect_paths(paths: Sequence[str | os.PathLike[str]]) -> list[Report]:
    reports = []
    for kind, path in expand(paths):
        if kind == "file":
            reports.append(inspect_file(path))
        elif kind == "diffusers":
            reports.append(inspect_diffusers_folder(path))
        elif kind == "pickle":
            reports.append(
                _message_report(
                    path, "unsupported", "Unsupported", "a pickle checkpoint: not read (unpickling can run code)"
                )
            )
        elif kind == "missing":
            reports.append(_message_report(path, "unreadable", "CheckpointError", "no such file or folder"))
        else:
            reports.append(_message_report(path, "unreadable", "CheckpointError", "no .safetensors files in it"))
    return reports


def document(reports: list[Report]) -> dict[str, Any]:
    """The whole ``inspect --json`` output."""
    return {"schema": SCHEMA_ID, "tool": f"sd-webui-ssd1b {__version__}", "files": reports}


# -- human-readable text --------------------------------------------------------------------------


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n} bytes"


def _depths(row: dict[str, Any], key: str) -> str:
    if row["side"] == "middle":
        depth = row[key]
        middle = row.get("middle") if key == "transformer_depth" else Middle.FULL.value
        if depth is None:
            return ""
        return {"none": "no middle block", "res": "ResBlock only"}.get(middle, f"ResBlock, {depth}, ResBlock")
    return str(row[key])


def _depth_table(blocks: list[dict[str, Any]]) -> list[str]:
    grouped: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in blocks:
        grouped.setdefault((row["side"], row["level"]), []).append(row)
    lines = [f"{'side':<7} {'level':>5} {'width':>6}  {'transformer depth per block':<28} SDXL"]
    for (side, level), rows in grouped.items():
        ours = " ".join(_depths(r, "transformer_depth") for r in rows)
        sdxl = " ".join(_depths(r, "sdxl_depth") for r in rows) if rows[0]["sdxl_depth"] is not None else "-"
        lines.append(f"{side:<7} {level:>5} {rows[0]['channels']:>6}  {ours:<28} {sdxl}")
    return lines


_COMPONENT_NAMES = {"unet": "UNet", "clip_l": "CLIP-L", "clip_g": "OpenCLIP-bigG", "vae": "VAE"}


def format_report(report: Report) -> str:
    """The human-readable block for one inspected path."""
    lines = [f"{report['path']}  ({_size(report['file_size'])})"]

    def field(name: str, value: str) -> None:
        lines.append(f"  {name:<12}{value}")

    if report["status"] in ("unreadable", "unsupported", "not-sdxl") or report["family"] is None:
        field("status", report["status"])
        if report["error"]:
            field("error", report["error"]["message"])
        if report["components"]:
            present = [_COMPONENT_NAMES[k] for k, v in report["components"].items() if v]
            field("contains", ", ".join(present) or "nothing recognised")
        return "\n".join(lines)
    family = report["family"]
    kind = "not in the family table" if family["key"] == "custom" else "distilled" if family["distilled"] else "stock"
    field("family", f"{family['name']} ({kind}), {report['form']}")
    if report["status"] == "refused":
        field("REFUSED", "; ".join(report["problems"][:4]))
    dtypes = sorted({d for counts in report["dtypes"].values() for d in counts})
    field("UNet", f"{report['unet_parameters']:,} parameters, {report['unet_tensors']} tensors")
    comps = report["components"] or {}
    present = [_COMPONENT_NAMES[k] for k, v in comps.items() if v]
    absent = [_COMPONENT_NAMES[k] for k, v in comps.items() if not v]
    field("components", ", ".join(present) + (f"   (no {', '.join(absent)})" if absent else ""))
    field("dtypes", ", ".join(dtypes) + f", {report['tensors']} tensors")
    meta = report["metadata"]
    if meta.get("modelspec.title") or meta.get("modelspec.architecture"):
        field("modelspec", f"title {meta['modelspec.title']!r}, architecture {meta['modelspec.architecture']!r}")
    if report["recommended"]:
        r = report["recommended"]
        field(
            "recommended",
            f"{r['resolution']} px, {r['steps'][0]}–{r['steps'][1]} steps, CFG {r['cfg'][0]:g}–{r['cfg'][1]:g}",
        )
        lcm = r["lcm"]
        field(
            "with LCM",
            f"{lcm['lora']}: {lcm['steps'][0]}–{lcm['steps'][1]} steps, CFG {lcm['cfg'][0]:g}–{lcm['cfg'][1]:g}, "
            f"sampler {lcm['sampler']}"
            if lcm
            else "no LCM-LoRA is published for this layout (an SDXL one applies only in part: see the console count)",
        )
    table = _depth_table(report["blocks"])
    field("blocks", table[0])
    lines.extend(f"  {'':<12}{line}" for line in table[1:])
    for index, verdict in enumerate(report["stock_a1111"]):
        label = "stock A1111" if index == 0 else ""
        field(label, f"{verdict['hosts']:<15} {verdict['outcome']}: {verdict['detail']}")
        lines.extend(f"  {'':<12}{'':<15} - {c}" for c in verdict["caveats"])
    for note in report["notes"]:
        field("note", note)
    return "\n".join(lines)

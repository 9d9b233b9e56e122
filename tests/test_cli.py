"""`python -m extensions_ssd1b inspect` (and the command line around it) on every family and form."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from published import UNET_PARAMETERS

from extensions_ssd1b.arch.families import FAMILIES, FAMILIES_BY_KEY
from extensions_ssd1b.arch.layout import Middle, parameter_count, unet_tensor_shapes
from extensions_ssd1b.tools import cli
from extensions_ssd1b.tools.report import inspect_file, stock_a1111
from extensions_ssd1b.tools.samples import (
    FORMS,
    TensorSpec,
    reduced_layout,
    write_diffusers_pipeline,
    write_safetensors,
    write_sample,
)

REPO = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((REPO / "docs" / "inspect-schema.json").read_text())


# -- a small JSON-schema checker (the subset docs/inspect-schema.json uses) -----------------------

_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "null": type(None),
}


def _is(value: Any, kind: str) -> bool:
    if kind in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[kind])


def schema_errors(value: Any, schema: dict[str, Any], root: dict[str, Any], where: str = "$") -> list[str]:
    """Violations of ``schema`` by ``value`` (type, const, enum, required, properties,
    additionalProperties, items, oneOf, $ref, minimum); unknown keywords are rejected so the
    schema cannot silently use something this checker ignores."""
    known = {"$schema", "$id", "$defs", "title", "description", "type", "const", "enum", "required"}
    known |= {"properties", "additionalProperties", "items", "oneOf", "$ref", "minimum"}
    unknown = set(schema) - known
    assert not unknown, f"schema keywords this checker does not support: {unknown}"
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/$defs/")
        return schema_errors(value, root["$defs"][name], root, where)
    if "oneOf" in schema:
        matching = [s for s in schema["oneOf"] if not schema_errors(value, s, root, where)]
        return [] if len(matching) == 1 else [f"{where}: matches {len(matching)} of oneOf"]
    errors: list[str] = []
    if "type" in schema:
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is(value, k) for k in kinds):
            return [f"{where}: {value!r} is not {kinds}"]
    if "const" in schema and value != schema["const"]:
        errors.append(f"{where}: {value!r} != {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} not in {schema['enum']}")
    if "minimum" in schema and isinstance(value, (int, float)) and value < schema["minimum"]:
        errors.append(f"{where}: {value} < {schema['minimum']}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{where}: missing {key!r}")
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in properties:
                errors += schema_errors(item, properties[key], root, f"{where}.{key}")
            elif extra is False:
                errors.append(f"{where}: unexpected key {key!r}")
            elif isinstance(extra, dict):
                errors += schema_errors(item, extra, root, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += schema_errors(item, schema["items"], root, f"{where}[{i}]")
    return errors


def assert_valid(document: dict[str, Any]) -> None:
    errors = schema_errors(document, SCHEMA, SCHEMA)
    assert not errors, "\n".join(errors[:20])


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def inspect_json(*paths: str | Path) -> tuple[int, dict[str, Any]]:
    code, out, _ = run_cli("inspect", "--json", *map(str, paths))
    document = json.loads(out)
    assert_valid(document)
    return code, document


# -- the checker itself must be able to fail ------------------------------------------------------


def test_schema_checker_rejects_bad_documents() -> None:
    good = {"schema": "sd-webui-ssd1b/inspect/1", "tool": "x", "files": []}
    assert not schema_errors(good, SCHEMA, SCHEMA)
    assert schema_errors({**good, "schema": "other"}, SCHEMA, SCHEMA)
    assert schema_errors({**good, "extra": 1}, SCHEMA, SCHEMA)
    assert schema_errors({"schema": good["schema"], "tool": "x"}, SCHEMA, SCHEMA)
    assert schema_errors({**good, "files": [{"path": "x"}]}, SCHEMA, SCHEMA)


# -- samples of every family and form -------------------------------------------------------------


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    folder = tmp_path_factory.mktemp("samples")
    return {
        (family.key, form): write_sample(folder / f"{family.key}-{form}.safetensors", family.key, form)
        for family in FAMILIES
        for form in FORMS
    }


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("family", [f.key for f in FAMILIES])
def test_inspect_every_family_and_form(samples: dict[tuple[str, str], Path], family: str, form: str) -> None:
    path = samples[family, form]
    code, document = inspect_json(path)
    assert code == 0
    (report,) = document["files"]
    expected = FAMILIES_BY_KEY[family]
    assert report["ok"] and report["status"] == "family"
    assert report["family"] == {"key": family, "name": expected.name, "distilled": expected.distilled}
    assert report["form"] == form
    assert report["file_size"] == path.stat().st_size
    assert report["unet_parameters"] == parameter_count(expected.layout)
    assert report["unet_tensors"] == len(unet_tensor_shapes(expected.layout))
    single = form == "single-file"
    refiner = family == "sdxl-refiner"
    assert report["components"] == {"unet": True, "clip_l": single and not refiner, "clip_g": single, "vae": single}
    parts = {"UNet", "OpenCLIP-bigG", "VAE"} | (set() if refiner else {"CLIP-L"}) if single else {"UNet"}
    assert set(report["dtypes"]) == parts
    assert report["metadata"]["modelspec.title"] == f"{expected.name} sample"
    assert report["recommended"]["resolution"] == expected.recommended.resolution
    # the depth table covers every block of the layout, in order
    depths = [r["transformer_depth"] for r in report["blocks"] if r["side"] == "input"]
    assert depths == [d for level in expected.layout.input_depths for d in level]
    depths = [r["transformer_depth"] for r in report["blocks"] if r["side"] == "output"]
    assert depths == [d for level in expected.layout.output_depths for d in level]
    assert len(report["stock_a1111"]) == 2


def test_published_parameter_counts(samples: dict[tuple[str, str], Path]) -> None:
    """architectures.md §8 counts, derived there by an independent calculator and checked against file sizes."""
    for key, count in UNET_PARAMETERS.items():
        assert inspect_file(samples[key, "single-file"])["unet_parameters"] == count


def test_single_file_sizes_match_published_files(samples: dict[tuple[str, str], Path]) -> None:
    """fp16 single files with both text encoders and a VAE are the size of the published ones."""
    published = {"sdxl": 6.94e9, "ssd-1b": 4.47e9, "segmind-vega": 3.29e9}  # HF listings (architectures.md §6)
    for key, size in published.items():
        assert abs(samples[key, "single-file"].stat().st_size - size) < 0.006e9


# -- what stock A1111 does, against the measurements in a1111-host.md §10 --------------------------


def _verdicts(samples: dict[tuple[str, str], Path], key: str, form: str = "single-file") -> dict[str, dict]:
    return {v["hosts"]: v for v in inspect_file(samples[key, form])["stock_a1111"]}


def test_stock_a1111_on_known_families(samples: dict[tuple[str, str], Path]) -> None:
    for key in ("sdxl", "sdxl-refiner"):
        assert {v["outcome"] for v in _verdicts(samples, key).values()} == {"correct"}
    ssd = _verdicts(samples, "ssd-1b")
    assert ssd["v1.6.0"]["outcome"] == "correct-oversized" and ssd["v1.6.0"]["built_as"] == "SDXL"
    assert ssd["v1.6.0"]["zero_filled"] == 736  # measured: "736 tensors not in the file are zero-filled"
    assert ssd["v1.7.0–v1.10.1"]["outcome"] == "correct" and ssd["v1.7.0–v1.10.1"]["built_as"] == "SSD-1B"
    vega = _verdicts(samples, "segmind-vega")
    assert vega["v1.6.0"]["outcome"] == "correct-oversized" and vega["v1.6.0"]["zero_filled"] == 1116
    v17 = vega["v1.7.0–v1.10.1"]
    assert v17["outcome"] == "correct-oversized" and v17["built_as"] == "SSD-1B" and v17["zero_filled"] == 380
    assert v17["built_parameters"] == parameter_count(FAMILIES_BY_KEY["ssd-1b"].layout)
    for key in ("koala-700m", "koala-1b"):
        verdicts = _verdicts(samples, key)
        assert {v["outcome"] for v in verdicts.values()} == {"fails"}
        assert all("size mismatch" in v["detail"] for v in verdicts.values())
    assert "142 tensors" in _verdicts(samples, "koala-700m")["v1.6.0"]["detail"]  # measured: 142 tensors
    for form in ("ldm-unet", "diffusers-unet"):
        assert {v["outcome"] for v in _verdicts(samples, "ssd-1b", form).values()} == {"wrong"}


def test_stock_a1111_on_custom_layouts_depends_on_the_layout() -> None:
    from extensions_ssd1b.arch.detect import detect
    from extensions_ssd1b.tools.samples import sample_shapes

    sdxl = FAMILIES_BY_KEY["sdxl"].layout
    # fewer blocks than SDXL and a full middle: both hosts build SDXL, zero-filled identities
    shallower = replace(sdxl, input_depths=((0, 0), (1, 1), (5, 5)), output_depths=((5, 5, 5), (1, 1, 1), (0, 0, 0)))
    shapes = sample_shapes("custom", layout=shallower)
    outcomes = {v["hosts"]: v["outcome"] for v in stock_a1111(shapes, detect(shapes))}
    assert outcomes == {"v1.6.0": "correct-oversized", "v1.7.0–v1.10.1": "correct-oversized"}
    # no middle transformer but deeper than SSD-1B: v1.7+ prunes to SSD-1B and silently drops blocks
    deeper = replace(sdxl, middle=Middle.RES_ONLY, middle_depth=0)
    shapes = sample_shapes("custom", layout=deeper)
    outcomes = {v["hosts"]: v["outcome"] for v in stock_a1111(shapes, detect(shapes))}
    assert outcomes == {"v1.6.0": "correct-oversized", "v1.7.0–v1.10.1": "wrong"}
    # other widths: size mismatches on both
    reduced = reduced_layout("ssd-1b")
    shapes = sample_shapes("custom", layout=reduced)
    assert {v["outcome"] for v in stock_a1111(shapes, detect(shapes))} == {"fails"}


def test_no_vae_and_no_clip_l_are_called_out(tmp_path: Path) -> None:
    path = write_sample(tmp_path / "novae.safetensors", "ssd-1b", with_vae=False)
    report = inspect_file(path)
    assert report["ok"] and not report["components"]["vae"]
    assert any("grey" in note for note in report["notes"])
    assert all(any("grey" in c for c in v["caveats"]) for v in report["stock_a1111"])
    path = write_sample(tmp_path / "note.safetensors", "ssd-1b", text_encoders=False)
    verdicts = inspect_file(path)["stock_a1111"]
    assert {v["built_as"] for v in verdicts} == {"SD 1.x"} and {v["outcome"] for v in verdicts} == {"fails"}


# -- human output, folders, exit status -----------------------------------------------------------


def test_human_output_shows_family_depths_and_verdicts(samples: dict[tuple[str, str], Path]) -> None:
    code, out, err = run_cli("inspect", str(samples["ssd-1b", "single-file"]))
    assert code == 0 and not err
    assert "SSD-1B (distilled), single-file" in out
    assert "1,331,334,404 parameters" in out
    assert "4 4 10" in out and "10 10 10" in out  # SSD-1B's deepest output level next to SDXL's
    assert "ResBlock only" in out
    assert "v1.6.0" in out and "v1.7.0–v1.10.1" in out
    assert "20–30 steps" in out


def test_folders_are_searched_recursively(tmp_path: Path) -> None:
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    write_sample(tmp_path / "a.safetensors", "segmind-vega")
    write_sample(tmp_path / "sub" / "deeper" / "b.safetensors", "koala-700m", "ldm-unet")
    write_sample(tmp_path / "sub" / "x.vae.safetensors", "ssd-1b")  # A1111 skips these; so do we
    write_diffusers_pipeline(tmp_path / "sub" / "pipe", "koala-1b")
    (tmp_path / "old.ckpt").write_bytes(b"\x80\x02}q\x00.")
    code, document = inspect_json(tmp_path)
    by_name = {Path(f["path"]).name: f for f in document["files"]}
    assert set(by_name) == {"a.safetensors", "b.safetensors", "pipe", "old.ckpt"}
    assert by_name["pipe"]["form"] == "diffusers-folder" and by_name["pipe"]["family"]["key"] == "koala-1b"
    assert by_name["b.safetensors"]["family"]["key"] == "koala-700m"
    assert by_name["old.ckpt"]["status"] == "unsupported" and by_name["old.ckpt"]["error"]["type"] == "Unsupported"
    assert code == 1  # the pickle is not ok
    (tmp_path / "old.ckpt").unlink()
    assert inspect_json(tmp_path)[0] == 0


def test_exit_status_and_typed_errors(tmp_path: Path) -> None:
    lora = tmp_path / "lora.safetensors"
    write_safetensors(lora, [TensorSpec("lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight", "F16", (4, 4))])
    code, document = inspect_json(lora, tmp_path / "missing.safetensors")
    assert code == 1
    lora_report, missing = document["files"]
    assert lora_report["status"] == "not-sdxl" and lora_report["error"]["type"] == "NotSdxlFamily"
    assert "LoRA" in lora_report["error"]["message"]
    assert missing["error"]["type"] == "CheckpointError" and "missing.safetensors" in missing["error"]["message"]
    code, _, err = run_cli("inspect", str(lora))
    assert code == 1 and "LoRA" in err and str(lora) in err
    assert run_cli("inspect", "--bogus")[0] == 2
    assert run_cli()[0] == 2


def test_inspect_reads_only_the_header(samples: dict[tuple[str, str], Path]) -> None:
    path = samples["sdxl", "single-file"]  # 6.9 GB
    inspect_file(path)  # warm the per-layout caches
    started = time.perf_counter()
    report = inspect_file(path)
    elapsed = time.perf_counter() - started
    assert report["file_size"] > 6e9
    assert elapsed < 1.0, f"{elapsed:.3f} s for a header-only inspection"  # loose: CI machines are slow


# -- the no-argument default ----------------------------------------------------------------------


def test_webui_checkpoint_dir(tmp_path: Path) -> None:
    package = tmp_path / "webui" / "extensions" / "sd-webui-ssd1b" / "extensions_ssd1b"
    package.mkdir(parents=True)
    assert cli.webui_checkpoint_dir(package) is None  # no models folder yet
    (tmp_path / "webui" / "models" / "Stable-diffusion").mkdir(parents=True)
    assert cli.webui_checkpoint_dir(package) == tmp_path / "webui" / "models" / "Stable-diffusion"
    assert cli.webui_checkpoint_dir(tmp_path / "elsewhere" / "extensions_ssd1b") is None


def test_no_argument_outside_a_webui_shows_a_generated_sample() -> None:
    code, out, err = run_cli("inspect", "--json")
    document = json.loads(out)
    assert_valid(document)
    (report,) = document["files"]
    assert code == 0 and report["family"]["key"] == "ssd-1b" and report["file_size"] > 4e9
    assert "sample" in err
    assert not Path(report["path"]).exists()  # the temporary sample is cleaned up


def test_no_argument_inside_a_webui_lists_its_checkpoints(tmp_path: Path) -> None:
    extension = tmp_path / "webui" / "extensions" / "sd-webui-ssd1b"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "extensions_ssd1b", extension / "extensions_ssd1b", ignore=ignore)
    models = tmp_path / "webui" / "models" / "Stable-diffusion"
    models.mkdir(parents=True)
    write_sample(models / "vega.safetensors", "segmind-vega")
    result = subprocess.run(
        [sys.executable, "-m", "extensions_ssd1b", "inspect", "--json"],
        cwd=extension,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert_valid(document)
    assert [Path(f["path"]).name for f in document["files"]] == ["vega.safetensors"]
    assert document["files"][0]["family"]["key"] == "segmind-vega"


def test_core_modules_do_not_import_the_host_or_torch(samples: dict[tuple[str, str], Path], tmp_path: Path) -> None:
    """The command line runs outside a webui and stays small: no modules/gradio/sgm and no torch;
    ``inspect`` (header only) does not even need numpy, so a bare ``python3`` runs it."""
    sample = samples["segmind-vega", "single-file"]
    folder = write_diffusers_pipeline(tmp_path / "pipe", "koala-700m")
    code = f"""
import sys
from extensions_ssd1b.tools import cli
null = open("/dev/null", "w")
assert cli.main(["inspect", "--json", {str(sample)!r}, {str(folder)!r}], stdout=null) == 0
assert cli.main(["inspect"], stdout=null, stderr=null) == 0
print(sorted(m for m in sys.modules if m.split(".")[0] in ("modules", "gradio", "sgm", "torch", "numpy")))
from extensions_ssd1b.arch import components
from extensions_ssd1b.tools import convert, report, samples, verify
cli.main(["verify", "--no-progress", {str(sample)!r}], stdout=null)
print(sorted(m for m in sys.modules if m.split(".")[0] in ("modules", "gradio", "sgm", "torch")))
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[]", "[]"]


def test_zero_filled_blocks_are_identities_only_when_whole_and_residual() -> None:
    """The rule behind correct-oversized: zeroed transformer blocks, SpatialTransformers and
    channel-keeping ResBlocks add nothing; anything else (an upsampler, half a block) breaks the UNet."""
    from extensions_ssd1b.tools.report import _compare_with_host

    sdxl = FAMILIES_BY_KEY["sdxl"].layout
    full = unet_tensor_shapes(sdxl)

    def identity_without(*prefixes: str) -> bool:
        kept = {k: v for k, v in full.items() if not k.startswith(prefixes)}
        found = _compare_with_host(kept, sdxl)
        assert found["missing"] == len(full) - len(kept) > 0 and not found["mismatched"] and not found["dropped"]
        return found["identity"]

    assert identity_without("middle_block.1.", "middle_block.2.")
    assert identity_without("input_blocks.7.1.transformer_blocks.9.", "output_blocks.0.1.transformer_blocks.5.")
    assert identity_without("output_blocks.4.1.")  # a whole SpatialTransformer
    assert not identity_without("output_blocks.2.2.conv.")  # the upsampler
    assert not identity_without("input_blocks.7.1.transformer_blocks.9.attn1.")  # half a transformer block
    assert not identity_without("output_blocks.6.0.")  # a ResBlock whose skip changes the width


# The LCM-LoRA cards (latent-consistency/lcm-lora-sdxl, lcm-lora-ssd-1b, segmind/Segmind-VegaRT): 2-8 steps,
# guidance 1.0-2.0; KOALA has none published.
PUBLISHED_LCM = {
    "sdxl": "latent-consistency/lcm-lora-sdxl",
    "ssd-1b": "latent-consistency/lcm-lora-ssd-1b",
    "segmind-vega": "segmind/Segmind-VegaRT",
    "koala-700m": None,
    "koala-1b": None,
}


@pytest.mark.parametrize("family", list(PUBLISHED_LCM))
def test_inspect_gives_the_lcm_lora_settings(samples: dict[tuple[str, str], Path], family: str) -> None:
    _, document = inspect_json(samples[family, FORMS[0]])
    lcm = document["files"][0]["recommended"]["lcm"]
    if PUBLISHED_LCM[family] is None:
        assert lcm is None
    else:
        assert (lcm["lora"], lcm["steps"], lcm["cfg"]) == (PUBLISHED_LCM[family], [2, 8], [1.0, 2.0])
        assert "Euler a" in lcm["sampler"] and "v1.8" in lcm["sampler"]  # what to use where the host has no LCM

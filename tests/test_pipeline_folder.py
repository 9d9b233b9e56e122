"""A diffusers folder's UNet file loads the whole folder: the state dict assembled in memory is,
tensor for tensor, the checkpoint `convert` writes (whose mapping is checked against diffusers)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from extensions_ssd1b.arch.detect import CLIP_L_PREFIX, Form, detect
from extensions_ssd1b.arch.families import FAMILIES
from extensions_ssd1b.core.errors import CheckpointError
from extensions_ssd1b.diffusers.folder import component_folder, pipeline_root
from extensions_ssd1b.diffusers.pipeline import load_state_dict, plan_pipeline
from extensions_ssd1b.tools.convert import convert
from extensions_ssd1b.tools.samples import reduced_layout, write_diffusers_pipeline

UNET_FILE = "unet/diffusion_pytorch_model.safetensors"


def folder_digest(root: Path) -> dict[str, str]:
    files = [path for path in sorted(root.rglob("*")) if path.is_file()]
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest() for path in files}


@pytest.mark.parametrize("family", [f.key for f in FAMILIES])
def test_the_assembled_state_dict_is_the_converted_checkpoint(tmp_path: Path, family: str) -> None:
    root = write_diffusers_pipeline(tmp_path / "pipe", family, layout=reduced_layout(family), sparse=False, seed=3)
    before = folder_digest(root)
    pipeline = plan_pipeline(root / UNET_FILE)
    assembled = load_state_dict(pipeline)
    converted = load_file(convert(root, tmp_path / "converted.safetensors", dtype="fp16").destination)

    assert assembled.keys() == converted.keys()
    different = [k for k, v in converted.items() if assembled[k].dtype != v.dtype or not torch.equal(assembled[k], v)]
    assert not different, different[:5]
    assert pipeline.shapes() == {k: tuple(v.shape) for k, v in assembled.items()}
    detection = detect(pipeline.shapes())
    assert detection.form is Form.SINGLE_FILE and detection.layout == reduced_layout(family)
    assert detection.components.clip_g and detection.components.vae
    assert folder_digest(root) == before, "the user's folder is only read"


def test_the_picked_variant_decides_which_files_are_read(tmp_path: Path) -> None:
    layout = reduced_layout("segmind-vega")
    root = write_diffusers_pipeline(tmp_path / "pipe", "segmind-vega", layout=layout, sparse=False, dtype="F32")
    write_diffusers_pipeline(root, "segmind-vega", layout=layout, sparse=False, dtype="F16", variant="fp16", seed=7)

    plain = load_state_dict(plan_pipeline(root / UNET_FILE))
    half = load_state_dict(plan_pipeline(root / "unet/diffusion_pytorch_model.fp16.safetensors"))
    clip, unet = CLIP_L_PREFIX + "text_model.final_layer_norm.weight", "model.diffusion_model.out.2.weight"
    assert {plain[clip].dtype, plain[unet].dtype} == {torch.float32}
    assert {half[clip].dtype, half[unet].dtype} == {torch.float16}
    assert not torch.equal(plain[unet].half(), half[unet]), "two variants with different values: each read its own"


def test_any_shard_of_a_sharded_unet_loads_the_whole_folder(tmp_path: Path) -> None:
    layout = reduced_layout("koala-700m")
    root = write_diffusers_pipeline(tmp_path / "pipe", "koala-700m", layout=layout, sparse=False, unet_shards=3)
    shards = sorted((root / "unet").glob("*-of-00003.safetensors"))
    assert len(shards) == 3
    first, last = (load_state_dict(plan_pipeline(shard)) for shard in (shards[0], shards[-1]))
    assert first.keys() == last.keys()
    assert all(torch.equal(first[k], last[k]) for k in first)
    assert detect({k: tuple(v.shape) for k, v in first.items()}).layout == layout


def test_which_files_are_a_pipeline_unet_and_which_are_its_parts(tmp_path: Path) -> None:
    root = write_diffusers_pipeline(tmp_path / "pipe", "ssd-1b", layout=reduced_layout("ssd-1b"))
    assert pipeline_root(root / UNET_FILE) == root
    assert pipeline_root(root / "text_encoder/model.safetensors") is None
    assert component_folder(root / "text_encoder_2/model.safetensors") == (root, "text_encoder_2")
    assert component_folder(root / "vae/diffusion_pytorch_model.safetensors") == (root, "vae")
    assert component_folder(root / UNET_FILE) is None

    alone = tmp_path / "alone" / "unet"  # a UNet folder without the rest of a pipeline
    alone.mkdir(parents=True)
    shutil.copy(root / UNET_FILE, alone / "diffusion_pytorch_model.safetensors")
    assert pipeline_root(alone / "diffusion_pytorch_model.safetensors") is None
    assert pipeline_root(tmp_path / "pipe" / "model.safetensors") is None


def test_a_folder_missing_a_part_is_refused_naming_the_unet_file_and_the_part(tmp_path: Path) -> None:
    root = write_diffusers_pipeline(tmp_path / "pipe", "ssd-1b", layout=reduced_layout("ssd-1b"))
    shutil.rmtree(root / "vae")
    with pytest.raises(CheckpointError, match=r"diffusion_pytorch_model\.safetensors: the diffusers folder .* no VAE"):
        plan_pipeline(root / UNET_FILE)


def test_a_truncated_part_is_refused_before_any_tensor_is_read(tmp_path: Path) -> None:
    root = write_diffusers_pipeline(tmp_path / "pipe", "segmind-vega", layout=reduced_layout("segmind-vega"))
    encoder = root / "text_encoder_2" / "model.safetensors"
    with open(encoder, "r+b") as handle:
        handle.truncate(encoder.stat().st_size // 2)
    with pytest.raises(CheckpointError, match=r"text_encoder_2/model\.safetensors: .*(truncated|outside)"):
        plan_pipeline(root / UNET_FILE)


def test_inspect_tells_that_the_webui_loads_the_folder_from_its_unet_file(tmp_path: Path) -> None:
    from extensions_ssd1b.tools.report import inspect_file

    root = write_diffusers_pipeline(tmp_path / "pipe", "segmind-vega", layout=reduced_layout("segmind-vega"))
    notes = inspect_file(root / UNET_FILE)["notes"]
    assert any(f"the UNet of the diffusers folder {root}" in n and "loads the whole folder" in n for n in notes)
    shutil.rmtree(root / "text_encoder_2")
    (root / "model_index.json").unlink(missing_ok=True)
    assert not any("loads the whole folder" in note for note in inspect_file(root / UNET_FILE)["notes"])

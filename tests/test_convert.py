"""`convert`: diffusers SDXL-family weights → an A1111 single file, checked against diffusers' own
LDM→diffusers converters (an independent implementation of the same key mapping)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from extensions_ssd1b import __version__
from extensions_ssd1b.arch.components import CLIP_G_BASE_PREFIX, CLIP_G_REFINER_PREFIX
from extensions_ssd1b.arch.detect import LDM_UNET_PREFIX, Form, detect
from extensions_ssd1b.arch.families import FAMILIES, FAMILIES_BY_KEY
from extensions_ssd1b.core.errors import CheckpointError, LayoutError, NotSdxlFamily
from extensions_ssd1b.io.cast import cast
from extensions_ssd1b.io.header import read_header
from extensions_ssd1b.io.write import atomic_write
from extensions_ssd1b.tools import convert as convert_module
from extensions_ssd1b.tools.cli import main
from extensions_ssd1b.tools.convert import ConvertError, convert
from extensions_ssd1b.tools.samples import (
    TensorSpec,
    reduced_layout,
    write_diffusers_pipeline,
    write_safetensors,
    write_sample,
)
from extensions_ssd1b.tools.verify import verify_file

REPO = Path(__file__).resolve().parents[1]
TORCH_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A diffusers folder with real random values for every family, at reduced width."""
    root = tmp_path_factory.mktemp("pipelines")
    return {
        f.key: write_diffusers_pipeline(root / f.key, f.key, layout=reduced_layout(f.key), sparse=False, seed=i)
        for i, f in enumerate(FAMILIES)
    }


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("family", [f.key for f in FAMILIES])
def test_every_family_converts_and_verifies(pipelines: dict[str, Path], tmp_path: Path, family: str) -> None:
    destination = tmp_path / f"{family}.safetensors"
    result = convert(pipelines[family], destination)
    assert listing(tmp_path) == [destination.name]  # no temporary left behind
    header = read_header(destination)
    assert result.bytes_written == header.file_size
    detection = detect(header.shapes())
    assert detection.form is Form.SINGLE_FILE
    assert detection.layout == reduced_layout(family)  # the block structure survived, block for block
    refiner = family == "sdxl-refiner"
    assert detection.components.present() == ["UNet", *([] if refiner else ["CLIP-L"]), "OpenCLIP-bigG", "VAE"]
    report = verify_file(destination)
    assert report.ok, report.problems
    meta = header.metadata
    assert meta["ssd1b.tool"] == f"sd-webui-ssd1b {__version__} convert"
    assert meta["ssd1b.family"] == "custom" and meta["ssd1b.dtype"] == "fp16"
    assert json.loads(meta["ssd1b.converted_from"]) == [pipelines[family].name]
    sources = json.loads(meta["ssd1b.source_files"])
    assert "unet/diffusion_pytorch_model.safetensors" in sources
    # nothing of where the files were (home folder, user name) goes into a file people share
    assert not any(str(tmp_path.parent) in value or str(pipelines[family].parent) in value for value in meta.values())


def _diffusers_tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


@pytest.mark.parametrize("family", ["ssd-1b", "koala-700m", "koala-1b", "sdxl-refiner"])
def test_values_round_trip_through_diffusers_converters(
    pipelines: dict[str, Path], tmp_path: Path, family: str
) -> None:
    """Our diffusers→LDM output, taken back by diffusers' LDM→diffusers functions, is the source, bit for bit."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
    )

    source = pipelines[family]
    destination = tmp_path / "out.safetensors"
    convert(source, destination)
    ldm = load_file(destination)
    layout = reduced_layout(family)
    unet_config = {"layers_per_block": len(layout.input_depths[0]), "addition_embed_type": "text_time"}
    levels = 4
    vae_config = {"down_block_types": [0] * levels, "up_block_types": [0] * levels}
    g_prefix = CLIP_G_REFINER_PREFIX if family == "sdxl-refiner" else CLIP_G_BASE_PREFIX
    back = {
        "unet": convert_ldm_unet_checkpoint(ldm, unet_config),
        "vae": convert_ldm_vae_checkpoint(ldm, vae_config),
        "text_encoder_2": convert_open_clip_checkpoint(None, ldm, g_prefix),
    }
    if family != "sdxl-refiner":
        back["text_encoder"] = convert_ldm_clip_checkpoint(ldm)
    for part, converted in back.items():
        original = _diffusers_tensors(source / part)
        assert set(converted) == set(original), part
        for name, tensor in original.items():
            assert torch.equal(converted[name].reshape(tensor.shape), tensor), f"{part}: {name}"


def test_output_dtypes_match_torch(pipelines: dict[str, Path], tmp_path: Path) -> None:
    source = pipelines["segmind-vega"]
    original = _diffusers_tensors(source / "unet")
    for dtype in ("bf16", "fp32"):
        destination = tmp_path / f"{dtype}.safetensors"
        assert main(["convert", str(source), str(destination), "--dtype", dtype]) == 0
        ldm = load_file(destination)
        assert {t.dtype for t in ldm.values()} == {TORCH_DTYPES[dtype]}
        weight = ldm[LDM_UNET_PREFIX + "input_blocks.0.0.weight"]
        assert torch.equal(weight, original["conv_in.weight"].to(TORCH_DTYPES[dtype]))


def test_cast_rounds_like_torch() -> None:
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(4096, generator=generator) * torch.logspace(-8, 6, 4096)
    specials = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 65504.0, 65520.0, 1e-8, 3.4e38])
    values = torch.cat([values, specials])
    for source in (torch.float32, torch.float16, torch.bfloat16):
        data = values.to(source)
        raw = data.view(torch.uint8).numpy().tobytes()
        names = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
        for target in (torch.float32, torch.float16, torch.bfloat16):
            converted, overflowed = cast(raw, names[source], names[target])
            ours = torch.frombuffer(bytearray(bytes(converted)), dtype=target)
            expected = data.to(target)
            same = (ours == expected) | (ours.isnan() & expected.isnan())
            assert bool(same.all()), (source, target)
            new_infs = int(expected.isinf().sum() - data.isinf().sum())
            assert overflowed == max(new_infs, 0), (source, target)


@pytest.mark.parametrize("family", ["segmind-vega", "koala-700m"])
def test_full_size_sparse_folders_keep_their_family(tmp_path: Path, family: str) -> None:
    source = write_diffusers_pipeline(tmp_path / "pipe", family)  # full width, data a hole
    destination = tmp_path / "out.safetensors"
    result = convert(source, destination)
    header = read_header(destination)
    detection = detect(header.shapes())
    assert detection.family is FAMILIES_BY_KEY[family] and result.family == family
    assert header.metadata["ssd1b.family"] == family
    assert destination.stat().st_size == header.file_size > 3e9
    # holes stay holes: what was never written is not written now (where the file system has holes)
    source_blocks = sum(p.stat().st_blocks for p in source.rglob("*.safetensors"))
    if source_blocks * 512 < 100e6:
        assert destination.stat().st_blocks * 512 < 200e6


def test_unet_file_with_components(tmp_path: Path) -> None:
    layout = reduced_layout("koala-1b")
    unet = write_sample(tmp_path / "unet.safetensors", "custom", "diffusers-unet", layout=layout, sparse=False)
    components = write_sample(tmp_path / "sdxl.safetensors", "custom", layout=layout, sparse=False, seed=5)
    destination = tmp_path / "out.safetensors"
    code = main(["convert", str(unet), str(destination), "--components", str(components)])
    assert code == 0
    out, theirs = load_file(destination), load_file(components)
    assert detect(read_header(destination).shapes()).layout == layout
    carried = [k for k in theirs if not k.startswith(LDM_UNET_PREFIX)]
    assert carried and all(torch.equal(out[k], theirs[k]) for k in carried)
    metadata = read_header(destination).metadata
    assert metadata["ssd1b.components_from"] == components.name
    assert json.loads(metadata["ssd1b.source_files"]) == [unet.name, components.name]
    # an LDM-named bare UNet works the same way
    ldm_unet = write_sample(tmp_path / "ldm.safetensors", "custom", "ldm-unet", layout=layout, sparse=False)
    assert convert(ldm_unet, tmp_path / "out2.safetensors", components=components).tensors == len(out)


def test_sharded_variants_and_legacy_vae_names(tmp_path: Path) -> None:
    layout = reduced_layout("ssd-1b")
    root = write_diffusers_pipeline(tmp_path / "pipe", "ssd-1b", layout=layout, sparse=False, legacy_vae_names=True)
    write_diffusers_pipeline(root, "ssd-1b", layout=layout, sparse=False, variant="fp16", unet_shards=3, seed=9)
    fp16 = convert(root, tmp_path / "a.safetensors")
    assert sum(".fp16-0000" in s for s in fp16.sources) == 3  # the fp16 variant, all three shards
    fp32 = convert(root, tmp_path / "b.safetensors", dtype="fp32")
    assert not any(".fp16" in s for s in fp32.sources)  # the full-precision files
    assert verify_file(tmp_path / "a.safetensors").ok and verify_file(tmp_path / "b.safetensors").ok
    (root / "unet" / "diffusion_pytorch_model.fp16-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match="shards are incomplete"):
        convert(root, tmp_path / "c.safetensors")


# -- refusals: typed, and nothing written ---------------------------------------------------------


def test_refusals_write_nothing(pipelines: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    layout = reduced_layout("segmind-vega")
    unet = write_sample(tmp_path / "unet.safetensors", "custom", "diffusers-unet", layout=layout, sparse=False)
    single = write_sample(tmp_path / "single.safetensors", "custom", layout=layout, sparse=False)
    base = write_sample(tmp_path / "base.safetensors", "custom", layout=reduced_layout("ssd-1b"), sparse=True)
    refiner_unet = write_sample(
        tmp_path / "refiner.safetensors", "custom", "diffusers-unet", layout=reduced_layout("sdxl-refiner")
    )
    no_vae = tmp_path / "novae"
    write_diffusers_pipeline(no_vae, "segmind-vega", layout=layout)
    for file in (no_vae / "vae").iterdir():
        file.unlink()
    (no_vae / "vae").rmdir()
    pickles = tmp_path / "pickles"
    write_diffusers_pipeline(pickles, "segmind-vega", layout=layout)
    for file in (pickles / "unet").iterdir():
        file.rename(file.with_suffix(".bin"))
    lora = write_safetensors(tmp_path / "lora.safetensors", [TensorSpec("lora_unet_x.lora_up.weight", "F16", (2, 2))])
    (out / "exists.safetensors").write_bytes(b"keep me")

    cases: list[tuple[tuple[object, ...], dict[str, object], type[Exception], str]] = [
        ((unet, out / "a.safetensors"), {}, ConvertError, "no CLIP-L, OpenCLIP-bigG, VAE"),
        ((no_vae, out / "a.safetensors"), {}, ConvertError, "no VAE"),
        ((pickles, out / "a.safetensors"), {}, CheckpointError, "pickle files are not read"),
        ((unet, out / "exists.safetensors"), {"components": single}, ConvertError, "already exists"),
        ((unet, out / "a.ckpt"), {"components": single}, ConvertError, "must be a .safetensors"),
        ((unet, out / "no" / "a.safetensors"), {"components": single}, ConvertError, "no such folder"),
        ((unet, out), {"components": single}, ConvertError, "must be a .safetensors"),
        ((tmp_path / "nothing", out / "a.safetensors"), {}, ConvertError, "no such file or folder"),
        ((single, out / "a.safetensors"), {}, ConvertError, "already an A1111 single file"),
        ((lora, out / "a.safetensors"), {}, NotSdxlFamily, "LoRA"),
        ((refiner_unet, out / "a.safetensors"), {"components": base}, LayoutError, "cross-attends to 16"),
        ((unet, out / "a.safetensors"), {"components": single, "dtype": "fp8"}, ConvertError, "unknown dtype"),
    ]
    for args, kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            convert(*args, **kwargs)  # type: ignore[arg-type]
        assert listing(out) == ["exists.safetensors"], (args, kwargs)
    assert (out / "exists.safetensors").read_bytes() == b"keep me"
    convert(unet, out / "exists.safetensors", components=single, force=True)
    assert detect(read_header(out / "exists.safetensors").shapes()).layout == layout
    assert listing(out) == ["exists.safetensors"]


def test_cli_reports_errors_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["convert", str(tmp_path / "missing"), str(tmp_path / "out.safetensors")])
    captured = capsys.readouterr()
    assert code == 1 and captured.err.startswith("error: ") and "missing" in captured.err
    assert "Traceback" not in captured.err
    lora = write_safetensors(tmp_path / "lora.safetensors", [TensorSpec("lora_unet_x.lora_up.weight", "F16", (2, 2))])
    assert main(["convert", str(lora), str(tmp_path / "out.safetensors")]) == 1
    assert (
        capsys.readouterr().err == f"error: {lora}: not an SDXL-family checkpoint: a LoRA/LyCORIS network "
        "(load it from the Lora tab, not as a checkpoint)\n"
    )


def test_a_destination_that_appears_meanwhile_is_not_replaced(tmp_path: Path) -> None:
    destination = tmp_path / "race.safetensors"

    def write(handle: object) -> None:
        destination.write_bytes(b"someone else's")

    with pytest.raises(FileExistsError, match="appeared while writing"):
        atomic_write(destination, write)
    assert destination.read_bytes() == b"someone else's"
    assert listing(tmp_path) == ["race.safetensors"]


def test_interrupt_removes_the_partial_file(
    pipelines: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = {"n": 0}
    original = convert_module._copy

    def interrupted(*args: object, **kwargs: object) -> int:
        calls["n"] += 1
        if calls["n"] == 20:
            assert any(p.name.endswith(".partial") for p in tmp_path.iterdir())  # it was being written
            raise KeyboardInterrupt
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(convert_module, "_copy", interrupted)
    code = main(["convert", str(pipelines["koala-700m"]), str(tmp_path / "out.safetensors")])
    assert code == 130 and "was not written" in capsys.readouterr().err
    assert listing(tmp_path) == []


SLOW_CONVERT = """
import sys, time
from extensions_ssd1b.tools import cli, convert
original = convert._copy
def slow(*args, **kwargs):
    result = original(*args, **kwargs)
    time.sleep(60)  # the partial file exists now: the signal arrives during this sleep, never after the last copy
    return result
convert._copy = slow
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_a_killed_conversion_leaves_nothing(pipelines: dict[str, Path], tmp_path: Path, signal_number: int) -> None:
    destination = tmp_path / "out.safetensors"
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_CONVERT, "convert", str(pipelines["segmind-vega"]), str(destination)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not any(p.name.endswith(".partial") for p in tmp_path.iterdir()):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.005)
    process.send_signal(signal_number)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "was not written" in err and "Traceback" not in err
    assert listing(tmp_path) == []


def test_peak_memory_is_a_fraction_of_the_model(tmp_path: Path) -> None:
    """A ~270 MB model converts in far less memory than its size (the benchmark measures 1.5 GB)."""
    from dataclasses import replace

    from test_verify import peak_rss

    wide = replace(FAMILIES_BY_KEY["segmind-vega"].layout, model_channels=128, context_dim=32, adm_in_channels=1552)
    unet = write_sample(tmp_path / "unet.safetensors", "custom", "diffusers-unet", layout=wide, sparse=False)
    components = write_sample(tmp_path / "c.safetensors", "custom", layout=reduced_layout("segmind-vega"), sparse=False)
    size = unet.stat().st_size
    rss, code, out = peak_rss("convert", str(unet), str(tmp_path / "out.safetensors"), "--components", str(components))
    assert code == 0, out
    assert rss < 0.5 * size, f"peak RSS {rss / 1e6:.0f} MB for a {size / 1e6:.0f} MB UNet"
    assert np.isclose(read_header(tmp_path / "out.safetensors").file_size, size, rtol=0.2)
    os.unlink(tmp_path / "out.safetensors")

"""`verify`: every tensor read with bounded memory; NaN/Inf, zero blocks, mixed dtypes, layout."""

from __future__ import annotations

import io
import json
import os
import pty
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from extensions_ssd1b.arch.detect import LDM_UNET_PREFIX, VAE_PREFIX
from extensions_ssd1b.arch.families import FAMILIES_BY_KEY
from extensions_ssd1b.io.header import read_header
from extensions_ssd1b.io.stream import TensorReader
from extensions_ssd1b.tools.cli import main
from extensions_ssd1b.tools.progress import Progress
from extensions_ssd1b.tools.samples import (
    TensorSpec,
    reduced_layout,
    sample_shapes,
    write_diffusers_pipeline,
    write_safetensors,
    write_sample,
)
from extensions_ssd1b.tools.verify import TensorStats, scan_chunk, verify_file

REPO = Path(__file__).resolve().parents[1]
VEGA = reduced_layout("segmind-vega")


def small_sample(path: Path, dtype: str = "F16", **kwargs: object) -> Path:
    return write_sample(path, "custom", layout=VEGA, sparse=False, dtype=dtype, **kwargs)  # type: ignore[arg-type]


def overwrite(path: Path, name: str, raw: bytes, offset: int = 0) -> None:
    """Put ``raw`` into tensor ``name`` of the file at ``path``, ``offset`` bytes into its data."""
    header = read_header(path)
    info = header.tensors[name]
    assert offset + len(raw) <= info.nbytes
    with open(path, "r+b") as handle:
        handle.seek(header.data_start + info.begin + offset)
        handle.write(raw)


def zero(path: Path, names: list[str]) -> None:
    header = read_header(path)
    with open(path, "r+b") as handle:
        for name in names:
            info = header.tensors[name]
            handle.seek(header.data_start + info.begin)
            handle.write(bytes(info.nbytes))


def test_a_clean_file_passes(tmp_path: Path) -> None:
    path = small_sample(tmp_path / "clean.safetensors")
    report = verify_file(path)
    assert report.ok, report.problems
    header = read_header(path)
    assert report.bytes_scanned == header.file_size - header.data_start
    assert report.tensors == len(header.tensors)
    assert report.family == "custom distilled SDXL"
    assert set(report.dtypes) == {"UNet", "CLIP-L", "OpenCLIP-bigG", "VAE"}


_SPECIALS = {  # (NaN, +Inf) bit patterns
    "F16": (np.array([0x7E00, 0x7C00], "<u2"),),
    "BF16": (np.array([0x7FC0, 0x7F80], "<u2"),),
    "F32": (np.array([0x7FC00000, 0x7F800000], "<u4"),),
}


@pytest.mark.parametrize("dtype", sorted(_SPECIALS))
def test_nan_and_inf_are_found_in_every_dtype(tmp_path: Path, dtype: str) -> None:
    path = small_sample(tmp_path / "nan.safetensors", dtype)
    target = LDM_UNET_PREFIX + "output_blocks.2.1.transformer_blocks.1.attn1.to_q.weight"
    overwrite(path, target, _SPECIALS[dtype][0].tobytes(), offset=64)
    report = verify_file(path)
    assert not report.ok
    assert report.nonfinite == {target: {"nan": 1, "inf": 1}}
    assert any(target in p and "1 NaN, 1 Inf" in p for p in report.problems)


def test_chunk_boundaries_do_not_hide_values(tmp_path: Path) -> None:
    values = np.ones(1000, "<f4")
    values[15], values[-1] = np.inf, np.nan  # the end of the first 64-byte chunk, the very last value
    path = write_safetensors(tmp_path / "edge.safetensors", [TensorSpec("x", "F32", (1000,))])
    overwrite(path, "x", values.tobytes())
    header = read_header(path)
    stats = TensorStats()
    with TensorReader(header, chunk_bytes=64) as reader:
        sizes = []
        for chunk in reader.chunks(header.tensors["x"]):
            scan_chunk(chunk, "F32", stats)
            sizes.append(len(chunk))
    assert sizes == [64] * 62 + [32]
    assert (stats.nan, stats.inf, stats.nonzero) == (1, 1, True)


def test_holes_are_not_read(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "hole.safetensors", [TensorSpec("x", "F16", (64 << 20,))])  # 128 MB hole
    header = read_header(path)
    with TensorReader(header) as reader:
        chunks = list(reader.chunks(header.tensors["x"]))
    holes = sum(c for c in chunks if isinstance(c, int))
    if not holes:
        pytest.skip("this file system does not report holes (SEEK_DATA)")
    assert holes >= (128 - 8) << 20  # only the chunk that shares a page with the header is read
    assert sum(c if isinstance(c, int) else len(c) for c in chunks) == 128 << 20


# -- the bit-level scan against numpy / torch -----------------------------------------------------


def _stats(raw: bytes | int, dtype: str) -> TensorStats:
    stats = TensorStats()
    scan_chunk(raw if isinstance(raw, int) else memoryview(raw), dtype, stats)
    return stats


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=64))
def test_scan_f16_and_bf16_match_the_libraries(bits: list[int]) -> None:
    raw = np.array(bits, "<u2").tobytes()
    f16 = np.frombuffer(raw, "<f2")
    stats = _stats(raw, "F16")
    assert (stats.nan, stats.inf) == (int(np.isnan(f16).sum()), int(np.isinf(f16).sum()))
    assert stats.nonzero == bool(np.any(f16 != 0) or np.isnan(f16).any())
    bf16 = torch.frombuffer(bytearray(raw), dtype=torch.bfloat16)
    stats = _stats(raw, "BF16")
    assert (stats.nan, stats.inf) == (int(bf16.isnan().sum()), int(bf16.isinf().sum()))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 0xFFFFFFFF), min_size=1, max_size=32))
def test_scan_f32_and_f64_match_numpy(bits: list[int]) -> None:
    raw = np.array(bits, "<u4").tobytes()
    values = np.frombuffer(raw, "<f4")
    stats = _stats(raw, "F32")
    assert (stats.nan, stats.inf) == (int(np.isnan(values).sum()), int(np.isinf(values).sum()))
    if len(raw) % 8 == 0:
        values = np.frombuffer(raw, "<f8")
        stats = _stats(raw, "F64")
        assert (stats.nan, stats.inf) == (int(np.isnan(values).sum()), int(np.isinf(values).sum()))


def test_scan_fp8_and_integers() -> None:
    e5m2 = bytes([0x7C, 0xFC, 0x7D, 0x00, 0x80, 0x3C])  # +inf, -inf, NaN, +0, -0, 1.0
    assert (_stats(e5m2, "F8_E5M2").nan, _stats(e5m2, "F8_E5M2").inf) == (1, 2)
    e4m3 = bytes([0x7F, 0xFF, 0x7E, 0x00])  # NaN, NaN, 448 (no infinities in the fn variant)
    assert (_stats(e4m3, "F8_E4M3").nan, _stats(e4m3, "F8_E4M3").inf) == (2, 0)
    assert not _stats(bytes([0x00, 0x80]), "F8_E4M3").nonzero  # ±0
    assert not _stats(np.array([0.0, -0.0], "<f4").tobytes(), "F32").nonzero
    assert _stats(np.array([0, 5], "<i8").tobytes(), "I64").nonzero
    assert not _stats(bytes(16), "I64").nonzero
    assert not _stats(4096, "F16").nonzero  # a hole


# -- zeros, dtypes, layout ------------------------------------------------------------------------


def test_zero_vae_decoder_is_the_grey_image(tmp_path: Path) -> None:
    path = small_sample(tmp_path / "grey.safetensors")
    decoder = [n for n in read_header(path).tensors if n.startswith(VAE_PREFIX + "decoder.")]
    zero(path, decoder)
    report = verify_file(path)
    assert any("uniform grey" in p for p in report.problems)
    assert any(p.startswith("VAE:") and "all-zero blocks" in p for p in report.problems)
    assert VAE_PREFIX + "decoder.up.0.block.1" in report.zero_blocks
    assert not any(b.startswith(VAE_PREFIX + "encoder.") for b in report.zero_blocks)


def test_an_all_zero_unet_block_is_named(tmp_path: Path) -> None:
    path = small_sample(tmp_path / "hole.safetensors")
    block = "output_blocks.1.1.transformer_blocks.1"
    zero(path, [n for n in read_header(path).tensors if n.startswith(f"{LDM_UNET_PREFIX}{block}.")])
    report = verify_file(path)
    assert report.zero_blocks == [LDM_UNET_PREFIX + block]
    assert report.problems == [f"UNet: 1 all-zero blocks: {LDM_UNET_PREFIX}{block}"]


def test_a_sparse_full_size_file_is_all_zeros_and_fast(tmp_path: Path) -> None:
    path = write_sample(tmp_path / "ssd1b.safetensors", "ssd-1b")  # 4.5 GB of hole
    started = time.perf_counter()
    report = verify_file(path)
    assert time.perf_counter() - started < 30  # holes are skipped, not read
    assert report.family == "SSD-1B"
    header = read_header(path)
    assert report.bytes_scanned == header.file_size - header.data_start
    for part in ("UNet", "CLIP-L", "OpenCLIP-bigG", "VAE"):
        assert any(p.startswith(f"the whole {part} is zeros") for p in report.problems), part


def _write_with_dtypes(path: Path, dtype_of: dict[str, str]) -> Path:
    shapes = sample_shapes("custom", layout=VEGA)
    specs = [TensorSpec(name, dtype_of.get(name, dtype_of.get("*", "F16")), shape) for name, shape in shapes.items()]
    return write_safetensors(path, specs, sparse=False)


def test_mixed_dtypes_inside_a_component_are_a_problem(tmp_path: Path) -> None:
    odd = LDM_UNET_PREFIX + "middle_block.0.in_layers.2.weight"
    report = verify_file(_write_with_dtypes(tmp_path / "mixed.safetensors", {odd: "F32"}))
    assert report.problems == [f"UNet mixes floating dtypes: {report.dtypes['UNet']['F16']} F16, 1 F32"]


def test_a_vae_in_another_dtype_is_only_a_note(tmp_path: Path) -> None:
    shapes = sample_shapes("custom", layout=VEGA)
    vae = {name: "F32" for name in shapes if name.startswith(VAE_PREFIX)}
    report = verify_file(_write_with_dtypes(tmp_path / "vae32.safetensors", vae))
    assert report.ok and report.notes == ["components are stored in different dtypes: F16, F32"]


def test_layout_problems_are_reported(tmp_path: Path) -> None:
    shapes = sample_shapes("custom", layout=VEGA)
    block = LDM_UNET_PREFIX + "input_blocks.7.1."  # depth 2
    gone = [n for n in shapes if n.startswith(block + "transformer_blocks.0.")]  # a gap below block 1
    for name in (*gone, VAE_PREFIX + "decoder.conv_out.bias"):
        del shapes[name]
    path = write_safetensors(
        tmp_path / "gaps.safetensors", [TensorSpec(n, "F16", s) for n, s in shapes.items()], sparse=False
    )
    problems = verify_file(path).problems
    assert any(
        p.startswith("UNet layout: missing UNet tensors: input_blocks.7.1.transformer_blocks.0") for p in problems
    )
    assert any(p.startswith("VAE: missing tensors: decoder.conv_out") for p in problems)


def test_text_encoders_that_do_not_fit(tmp_path: Path) -> None:
    narrow = replace(VEGA, context_dim=48)  # the sample's text encoders give 16 + 16 = 32
    shapes = {k: v for k, v in sample_shapes("custom", layout=VEGA).items() if not k.startswith(LDM_UNET_PREFIX)}
    shapes.update(sample_shapes("custom", layout=narrow, text_encoders=False, with_vae=False))
    path = tmp_path / "misfit.safetensors"
    write_safetensors(path, [TensorSpec(n, "F16", s) for n, s in shapes.items()], sparse=False)
    problems = verify_file(path).problems
    assert problems == ["text encoders give CLIP-L 16 + OpenCLIP 16 = 32 wide tokens, but the UNet cross-attends to 48"]


def test_not_sdxl_and_unreadable_stop_early(tmp_path: Path) -> None:
    vae = write_safetensors(tmp_path / "vae.safetensors", [TensorSpec("decoder.conv_in.weight", "F16", (4, 4, 3, 3))])
    report = verify_file(vae)
    assert report.error["type"] == "NotSdxlFamily" and str(vae) in report.error["message"]
    assert report.bytes_scanned == 0
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\x10\x00")
    report = verify_file(short)
    assert report.error["type"] == "CheckpointError" and "too short" in report.error["message"]


# -- command line, progress, memory ---------------------------------------------------------------


def test_cli_exit_status_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clean = small_sample(tmp_path / "clean.safetensors")
    assert main(["verify", str(clean)]) == 0
    assert ": OK (" in capsys.readouterr().out
    broken = small_sample(tmp_path / "broken.safetensors", seed=1)
    overwrite(broken, LDM_UNET_PREFIX + "out.2.weight", np.array([0x7E00], "<u2").tobytes())
    assert main(["verify", "--json", str(clean), str(broken)]) == 1
    document = json.loads(capsys.readouterr().out)
    assert [f["ok"] for f in document["files"]] == [True, False]
    assert document["files"][1]["nonfinite"] == {LDM_UNET_PREFIX + "out.2.weight": {"nan": 1, "inf": 0}}


def test_diffusers_folder_is_checked_part_by_part(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_diffusers_pipeline(tmp_path / "pipe", "koala-700m", layout=reduced_layout("koala-700m"), sparse=False)
    assert main(["verify", str(root)]) == 0, capsys.readouterr().out
    overwrite(
        root / "text_encoder_2" / "model.safetensors", "text_projection.weight", np.array([0x7C00], "<u2").tobytes()
    )
    assert main(["verify", str(root)]) == 1
    out = capsys.readouterr().out
    assert "text_encoder_2/model.safetensors: 1 tensors hold NaN/Inf: text_projection.weight (0 NaN, 1 Inf)" in out


def test_progress_bar_only_on_a_terminal(tmp_path: Path) -> None:
    class Sink:
        def __init__(self, tty: bool) -> None:
            self.tty, self.text = tty, ""

        def isatty(self) -> bool:
            return self.tty

        def write(self, text: str) -> None:
            self.text += text

        def flush(self) -> None:
            pass

    for tty in (True, False):
        sink = Sink(tty)
        bar = Progress(100, "verify x", stream=sink)  # type: ignore[arg-type]
        bar.advance(100)
        bar.close()
        assert ("100%" in sink.text) is tty and ("verify x" in sink.text) is tty

    path = small_sample(tmp_path / "bar.safetensors")
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "extensions_ssd1b", "verify", str(path)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=follower, text=True,
    )  # fmt: skip
    os.close(follower)
    out, _ = process.communicate(timeout=120)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    assert process.returncode == 0 and ": OK" in out
    assert b"verify bar.safetensors" in seen and b"100%" in seen


# ru_maxrss survives fork and exec, so a child of pytest (hundreds of MB with torch) would report
# pytest's size: a small python in between starts the command line and reads its children's peak.
PEAK_RSS = """
import resource, subprocess, sys
code = subprocess.run([sys.executable, "-m", "extensions_ssd1b", *sys.argv[1:]]).returncode
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, code, file=sys.stderr)
"""


def peak_rss(*argv: str, timeout: float = 300) -> tuple[int, int, str]:
    """Run the command line in a fresh process; its peak RSS in bytes, exit status and stdout."""
    result = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, *argv], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    rss, code = result.stderr.strip().splitlines()[-1].split()
    return int(rss), int(code), result.stdout


def test_memory_stays_bounded_whatever_the_file_size(tmp_path: Path) -> None:
    wide = replace(FAMILIES_BY_KEY["segmind-vega"].layout, model_channels=128)  # ~120 M parameters
    shapes = sample_shapes("custom", "ldm-unet", layout=wide)
    path = write_safetensors(tmp_path / "wide.safetensors", [TensorSpec(n, "F16", s) for n, s in shapes.items()])
    header = read_header(path)
    one = np.full(1 << 22, 0x3C00, "<u2").tobytes()  # fp16 1.0: real bytes, no hole
    with open(path, "r+b") as handle:
        handle.seek(header.data_start)
        remaining = header.file_size - header.data_start
        while remaining:
            n = min(remaining, len(one))
            handle.write(one[:n])
            remaining -= n
    size = header.file_size
    assert size > 200e6
    rss, code, out = peak_rss("verify", "--no-progress", str(path))
    assert code == 0, out
    assert rss < size / 2, f"peak RSS {rss / 1e6:.0f} MB for a {size / 1e6:.0f} MB file"


def test_progress_without_tqdm_draws_its_own_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bare Python (no tqdm) still gets a one-line bar on a terminal."""
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm now raises ImportError

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    sink = Terminal()
    bar = Progress(100, "verify x", stream=sink)
    bar.advance(100)
    bar.close()
    assert sink.getvalue().startswith("\rverify x [") and "100%" in sink.getvalue()

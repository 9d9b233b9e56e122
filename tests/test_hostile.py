"""Hostile and broken input: a generated corpus of bad files through `inspect` and `verify`.

Every entry must come back as one typed error that names the file and the reason: non-zero exit,
no traceback, no hang, bounded memory, and nothing in the corpus written, moved or modified.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import signal
import stat
import struct
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from extensions_ssd1b.arch.components import CLIP_G_BASE_PREFIX
from extensions_ssd1b.arch.detect import LDM_UNET_PREFIX, VAE_PREFIX
from extensions_ssd1b.io.header import MAX_HEADER_BYTES
from extensions_ssd1b.io.write import TensorSpec
from extensions_ssd1b.tools.cli import main
from extensions_ssd1b.tools.samples import reduced_layout, sample_shapes, write_safetensors, write_sample

REPO = Path(__file__).resolve().parents[1]
BROKEN, NOT_SDXL, REFUSED, UNSUPPORTED = "CheckpointError", "NotSdxlFamily", "LayoutError", "Unsupported"


# -- building blocks ------------------------------------------------------------------------------


def safetensors_bytes(header: dict | str | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else (header if isinstance(header, str) else json.dumps(header)).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def tensor(dtype: object = "F16", shape: object = (2,), offsets: object = (0, 4)) -> dict:
    return {"dtype": dtype, "shape": list(shape) if isinstance(shape, tuple) else shape, "data_offsets": list(offsets)}


def one(entry: dict, data: bytes = bytes(4)) -> bytes:
    return safetensors_bytes({"w": entry}, data)


def specs(shapes: dict[str, tuple[int, ...]], dtype: str = "F16") -> list[TensorSpec]:
    return [TensorSpec(n, dtype, s) for n, s in shapes.items()]


def small_ssd1b() -> dict[str, tuple[int, ...]]:
    return sample_shapes("custom", layout=reduced_layout("ssd-1b"))


def renumbered_input_blocks(shapes: dict[str, tuple[int, ...]], mapping: dict[int, int]) -> dict:
    pattern = re.compile(r"^input_blocks\.(\d+)\.")
    return {pattern.sub(lambda m: f"input_blocks.{mapping.get(int(m.group(1)), int(m.group(1)))}.", k): v
            for k, v in shapes.items()}  # fmt: skip


Maker = Callable[[Path], None]


def raw(content: bytes) -> Maker:
    return lambda path: path.write_bytes(content)


def tensors_file(shapes: dict[str, tuple[int, ...]], sparse: bool = True) -> Maker:
    return lambda path: write_safetensors(path, specs(shapes), sparse=sparse) and None


def _truncated_sample(path: Path) -> None:
    write_sample(path, "custom", layout=reduced_layout("segmind-vega"), sparse=False)
    os.truncate(path, path.stat().st_size // 2)


def _header_cut(path: Path) -> None:
    write_sample(path, "ssd-1b")  # full size, sparse
    os.truncate(path, 1000)


def _big_header_length(path: Path) -> None:
    with open(path, "wb") as handle:  # a 48 MB "header" of garbage: read, rejected, not kept
        handle.write(struct.pack("<Q", 48 << 20))
        handle.write(b"\xff" * (48 << 20))


def _without(shapes: dict, *prefixes: str) -> dict:
    return {k: v for k, v in shapes.items() if not k.startswith(prefixes)}


def _with(shapes: dict, **changes: tuple[int, ...]) -> dict:
    return {**shapes, **{k.replace("__", "."): v for k, v in changes.items()}}


def _refiner_unet_with_base_text_encoders() -> dict:
    refiner = sample_shapes("custom", layout=reduced_layout("sdxl-refiner"), text_encoders=False)
    base = small_ssd1b()
    return {**refiner, **{k: v for k, v in base.items() if k.startswith("conditioner.")}}


def _ldm_unet(family: str) -> dict:
    return sample_shapes("custom", "ldm-unet", layout=reduced_layout(family))


def _diffusers_unet(family: str) -> dict:
    return sample_shapes("custom", "diffusers-unet", layout=reduced_layout(family))


P = LDM_UNET_PREFIX
SD15_UNET = {
    P + "input_blocks.0.0.weight": (320, 4, 3, 3),
    P + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
    "cond_stage_model.transformer.text_model.final_layer_norm.weight": (768,),
    "first_stage_model.decoder.conv_in.weight": (512, 4, 3, 3),
}
SD2_UNET = {
    "input_blocks.0.0.weight": (320, 4, 3, 3),
    "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
}
VAE_LDM = {"encoder.conv_in.weight": (128, 3, 3, 3), "decoder.conv_in.weight": (512, 4, 3, 3)}
VAE_DIFFUSERS = {
    "encoder.down_blocks.0.resnets.0.conv1.weight": (128, 128, 3, 3),
    "decoder.conv_in.weight": (512, 4, 3, 3),
}


def corpus_makers() -> dict[str, tuple[Maker | str, set[str]]]:
    """name → (how to make it, the error types acceptable for it); a str maker is a special kind."""
    ssd = small_ssd1b()
    ok_entry = tensor()
    return {
        # -- the safetensors container ------------------------------------------------------
        "empty.safetensors": (raw(b""), {BROKEN}),
        "seven-bytes.safetensors": (raw(b"\x00" * 7), {BROKEN}),
        "length-beyond-file.safetensors": (raw(safetensors_bytes(b"{}", length=1000)), {BROKEN}),
        "length-terabytes.safetensors": (raw(safetensors_bytes(b"{}", length=1 << 41)), {BROKEN}),
        "length-max-u64.safetensors": (raw(safetensors_bytes(b"{}", length=(1 << 64) - 1)), {BROKEN}),
        "length-over-cap.safetensors": (raw(safetensors_bytes(b"{}", length=MAX_HEADER_BYTES + 1)), {BROKEN}),
        "header-48mb-garbage.safetensors": (_big_header_length, {BROKEN}),
        "invalid-utf8.safetensors": (raw(safetensors_bytes(b'{"\xff\xfe": 1}')), {BROKEN}),
        "invalid-json.safetensors": (raw(safetensors_bytes(b"{")), {BROKEN}),
        "json-trailing-garbage.safetensors": (raw(safetensors_bytes(b"{}xyz")), {BROKEN}),
        "json-nul-padding.safetensors": (raw(safetensors_bytes(b"{}\x00\x00\x00\x00\x00\x00")), {BROKEN}),
        "json-array.safetensors": (raw(safetensors_bytes(b"[]")), {BROKEN}),
        "json-string.safetensors": (raw(safetensors_bytes(b'"model"')), {BROKEN}),
        "json-number.safetensors": (raw(safetensors_bytes(b"42")), {BROKEN}),
        "duplicate-tensor.safetensors": (
            raw(safetensors_bytes(f'{{"a": {json.dumps(ok_entry)}, "a": {json.dumps(ok_entry)}}}', bytes(4))),
            {BROKEN},
        ),
        "duplicate-field.safetensors": (
            raw(
                safetensors_bytes(
                    '{"a": {"dtype": "F16", "dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}', bytes(4)
                )
            ),
            {BROKEN},
        ),
        "unknown-dtype.safetensors": (raw(one(tensor("F12"))), {BROKEN}),
        "lowercase-dtype.safetensors": (raw(one(tensor("f16"))), {BROKEN}),
        "dtype-missing.safetensors": (raw(one({"shape": [2], "data_offsets": [0, 4]})), {BROKEN}),
        "dtype-number.safetensors": (raw(one(tensor(16))), {BROKEN}),
        "shape-negative.safetensors": (raw(one(tensor(shape=[-2]))), {BROKEN}),
        "shape-string.safetensors": (raw(one(tensor(shape="2"))), {BROKEN}),
        "shape-float.safetensors": (raw(one(tensor(shape=[2.0]))), {BROKEN}),
        "shape-bool.safetensors": (raw(one(tensor(shape=[True, True]))), {BROKEN}),
        "shape-missing.safetensors": (raw(one({"dtype": "F16", "data_offsets": [0, 4]})), {BROKEN}),
        "shape-astronomic.safetensors": (raw(one(tensor(shape=[1 << 40, 1 << 40]))), {BROKEN}),
        "offsets-reversed.safetensors": (raw(one(tensor(offsets=(4, 0)))), {BROKEN}),
        "offsets-beyond-file.safetensors": (raw(one(tensor(shape=(200,), offsets=(0, 400)))), {BROKEN}),
        "offsets-negative.safetensors": (raw(one(tensor(offsets=(-4, 0)))), {BROKEN}),
        "offsets-three.safetensors": (raw(one(tensor(offsets=(0, 2, 4)))), {BROKEN}),
        "offsets-strings.safetensors": (raw(one(tensor(offsets=("0", "4")))), {BROKEN}),
        "overlapping.safetensors": (
            raw(safetensors_bytes({"a": tensor(shape=(4,), offsets=(0, 8)), "b": tensor(offsets=(4, 8))}, bytes(8))),
            {BROKEN},
        ),
        "bytes-not-shape.safetensors": (raw(one(tensor(shape=(3,)))), {BROKEN}),
        "entry-not-object.safetensors": (raw(safetensors_bytes({"a": 5})), {BROKEN}),
        "metadata-list.safetensors": (raw(safetensors_bytes({"__metadata__": [1]})), {BROKEN}),
        "metadata-number-value.safetensors": (raw(safetensors_bytes({"__metadata__": {"a": 1}})), {BROKEN}),
        "truncated-data.safetensors": (_truncated_sample, {BROKEN}),
        "truncated-header.safetensors": (_header_cut, {BROKEN}),
        "zip-pickle-renamed.safetensors": (raw(b"PK\x03\x04" + bytes(200)), {BROKEN}),
        "png-renamed.safetensors": (raw(b"\x89PNG\r\n\x1a\n" + bytes(200)), {BROKEN}),
        "text-renamed.safetensors": (raw(b"this is not a model, it is a text file\n" * 4), {BROKEN}),
        "empty-folder.safetensors": ("directory", {BROKEN}),
        "symlink-loop.safetensors": ("loop", {BROKEN}),
        "dangling-symlink.safetensors": ("dangling", {BROKEN}),
        "named-pipe.safetensors": ("fifo", {BROKEN}),
        "dev-zero.safetensors": ("devzero", {BROKEN}),
        "model.ckpt": (raw(b"\x80\x02}q\x00(X\x05\x00\x00\x00stateq\x01}q\x02u."), {UNSUPPORTED}),
        # -- readable, but not an SDXL-family checkpoint -----------------------------------
        "lora-kohya.safetensors": (
            tensors_file({"lora_unet_down_blocks_1_attentions_0_proj_in.lora_up.weight": (640, 4)}),
            {NOT_SDXL},
        ),
        "lora-peft.safetensors": (
            tensors_file({"unet.down_blocks.1.attentions.0.proj_in.lora_A.weight": (4, 640)}),
            {NOT_SDXL},
        ),
        "lycoris.safetensors": (tensors_file({"lora_unet_input_blocks_4_1_proj_in.hada_w1_a": (640, 4)}), {NOT_SDXL}),
        "vae-ldm.safetensors": (tensors_file(VAE_LDM), {NOT_SDXL}),
        "vae-diffusers.safetensors": (tensors_file(VAE_DIFFUSERS), {NOT_SDXL}),
        "vae-prefixed-only.safetensors": (
            tensors_file({VAE_PREFIX + "decoder.conv_in.weight": (512, 4, 3, 3)}),
            {NOT_SDXL},
        ),
        "taesd.safetensors": (tensors_file({"decoder.layers.0.weight": (64, 4, 3, 3)}), {NOT_SDXL}),
        "embedding-sdxl.safetensors": (tensors_file({"clip_l": (2, 768), "clip_g": (2, 1280)}), {NOT_SDXL}),
        "embedding-sd15.safetensors": (tensors_file({"emb_params": (2, 768)}), {NOT_SDXL}),
        "sd15.safetensors": (tensors_file(SD15_UNET), {NOT_SDXL}),
        "sd2-unet.safetensors": (tensors_file(SD2_UNET), {NOT_SDXL}),
        "diffusers-sd15-unet.safetensors": (
            tensors_file({"conv_in.weight": (320, 4, 3, 3), "down_blocks.0.resnets.0.conv1.weight": (320, 320, 3, 3)}),
            {NOT_SDXL},
        ),
        "text-encoders-only.safetensors": (
            tensors_file({k: v for k, v in ssd.items() if k.startswith("conditioner.")}),
            {NOT_SDXL},
        ),
        "unknown-model.safetensors": (tensors_file({"backbone.layer1.weight": (8, 8)}), {NOT_SDXL}),
        "no-tensors.safetensors": (raw(safetensors_bytes(b"{}")), {NOT_SDXL}),
        "metadata-only.safetensors": (raw(safetensors_bytes({"__metadata__": {"modelspec.title": "x"}})), {NOT_SDXL}),
        # -- an SDXL-family UNet the extension refuses -------------------------------------
        "ssd1b-missing-tensor.safetensors": (
            tensors_file(_without(ssd, P + "output_blocks.3.1.proj_out.weight")),
            {REFUSED},
        ),
        "ssd1b-wrong-shape.safetensors": (
            tensors_file(_with(ssd, **{P.replace(".", "__") + "out__2__weight": (4, 64, 1, 1)})),
            {REFUSED},
        ),
        "ssd1b-transformer-without-resblock.safetensors": (
            tensors_file(_without(ssd, P + "input_blocks.4.0.")),
            {REFUSED},
        ),
        "ssd1b-vae-missing-decoder-conv.safetensors": (
            tensors_file(_without(ssd, VAE_PREFIX + "decoder.conv_out.")),
            {REFUSED},
        ),
        "ssd1b-bigg-missing-layer.safetensors": (
            tensors_file(_without(ssd, CLIP_G_BASE_PREFIX + "transformer.resblocks.0.")),
            {REFUSED},
        ),
        "koala-gapped-like-diffusers-script.safetensors": (
            tensors_file(renumbered_input_blocks(_ldm_unet("koala-700m"), {2: 3, 3: 4, 4: 6, 5: 7})),
            {REFUSED},
        ),
        "koala-extra-tensor.safetensors": (
            tensors_file({**_ldm_unet("koala-1b"), "input_blocks.2.0.in_layers.0.weight": (64,)}),
            {REFUSED},
        ),
        "diffusers-sdxl-missing-up-block.safetensors": (
            tensors_file(_without(_diffusers_unet("sdxl"), "up_blocks.2.")),
            {REFUSED},
        ),
        "sdxl-refiner-with-base-text-encoders.safetensors": (
            tensors_file(_refiner_unet_with_base_text_encoders()),
            {REFUSED},
        ),
        "conv-in-not-4d.safetensors": (
            tensors_file(_with(_ldm_unet("segmind-vega"), input_blocks__0__0__weight=(64, 4))),
            {REFUSED},
        ),
    }


def build_corpus(root: Path) -> dict[Path, set[str]]:
    corpus: dict[Path, set[str]] = {}
    for name, (maker, expected) in corpus_makers().items():
        path = root / name
        if maker == "directory":
            path.mkdir()
        elif maker == "loop":
            path.symlink_to(path.name)
        elif maker == "dangling":
            path.symlink_to("nowhere.safetensors")
        elif maker == "fifo":
            os.mkfifo(path)
        elif maker == "devzero":
            path.symlink_to("/dev/zero")
        else:
            maker(path)  # type: ignore[operator]
        corpus[path] = expected
    return corpus


def snapshot(root: Path) -> dict[str, tuple]:
    """mtime, size, mode and content hash of everything under root, without following links or opening pipes."""
    state: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            info = os.lstat(path)
            digest = None
            if stat.S_ISREG(info.st_mode):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(info.st_mode):
                digest = os.readlink(path)
            state[str(path)] = (info.st_mode, info.st_size, info.st_mtime_ns, digest)
    return state


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[Path, set[str]]]]:
    root = tmp_path_factory.mktemp("hostile")
    files = build_corpus(root)
    before = snapshot(root)
    yield root, files
    assert snapshot(root) == before, "the corpus was modified"


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"no answer in {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_the_corpus_is_large_and_varied(corpus: tuple[Path, dict[Path, set[str]]]) -> None:
    _, files = corpus
    assert len(files) >= 50
    kinds = {t for expected in files.values() for t in expected}
    assert kinds == {BROKEN, NOT_SDXL, REFUSED, UNSUPPORTED}


def _check(command: str, path: Path, expected: set[str]) -> None:
    out, err = io.StringIO(), io.StringIO()
    with time_limit(30):
        code = main([command, "--json", str(path)], stdout=out, stderr=err)
    assert code == 1, f"{command} {path.name}: exit {code}"
    assert "internal error" not in err.getvalue() and "Traceback" not in err.getvalue()
    (entry,) = json.loads(out.getvalue())["files"]
    assert entry["ok"] is False
    error = entry["error"]
    assert error is not None, f"{command} {path.name}: no typed error ({entry.get('problems')})"
    assert error["type"] in expected, f"{command} {path.name}: {error['type']}: {error['message']}"
    assert error["message"].startswith(str(path)), error["message"]
    reason = error["message"][len(str(path)) :].strip(": ")
    assert len(reason) > 10, f"{path.name}: no reason given"
    # the human form says the same on stderr, in one line per file
    out, err = io.StringIO(), io.StringIO()
    with time_limit(30):
        assert (
            main([command, str(path), *(["--no-progress"] if command == "verify" else [])], stdout=out, stderr=err) == 1
        )
    assert err.getvalue().startswith(f"error: {path}") and err.getvalue().count("\n") == 1


@pytest.mark.parametrize("command", ["inspect", "verify"])
def test_every_bad_file_gets_a_typed_error(corpus: tuple[Path, dict[Path, set[str]]], command: str) -> None:
    _, files = corpus
    failures = []
    for path, expected in files.items():
        try:
            _check(command, path, expected)
        except AssertionError as failure:
            failures.append(str(failure).splitlines()[0])
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("command", ["inspect", "verify"])
def test_the_whole_corpus_in_one_process(corpus: tuple[Path, dict[Path, set[str]]], command: str) -> None:
    """A real process over everything at once: a time limit (no hang), bounded memory, one entry per file."""
    from test_verify import peak_rss

    _, files = corpus
    argv = [command, "--json", *map(str, files)]
    rss, code, out = peak_rss(*argv, timeout=120)
    assert code == 1
    entries = json.loads(out)["files"]
    assert [e["path"] for e in entries] == [str(p) for p in files]
    assert all(not e["ok"] and e["error"]["type"] in files[Path(e["path"])] for e in entries)
    assert rss < 300e6, f"peak RSS {rss / 1e6:.0f} MB"  # the 48 MB bogus header is the largest read


def test_a_folder_of_bad_files(corpus: tuple[Path, dict[Path, set[str]]]) -> None:
    root, files = corpus
    out = io.StringIO()
    with time_limit(60):
        assert main(["inspect", "--json", str(root)], stdout=out, stderr=io.StringIO()) == 1
    entries = json.loads(out.getvalue())["files"]
    assert all(not e["ok"] for e in entries)
    assert len(entries) >= len(files) - 1  # the empty folder inside is walked, not listed


@pytest.mark.skipif(not hasattr(os, "seteuid"), reason="needs POSIX user ids")
def test_an_unreadable_file() -> None:
    """chmod 000 does not stop root, so as root the check runs with the effective uid of nobody."""
    folder = Path(tempfile.mkdtemp(prefix="ssd1b-unreadable-", dir="/tmp"))
    try:
        folder.chmod(0o755)
        path = folder / "secret.safetensors"
        write_sample(path, "segmind-vega")
        path.chmod(0)
        switched = os.geteuid() == 0
        if switched:
            os.seteuid(65534)  # nobody; the real uid stays root, so this can be undone
        try:
            if os.access(path, os.R_OK, effective_ids=True):
                pytest.skip("cannot make a file unreadable here")
            for command in ("inspect", "verify"):
                out = io.StringIO()
                with time_limit(30):
                    assert main([command, "--json", str(path)], stdout=out, stderr=io.StringIO()) == 1
                (entry,) = json.loads(out.getvalue())["files"]
                assert entry["error"]["type"] == BROKEN and "permission denied" in entry["error"]["message"]
        finally:
            if switched:
                os.seteuid(0)
    finally:
        for child in folder.iterdir():
            child.unlink()
        folder.rmdir()


def test_a_large_bogus_header_length_is_not_allocated(tmp_path: Path) -> None:
    """A header length just under the cap with a file that is that big: read once, refused, memory freed."""
    from test_verify import peak_rss

    path = tmp_path / "big.safetensors"
    _big_header_length(path)
    rss, code, _ = peak_rss("inspect", "--json", str(path), str(path), str(path))
    assert code == 1
    assert rss < 48e6 * 3, f"{rss / 1e6:.0f} MB: headers kept after refusal?"
    assert math.isfinite(rss)

"""Issue 4 in the host: settings section, VAE resolution, NaN-safe decode/encode and sampling.

Tier 1 runs the extension in the stand-in webui (``tests/fakewebui``, v1.6.0 and v1.10.1 unless a
test says otherwise).  Half-precision hosts start without ``--no-half``, as on a GPU: the stand-in
runs fp16 with the CPU's autocast.  NaN/Inf are made on demand by forward hooks that corrupt a
module's output in fp16 (or while attention is not upcast), keeping the first element finite, so
A1111's own checks (all-NaN up to v1.9, first element from v1.10) let them through.

The webui tier (``@pytest.mark.webui``, real A1111 under ``SD_WEBUI_ROOT``) is at the end.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import math
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fakewebui import install_fake_webui, ssd1b_shaped, without_vae
from fakewebui.install import real_webui_root

from extensions_ssd1b.arch.families import FAMILIES_BY_KEY
from extensions_ssd1b.core import infotext, settings
from extensions_ssd1b.core.settings import SETTINGS
from extensions_ssd1b.host import checkpoints, safety, sampling
from extensions_ssd1b.host import vae as host_vae
from extensions_ssd1b.vae import nan as vae_nan
from extensions_ssd1b.vae.choice import FP16_FIX_FILE

REPO_ROOT = Path(__file__).resolve().parents[1]
HALF_PRECISION = ("--use-cpu", "all", "--no-download-sd-model", "--do-not-download-clip")
VAE_NAME = "sdxl_vae.safetensors"

stand_in_only = pytest.mark.skipif(real_webui_root() is not None, reason="drives the stand-in webui")


# -- helpers --------------------------------------------------------------------------------------


def start(factory: Callable[..., Any], version: str, *, half: bool = False) -> Any:
    return factory(version, extensions=[REPO_ROOT], cmd_args=HALF_PRECISION if half else None)


def vae_weights(fake: Any, seed: int = 0) -> dict[str, torch.Tensor]:
    return {k: v for k, v in fake.stock_sdxl_state_dict(seed).items() if k.startswith("first_stage_model.")}


def distilled(fake: Any, name: str, *, vae_seed: int | None = None, seed: int = 0) -> Path:
    """An SSD-1B-shaped checkpoint; with a baked VAE from ``vae_seed``, else none at all."""
    state_dict = without_vae(ssd1b_shaped(fake.stock_sdxl_state_dict(seed)))
    if vae_seed is not None:
        state_dict.update(vae_weights(fake, vae_seed))
    return fake.write_checkpoint(name, state_dict)


def params(result: Any) -> dict[str, str]:
    return infotext.host_parse(result.info.splitlines()[-1])


def pixels(image: Any) -> torch.Tensor:
    return torch.tensor(list(image.getdata()), dtype=torch.float32)


def corrupt(output: torch.Tensor, how: str) -> torch.Tensor:
    """NaN everywhere but the first element, one +Inf, or every element NaN."""
    output = output.clone()
    flat = output.view(-1)
    if how == "nan":
        flat[1:] = math.nan
    elif how == "inf":
        flat[flat.numel() // 2] = math.inf
    else:
        flat[:] = math.nan
    return output


@pytest.fixture
def hooks() -> Iterator[list[Any]]:
    handles: list[Any] = []
    yield handles
    for handle in handles:
        handle.remove()


def break_in_fp16(module: torch.nn.Module, how: str, calls: list[torch.dtype], handles: list[Any]) -> None:
    """``module`` overflows whenever it runs in fp16; every call's weight dtype goes into ``calls``."""

    def hook(_module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        dtype = next(module.parameters()).dtype
        calls.append(dtype)
        return corrupt(output, how) if dtype == torch.float16 else output

    handles.append(module.register_forward_hook(hook))


def logged(capsys: pytest.CaptureFixture[str]) -> str:
    out = capsys.readouterr()
    return out.out + out.err


def toasts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the web UI would show as toasts (gradio's ``Warning``, which the stand-in gradio lacks)."""
    import gradio

    shown: list[str] = []
    monkeypatch.setattr(gradio, "Warning", shown.append, raising=False)
    return shown


# -- settings --------------------------------------------------------------------------------------


@stand_in_only
@pytest.mark.parametrize("version", ["1.6.0", "1.7.0", "1.10.1"])
def test_settings_exist_at_import_with_nowebui_and_render_in_one_tab(fake_webui_factory, version: str) -> None:
    fake = fake_webui_factory(version, extensions=[REPO_ROOT], cmd_args=["--nowebui", "--api", "--no-half"])
    from modules import shared

    for setting in SETTINGS:
        info = shared.opts.data_labels[setting.key]
        assert setting.key in shared.opts.data  # what GET /sdapi/v1/options lists
        assert getattr(shared.opts, setting.key) == setting.default
        assert info.label == setting.label and setting.info in info.comment_after
        assert info.section == (settings.SECTION_ID, settings.SECTION_LABEL)
        assert getattr(info, "category_id", None) == (settings.CATEGORY_ID if fake.at_least("1.7.0") else None)
    fake.write_vae("sdxl_vae", vae_weights(fake))

    ui = fake.build_settings_ui()  # v1.6 would crash here on a 3-part section
    assert ui.tabs[f"settings_{settings.SECTION_ID}"] == settings.SECTION_LABEL
    vae = ui.component_dict[settings.VAE.key]
    assert type(vae).__name__ == "Dropdown" and vae.kwargs["choices"] == ["Automatic", "TAESD-XL", VAE_NAME]
    assert type(ui.component_dict[settings.VAE_PRECISION.key]).__name__ == "Radio"


@stand_in_only
@pytest.mark.parametrize("version", ["1.6.0", "1.10.1"])
def test_settings_round_trip_api_restart_and_infotext(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, version: str):
    chosen = {"ssd1b_vae_precision": "fp32", "ssd1b_nan_vae_decode": "Warn", "ssd1b_scope": "Every SDXL-family model"}
    with pytest.MonkeyPatch.context() as first_run:
        fake = install_fake_webui(first_run, version, tmp_path, extensions=[REPO_ROOT])
        from modules import shared

        for key, value in chosen.items():  # what POST /sdapi/v1/options does, then it saves
            assert shared.opts.set(key, value, is_api=True)
        shared.opts.save(shared.config_filename)
        assert {key: getattr(shared.opts, key) for key in chosen} == chosen

    fake = install_fake_webui(monkeypatch, version, tmp_path)  # a restart: same data dir, fresh host
    from modules import shared

    assert {key: getattr(shared.opts, key) for key in chosen} == chosen
    assert host_vae.read_settings().vae_precision is settings.Precision.FP32

    text = "a cat\nSteps: 2, Sampler: Euler, Seed: 1, SSD-1B VAE: checkpoint, SSD-1B VAE precision: bf16"
    pasted = fake.paste_infotext(text)  # v1.6's parser mangles the keys; on_infotext_pasted mends them
    module = fake.module("infotext_utils" if fake.at_least("1.8.0") else "generation_parameters_copypaste")
    # The paste button's "Override settings" pairs (OptionInfo.infotext), as the generation applies them:
    pairs = [f"{key}: {pasted[key]}" for key in (infotext.KEY_VAE, infotext.KEY_VAE_PRECISION)]
    assert module.create_override_settings_dict(pairs) == {"ssd1b_vae": "Automatic", "ssd1b_vae_precision": "bf16"}


# -- which VAE -------------------------------------------------------------------------------------


@stand_in_only
@pytest.mark.parametrize("version", ["1.6.0", "1.10.1"])
def test_checkpoint_without_vae_decodes_with_the_resolved_vae(fake_webui_factory, version: str) -> None:
    fake = start(fake_webui_factory, version)
    distilled(fake, "baked", vae_seed=3)
    distilled(fake, "no-vae")
    fake.write_vae("sdxl_vae", vae_weights(fake, 3))  # the same weights as the baked one

    assert fake.select_checkpoint("baked")
    reference = fake.txt2img().images[0]
    assert fake.select_checkpoint("no-vae")
    result = fake.txt2img()

    fields = params(result)
    assert fields[infotext.KEY_VAE] == VAE_NAME and fields["VAE"] == VAE_NAME
    assert fields[infotext.KEY_VAE_PRECISION] == "fp32"  # --no-half
    assert pixels(result.images[0]).std() > 10
    assert torch.equal(pixels(result.images[0]), pixels(reference))


@stand_in_only
@pytest.mark.parametrize("version", ["1.6.0", "1.10.1"])
def test_checkpoint_without_any_vae_stops_before_sampling(
    fake_webui_factory, monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    fake = start(fake_webui_factory, version)
    distilled(fake, "no-vae")
    shown = toasts(monkeypatch)
    from modules import script_callbacks

    steps: list[int] = []
    script_callbacks.on_cfg_denoised(lambda params: steps.append(params.sampling_step))
    assert fake.select_checkpoint("no-vae")

    with pytest.raises(safety.VaeUnavailable) as refused:
        fake.txt2img()
    message = str(refused.value)
    assert FP16_FIX_FILE in message and "taesdxl_decoder.pth" in message
    assert str(fake.vae_dir) in message and "flat gray" in message
    assert steps == []  # refused before the first step, not after a gray decode
    assert shown == [f"SSD-1B: {message}"]

    fake.write_vae("sdxl_vae", vae_weights(fake))  # the file the message asked for, then refresh
    result = fake.txt2img()  # loaded before the first decode, and named in the infotext like any VAE
    assert params(result)[infotext.KEY_VAE] == params(result)["VAE"] == VAE_NAME
    assert pixels(result.images[0]).std() > 10


@stand_in_only
def test_explicit_choices_are_honoured(fake_webui_factory) -> None:
    fake = start(fake_webui_factory, "1.10.1")
    path = distilled(fake, "no-vae")
    fake.write_vae("sdxl_vae", vae_weights(fake, 0))
    fake.write_vae("other_xl_vae", vae_weights(fake, 1))
    from modules import shared

    path.with_suffix(".json").write_text(json.dumps({"vae": "other_xl_vae.safetensors"}))  # "Preferred VAE"
    assert fake.select_checkpoint("no-vae")
    assert params(fake.txt2img())[infotext.KEY_VAE] == "other_xl_vae.safetensors"

    shared.opts.set("ssd1b_vae", VAE_NAME)  # our setting stands in for "SD VAE"
    assert params(fake.txt2img())[infotext.KEY_VAE] == VAE_NAME

    shared.opts.set("ssd1b_vae", "Automatic")
    shared.opts.set("sd_vae", "None")  # "the checkpoint's own", which has none: refused, not gray
    with pytest.raises(safety.VaeUnavailable, match="'None'"):
        fake.txt2img()


def as_stock_sdxl(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Headers of ``name`` read as SDXL base (the stand-in's test-scale widths match no real family)."""
    detect_file = checkpoints.detect_checkpoint_file

    def detect(path: Any) -> Any:
        detection = detect_file(path)
        is_it = Path(path).name == f"{name}.safetensors"
        return dataclasses.replace(detection, family=FAMILIES_BY_KEY["sdxl"]) if is_it else detection

    monkeypatch.setattr(checkpoints, "detect_checkpoint_file", detect)


@stand_in_only
def test_models_out_of_scope_keep_the_hosts_behaviour(fake_webui_factory, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = start(fake_webui_factory, "1.10.1")
    as_stock_sdxl(monkeypatch, "sdxl-no-vae")
    fake.write_checkpoint("sdxl-no-vae", without_vae(fake.stock_sdxl_state_dict()))
    fake.write_vae("sdxl_vae", vae_weights(fake))
    from modules import shared

    assert fake.select_checkpoint("sdxl-no-vae")
    result = fake.txt2img()  # SDXL itself is not distilled: the host's own (gray) result
    assert result.images[0].getextrema() == ((127, 127), (127, 127), (127, 127))
    assert infotext.KEY_VAE not in params(result)

    shared.opts.set("ssd1b_scope", settings.Scope.SDXL_FAMILY.value)  # reloads the VAE at once
    result = fake.txt2img()
    assert params(result)[infotext.KEY_VAE] == VAE_NAME and pixels(result.images[0]).std() > 10


# -- NaN-safe decode and encode --------------------------------------------------------------------


@stand_in_only
@pytest.mark.parametrize(("version", "how"), [("1.6.0", "nan"), ("1.10.1", "nan"), ("1.10.1", "inf")])
def test_vae_decode_overflow_is_redone_in_fp32_and_remembered(
    fake_webui_factory, hooks: list[Any], capsys, monkeypatch: pytest.MonkeyPatch, version: str, how: str
) -> None:
    fake = start(fake_webui_factory, version, half=True)
    shown = toasts(monkeypatch)
    distilled(fake, "no-vae")
    distilled(fake, "other", vae_seed=1)
    fake.write_vae("sdxl_vae", vae_weights(fake))
    from modules import devices, shared

    assert fake.select_checkpoint("no-vae")
    shared.opts.set("ssd1b_vae_precision", "fp32")
    reference = fake.txt2img()
    shared.opts.set("ssd1b_vae_precision", "Auto")
    calls: list[torch.dtype] = []
    break_in_fp16(shared.sd_model.first_stage_model.decoder, how, calls, hooks)

    first = fake.txt2img()
    assert calls == [torch.float16, torch.float32]
    assert torch.equal(pixels(first.images[0]), pixels(reference.images[0]))
    assert params(first)[infotext.KEY_NAN_RECOVERY] == "decode fp16->fp32"
    assert params(first)[infotext.KEY_VAE_PRECISION] == "fp16"
    assert "redone in fp32" in logged(capsys)
    assert shown == ["SSD-1B: VAE decode: NaN/Inf in fp16, redone in fp32"]

    calls.clear()
    second = fake.txt2img(seed=2)
    assert calls == [torch.float32]  # straight to the learned precision: no wasted fp16 decode
    assert params(second)[infotext.KEY_NAN_RECOVERY] == "decode fp16->fp32 remembered"
    assert len(shown) == 1  # nothing new to tell
    store = json.loads((fake.data_dir / safety.DATA_FOLDER / vae_nan.PrecisionStore.FILE_NAME).read_text())
    assert [entry["decode"] for entry in store["vaes"].values()] == ["fp32"]

    # No session-wide switch: the host's VAE dtype is as it was, and another VAE starts in fp16.
    assert devices.dtype_vae == torch.float16
    assert next(shared.sd_model.first_stage_model.parameters()).dtype == torch.float16
    assert fake.select_checkpoint("other")
    calls.clear()
    break_in_fp16(shared.sd_model.first_stage_model.decoder, how, calls, hooks)
    fake.txt2img()
    assert calls[0] == torch.float16


@stand_in_only
@pytest.mark.parametrize(("version", "policy"), [("1.6.0", "Warn"), ("1.10.1", "Warn"), ("1.10.1", "Off")])
def test_with_our_recovery_off_the_hosts_own_fp32_retry_really_runs_in_fp32(
    fake_webui_factory, hooks: list[Any], version: str, policy: str
) -> None:
    fake = start(fake_webui_factory, version, half=True)
    distilled(fake, "no-vae")
    fake.write_vae("sdxl_vae", vae_weights(fake))
    from modules import devices, shared

    assert fake.select_checkpoint("no-vae")
    shared.opts.set("ssd1b_vae_precision", "fp32")
    reference = fake.txt2img()
    shared.opts.set("ssd1b_vae_precision", "fp16")
    shared.opts.set("ssd1b_nan_vae_decode", policy)
    assert shared.opts.auto_vae_precision  # the host's "Automatically revert VAE to 32-bit floats"
    calls: list[torch.dtype] = []
    break_in_fp16(shared.sd_model.first_stage_model.decoder, "all", calls, hooks)  # all NaN: every host sees it

    result = fake.txt2img()
    assert calls == [torch.float16, torch.float32]  # ours in fp16, then the host's retry in fp32
    assert torch.equal(pixels(result.images[0]), pixels(reference.images[0]))
    assert devices.dtype_vae == torch.float32  # the host's switch, for the session, as the host does it


@stand_in_only
@pytest.mark.parametrize("version", ["1.6.0", "1.10.1"])
def test_full_live_previews_use_the_decided_precision_and_wait_for_the_main_decode(
    fake_webui_factory, hooks: list[Any], version: str
) -> None:
    fake = start(fake_webui_factory, version, half=True)
    distilled(fake, "no-vae")
    fake.write_vae("sdxl_vae", vae_weights(fake))
    from modules import devices, errors, processing, shared

    assert fake.select_checkpoint("no-vae")
    shared.opts.set("ssd1b_vae_precision", "fp32")  # an fp16 VAE decoded in fp32
    shared.opts.set("show_progress_type", "Full")
    model, state = shared.sd_model, shared.state
    latent = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)).half()
    events: list[str] = []
    break_in_fp16(model.first_stage_model.decoder, "all", [], hooks)  # an fp16 preview would be black

    def record(_module: torch.nn.Module, _inputs: Any) -> None:
        events.append(f"{threading.current_thread().name} {next(_module.parameters()).dtype}")

    hooks.append(model.first_stage_model.decoder.register_forward_pre_hook(record))
    state.current_latent = latent
    state.do_set_current_image()  # as the progress API's thread asks for it, between decodes
    assert events == ["MainThread torch.float32"] * 2  # a grid of the batch
    assert pixels(state.current_image).mean() > 0 and not errors.exception_records

    events.clear()
    preview = threading.Thread(target=state.do_set_current_image, name="progress")

    def ask_for_a_preview_meanwhile(_module: torch.nn.Module, _inputs: Any) -> None:
        if not preview.is_alive() and preview.ident is None:
            preview.start()
            preview.join(0.5)  # the preview must wait for this decode, not run into its cast
            events.append("main decode ends")

    hooks.append(model.first_stage_model.decoder.register_forward_pre_hook(ask_for_a_preview_meanwhile))
    processing.decode_latent_batch(model, latent[:1].to(devices.dtype_vae))
    preview.join()
    assert events == ["MainThread torch.float32", "main decode ends", *["progress torch.float32"] * 2]
    assert devices.dtype_vae == torch.float16 and not errors.exception_records


@stand_in_only
@pytest.mark.parametrize("version", ["1.6.0", "1.10.1"])
def test_vae_encode_overflow_is_redone_in_fp32(fake_webui_factory, hooks: list[Any], version: str) -> None:
    fake = start(fake_webui_factory, version, half=True)
    distilled(fake, "no-vae")
    fake.write_vae("sdxl_vae", vae_weights(fake))
    from modules import processing, shared

    assert fake.select_checkpoint("no-vae")
    model = shared.sd_model
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with vae_nan.module_precision(model.first_stage_model, settings.Precision.FP32):
        expected = model.encode_first_stage(image * 2 - 1)
    calls: list[torch.dtype] = []
    break_in_fp16(model.first_stage_model.encoder, "nan", calls, hooks)

    latent = processing.images_tensor_to_samples(image, 0, model)  # as img2img and hires fix call it
    assert calls == [torch.float16, torch.float32]
    assert torch.equal(latent, expected)
    calls.clear()
    processing.images_tensor_to_samples(image, 0, model)
    assert calls == [torch.float32]


@stand_in_only
@pytest.mark.parametrize(("version", "flag", "precision"), [
    ("1.6.0", "--medvram", "fp32"), ("1.10.1", "--lowvram", "fp32"), ("1.10.1", "--medvram", "bf16"),
])
def test_medvram_and_lowvram_find_the_vae_where_the_host_sent_it(
    fake_webui_factory, monkeypatch: pytest.MonkeyPatch, version: str, flag: str, precision: str
) -> None:
    """The host's hook sends the VAE to the GPU inside our cast; after it, the VAE must be there, in fp16.

    ``meta`` stands for the GPU (the stand-in has one device): shapes only, so the NaN checks are off.
    """
    fake = fake_webui_factory(version, extensions=[REPO_ROOT], cmd_args=(*HALF_PRECISION, flag))
    distilled(fake, "no-vae")
    fake.write_vae("sdxl_vae", vae_weights(fake))
    from modules import devices, lowvram, processing, shared

    assert fake.select_checkpoint("no-vae")
    model, gpu = shared.sd_model, torch.device("meta")
    assert model.lowvram
    shared.opts.set("ssd1b_vae_precision", precision)
    shared.opts.set("ssd1b_nan_vae_decode", "Off")
    shared.opts.set("ssd1b_nan_vae_encode", "Off")
    monkeypatch.setattr(devices, "device", gpu)
    monkeypatch.setattr(shared, "device", gpu)

    def where_the_vae_is() -> set[tuple[str, torch.dtype]]:
        assert lowvram.module_in_gpu is model.first_stage_model
        return {(t.device.type, t.dtype) for t in model.first_stage_model.state_dict().values()}

    batch = torch.zeros(2, 4, 8, 8, dtype=torch.float16, device=gpu)  # batch size 2: the second decode
    images = processing.decode_latent_batch(model, batch)  # finds the VAE already "in the GPU"
    assert [tuple(image.shape) for image in images] == [(3, 64, 64)] * 2
    assert where_the_vae_is() == {("meta", torch.float16)}
    # hires fix with a non-latent upscaler: the upscaled images are encoded, the second pass decoded
    latent = processing.images_tensor_to_samples(torch.zeros(2, 3, 128, 128, device=gpu), 0, model)
    assert where_the_vae_is() == {("meta", torch.float16)}
    processing.decode_latent_batch(model, latent.to(torch.float16))
    assert where_the_vae_is() == {("meta", torch.float16)}


# -- NaN-safe sampling -----------------------------------------------------------------------------


def break_unet(fake: Any, how: str, *, unless: str, handles: list[Any]) -> list[int]:
    """The UNet's output goes bad unless attention is upcast, or unless the UNet computes in fp32
    (its output is fp32: the remedy casts one block at a time, so after the call the weights are fp16 again)."""
    from modules import shared

    unet = shared.sd_model.model.diffusion_model
    calls: list[int] = []

    def hook(_module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        fine = shared.opts.upcast_attn if unless == "upcast" else output.dtype == torch.float32
        return output if fine else corrupt(output, how)

    handles.append(unet.register_forward_hook(hook))
    return calls


@stand_in_only
@pytest.mark.parametrize(("version", "how"), [("1.6.0", "all"), ("1.6.0", "nan"), ("1.10.1", "nan")])
def test_unet_nan_is_redone_with_attention_upcast(
    fake_webui_factory, hooks: list[Any], capsys, monkeypatch: pytest.MonkeyPatch, version: str, how: str
) -> None:
    fake = start(fake_webui_factory, version, half=True)
    shown = toasts(monkeypatch)
    distilled(fake, "no-vae")
    fake.write_vae("sdxl_vae", vae_weights(fake))
    from modules import shared

    assert fake.select_checkpoint("no-vae")
    reference = fake.txt2img()
    calls = break_unet(fake, how, unless="upcast", handles=hooks)
    saved_meanwhile = fake.data_dir / "config-saved-during-the-redo.json"

    def apply_settings_meanwhile(*_: Any) -> None:  # the UI's "Apply settings", on another thread
        if shared.opts.upcast_attn:
            shared.opts.save(str(saved_meanwhile))

    hooks.append(shared.sd_model.model.diffusion_model.register_forward_hook(apply_settings_meanwhile))
    logged(capsys)

    result = fake.txt2img()  # "all" NaN: v1.6 raises NansException inside sampling; caught and redone
    assert len(calls) == (1 if how == "all" else 2) + 2  # stopped at the first step, or both; then two
    assert torch.equal(pixels(result.images[0]), pixels(reference.images[0]))  # same noise, same image
    assert params(result)[infotext.KEY_NAN_RECOVERY] == "unet fp16->upcast-attention at step 0"
    assert logged(capsys).count("redone with attention in fp32") == 1
    assert len(shown) == 1 and "redone with attention in fp32" in shown[0]
    assert shared.opts.upcast_attn is False  # for that image only
    assert json.loads(saved_meanwhile.read_text()).get("upcast_attn", False) is False  # never in config.json


@stand_in_only
@pytest.mark.parametrize("version", ["1.6.0", "1.10.1"])
def test_unet_nan_that_upcasting_does_not_fix_is_redone_in_fp32(fake_webui_factory, hooks: list[Any], version: str):
    fake = start(fake_webui_factory, version, half=True)
    distilled(fake, "no-vae")
    fake.write_vae("sdxl_vae", vae_weights(fake))
    from modules import devices, shared

    assert fake.select_checkpoint("no-vae")
    unet = shared.sd_model.model.diffusion_model
    weights = {key: value.clone() for key, value in unet.state_dict().items()}
    with pytest.MonkeyPatch.context() as fp32, vae_nan.module_forward_precision(unet, settings.Precision.FP32):
        fp32.setattr(devices, "dtype_unet", torch.float32)  # the UNet's inputs are cast to it
        reference = fake.txt2img()
    calls = break_unet(fake, "nan", unless="fp32", handles=hooks)
    fp32_blocks: list[int] = []  # while each block runs: how many blocks hold fp32 weights
    blocks = [*unet.input_blocks, unet.middle_block, *unet.output_blocks]
    for block in blocks:
        hooks.append(block.register_forward_hook(lambda *_: fp32_blocks.append(
            sum(next(b.parameters()).dtype == torch.float32 for b in blocks))))

    result = fake.txt2img()
    assert len(calls) == 6  # fp16, fp16 with attention upcast, fp32
    assert max(fp32_blocks) == 1  # never a second copy of the whole UNet: one block at a time
    assert torch.equal(pixels(result.images[0]), pixels(reference.images[0]))
    assert params(result)[infotext.KEY_NAN_RECOVERY] == "unet fp16->fp32 at step 0"
    assert devices.dtype_unet == torch.float16 and "forward" not in vars(unet)
    for key, restored in unet.state_dict().items():  # the fp16 originals, not fp32 copies cast back
        assert restored.dtype == torch.float16 and torch.equal(restored, weights[key])


@stand_in_only
def test_unet_nan_with_recovery_off_is_the_hosts_business(fake_webui_factory, hooks: list[Any]) -> None:
    fake = start(fake_webui_factory, "1.6.0", half=True)
    distilled(fake, "no-vae")
    fake.write_vae("sdxl_vae", vae_weights(fake))
    from modules import devices, shared

    assert fake.select_checkpoint("no-vae")
    shared.opts.set("ssd1b_nan_unet", "Off")
    calls = break_unet(fake, "all", unless="upcast", handles=hooks)
    with pytest.raises(devices.NansException):
        fake.txt2img()
    assert len(calls) == 1


def test_noise_rewinder_restarts_the_batch_generator() -> None:
    class ImageRNG:  # the constructor of A1111's modules.rng.ImageRNG (v1.6-v1.10)
        def __init__(self, shape, seeds, subseeds=None, subseed_strength=0.0, seed_resize_from_h=0, **more):
            self.shape, self.seeds, self.subseeds = shape, seeds, subseeds
            self.subseed_strength, self.seed_resize_from_h = subseed_strength, seed_resize_from_h
            self.seed_resize_from_w = more.get("seed_resize_from_w", 0)
            self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]

        def next(self) -> torch.Tensor:
            return torch.stack([torch.randn(self.shape, generator=g) for g in self.generators])

    class P:
        rng = ImageRNG((4, 8, 8), [5, 6], subseeds=[7, 8], subseed_strength=0.5)

    p = P()
    first = p.rng.next()
    rewind = sampling.noise_rewinder(p)
    p.rng = ImageRNG((4, 16, 16), [1])  # e.g. the hires pass replaced it
    rewind()
    assert p.rng.subseed_strength == 0.5 and torch.equal(p.rng.next(), first)


# -- TAESD-XL --------------------------------------------------------------------------------------


def write_taesd(fake: Any) -> None:
    from modules import sd_vae_taesd

    folder = Path(fake.vae_dir).parent / vae_nan.TAESD_DIR
    folder.mkdir(exist_ok=True)
    torch.manual_seed(0)
    torch.save(sd_vae_taesd.decoder().state_dict(), folder / vae_nan.TAESDXL_DECODER)
    torch.save(sd_vae_taesd.encoder().state_dict(), folder / vae_nan.TAESDXL_ENCODER)


@stand_in_only
@pytest.mark.parametrize("version", ["1.6.0", "1.10.1"])
def test_taesd_xl_decodes_like_the_hosts_own_taesd(fake_webui_factory, version: str) -> None:
    fake = start(fake_webui_factory, version)
    distilled(fake, "no-vae")
    write_taesd(fake)  # and no full VAE at all: Automatic falls back to TAESD-XL
    from modules import shared

    assert fake.select_checkpoint("no-vae")
    ours = fake.txt2img()
    assert params(ours)[infotext.KEY_VAE] == "TAESD-XL"
    shared.opts.set("sd_vae_decode_method", "TAESD")  # the host's own TAESD path: we step aside
    host = fake.txt2img()
    assert pixels(ours.images[0]).std() > 1
    assert torch.equal(pixels(ours.images[0]), pixels(host.images[0]))


@stand_in_only
def test_taesd_xl_without_its_files_names_them(fake_webui_factory) -> None:
    fake = start(fake_webui_factory, "1.10.1")
    distilled(fake, "no-vae")
    from modules import shared

    assert fake.select_checkpoint("no-vae")
    shared.opts.set("ssd1b_vae", "TAESD-XL")
    with pytest.raises(safety.VaeUnavailable) as missing:
        fake.txt2img()
    assert "taesdxl_decoder.pth" in str(missing.value) and "VAE-taesd" in str(missing.value)


# -- webui tier: the real A1111 ----------------------------------------------------------------------


def write_random_sdxl_vae(path: Path, seed: int = 0) -> Path:
    """A full-size SDXL VAE (LDM names) with fan-in scaled random weights: decodes to a non-flat image."""
    import safetensors.torch

    from extensions_ssd1b.arch.components import SDXL_VAE, vae_tensors

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, shape in vae_tensors(SDXL_VAE).items():
        noise = torch.randn(shape, generator=generator)
        if len(shape) >= 2:
            tensors[key] = noise * noise[0].numel() ** -0.5
        else:
            tensors[key] = 1.0 + 0.1 * noise if "norm" in key and key.endswith("weight") else 0.02 * noise
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(tensors, str(path))
    return path


TINY_TXT2IMG = {
    "prompt": "a lighthouse",
    "steps": 1,
    "width": 64,
    "height": 64,
    "sampler_name": "Euler",
    "seed": 1,
    # Offline: SDXL live previews ("Approx NN") would download vaeapprox-sdxl.pt before sampling.
    "override_settings": {"live_previews_enable": False},
}
POSITION_EMBEDDINGS = (
    "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight",
    "conditioner.embedders.1.model.positional_embedding",
)


def give_text_encoders_a_mean(path: Path) -> None:
    """Non-zero position embeddings in a checkpoint whose text encoders are a hole of zeros.

    All-zero embeddings make the webui's emphasis step divide 0 by 0 (``z * (original_mean /
    new_mean)``): NaN conditioning.  With constant-ish position embeddings every hidden state is
    that embedding (zero layers add nothing), so the conditioning is finite and cheap.
    """
    from extensions_ssd1b.io.header import read_header

    header = read_header(path)
    generator = torch.Generator().manual_seed(0)
    with open(path, "r+b") as handle:
        for key in POSITION_EMBEDDINGS:
            info = header.tensors[key]
            values = 0.1 + 0.02 * torch.randn(info.shape, generator=generator)
            dtype = {"F32": torch.float32, "F16": torch.float16}[info.dtype]
            handle.seek(header.data_start + info.begin)
            handle.write(values.to(dtype).numpy().tobytes())


def real_txt2img(client: Any, real_webui: Any) -> tuple[dict[str, str], torch.Tensor]:
    """POST a tiny txt2img; the infotext's fields (as pasted back) and the image's pixels."""
    from PIL import Image

    response = client.post("/sdapi/v1/txt2img", json=TINY_TXT2IMG)
    assert response.status_code == 200, response.text
    text = json.loads(response.json()["info"])["infotexts"][0]
    fields = infotext.host_parse(text.splitlines()[-1], v16=not real_webui.version.startswith("1.1"))
    infotext.pasted_values(fields)
    return fields, pixels(Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]))))


@pytest.fixture(scope="module")
def vae_less_checkpoint(real_webui) -> Path:
    """A reduced-width SSD-1B (random UNet, full-size text encoders as a hole), no VAE, loaded."""
    from modules import sd_models
    from webui_checks import webui_scale, write_reduced_checkpoint

    path, _ = write_reduced_checkpoint(real_webui.checkpoints_dir, "ssd-1b-no-vae", "ssd-1b", seed=0)
    give_text_encoders_a_mean(path)
    assert checkpoints.detect_checkpoint_file(path).layout == webui_scale("ssd-1b")
    real_webui.refresh()
    sd_models.reload_model_weights(info=sd_models.checkpoint_aliases[path.name])
    return path


@pytest.mark.webui
def test_real_webui_settings_api_and_a_vae_less_checkpoint(real_webui, vae_less_checkpoint: Path) -> None:
    from modules import sd_vae, shared
    from starlette.testclient import TestClient

    client = TestClient(real_webui.app())
    options = client.get("/sdapi/v1/options").json()
    assert {setting.key: options[setting.key] for setting in SETTINGS} == {s.key: s.default for s in SETTINGS}
    assert client.post("/sdapi/v1/options", json={"ssd1b_nan_vae_encode": "Warn"}).status_code == 200
    assert client.get("/sdapi/v1/options").json()["ssd1b_nan_vae_encode"] == "Warn"
    saved = json.loads(Path(shared.config_filename).read_text())
    assert saved["ssd1b_nan_vae_encode"] == "Warn"

    refused = client.post("/sdapi/v1/txt2img", json=TINY_TXT2IMG)  # no VAE anywhere: stopped, with the message
    assert refused.status_code == 500 and FP16_FIX_FILE in refused.text and "taesdxl_decoder.pth" in refused.text

    write_random_sdxl_vae(Path(sd_vae.vae_path) / VAE_NAME)
    assert client.post("/sdapi/v1/refresh-vae").status_code == 200
    fields, image = real_txt2img(client, real_webui)
    assert fields[infotext.KEY_VAE] == VAE_NAME and fields["VAE"] == VAE_NAME
    assert fields[infotext.KEY_VAE_PRECISION] == "fp32"
    assert sd_vae.loaded_vae_file == str(Path(sd_vae.vae_path) / VAE_NAME)
    assert image.std() > 1, "a flat image is the empty-VAE bug"


@pytest.mark.webui
def test_real_webui_taesd_xl_decodes_like_its_own_taesd(real_webui, vae_less_checkpoint: Path) -> None:
    from modules import paths, sd_vae_taesd
    from starlette.testclient import TestClient

    folder = Path(paths.models_path) / vae_nan.TAESD_DIR
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    # The user's file, in the legacy format the published .pth files have: the webui's safe unpickler
    # (modules/safe.py) rejects the entries a zip written by this torch adds, and then loads None.
    weights = sd_vae_taesd.decoder().state_dict()
    torch.save(weights, folder / vae_nan.TAESDXL_DECODER, _use_new_zipfile_serialization=False)
    client = TestClient(real_webui.app())
    try:
        assert client.post("/sdapi/v1/options", json={"ssd1b_vae": "TAESD-XL"}).status_code == 200
        ours, ours_image = real_txt2img(client, real_webui)
        assert ours[infotext.KEY_VAE] == "TAESD-XL"
        client.post("/sdapi/v1/options", json={"sd_vae_decode_method": "TAESD"})  # the host's own TAESD path
        host, host_image = real_txt2img(client, real_webui)
        assert host.get("VAE Decoder") == "TAESD"
        assert ours_image.std() > 1 and torch.equal(ours_image, host_image)  # same latent scaling, same image
    finally:
        client.post("/sdapi/v1/options", json={"ssd1b_vae": "Automatic", "sd_vae_decode_method": "Full"})


@pytest.mark.webui
def test_real_webui_settings_tab_renders(real_webui, tmp_path: Path) -> None:
    """The web UI's Settings page, built as ui.create_ui builds it: one "SSD-1B" tab with our options."""
    import gradio as gr
    from modules import shared, ui_loadsave, ui_settings

    page = ui_settings.UiSettings()
    if hasattr(page, "register_settings"):  # v1.9+: ui.create_ui runs on_ui_settings first
        page.register_settings()
    with gr.Blocks() as demo:
        page.create_ui(loadsave=ui_loadsave.UiLoadsave(str(tmp_path / "ui-config.json")), dummy_component=gr.Label())
    config = demo.get_config_file()
    tabs = [c["props"] for c in config["components"] if c["props"].get("elem_id") == f"settings_{settings.SECTION_ID}"]
    assert [tab["label"] for tab in tabs] == [settings.SECTION_LABEL]
    comments = json.loads(shared.opts.dumpjson())["_comments_after"]
    for setting in SETTINGS:
        component = page.component_dict[setting.key]
        assert component.label == setting.label and component.elem_id == f"setting_{setting.key}"
        assert setting.info in comments[setting.key]
    vae = page.component_dict[settings.VAE.key]
    assert isinstance(vae, gr.Dropdown) and vae.choices[:2] == ["Automatic", "TAESD-XL"]

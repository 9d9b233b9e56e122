"""VAE resolution: the webui's order is kept, explicit choices are never replaced, Automatic fills the gap."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from extensions_ssd1b.core import infotext
from extensions_ssd1b.core.settings import VAE_AUTOMATIC, VAE_TAESD_XL, Precision
from extensions_ssd1b.vae import choice as vae_choice
from extensions_ssd1b.vae.choice import (
    DeviceCaps,
    KeyFormat,
    TaesdFiles,
    VaeDecision,
    VaeFile,
    VaeKind,
    VaeRefusal,
    VaeSource,
    WebuiVae,
    bf16_is_fast,
    choose_precision,
    describe_vae_file,
    identify,
    resolve_vae,
)
from extensions_ssd1b.vae.nan import vae_fingerprint

FP16_FIX_SHA = "235745af8d86bf4a4c1b5b4f529868b37019a10f7c0b2e79ad0abca3a22bc6e1"
STOCK_SHA = "63aeecb90ff7bc1c115395962d3e803571385b61938377bc7089b36e81e92e2e"

GPU_BF16 = DeviceCaps(bf16=True)
GPU_OLD = DeviceCaps(bf16=False)
NO_TAESD = TaesdFiles(decoder=False, encoder=False)
BOTH_TAESD = TaesdFiles(decoder=True, encoder=True)

FIX = VaeFile("sdxl.vae.safetensors", "/m/VAE/sdxl.vae.safetensors", key_format=KeyFormat.LDM)
STOCK_NAMED = VaeFile("sdxl_vae.safetensors", "/m/VAE/sdxl_vae.safetensors", key_format=KeyFormat.LDM)
SD15 = VaeFile("vae-ft-mse-840000-ema-pruned.safetensors", "/m/VAE/vae-ft-mse.safetensors", key_format=KeyFormat.LDM)
DIFFUSERS = VaeFile("diffusion_pytorch_model.safetensors", "/m/VAE/d.safetensors", key_format=KeyFormat.DIFFUSERS)


def resolve(**overrides: object) -> VaeDecision | VaeRefusal:
    arguments: dict[str, object] = {
        "checkpoint": "ssd-1b.safetensors",
        "checkpoint_has_vae": False,
        "setting": VAE_AUTOMATIC,
        "precision": Precision.AUTO,
        "available": [],
        "taesd": NO_TAESD,
        "device": GPU_BF16,
    }
    arguments.update(overrides)
    return resolve_vae(**arguments)  # type: ignore[arg-type]


def decision(**overrides: object) -> VaeDecision:
    result = resolve(**overrides)
    assert isinstance(result, VaeDecision), result
    return result


def refusal(**overrides: object) -> VaeRefusal:
    result = resolve(**overrides)
    assert isinstance(result, VaeRefusal), result
    return result


# --- Automatic -------------------------------------------------------------------------------------


def test_automatic_uses_the_checkpoints_own_vae_first() -> None:
    chosen = decision(checkpoint_has_vae=True, available=[FIX])
    assert chosen.source is VaeSource.CHECKPOINT and chosen.path is None
    assert chosen.precision is Precision.BF16 and chosen.precision_auto  # unknown VAE, bf16 device
    assert decision(checkpoint_has_vae=True, device=GPU_OLD).precision is Precision.FP16  # + NaN recovery
    forced = decision(checkpoint_has_vae=True, device=DeviceCaps(bf16=True, vae_fp32_forced=True))
    assert forced.precision is Precision.FP32 and "--no-half-vae" in forced.reason


def test_a_baked_fp16_fix_is_recognised_by_fingerprint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(vae_choice.KNOWN_FINGERPRINTS, "f00d", VaeKind.FP16_FIX)
    chosen = decision(checkpoint_has_vae=True, checkpoint_vae_fingerprint="f00d", device=GPU_OLD)
    assert chosen.fp16_safe and chosen.precision is Precision.FP16 and chosen.fingerprint == "f00d"


def test_without_a_baked_vae_fp16_fix_wins_over_other_sdxl_vaes() -> None:
    chosen = decision(available=[STOCK_NAMED, SD15, FIX])
    assert (chosen.source, chosen.path, chosen.precision) == (VaeSource.FILE, FIX.path, Precision.FP16)
    assert chosen.fp16_safe and "file name" in chosen.reason and "automatic" in chosen.chosen_by


def test_content_evidence_beats_a_file_name() -> None:
    renamed_fix = VaeFile("pony-vae.safetensors", "/m/VAE/pony-vae.safetensors", sha256=FP16_FIX_SHA[:10])
    chosen = decision(available=[FIX, renamed_fix])
    assert chosen.path == renamed_fix.path and "sha256" in chosen.reason


def test_recognition_by_fingerprint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(vae_choice.KNOWN_FINGERPRINTS, "beef", VaeKind.FP16_FIX)
    plain = VaeFile("my-vae.safetensors", "/m/VAE/my-vae.safetensors", fingerprint="beef", key_format=KeyFormat.LDM)
    assert identify(plain).kind is VaeKind.FP16_FIX
    assert decision(available=[plain, SD15]).path == plain.path


@pytest.mark.parametrize(
    ("device", "expected"),
    [(GPU_BF16, Precision.BF16), (GPU_OLD, Precision.FP32)],
)
def test_the_stock_sdxl_vae_runs_in_a_safe_precision(device: DeviceCaps, expected: Precision) -> None:
    stock = VaeFile("whatever.safetensors", "/m/VAE/whatever.safetensors", sha256=STOCK_SHA)
    chosen = decision(available=[stock, SD15], device=device)
    assert chosen.path == stock.path and chosen.precision is expected and not chosen.fp16_safe


def test_an_sdxl_named_vae_of_unknown_content_starts_in_fp16_with_recovery_on_old_gpus() -> None:
    chosen = decision(available=[STOCK_NAMED], device=GPU_OLD)
    assert chosen.path == STOCK_NAMED.path and chosen.precision is Precision.FP16 and chosen.precision_auto


def test_taesd_xl_when_no_sdxl_vae_is_installed() -> None:
    chosen = decision(available=[SD15], taesd=TaesdFiles(decoder=True, encoder=False), device=GPU_OLD)
    assert chosen.source is VaeSource.TAESD_XL and chosen.precision is Precision.FP16 and chosen.fp16_safe
    assert any("taesdxl_encoder.pth" in note and "img2img" in note for note in chosen.notes)
    assert decision(available=[], taesd=BOTH_TAESD).notes == ()


def test_nothing_usable_gives_a_message_naming_what_to_download_and_where() -> None:
    refused = refusal(checkpoint="koala-700m.safetensors", available=[SD15, DIFFUSERS], models_dir="/data/models")
    message = refused.message
    assert "koala-700m.safetensors has no VAE" in message and "gray" in message
    assert "sdxl.vae.safetensors" in message and "/data/models/VAE" in message
    assert "https://huggingface.co/madebyollin/sdxl-vae-fp16-fix" in message
    assert "taesdxl_decoder.pth and taesdxl_encoder.pth" in message and "/data/models/VAE-taesd" in message
    assert "diffusers format" in message and "diffusion_pytorch_model.safetensors" in message
    assert "vae-ft-mse-840000-ema-pruned.safetensors" in message and "SD 1.x" in message
    assert [(d.file, d.folder) for d in refused.downloads] == [
        ("sdxl.vae.safetensors", "/data/models/VAE"),
        ("taesdxl_decoder.pth", "/data/models/VAE-taesd"),
        ("taesdxl_encoder.pth", "/data/models/VAE-taesd"),
    ]


def test_unloadable_vaes_are_skipped_with_a_note() -> None:
    chosen = decision(available=[DIFFUSERS, STOCK_NAMED])
    assert chosen.path == STOCK_NAMED.path
    assert any("diffusers format" in note for note in chosen.notes)


# --- explicit choices ------------------------------------------------------------------------------


def test_our_setting_is_used_even_when_the_checkpoint_has_a_vae() -> None:
    chosen = decision(checkpoint_has_vae=True, setting=STOCK_NAMED.name, available=[FIX, STOCK_NAMED])
    assert chosen.path == STOCK_NAMED.path and "SSD-1B setting" in chosen.chosen_by
    taesd = decision(checkpoint_has_vae=True, setting=VAE_TAESD_XL, taesd=NO_TAESD)
    assert taesd.source is VaeSource.TAESD_XL
    assert any("downloads it" in note for note in taesd.notes)  # the webui fetches it on first use


def test_webui_sd_vae_is_honoured_and_not_replaced_by_a_better_one() -> None:
    chosen = decision(webui=WebuiVae(sd_vae=STOCK_NAMED.name), available=[FIX, STOCK_NAMED])
    assert chosen.path == STOCK_NAMED.path and "'SD VAE'" in chosen.chosen_by


def test_our_setting_takes_the_place_of_sd_vae() -> None:
    chosen = decision(setting=FIX.name, webui=WebuiVae(sd_vae=STOCK_NAMED.name), available=[FIX, STOCK_NAMED])
    assert chosen.path == FIX.path


def test_webui_none_means_the_checkpoints_own_vae() -> None:
    assert decision(checkpoint_has_vae=True, webui=WebuiVae(sd_vae="None"), available=[FIX]).source is (
        VaeSource.CHECKPOINT
    )
    refused = refusal(webui=WebuiVae(sd_vae="None"), available=[FIX])
    assert "'None'" in refused.message and "gray" in refused.message and "Automatic" in refused.message


@pytest.mark.parametrize(
    ("webui", "expected"),
    [
        (WebuiVae(preferred="sdxl_vae.safetensors"), "sdxl_vae.safetensors"),  # Automatic + metadata
        (WebuiVae(sd_vae="sdxl.vae.safetensors", preferred="sdxl_vae.safetensors"), "sdxl.vae.safetensors"),
        (
            WebuiVae(sd_vae="sdxl.vae.safetensors", preferred="sdxl_vae.safetensors", overrides_per_model=False),
            "sdxl_vae.safetensors",
        ),
        (WebuiVae(near_checkpoint="sdxl_vae.safetensors"), "sdxl_vae.safetensors"),
        (WebuiVae(sd_vae="sdxl.vae.safetensors", near_checkpoint="sdxl_vae.safetensors"), "sdxl.vae.safetensors"),
        (
            WebuiVae(sd_vae="sdxl.vae.safetensors", near_checkpoint="sdxl_vae.safetensors", overrides_per_model=False),
            "sdxl_vae.safetensors",
        ),
        (WebuiVae(preferred="Automatic", sd_vae="auto"), "sdxl.vae.safetensors"),  # both mean Automatic
    ],
)
def test_the_webui_order_of_sd_vae_preferred_vae_and_named_files(webui: WebuiVae, expected: str) -> None:
    assert decision(webui=webui, available=[STOCK_NAMED, FIX], checkpoint_has_vae=False).name == expected


def test_vae_path_from_the_command_line_wins() -> None:
    chosen = decision(setting=FIX.name, webui=WebuiVae(commandline_path="/x/forced.safetensors"), available=[FIX])
    assert chosen.path == "/x/forced.safetensors" and chosen.chosen_by == "--vae-path"


def test_an_explicit_vae_that_is_gone_is_reported_not_replaced() -> None:
    refused = refusal(setting="deleted.safetensors", checkpoint_has_vae=True, available=[FIX])
    assert "deleted.safetensors" in refused.message and "SSD-1B setting" in refused.message
    stale = refusal(webui=WebuiVae(preferred="old.safetensors"), available=[FIX])
    assert "Preferred VAE of ssd-1b.safetensors" in stale.message


def test_an_explicit_diffusers_vae_is_refused_with_the_file_to_use_instead() -> None:
    refused = refusal(setting=DIFFUSERS.name, available=[DIFFUSERS])
    assert "diffusers format" in refused.message and refused.downloads[0].file == "sdxl.vae.safetensors"


def test_explicit_precision_is_kept() -> None:
    stock = VaeFile("s.safetensors", "/m/VAE/s.safetensors", sha256=STOCK_SHA)
    chosen = decision(setting=stock.name, available=[stock], precision=Precision.FP16, device=GPU_BF16)
    assert chosen.precision is Precision.FP16 and not chosen.precision_auto
    assert choose_precision(Precision.BF16, fp16_safe=False, overflows_fp16=True, device=GPU_OLD)[0] is Precision.FP32
    assert choose_precision(Precision.FP32, fp16_safe=True, overflows_fp16=False, device=GPU_BF16)[0] is Precision.FP32


@settings(max_examples=150, deadline=None)
@given(
    setting=st.sampled_from([VAE_AUTOMATIC, VAE_TAESD_XL, FIX.name, STOCK_NAMED.name, SD15.name, "gone.safetensors"]),
    sd_vae=st.sampled_from([VAE_AUTOMATIC, "None", FIX.name, SD15.name]),
    preferred=st.sampled_from([None, VAE_AUTOMATIC, "None", STOCK_NAMED.name]),
    overrides=st.booleans(),
    has_vae=st.booleans(),
    available=st.lists(st.sampled_from([FIX, STOCK_NAMED, SD15, DIFFUSERS]), unique=True),
    taesd=st.sampled_from([NO_TAESD, BOTH_TAESD]),
    bf16=st.booleans(),
)
def test_an_explicit_choice_is_either_used_or_refused_never_swapped(
    setting, sd_vae, preferred, overrides, has_vae, available, taesd, bf16
) -> None:
    webui = WebuiVae(sd_vae=sd_vae, preferred=preferred, overrides_per_model=overrides)
    result = resolve(
        setting=setting, webui=webui, checkpoint_has_vae=has_vae, available=available, taesd=taesd,
        device=DeviceCaps(bf16=bf16),
    )  # fmt: skip
    if isinstance(result, VaeDecision):
        assert result.precision is not Precision.AUTO
        assert not (result.precision is Precision.BF16 and not bf16)
        explicit = {setting, sd_vae, preferred} - {VAE_AUTOMATIC, None}
        if result.chosen_by.startswith("automatic"):
            assert not explicit
        elif result.source is VaeSource.FILE:
            assert result.name in explicit  # exactly a file that was asked for
        elif result.source is VaeSource.CHECKPOINT:
            assert "None" in explicit
        else:
            assert setting == VAE_TAESD_XL
    else:
        assert result.message
    if has_vae and setting == sd_vae == VAE_AUTOMATIC and preferred in (None, VAE_AUTOMATIC):
        assert isinstance(result, VaeDecision) and result.source is VaeSource.CHECKPOINT


def test_decision_infotext_round_trips() -> None:
    for chosen in (decision(checkpoint_has_vae=True), decision(available=[FIX]), decision(taesd=BOTH_TAESD)):
        values = chosen.infotext()
        parsed = infotext.host_parse(infotext.host_render(values))
        name = infotext.parse_vae(parsed[infotext.KEY_VAE])
        assert name == {VaeSource.CHECKPOINT: None, VaeSource.TAESD_XL: "TAESD-XL"}.get(chosen.source, chosen.name)
        assert infotext.parse_precision(parsed[infotext.KEY_VAE_PRECISION]) == chosen.precision.value


def test_device_capabilities(monkeypatch: pytest.MonkeyPatch) -> None:
    assert DeviceCaps.of(torch.device("cpu"), no_half_vae=True) == DeviceCaps(bf16=False, vae_fp32_forced=True)
    assert not bf16_is_fast(torch.device("mps")) or torch.backends.mps.is_available()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for capability, fast in (((7, 5), False), ((8, 0), True), ((9, 0), True)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda _device, c=capability: c)
        assert bf16_is_fast(torch.device("cuda")) is fast
    assert bf16_is_fast(torch.device("xpu"))


# --- reading the files -----------------------------------------------------------------------------


def _vae_tensors(prefix: str = "", diffusers: bool = False) -> dict[str, torch.Tensor]:
    up = "decoder.up_blocks.3.resnets.2.conv2.weight" if diffusers else "decoder.up.0.block.2.conv2.weight"
    mid = "decoder.mid_block.resnets.0.conv1.weight" if diffusers else "decoder.mid.block_1.conv1.weight"
    shapes = {
        "decoder.conv_in.weight": (8, 4, 3, 3),
        up: (8, 8, 3, 3),
        "decoder.conv_out.weight": (3, 8, 3, 3),
        "post_quant_conv.weight": (4, 4, 1, 1),
        mid: (8, 8, 3, 3),
    }
    generator = torch.Generator().manual_seed(0)
    return {prefix + name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}


def test_describe_vae_file_reads_the_key_format_and_fingerprint(tmp_path: Path) -> None:
    cases = {
        "ldm.safetensors": (_vae_tensors(), KeyFormat.LDM, True),
        "prefixed.safetensors": (_vae_tensors("first_stage_model."), KeyFormat.LDM_PREFIXED, False),
        "diffusers.safetensors": (_vae_tensors(diffusers=True), KeyFormat.DIFFUSERS, False),
        "lora.safetensors": ({"lora_unet_x.lora_up.weight": torch.zeros(2)}, KeyFormat.NOT_A_VAE, False),
    }
    for name, (tensors, key_format, loadable) in cases.items():
        save_file(tensors, tmp_path / name)
        described = describe_vae_file(name, str(tmp_path / name), sha256="abc")
        assert (described.key_format, described.loadable, described.sha256) == (key_format, loadable, "abc"), name
        if key_format is not KeyFormat.NOT_A_VAE:
            assert described.fingerprint == vae_fingerprint(tensors)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    described = describe_vae_file("broken.safetensors", str(broken))
    assert described.problem and not described.loadable
    assert "cannot be read" in refusal(setting="broken.safetensors", available=[described]).message
    pickle = tmp_path / "orangemix.vae.pt"
    pickle.write_bytes(b"never opened")
    assert describe_vae_file(pickle.name, str(pickle)) == VaeFile(pickle.name, str(pickle))

"""The host adapter in real use (issue 11): where configs live, VAEs known by content, and smaller fixes."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from fakewebui import install_fake_webui, ssd1b_shaped, without_vae
from fakewebui.install import real_webui_root
from safetensors.torch import save_file

from extensions_ssd1b.core.errors import CheckpointError
from extensions_ssd1b.diffusers.folder import checkpoint_version, weight_variant
from extensions_ssd1b.host import config, ui
from extensions_ssd1b.host import vae as host_vae
from extensions_ssd1b.io.header import read_header
from extensions_ssd1b.tools.convert import convert
from extensions_ssd1b.tools.samples import write_diffusers_pipeline
from extensions_ssd1b.vae import choice
from extensions_ssd1b.vae.choice import VaeDecision, VaeKind, VaeRefusal, VaeSource

REPO_ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(real_webui_root() is not None, reason="test-scale checkpoints fit only the stand-in")


@pytest.fixture(params=["1.6.0", "1.10.1"])
def host(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    return install_fake_webui(monkeypatch, request.param, tmp_path, extensions=[REPO_ROOT])


def vae_weights(host: Any, seed: int) -> dict[str, torch.Tensor]:
    return {k: v for k, v in host.stock_sdxl_state_dict(seed).items() if k.startswith("first_stage_model.")}


def distilled(host: Any, name: str, *, vae_seed: int | None = None) -> Path:
    """An SSD-1B-shaped checkpoint; with a baked VAE from ``vae_seed``, else none."""
    state_dict = without_vae(ssd1b_shaped(host.stock_sdxl_state_dict(0)))
    if vae_seed is not None:
        state_dict.update(vae_weights(host, vae_seed))
    return host.write_checkpoint(name, state_dict)


def known_as(monkeypatch: pytest.MonkeyPatch, path: Path, kind: VaeKind) -> None:
    """Put the file's real sha256 in the table of published hashes, as ``kind``."""
    monkeypatch.setitem(choice.KNOWN_SHA256, hashlib.sha256(path.read_bytes()).hexdigest(), kind)


# -- 3. configs under the webui's data folder, trusted only when they are what we write ----------------


def test_generated_configs_live_in_the_webui_data_folder(host: Any) -> None:
    distilled(host, "ssd", vae_seed=1)
    host.load_checkpoint("ssd")
    used = Path(host.sd_model.used_config)
    assert used.parent == host.data_dir / "ssd1b" / "configs"  # not <tmp>/sd-webui-ssd1b, shared by all users


def test_a_planted_config_is_replaced_by_ours_before_the_host_reads_it(host: Any) -> None:
    checkpoint = distilled(host, "ssd", vae_seed=1)
    host.load_checkpoint("ssd")
    path = Path(host.sd_model.used_config)
    ours = path.read_bytes()
    path.write_text("model:\n  target: os.system\n  params: {command: 'echo planted'}\n")  # a predictable name
    from modules import sd_models_config

    from extensions_ssd1b.host import checkpoints

    detection = checkpoints.detect_checkpoint_file(str(checkpoint))
    assert config.write_distilled_config(sd_models_config.config_sdxl, detection) == str(path)
    assert path.read_bytes() == ours
    assert not list(path.parent.glob(".*.partial"))  # replaced atomically


# -- 4. a VAE is known by its content ---------------------------------------------------------------


def decide(host: Any, checkpoint: Path) -> VaeDecision | VaeRefusal | None:
    return host_vae.decide_vae(str(checkpoint))


def test_an_sdxl_vae_known_by_its_hash_is_used_whatever_its_name(host: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint = distilled(host, "no-vae")
    known_as(monkeypatch, host.write_vae("vae", vae_weights(host, 3)), VaeKind.SDXL)
    decision = decide(host, checkpoint)
    assert isinstance(decision, VaeDecision), decision
    assert decision.name == "vae.safetensors" and "SDXL VAE (recognised by sha256)" in decision.reason
    from modules import cache

    assert "vae/vae.safetensors" in cache.cache("hashes")  # the host's hash cache keeps it across restarts


def test_a_vae_is_hashed_once_and_only_when_a_decision_needs_it(host: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from modules import hashes

    hashed: list[str] = []
    calculate = hashes.calculate_sha256
    monkeypatch.setattr(hashes, "calculate_sha256", lambda filename: hashed.append(filename) or calculate(filename))
    baked = distilled(host, "baked", vae_seed=3)
    vae_file = host.write_vae("some_vae", vae_weights(host, 4))
    assert isinstance(decide(host, baked), VaeDecision)
    assert hashed == []  # its own VAE, whose fingerprint no installed file shares: nothing to hash

    no_vae = distilled(host, "no-vae")
    for _ in range(3):  # every generation decides again
        decide(host, no_vae)
    assert hashed == [str(vae_file)]


def test_a_baked_in_fp16_fix_is_recognised_through_an_installed_copy(
    host: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    baked = distilled(host, "baked", vae_seed=3)
    known_as(monkeypatch, host.write_vae("my_favourite_vae", vae_weights(host, 3)), VaeKind.FP16_FIX)
    decision = decide(host, baked)
    assert isinstance(decision, VaeDecision)
    assert decision.source is VaeSource.CHECKPOINT and decision.fp16_safe
    assert "sdxl-vae-fp16-fix" in decision.reason


def test_an_sd1_vae_named_xl_is_not_taken_for_sdxl_and_the_refusal_lists_what_was_considered(
    host: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = distilled(host, "no-vae")
    known_as(monkeypatch, host.write_vae("anime_xl_vae", vae_weights(host, 1)), VaeKind.SD1)
    host.write_vae("unnamed", vae_weights(host, 2))
    refusal = decide(host, checkpoint)
    assert isinstance(refusal, VaeRefusal), refusal
    assert "anime_xl_vae.safetensors: SD 1.x VAE (by sha256)" in refusal.message
    assert "unnamed.safetensors: contents not a known VAE" in refusal.message
    assert "Settings → SSD-1B → 'VAE for distilled models'" in refusal.message


def test_the_header_tells_a_vae_of_another_latent_width_but_not_sd1_from_sdxl(tmp_path: Path) -> None:
    def vae_file(name: str, latent: int) -> choice.VaeFile:
        path = tmp_path / name
        tensors = {
            "decoder.conv_in.weight": torch.zeros(8, latent, 3, 3),
            "decoder.mid.block_1.conv1.weight": torch.zeros(8, 8, 3, 3),
        }
        save_file(tensors, str(path))
        return choice.describe_vae_file(name, str(path))

    flux = vae_file("flux_xl_ae.safetensors", 16)  # its name says XL; its header says 16 channels
    assert flux.latent_channels == 16
    assert choice.identify(flux) == choice.Identification(VaeKind.NOT_SDXL, "header")
    four = vae_file("kl_f8.safetensors", 4)  # SD 1.x and SDXL alike: the header cannot tell
    assert four.latent_channels == 4 and choice.identify(four).kind is VaeKind.UNKNOWN


# -- 8. smaller ------------------------------------------------------------------------------------


def test_a_diffusers_folder_changes_version_when_any_part_is_rewritten_in_place(tmp_path: Path) -> None:
    root = write_diffusers_pipeline(tmp_path / "pipe", "ssd-1b", sparse=True)
    unet = next((root / "unet").glob("*.safetensors"))
    before = checkpoint_version(str(unet))
    text_encoder = next((root / "text_encoder_2").glob("*.safetensors"))
    folder_times = {p: os.stat(p).st_mtime_ns for p in (root, text_encoder.parent)}
    stat = os.stat(text_encoder)
    os.utime(text_encoder, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # rewritten in place
    assert {p: os.stat(p).st_mtime_ns for p in folder_times} == folder_times  # no folder tells
    assert checkpoint_version(str(unet)) != before


def test_every_load_prints_its_line_even_when_it_repeats_the_previous_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host = install_fake_webui(monkeypatch, "1.10.1", tmp_path, extensions=[REPO_ROOT])
    distilled(host, "ssd", vae_seed=1)
    from modules import sd_models

    capsys.readouterr()
    for _ in range(2):  # the same checkpoint loaded again (v1.8+: forced_reload)
        sd_models.reload_model_weights(info=host.checkpoint_info("ssd"), forced_reload=True)
    lines = [line for line in capsys.readouterr().out.splitlines() if "building the UNet at its true shape" in line]
    assert len(lines) == 2, lines  # one per load: the host's second config request does not print again


def test_console_prints_a_repeated_record_again(capsys: pytest.CaptureFixture[str]) -> None:
    from extensions_ssd1b.host.console import install_console

    install_console()
    log = logging.getLogger("extensions_ssd1b.host.load")
    log.info("same line")
    log.info("same line")
    assert capsys.readouterr().out == "[SSD-1B] same line\n[SSD-1B] same line\n"


def test_the_badge_route_finds_a_listed_checkpoint_while_refresh_rebuilds_the_list(host: Any) -> None:
    distilled(host, "ssd", vae_seed=1)
    title = host.checkpoint_info("ssd").title
    from modules import sd_models

    sd_models.checkpoints_list.clear()  # what list_models does first, before it walks the folders again
    sd_models.checkpoint_aliases.clear()
    assert ui.inspect_listed_checkpoint(title)["ok"] is True
    assert ui.inspect_listed_checkpoint("ssd.safetensors")["distilled"] is True
    for outside in ("../../ssd.safetensors", "/etc/passwd", "missing.safetensors"):
        with pytest.raises(KeyError):
            ui.inspect_listed_checkpoint(outside)


def test_upper_case_safetensors_is_accepted(tmp_path: Path) -> None:
    root = write_diffusers_pipeline(tmp_path / "pipe", "ssd-1b", sparse=True)
    assert weight_variant(Path("unet/diffusion_pytorch_model.fp16.SAFETENSORS")) == ("diffusion_pytorch_model", "fp16")
    result = convert(root, tmp_path / "OUT.SAFETENSORS", progress=False)
    assert result.destination.is_file()
    assert str(tmp_path) not in json.dumps(read_header(result.destination).metadata)


def test_a_checkpoint_deleted_after_detection_gives_our_one_line_error(host: Any) -> None:
    path = distilled(host, "ssd", vae_seed=1)
    from extensions_ssd1b.host import checkpoints

    checkpoints.detect_checkpoint_file(str(path))  # detected (the badge, the list) …
    path.unlink()  # … then deleted before it is picked
    with pytest.raises(CheckpointError, match=r"ssd\.safetensors"):
        host.load_checkpoint("ssd")

"""Infotext values round-trip through the host's own quoting and parsing rules (v1.6 and v1.7+)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extensions_ssd1b.core import infotext
from extensions_ssd1b.core.infotext import (
    KEY_ARCH,
    KEY_NAN_RECOVERY,
    KEY_VAE,
    KEY_VAE_PRECISION,
    RecoveryNote,
    format_arch,
    format_precision,
    format_recovery,
    format_vae,
    host_parse,
    host_render,
    merge_notes,
    parse_arch,
    parse_precision,
    parse_recovery,
    parse_vae,
    pasted_values,
)

HOST_LINE_START = {"Steps": "20", "Sampler": "DPM++ 2M", "Size": "1024x1024"}

notes = st.builds(
    lambda stage, before, after, step, remembered, count: RecoveryNote(
        stage, before, after if stage == "unet" or after not in infotext.UNET_REMEDIES else "fp32",
        step if stage == "unet" else None, remembered, count,
    ),
    stage=st.sampled_from(infotext.STAGES),
    before=st.sampled_from(infotext.PRECISIONS),
    after=st.sampled_from((*infotext.PRECISIONS, infotext.UNRECOVERED, *infotext.UNET_REMEDIES)),
    step=st.none() | st.integers(0, 10_000),
    remembered=st.booleans(),
    count=st.integers(1, 64),
)  # fmt: skip
vae_names = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40).filter(
    lambda name: name.strip() == name and name != infotext.VAE_FROM_CHECKPOINT and '"' not in name[:1] + name[-1:]
)


def through_host(values: dict[str, str], *, v16: bool = False) -> dict[str, str]:
    """Render as the host writes the infotext, parse as it reads it back, then our paste fix-up."""
    params = host_parse(host_render({**HOST_LINE_START, **values}), v16=v16)
    pasted_values(params)
    return params


@settings(max_examples=200, deadline=None)
@given(name=st.none() | vae_names, precision=st.sampled_from(infotext.PRECISIONS), recorded=st.lists(notes, max_size=5))
def test_everything_round_trips_through_the_host(name, precision, recorded) -> None:
    record = format_recovery(recorded)
    values = {
        KEY_ARCH: format_arch("koala-700m"),
        KEY_VAE: format_vae(name),
        KEY_VAE_PRECISION: format_precision(precision),
        **({KEY_NAN_RECOVERY: record} if record else {}),
    }
    for v16 in (False, True):
        parsed = through_host(values, v16=v16)
        assert parse_arch(parsed[KEY_ARCH]) == "koala-700m"
        assert parsed[KEY_VAE] == ("Automatic" if name is None else name)  # what the setting accepts
        assert parse_precision(parsed[KEY_VAE_PRECISION]) == precision
        assert parse_recovery(parsed.get(KEY_NAN_RECOVERY, "")) == merge_notes(recorded)
        assert parsed["Size-1"] == "1024"  # the host's own keys are left alone


@pytest.mark.parametrize("name", ["sdxl.vae.safetensors", "a, b.safetensors", "c:/x: y.pt", 'ünï "q" v.pt'])
def test_vae_names_that_need_the_hosts_quoting(name: str) -> None:
    parsed = host_parse(host_render({**HOST_LINE_START, KEY_VAE: format_vae(name)}))
    assert parse_vae(parsed[KEY_VAE]) == name


def test_v16_parser_mangles_hyphenated_keys_and_paste_repairs_them() -> None:
    line = host_render({KEY_VAE: "checkpoint", KEY_VAE_PRECISION: "fp16"})
    raw = host_parse(line, v16=True)
    assert set(raw) == {"1B VAE", "1B VAE precision"}  # what v1.6.x's regex makes of "SSD-1B …"
    pasted_values(raw)
    assert raw == {KEY_VAE: "Automatic", KEY_VAE_PRECISION: "fp16"}
    assert host_parse(line) == {KEY_VAE: "checkpoint", KEY_VAE_PRECISION: "fp16"}  # v1.7+ reads them whole


def test_recovery_notes_read_like_sentences_and_merge_repeats() -> None:
    record = [
        RecoveryNote("decode", "fp16", "bf16"),
        RecoveryNote("decode", "fp16", "bf16"),
        RecoveryNote("encode", "fp16", "fp32", remembered=True),
        RecoveryNote("unet", "fp16", "upcast-attention", step=17),
    ]
    text = format_recovery(record)
    assert text == "decode fp16->bf16 x2; encode fp16->fp32 remembered; unet fp16->upcast-attention at step 17"
    assert "," not in text and ":" not in text  # needs no quoting
    assert format_recovery([]) is None  # the host then leaves the key out


def test_bad_values_are_rejected_when_written_and_skipped_when_read() -> None:
    for bad in (
        lambda: RecoveryNote("vae", "fp16", "fp32"),
        lambda: RecoveryNote("decode", "fp8", "fp32"),
        lambda: RecoveryNote("decode", "fp16", "upcast-attention"),
        lambda: RecoveryNote("decode", "fp16", "fp32", step=3),
        lambda: RecoveryNote("unet", "fp16", "fp32", count=0),
        lambda: format_precision("Auto"),
        lambda: format_arch("SSD 1B"),
        lambda: format_vae(" "),
    ):
        with pytest.raises(ValueError):
            bad()
    assert parse_recovery("decode fp16->bf16; garbage; unet fp16->fp32 at step x; encode fp8->fp32") == [
        RecoveryNote("decode", "fp16", "bf16")
    ]
    assert parse_precision("FP32") == "fp32" and parse_precision("Auto") is None and parse_arch("SSD 1B") is None


def test_unreadable_pasted_precision_is_dropped_not_pasted() -> None:
    params = {KEY_VAE_PRECISION: "half", KEY_NAN_RECOVERY: "decode fp16->bf16"}
    pasted_values(params)
    assert params == {KEY_NAN_RECOVERY: "decode fp16->bf16"}

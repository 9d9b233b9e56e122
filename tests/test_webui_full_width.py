"""Webui tier: at full width, the UNets we build from the real sgm compute what diffusers computes.

Each family's random weights are made once and shared (``assign=True``) by both models, so even SDXL
needs one copy of its weights (~10 GiB in fp32) rather than two.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from diffusers_reference import example_inputs, random_state_dict, reference_unet, run_diffusers, run_sgm

from extensions_ssd1b.arch.families import FAMILIES_BY_KEY
from extensions_ssd1b.arch.unet_builder import build_unet

pytestmark = pytest.mark.webui


@pytest.fixture(scope="module")
def real_openaimodel():
    import sys

    sys.path.insert(0, str(Path(os.environ["SD_WEBUI_ROOT"]) / "repositories" / "generative-models"))
    from sgm.modules.diffusionmodules import openaimodel

    assert "fakewebui" not in openaimodel.__file__
    return openaimodel


@pytest.mark.parametrize("family_key", ["sdxl", "ssd-1b", "segmind-vega", "koala-700m", "koala-1b"])
def test_full_width_unet_matches_diffusers(real_openaimodel, family_key):
    layout = FAMILIES_BY_KEY[family_key].layout
    weights = random_state_dict(layout, seed=11)
    with torch.device("meta"):
        unet = build_unet(real_openaimodel, layout)
    unet.load_state_dict(weights, strict=True, assign=True)
    inputs = example_inputs(layout, real_openaimodel.timestep_embedding, seed=2)
    ours = run_sgm(unet.eval(), inputs)
    del unet
    reference = run_diffusers(reference_unet(layout, weights), inputs)
    assert (ours - reference).abs().max().item() <= 1e-4

"""The sgm stand-in under tests/fakewebui behaves like the real sgm the webui ships (webui tier).

Tier-1 tests trust the stand-in; this file is what earns that trust.  Both packages are called
``sgm``, so each is imported on its own and then removed from ``sys.modules`` again; the module
objects keep working afterwards.  Same weights in, same state-dict keys and outputs out.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from diffusers_reference import (
    SDXL_BASE_UNET_PARAMS,
    SDXL_REFINER_UNET_PARAMS,
    example_inputs,
    random_state_dict,
    reduced,
    reduced_stock_params,
    run_sgm,
)

from extensions_ssd1b.arch.families import FAMILIES, FAMILIES_BY_KEY
from extensions_ssd1b.arch.layout import UNetLayout
from extensions_ssd1b.arch.unet_builder import build_unet

pytestmark = pytest.mark.webui

FAKE_WEBUI = Path(__file__).resolve().parent / "fakewebui"

TOLERANCE = 1e-6  # same ops on both sides (bit-equal today); a GroupNorm eps slip (1e-5 vs 1e-6) moves ~1e-5

UTIL = "sgm.modules.diffusionmodules.util"
OPENAIMODEL = "sgm.modules.diffusionmodules.openaimodel"
MODULES = ("sgm.modules.attention", UTIL, OPENAIMODEL)


def _pop_sgm() -> dict[str, ModuleType]:
    return {name: sys.modules.pop(name) for name in list(sys.modules) if name == "sgm" or name.startswith("sgm.")}


def import_sgm(search_path: Path) -> dict[str, ModuleType]:
    """Import sgm's UNet modules from ``search_path`` the normal way, leaving sys.modules as found."""
    outside = _pop_sgm()
    sys.path.insert(0, str(search_path))
    try:
        modules = {name: importlib.import_module(name) for name in MODULES}
    finally:
        sys.path.remove(str(search_path))
        _pop_sgm()
        sys.modules.update(outside)
    origin = Path(modules[MODULES[-1]].__file__).resolve()
    assert origin.is_relative_to(search_path.resolve()), f"sgm came from {origin}, not {search_path}"
    return modules


@pytest.fixture(scope="module")
def real() -> dict[str, ModuleType]:
    # Only reached with SD_WEBUI_ROOT set: conftest skips webui-marked tests otherwise.
    return import_sgm(Path(os.environ["SD_WEBUI_ROOT"]) / "repositories" / "generative-models")


@pytest.fixture(scope="module")
def stand_in() -> dict[str, ModuleType]:
    return import_sgm(FAKE_WEBUI)


def own_callables(module: ModuleType) -> dict[str, object]:
    """Public classes and functions that ``module``'s package defines (not torch's, not typing's)."""
    return {
        name: value
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and getattr(value, "__module__", "").startswith("sgm.")
    }


@pytest.mark.parametrize("name", MODULES)
def test_stand_in_names_and_signatures_are_reals(name, real, stand_in):
    ours, theirs = own_callables(stand_in[name]), vars(real[name])
    assert ours, f"the stand-in's {name} defines nothing"
    for attribute, value in ours.items():
        assert attribute in theirs, f"{name}.{attribute} does not exist in sgm"
        target = theirs[attribute]
        assert inspect.isclass(value) == inspect.isclass(target), f"{name}.{attribute}: class vs function"
        assert inspect.signature(value) == inspect.signature(target), f"{name}.{attribute} signature"
        if inspect.isclass(value) and "forward" in vars(target):
            assert inspect.signature(value.forward) == inspect.signature(target.forward), f"{attribute}.forward"


def assert_same_unet(make_real, make_fake, layout: UNetLayout, seed: int, real_util: ModuleType) -> None:
    """Both UNets (built on meta, then given the same weights) have equal keys and outputs."""
    with torch.device("meta"):
        unets = make_real(), make_fake()
    shapes = [{key: tuple(value.shape) for key, value in unet.state_dict().items()} for unet in unets]
    assert shapes[1] == shapes[0]
    weights = random_state_dict(layout, seed)
    inputs = example_inputs(layout, real_util.timestep_embedding)
    outputs = []
    for unet in unets:
        unet.load_state_dict(weights, strict=True, assign=True)
        outputs.append(run_sgm(unet.eval(), inputs))
    assert outputs[0].std() > 0.1  # a real signal, not a zeroed output that trivially agrees
    assert (outputs[0] - outputs[1]).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize(
    ("key", "params"), [("sdxl", SDXL_BASE_UNET_PARAMS), ("sdxl-refiner", SDXL_REFINER_UNET_PARAMS)]
)
def test_stock_unet_config(key, params, real, stand_in):
    small = reduced_stock_params(params)
    assert_same_unet(
        lambda: real[OPENAIMODEL].UNetModel(**small),
        lambda: stand_in[OPENAIMODEL].UNetModel(**small),
        reduced(FAMILIES_BY_KEY[key].layout),
        seed=3,
        real_util=real[UTIL],
    )


@pytest.mark.parametrize("key", [family.key for family in FAMILIES])
def test_build_unet_per_family(key, real, stand_in):
    layout = reduced(FAMILIES_BY_KEY[key].layout)
    # softmax-xformers is what the stock yaml asks for; without xformers sgm falls back to softmax.
    assert_same_unet(
        lambda: build_unet(real[OPENAIMODEL], layout, attn_type="softmax-xformers"),
        lambda: build_unet(stand_in[OPENAIMODEL], layout, attn_type="softmax-xformers"),
        layout,
        seed=11,
        real_util=real[UTIL],
    )


def test_timestep_embedding_is_reals(real, stand_in):
    t = torch.tensor([0.0, 1.0, 261.0, 999.0, 1344.0])
    for dim in (8, 9, 256, 320):
        assert torch.equal(real[UTIL].timestep_embedding(t, dim), stand_in[UTIL].timestep_embedding(t, dim))
    assert torch.equal(
        real[UTIL].timestep_embedding(t, 4, repeat_only=True),
        stand_in[UTIL].timestep_embedding(t, 4, repeat_only=True),
    )

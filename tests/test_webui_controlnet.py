"""Webui tier: sd-webui-controlnet beside us, on full-size distilled UNets, through ``POST /sdapi/v1/txt2img``.

The extension is an exported copy named in ``$SSD1B_EXTRA_EXTENSIONS`` (never part of this repository); without it
these tests skip.  Its control models are written here with random values in their real key layouts: an SDXL
ControlNet (small), an SDXL T2I-Adapter and an SDXL IP-Adapter (image projection + per-layer ``to_k_ip/to_v_ip``);
the IP-Adapter gets a ready image embedding (``ipadapter_input``) and the others a ready control image with the
preprocessor "none", so that nothing is downloaded.
"""

from __future__ import annotations

import pytest
from controlnet_tier import (
    CONTROLNET,
    IP_ADAPTER,
    T2I,
    check_units,
    pixels_and_info,
    png,
    unit,
)

from extensions_ssd1b.arch.families import FAMILIES_BY_KEY
from extensions_ssd1b.control import mapping
from extensions_ssd1b.host.controlnet import INFOTEXT_IP_ADAPTER, INFOTEXT_RESIDUALS
from extensions_ssd1b.tools.samples import write_sample

pytestmark = [pytest.mark.webui, pytest.mark.controlnet_extension]


CASES = {  # unit models -> refused on these families (the rest must run and change the image)
    (CONTROLNET,): (),
    (T2I,): ("koala-700m",),
    (IP_ADAPTER,): (),
    (CONTROLNET, IP_ADAPTER): (),
}


@pytest.mark.parametrize("models", list(CASES), ids=["+".join(m) for m in CASES])
def test_controlnet_units_on_a_distilled_unet(real_webui, distilled, models):
    infotext = (INFOTEXT_IP_ADAPTER,) if IP_ADAPTER in models else ()
    if CONTROLNET in models and not mapping.residual_map(FAMILIES_BY_KEY[distilled].layout).identity:
        infotext += (INFOTEXT_RESIDUALS,)
    units = [unit(m, seed=n) for n, m in enumerate(models)]
    check_units(real_webui, distilled, units, refused=distilled in CASES[models], infotext=infotext)


def test_img2img_with_two_controlnet_units_on_ssd1b(real_webui, controlnet_ext):
    from modules import sd_models, shared
    from starlette.testclient import TestClient

    path = real_webui.checkpoints_dir / "cn-img2img-ssd-1b.safetensors"
    write_sample(path, "ssd-1b", sparse=False, dtype="F16", seed=12)
    real_webui.refresh()
    sd_models.reload_model_weights(info=sd_models.checkpoint_aliases[path.name])
    shared.opts.set("live_previews_enable", False)
    client = TestClient(real_webui.app())
    body = {
        "prompt": "a lighthouse",
        "steps": 2,
        "width": 64,
        "height": 64,
        "sampler_name": "Euler",
        "seed": 1,
        "init_images": [png(7)],
        "denoising_strength": 0.8,
    }
    plain, _ = pixels_and_info(client.post("/sdapi/v1/img2img", json=body))
    units = [unit(CONTROLNET, seed=0), unit(T2I, seed=1)]
    pixels, _ = pixels_and_info(
        client.post("/sdapi/v1/img2img", json={**body, "alwayson_scripts": {"controlnet": {"args": units}}})
    )
    assert (pixels - plain).abs().max() > 0, "the units did not change the image"
    path.unlink()

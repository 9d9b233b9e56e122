"""Known SDXL-family UNets as a table, matched against a detected layout.

Matching compares the whole layout, so the order of the table only matters for the tie-break
that the uniqueness test proves never happens.  A consistent layout that is in no row is still
built: it is reported as a custom distilled SDXL.
"""

from __future__ import annotations

from dataclasses import dataclass

from .layout import Middle, UNetLayout

CUSTOM_DISTILLED = "custom distilled SDXL"


@dataclass(frozen=True)
class LcmLora:
    """The LCM-LoRA published for a family and the settings its card gives (LCM sampler, low CFG)."""

    lora: str  # where it is published
    steps: tuple[int, int]
    cfg: tuple[float, float]


@dataclass(frozen=True)
class Recommended:
    """Generation settings the model's authors suggest."""

    resolution: int
    steps: tuple[int, int]
    cfg: tuple[float, float]
    lcm: LcmLora | None = None  # None: no LCM-LoRA was published for this layout


@dataclass(frozen=True)
class Family:
    key: str  # stable identifier (config file names, infotext, JSON)
    name: str  # what users read
    layout: UNetLayout
    distilled: bool
    recommended: Recommended


# The cards of latent-consistency/lcm-lora-sdxl, lcm-lora-ssd-1b and segmind/Segmind-VegaRT: 2-8 steps with the
# LCM scheduler, guidance off or 1.0-2.0.
SDXL_RECOMMENDED = Recommended(
    resolution=1024, steps=(25, 40), cfg=(5.0, 9.0), lcm=LcmLora("latent-consistency/lcm-lora-sdxl", (2, 8), (1.0, 2.0))
)

FAMILIES: tuple[Family, ...] = (
    Family(
        "sdxl",
        "SDXL",
        UNetLayout(((0, 0), (2, 2), (10, 10)), ((10, 10, 10), (2, 2, 2), (0, 0, 0)), Middle.FULL, 10),
        distilled=False,
        recommended=SDXL_RECOMMENDED,
    ),
    Family(
        "sdxl-refiner",
        "SDXL refiner",
        UNetLayout(
            ((0, 0), (4, 4), (4, 4), (0, 0)),
            ((0, 0, 0), (4, 4, 4), (4, 4, 4), (0, 0, 0)),
            Middle.FULL,
            4,
            model_channels=384,
            channel_mult=(1, 2, 4, 4),
            context_dim=1280,
            adm_in_channels=2560,
        ),
        distilled=False,
        recommended=Recommended(resolution=1024, steps=(10, 20), cfg=(5.0, 9.0)),
    ),
    Family(
        "ssd-1b",
        "SSD-1B",
        UNetLayout(((0, 0), (2, 2), (4, 4)), ((4, 4, 10), (2, 1, 1), (0, 0, 0)), Middle.RES_ONLY),
        distilled=True,
        recommended=Recommended(
            resolution=1024,
            steps=(20, 30),
            cfg=(7.0, 9.0),
            lcm=LcmLora("latent-consistency/lcm-lora-ssd-1b", (2, 8), (1.0, 2.0)),
        ),
    ),
    Family(
        "segmind-vega",
        "Segmind-Vega",
        UNetLayout(((0, 0), (1, 1), (2, 2)), ((2, 2, 2), (1, 1, 1), (0, 0, 0)), Middle.RES_ONLY),
        distilled=True,
        recommended=Recommended(
            resolution=1024, steps=(25, 40), cfg=(7.0, 9.0), lcm=LcmLora("segmind/Segmind-VegaRT", (2, 8), (1.0, 2.0))
        ),
    ),
    Family(
        "koala-700m",
        "KOALA-700M",
        UNetLayout(((0,), (2,), (5,)), ((5, 5), (2, 2), (0, 0)), Middle.NONE),
        distilled=True,
        recommended=Recommended(resolution=1024, steps=(25, 25), cfg=(3.0, 7.5)),
    ),
    Family(
        "koala-1b",
        "KOALA-1B",
        UNetLayout(((0,), (2,), (6,)), ((6, 6), (2, 2), (0, 0)), Middle.FULL, 6),
        distilled=True,
        recommended=Recommended(resolution=1024, steps=(25, 25), cfg=(3.0, 7.5)),
    ),
)

FAMILIES_BY_KEY = {family.key: family for family in FAMILIES}


def match_family(layout: UNetLayout) -> Family | None:
    """The table row whose layout equals ``layout`` in every field, or None."""
    for family in FAMILIES:
        if family.layout == layout:
            return family
    return None


def family_name(layout: UNetLayout) -> str:
    """The family's display name, or "custom distilled SDXL" for a layout no row matches."""
    family = match_family(layout)
    return family.name if family else CUSTOM_DISTILLED


def is_distilled(layout: UNetLayout) -> bool:
    """True for every SDXL-family layout the stock host cannot build (anything but SDXL/refiner)."""
    family = match_family(layout)
    return family.distilled if family else True

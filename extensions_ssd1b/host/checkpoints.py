"""What a checkpoint file the webui names is: its detection, cached per file version, and its diffusers folder.

Every step of a load (pre-flight, config, VAE choice, badge) asks about the same file; the header
(or, for a diffusers folder's UNet file, the folder's headers) is read once per version of it.
"""

from __future__ import annotations

import os

from ..arch.detect import Detection, detect
from ..arch.layout import parameter_count
from ..core.errors import LayoutError, NotSdxlFamily
from ..diffusers.folder import checkpoint_version, pipeline_root
from ..diffusers.pipeline import PipelineCheckpoint, plan_pipeline
from ..io.cache import per_file_version
from ..io.header import read_header


@per_file_version(maxsize=16, version=checkpoint_version)
def _pipeline(path: str) -> PipelineCheckpoint:
    return plan_pipeline(path)


@per_file_version(maxsize=64, version=checkpoint_version)
def _detection(path: str) -> Detection:
    if pipeline_root(path) is not None:
        return detect(_pipeline(path).shapes())
    return detect(read_header(path).shapes())


def pipeline_of(path: str | os.PathLike[str]) -> PipelineCheckpoint | None:
    """The diffusers folder that loading ``path`` means, or None for an ordinary file (cached)."""
    if pipeline_root(path) is None:
        return None
    try:
        return _pipeline(path)
    except NotSdxlFamily:  # an SD1/SD2 diffusers folder: the host's business, as before
        return None


def detect_checkpoint_file(path: str | os.PathLike[str]) -> Detection:
    """Detection from the safetensors header (or, for a diffusers folder's UNet file, from the
    whole folder's headers); cached per file version so that a load reads them once."""
    try:
        return _detection(path)
    except (LayoutError, NotSdxlFamily) as error:
        error.path = str(path)  # type: ignore[attr-defined]
        raise


def describe(detection: Detection) -> str:
    """The console's words for a detection: "SSD-1B (1.33 B UNet, middle block: res)"."""
    layout = detection.layout
    billions = parameter_count(layout) / 1e9
    parts = [f"{detection.family_name} ({billions:.2f} B UNet, middle block: {layout.middle.value})"]
    missing = [name for name, has in (("VAE", detection.components.vae),) if not has]
    if missing:
        parts.append("no " + ", ".join(missing))
    return ", ".join(parts)


def display_name(checkpoint_file: str) -> str:
    """What messages call a checkpoint: its file name, or its diffusers folder."""
    pipeline = pipeline_of(checkpoint_file)
    return f"the diffusers folder {pipeline.root.name}" if pipeline else os.path.basename(checkpoint_file)


def model_file(model: object) -> str | None:
    """The checkpoint file a loaded model came from (None when the host does not say)."""
    return getattr(getattr(model, "sd_checkpoint_info", None), "filename", None)

"""A diffusers SDXL pipeline folder loaded in place: its UNet weight file stands for the folder.

Picking ``<folder>/unet/diffusion_pytorch_model.safetensors`` in the webui loads the whole folder:
the same plan as ``python -m extensions_ssd1b convert`` (:mod:`.plan`), built tensor by tensor as
a state dict in memory instead of a file.  The folder is only read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..arch.detect import VAE_PREFIX
from ..arch.layout import Shape
from ..core.errors import CheckpointError, LayoutError
from ..io.dtypes import BY_VARIANT
from ..io.read import TensorFiles
from .folder import pipeline_root, weight_variant
from .plan import ConvertError, MissingComponents, Plan, plan_conversion

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class PipelineCheckpoint:
    """What loading ``unet_file`` reads: the whole folder's conversion plan."""

    unet_file: Path
    root: Path
    plan: Plan

    def shapes(self) -> dict[str, Shape]:
        """The assembled state dict's names and shapes (LDM names, as in a single file)."""
        return {planned.name: planned.shape for planned in self.plan.tensors}

    def vae_file(self) -> Path:
        return next(p.pieces[0].header.path for p in self.plan.tensors if p.name.startswith(VAE_PREFIX))


def plan_pipeline(unet_file: str | os.PathLike[str]) -> PipelineCheckpoint:
    """The plan for loading the folder ``unet_file`` belongs to, from headers only.

    Raises :class:`CheckpointError` naming ``unet_file`` when the folder cannot make a checkpoint
    (a part missing, a shard missing, shapes that do not fit together).
    """
    unet_file = Path(unet_file)
    root = pipeline_root(unet_file)
    if root is None:
        raise CheckpointError(unet_file, "is not the UNet of a diffusers folder")
    named = weight_variant(unet_file)
    assert named is not None  # pipeline_root checked it
    variant = named[1]
    # Every part is read in the picked file's variant; a part without it falls back to the variant
    # of this dtype (fp16 for a plain UNet), then to its plain files.
    dtype = BY_VARIANT.get(variant, "F16")
    try:
        plan = plan_conversion(root, None, dtype, variant)
    except MissingComponents as error:
        lacking = ", ".join(error.missing)
        raise CheckpointError(unet_file, f"the diffusers folder {root} has no {lacking}, which A1111 needs") from None
    except (ConvertError, LayoutError, CheckpointError) as error:
        raise CheckpointError(unet_file, f"the diffusers folder it belongs to cannot be loaded: {error}") from None
    if not any(os.path.samefile(unet_file, source) for source in plan.sources):
        raise CheckpointError(unet_file, f"is not a complete UNet weight set of {root}/unet (a stray file?)")
    return PipelineCheckpoint(unet_file, root, plan)


def load_state_dict(pipeline: PipelineCheckpoint, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The folder as one LDM-named state dict, in the sources' dtypes, on ``device``.

    Each tensor is read once; only OpenCLIP's joined q/k/v and its transposed projection are new
    tensors (their sources are dropped right away), so memory is what loading a single file takes.
    """
    import torch

    state: dict[str, torch.Tensor] = {}
    with TensorFiles(device) as files:
        for planned in pipeline.plan.tensors:
            parts = [files.get(piece.header.path, piece.name) for piece in planned.pieces]
            tensor = parts[0] if len(parts) == 1 else torch.cat(parts)
            if planned.transpose:
                tensor = tensor.t().contiguous()
            # diffusers' VAE attention is Linear where LDM has 1×1 convolutions: same values, new view.
            state[planned.name] = tensor.reshape(planned.shape)
    return state

"""A diffusers SDXL pipeline folder loaded in place: its UNet weight file stands for the folder.

A1111 lists every ``.safetensors`` under ``models/Stable-diffusion``, folders included, so a
diffusers folder copied there shows up as ``<folder>/unet/diffusion_pytorch_model.safetensors``.
Picking that file loads the whole folder: the same plan as ``python -m extensions_ssd1b convert``
(the UNet renamed to LDM names, CLIP-L as it is, OpenCLIP's q/k/v joined and its projection
transposed, the VAE renamed), built tensor by tensor as a state dict in memory instead of a file.
The folder is only read.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .components import DIFFUSERS_PARTS, is_diffusers_folder, weight_variant
from .detect import VAE_PREFIX
from .errors import CheckpointError, LayoutError
from .layout import Shape

if TYPE_CHECKING:
    import torch

    from .convert import Plan

UNET_STEM = dict(DIFFUSERS_PARTS)["unet"]
_DTYPE_OF_VARIANT = {"fp16": "F16", "bf16": "BF16", "fp32": "F32"}


def pipeline_root(path: str | os.PathLike[str]) -> Path | None:
    """The diffusers folder whose ``unet/`` weight file ``path`` is; None for any other file."""
    path = Path(path)
    named = weight_variant(path)
    if named is None or named[0] != UNET_STEM or path.parent.name != "unet":
        return None
    root = path.parent.parent
    return root if is_diffusers_folder(root) else None


def component_folder(path: str | os.PathLike[str]) -> tuple[Path, str] | None:
    """(folder, part) when ``path`` is the text encoder or VAE weights of a diffusers folder."""
    path = Path(path)
    named = weight_variant(path)
    stems = dict(DIFFUSERS_PARTS)
    part = path.parent.name
    if named is None or part == "unet" or stems.get(part) != named[0] or not is_diffusers_folder(path.parent.parent):
        return None
    return path.parent.parent, part


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
    from .convert import ConvertError, MissingComponents, plan_conversion  # numpy: only when really planned

    unet_file = Path(unet_file)
    root = pipeline_root(unet_file)
    if root is None:
        raise CheckpointError(unet_file, "is not the UNet of a diffusers folder")
    named = weight_variant(unet_file)
    assert named is not None  # pipeline_root checked it
    variant = named[1]
    # Every part is read in the picked file's variant; a part without it falls back to the variant
    # of this dtype (fp16 for a plain UNet), then to its plain files.
    dtype = _DTYPE_OF_VARIANT.get(variant, "F16")
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
    from safetensors import safe_open

    state: dict[str, torch.Tensor] = {}
    with contextlib.ExitStack() as stack:
        files: dict[Path, object] = {}

        def read(path: Path, name: str) -> torch.Tensor:
            if path not in files:
                files[path] = stack.enter_context(safe_open(str(path), framework="pt", device=device))
            return files[path].get_tensor(name)  # type: ignore[attr-defined]

        for planned in pipeline.plan.tensors:
            parts = [read(piece.header.path, piece.name) for piece in planned.pieces]
            tensor = parts[0] if len(parts) == 1 else torch.cat(parts)
            if planned.transpose:
                tensor = tensor.t().contiguous()
            # diffusers' VAE attention is Linear where LDM has 1×1 convolutions: same values, new view.
            state[planned.name] = tensor.reshape(planned.shape)
    return state

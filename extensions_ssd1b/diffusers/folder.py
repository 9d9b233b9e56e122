"""Where a diffusers SDXL folder keeps its parts, which weight files make up each part, and whose file a path is.

A1111 lists every ``.safetensors`` under ``models/Stable-diffusion``, folders included, so a diffusers
folder copied there shows up as ``<folder>/unet/diffusion_pytorch_model.safetensors``: that file
stands for the whole folder (:func:`pipeline_root`), and the folder's other weight files are parts
of it (:func:`component_folder`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..core.errors import CheckpointError
from ..io.cache import file_version
from ..io.dtypes import DTYPES
from ..io.header import is_safetensors_name

FORM_DIFFUSERS_FOLDER = "diffusers-folder"  # how inspect and the badge name this form of checkpoint

# The parts of a diffusers SDXL folder and the stem of their weight files.
DIFFUSERS_PARTS = (
    ("unet", "diffusion_pytorch_model"),
    ("text_encoder", "model"),
    ("text_encoder_2", "model"),
    ("vae", "diffusion_pytorch_model"),
)

_WEIGHT_FILE = re.compile(r"^(?P<stem>[A-Za-z_]+)(?P<rest>(?:[.-][\w-]+)*)\.(?i:safetensors)$")
_SHARD = re.compile(r"-(\d{5})-of-(\d{5})")


def is_diffusers_folder(path: Path) -> bool:
    """A diffusers SDXL pipeline folder (``model_index.json`` or a second text encoder beside ``unet/``)."""
    return (path / "unet").is_dir() and ((path / "model_index.json").is_file() or (path / "text_encoder_2").is_dir())


def _safetensors_files(folder: Path) -> list[Path]:
    """The folder's .safetensors files (any case of the suffix), sorted; none for a missing folder."""
    return sorted(path for path in folder.iterdir() if is_safetensors_name(path)) if folder.is_dir() else []


def weight_variant(path: Path) -> tuple[str, str] | None:
    """(stem, variant) of a diffusers weight file: ``unet/diffusion_pytorch_model.fp16-00001-of-00002``
    is ("diffusion_pytorch_model", "fp16"); None for a name diffusers does not write."""
    m = _WEIGHT_FILE.match(path.name)
    return (m.group("stem"), _SHARD.sub("", m.group("rest")).strip(".")) if m else None


def weight_files(folder: Path, stem: str, dtype: str, variant: str | None = None) -> list[Path]:
    """The safetensors weights of one diffusers component folder: one variant, all its shards.

    ``variant`` ("fp16", "" for none …) is taken when the folder has it; otherwise the one that
    matches ``dtype``, else the plain one."""
    groups: dict[str, list[Path]] = {}
    for path in _safetensors_files(folder):
        named = weight_variant(path)
        if named is None or named[0] != stem:
            continue
        groups.setdefault(named[1], []).append(path)
    if not groups:
        pickles = sorted(p.name for p in folder.glob("*.bin"))
        hint = f" (only {', '.join(pickles)}: pickle files are not read, they can run code)" if pickles else ""
        raise CheckpointError(folder, f"no {stem}*.safetensors weights{hint}")
    preferred = "" if dtype == "F32" else DTYPES[dtype].variant  # diffusers writes fp32 as the plain files
    if variant not in groups:
        variant = preferred if preferred in groups else "" if "" in groups else sorted(groups)[0]
    files = groups[variant]
    counts = {int(m.group(2)) for f in files if (m := _SHARD.search(f.name))}
    if counts and (len(counts) != 1 or len(files) != counts.pop()):
        raise CheckpointError(folder, f"the {stem} shards are incomplete ({len(files)} files found)")
    return files


UNET_STEM = dict(DIFFUSERS_PARTS)["unet"]


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


def checkpoint_version(path: str) -> tuple[object, ...]:
    """What changes when the checkpoint at ``path`` does: the file's version, and for a diffusers folder's
    UNet file the version of every weight file of its parts (one rewritten in place, added or removed)."""
    version: tuple[object, ...] = file_version(path)
    if (root := pipeline_root(path)) is not None:
        try:
            files = [file for part, _ in DIFFUSERS_PARTS for file in _safetensors_files(root / part)]
        except OSError as error:  # a part folder removed or unreadable while we look
            raise CheckpointError(root, f"cannot be read: {error.strerror or error}") from None
        version += tuple((str(file.relative_to(root)), *file_version(file)) for file in files)
    return version

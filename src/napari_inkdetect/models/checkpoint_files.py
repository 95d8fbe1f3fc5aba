"""From a checkpoint file to a state dict under our key names, safely and without a model.

Three kinds of file are recognised from their content alone:

- ``pretrained_encoder``: Kinetics-pretrained 3D ResNets / ResNeXt
  (``torch.load(f)["state_dict"]``, keys ``conv1.*``, ``layer1..4.*``, ``fc.*``, maybe
  ``module.``-prefixed), renamed to ``encoder.*``.
- ``ink_model``: trained ink models (``torch.load(f)["model"]``, keys ``encoder.*`` and
  ``decoder.*``), e.g. the Kaggle ink-detection 4th-place folds.
- ``napari_inkdetect``: our own ``.safetensors`` files, whose header carries a
  :class:`~napari_inkdetect.models.checkpoint_info.CheckpointInfo`.

Torch files are only ever opened with ``torch.load(weights_only=True)``, so a pickle that would
run code is refused, never executed. :func:`infer_architecture` names the registry
architecture of a state dict from its block counts and shapes.
"""

from __future__ import annotations

import pickle
import re
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from napari_inkdetect.errors import CheckpointError
from napari_inkdetect.models.checkpoint_info import (
    KIND_INK_MODEL,
    KIND_NAPARI_INKDETECT,
    KIND_PRETRAINED_ENCODER,
    METADATA_KEY,
    CheckpointInfo,
    info_from_metadata,
)
from napari_inkdetect.models.resnet3d import ENCODER_SPECS

__all__ = [
    "CheckpointContents",
    "infer_architecture",
    "read_checkpoint_info",
    "read_checkpoint_metadata",
    "read_contents",
]

# Containers seen in the wild, in the order they are tried.
_CONTAINER_KEYS = ("model", "state_dict", "model_state_dict", "module", "net")
# Prefixes added by nn.DataParallel / DistributedDataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_STAGE_KEY = re.compile(r"^encoder\.layer([1-4])\.(\d+)\.")


@dataclass
class CheckpointContents:
    """The tensors of a file under ``encoder.*``/``decoder.*`` names, and where they came from."""

    state: dict[str, torch.Tensor]
    kind: str
    container: str | None
    stripped_prefix: str
    info: CheckpointInfo | None


def read_contents(path: Path) -> CheckpointContents:
    """Read any supported checkpoint file (see the module docstring) into our key names.

    Raises
    ------
    CheckpointError
        For a missing, corrupt, unsafe or unrecognised file, naming it.
    """
    _check_exists(path)
    info = None
    if _is_safetensors(path):
        raw, metadata = _read_safetensors(path)
        container = None
        if METADATA_KEY in metadata:
            info = info_from_metadata(path, metadata[METADATA_KEY])
    else:
        raw, container = _extract_state_dict(path, _torch_load(path))
    state, prefix = _strip_prefixes(raw)
    kind, state = _classify(path, state)
    if info is not None:
        kind = KIND_NAPARI_INKDETECT
    return CheckpointContents(state, kind, container, prefix, info)


# --------------------------------------------------------------------------- reading files


def _is_safetensors(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < n <= path.stat().st_size - 8


def _check_exists(path: Path) -> None:
    """Refuse a path that is missing or not a file, with the package's error."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: is not a file")


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``, with the package's errors."""
    try:
        return torch.load(
            path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)
        )
    except pickle.UnpicklingError as exc:
        found = re.findall(r"GLOBAL (\S+)", str(exc))
        if not found:  # not a forbidden import: the pickle itself is broken
            raise CheckpointError(
                f"{path}: corrupt or not a checkpoint (unreadable pickle)"
            ) from None
        raise CheckpointError(
            f"{path}: refused: unpickling it needs code execution ({found[0]}), which could run "
            "arbitrary code; if you trust its source, re-save it as weights only "
            "(torch.save(state_dict) of plain tensors) and load that"
        ) from None
    except (
        RuntimeError, EOFError, KeyError, ValueError, OSError, SafetensorError, IndexError,
        TypeError, AttributeError,
    ) as exc:  # fmt: skip
        # torch >= 2.13 hands some files to safetensors itself, whose errors come through too;
        # a damaged pickle stream makes the unpickler itself fail in many ways
        reason = str(exc).split(". ")[0] or type(exc).__name__
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({reason})") from None


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        return load_file(str(path), device="cpu"), metadata
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({exc})") from None


def _header_metadata(path: Path) -> dict[str, str]:
    """The metadata of a safetensors header (no tensor is read)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt safetensors file ({exc})") from None


def read_checkpoint_metadata(path: str | Path) -> dict[str, Any]:
    """The :class:`CheckpointInfo` of one of our files, as a dict, without reading weights."""
    path = Path(path)
    _check_exists(path)
    if not _is_safetensors(path):
        raise CheckpointError(
            f"{path}: not a napari-inkdetect checkpoint (no safetensors header); "
            "use load_checkpoint for .pth files"
        )
    metadata = _header_metadata(path)
    if METADATA_KEY not in metadata:
        raise CheckpointError(f"{path}: safetensors file without {METADATA_KEY} metadata")
    return info_from_metadata(path, metadata[METADATA_KEY]).to_dict()


def read_checkpoint_info(path: str | Path) -> CheckpointInfo | None:
    """The :class:`CheckpointInfo` of one of our files from its header alone (cheap: no
    weights, no model); ``None`` for any other checkpoint (``.pth`` files are never opened
    beyond their first bytes, so nothing is unpickled).

    Raises
    ------
    CheckpointError
        For a missing file, a corrupt safetensors header or unreadable metadata of ours.
    """
    path = Path(path)
    _check_exists(path)
    if not _is_safetensors(path):
        return None
    metadata = _header_metadata(path)
    if METADATA_KEY not in metadata:
        return None
    return info_from_metadata(path, metadata[METADATA_KEY])


# --------------------------------------------------------------------------- foreign layouts


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _extract_state_dict(path: Path, obj: Any) -> tuple[dict[str, torch.Tensor], str | None]:
    if _is_state_dict(obj):
        return dict(obj), None
    if isinstance(obj, Mapping):
        for key in _CONTAINER_KEYS:
            if key in obj and _is_state_dict(obj[key]):
                return dict(obj[key]), key
        found = ", ".join(map(str, list(obj)[:8]))
        raise CheckpointError(f"{path}: unrecognised layout: no state dict among keys {found}")
    raise CheckpointError(f"{path}: unrecognised layout: holds a {type(obj).__name__}")


def _strip_prefixes(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Remove wrapper prefixes (``module.``, ``_orig_mod.``) shared by every key."""
    stripped = ""
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                stripped += prefix
                changed = True
    return state, stripped


def _classify(path: Path, state: dict[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
    """The file kind, and its state dict with ``encoder.``/``decoder.`` key names."""
    if any(k.startswith("encoder.layer") for k in state):
        return KIND_INK_MODEL, state
    if "conv1.weight" in state and any(k.startswith("layer1.") for k in state):
        return KIND_PRETRAINED_ENCODER, {f"encoder.{k}": v for k, v in state.items()}
    sample = ", ".join(list(state)[:3])
    raise CheckpointError(
        f"{path}: unrecognised layout: expected 3D ResNet keys (conv1, layer1..4) or "
        f"encoder/decoder keys, found {sample}, ..."
    )


def infer_architecture(state: Mapping[str, torch.Tensor]) -> tuple[str, float]:
    """``(arch, width)`` of an ``encoder.*`` state dict, from its block counts and shapes.

    Raises
    ------
    CheckpointError
        When no registry architecture has these stages and block type.
    """
    stages = [0, 0, 0, 0]
    for key in state:
        m = _STAGE_KEY.match(key)
        if m:
            stage = int(m.group(1)) - 1
            stages[stage] = max(stages[stage], int(m.group(2)) + 1)
    conv1 = state.get("encoder.conv1.weight")
    if conv1 is None or not all(stages):
        raise CheckpointError(f"encoder with stages {stages} and no complete stem")
    conv3 = state.get("encoder.layer1.0.conv3.weight")
    if conv1.dim() < 2 or (conv3 is not None and conv3.dim() < 2):
        raise CheckpointError(f"convolution weights of shape {tuple(conv1.shape)}")
    if conv3 is None:
        block = "basic"
    else:
        block = "resnext" if conv3.shape[0] == 2 * conv3.shape[1] else "bottleneck"
    width = conv1.shape[0] / 64
    for name, spec in ENCODER_SPECS.items():
        if spec.block_name == block and list(spec.stages) == stages:
            return name, width
    raise CheckpointError(f"no architecture has {block} blocks with stages {stages}")

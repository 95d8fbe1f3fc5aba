"""Loading the checkpoints users already hold, and saving our own safe checkpoint format.

:func:`load_checkpoint` recognises, from the file's content alone, Kinetics-pretrained
encoders (``pretrained_encoder``), trained ink models such as the Kaggle ink-detection
4th-place folds (``ink_model``) and our own ``.safetensors`` files written by
:func:`save_checkpoint` (``napari_inkdetect``), whose metadata (:class:`CheckpointInfo`) says
how to use the weights again. Architecture and width are inferred from the tensor shapes when
not given (or read from our metadata). Every problem raises
:class:`~napari_inkdetect.errors.CheckpointError` with a one-line message naming the file.

The work is done one job per module, all re-exported here: metadata in
:mod:`~napari_inkdetect.models.checkpoint_info`, reading files and foreign layouts in
:mod:`~napari_inkdetect.models.checkpoint_files`, matching tensors to a model in
:mod:`~napari_inkdetect.models.checkpoint_loading`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from napari_inkdetect.errors import ConfigError
from napari_inkdetect.io.atomic import atomic_path
from napari_inkdetect.models.checkpoint_files import (
    infer_architecture,
    read_checkpoint_info,
    read_checkpoint_metadata,
)
from napari_inkdetect.models.checkpoint_info import (
    DEFAULT_NORMALISATION,
    FORMAT_VERSION,
    KIND_INK_MODEL,
    KIND_NAPARI_INKDETECT,
    KIND_PRETRAINED_ENCODER,
    METADATA_KEY,
    CheckpointInfo,
    info_for_saving,
    info_to_json,
    recommended_threshold,
)
from napari_inkdetect.models.checkpoint_loading import LoadReport, load_model
from napari_inkdetect.models.detector import InkDetector, unwrap_model

__all__ = [
    "DEFAULT_NORMALISATION",
    "FORMAT_VERSION",
    "KIND_INK_MODEL",
    "KIND_NAPARI_INKDETECT",
    "KIND_PRETRAINED_ENCODER",
    "METADATA_KEY",
    "CheckpointInfo",
    "LoadReport",
    "infer_architecture",
    "load_checkpoint",
    "read_checkpoint_info",
    "read_checkpoint_metadata",
    "recommended_threshold",
    "save_checkpoint",
]


def load_checkpoint(
    path: str | Path,
    arch: str | None = None,
    width: float | None = None,
    *,
    device: str | torch.device = "cpu",
    require_complete: bool = False,
) -> tuple[InkDetector, LoadReport]:
    """Build the model a checkpoint file describes and load its weights.

    Parameters
    ----------
    path
        A Kinetics-pretrained encoder, a trained ink model (``.pth``) or our ``.safetensors``.
    arch, width
        The architecture; inferred from the file (metadata or tensor shapes) when omitted.
    device
        Where to build the model (``"meta"`` checks a file without allocating the model).
    require_complete
        Refuse files that leave part of the model (e.g. the decoder) randomly initialised.

    Returns
    -------
    model, report
        The model in eval mode (``model.info`` set) and what was loaded, initialised, ignored.
    """
    return load_model(
        InkDetector, path, arch, width, device=device, require_complete=require_complete
    )


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    info: CheckpointInfo | None = None,
    **metadata: Any,
) -> Path:
    """Write ``model`` and its metadata atomically as a ``.safetensors`` file.

    Parameters
    ----------
    path
        Destination; a crash never leaves a partial file there.
    model
        An :class:`InkDetector` (also inside ``torch.compile``).
    info
        Base metadata; defaults to ``model.info`` (set when the model was loaded).
    **metadata
        :class:`CheckpointInfo` fields to set (``in_layers``, ``tile_size``, ``scale``,
        ``normalisation``, ``provenance``, ...); unknown keys are stored too.
    """
    module = unwrap_model(model)
    if not isinstance(module, InkDetector):
        raise ConfigError(f"can only save an InkDetector, not a {type(module).__name__}")
    base = info or module.info or CheckpointInfo(arch=module.arch)
    own = {"arch": module.arch, "width": module.width, "in_chans": module.in_chans}
    text = info_to_json(info_for_saving(base, {**own, **metadata}))
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: text, "format": "pt"})
    return path

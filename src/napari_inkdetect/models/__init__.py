"""The model family: 3D ResNet/ResNeXt encoders + depth pooling + 2D decoder, and checkpoints.

Public API (stable)::

    from napari_inkdetect.models import InkDetector, load_checkpoint, save_checkpoint

    model = InkDetector(arch="resnet10", width=0.125)            # any registry name, any width
    model, report = load_checkpoint("r3d152_KM_200ep.pth")       # arch/width inferred
    save_checkpoint("run/best.safetensors", model, provenance={"steps": 1000})
    model = InkDetector.from_checkpoint("run/best.safetensors")  # no other input needed

Speed options (see :mod:`napari_inkdetect.models.detector`): :func:`autocast_context`,
:func:`to_channels_last_3d` / :func:`channels_last_input`,
:meth:`InkDetector.set_activation_checkpointing`, :func:`maybe_compile`, or all of them via
:class:`SpeedOptions`. Architectures: :func:`list_models`, :func:`get_model_info`,
:func:`model_table`.

Layers, each importing only those below it (``tests/models/test_import_graph.py`` checks it):
``checkpoint_info`` (metadata, a leaf), ``resnet3d`` (encoder table and the one name check,
``canonical_name``) and ``decoder``; ``checkpoint_files`` (files and foreign layouts);
``checkpoint_loading``; ``detector``; ``checkpoints`` (load/save); ``registry`` (the zoo).
"""

from napari_inkdetect.models.checkpoint_files import infer_architecture, read_checkpoint_metadata
from napari_inkdetect.models.checkpoint_info import (
    DEFAULT_NORMALISATION,
    FORMAT_VERSION,
    CheckpointInfo,
)
from napari_inkdetect.models.checkpoint_loading import LoadReport
from napari_inkdetect.models.checkpoints import load_checkpoint, save_checkpoint
from napari_inkdetect.models.detector import (
    InkDetector,
    SpeedOptions,
    autocast_context,
    channels_last_input,
    maybe_compile,
    to_channels_last_3d,
    unwrap_model,
)
from napari_inkdetect.models.registry import (
    ModelInfo,
    get_model,
    get_model_info,
    list_models,
    model_table,
)

__all__ = [
    "DEFAULT_NORMALISATION",
    "FORMAT_VERSION",
    "CheckpointInfo",
    "InkDetector",
    "LoadReport",
    "ModelInfo",
    "SpeedOptions",
    "autocast_context",
    "channels_last_input",
    "get_model",
    "get_model_info",
    "infer_architecture",
    "list_models",
    "load_checkpoint",
    "maybe_compile",
    "model_table",
    "read_checkpoint_metadata",
    "save_checkpoint",
    "to_channels_last_3d",
    "unwrap_model",
]

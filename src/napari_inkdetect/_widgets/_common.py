"""What every dock does the same way: keep the real viewer, find the chosen layer, show an error.

The layer metadata keys are :mod:`napari_inkdetect._napari_layers`'s (``SEGMENT_KEY``, ...);
this module holds only what the docks add on top of them.
"""

from __future__ import annotations

from typing import Any

from napari.utils import notifications
from qtpy.QtWidgets import QComboBox, QLabel

CHECKPOINT_FILTER = "Checkpoints (*.safetensors *.pt *.pth *.ckpt *.bin);;All files (*)"


def unwrap_viewer(napari_viewer: Any) -> Any:
    """The viewer itself: napari hands plugins a PublicOnlyProxy whose layers are new proxies
    on every access, and the docks compare layers by identity."""
    return getattr(napari_viewer, "__wrapped__", napari_viewer)


def chosen_layer(viewer: Any, combo: QComboBox) -> Any:
    """The layer named by ``combo``'s current text, or ``None`` when there is none."""
    name = combo.currentText()
    return next((layer for layer in viewer.layers if layer.name == name), None)


def show_error(message: str, status: QLabel | None = None) -> None:
    """Tell the user: a napari notification, and ``Error: ...`` in the dock's status line."""
    if status is not None:
        status.setText(f"Error: {message}")
    notifications.show_error(message)

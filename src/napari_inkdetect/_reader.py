"""npe2 reader: drag and drop a segment folder, a multi-page TIFF or a zarr onto napari."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from napari_inkdetect._napari_layers import (
    PREDICTION,
    LayerData,
    prediction_layers,
    segment_layers,
)
from napari_inkdetect.io.prediction_store import is_prediction
from napari_inkdetect.io.segment import detect_layout, open_segment
from napari_inkdetect.io.sources import inspect_tiff


def get_reader(path: str | list[str]) -> Callable[[str], list[LayerData]] | None:
    """Our reader for surface-volume layouts; None for anything else (napari asks others)."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    if is_prediction(Path(path)):
        return read_prediction
    layout = detect_layout(Path(path))
    if layout is None:
        return None
    if layout == "multipage-tiff" and not _has_several_pages(Path(path)):
        return None  # a single 2-D image: napari's built-in reader is the right one
    return read_segment


def read_segment(path: str | list[str]) -> list[LayerData]:
    """Open lazily and describe layers (each with its role: volume, mask, train, ...);
    errors are our one-line InkDetectErrors."""
    if isinstance(path, list):
        path = path[0]
    return segment_layers(open_segment(path))


def read_prediction(path: str | list[str]) -> list[LayerData]:
    """A prediction restored as overlay layers (role ``prediction``: Export offers it),
    placed on its segment's depth axis."""
    if isinstance(path, list):
        path = path[0]
    return prediction_layers(path, role=PREDICTION)


def _has_several_pages(path: Path) -> bool:
    try:
        return len(inspect_tiff(path)) > 1
    except Exception:  # unreadable: let napari's own readers try and report
        return False

"""npe2 reader: drag and drop a segment folder, a multi-page TIFF or a zarr onto napari."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from napari_inkdetect._napari_layers import LayerData, segment_layers
from napari_inkdetect.io.segment import detect_layout, open_segment
from napari_inkdetect.io.sources import inspect_tiff


def get_reader(path: str | list[str]) -> Callable[[str], list[LayerData]] | None:
    """Our reader for surface-volume layouts; None for anything else (napari asks others)."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    layout = detect_layout(Path(path))
    if layout is None:
        return None
    if layout == "multipage-tiff" and not _has_several_pages(Path(path)):
        return None  # a single 2-D image: napari's built-in reader is the right one
    return read_segment


def read_segment(path: str | list[str]) -> list[LayerData]:
    """Open lazily and describe layers; errors are our one-line InkDetectErrors."""
    if isinstance(path, list):
        path = path[0]
    return segment_layers(open_segment(path))


def _has_several_pages(path: Path) -> bool:
    try:
        return len(inspect_tiff(path)) > 1
    except Exception:  # unreadable: let napari's own readers try and report
        return False

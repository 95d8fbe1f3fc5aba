"""Segments as napari layer-data tuples: the one place that decides how layers look.

Shared by the reader and the sample data, so an opened segment and the sample look the same.
Plain data only (no napari import), so it stays cheap and testable.
"""

from __future__ import annotations

from typing import Any

from napari_inkdetect.io.labels import INK, NOT_INK
from napari_inkdetect.io.pyramid import build_pyramid
from napari_inkdetect.io.segment import Segment, read_segment_labels

PYRAMID_ABOVE = 4096  # px; wider volumes get lazy multiscale levels
PYRAMID_COARSEST = 1024  # px; the coarsest level's larger side is at most this
LABEL_COLORS = {0: "transparent", INK: "#ff2a2a", NOT_INK: "#2ad4ff", None: "#ffdd00"}
MASK_COLORS = {0: "transparent", 1: "#ffffff", None: "#ffffff"}

LayerData = tuple[Any, dict[str, Any], str]


def segment_layers(segment: Segment) -> list[LayerData]:
    """The volume (lazy, multiscale when large), then mask and labels found beside it."""
    meta = {
        "inkdetect_segment": str(segment.path),
        "segment_id": segment.segment_id,
        "layout": segment.layout,
        "voxel_size_um": segment.voxel_size_um,
        "reversed": segment.reversed,
    }
    multiscale = max(segment.shape[1:]) > PYRAMID_ABOVE
    data = build_pyramid(segment, min_size=PYRAMID_COARSEST) if multiscale else segment.volume
    name = segment.segment_id + (" (reversed)" if segment.reversed else "")
    layers: list[LayerData] = [
        (
            data,
            {
                "name": name,
                "multiscale": multiscale,
                "contrast_limits": segment.contrast_limits(),
                "colormap": "gray",
                "axis_labels": ("layer", "y", "x"),
                "metadata": meta,
            },
            "image",
        )
    ]
    mask = segment.read_mask()
    if mask is not None:
        layers.append(
            (
                mask.astype("uint8"),
                {
                    "name": f"{segment.segment_id} mask",
                    "opacity": 0.15,
                    "visible": False,
                    "colormap": MASK_COLORS,
                    "metadata": {**meta, "source": str(segment.mask_path)},
                },
                "labels",
            )
        )
    for name, path in _label_files(segment):
        layers.append(
            (
                read_segment_labels(segment, path),
                labels_kwargs(f"{segment.segment_id} {name}", {**meta, "source": str(path)}),
                "labels",
            )
        )
    return layers


def labels_kwargs(name: str, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """How ink labels look everywhere: red ink, cyan not-ink, half transparent."""
    return {
        "name": name,
        "opacity": 0.5,
        "colormap": LABEL_COLORS,
        "axis_labels": ("y", "x"),
        "metadata": metadata or {},
    }


def _label_files(segment: Segment) -> list[tuple[str, Any]]:
    files = [("inklabels", segment.inklabels_path)] if segment.inklabels_path else []
    return files + [(n.replace("_", " "), p) for n, p in sorted(segment.other_labels.items())]

"""Segments as napari layer-data tuples: the one place that decides how layers look.

Shared by the reader and the sample data, so an opened segment and the sample look the same.
Plain data only (no napari import), so it stays cheap and testable.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from napari_inkdetect.io.labels import INK, NOT_INK
from napari_inkdetect.io.pyramid import build_pyramid
from napari_inkdetect.io.segment import Segment, read_segment_labels

PYRAMID_ABOVE = 4096  # px; wider volumes get lazy multiscale levels
PYRAMID_COARSEST = 1024  # px; the coarsest level's larger side is at most this
LABEL_COLORS = {0: "transparent", INK: "#ff2a2a", NOT_INK: "#2ad4ff", None: "#ffdd00"}
MASK_COLORS = {0: "transparent", 1: "#ffffff", None: "#ffffff"}

LayerData = tuple[Any, dict[str, Any], str]

PREDICTION_KEY = "inkdetect_prediction"  # layer metadata: the prediction's zarr path
#: transparent below p ~ 0.4, then orange to bright yellow: papyrus stays visible, ink stands out
INK_COLORMAP = {
    "name": "inkdetect-ink",
    "colors": [[0, 0, 0, 0], [1.0, 0.2, 0.0, 0.2], [1.0, 0.55, 0.0, 0.85], [1.0, 1.0, 0.3, 1]],
    "controls": [0.0, 0.45, 0.7, 1.0],
}
DERIVED_KEY = "inkdetect_derived"  # layer metadata: computed from a prediction, not painted
DEPTH_CONVENTION = "depth slider = first layer of the model's window"


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


def is_derived(layer: Any) -> bool:
    """A layer we computed (e.g. the threshold outline): never offered as labels to train on."""
    return bool(getattr(layer, "metadata", {}).get(DERIVED_KEY))


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


def prediction_placement(
    start_layers: list[int] | tuple[int, ...],
    region: list[int] | tuple[int, ...],
    volume_scale: tuple[float, ...] = (1.0, 1.0, 1.0),
    volume_translate: tuple[float, ...] = (0.0, 0.0, 0.0),
) -> dict[str, tuple[float, ...]]:
    """``scale``/``translate`` that put plane ``i`` of a ``(n_start, H, W)`` prediction on the
    volume's depth axis at ``start_layers[i]`` (the window's first layer) and its pixel (0, 0)
    on volume pixel ``region[:2]``; start layers must be evenly spaced."""
    step = start_layers[1] - start_layers[0] if len(start_layers) > 1 else 1
    if any(b - a != step for a, b in itertools.pairwise(start_layers)) or step < 1:
        raise ValueError(f"start layers {list(start_layers)} are not evenly spaced")
    sz, sy, sx = (float(v) for v in volume_scale[-3:])
    tz, ty, tx = (float(v) for v in volume_translate[-3:])
    return {
        "scale": (sz * step, sy, sx),
        "translate": (tz + sz * start_layers[0], ty + sy * region[0], tx + sx * region[1]),
    }


def prediction_layers(
    path: str | Path,
    volume_scale: tuple[float, ...] = (1.0, 1.0, 1.0),
    volume_translate: tuple[float, ...] = (0.0, 0.0, 0.0),
    max_projection: bool = True,
) -> list[LayerData]:
    """A prediction zarr as overlay layers, read from disk (so a refresh shows new chunks):
    the per-start-layer probabilities on the depth axis, and their max over start layers."""
    import dask.array as da

    from napari_inkdetect.inference import open_overviews, open_prediction, prediction_threshold

    prob, prov = open_prediction(path)
    levels = open_overviews(path)  # large outputs: overview levels written by the engine
    starts, layers = list(prov["start_layers"]), int(prov["window_length"])
    place = prediction_placement(starts, prov["region"], volume_scale, volume_translate)
    limits = (0.0, 255.0) if prob.dtype == "uint8" else (0.0, 1.0)
    name = f"{prov['segment_id']} ink {Path(path).name.split('.')[0]}"
    meta = {
        PREDICTION_KEY: str(path),
        "convention": f"{DEPTH_CONVENTION}: plane i = layers [s, s + {layers}) with s = start "
        "layer i",
        "start_layers": starts,
        "window_length": layers,
        "region": list(prov["region"]),
        "checkpoint": prov.get("checkpoint"),
        "threshold": prediction_threshold(prov),  # calibrated on the checkpoint's validation
    }
    look = {"colormap": INK_COLORMAP, "blending": "translucent", "contrast_limits": limits}
    multiscale = len(levels) > 1
    out: list[LayerData] = [
        (
            levels if multiscale else prob,
            {
                "name": f"{name} (z = window start, {layers} layers)",
                "multiscale": multiscale,
                "axis_labels": ("layer", "y", "x"),
                "metadata": meta,
                **place,
                **look,
            },
            "image",
        )
    ]
    if max_projection:
        peaks = [da.from_zarr(level).max(axis=0) for level in levels]
        out.append(
            (
                peaks if multiscale else peaks[0],
                {
                    "name": f"{name} max over starts",
                    "multiscale": multiscale,
                    "scale": place["scale"][1:],
                    "translate": place["translate"][1:],
                    "metadata": {**meta, "projection": "max over start layers"},
                    "visible": False,
                    **look,
                },
                "image",
            )
        )
    return out

"""Segments as napari layer-data tuples: the one place that decides how layers look.

Shared by the reader and the sample data, so an opened segment and the sample look the same.
Plain data only (napari is imported only to show a notification), so it stays cheap and
testable.

The volume napari shows reads its files while the user browses, long after the segment was
opened: the folder may be deleted or renamed, a network drive may go away, a layer file may be
truncated. napari would raise at every slider move (a traceback each time), so the shown
volume (:class:`ShownSource` over each level) gives black for a block it cannot read and
reports the problem once per segment and kind of problem (:class:`ReadProblems`). Engines and
estimates read the strict volume (:func:`strict_data`), so they never compute on that black.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from napari_inkdetect.errors import InkDetectError
from napari_inkdetect.io.labels import INK, NOT_INK
from napari_inkdetect.io.pyramid import build_pyramid
from napari_inkdetect.io.segment import Segment, read_segment_labels
from napari_inkdetect.windows import window_centre

PYRAMID_ABOVE = 4096  # px; wider volumes get lazy multiscale levels
PYRAMID_COARSEST = 1024  # px; the coarsest level's larger side is at most this
LABEL_COLORS = {0: "transparent", INK: "#ff2a2a", NOT_INK: "#2ad4ff", None: "#ffdd00"}
MASK_COLORS = {0: "transparent", 1: "#ffffff", None: "#ffffff"}

LayerData = tuple[Any, dict[str, Any], str]

SEGMENT_KEY = "inkdetect_segment"  # layer metadata: the segment on disk it belongs to
PREDICTION_KEY = "inkdetect_prediction"  # layer metadata: the prediction's zarr path
#: transparent below p ~ 0.4, then orange to bright yellow: papyrus stays visible, ink stands out
INK_COLORMAP = {
    "name": "inkdetect-ink",
    "colors": [[0, 0, 0, 0], [1.0, 0.2, 0.0, 0.2], [1.0, 0.55, 0.0, 0.85], [1.0, 1.0, 0.3, 1]],
    "controls": [0.0, 0.45, 0.7, 1.0],
}
DERIVED_KEY = "inkdetect_derived"  # layer metadata: computed from a prediction, not painted
DEPTH_CONVENTION = "depth slider = centre layer of the model's window"

#: Layer metadata: what a layer the plugin made is for, so the docks choose by role, not by
#: name or arrival order (a mask that arrives first must never become the training labels).
ROLE_KEY = "inkdetect_role"
VOLUME, MASK, TRAIN, VALIDATION, TRUTH = "volume", "mask", "train", "validation", "truth"
PREDICTION, PREVIEW, UNCERTAINTY = "prediction", "preview", "uncertainty"
DENSE_BOXES = "dense_boxes"  # a Shapes layer of dense boxes (see the labels dock)
ROLES = (VOLUME, MASK, TRAIN, VALIDATION, TRUTH, PREDICTION, PREVIEW, UNCERTAINTY, DENSE_BOXES)
#: Labels roles that are answer keys or papyrus, never labels to train on
NOT_TRAINABLE = (MASK, TRUTH, PREDICTION, PREVIEW, UNCERTAINTY)
#: Name parts that mark a user's own (role-less) layer as a mask or an answer key
NOT_TRAINABLE_NAMES = ("mask", "truth")


def notify_error(message: str) -> None:
    """A napari error notification (imported here: only the viewer ever calls this)."""
    from napari.utils.notifications import show_error

    show_error(message)


class ReadProblems:
    """The read failures of one shown segment, each kind reported once (not at every slider
    move): ``notify`` gets one line saying what happened and what to do."""

    def __init__(self, segment: Segment, notify: Callable[[str], None] = notify_error) -> None:
        self.path, self.segment_id, self.notify = segment.path, segment.segment_id, notify
        self.seen: list[InkDetectError] = []
        self._kinds: set[str] = set()
        self._lock = threading.Lock()  # napari reads blocks in dask's threads

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    def report(self, exc: InkDetectError) -> None:
        """Note ``exc``; notify when it is the first problem of its kind."""
        with self._lock:
            self.seen.append(exc)
            kind = type(exc).__name__
            if kind in self._kinds:
                return
            self._kinds.add(kind)
        detail = " ".join(str(exc).split())
        self.notify(
            f"Segment {self.segment_id} can no longer be read: {detail}. The view shows black "
            f"where it cannot read; check that {self.path} is still there (a network drive "
            "may have gone away), then close the layer and reopen the segment."
        )


class ShownSource:
    """One level of the shown volume: blocks of the strict ``array``, or zeros (reported to
    ``problems``) where the files cannot be read. Blocks that failed are not cached anywhere
    below, so the next read tries the files again (a drive that came back is read)."""

    def __init__(self, array: da.Array, problems: ReadProblems) -> None:
        self.array, self.problems = array, problems
        self.shape, self.dtype, self.ndim = tuple(array.shape), array.dtype, array.ndim

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        try:
            return np.asarray(self.array[key].compute(scheduler="synchronous"))
        except InkDetectError as exc:
            self.problems.report(exc)
            return np.zeros(_block_shape(key, self.shape), self.dtype)


_STRICT: weakref.WeakValueDictionary[str, da.Array] = weakref.WeakValueDictionary()


def shown(array: da.Array, problems: ReadProblems) -> da.Array:
    """``array`` as napari shows it: same chunks, black (and one report) where unreadable."""
    out = da.from_array(
        ShownSource(array, problems),
        chunks=array.chunks,
        name=f"inkdetect-shown-{array.name}",
        asarray=False,
        fancy=False,
        lock=False,
        meta=np.empty((0,) * array.ndim, array.dtype),
    )
    _STRICT[out.name] = array
    return out


def strict_data(data: Any) -> Any:
    """The volume under a shown one (reads that fail raise); anything else as it is."""
    return _STRICT.get(getattr(data, "name", None), data) if isinstance(data, da.Array) else data


def _block_shape(key: tuple[Any, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    key = key + (slice(None),) * (len(shape) - len(key))
    return tuple(
        len(range(*k.indices(n))) for k, n in zip(key, shape, strict=True) if isinstance(k, slice)
    )


def segment_layers(
    segment: Segment, notify: Callable[[str], None] = notify_error
) -> list[LayerData]:
    """The volume (lazy, multiscale when large), then mask and labels found beside it.
    ``notify`` hears, once per kind of problem, that the volume's files cannot be read."""
    meta = {
        SEGMENT_KEY: str(segment.path),
        "segment_id": segment.segment_id,
        "layout": segment.layout,
        "voxel_size_um": segment.voxel_size_um,
        "reversed": segment.reversed,
    }
    multiscale = max(segment.shape[1:]) > PYRAMID_ABOVE
    levels = build_pyramid(segment, min_size=PYRAMID_COARSEST) if multiscale else [segment.volume]
    problems = ReadProblems(segment, notify)
    data = [shown(level, problems) for level in levels]
    data = data if multiscale else data[0]
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
                "metadata": {**meta, ROLE_KEY: VOLUME},
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
                    "metadata": {**meta, "source": str(segment.mask_path), ROLE_KEY: MASK},
                },
                "labels",
            )
        )
    for name, path, role in _label_files(segment):
        source = {**meta, "source": str(path), ROLE_KEY: role}
        layers.append(
            (
                read_segment_labels(segment, path),
                labels_kwargs(f"{segment.segment_id} {name}", source),
                "labels",
            )
        )
    return layers


def is_derived(layer: Any) -> bool:
    """A layer we computed (e.g. the threshold outline): never offered as labels to train on."""
    return bool(getattr(layer, "metadata", {}).get(DERIVED_KEY))


def layer_role(layer: Any) -> str | None:
    """The role the plugin recorded for ``layer`` (one of :data:`ROLES`); None for a layer the
    user made or another plugin opened."""
    role = (getattr(layer, "metadata", None) or {}).get(ROLE_KEY)
    return role if role in ROLES else None


def is_trainable(layer: Any) -> bool:
    """Whether a Labels layer may be offered as training or validation labels: not derived,
    not a mask, truth or prediction by role, and (without a role) not named like one."""
    if is_derived(layer):
        return False
    role = layer_role(layer)
    if role is not None:
        return role not in NOT_TRAINABLE
    name = str(getattr(layer, "name", "")).lower()
    return not any(part in name for part in NOT_TRAINABLE_NAMES)


def names_with_role(layers: Any, role: str, segment: str | None = None) -> list[str]:
    """Names of the layers with ``role``, those of ``segment`` (a path) first, else in the
    layer list's order."""
    found = [ly for ly in layers if layer_role(ly) == role]
    found.sort(key=lambda ly: segment is None or ly.metadata.get(SEGMENT_KEY) != segment)
    return [ly.name for ly in found]


def labels_role_from_name(name: str) -> str:
    """The role of a labels file or layer by its name: mask, truth, validation, else train
    (what a user paints and saves is for training unless its name says otherwise)."""
    name = name.lower().replace("-", "_").replace(" ", "_")
    if "mask" in name:
        return MASK
    if "truth" in name:
        return TRUTH
    parts = name.split(".")[0].split("_")
    if "validation" in name or "val" in parts:
        return VALIDATION
    return TRAIN


def labels_kwargs(name: str, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """How ink labels look everywhere: red ink, cyan not-ink, half transparent."""
    return {
        "name": name,
        "opacity": 0.5,
        "colormap": LABEL_COLORS,
        "axis_labels": ("y", "x"),
        "metadata": metadata or {},
    }


def _label_files(segment: Segment) -> list[tuple[str, Any, str]]:
    """``(name, path, role)`` of the labels beside a segment. ``inklabels`` are the labels to
    train on (a Kaggle fragment's, a villa pair the user saved) unless training labels of
    their own lie beside them: then they are the dense answer key (truth)."""
    others = [
        (n.replace("_", " "), p, labels_role_from_name(n))
        for n, p in sorted(segment.other_labels.items())
    ]
    if segment.inklabels_path is None:
        return others
    ink_role = TRUTH if any(role == TRAIN for _, _, role in others) else TRAIN
    return [("inklabels", segment.inklabels_path, ink_role), *others]


def prediction_placement(
    start_layers: list[int] | tuple[int, ...],
    region: list[int] | tuple[int, ...],
    volume_scale: tuple[float, ...] = (1.0, 1.0, 1.0),
    volume_translate: tuple[float, ...] = (0.0, 0.0, 0.0),
    *,
    window_length: int,
) -> dict[str, tuple[float, ...]]:
    """``scale``/``translate`` that put plane ``i`` of a ``(n_start, H, W)`` prediction on the
    volume's depth axis at its window's centre ``start_layers[i] + window_length // 2`` (where
    the depth slider shows it, :func:`~napari_inkdetect.windows.window_centre`) and its pixel
    (0, 0) on volume pixel ``region[:2]``; start layers must be evenly spaced."""
    step = start_layers[1] - start_layers[0] if len(start_layers) > 1 else 1
    if any(b - a != step for a, b in itertools.pairwise(start_layers)) or step < 1:
        raise ValueError(f"start layers {list(start_layers)} are not evenly spaced")
    sz, sy, sx = (float(v) for v in volume_scale[-3:])
    tz, ty, tx = (float(v) for v in volume_translate[-3:])
    first = window_centre(start_layers[0], window_length)
    return {
        "scale": (sz * step, sy, sx),
        "translate": (tz + sz * first, ty + sy * region[0], tx + sx * region[1]),
    }


def prediction_layers(
    path: str | Path,
    volume_scale: tuple[float, ...] = (1.0, 1.0, 1.0),
    volume_translate: tuple[float, ...] = (0.0, 0.0, 0.0),
    max_projection: bool = True,
    role: str = PREDICTION,
) -> list[LayerData]:
    """A prediction zarr as overlay layers, read from disk (so a refresh shows new chunks):
    the per-start-layer probabilities on the depth axis, and their max over start layers.
    ``role``: :data:`PREDICTION`, or :data:`PREVIEW` for the live preview while training."""
    import dask.array as da

    from napari_inkdetect.io.prediction_store import (
        open_overviews,
        open_prediction,
        prediction_threshold,
    )

    prob, prov = open_prediction(path)
    levels = open_overviews(path)  # large outputs: overview levels written by the engine
    starts, layers = list(prov["start_layers"]), int(prov["window_length"])
    centres = [window_centre(s, layers) for s in starts]  # also for zarrs that predate them
    place = prediction_placement(
        starts, prov["region"], volume_scale, volume_translate, window_length=layers
    )
    limits = (0.0, 255.0) if prob.dtype == "uint8" else (0.0, 1.0)
    name = f"{prov['segment_id']} ink {Path(path).name.split('.')[0]}"
    meta = {
        PREDICTION_KEY: str(path),
        "convention": f"{DEPTH_CONVENTION}: plane i = layers [s, s + {layers}) with s = start "
        f"layer i, shown at layer s + {layers // 2}",
        "start_layers": starts,
        "centre_layers": centres,
        "window_length": layers,
        "region": list(prov["region"]),
        "checkpoint": prov.get("checkpoint"),
        "threshold": prediction_threshold(prov),  # calibrated on the checkpoint's validation
        ROLE_KEY: role,
    }
    look = {"colormap": INK_COLORMAP, "blending": "translucent", "contrast_limits": limits}
    multiscale = len(levels) > 1
    out: list[LayerData] = [
        (
            levels if multiscale else prob,
            {
                "name": f"{name} (z = window centre, {layers} layers)",
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

"""Prediction over a region of a segment: sliding windows, blended, streamed to a zarr array.

``predict(config, stop)`` is one generator of typed events (:class:`PredictStarted`,
:class:`BatchDone` per model batch, :class:`ChunkDone` per written output chunk,
:class:`PredictFinished`), drained by the CLI, tests and the dock alike.

Design
------
- *Output*: a zarr group with ``prob`` (``(n_start, H, W)`` over the region, uint8 = p x 255 or
  float16; index ``i`` is the window ``[start_layers[i], start_layers[i] + layers)``, centred on
  layer ``centre_layers[i] = start_layers[i] + layers // 2``: see
  :mod:`napari_inkdetect.windows`), ``done`` (one flag per output chunk, each its own
  uncompressed zarr chunk) and provenance attributes.
- *Chunks*: the region is cut into ``chunk`` x ``chunk`` volume pixels (a multiple of the
  stride). Each chunk blends every tile of the global grid that overlaps it (its halo) in a
  chunk-local accumulator, is written once, then flagged done. Blending inside a chunk sees
  the same tiles as a global blend would, so chunk borders are seamless; memory is bounded
  by the chunk, never the region. A rerun skips flagged chunks (resume), and
  :func:`predict_chunk` computes one chunk from plain arguments (a future dask task).
- *Depth*: for several start layers, each tile position's layers ``min(start) .. max(start) +
  layers`` are read once and all of its windows go through the model together.
- *Pipeline*: a prefetch thread reads and normalises the next batches into a bounded queue
  while the model runs; the main thread runs the model and blends.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import math
import queue
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_inkdetect.devices import resolve_device
from napari_inkdetect.errors import CheckpointError, ConfigError, InkDetectError
from napari_inkdetect.io.atomic import make_folder, unwritable
from napari_inkdetect.io.locks import OutputLock, check_unlocked
from napari_inkdetect.io.segment import Segment, open_segment
from napari_inkdetect.models import SpeedOptions, load_checkpoint
from napari_inkdetect.models.checkpoints import recommended_threshold
from napari_inkdetect.models.detector import resolve_autocast_dtype
from napari_inkdetect.windows import (
    WindowSpec,
    blend_weight,
    read_raw,
    to_model_input,
    to_volume_pixels,
    window_centre,
    window_start,
)

__all__ = [
    "BatchDone",
    "ChunkDone",
    "PredictConfig",
    "PredictFinished",
    "PredictJob",
    "PredictStarted",
    "export_prediction",
    "open_job",
    "open_overviews",
    "open_prediction",
    "pending_chunks",
    "predict",
    "predict_chunk",
    "prediction_threshold",
    "prepare_output",
    "run_prediction",
]

ATTRS_KEY = "napari_inkdetect"
PROB, DONE = "prob", "done"
#: overview levels ``prob_<f>`` (f = 2, 4, ...) are written while the coarsest level's larger
#: side is above this, so a viewer never reads a whole full-resolution plane to zoom out
LEVELS_ABOVE = 2048
_DTYPES = ("uint8", "float16")
_DIRECTIONS = ("auto", "forward", "reverse")


# --------------------------------------------------------------------------- config


def parse_start_layers(value: Any) -> tuple[int, ...] | None:
    """``None``, an int, a list/range of ints, ``"a:b[:step]"`` or ``"a,b,c"`` -> a tuple
    (``ConfigError`` for anything else: start layers and window centres alike)."""
    if value is None:
        return None
    try:
        if isinstance(value, str):
            text = value.strip()
            if ":" in text:
                parts = [int(p) for p in text.split(":")]
                return tuple(range(*parts))
            return tuple(int(p) for p in text.split(",") if p.strip())
        if isinstance(value, int | np.integer):
            return (int(value),)
        return tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"layers {value!r}: expected A:B[:STEP], A,B,C or one layer (integers)"
        ) from None


@dataclass(frozen=True)
class PredictConfig:
    """One prediction run, as plain data (JSON-able through :meth:`to_dict`).

    ``region`` is ``(y0, x0, y1, x1)`` in volume pixels (default: the mask's bounding box, or
    the whole image); ``tile`` and ``stride`` are model pixels (defaults: the checkpoint's tile,
    half of it); ``chunk`` is the output chunk side in volume pixels (default: about 8 tiles,
    rounded to the stride); ``layers``/``scale`` override what the checkpoint says;
    ``depth_direction`` ``"auto"`` follows the checkpoint's ``depth_reverse``.
    ``start_layers`` or, instead, ``centre_layers`` choose the windows (the window centred on
    ``c`` starts at ``c - layers // 2``); neither: the checkpoint's window, else the centred one.
    """

    segment: str
    checkpoint: str
    out: str
    region: tuple[int, int, int, int] | None = None
    start_layers: tuple[int, ...] | None = None
    centre_layers: tuple[int, ...] | None = None
    tile: int | None = None
    stride: int | None = None
    layers: int | None = None
    scale: float | None = None
    batch_size: int = 8
    device: str = "auto"
    autocast: str = "auto"
    channels_last: bool | None = None  # None: on CUDA only (no gain on CPUs)
    tta_flips: bool = False
    tta_rot90: bool = False
    depth_direction: str = "auto"
    segment_reverse: bool = False
    dtype: str = "uint8"
    chunk: int | None = None
    prefetch: int = 2
    overwrite: bool = False

    def __post_init__(self) -> None:
        set_ = functools.partial(object.__setattr__, self)
        set_("segment", str(self.segment))
        set_("checkpoint", str(self.checkpoint))
        set_("out", str(self.out))
        set_("start_layers", parse_start_layers(self.start_layers))
        set_("centre_layers", parse_start_layers(self.centre_layers))
        if self.start_layers is not None and self.centre_layers is not None:
            raise ConfigError("give start layers or window centres, not both")
        if self.region is not None:
            if len(self.region) != 4:
                raise ConfigError(f"region {self.region}: expected (y0, x0, y1, x1)")
            set_("region", tuple(int(v) for v in self.region))
        if self.dtype not in _DTYPES:
            raise ConfigError(f"output dtype {self.dtype!r}: use uint8 or float16")
        if self.depth_direction not in _DIRECTIONS:
            raise ConfigError(
                f"depth_direction {self.depth_direction!r}: use auto/forward/reverse"
            )
        if self.batch_size < 1 or self.prefetch < 1:
            raise ConfigError("batch_size and prefetch must be >= 1")
        if self.start_layers is not None and not self.start_layers:
            raise ConfigError("start_layers is empty")
        if self.centre_layers is not None and not self.centre_layers:
            raise ConfigError("centre_layers is empty")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (tuples as lists)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PredictConfig:
        """Inverse of :meth:`to_dict`; unknown keys are refused (a typo would be silent)."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown prediction settings: {', '.join(sorted(unknown))}")
        return cls(**data)

    def with_(self, **changes: Any) -> PredictConfig:
        """A copy with some settings changed."""
        return replace(self, **changes)


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class PredictStarted:
    """Set up; ``total_tiles`` counts model inputs (positions x start layers x TTA) still to
    run, ``shape`` is the output ``(n_start, H, W)`` whose pixel (0, 0) is volume
    ``(region[0], region[1])``."""

    path: Path
    shape: tuple[int, int, int]
    region: tuple[int, int, int, int]
    start_layers: tuple[int, ...]
    total_tiles: int
    total_chunks: int
    done_chunks: int
    device: str
    dtype: str


@dataclass(frozen=True)
class BatchDone:
    """One model batch finished (progress; the place where ``stop`` is honoured)."""

    done: int
    total: int
    tiles_per_s: float
    eta_s: float


@dataclass(frozen=True)
class ChunkDone:
    """An output chunk is on disk: ``array`` (n_start, h, w) in the stored dtype sits at
    ``[:, y0:y0+h, x0:x0+w]`` of the output (region coordinates)."""

    index: tuple[int, int]
    y0: int
    x0: int
    array: np.ndarray = field(repr=False)
    done: int
    total: int
    tiles_per_s: float


@dataclass(frozen=True)
class PredictFinished:
    """The run ended (all chunks, or ``stopped`` early with finished chunks kept)."""

    path: Path
    seconds: float
    tiles_per_s: float
    tiles: int
    stopped: bool = False


# --------------------------------------------------------------------------- the plan


@dataclass
class PredictJob:
    """Everything resolved from a config: data, model, geometry, work list."""

    config: PredictConfig
    segment: Segment
    model: torch.nn.Module
    info: dict[str, Any]
    checkpoint_sha256: str
    device: torch.device
    speed: SpeedOptions
    spec: WindowSpec
    start_layers: tuple[int, ...]
    region: tuple[int, int, int, int]
    reverse: bool
    stride: int  # volume px
    chunk: int  # volume px
    tiles: np.ndarray  # (Ky, Kx) bool: tile position touches the mask
    region_mask: np.ndarray | None  # (H, W) bool papyrus mask of the region; output 0 outside
    weight: np.ndarray  # (e, e) float32 blending weight
    transforms: tuple[tuple[int, bool], ...]  # TTA: (rot90 k, flip W)

    @property
    def shape(self) -> tuple[int, int, int]:
        y0, x0, y1, x1 = self.region
        return (len(self.start_layers), y1 - y0, x1 - x0)

    @property
    def chunk_grid(self) -> tuple[int, int]:
        _, h, w = self.shape
        return math.ceil(h / self.chunk), math.ceil(w / self.chunk)

    def chunk_box(self, cy: int, cx: int) -> tuple[int, int, int, int]:
        """``(y0, x0, y1, x1)`` of a chunk in region coordinates."""
        _, h, w = self.shape
        c = self.chunk
        return cy * c, cx * c, min(h, (cy + 1) * c), min(w, (cx + 1) * c)

    def chunk_tiles(self, cy: int, cx: int) -> list[tuple[int, int]]:
        """Grid positions ``(ky, kx)`` of kept tiles overlapping a chunk (with its halo)."""
        y0, x0, y1, x1 = self.chunk_box(cy, cx)
        ys = _overlapping(y0, y1, self.stride, self.spec.extent, self.tiles.shape[0])
        xs = _overlapping(x0, x1, self.stride, self.spec.extent, self.tiles.shape[1])
        return [(ky, kx) for ky in ys for kx in xs if self.tiles[ky, kx]]

    @property
    def windows_per_tile(self) -> int:
        return len(self.start_layers) * len(self.transforms)

    def fingerprint(self) -> dict[str, Any]:
        """What determines the result: a resume must match it."""
        spec = self.spec
        return _jsonable(
            {
                "segment_shape": self.segment.shape,
                "segment_id": self.segment.segment_id,
                "segment_reverse": self.config.segment_reverse,
                "checkpoint_sha256": self.checkpoint_sha256,
                "start_layers": self.start_layers,
                "region": self.region,
                "layers": spec.layers,
                "tile": spec.tile,
                "scale": spec.scale,
                "depth_scale": spec.depth_scale,
                "normalisation": spec.normalisation.to_dict(),
                "depth_reverse": self.reverse,
                "stride": self.stride,
                "chunk": self.chunk,
                "tta": [list(t) for t in self.transforms],
                "dtype": self.config.dtype,
            }
        )


def _overlapping(c0: int, c1: int, stride: int, extent: int, count: int) -> range:
    """Grid indices k (tile ``[k*stride, k*stride+extent)``) overlapping ``[c0, c1)``."""
    first = max(0, (c0 - extent) // stride + 1)
    last = min(count - 1, (c1 - 1) // stride)
    return range(first, last + 1)


def _grid_count(size: int, extent: int, stride: int) -> int:
    """Tile positions along one axis so that the last tile reaches the region's end."""
    return 1 + max(0, math.ceil((size - extent) / stride))


def _tta_transforms(flips: bool, rot90: bool) -> tuple[tuple[int, bool], ...]:
    if flips and rot90:
        return tuple((k, f) for k in range(4) for f in (False, True))
    if rot90:
        return tuple((k, False) for k in range(4))
    if flips:
        return ((0, False), (0, True), (2, True), (2, False))
    return ((0, False),)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _jsonable(value: Any) -> Any:
    return json.loads(
        json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v))
    )


def _resolve_spec(config: PredictConfig, info: Any) -> WindowSpec:
    base = WindowSpec.from_checkpoint_info(info)
    changes = {
        k: v
        for k, v in (("tile", config.tile), ("layers", config.layers), ("scale", config.scale))
        if v is not None
    }
    return replace(base, **changes) if changes else base


def _resolve_start_layers(
    config: PredictConfig, info: Any, spec: WindowSpec, depth: int
) -> tuple[int, ...]:
    """The start layers to predict: given, from window centres, the checkpoint's, or the
    window centred in the volume; each window must read layers inside the volume."""
    n, off = spec.source_layers, spec.source_offset
    starts = config.start_layers
    if config.centre_layers is not None:
        starts = tuple(window_start(c, spec.layers) for c in config.centre_layers)
    if starts is None:
        default = getattr(info, "start_layer", None)
        starts = (default if default is not None else (depth - n) // 2 - off,)
    bad = [s for s in starts if s + off < 0 or s + off + n > depth]
    if bad:
        lo, hi = -off, depth - n - off  # the start layers whose reads fit
        need = f"need layers {min(starts) + off}..{max(starts) + off + n - 1}"
        have = f"but the volume has {depth} layers (0..{depth - 1})"
        c_lo, c_hi = window_centre(lo, spec.layers), window_centre(hi, spec.layers)
        if config.centre_layers is not None:
            given = config.centre_layers
            raise ConfigError(
                f"window centres {min(given)}..{max(given)} with {spec.layers}-layer windows "
                f"{need}, {have}: window centres must lie in {c_lo}..{c_hi}"
            )
        raise ConfigError(
            f"start layers {min(starts)}..{max(starts)} with {n}-layer windows {need}, {have}: "
            f"start layers must lie in {lo}..{hi} (window centres {c_lo}..{c_hi})"
        )
    return tuple(starts)


def _resolve_region(
    config: PredictConfig, segment: Segment, mask: np.ndarray | None
) -> tuple[int, int, int, int]:
    _, ny, nx = segment.shape
    if config.region is None:
        if mask is None or not mask.any():
            return (0, 0, ny, nx)
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        return (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)
    y0, x0, y1, x1 = config.region
    if not (0 <= y0 < y1 <= ny and 0 <= x0 < x1 <= nx):
        raise ConfigError(
            f"region (y0, x0, y1, x1) = {config.region} is outside the volume "
            f"(0, 0, {ny}, {nx}) or empty"
        )
    return config.region


def _tile_mask(
    mask: np.ndarray | None, region: tuple[int, int, int, int], extent: int, stride: int
) -> np.ndarray:
    """Which tile positions touch the mask (all of them without a mask)."""
    y0, x0, y1, x1 = region
    ky, kx = _grid_count(y1 - y0, extent, stride), _grid_count(x1 - x0, extent, stride)
    if mask is None:
        return np.ones((ky, kx), bool)
    keep = np.zeros((ky, kx), bool)
    for i in range(ky):
        band = mask[y0 + i * stride : y0 + i * stride + extent]
        if not band.any():
            continue
        cols = band.any(0)
        for j in range(kx):
            keep[i, j] = cols[x0 + j * stride : x0 + j * stride + extent].any()
    return keep


def _load_model(config: PredictConfig, device: torch.device) -> tuple[Any, SpeedOptions]:
    try:
        model, _ = load_checkpoint(config.checkpoint, require_complete=True)
    except InkDetectError:
        raise
    except Exception as exc:  # a decoder error the models layer did not translate
        raise CheckpointError(f"{config.checkpoint}: cannot be loaded ({exc})") from None
    channels_last = device.type == "cuda" if config.channels_last is None else config.channels_last
    speed = SpeedOptions(autocast=config.autocast, channels_last=channels_last)
    resolve_autocast_dtype(device, config.autocast)  # refuse bad choices before any work
    model = speed.apply(model.to(device).eval())
    return model, speed


def open_job(config: PredictConfig) -> PredictJob:
    """Validate a config against its data and resolve every default (no output is touched)."""
    segment = open_segment(config.segment, reverse=config.segment_reverse)
    device = resolve_device(config.device)
    model, speed = _load_model(config, device)
    info = model.info
    spec = _resolve_spec(config, info)
    starts = _resolve_start_layers(config, info, spec, segment.shape[0])
    mask = segment.read_mask()
    region = _resolve_region(config, segment, mask)
    stride = max(1, round((config.stride or spec.tile // 2) / spec.scale))
    chunk = config.chunk or 8 * spec.extent
    chunk = max(stride, round(chunk / stride) * stride)
    tiles = _tile_mask(mask, region, spec.extent, stride)
    region_mask = (
        None if mask is None else mask[region[0] : region[2], region[1] : region[3]].copy()
    )
    del mask
    if not tiles.any():
        raise ConfigError(
            f"region (y0, x0, y1, x1) = {region} has no tile touching the papyrus mask "
            f"{segment.mask_path}; choose a region inside the mask"
        )
    direction = config.depth_direction
    reverse = bool(info.depth_reverse) if direction == "auto" else direction == "reverse"
    return PredictJob(
        config=config,
        segment=segment,
        model=model,
        info=_jsonable(info.to_dict()),
        checkpoint_sha256=_sha256(Path(config.checkpoint)),
        device=device,
        speed=speed,
        spec=spec,
        start_layers=starts,
        region=region,
        reverse=reverse,
        stride=stride,
        chunk=chunk,
        tiles=tiles,
        region_mask=region_mask,
        weight=blend_weight(spec.extent),
        transforms=_tta_transforms(config.tta_flips, config.tta_rot90),
    )


# --------------------------------------------------------------------------- output store


def _provenance(job: PredictJob) -> dict[str, Any]:
    from napari_inkdetect import __version__

    spec = job.spec
    return _jsonable(
        {
            "fingerprint": job.fingerprint(),
            "convention": "prob[i] is the window [start_layers[i], start_layers[i] + layers), "
            "centred on (and shown at) layer centre_layers[i] = start_layers[i] + layers // 2",
            "start_layers": job.start_layers,
            "centre_layers": [window_centre(s, spec.layers) for s in job.start_layers],
            "window_length": spec.layers,
            "source_layers": spec.source_layers,
            "scale": spec.scale,
            "depth_scale": spec.depth_scale,
            "depth_direction": "reverse" if job.reverse else "forward",
            "normalisation": spec.normalisation.to_dict(),
            "tta": {"flips": job.config.tta_flips, "rot90": job.config.tta_rot90},
            "tile": spec.tile,
            "stride": job.config.stride or spec.tile // 2,
            "stride_volume_px": job.stride,
            "chunk": job.chunk,
            "overview_factors": overview_factors(job.shape[1:], job.chunk),
            "region": job.region,
            "region_offset": job.region[:2],
            "translate": job.region[:2],
            "dtype": job.config.dtype,
            "encoding": "probability x 255" if job.config.dtype == "uint8" else "probability",
            "segment": str(job.segment.path),
            "segment_id": job.segment.segment_id,
            "checkpoint": str(job.config.checkpoint),
            "checkpoint_sha256": job.checkpoint_sha256,
            "checkpoint_metadata": job.info,
            # the checkpoint's calibrated ink threshold (None: not validated); not part of
            # the fingerprint, so outputs written before it existed still resume
            "threshold": recommended_threshold(job.info),
            "software": "napari-inkdetect",
            "software_version": __version__,
            "config": job.config.to_dict(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        }
    )


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def prepare_output(job: PredictJob | PredictConfig) -> Any:
    """Create the output group, or reopen it for a resume when it was made the same way.

    A prediction made differently is refused (``ConfigError``) unless ``overwrite`` is set;
    ``overwrite`` replaces only an earlier prediction, never another kind of folder.
    """
    import zarr

    job = _cached_job(job) if isinstance(job, PredictConfig) else job
    path = Path(job.config.out)
    check_unlocked(path, "prediction")  # another process writing it: refused (io.locks)
    if path.exists() and job.config.overwrite:
        _open_ours(path)
        shutil.rmtree(path)
    if path.exists():
        return _reopen(job, path)
    try:
        return _create_output(job, path, zarr)
    except OSError as exc:  # full disk, read-only folder, a file in the way...
        shutil.rmtree(path, ignore_errors=True)  # it did not exist: leave nothing half-made
        raise unwritable(path, exc, "cannot create the prediction") from None


def _create_output(job: PredictJob, path: Path, zarr: Any) -> Any:
    n, h, w = job.shape
    root = zarr.open_group(str(path), mode="w")
    c = job.chunk
    prob = root.create_array(
        PROB, shape=(n, h, w), chunks=(n, min(c, h), min(c, w)), dtype=job.config.dtype,
        fill_value=0,
    )  # fmt: skip
    root.create_array(
        DONE, shape=job.chunk_grid, chunks=(1, 1), dtype="uint8", fill_value=0, compressors=None
    )
    for f in overview_factors(job.shape[1:], c):
        root.create_array(
            f"{PROB}_{f}", shape=(n, -(-h // f), -(-w // f)), chunks=(n, c // f, c // f),
            dtype=job.config.dtype, fill_value=0,
        )  # fmt: skip
    prov = _provenance(job)
    prob.attrs[ATTRS_KEY] = prov
    root.attrs[ATTRS_KEY] = prov
    return root


def _open_ours(path: Path, mode: str = "r") -> tuple[Any, dict[str, Any]]:
    """A prediction group and its provenance, or a clear error for anything else."""
    import zarr

    try:
        root = zarr.open_group(str(path), mode=mode)
        return root, dict(root.attrs[ATTRS_KEY])
    except Exception:  # any failure here means "not one of our predictions"
        raise ConfigError(
            f"{path} exists and is not a napari-inkdetect prediction; choose another output"
        ) from None


def _reopen(job: PredictJob, path: Path) -> Any:
    root, prov = _open_ours(path, "r+")
    if not isinstance(prov.get("fingerprint"), dict):
        raise ConfigError(
            f"{path}: its provenance has no usable fingerprint (damaged?), so it cannot be "
            "resumed: set overwrite to replace it, or choose another output"
        )
    changed = _differences(prov["fingerprint"], job.fingerprint())
    if changed:
        raise ConfigError(
            f"{path} holds a prediction made with different settings ({', '.join(changed)}); "
            "it cannot be resumed: set overwrite to replace it, or choose another output"
        )
    return root


def _done_flags(root: Any) -> np.ndarray:
    return np.asarray(root[DONE][...], bool)


def _encode(prob: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "uint8":
        return np.clip(np.rint(prob * 255.0), 0, 255).astype(np.uint8)
    return prob.astype(np.float16)


# --------------------------------------------------------------------------- tiles -> batches


@dataclass
class _Batch:
    inputs: torch.Tensor  # (B, 1, L, T, T)
    rows: list[tuple[tuple[int, int], int, int, int, int]]  # chunk, ky, kx, start i, tta j
    finished: list[tuple[int, int]]  # chunks whose windows all lie in this or earlier batches


def _tile_stack(job: PredictJob, ky: int, kx: int) -> tuple[np.ndarray | torch.Tensor, bool]:
    """Layers ``min(start) .. max(start) + layers`` of one tile position, read once (shifted
    by the spec's ``source_offset`` with legacy depth scaling).

    Pointwise normalisation without depth resampling is applied to the whole stack (each
    window is then a slice of it); otherwise the raw stack is returned for per-window prep.
    """
    spec, starts = job.spec, job.start_layers
    first = min(starts) + spec.source_offset  # legacy depth scaling reads a centred part
    depth = max(starts) - min(starts) + spec.source_layers
    y0, x0 = job.region[0] + ky * job.stride, job.region[1] + kx * job.stride
    raw = read_raw(job.segment, first, y0, x0, spec, n_layers=depth)
    shared = spec.normalisation.kind != "percentile" and not spec.depth_scale
    return (to_model_input(raw, spec) if shared else raw), shared


def _windows(job: PredictJob, ky: int, kx: int) -> Iterator[tuple[int, int, torch.Tensor]]:
    """``(start index, tta index, (L, T, T) input)`` of every window at one tile position."""
    stack, shared = _tile_stack(job, ky, kx)
    first, spec = min(job.start_layers), job.spec
    for i, start in enumerate(job.start_layers):
        off = start - first
        if shared:
            x = stack[off : off + spec.layers]
        else:
            x = to_model_input(stack[off : off + spec.source_layers], spec)
        if job.reverse:
            x = x.flip(0)
        for j, (k, flip) in enumerate(job.transforms):
            xt = torch.rot90(x, k, dims=(-2, -1)) if k else x
            yield i, j, (xt.flip(-1) if flip else xt)


def _batches(
    job: PredictJob, chunks: Iterable[tuple[int, int]], stop: threading.Event
) -> Iterator[_Batch]:
    """Full batches of windows in chunk order, each naming the chunks it completes.

    Batches run across chunk borders (no half-empty batch per chunk); one window is held back
    so that a chunk's completion always rides with the batch holding its last window.
    """
    size, pin = job.config.batch_size, job.device.type == "cuda"
    xs: list[torch.Tensor] = []
    rows: list = []
    waiting: list[tuple[tuple[int, int], int]] = []  # chunk, windows added up to its end
    counts = {"added": 0, "emitted": 0}

    def emit(n: int) -> _Batch:
        x = torch.stack(xs[:n])[:, None]
        counts["emitted"] += n
        finished = [c for c, end in waiting if end <= counts["emitted"]]
        waiting[:] = [(c, end) for c, end in waiting if end > counts["emitted"]]
        batch = _Batch(x.pin_memory() if pin else x, rows[:n], finished)
        del xs[:n], rows[:n]
        return batch

    for chunk in chunks:
        for ky, kx in job.chunk_tiles(*chunk):
            if stop.is_set():
                return
            for i, j, x in _windows(job, ky, kx):
                xs.append(x)
                rows.append((chunk, ky, kx, i, j))
                counts["added"] += 1
                if len(xs) > size:
                    yield emit(size)
        waiting.append((chunk, counts["added"]))
    while xs:
        yield emit(min(size, len(xs)))


def _prefetch(source: Iterator[_Batch], depth: int, stop: threading.Event) -> Iterator[_Batch]:
    """Run ``source`` in a thread, ``depth`` batches ahead; errors re-raise here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    end = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            with torch.inference_mode():
                for batch in source:
                    if not put(batch):
                        return
            put(end)
        except BaseException as exc:  # handed to the consumer, re-raised there
            put(exc)

    thread = threading.Thread(target=work, name="inkdetect-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            _drain(q)
            thread.join(timeout=0.05)


def _drain(q: queue.Queue) -> None:
    try:
        while True:
            q.get_nowait()
    except queue.Empty:
        pass


# --------------------------------------------------------------------------- model + blending


def _forward(job: PredictJob, batch: _Batch) -> np.ndarray:
    """Ink probabilities ``(B, e, e)`` in volume pixels, TTA undone."""
    x = job.speed.prepare_input(batch.inputs.to(job.device, non_blocking=True))
    with torch.inference_mode(), job.speed.autocast_context(job.device):
        logits = job.model(x)
        prob = torch.softmax(logits.float(), 1)[:, 1]
        if len(job.transforms) > 1:
            prob = torch.stack(
                [_undo(p, job.transforms[row[4]]) for p, row in zip(prob, batch.rows, strict=True)]
            )
        return to_volume_pixels(prob, job.spec).cpu().numpy()


def _undo(prob: torch.Tensor, transform: tuple[int, bool]) -> torch.Tensor:
    k, flip = transform
    prob = prob.flip(-1) if flip else prob
    return torch.rot90(prob, -k, dims=(-2, -1)) if k else prob


class _Accumulator:
    """Chunk-local sums of ``w * p`` per start layer and of ``w``."""

    def __init__(self, job: PredictJob, chunk: tuple[int, int]) -> None:
        self.box = job.chunk_box(*chunk)
        y0, x0, y1, x1 = self.box
        self.sum = np.zeros((len(job.start_layers), y1 - y0, x1 - x0), np.float32)
        self.weight = np.zeros((y1 - y0, x1 - x0), np.float32)
        self.mask = None if job.region_mask is None else job.region_mask[y0:y1, x0:x1]

    def add(self, job: PredictJob, ky: int, kx: int, i: int, j: int, prob: np.ndarray) -> None:
        e, (y0, x0, y1, x1) = job.spec.extent, self.box
        ty, tx = ky * job.stride, kx * job.stride
        sy = slice(max(ty, y0), min(ty + e, y1))
        sx = slice(max(tx, x0), min(tx + e, x1))
        local = (slice(sy.start - y0, sy.stop - y0), slice(sx.start - x0, sx.stop - x0))
        inner = (slice(sy.start - ty, sy.stop - ty), slice(sx.start - tx, sx.stop - tx))
        w = job.weight[inner]
        self.sum[i][local] += prob[inner] * (w / len(job.transforms))
        if i == 0 and j == 0:
            self.weight[local] += w

    def result(self) -> np.ndarray:
        """Blended probabilities; 0 outside the papyrus mask (no ink off the papyrus)."""
        valid = self.weight > 0 if self.mask is None else (self.weight > 0) & self.mask
        out = np.divide(self.sum, self.weight, out=np.zeros_like(self.sum), where=valid)
        return np.clip(out, 0.0, 1.0, out=out)


class _Blender:
    """Open chunk accumulators fed batch by batch; hands back chunks as they complete."""

    def __init__(self, job: PredictJob) -> None:
        self.job, self.open = job, {}

    def add(self, batch: _Batch, prob: np.ndarray) -> list[tuple[tuple[int, int], np.ndarray]]:
        for (chunk, ky, kx, i, j), p in zip(batch.rows, prob, strict=True):
            acc = self.open.get(chunk) or self.open.setdefault(
                chunk, _Accumulator(self.job, chunk)
            )
            acc.add(self.job, ky, kx, i, j, p)
        return [
            (c, _encode(self.open.pop(c).result(), self.job.config.dtype)) for c in batch.finished
        ]


def _write_chunk(job: PredictJob, root: Any, chunk: tuple[int, int], data: np.ndarray) -> None:
    """Write a chunk's pixels and its overview levels, then (only then) its done flag.

    Each level's part of a chunk is exactly one chunk of that level (the chunk side is a
    multiple of every factor), so concurrent writers never share a stored chunk.
    """
    out = Path(job.config.out)
    if not (out / "zarr.json").is_file():  # zarr would recreate the folder chunk by chunk
        raise ConfigError(f"{out}: the prediction was removed during the run; stopping")
    y0, x0, y1, x1 = job.chunk_box(*chunk)
    try:
        root[PROB][:, y0:y1, x0:x1] = data
        for f in overview_factors(job.shape[1:], job.chunk):
            level = root[f"{PROB}_{f}"]
            level[:, y0 // f : -(-y1 // f), x0 // f : -(-x1 // f)] = _block_mean(data, f)
        root[DONE][chunk] = 1
    except OSError as exc:  # each stored chunk is written atomically; this one is not flagged
        error = unwritable(out, exc, f"cannot write chunk {chunk}")
        raise ConfigError(f"{error}; the finished chunks are kept: run again to resume") from None


def overview_factors(shape: tuple[int, int], chunk: int) -> list[int]:
    """Downsampling factors 2, 4, ... of the overview levels of an output of ``shape``
    (until the larger side is at most ``LEVELS_ABOVE``; each factor divides ``chunk``)."""
    factors, f = [], 2
    while max(shape) / (f // 2) > LEVELS_ABOVE and chunk % f == 0:
        factors.append(f)
        f *= 2
    return factors


def _block_mean(data: np.ndarray, f: int) -> np.ndarray:
    """``f`` x ``f`` means of ``(n, h, w)`` (edge blocks average what they hold)."""
    n, h, w = data.shape
    hh, ww = -(-h // f), -(-w // f)
    sums = np.zeros((n, hh * f, ww * f), np.float32)
    counts = np.zeros((hh * f, ww * f), np.float32)
    sums[:, :h, :w] = data
    counts[:h, :w] = 1
    total = sums.reshape(n, hh, f, ww, f).sum(axis=(2, 4))
    mean = total / counts.reshape(hh, f, ww, f).sum(axis=(1, 3))
    return np.rint(mean).astype(np.uint8) if data.dtype == np.uint8 else mean.astype(data.dtype)


# --------------------------------------------------------------------------- drivers


def _pending_chunks(job: PredictJob, done: np.ndarray) -> list[tuple[int, int]]:
    ny, nx = job.chunk_grid
    return [
        (cy, cx)
        for cy in range(ny)
        for cx in range(nx)
        if not done[cy, cx] and job.chunk_tiles(cy, cx)
    ]


def _release(job: PredictJob | None) -> None:
    if job is not None and job.device.type == "cuda":
        job.model = None
        torch.cuda.empty_cache()


def predict(config: PredictConfig, stop: threading.Event | None = None) -> Iterator[Any]:
    """Predict as ``config`` says, yielding events; a set ``stop`` ends the run after the
    current batch, keeping every finished chunk on disk (a rerun resumes from there)."""
    stop = stop or threading.Event()
    job = None
    try:
        job = open_job(config)
        with OutputLock(config.out, "prediction"):  # a second writer is refused (io.locks)
            yield from _run(job, stop)
    finally:
        _release(job)


def _run(job: PredictJob, stop: threading.Event) -> Iterator[Any]:
    root = prepare_output(job)
    all_chunks = _pending_chunks(job, np.zeros(job.chunk_grid, bool))
    chunks = _pending_chunks(job, _done_flags(root))
    total = sum(len(job.chunk_tiles(*c)) for c in chunks) * job.windows_per_tile
    yield PredictStarted(
        Path(job.config.out), job.shape, job.region, job.start_layers, total,
        len(all_chunks), len(all_chunks) - len(chunks), str(job.device), job.config.dtype,
    )  # fmt: skip
    started, done, chunks_done = time.perf_counter(), 0, len(all_chunks) - len(chunks)
    blender, producer_stop = _Blender(job), threading.Event()
    batches = _prefetch(_batches(job, chunks, producer_stop), job.config.prefetch, producer_stop)
    try:
        for batch in batches:
            if stop.is_set():
                break
            finished = blender.add(batch, _forward(job, batch))
            for chunk, data in finished:  # on disk before any yield: a closed driver loses none
                _write_chunk(job, root, chunk, data)
            done += len(batch.rows)
            rate = done / max(time.perf_counter() - started, 1e-9)
            yield BatchDone(done, total, rate, (total - done) / max(rate, 1e-9))
            for chunk, data in finished:
                chunks_done += 1
                y0, x0, _, _ = job.chunk_box(*chunk)
                yield ChunkDone(chunk, y0, x0, data, chunks_done, len(all_chunks), rate)
    finally:
        batches.close()
    seconds = time.perf_counter() - started
    stopped = len(_pending_chunks(job, _done_flags(root))) > 0
    yield PredictFinished(Path(job.config.out), seconds, done / max(seconds, 1e-9), done, stopped)


def run_prediction(config: PredictConfig, stop: threading.Event | None = None) -> Path:
    """Drain :func:`predict` (scripts, tests); returns the output path."""
    path = Path(config.out)
    for event in predict(config, stop):
        if isinstance(event, PredictFinished):
            path = event.path
    return path


def _cached_job(config: PredictConfig | dict[str, Any]) -> PredictJob:
    """One job per distinct config in this process (a worker reuses its model)."""
    data = config.to_dict() if isinstance(config, PredictConfig) else dict(config)
    return _job_from_json(json.dumps(data, sort_keys=True))


@functools.lru_cache(maxsize=2)
def _job_from_json(config_json: str) -> PredictJob:
    return open_job(PredictConfig.from_dict(json.loads(config_json)))


def pending_chunks(config: PredictConfig | dict[str, Any]) -> list[tuple[int, int]]:
    """Chunks still to compute (run :func:`prepare_output` first): the task list of a
    distributed run, each task ``predict_chunk(config, index)``."""
    job = _cached_job(config)
    return _pending_chunks(job, _done_flags(_reopen(job, Path(job.config.out))))


def predict_chunk(
    config: PredictConfig | dict[str, Any], index: tuple[int, int], write: bool = True
) -> np.ndarray | None:
    """Compute one output chunk from plain arguments (a task for a distributed scheduler).

    The job (model included) is cached per process. With ``write`` the chunk and its done flag
    go to the output made by :func:`prepare_output`; returns the encoded chunk (None when the
    chunk has no tile inside the mask).
    """
    job = _cached_job(config)
    index = (int(index[0]), int(index[1]))
    if not job.chunk_tiles(*index):
        return None
    blender = _Blender(job)
    result = None
    for batch in _batches(job, [index], threading.Event()):
        for _, data in blender.add(batch, _forward(job, batch)):
            result = data
    if write:
        _write_chunk(job, _reopen(job, Path(job.config.out)), index, result)
    return result


# --------------------------------------------------------------------------- reading + export


def open_prediction(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """The ``prob`` zarr array of a prediction and its provenance (clear errors for a missing
    path or a folder that is not one of ours)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such prediction")
    try:
        root, prov = _open_ours(path)
    except ConfigError:
        raise ConfigError(
            f"{path}: not a napari-inkdetect prediction (expected the zarr that predict writes)"
        ) from None
    return _checked(path, root, prov), prov


def _checked(path: Path, root: Any, prov: dict[str, Any]) -> Any:
    """The ``prob`` array, once the provenance that readers rely on is known to describe it
    (a damaged one is refused here, in one line, instead of failing later in a reader)."""
    try:
        prob = root[PROB]
        n, h, w = (int(s) for s in prob.shape)
    except Exception:  # missing, a group, or not 3-D
        raise ConfigError(f"{path}: damaged prediction: no 3-D {PROB} array") from None
    problem = _provenance_problem(prov, (n, h, w), lambda name: name in root)
    if problem:
        raise ConfigError(f"{path}: damaged prediction provenance ({problem}); predict again")
    return prob


def _provenance_problem(prov: dict[str, Any], shape: tuple[int, int, int], has: Any) -> str | None:
    def ints(v: Any, n: int | None = None, least: int = 0) -> bool:
        return (
            isinstance(v, list)
            and (n is None or len(v) == n)
            and all(isinstance(i, int) and not isinstance(i, bool) and i >= least for i in v)
        )

    n, h, w = shape
    region, factors = prov.get("region"), prov.get("overview_factors", [])
    fingerprint, source = prov.get("fingerprint", {}), prov.get("source_layers")
    checks = {
        "start_layers": ints(prov.get("start_layers"), n),
        "region": ints(region, 4) and region[2] - region[0] == h and region[3] - region[1] == w,
        "window_length": ints([prov.get("window_length")], least=1),
        "source_layers": source is None or ints([source], least=1),
        "overview_factors": ints(factors, least=2) and all(has(f"{PROB}_{f}") for f in factors),
        "segment": isinstance(prov.get("segment"), str),
        "segment_id": isinstance(prov.get("segment_id"), str),
        "config": isinstance(prov.get("config", {}), dict),
        "fingerprint": isinstance(fingerprint, dict)
        and (fingerprint.get("segment_shape") is None or ints(fingerprint["segment_shape"], 3)),
    }
    bad = next((key for key, ok in checks.items() if not ok), None)
    return None if bad is None else f"{bad} = {prov.get(bad)!r}"[:100]


def prediction_threshold(provenance: dict[str, Any]) -> float | None:
    """The calibrated ink threshold of a prediction (its checkpoint's best-F0.5 threshold on
    the training run's validation region), from its provenance; None when there is none.

    Outputs written before ``threshold`` was recorded still answer from the checkpoint
    metadata they carry.
    """
    if "threshold" not in provenance:
        return recommended_threshold(provenance.get("checkpoint_metadata"))
    value = provenance["threshold"]
    usable = isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1
    return float(value) if usable else None


def open_overviews(path: str | Path) -> list[Any]:
    """``prob`` then its overview levels (2x, 4x, ... smaller), as zarr arrays."""
    prob, prov = open_prediction(path)
    root, _ = _open_ours(Path(path))
    return [prob] + [root[f"{PROB}_{f}"] for f in prov.get("overview_factors", [])]


def _as_uint8(plane: np.ndarray) -> np.ndarray:
    return plane if plane.dtype == np.uint8 else _encode(plane.astype(np.float32), "uint8")


def export_prediction(
    zarr_path: str | Path, out_dir: str | Path, format: str = "png", max_projection: bool = True
) -> list[Path]:
    """One image per start layer (``<name>_z<start>.<format>``) and a max projection over
    start layers (``<name>_max.<format>``); PNG as uint8, TIFF in the stored dtype."""
    from napari_inkdetect.io.images import write_gray

    if format not in ("png", "tif"):
        raise ConfigError(f"export format {format!r}: use png or tif")
    prob, prov = open_prediction(zarr_path)
    out_dir = make_folder(out_dir, "image folder")
    name = Path(zarr_path).name.split(".")[0]
    written, peak = [], None
    for i, start in enumerate(prov["start_layers"]):
        plane = np.asarray(prob[i])
        peak = plane if peak is None else np.maximum(peak, plane)
        written.append(_write_image(out_dir / f"{name}_z{start:02d}.{format}", plane, write_gray))
    if max_projection:
        written.append(_write_image(out_dir / f"{name}_max.{format}", peak, write_gray))
    return written


def _write_image(path: Path, plane: np.ndarray, write_gray: Any) -> Path:
    if path.suffix == ".png" or plane.dtype == np.uint8:
        write_gray(path, _as_uint8(plane))
    else:
        import tifffile

        from napari_inkdetect.io.atomic import atomic_path

        with atomic_path(path) as tmp:
            tifffile.imwrite(tmp, plane.astype(np.float32), compression="zlib")
    return path

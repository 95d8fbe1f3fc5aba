"""A prediction's plan: a config resolved against its data and model into a :class:`PredictJob`.

The job knows the geometry (region, stride, output chunks and which tiles each chunk blends),
the model on its device and what the output records about how it was made (its fingerprint
decides whether an existing output can be resumed). Nothing here runs the model.
"""

from __future__ import annotations

import datetime
import functools
import json
import math
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_inkdetect.devices import resolve_device
from napari_inkdetect.errors import CheckpointError, ConfigError, InkDetectError
from napari_inkdetect.inference.config import PredictConfig
from napari_inkdetect.io.atomic import unwritable
from napari_inkdetect.io.digest import file_sha256
from napari_inkdetect.io.locks import check_unlocked
from napari_inkdetect.io.prediction_store import (
    create_store,
    overview_factors,
    remove_store,
    reopen_store,
)
from napari_inkdetect.io.segment import Segment, open_segment
from napari_inkdetect.models import SpeedOptions, load_checkpoint
from napari_inkdetect.models.checkpoints import recommended_threshold
from napari_inkdetect.models.detector import resolve_autocast_dtype
from napari_inkdetect.windows import WindowSpec, blend_weight, window_centre, window_start

__all__ = ["PredictJob", "cached_job", "open_job", "prepare_output", "provenance"]


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
    micro_batch: int = 0  # windows per model call; halved on out of memory (0: batch_size)

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

    def pending(self, done: np.ndarray | None = None) -> list[tuple[int, int]]:
        """Chunks with a tile inside the mask that are not flagged in ``done`` (all of them
        without flags), in row order: the work list of a run or a resume."""
        ny, nx = self.chunk_grid
        return [
            (cy, cx)
            for cy in range(ny)
            for cx in range(nx)
            if (done is None or not done[cy, cx]) and self.chunk_tiles(cy, cx)
        ]

    def windows_in(self, chunks: list[tuple[int, int]]) -> int:
        """Model inputs (tile positions x start layers x TTA) that ``chunks`` need."""
        return sum(len(self.chunk_tiles(*c)) for c in chunks) * self.windows_per_tile

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
        checkpoint_sha256=file_sha256(config.checkpoint),
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


def provenance(job: PredictJob) -> dict[str, Any]:
    """What the output records about how it was made (the fingerprint decides resumes)."""
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


def prepare_output(job: PredictJob | PredictConfig) -> Any:
    """Create the output group, or reopen it for a resume when it was made the same way.

    A prediction made differently is refused (``ConfigError``) unless ``overwrite`` is set;
    ``overwrite`` replaces only an earlier prediction, never another kind of folder.
    """
    job = cached_job(job) if isinstance(job, PredictConfig) else job
    path = Path(job.config.out)
    check_unlocked(path, "prediction")  # another process writing it: refused (io.locks)
    if path.exists() and job.config.overwrite:
        remove_store(path)
    if path.exists():
        return reopen_store(path, job.fingerprint())
    try:
        return create_store(path, job.shape, job.chunk, job.config.dtype, provenance(job))
    except OSError as exc:  # full disk, read-only folder, a file in the way...
        shutil.rmtree(path, ignore_errors=True)  # it did not exist: leave nothing half-made
        raise unwritable(path, exc, "cannot create the prediction") from None


def cached_job(config: PredictConfig | dict[str, Any]) -> PredictJob:
    """One job per distinct config in this process (a worker reuses its model)."""
    data = config.to_dict() if isinstance(config, PredictConfig) else dict(config)
    return job_from_json(json.dumps(data, sort_keys=True))


@functools.lru_cache(maxsize=2)
def job_from_json(config_json: str) -> PredictJob:
    return open_job(PredictConfig.from_dict(json.loads(config_json)))

"""The depth sweep: one RGB frame per start layer, the prediction over its volume.

Frame ``i`` shows the prediction of start layer ``s = start_layers[i]`` (the window
``[s, s + layers)``) blended over one layer of the volume: by default the window's centre
``c = s + layers // 2``, the layer the napari overlay puts it on and the depth slider shows it
at (:func:`napari_inkdetect.windows.window_centre`); ``underlay="start"`` shows layer ``s``.
The volume is scaled to 0..1 with the segment's contrast limits (the same for every frame, so
the sweep does not flicker), and the ink colour is mixed in with weight ``alpha x p``.

A 13k x 17k region is reduced to at most ``max_side`` pixels a side by block means while it is
read: the volume one layer at a time in bands of rows, the prediction one zarr chunk at a time
(each chunk read once). Nothing larger than a band or a chunk is held.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_inkdetect.errors import ConfigError, SegmentError
from napari_inkdetect.export.config import BAND_PIXELS, INK_COLOR, check_sweep
from napari_inkdetect.io.blocks import tiled_block_mean
from napari_inkdetect.io.prediction_store import open_prediction
from napari_inkdetect.io.segment import Segment, open_segment
from napari_inkdetect.windows import window_centre

__all__ = ["render_sweep"]


@dataclass(frozen=True)
class _Sweep:
    """What a sweep reads, resolved and checked before the first frame."""

    prob: Any  # zarr (n_start, H, W)
    start_layers: tuple[int, ...]
    layers: int  # window length: the window at s is centred on s + layers // 2
    span: int  # source layers per window
    box: tuple[int, int, int, int]  # in prediction pixels
    offset: tuple[int, int]  # volume pixel of prediction pixel (0, 0)
    factor: int
    segment: Segment | None
    limits: tuple[float, float]


def render_sweep(
    prediction: str | Path,
    *,
    segment: str | Path | Segment | None = None,
    region: tuple[int, int, int, int] | None = None,
    threshold: float | None = None,
    alpha: float = 0.6,
    color: tuple[int, int, int] = INK_COLOR,
    max_side: int | None = 1024,
    underlay: str = "middle",
    label: bool = True,
) -> Iterator[np.ndarray]:
    """RGB ``uint8`` frames ``(h, w, 3)``, one per start layer, of a prediction over its volume.

    Parameters
    ----------
    prediction : a prediction zarr written by :func:`napari_inkdetect.inference.predict`.
    segment : the volume underneath; default the segment recorded in the prediction.
    region : ``(y0, x0, y1, x1)`` in volume pixels, inside the prediction's region
        (default: all of it).
    threshold : probabilities below it are not drawn (default: all are, weighted by ``p``).
    alpha : opacity of certain ink (``p = 1``); the colour's weight is ``alpha x p``.
    color : the ink colour.
    max_side : frames are block means at most this many pixels a side (None: full size).
    underlay : the volume layer under start layer ``s``: ``"middle"``, its window's centre
        ``s + layers // 2`` (where the overlay and the depth slider show it), ``"start"``
        (``s`` itself) or ``"none"`` (black; no segment needed).
    label : draw ``centre c (layers a-b)`` (the layers the window reads) in the top-left.

    Errors (missing prediction or segment, bad region) are raised here, before any frame.
    """
    check_sweep(alpha, threshold, max_side, underlay)
    sweep = _plan(prediction, segment, region, max_side, underlay)
    return _frames(sweep, threshold, alpha, np.asarray(color, np.float32) / 255, underlay, label)


def _plan(prediction, segment, region, max_side, underlay) -> _Sweep:
    prob, prov = open_prediction(prediction)
    py0, px0, py1, px1 = (int(v) for v in prov["region"])
    y0, x0, y1, x1 = (py0, px0, py1, px1) if region is None else (int(v) for v in region)
    if not (py0 <= y0 < y1 <= py1 and px0 <= x0 < x1 <= px1):
        raise ConfigError(
            f"region (y0, x0, y1, x1) = {tuple(region)} is not inside the prediction's region "
            f"{(py0, px0, py1, px1)}"
        )
    longest = max(y1 - y0, x1 - x0)
    seg = None if underlay == "none" else _open_segment(prediction, prov, segment)
    return _Sweep(
        prob=prob,
        start_layers=tuple(int(s) for s in prov["start_layers"]),
        layers=int(prov["window_length"]),
        span=int(prov.get("source_layers") or prov["window_length"]),
        box=(y0 - py0, x0 - px0, y1 - py0, x1 - px0),
        offset=(py0, px0),
        factor=1 if max_side is None else max(1, math.ceil(longest / max_side)),
        segment=seg,
        limits=(0.0, 1.0) if seg is None else seg.contrast_limits(),
    )


def _open_segment(prediction: Any, prov: dict[str, Any], segment: Any) -> Segment:
    if isinstance(segment, Segment):
        seg = segment
    else:
        path = Path(segment or prov["segment"])
        if not path.exists():
            raise SegmentError(
                f"{path}: the segment under prediction {Path(prediction).name} is not there "
                "(moved?); give its new path, or export without the volume underneath"
            )
        reverse = bool(prov.get("config", {}).get("segment_reverse", False))
        seg = open_segment(path, reverse=reverse)
    expected = prov.get("fingerprint", {}).get("segment_shape")
    if expected and tuple(expected) != seg.shape:
        raise SegmentError(
            f"{seg.path}: volume of shape {seg.shape}, but prediction {Path(prediction).name} "
            f"was made on one of shape {tuple(expected)}"
        )
    return seg


def _frames(sweep: _Sweep, threshold, alpha, color, underlay, label) -> Iterator[np.ndarray]:
    peak = 255.0 if sweep.prob.dtype == np.uint8 else 1.0
    probs = _prediction_means(sweep) / peak
    if threshold is not None:
        probs[probs < threshold] = 0
    for i, start in enumerate(sweep.start_layers):
        gray = _volume_layer(sweep, start, underlay, probs.shape[1:])
        weight = np.clip(probs[i], 0, 1)[..., None] * alpha
        rgb = gray[..., None] * (1 - weight) + color * weight
        frame = np.rint(np.clip(rgb, 0, 1) * 255).astype(np.uint8)
        if label:
            centre = window_centre(start, sweep.layers)
            first = centre - sweep.span // 2  # layers read: [s, s + layers) unless depth-scaled
            frame = _caption(frame, f"centre {centre} (layers {first}-{first + sweep.span - 1})")
        yield frame


def _prediction_means(sweep: _Sweep) -> np.ndarray:
    """Block means ``(n_start, h, w)`` of the prediction's box, reading each zarr chunk once."""
    y0, x0, y1, x1 = sweep.box
    cy, cx = sweep.prob.chunks[1:]

    def read(ys: slice, xs: slice) -> np.ndarray:
        return sweep.prob[:, y0 + ys.start : y0 + ys.stop, x0 + xs.start : x0 + xs.stop]

    rows = _edges(y0, y1, cy)
    cols = _edges(x0, x1, cx)
    return tiled_block_mean(read, (y1 - y0, x1 - x0), sweep.factor, rows, cols)


def _volume_layer(sweep: _Sweep, start: int, underlay: str, shape: tuple[int, int]) -> np.ndarray:
    """The layer under a start layer, block-averaged band by band and scaled to 0..1."""
    if sweep.segment is None:
        return np.zeros(shape, np.float32)
    nz = sweep.segment.shape[0]
    z = min(window_centre(start, sweep.layers) if underlay == "middle" else start, nz - 1)
    by0, bx0, by1, bx1 = sweep.box
    vy, vx = sweep.offset[0] + by0, sweep.offset[1] + bx0
    h, w = by1 - by0, bx1 - bx0

    def read(ys: slice, xs: slice) -> np.ndarray:
        block = sweep.segment.read_block(
            (z, z + 1), (vy + ys.start, vy + ys.stop), (vx + xs.start, vx + xs.stop)
        )
        return block[0]

    f = sweep.factor
    band = max(f, BAND_PIXELS // max(w, 1) // f * f)
    means = tiled_block_mean(read, (h, w), f, [*range(0, h, band), h], [0, w])
    low, high = sweep.limits
    return np.clip((means - low) / (high - low), 0, 1)


def _edges(c0: int, c1: int, chunk: int) -> list[int]:
    """Tile edges of ``[c0, c1)`` (relative to ``c0``) at the array's chunk boundaries."""
    inner = range((c0 // chunk + 1) * chunk, c1, chunk)
    return [0, *(c - c0 for c in inner), c1 - c0]


@functools.lru_cache(maxsize=8)
def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one small bitmap font
        return ImageFont.load_default()


def _caption(frame: np.ndarray, text: str) -> np.ndarray:
    """``text`` on a dark box in the top-left corner, scaled with the frame."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    size = max(10, round(max(frame.shape[:2]) / 48))
    pad = max(2, size // 4)
    left, top, right, bottom = draw.textbbox((pad * 2, pad * 2), text, font=_font(size))
    draw.rectangle((left - pad, top - pad, right + pad, bottom + pad), fill=(0, 0, 0))
    draw.text((pad * 2, pad * 2), text, fill=(255, 255, 255), font=_font(size))
    return np.asarray(image)

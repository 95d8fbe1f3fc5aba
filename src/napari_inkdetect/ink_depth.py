"""Find the ink depth: which window of layers a model should see, before any training.

Crackle ink is a fine texture in a thin band of layers. Per layer we measure how much that
texture stands out, then score each window ``[z, z + layers)`` by the signal it holds:

* **With labels** (1 ink, 2 not ink): per layer, the AUC between ink and not-ink pixels of
  the local high-pass energy (``(x - gauss_1.5(x))**2`` averaged over 5 x 5 px), folded to
  ``|2 AUC - 1|`` (0: the classes look alike, 1: fully separable). Only the labelled blocks are
  read.
* **From the volume alone**: per layer, the 99th percentile of the log high-pass energy inside
  the mask, minus its running median over depth. Crackle lights up a few percent of the
  pixels in a few layers; the surface, the fibres and the recto/verso change are either
  uniform across pixels or steps in depth, which the running median removes. Only a spread
  sample of 128 px tiles is read, at full resolution (the texture is 1-2 px fine, so striding
  pixels would erase it).

Measured on synthetic segments (ink at the top, deep in a shallow stack, reversed, faint,
thick, none), these peaked inside the ink band every time; local mean, local std, gradient
energy and their label Fisher ratios did worse (the local mean separates labels at the
surface, where ink and not-ink scribbles lie at different heights, not where the ink is).

Convention (:mod:`napari_inkdetect.windows`): ``start`` is the *first* layer of the window
``[start, start + layers)``, as configs and prediction zarrs store it; people see and set the
window's *centre* ``start + layers // 2`` (:attr:`InkDepth.centre`, :attr:`InkDepth.centre_band`:
the Finetune dock's "Window centre" and the Predict band).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from napari_inkdetect.errors import ConfigError, LabelsError
from napari_inkdetect.io.labels import INK, NOT_INK, check_shape, validate_values, value_counts
from napari_inkdetect.windows import window_centre

__all__ = [
    "InkDepth",
    "choose_window",
    "estimate_ink_depth",
    "profile_from_labels",
    "profile_from_volume",
    "texture_energy",
]

DEFAULT_LAYERS = 22
SIGMA = 1.5  # px: the high-pass keeps structure finer than this (cracks are 1-2 px)
ENERGY_WINDOW = 5  # px: local average of the high-pass energy
MARGIN = 6  # px: pixels this close to a block edge or the mask edge are not scored
TILE = 128  # px: tiles read for the volume-only estimate
LABEL_BLOCK = 128  # px: grid on which labelled pixels are read
MAX_PIXELS = 2**19  # px read per layer (about 1 MB per layer of uint16)
MAX_PER_CLASS = 20_000  # pixels per class and layer that enter the AUC
MIN_PER_CLASS = 20  # fewer labelled pixels than this: estimate from the volume
QUANTILE = 99.0  # volume-only: the texture's upper tail, where the crackle shows
DETREND = 8  # layers: half-width of the running median removed from the volume profile
TIE = 0.03  # windows within 3 % of the best score count as tied; the centred one wins
BAND_FRACTION = 0.5  # Predict band: windows holding at least half the best window's signal
BAND_HALF_WIDTH = 6  # ... at most this many layers either side of the best start
NOISE_FLOOR = 2.0  # robust noise units subtracted from the profile before summing windows
MIN_CONTRAST = 6.0  # peak above baseline, in robust noise units, to call the depth found


@dataclass(frozen=True, eq=False)
class InkDepth:
    """Where the ink is in depth, and the window a model should see there.

    ``profile[z]``: per-layer separability (labels: ``|2 AUC - 1|``; volume: detrended
    texture tail). ``scores[z]``: signal in the window ``[z, z + layers)`` for each possible
    start ``z``. ``band``: inclusive start layers for a Predict sweep. ``depth``: the layer the
    ink's signal is centred on (where a person sees the crackle).
    """

    profile: np.ndarray
    scores: np.ndarray
    start: int
    band: tuple[int, int]
    depth: int
    layers: int
    source: str
    contrast: float
    found: bool
    explanation: str

    @property
    def window(self) -> tuple[int, int]:
        """The chosen window as ``(first, last + 1)``."""
        return self.start, self.start + self.layers

    @property
    def centre(self) -> int:
        """The chosen window's centre layer: where the depth slider marks it."""
        return window_centre(self.start, self.layers)

    @property
    def centre_band(self) -> tuple[int, int]:
        """:attr:`band` as window centres (inclusive), as the Predict dock shows it."""
        return window_centre(self.band[0], self.layers), window_centre(self.band[1], self.layers)


# --- texture ------------------------------------------------------------------------------------


def texture_energy(block: np.ndarray) -> np.ndarray:
    """Local high-pass energy per layer of a ``(Z, Y, X)`` block (float32, same shape).

    What the crackle adds is fine structure; the smooth papyrus brightness and the sheet's
    depth profile are removed by the high-pass."""
    a = np.asarray(block, np.float32)
    high = a - ndimage.gaussian_filter(a, (0, SIGMA, SIGMA))
    high *= high
    return ndimage.uniform_filter(high, (1, ENERGY_WINDOW, ENERGY_WINDOW))


def _scored(valid: np.ndarray, at_edge: tuple[bool, bool, bool, bool]) -> np.ndarray:
    """Pixels far enough from the mask edge and from block borders that are not the volume's
    own border (a filter there would see pixels the block does not hold)."""
    inner = ndimage.binary_erosion(valid, iterations=MARGIN, border_value=1)
    top, bottom, left, right = at_edge
    if not top:
        inner[:MARGIN] = False
    if not bottom:
        inner[-MARGIN:] = False
    if not left:
        inner[:, :MARGIN] = False
    if not right:
        inner[:, -MARGIN:] = False
    return inner


def _read_blocks(volume: Any, boxes: Sequence[tuple[int, int, int, int]]) -> list[np.ndarray]:
    """``volume[:, y0:y1, x0:x1]`` for each box, in one dask compute when the volume is lazy,
    so chunks shared by neighbouring boxes are read once."""
    slices = [volume[:, y0:y1, x0:x1] for y0, y1, x0, x1 in boxes]
    if slices and hasattr(slices[0], "dask"):
        import dask

        return [np.asarray(s) for s in dask.compute(*slices)]
    return [np.asarray(s) for s in slices]


def _valid(block: np.ndarray, mask: Any, box: tuple[int, int, int, int]) -> np.ndarray:
    """Papyrus pixels of a block: inside the mask if there is one, else non-zero anywhere."""
    y0, y1, x0, x1 = box
    if mask is not None:
        return np.asarray(mask[y0:y1, x0:x1]).astype(bool)
    return block.any(axis=0)


def _edges(box: tuple[int, int, int, int], shape: tuple[int, int]) -> tuple[bool, ...]:
    y0, y1, x0, x1 = box
    return (y0 == 0, y1 == shape[0], x0 == 0, x1 == shape[1])


# --- per-layer profiles -------------------------------------------------------------------------


def _auc(ink: np.ndarray, not_ink: np.ndarray) -> float:
    """P(ink value > not-ink value), ties counting half (Mann-Whitney U / n1 n2)."""
    ref = np.sort(not_ink)
    below = np.searchsorted(ref, ink, side="left")
    upto = np.searchsorted(ref, ink, side="right")
    return float((below.sum() + 0.5 * (upto - below).sum()) / (len(ink) * len(ref)))


def _even(values: np.ndarray, limit: int) -> np.ndarray:
    """At most ``limit`` evenly spaced entries (deterministic, spread over all blocks)."""
    if len(values) <= limit:
        return values
    return values[np.linspace(0, len(values) - 1, limit).round().astype(np.intp)]


def _label_boxes(
    labels: np.ndarray, max_pixels: int
) -> list[tuple[tuple[int, int, int, int], tuple[int, int, int, int]]]:
    """Grid blocks holding labels, grown by a margin for the filters: (read box, label box).

    Over budget, blocks richest in ink and richest in not-ink are taken in turn, so both
    classes are always read."""
    ys, xs = np.nonzero(labels)
    height, width = labels.shape
    nx = -(-width // LABEL_BLOCK)
    key = (ys // LABEL_BLOCK) * nx + xs // LABEL_BLOCK
    values = labels[ys, xs]
    blocks, inverse = np.unique(key, return_inverse=True)
    ink = np.bincount(inverse, weights=values == INK, minlength=len(blocks))
    not_ink = np.bincount(inverse, weights=values == NOT_INK, minlength=len(blocks))
    side = LABEL_BLOCK + 2 * (MARGIN + ENERGY_WINDOW)
    budget = max(2, max_pixels // side**2)
    # richest in ink, richest in not ink, next richest in ink, ...; first occurrence wins
    turns = np.stack([np.argsort(-ink, kind="stable"), np.argsort(-not_ink, kind="stable")], 1)
    order, first = np.unique(turns.ravel(), return_index=True)
    chosen = sorted(order[np.argsort(first)][:budget].tolist())
    grow = MARGIN + ENERGY_WINDOW
    out = []
    for i in chosen:
        by, bx = divmod(int(blocks[i]), nx)
        y0, x0 = by * LABEL_BLOCK, bx * LABEL_BLOCK
        y1, x1 = min(height, y0 + LABEL_BLOCK), min(width, x0 + LABEL_BLOCK)
        read = (max(0, y0 - grow), min(height, y1 + grow), max(0, x0 - grow))
        out.append(((*read, min(width, x1 + grow)), (y0, y1, x0, x1)))
    return out


def profile_from_labels(
    volume: Any, labels: np.ndarray, mask: Any = None, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """Per-layer ``|2 AUC - 1|`` of the texture energy between ink and not-ink pixels.

    Reads only the grid blocks (128 px) that hold labels, at most ``max_pixels`` per layer."""
    labels = np.asarray(labels)
    shape = tuple(int(s) for s in volume.shape[1:])
    ink_values, not_values = [], []
    boxes = _label_boxes(labels, max_pixels)
    blocks = _read_blocks(volume, [read for read, _ in boxes])
    for (read, (ly0, ly1, lx0, lx1)), block in zip(boxes, blocks, strict=True):
        y0, y1, x0, x1 = read
        scored = _scored(_valid(block, mask, read), _edges(read, shape))
        # the grown margin is read for the filters only: labels there belong to other blocks
        own = np.zeros_like(scored)
        own[ly0 - y0 : ly1 - y0, lx0 - x0 : lx1 - x0] = True
        lab = labels[y0:y1, x0:x1]
        energy = texture_energy(block)
        ink_values.append(energy[:, scored & own & (lab == INK)])
        not_values.append(energy[:, scored & own & (lab == NOT_INK)])
    ink = np.concatenate(ink_values, axis=1) if ink_values else np.zeros((volume.shape[0], 0))
    not_ink = np.concatenate(not_values, axis=1) if not_values else np.zeros_like(ink)
    if min(ink.shape[1], not_ink.shape[1]) < MIN_PER_CLASS:
        raise LabelsError(
            f"too few labelled pixels away from the mask edge ({ink.shape[1]} ink, "
            f"{not_ink.shape[1]} not ink; need {MIN_PER_CLASS} of each)"
        )
    ink_idx = _even(np.arange(ink.shape[1]), MAX_PER_CLASS)
    not_idx = _even(np.arange(not_ink.shape[1]), MAX_PER_CLASS)
    return np.array(
        [abs(2 * _auc(ink[z, ink_idx], not_ink[z, not_idx]) - 1) for z in range(len(ink))]
    )


def _volume_boxes(
    shape: tuple[int, int], mask: Any, max_pixels: int
) -> list[tuple[int, int, int, int]]:
    """Up to ``max_pixels / TILE**2`` tiles spread evenly over the papyrus (mostly in mask)."""
    height, width = shape
    tiles = [
        (y, min(height, y + TILE), x, min(width, x + TILE))
        for y in range(0, height, TILE)
        for x in range(0, width, TILE)
    ]
    if mask is not None:
        step = max(1, TILE // 8)
        coarse = np.asarray(mask[::step, ::step]).astype(bool)
        kept = []
        for y0, y1, x0, x1 in tiles:
            part = coarse[y0 // step : -(-y1 // step), x0 // step : -(-x1 // step)]
            if part.size and part.mean() >= 0.5:
                kept.append((y0, y1, x0, x1))
        tiles = kept or tiles
    budget = max(1, max_pixels // TILE**2)
    if len(tiles) > budget:
        picks = np.unique(np.linspace(0, len(tiles) - 1, budget).round().astype(np.intp))
        tiles = [tiles[int(i)] for i in picks]
    return [t for t in tiles if t[1] - t[0] > 2 * MARGIN and t[3] - t[2] > 2 * MARGIN]


def profile_from_volume(volume: Any, mask: Any = None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Per-layer upper tail of the log texture energy, minus its running median over depth.

    Reads a spread sample of full-resolution tiles (at most ``max_pixels`` per layer)."""
    shape = (int(volume.shape[1]), int(volume.shape[2]))
    boxes = _volume_boxes(shape, mask, max_pixels)
    values = []
    for box, block in zip(boxes, _read_blocks(volume, boxes), strict=True):
        scored = _scored(_valid(block, mask, box), _edges(box, shape))
        values.append(texture_energy(block)[:, scored])
    energy = np.concatenate(values, axis=1) if values else np.zeros((volume.shape[0], 0))
    if energy.shape[1] < 100:
        raise LabelsError("too little papyrus inside the mask to estimate the ink depth")
    floor = 0.01 * max(float(np.median(energy[:, ::16])), 1e-12)  # scale-free: any dtype or gain
    energy += np.float32(floor)
    tail = np.percentile(np.log(energy, out=energy), QUANTILE, axis=1)
    width = min(2 * DETREND + 1, 2 * (len(tail) // 2) + 1)
    return tail - ndimage.median_filter(tail, size=width, mode="nearest")


# --- choosing the window ------------------------------------------------------------------------


def choose_window(
    profile: np.ndarray, layers: int = DEFAULT_LAYERS, source: str = "labels", note: str = ""
) -> InkDepth:
    """Score every window ``[z, z + layers)`` by the (lightly smoothed) profile's excess over
    its median, less twice its robust noise.

    Windows within ``TIE`` of the best score hold the same signal; the one whose centre
    (:func:`~napari_inkdetect.windows.window_centre`) is nearest the signal's centroid wins, so
    the ink sits mid-window, away from its edges."""
    profile = np.asarray(profile, float)
    span = min(int(layers), len(profile))
    # the ink spans several layers, the sampling noise of each layer's estimate does not
    smooth = np.convolve(np.pad(profile, 1, mode="edge"), [0.25, 0.5, 0.25], mode="valid")
    baseline = float(np.median(smooth))
    noise = 1.4826 * float(np.median(np.abs(smooth - baseline)))
    noise = max(noise, 1e-3 * max(float(np.abs(smooth).max()), 1e-12))
    contrast = float((smooth.max() - baseline) / noise)
    # soft threshold: noise blips summed over a whole window must not outweigh a faint peak
    excess = np.maximum(smooth - baseline - NOISE_FLOOR * noise, 0.0)
    scores = np.convolve(excess, np.ones(span), mode="valid")
    best = int(np.argmax(scores))
    inside = excess[best : best + span]
    total = float(inside.sum())
    centroid = best + float(np.dot(np.arange(span), inside) / total) if total > 0 else None
    if centroid is not None:
        tied = np.flatnonzero(scores >= (1 - TIE) * scores[best])
        centres = np.array([window_centre(t, span) for t in tied])
        best = int(tied[np.argmin(np.abs(centres - centroid))])
    ink_depth = round(centroid) if centroid is not None else window_centre(best, span)
    band = _band(scores, best)
    found = contrast >= MIN_CONTRAST
    text = _explain(found, source, ink_depth, best, span, band, contrast, note)
    return InkDepth(
        profile=profile,
        scores=scores,
        start=best,
        band=band,
        depth=ink_depth,
        layers=span,
        source=source,
        contrast=contrast,
        found=found,
        explanation=text,
    )


def _band(scores: np.ndarray, best: int) -> tuple[int, int]:
    """Contiguous starts around ``best`` whose windows keep half its signal, +-6 at most."""
    keep = scores >= BAND_FRACTION * scores[best]
    lo = hi = best
    while lo > max(0, best - BAND_HALF_WIDTH) and keep[lo - 1]:
        lo -= 1
    while hi < min(len(scores) - 1, best + BAND_HALF_WIDTH) and keep[hi + 1]:
        hi += 1
    return lo, hi


def _explain(
    found: bool,
    source: str,
    depth: int,
    start: int,
    span: int,
    band: tuple[int, int],
    contrast: float,
    note: str,
) -> str:
    what = "the painted labels" if source == "labels" else "the volume alone"
    prefix = f"{note}; " if note else ""
    if not found:
        return (
            f"{prefix}no depth stands out in {what} (peak {contrast:.1f}x noise, below "
            f"{MIN_CONTRAST:.0f}x): paint ink and not-ink, or set the window centre by eye"
        )
    return (
        f"{prefix}ink texture peaks near layer {depth} in {what} ({contrast:.0f}x noise): "
        f"window {start}-{start + span - 1}, centre {window_centre(start, span)} (start "
        f"{start}); predict window centres {window_centre(band[0], span)}-"
        f"{window_centre(band[1], span)}"
    )


# --- entry point --------------------------------------------------------------------------------


def estimate_ink_depth(
    volume: Any,
    labels: np.ndarray | None = None,
    *,
    mask: Any = None,
    layers: int = DEFAULT_LAYERS,
    max_pixels: int = MAX_PIXELS,
) -> InkDepth:
    """Estimate the ink depth of a ``(Z, Y, X)`` volume (numpy or dask, read lazily).

    With labels holding enough ink (1) and not ink (2) the estimate compares them; otherwise
    (no labels, or only one class) it uses the volume's texture alone. ``mask`` (Y, X),
    optional, limits reading and scoring to the papyrus. Raises ``ConfigError`` or
    ``LabelsError`` (one line) for unusable input."""
    if len(getattr(volume, "shape", ())) != 3:
        raise ConfigError(
            f"the volume must be 3-D (layers, y, x), got shape {getattr(volume, 'shape', None)}"
        )
    if int(layers) < 1:
        raise ConfigError(f"window of {layers} layers: need at least 1")
    yx = tuple(int(s) for s in volume.shape[1:])
    if mask is not None:
        check_shape(tuple(int(s) for s in mask.shape), yx, "mask")
    note = ""
    if labels is not None:
        labels = np.asarray(labels)
        check_shape(labels, yx, "labels")
        if labels.size and (labels.min() < 0 or labels.max() > NOT_INK):  # np.unique is slow
            validate_values(labels, "labels")
        counts = value_counts(labels)
        if min(counts[INK], counts[NOT_INK]) >= MIN_PER_CLASS:
            try:
                profile = profile_from_labels(volume, labels, mask, max_pixels)
                return choose_window(profile, layers, "labels")
            except LabelsError as exc:
                note = str(exc)
        else:
            note = f"labels hold {counts[INK]} ink and {counts[NOT_INK]} not-ink px"
    return choose_window(profile_from_volume(volume, mask, max_pixels), layers, "volume", note)

"""Label here next: the boxes where one more painted label would teach the model most.

Ranked from what a prediction already holds (:func:`~napari_inkdetect.prediction_maps.
uncertainty`, its largest value over the start layers per pixel), and chosen as a person
would want them:

* **doubtful**: a box's score is the mean uncertainty of its pixels;
* **new**: weighted down near what is already labelled (``0.25`` on a label's edge, rising
  linearly to ``1`` two boxes away): the model has seen that ink;
* **inside the papyrus**: every pixel of a box lies inside the mask and the prediction, and
  none is already labelled;
* **diverse**: boxes are chosen greedily, best first, each at least ``spacing`` boxes (centre
  to centre) from those already chosen, so ten boxes do not land on one letter.

The uncertainty is reduced to cells of ``box / 4`` (one read of the prediction, lazily, chunk
by chunk), so ranking a 17k x 13k segment takes a grid of a few hundred cells a side.
Deterministic: ties are broken by a seeded jitter far below any real difference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from napari_inkdetect.errors import ConfigError
from napari_inkdetect.prediction_maps import StoredPrediction, uncertainty

__all__ = ["DEFAULT_COUNT", "Suggestion", "cell_means", "label_here_next", "rank_boxes"]

DEFAULT_COUNT = 8
#: weight of a box right next to existing labels (1 at two boxes away and beyond)
NEAR_LABEL_WEIGHT = 0.25


@dataclass(frozen=True)
class Suggestion:
    """One box to label, in segment pixels, with why it was chosen."""

    rank: int
    box: tuple[int, int, int, int]  # y0, x0, y1, x1
    score: float  # mean uncertainty x novelty weight
    doubt: float  # mean uncertainty in the box, 0..1
    label_distance: float | None  # px from the box's centre to the nearest label (None: none)

    @property
    def centre(self) -> tuple[float, float]:
        y0, x0, y1, x1 = self.box
        return (y0 + y1) / 2, (x0 + x1) / 2

    def describe(self) -> str:
        y0, x0, y1, x1 = self.box
        near = (
            "no labels yet"
            if self.label_distance is None
            else f"{self.label_distance:.0f} px from a label"
        )
        return f"#{self.rank}  y {y0}..{y1}, x {x0}..{x1}   doubt {self.doubt:.2f}, {near}"


def label_here_next(
    prediction: StoredPrediction,
    labels: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    box: int = 256,
    count: int = DEFAULT_COUNT,
    seed: int = 0,
    other: StoredPrediction | None = None,
    spacing: float = 1.5,
) -> list[Suggestion]:
    """The ``count`` best boxes of ``box`` px to label next, best first.

    ``labels`` (0 unlabelled, anything else labelled) and ``mask`` (papyrus) are segment-sized
    arrays (like the napari layers); ``other`` is a second checkpoint's prediction of the
    same region (its disagreement counts as doubt).
    """
    if box < 4:
        raise ConfigError(f"box {box} px: too small to label (at least 4)")
    if count < 1:
        raise ConfigError(f"count {count}: ask for at least one box")
    cell = box // 4 if box % 4 == 0 else box // 2 if box % 2 == 0 else box
    doubt = uncertainty(prediction, other).max(axis=0)
    grid = cell_means(doubt, cell)
    ry0, rx0, ry1, rx1 = prediction.region
    usable = np.ones(grid.shape, bool)
    labelled = np.zeros(grid.shape, bool)
    if mask is not None:
        usable &= _cells(_crop(mask, prediction.region, "mask") != 0, cell, np.all, True)
    if labels is not None:
        labelled = _cells(_crop(labels, prediction.region, "labels") != 0, cell, np.any, False)
    # every cell of a box is whole: a partial cell at the far edge lies outside the region
    h, w = ry1 - ry0, rx1 - rx0
    usable[h // cell :, :] = False
    usable[:, w // cell :] = False
    boxes = rank_boxes(grid, usable & ~labelled, labelled, box // cell, count, seed, spacing)
    return [
        Suggestion(
            rank=i + 1,
            box=(ry0 + cy * cell, rx0 + cx * cell, ry0 + cy * cell + box, rx0 + cx * cell + box),
            score=score,
            doubt=mean,
            label_distance=None if distance is None else distance * cell,
        )
        for i, (cy, cx, score, mean, distance) in enumerate(boxes)
    ]


def rank_boxes(
    grid: np.ndarray,
    usable: np.ndarray,
    labelled: np.ndarray,
    side: int,
    count: int,
    seed: int = 0,
    spacing: float = 1.5,
) -> list[tuple[int, int, float, float, float | None]]:
    """Greedy diverse ranking on a cell grid: ``(cy, cx, score, mean, label_distance)`` of
    the top-left cell of each ``side`` x ``side`` box (distances in cells), best first."""
    gh, gw = grid.shape
    if gh < side or gw < side:
        return []
    ny, nx = gh - side + 1, gw - side + 1
    means = _window_sum(grid.astype(np.float64), side) / side**2
    fits = _window_sum(usable.astype(np.float64), side) == side**2  # every cell usable
    if labelled.any():
        distance = ndimage.distance_transform_edt(~labelled)  # cells to the nearest label
        centres = distance[side // 2 : side // 2 + ny, side // 2 : side // 2 + nx]
        # centre-to-label distance, less half a box: 0 on a label's edge
        edge = np.maximum(centres - side / 2, 0.0)
        weight = NEAR_LABEL_WEIGHT + (1 - NEAR_LABEL_WEIGHT) * np.minimum(edge / (2 * side), 1)
    else:
        centres, weight = None, np.ones((ny, nx))
    jitter = np.random.default_rng(seed).uniform(0.0, 1e-9, (ny, nx))
    score = np.where(fits, means * weight + jitter, -np.inf)
    order = np.argsort(-score, axis=None, kind="stable")
    chosen: list[tuple[int, int, float, float, float | None]] = []
    min_gap = spacing * side
    for flat in order:
        if len(chosen) == count or not np.isfinite(score.flat[flat]):
            break
        cy, cx = divmod(int(flat), nx)
        if any(np.hypot(cy - y, cx - x) < min_gap for y, x, *_ in chosen):
            continue
        near = None if centres is None else float(centres[cy, cx])
        chosen.append((cy, cx, float(means[cy, cx] * weight[cy, cx]), float(means[cy, cx]), near))
    return chosen


def cell_means(image: object, cell: int) -> np.ndarray:
    """Mean of each ``cell`` x ``cell`` block of a 2-D (dask or numpy) image, computed
    chunk by chunk; a partial block at the far edge averages what it has."""
    import dask.array as da

    array = da.asarray(image)
    h, w = array.shape
    gh, gw = -(-h // cell), -(-w // cell)
    padded = da.pad(array, ((0, gh * cell - h), (0, gw * cell - w)))
    sums = da.coarsen(np.sum, padded, {0: cell, 1: cell}, trim_excess=False).compute()
    counts = np.full((gh, gw), float(cell * cell))
    counts[-1, :] = (h - (gh - 1) * cell) * cell
    counts[:, -1] = (w - (gw - 1) * cell) * cell
    counts[-1, -1] = (h - (gh - 1) * cell) * (w - (gw - 1) * cell)
    return np.asarray(sums, np.float64) / counts


def _cells(flags: np.ndarray, cell: int, reduce: object, fill: bool) -> np.ndarray:
    """A boolean image reduced to cells (``np.all``: every pixel; ``np.any``: one)."""
    h, w = flags.shape
    gh, gw = -(-h // cell), -(-w // cell)
    padded = np.full((gh * cell, gw * cell), fill, bool)
    padded[:h, :w] = flags
    return reduce(padded.reshape(gh, cell, gw, cell), axis=(1, 3))  # type: ignore[operator]


def _crop(image: np.ndarray, region: tuple[int, int, int, int], what: str) -> np.ndarray:
    y0, x0, y1, x1 = region
    image = np.asarray(image)
    if image.ndim != 2 or image.shape[0] < y1 or image.shape[1] < x1:
        raise ConfigError(
            f"{what} of shape {image.shape} does not cover the prediction's region "
            f"{region}: use the {what} of the segment that was predicted"
        )
    return image[y0:y1, x0:x1]


def _window_sum(values: np.ndarray, side: int) -> np.ndarray:
    """Sum over every ``side`` x ``side`` window (valid positions only), by an integral image."""
    total = np.zeros((values.shape[0] + 1, values.shape[1] + 1))
    total[1:, 1:] = values.cumsum(0).cumsum(1)
    return (
        total[side:, side:] - total[:-side, side:] - total[side:, :-side] + total[:-side, :-side]
    )

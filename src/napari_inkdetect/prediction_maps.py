"""Maps read off a stored prediction: where the ink sits in depth, and where the model doubts.

A prediction zarr holds one probability plane per start layer of the input window
(:mod:`napari_inkdetect.io.prediction_store`). Two questions a researcher asks of it need no
new inference:

* **Ink depth map** (:func:`depth_map`): per pixel, the window centre ``start + layers // 2``
  whose plane has the highest ink probability (where the ink sits in depth), masked (NaN)
  where that maximum is below the threshold. Ink that follows the papyrus surface gives a
  smooth map over a letter; noise gives speckle. :func:`depth_profile` is the mean
  probability per window over the papyrus of a box.
* **Uncertainty** (:func:`uncertainty`): per start layer and pixel, in ``[0, 1]``, the largest
  of three doubts, each 0 for a model that is sure and 1 for one that could not be less so:

  - ``threshold``: closeness to the decision threshold ``t``, ``1 - |p - t| / max(t, 1 - t)``;
  - ``starts``: disagreement with the neighbouring start layers, ``2 max |p_i - p_{i+-1}|``
    (clipped; a jump of 0.5 between windows one step apart is full doubt);
  - ``models``: disagreement with a second prediction of the same region (another
    checkpoint), ``2 |p - q|`` (clipped).

  TTA disagreement is not stored with a prediction (the variants are averaged on the device),
  so it is not part of the map.

Everything is lazy (dask over the zarr's chunks), so a viewer computes only what it shows.
No torch: these read stored outputs only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_inkdetect.errors import ConfigError
from napari_inkdetect.io.prediction_store import decode, open_prediction, prediction_threshold
from napari_inkdetect.windows import window_centre

__all__ = [
    "DEFAULT_THRESHOLD",
    "UNCERTAINTY_LEGEND",
    "UNCERTAINTY_PARTS",
    "StoredPrediction",
    "depth_map",
    "depth_profile",
    "uncertainty",
]

DEFAULT_THRESHOLD = 0.5
UNCERTAINTY_PARTS = ("threshold", "starts", "models")
#: what the uncertainty layer measures, for the dock's legend
UNCERTAINTY_LEGEND = (
    "Uncertainty 0 (sure) .. 1 (unsure): the largest of closeness to the threshold, "
    "disagreement with the neighbouring window depths and, with a second prediction, "
    "disagreement between the two models."
)


@dataclass(frozen=True)
class StoredPrediction:
    """A prediction zarr opened for reading: its planes and where they lie."""

    path: Path
    prob: Any  # zarr array (n_start, H, W), uint8 = p x 255 or float16
    start_layers: tuple[int, ...]
    window_length: int
    region: tuple[int, int, int, int]  # y0, x0, y1, x1 in segment pixels
    segment_id: str
    threshold: float  # calibrated on the checkpoint's validation region, else 0.5

    @classmethod
    def open(cls, path: str | Path) -> StoredPrediction:
        """Open a prediction (clear one-line errors for anything that is not one)."""
        prob, prov = open_prediction(path)
        threshold = prediction_threshold(prov)
        return cls(
            path=Path(path),
            prob=prob,
            start_layers=tuple(int(s) for s in prov["start_layers"]),
            window_length=int(prov["window_length"]),
            region=tuple(int(v) for v in prov["region"]),  # type: ignore[arg-type]
            segment_id=str(prov["segment_id"]),
            threshold=DEFAULT_THRESHOLD if threshold is None else threshold,
        )

    @property
    def centre_layers(self) -> tuple[int, ...]:
        """The layer each plane is shown at (its window's centre)."""
        return tuple(window_centre(s, self.window_length) for s in self.start_layers)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.prob.shape)  # type: ignore[return-value]

    def planes(self) -> Any:
        """The probabilities ``(n_start, H, W)`` as a lazy float32 dask array in ``[0, 1]``,
        chunked like the zarr in y and x and whole in depth (every start layer per block)."""
        import dask.array as da

        n = self.shape[0]
        chunks = tuple(int(c) for c in self.prob.chunks)
        array = da.from_zarr(self.prob, chunks=(n, chunks[1], chunks[2]))
        return array.map_blocks(decode, dtype=np.float32)


# --------------------------------------------------------------------------- depth


def depth_map(prediction: StoredPrediction, threshold: float | None = None) -> Any:
    """``(H, W)`` float32, lazy: the window centre of the most inky plane per pixel, NaN
    where the maximum probability is below ``threshold`` (default: the prediction's)."""
    t = prediction.threshold if threshold is None else _checked_threshold(threshold)
    centres = np.asarray(prediction.centre_layers, np.float32)

    def block_depth(block: np.ndarray) -> np.ndarray:
        index = block.argmax(axis=0)  # the first start layer wins a tie
        peak = np.take_along_axis(block, index[None], axis=0)[0]
        depth = centres[index]
        depth[peak < t] = np.nan
        return depth

    return prediction.planes().map_blocks(block_depth, drop_axis=0, dtype=np.float32)


def depth_profile(
    prediction: StoredPrediction, box: tuple[int, int, int, int] | None = None
) -> tuple[tuple[int, ...], np.ndarray]:
    """Window centres and the mean probability of each window over the papyrus of ``box``
    (segment pixels ``y0, x0, y1, x1``; default the whole prediction). Pixels where every
    plane is 0 are off the mask (the engine writes 0 there) and are not counted."""
    y0, x0, y1, x1 = _in_prediction(prediction, box)
    block = decode(np.asarray(prediction.prob[:, y0:y1, x0:x1]))
    inside = block.any(axis=0)
    if not inside.any():
        return prediction.centre_layers, np.zeros(len(prediction.start_layers))
    return prediction.centre_layers, block[:, inside].mean(axis=1)


def _in_prediction(
    prediction: StoredPrediction, box: tuple[int, int, int, int] | None
) -> tuple[int, int, int, int]:
    """``box`` (segment pixels) as prediction pixels, clipped to it; refused when outside."""
    ry0, rx0, ry1, rx1 = prediction.region
    if box is None:
        return 0, 0, ry1 - ry0, rx1 - rx0
    y0, x0 = max(box[0], ry0), max(box[1], rx0)
    y1, x1 = min(box[2], ry1), min(box[3], rx1)
    if y1 <= y0 or x1 <= x0:
        raise ConfigError(
            f"box {tuple(box)} lies outside the prediction's region {prediction.region}"
        )
    return y0 - ry0, x0 - rx0, y1 - ry0, x1 - rx0


# --------------------------------------------------------------------------- uncertainty


def uncertainty(
    prediction: StoredPrediction,
    other: StoredPrediction | None = None,
    threshold: float | None = None,
    parts: tuple[str, ...] = UNCERTAINTY_PARTS,
) -> Any:
    """``(n_start, H, W)`` float32 in ``[0, 1]``, lazy, aligned with the prediction's planes:
    the largest of the ``parts`` of doubt (see the module's docstring). ``other``, a second
    prediction of the same region and start layers (another checkpoint), adds ``models``.
    Pixels off the mask (every plane 0 in both) are 0."""
    unknown = set(parts) - set(UNCERTAINTY_PARTS)
    if unknown or not parts:
        raise ConfigError(f"uncertainty parts {parts}: choose from {UNCERTAINTY_PARTS}")
    t = prediction.threshold if threshold is None else _checked_threshold(threshold)
    planes = prediction.planes()
    if other is None or "models" not in parts:
        return planes.map_blocks(_doubt, t=t, parts=parts, dtype=np.float32)
    _check_same_grid(prediction, other)
    second = other.planes().rechunk(planes.chunks)
    return planes.map_blocks(_doubt, second, t=t, parts=parts, dtype=np.float32)


def _doubt(
    p: np.ndarray, q: np.ndarray | None = None, *, t: float, parts: tuple[str, ...]
) -> np.ndarray:
    doubt = np.zeros_like(p)
    if "threshold" in parts:
        np.maximum(doubt, 1.0 - np.abs(p - t) / max(t, 1.0 - t), out=doubt)
    if "starts" in parts and p.shape[0] > 1:
        step = np.abs(np.diff(p, axis=0))  # (n - 1, h, w): |p_i - p_{i+1}|
        neighbour = np.zeros_like(p)
        neighbour[:-1] = step
        np.maximum(neighbour[1:], step, out=neighbour[1:])
        np.maximum(doubt, 2.0 * neighbour, out=doubt)
    papyrus = p.any(axis=0)
    if q is not None:
        np.maximum(doubt, 2.0 * np.abs(p - q), out=doubt)
        papyrus |= q.any(axis=0)
    np.clip(doubt, 0.0, 1.0, out=doubt)
    doubt[:, ~papyrus] = 0.0
    return doubt


def _check_same_grid(a: StoredPrediction, b: StoredPrediction) -> None:
    """Two predictions compared pixel for pixel must cover the same pixels and windows."""
    for what, va, vb in (
        ("segment", a.segment_id, b.segment_id),
        ("region", a.region, b.region),
        ("start layers", a.start_layers, b.start_layers),
        ("window length", a.window_length, b.window_length),
    ):
        if va != vb:
            raise ConfigError(
                f"{b.path.name}: its {what} {vb} differs from {a.path.name}'s {va}; predict "
                "the second checkpoint on the same region and window centres to compare them"
            )


def _checked_threshold(value: float) -> float:
    if not 0.0 < float(value) < 1.0:
        raise ConfigError(f"threshold {value}: must lie strictly between 0 and 1")
    return float(value)

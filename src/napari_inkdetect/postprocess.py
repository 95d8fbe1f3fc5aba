"""What the docks compute from a prediction on disk: thresholded ink, scores, a depth profile.

Plain numpy and dask (no Qt, no napari), so it is testable headless and usable from scripts.
A prediction holds one plane per window; its provenance names the windows by their start
layers and, as the depth slider shows them, by their centres (:mod:`napari_inkdetect.windows`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from napari_inkdetect.errors import InkDetectError
from napari_inkdetect.scoring.metrics import score
from napari_inkdetect.windows import window_centre

DEFAULT_WINDOW = 22  # layers: the window length of a prediction that does not record one


def plane_centres(metadata: dict[str, Any]) -> list[int]:
    """The prediction planes' window centres (the layers the depth slider shows them at)."""
    layers = int(metadata.get("window_length") or DEFAULT_WINDOW)
    return [window_centre(s, layers) for s in metadata["start_layers"]]


def threshold_mask(data: Any, threshold: float, min_size: int = 0) -> Any:
    """``data >= threshold`` lazily per chunk (uint8 data: threshold x 255), blobs smaller
    than ``min_size`` px removed chunk by chunk."""
    import dask.array as da

    if isinstance(data, da.Array):
        lazy = data
    elif isinstance(data, np.ndarray):
        lazy = da.from_array(data, chunks=data.shape)
    else:
        lazy = da.from_zarr(data)
    cut = threshold * 255.0 if lazy.dtype == np.uint8 else threshold
    mask = (lazy >= cut).astype(np.uint8)
    if min_size > 0:
        mask = mask.map_blocks(_remove_small, min_size, dtype=np.uint8)
    return mask


def _remove_small(block: np.ndarray, min_size: int) -> np.ndarray:
    """``block``'s planes without their connected blobs under ``min_size`` px."""
    from scipy import ndimage

    out = np.zeros_like(block)
    for i, plane in enumerate(block.reshape(-1, *block.shape[-2:])):
        labelled, n = ndimage.label(plane)
        if n:
            sizes = np.bincount(labelled.ravel())
            keep = sizes >= min_size
            keep[0] = False
            out.reshape(-1, *block.shape[-2:])[i] = keep[labelled]
    return out


def plane_scores(
    data: Any, index: int, labels: np.ndarray, threshold: float, min_size: int = 0
) -> Any:
    """Scores of plane ``index`` against sparse labels (``None`` without both classes);
    with ``min_size`` the F0.5/precision/recall are those of the cleaned mask (the best
    threshold is from the raw plane)."""
    plane = np.asarray(data[index])
    if labels.shape != plane.shape:
        raise InkDetectError(f"labels {labels.shape} and prediction {plane.shape} differ")
    if not ((labels == 1).any() and (labels == 2).any()):
        return None
    scores = score(plane, labels, threshold)
    if min_size > 0:
        cleaned = np.asarray(threshold_mask(plane[None], threshold, min_size)[0])
        at = score(cleaned.astype(np.float32), labels, 0.5)
        scores = dataclasses.replace(
            scores, f05=at.f05, precision=at.precision, recall=at.recall, threshold=threshold
        )
    return scores


class ProfileAccumulator:
    """Mean ink probability per window over the papyrus of the chunks seen so far; the
    windows are named by ``start_layers`` and, as the depth slider shows them, by
    ``centre_layers`` (``start + window_length // 2``).

    Pixels where every start layer is 0 are off the mask (the engine writes 0 there).
    """

    def __init__(self, start_layers: tuple[int, ...], scale: float, window_length: int) -> None:
        self.start_layers = tuple(start_layers)
        self.centre_layers = tuple(window_centre(s, window_length) for s in self.start_layers)
        self.sums = np.zeros(len(start_layers))
        self.count = 0
        self.scale = scale

    def add(self, array: np.ndarray) -> None:
        """Add one chunk ``(n_start, h, w)``."""
        flat = array.reshape(array.shape[0], -1)
        inside = flat.any(axis=0)
        self.sums += flat[:, inside].sum(axis=1, dtype=np.float64)
        self.count += int(inside.sum())

    @property
    def means(self) -> np.ndarray:
        """Mean probability (0..1) per start layer."""
        return self.sums / max(self.count, 1) / self.scale

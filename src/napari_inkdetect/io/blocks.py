"""Block means: the one way the package shrinks an image by an integer factor.

Used for the viewer's pyramid levels (2 x 2), a prediction's overview levels (2, 4, ...) and
the export's downsampled sweep frames. Edge blocks average the pixels they hold, so a partial
last row or column keeps its intensity.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

__all__ = ["block_mean", "tiled_block_mean"]


def block_mean(data: np.ndarray, factor: int) -> np.ndarray:
    """``factor`` x ``factor`` means over the last two axes of ``data``.

    uint8 stays uint8 (rounded), other dtypes keep theirs; ``factor`` 1 returns ``data``.
    """
    if factor == 1:
        return data
    h, w = data.shape[-2:]

    def read(ys: slice, xs: slice) -> np.ndarray:
        return data[..., ys, xs]

    mean = tiled_block_mean(read, (h, w), factor, [0, h], [0, w])
    if np.issubdtype(data.dtype, np.integer):
        info = np.iinfo(data.dtype)
        return np.clip(np.rint(mean), info.min, info.max).astype(data.dtype)
    return mean.astype(data.dtype)


def tiled_block_mean(
    read: Callable[[slice, slice], np.ndarray],
    shape: tuple[int, int],
    factor: int,
    rows: list[int],
    cols: list[int],
) -> np.ndarray:
    """Block means of an array too large to hold, read tile by tile (float32).

    ``read(ys, xs)`` returns the tile ``[..., ys, xs]``; ``rows``/``cols`` are the tile edges
    (from 0 to the size; tiles need not align with blocks). Returns
    ``(..., ceil(h / factor), ceil(w / factor))``.
    """
    h, w = shape
    out = None
    for ya, yb in itertools.pairwise(rows):
        for xa, xb in itertools.pairwise(cols):
            tile = read(slice(ya, yb), slice(xa, xb))
            sums = np.add.reduceat(tile, _starts(ya, yb, factor), axis=-2, dtype=np.float32)
            sums = np.add.reduceat(sums, _starts(xa, xb, factor), axis=-1)
            if out is None:
                out = np.zeros((*tile.shape[:-2], -(-h // factor), -(-w // factor)), np.float32)
            out[
                ..., ya // factor : (yb - 1) // factor + 1, xa // factor : (xb - 1) // factor + 1
            ] += sums
    counts = np.outer(_counts(h, factor), _counts(w, factor)).astype(np.float32)
    return out / counts


def _starts(a: int, b: int, factor: int) -> np.ndarray:
    """Offsets in ``[a, b)`` (relative to ``a``) where a new block begins."""
    first = -(-a // factor) * factor
    starts = np.arange(first, b, factor) - a
    return starts if first == a else np.concatenate([[0], starts])


def _counts(size: int, factor: int) -> np.ndarray:
    ends = np.minimum(np.arange(1, -(-size // factor) + 1) * factor, size)
    return np.diff(ends, prepend=0)

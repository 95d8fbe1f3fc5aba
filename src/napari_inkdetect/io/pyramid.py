"""Lazy multiscale levels of a volume, so a whole segment can be viewed zoomed out.

napari cannot show a layer wider than the GPU's texture limit (16384 px) and, zoomed out, would
otherwise read every full-resolution pixel of the shown layer. Level ``k`` halves level
``k - 1`` in Y and X (2 x 2 mean, depth untouched), computed chunk by chunk on demand. Levels
from ``CACHED_FROM`` up are cached on disk the first time a chunk is computed (the write runs
in a background thread), so the next zoom-out, or the next session, reads the small cache.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import dask.array as da
import numpy as np

from napari_inkdetect.io.blocks import block_mean

if TYPE_CHECKING:
    from napari_inkdetect.io.segment import Segment

CACHED_FROM = 2
CHUNK = 512
_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inkdetect-pyramid-cache")


def default_cache_root() -> Path:
    """User cache folder (``$NAPARI_INKDETECT_CACHE`` or ``$XDG_CACHE_HOME/napari-inkdetect``)."""
    root = os.environ.get("NAPARI_INKDETECT_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "napari-inkdetect"


class _Level:
    """One pyramid level as a picklable, sliceable source (dask reads it chunk by chunk)."""

    def __init__(self, segment: Segment, level: int, cache_dir: Path | None, chunk: int = CHUNK):
        self.segment, self.level, self.chunk = segment, level, chunk
        nz, ny, nx = segment.shape
        self.shape = (nz, math.ceil(ny / 2**level), math.ceil(nx / 2**level))
        self.dtype, self.ndim = segment.dtype, 3
        self.cache_dir = cache_dir if level >= CACHED_FROM else None
        self.parent = _Level(segment, level - 1, cache_dir, chunk) if level > 1 else None

    def __getitem__(self, key: tuple[slice, slice, slice]) -> np.ndarray:
        zs, ys, xs = (k.indices(n) for k, n in zip(key, self.shape, strict=True))
        planes = [self.region(z, ys[:2], xs[:2]) for z in range(*zs)]
        return np.stack(planes) if planes else np.empty((0, 0, 0), self.dtype)

    def region(self, z: int, ys: tuple[int, int], xs: tuple[int, int]) -> np.ndarray:
        """Any (y, x) region of one layer, assembled from whole (cached) chunks."""
        c = self.chunk
        out = np.empty((ys[1] - ys[0], xs[1] - xs[0]), self.dtype)
        for cy in range(ys[0] // c, math.ceil(ys[1] / c)):
            for cx in range(xs[0] // c, math.ceil(xs[1] / c)):
                cell = self._cell(z, cy, cx)
                y0, x0 = cy * c, cx * c
                sy = slice(max(ys[0], y0), min(ys[1], y0 + cell.shape[0]))
                sx = slice(max(xs[0], x0), min(xs[1], x0 + cell.shape[1]))
                out[sy.start - ys[0] : sy.stop - ys[0], sx.start - xs[0] : sx.stop - xs[0]] = cell[
                    sy.start - y0 : sy.stop - y0, sx.start - x0 : sx.stop - x0
                ]
        return out

    def _cell(self, z: int, cy: int, cx: int) -> np.ndarray:
        path = self._cache_path(z, cy, cx)
        if path is not None and path.is_file():
            try:
                return np.load(path)
            except (OSError, ValueError):
                path.unlink(missing_ok=True)  # a damaged cache entry is recomputed
        cell = self._compute(z, cy, cx)
        if path is not None:
            _writer.submit(_save_atomic, path, cell)
        return cell

    def _compute(self, z: int, cy: int, cx: int) -> np.ndarray:
        c, (_, ny, nx) = self.chunk, self.shape
        y0, y1 = cy * c, min(ny, (cy + 1) * c)
        x0, x1 = cx * c, min(nx, (cx + 1) * c)
        pys = (2 * y0, min(2 * y1, self._parent_shape[1]))
        pxs = (2 * x0, min(2 * x1, self._parent_shape[2]))
        if self.parent is None:
            block = self.segment.read_block((z, z + 1), pys, pxs)[0]
        else:
            block = self.parent.region(z, pys, pxs)
        return block_mean(block, 2).astype(self.dtype)

    @property
    def _parent_shape(self) -> tuple[int, int, int]:
        return self.parent.shape if self.parent is not None else self.segment.shape

    def _cache_path(self, z: int, cy: int, cx: int) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"level{self.level}" / f"{z:04d}" / f"{cy}_{cx}.npy"


def _save_atomic(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def flush_cache_writes() -> None:
    """Wait until background cache writes queued so far are on disk (tests, clean exit)."""
    _writer.submit(lambda: None).result()


def build_pyramid(
    segment: Segment, min_size: int = 1024, cache_dir: Path | None = None, chunk: int = CHUNK
) -> list[da.Array]:
    """Levels 0..n (level 0 is ``segment.volume``) until the larger side is <= ``min_size``."""
    if cache_dir is None:
        cache_dir = default_cache_root() / "pyramid" / segment.cache_key()
    cache_dir = Path(cache_dir)
    levels = [segment.volume]
    ny, nx = segment.shape[1:]
    k = 1
    while max(ny, nx) / 2 ** (k - 1) > min_size:
        source = _Level(segment, k, cache_dir, chunk)
        name = f"inkdetect-pyramid-{segment.cache_key()}-{k}"
        levels.append(
            da.from_array(
                source,
                chunks=(1, chunk, chunk),
                name=name,
                asarray=False,
                fancy=False,
                lock=False,
                meta=np.empty((0, 0, 0), segment.dtype),
            )
        )
        k += 1
    return levels

"""Pixel sources behind a lazy volume: per-layer TIFFs (memory-mapped or chunked) and zarr.

A source is a small picklable object with ``shape``, ``dtype`` and ``__getitem__`` over
``(z, y, x)`` slices. It opens file handles lazily in each process (so dask workers can
unpickle it cheaply) and reads exactly the requested block: uncompressed TIFFs through a memory
map (a 256 x 256 block touches ~256 pages, not the layer), compressed or tiled ones through
tifffile's zarr store (only the strips/tiles that overlap the block).
"""

from __future__ import annotations

import contextlib
import mmap
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from napari_inkdetect.errors import CorruptFileError, InkDetectError, SegmentError

SUPPORTED_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))


class ReadCounter:
    """Bytes delivered by all sources in this process (benchmarks report it)."""

    bytes_read = 0

    @classmethod
    def add(cls, nbytes: int) -> None:
        cls.bytes_read += int(nbytes)


@dataclass(frozen=True)
class LayerInfo:
    """Where one layer's pixels live in a TIFF file, from its header."""

    path: Path
    page: int
    shape: tuple[int, int]
    dtype: np.dtype
    byteorder: str
    memmap_offset: int | None  # None: compressed or not contiguous, read via zarr store


def inspect_tiff(path: Path) -> list[LayerInfo]:
    """One TIFF's header as a LayerInfo per 2-D page; detects truncation without reading pixels."""
    try:
        size = path.stat().st_size
        with tifffile.TiffFile(path) as tif:
            infos = [
                _page_info(path, i, page, tif.byteorder, size) for i, page in enumerate(tif.pages)
            ]
    except FileNotFoundError:
        raise SegmentError(f"{path}: no such file") from None
    except InkDetectError:
        raise
    except Exception as exc:  # a damaged header makes tifffile raise many types
        raise CorruptFileError(f"{path}: not a readable TIFF ({exc})") from None
    if not infos:
        raise CorruptFileError(f"{path}: not a readable TIFF (no image in it)")
    return infos


def _page_info(path: Path, index: int, page: Any, byteorder: str, size: int) -> LayerInfo:
    shape = tuple(int(s) for s in page.shape)
    if len(shape) != 2:
        raise SegmentError(
            f"{path}: page {index} has shape {shape}; expected a 2-D grayscale layer"
        )
    ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=True) if n]
    if ends and max(ends) > size:
        raise CorruptFileError(
            f"{path}: truncated: layer data ends at byte {max(ends)} but the file has {size} bytes"
        )
    offset = int(page.dataoffsets[0]) if page.is_memmappable else None
    return LayerInfo(path, index, shape, np.dtype(page.dtype), byteorder, offset)


class TiffLayers:
    """A (Z, Y, X) volume made of 2-D TIFF pages (one file per layer, or one multi-page file)."""

    def __init__(self, layers: list[LayerInfo]):
        self.layers = tuple(layers)
        first = self.layers[0]
        self.shape = (len(self.layers), *first.shape)
        self.dtype = first.dtype
        self.ndim = 3
        self._handles: dict[int, Any] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {"layers": self.layers}

    def __setstate__(self, state: dict) -> None:
        self.__init__(list(state["layers"]))

    def _handle(self, z: int) -> Any:
        handle = self._handles.get(z)
        if handle is None:
            with self._lock:
                handle = self._handles.get(z)
                if handle is None:
                    handle = self._open(self.layers[z])
                    self._handles[z] = handle
        return handle

    @staticmethod
    def _open(info: LayerInfo) -> Any:
        try:
            if info.memmap_offset is not None:
                return MappedLayer(info)
            import zarr

            store = tifffile.imread(info.path, key=info.page, aszarr=True)
            return zarr.open(store, mode="r")
        except (FileNotFoundError, NotADirectoryError):
            raise SegmentError(f"{info.path}: {GONE}") from None
        except OSError as exc:  # permissions, a stale network mount (ESTALE, EIO)...
            raise SegmentError(
                f"{info.path}: cannot open the layer file ({_reason(exc)})"
            ) from None
        except (ValueError, tifffile.TiffFileError) as exc:
            raise CorruptFileError(f"{info.path}: cannot open layer ({_reason(exc)})") from None

    def __getitem__(self, key: tuple[slice, slice, slice]) -> np.ndarray:
        zs, ys, xs = _normalize(key, self.shape)
        out = np.empty((len(zs), _span(ys), _span(xs)), self.dtype)
        for i, z in enumerate(zs):
            out[i] = self.read_layer(z, ys, xs)
        ReadCounter.add(out.nbytes)
        return out

    def read_layer(self, z: int, ys: slice, xs: slice) -> np.ndarray:
        """One layer's (Y, X) block; decode errors name the layer file."""
        try:
            return np.asarray(self._handle(z)[ys, xs], dtype=self.dtype)
        except InkDetectError:
            raise
        except Exception as exc:  # decoders raise many types; all mean "this file is damaged"
            info = self.layers[z]
            raise CorruptFileError(f"{info.path}: cannot read layer {z} ({exc})") from None


class MappedLayer:
    """An uncompressed layer read through a read-only memory map.

    After each read the touched rows are released from this process (``MADV_DONTNEED``): the
    kernel's page cache keeps them for the next read, but they stop counting towards our
    resident memory, so browsing a 30 GB segment does not look like a 30 GB process.

    Before each read the file's size is checked: touching a mapped page past the end of a file
    that was truncated after it was mapped kills the process (``SIGBUS``), so a layer that
    shrank is refused (``CorruptFileError``) instead. A file deleted or renamed after it was
    mapped stays readable (the mapping keeps it), so the view goes on showing it.
    """

    def __init__(self, info: LayerInfo):
        dtype = info.dtype.newbyteorder(info.byteorder)
        nbytes = info.shape[0] * info.shape[1] * dtype.itemsize
        start = info.memmap_offset - info.memmap_offset % mmap.ALLOCATIONGRANULARITY
        self._delta = info.memmap_offset - start
        self._path, self._end = info.path, start + self._delta + nbytes
        size = info.path.stat().st_size
        if size < self._end:  # mmap would refuse it with a bare ValueError
            raise CorruptFileError(f"{info.path}: {_shrank(size, self._end)}")
        with open(info.path, "rb") as f:
            self._map = mmap.mmap(
                f.fileno(), self._delta + nbytes, access=mmap.ACCESS_READ, offset=start
            )
        self._array = np.frombuffer(self._map, dtype, info.shape[0] * info.shape[1], self._delta)
        self._array = self._array.reshape(info.shape)
        self._row_bytes = info.shape[1] * dtype.itemsize

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        ys = key[0]
        self._check_size()
        out = np.array(self._array[key])
        self._release(ys.start or 0, ys.stop if ys.stop is not None else self._array.shape[0])
        return out

    def _check_size(self) -> None:
        """Refuse to read a file that is now shorter than the mapping (``fstat`` of the
        mapping's own descriptor: a cheap system call, no path lookup)."""
        try:
            size = self._map.size()
        except OSError as exc:  # a network mount gone stale
            raise SegmentError(
                f"{self._path}: cannot read the layer file any more ({_reason(exc)})"
            ) from None
        if size < self._end:
            raise CorruptFileError(f"{self._path}: {_shrank(size, self._end)}")

    def _release(self, y0: int, y1: int) -> None:
        if _MADV_DONTNEED is None:
            return
        begin = self._delta + y0 * self._row_bytes
        begin -= begin % mmap.PAGESIZE
        end = min(len(self._map), self._delta + y1 * self._row_bytes)
        with contextlib.suppress(OSError, ValueError):
            self._map.madvise(_MADV_DONTNEED, begin, end - begin)


_MADV_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)
#: a layer file that is no longer where it was opened from
GONE = "the layer file is gone (deleted, renamed, or its drive is no longer mounted)"


def _shrank(size: int, needed: int) -> str:
    return (
        f"the layer file is now {size} bytes but its pixels end at byte {needed} "
        "(truncated, or being rewritten, while open)"
    )


def _reason(exc: BaseException) -> str:
    """An OS or decoder error in a few words, on one line."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())[:200]


class ZarrVolume:
    """A (Z, Y, X) zarr array (plain or an OME-Zarr level) opened lazily per process."""

    def __init__(self, path: Path, array_path: str, leading: tuple[int, ...], shape, dtype):
        self.path, self.array_path, self.leading = Path(path), array_path, tuple(leading)
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), 3
        self._array = None

    def __getstate__(self) -> dict:
        return {k: getattr(self, k) for k in ("path", "array_path", "leading", "shape", "dtype")}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def __getitem__(self, key: tuple[slice, slice, slice]) -> np.ndarray:
        zs, ys, xs = _normalize(key, self.shape)
        z = slice(zs[0], zs[-1] + 1) if len(zs) else slice(0, 0)
        try:
            if self._array is None:
                import zarr

                self._array = zarr.open_array(self.path / self.array_path, mode="r")
            out = np.asarray(self._array[(*self.leading, z, ys, xs)], dtype=self.dtype)
        except Exception as exc:  # codec errors come in many types
            if not self.path.exists():
                raise SegmentError(
                    f"{self.path}: the zarr volume is gone (deleted, renamed, or its drive "
                    "is no longer mounted)"
                ) from None
            raise CorruptFileError(f"{self.path}: cannot read block ({exc})") from None
        ReadCounter.add(out.nbytes)
        return out


def _normalize(key: Any, shape: tuple[int, ...]) -> tuple[range, slice, slice]:
    if not isinstance(key, tuple):
        key = (key,)
    key = key + (slice(None),) * (3 - len(key))
    zs = key[0]
    z_range = range(*zs.indices(shape[0])) if isinstance(zs, slice) else range(zs, zs + 1)
    ys = slice(*key[1].indices(shape[1])[:2])
    xs = slice(*key[2].indices(shape[2])[:2])
    return z_range, ys, xs


def _span(s: slice) -> int:
    return max(0, s.stop - s.start)


def check_dtype(dtype: np.dtype, where: Path) -> None:
    """uint8/uint16 only: the intensity pipeline (uint16 >> 8) is defined for those."""
    if np.dtype(dtype) not in SUPPORTED_DTYPES:
        raise SegmentError(
            f"{where}: unsupported dtype {np.dtype(dtype)}; expected uint8 or uint16"
        )

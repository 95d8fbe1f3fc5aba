"""2-D images users keep beside a volume (masks, label maps): header peeks and decoding.

Masks and labels of whole scroll segments are 10k-20k px a side, so Pillow's decompression-bomb
guard is lifted here. The bound comes from the segment instead: given the ``shape`` it must have,
:func:`read_gray` compares it with the header and refuses a mismatch before a single pixel is
decoded (a damaged header claiming 100k x 100k px would otherwise allocate 10 GB); without a
shape, images above :data:`MAX_PIXELS` are refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from napari_inkdetect.errors import CorruptFileError, LabelsError
from napari_inkdetect.io.atomic import atomic_path

TIFF_SUFFIXES = (".tif", ".tiff")
#: largest image decoded when no expected shape bounds it (a whole 60k x 30k px segment fits)
MAX_PIXELS = 1 << 31


@contextlib.contextmanager
def _no_bomb_limit() -> Iterator[None]:
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def image_shape(path: Path) -> tuple[int, int]:
    """(height, width) of a 2-D image from its header only, without decoding pixels."""
    path = Path(path)
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tif:
                return _tiff_shape(tif, path)
        with _no_bomb_limit(), Image.open(path) as im:
            return im.height, im.width
    except FileNotFoundError:
        raise LabelsError(f"{path}: no such file") from None
    except (OSError, ValueError, SyntaxError, IndexError, tifffile.TiffFileError) as exc:
        raise CorruptFileError(f"{path}: not a readable image ({exc})") from None


def _tiff_shape(tif: tifffile.TiffFile, path: Path) -> tuple[int, int]:
    if not len(tif.pages):
        raise CorruptFileError(f"{path}: not a readable image (a TIFF without any page)")
    shape = tif.pages[0].shape
    return int(shape[0]), int(shape[1])


def read_gray(
    path: Path, shape: tuple[int, int] | None = None, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """Decode a single-channel 2-D image; RGB(A) is accepted when its colour channels are equal.

    ``shape``: the (height, width) it must have; a header saying otherwise is refused before
    any pixel is decoded. Without it, a header claiming more than ``max_pixels`` is refused.
    """
    path = Path(path)
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tif:
                _check_header(_tiff_shape(tif, path), shape, max_pixels, path)
                data = tif.asarray()
        else:
            with _no_bomb_limit(), Image.open(path) as im:
                _check_header((im.height, im.width), shape, max_pixels, path)
                if im.mode == "1":
                    im = im.convert("L")
                elif im.mode == "P":
                    im = im.convert("RGBA")
                data = np.asarray(im)
    except FileNotFoundError:
        raise LabelsError(f"{path}: no such file") from None
    except MemoryError:
        raise LabelsError(f"{path}: too large to decode in the memory available") from None
    except (OSError, ValueError, SyntaxError, IndexError, tifffile.TiffFileError) as exc:
        raise CorruptFileError(f"{path}: not a readable image ({exc})") from None
    return _to_single_channel(data, path)


def _check_header(
    found: tuple[int, int], shape: tuple[int, int] | None, max_pixels: int, path: Path
) -> None:
    if shape is not None and tuple(found) != tuple(int(s) for s in shape):
        raise LabelsError(
            f"{path}: shape {found[0]} x {found[1]} does not match the volume's "
            f"{int(shape[0])} x {int(shape[1])}"
        )
    if shape is None and found[0] * found[1] > max_pixels:
        raise LabelsError(
            f"{path}: header claims {found[0]} x {found[1]} px, more than the {max_pixels} px "
            "an image beside a volume can have; the file is probably damaged"
        )


def _to_single_channel(data: np.ndarray, path: Path) -> np.ndarray:
    if data.ndim == 2:
        return data
    if data.ndim == 3 and data.shape[-1] in (3, 4):
        rgb = data[..., :3]
        if (rgb == rgb[..., :1]).all():
            return np.ascontiguousarray(rgb[..., 0])
        raise LabelsError(f"{path}: colour image; expected a single-channel (grayscale) image")
    raise LabelsError(f"{path}: expected a 2-D image, got an array of shape {data.shape}")


def write_gray(path: Path, data: np.ndarray) -> None:
    """Write a 2-D uint8 image (PNG or TIFF by suffix) atomically: temp file, then rename."""
    path = Path(path)
    data = np.ascontiguousarray(data, dtype=np.uint8)
    with atomic_path(path) as tmp:
        if path.suffix.lower() in TIFF_SUFFIXES:
            tifffile.imwrite(tmp, data, compression="zlib")
        else:
            Image.fromarray(data).save(tmp, format="PNG")

"""2-D images users keep beside a volume (masks, label maps): header peeks and decoding.

Masks and labels of whole scroll segments are 10k-20k px a side, so Pillow's decompression-bomb
guard is lifted here (these are the user's own files, and an image bigger than the volume is
refused by shape checks anyway).
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
                shape = tif.pages[0].shape
                return int(shape[0]), int(shape[1])
        with _no_bomb_limit(), Image.open(path) as im:
            return im.height, im.width
    except FileNotFoundError:
        raise LabelsError(f"{path}: no such file") from None
    except (OSError, ValueError, tifffile.TiffFileError) as exc:
        raise CorruptFileError(f"{path}: not a readable image ({exc})") from None


def read_gray(path: Path) -> np.ndarray:
    """Decode a single-channel 2-D image; RGB(A) is accepted when its colour channels are equal."""
    path = Path(path)
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            data = tifffile.imread(path)
        else:
            with _no_bomb_limit(), Image.open(path) as im:
                if im.mode == "1":
                    im = im.convert("L")
                elif im.mode == "P":
                    im = im.convert("RGBA")
                data = np.asarray(im)
    except FileNotFoundError:
        raise LabelsError(f"{path}: no such file") from None
    except (OSError, ValueError, SyntaxError, tifffile.TiffFileError) as exc:
        raise CorruptFileError(f"{path}: not a readable image ({exc})") from None
    return _to_single_channel(data, path)


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

"""Helpers that write small real segment files; test modules import them by this name.

Not in conftest.py: the fuzz folder has a conftest of its own, and ``from conftest import``
means whichever conftest was imported last.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

__all__ = ["random_volume", "write_layers", "write_png"]


def random_volume(shape=(6, 96, 128), dtype=np.uint16, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(1, np.iinfo(dtype).max, shape, dtype=dtype)


def write_layers(folder: Path, volume: np.ndarray, digits: int = 2, **kwargs) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for z, plane in enumerate(volume):
        f = folder / f"{z:0{digits}d}.tif"
        tifffile.imwrite(f, plane, **kwargs)
        files.append(f)
    return files


def write_png(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(data, np.uint8)).save(path)
    return path

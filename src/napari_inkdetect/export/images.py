"""Still images of a prediction: one per start layer and the max projection (PNG or TIFF)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from napari_inkdetect.errors import ConfigError
from napari_inkdetect.io.atomic import atomic_path, make_folder
from napari_inkdetect.io.images import write_gray
from napari_inkdetect.io.prediction_store import as_uint8, open_prediction

__all__ = ["export_prediction"]


def export_prediction(
    zarr_path: str | Path, out_dir: str | Path, format: str = "png", max_projection: bool = True
) -> list[Path]:
    """One image per start layer (``<name>_z<start>.<format>``) and a max projection over
    start layers (``<name>_max.<format>``); PNG as uint8, TIFF in the stored dtype."""
    if format not in ("png", "tif"):
        raise ConfigError(f"export format {format!r}: use png or tif")
    prob, prov = open_prediction(zarr_path)
    out_dir = make_folder(out_dir, "image folder")
    name = Path(zarr_path).name.split(".")[0]
    written, peak = [], None
    for i, start in enumerate(prov["start_layers"]):
        plane = np.asarray(prob[i])
        peak = plane if peak is None else np.maximum(peak, plane)
        written.append(_write_image(out_dir / f"{name}_z{start:02d}.{format}", plane))
    if max_projection:
        written.append(_write_image(out_dir / f"{name}_max.{format}", peak))
    return written


def _write_image(path: Path, plane: np.ndarray) -> Path:
    if path.suffix == ".png" or plane.dtype == np.uint8:
        write_gray(path, as_uint8(plane))
    else:
        with atomic_path(path) as tmp:
            tifffile.imwrite(tmp, plane.astype(np.float32), compression="zlib")
    return path

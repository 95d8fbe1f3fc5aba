"""Score a saved prediction (a predict zarr or a probability image) against label files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_inkdetect.errors import ConfigError, LabelsError
from napari_inkdetect.io.images import read_gray
from napari_inkdetect.io.labels import check_shape, read_labels, read_mask
from napari_inkdetect.metrics import score


def evaluate_prediction(
    prediction: Path,
    truth: Path,
    region_mask: Path | None = None,
    start_layer: int | None = None,
) -> list[dict[str, Any]]:
    """One row of scores per start layer (or one row for an image), as plain dicts.

    Labels are in volume coordinates; a zarr prediction covering a region is compared with the
    same region of them (its provenance says where it lies).
    """
    planes, starts, offset = _load(Path(prediction), start_layer)
    mask = read_mask(region_mask) if region_mask is not None else None
    labels = read_labels(truth, mask=mask)
    if mask is not None:
        check_shape(mask, labels.shape, region_mask)
        labels = np.where(mask, labels, 0).astype(np.uint8)
    h, w = planes.shape[1:]
    y0, x0 = offset
    labels = labels[y0 : y0 + h, x0 : x0 + w]
    check_shape(labels, (h, w), truth)
    if not (labels == 1).any() or not (labels == 2).any():
        raise LabelsError(f"{truth}: needs both ink (1) and not-ink (2) pixels where predicted")
    return [
        {"start_layer": s, **score(plane, labels).to_dict()}
        for s, plane in zip(starts, planes, strict=True)
    ]


def _load(path: Path, start_layer: int | None) -> tuple[np.ndarray, list, tuple[int, int]]:
    if path.suffix.lower() in (".png", ".tif", ".tiff"):
        image = read_gray(path)
        return image[None], [start_layer], (0, 0)
    from napari_inkdetect.inference import open_prediction

    prob, prov = open_prediction(path)
    starts = list(prov["start_layers"])
    region = prov["region"]
    if start_layer is None:
        return np.asarray(prob), starts, (region[0], region[1])
    if start_layer not in starts:
        raise ConfigError(f"{path}: start layer {start_layer} not predicted (have {starts})")
    i = starts.index(start_layer)
    return np.asarray(prob[i : i + 1]), [start_layer], (region[0], region[1])

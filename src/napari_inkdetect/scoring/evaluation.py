"""Score a saved prediction (a predict zarr or a probability image) against label files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_inkdetect.errors import ConfigError, LabelsError
from napari_inkdetect.io.images import read_gray
from napari_inkdetect.io.labels import check_shape, read_labels, read_mask
from napari_inkdetect.io.prediction_store import open_prediction, prediction_threshold
from napari_inkdetect.scoring.metrics import score

DEFAULT_THRESHOLD = 0.5
#: where the threshold of :func:`evaluate_prediction` came from (``threshold_source``)
GIVEN, CALIBRATED, DEFAULT = "given", "checkpoint validation", "default"


def evaluate_prediction(
    prediction: Path,
    truth: Path,
    region_mask: Path | None = None,
    start_layer: int | None = None,
    threshold: float | None = None,
) -> list[dict[str, Any]]:
    """One row of scores per start layer (or one row for an image), as plain dicts.

    Labels are in volume coordinates; a zarr prediction covering a region is compared with the
    same region of them (its provenance says where it lies). ``threshold`` defaults to the
    prediction's calibrated one (its checkpoint's best F0.5 on the training run's validation
    region), else 0.5; each row says which (``threshold``) and why (``threshold_source``:
    ``"given"``, ``"checkpoint validation"`` or ``"default"``).
    """
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold {threshold}: must lie in 0..1 (a probability)")
    planes, starts, offset, calibrated = _load(Path(prediction), start_layer)
    if threshold is not None:
        source = GIVEN
    elif calibrated is not None:
        threshold, source = calibrated, CALIBRATED
    else:
        threshold, source = DEFAULT_THRESHOLD, DEFAULT
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
        {
            "start_layer": s,
            **score(plane, labels, threshold).to_dict(),
            "threshold_source": source,
        }
        for s, plane in zip(starts, planes, strict=True)
    ]


def _load(
    path: Path, start_layer: int | None
) -> tuple[np.ndarray, list, tuple[int, int], float | None]:
    """Planes, their start layers, their offset in the volume, the calibrated threshold."""
    if path.suffix.lower() in (".png", ".tif", ".tiff"):
        image = read_gray(path)
        return image[None], [start_layer], (0, 0), None

    prob, prov = open_prediction(path)
    starts = list(prov["start_layers"])
    region = prov["region"]
    calibrated = prediction_threshold(prov)
    if start_layer is None:
        return np.asarray(prob), starts, (region[0], region[1]), calibrated
    if start_layer not in starts:
        raise ConfigError(f"{path}: start layer {start_layer} not predicted (have {starts})")
    i = starts.index(start_layer)
    return np.asarray(prob[i : i + 1]), [start_layer], (region[0], region[1]), calibrated

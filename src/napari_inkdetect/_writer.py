"""npe2 writer: save a Labels layer as ink labels (sparse 0/1/2, or the villa pair).

A file named ``<id>_inklabels.png`` is written in the ScrollPrize villa convention
(``<id>_inklabels.png`` + ``<id>_supervision_mask.png``), so their pipeline can train on it;
any other name gets the sparse encoding (0 unlabeled, 1 ink, 2 not ink). Writes are atomic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_inkdetect.io.labels import VillaPaths, write_labels, write_villa_labels


def write_labels_layer(path: str, data: Any, meta: dict) -> list[str]:
    """Write one Labels layer; returns the paths written."""
    target = Path(path)
    if target.suffix.lower() not in (".png", ".tif", ".tiff"):
        target = target.with_suffix(".png")
    labels = np.asarray(data)
    if target.name.lower().endswith("_inklabels.png"):
        paths = write_villa_labels(VillaPaths.from_inklabels(target), labels)
        return [str(paths.inklabels), str(paths.supervision_mask)]
    return [str(write_labels(target, labels))]

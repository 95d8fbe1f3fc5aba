"""Real prediction zarrs with known probabilities, written through the prediction store."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_inkdetect.io.prediction_store import create_store, encode, write_chunk


def write_prediction(
    path: Path,
    prob: np.ndarray,
    region: tuple[int, int, int, int] | None = None,
    start_layers: tuple[int, ...] | None = None,
    window_length: int = 8,
    chunk: int = 32,
    dtype: str = "uint8",
    segment_id: str = "seg",
    threshold: float | None = None,
    extra: dict | None = None,
) -> Path:
    """A complete prediction of ``prob`` (``(n_start, h, w)`` in 0..1) at ``region``."""
    n, h, w = prob.shape
    region = region or (0, 0, h, w)
    starts = list(start_layers or range(n))
    provenance = {
        "start_layers": starts,
        "region": list(region),
        "window_length": window_length,
        "overview_factors": [],
        "segment": "segment",
        "segment_id": segment_id,
        "config": {},
        "fingerprint": {},
        **({} if threshold is None else {"threshold": threshold}),
        **(extra or {}),
    }
    root = create_store(path, (n, h, w), chunk, dtype, provenance)
    for iy, y in enumerate(range(0, h, chunk)):
        for ix, x in enumerate(range(0, w, chunk)):
            box = (y, x, min(y + chunk, h), min(x + chunk, w))
            data = encode(prob[:, box[0] : box[2], box[1] : box[3]], dtype)
            write_chunk(root, path, (iy, ix), box, data, chunk)
    return path

"""Sliding-window prediction of a small box held in memory (training validation).

The same tiles, Hann blending weight and depth handling as the prediction engine's, at half-
tile stride, without its store, chunks or prefetching: validation scores the map Predict would
show. Whole segments go through :func:`~napari_inkdetect.inference.predict`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from napari_inkdetect.models import (
    autocast_context,
)
from napari_inkdetect.window_tensors import to_model_input, to_volume_pixels
from napari_inkdetect.windows import WindowSpec, blend_weight, read_raw


def _starts(lo: int, hi: int, extent: int, stride: int) -> list[int]:
    """Tile corners covering ``lo..hi`` (the last one flush with ``hi``)."""
    if hi - lo <= extent:
        return [lo]
    starts = list(range(lo, hi - extent, stride))
    return [*starts, hi - extent]


@torch.no_grad()
def predict_box(
    model: nn.Module,
    segment: Any,
    spec: WindowSpec,
    start: int,
    box: tuple[int, int, int, int],
    device: torch.device,
    batch: int = 8,
    reverse: bool = False,
    autocast: str = "off",
) -> np.ndarray:
    """Ink probability over ``box`` (y0, y1, x0, x1): overlapping tiles at half-tile stride
    blended with the predictor's Hann weight, so validation scores the map Predict shows.
    Small on purpose; whole segments go through ``inference``."""
    y0, y1, x0, x1 = box
    e = spec.extent
    corners = [
        (y, x)
        for y in _starts(y0, y1, e, max(1, e // 2))
        for x in _starts(x0, x1, e, max(1, e // 2))
    ]
    acc = np.zeros((max(y1 - y0, e), max(x1 - x0, e)), np.float32)
    hits = np.zeros_like(acc)
    weight = blend_weight(e)
    model.eval()
    for i in range(0, len(corners), batch):
        chunk = corners[i : i + batch]
        raw = np.stack([read_raw(segment, start, y, x, spec) for y, x in chunk])
        x = to_model_input(raw, spec)
        x = (x.flip(1) if reverse else x)[:, None].to(device)
        with autocast_context(device, autocast):
            logits = model(x)
        prob = to_volume_pixels(torch.softmax(logits.float(), 1)[:, 1], spec).cpu().numpy()
        for (y, xx), p in zip(chunk, prob, strict=True):
            acc[y - y0 : y - y0 + e, xx - x0 : xx - x0 + e] += p * weight
            hits[y - y0 : y - y0 + e, xx - x0 : xx - x0 + e] += weight
    return (acc / np.maximum(hits, 1e-12))[: y1 - y0, : x1 - x0]

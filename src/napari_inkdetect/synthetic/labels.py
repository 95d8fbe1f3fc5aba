"""Painted-label helpers: letter boxes, strokes near letters, papyrus blobs far from them."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def _check_n(n: int, available: int) -> int:
    if not 1 <= n <= available:
        raise ValueError(f"n_letters={n}: this segment has letters 1..{available}")
    return int(n)


def _letter_boxes(letters: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of each letter id 1..n, in id order."""
    n = int(letters.max())
    ys, xs = np.nonzero(letters)
    ids = letters[ys, xs]
    boxes = []
    for i in range(1, n + 1):
        sel = ids == i
        boxes.append(
            (
                int(ys[sel].min()),
                int(ys[sel].max()) + 1,
                int(xs[sel].min()),
                int(xs[sel].max()) + 1,
            )
        )
    return boxes


def _letter_height(boxes: list[tuple[int, int, int, int]]) -> int:
    return int(np.median([y1 - y0 for y0, y1, _, _ in boxes]))


def _near(
    boxes: list[tuple[int, int, int, int]], shape: tuple[int, ...], height: int
) -> np.ndarray:
    """Union of the letters' boxes grown by a quarter letter height: their neighbourhoods."""
    grow = max(4, height // 4)
    out = np.zeros(shape, bool)
    for y0, y1, x0, x1 in boxes:
        out[max(0, y0 - grow) : y1 + grow, max(0, x0 - grow) : x1 + grow] = True
    return out


def _brush_strokes(
    rng: np.random.Generator,
    boxes: list[tuple[int, int, int, int]],
    shape: tuple[int, ...],
    height: int,
) -> np.ndarray:
    """Random brush lines around each box, as a user scribbles 'not ink' near a letter."""
    image = Image.new("L", (shape[1], shape[0]), 0)
    draw = ImageDraw.Draw(image)
    grow = height // 4
    for y0, y1, x0, x1 in boxes:
        for _ in range(4):
            ys = rng.uniform(y0 - grow, y1 + grow, 3)
            xs = rng.uniform(x0 - grow, x1 + grow, 3)
            draw.line(
                list(zip(xs.tolist(), ys.tolist(), strict=True)),
                fill=255,
                width=max(3, height // 8),
                joint="curve",
            )
    return np.asarray(image) > 127


def _far_blobs(rng: np.random.Generator, allowed: np.ndarray, height: int) -> np.ndarray:
    """A few round 'not ink' blobs in open papyrus, far from any letter."""
    ys, xs = np.nonzero(allowed)
    image = Image.new("L", (allowed.shape[1], allowed.shape[0]), 0)
    if len(ys):
        draw = ImageDraw.Draw(image)
        r = max(3, height // 5)
        for k in rng.integers(len(ys), size=3):
            draw.ellipse((xs[k] - r, ys[k] - r, xs[k] + r, ys[k] + r), fill=255)
    return (np.asarray(image) > 127) & allowed

"""Where things are: the papyrus mask (torn), the surface depth and the letters."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from napari_inkdetect.synthetic.fields import _dilate, _smooth_noise
from napari_inkdetect.synthetic.glyphs import _TEXT, GLYPHS, Stroke


def _papyrus_mask(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A rounded rectangle with a wobbly boundary, like the outline of a flattened segment."""
    h, w = shape
    side = min(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    inset, radius = 0.04 * side, 0.15 * side
    qy = np.abs(yy - (h - 1) / 2) - ((h - 1) / 2 - inset - radius)
    qx = np.abs(xx - (w - 1) / 2) - ((w - 1) / 2 - inset - radius)
    outside = np.hypot(np.maximum(qy, 0), np.maximum(qx, 0)) + np.minimum(np.maximum(qy, qx), 0)
    wobble = 0.015 * side * _smooth_noise(rng, shape, side / 6)
    return (outside - radius + wobble) < 0


def _tear(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """A torn outline (fine-grained wobble eating into the border) and a few holes."""
    side = min(mask.shape)
    rough = _smooth_noise(rng, mask.shape, side / 30)
    inside = ~_dilate(~mask, max(2, side // 40))  # a border band that the tears may take
    torn = mask & (inside | (rough < 0.3))
    holes = _smooth_noise(rng, mask.shape, side / 12) > 2.0
    return torn & ~holes


def _surface(rng: np.random.Generator, shape: tuple[int, int], depth: int) -> np.ndarray:
    """Depth of the papyrus surface: mean 0.3 Z, undulating smoothly by about +-2.5 layers."""
    undulation = _smooth_noise(rng, shape, min(shape) / 3)
    undulation *= 2.5 / max(float(np.abs(undulation).max()), 1e-6)
    return (np.float32(0.3 * depth) + undulation).astype(np.float32)


def _glyph_image(
    rng: np.random.Generator, glyph: tuple[Stroke, ...], height: int, stroke: int
) -> np.ndarray:
    """Rasterise one jittered glyph (small rotation, scale) into a boolean crop."""
    size = int(height * 1.4) + 2 * stroke
    angle = math.radians(rng.uniform(-6, 6))
    scale = rng.uniform(0.92, 1.05) * (height - stroke)
    cos, sin = math.cos(angle), math.sin(angle)
    image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(image)
    for line in glyph:
        points = []
        for gx, gy in line:
            ux, uy = (gx - 0.5) * 0.8, gy - 0.5
            points.append(
                (
                    size / 2 + scale * (cos * ux - sin * uy),
                    size / 2 + scale * (sin * ux + cos * uy),
                )
            )
        draw.line(points, fill=255, width=stroke, joint="curve")
        r = stroke / 2
        for px, py in (points[0], points[-1]):
            draw.ellipse((px - r, py - r, px + r, py + r), fill=255)
    return np.asarray(image) > 127


def _draw_letters(
    rng: np.random.Generator, mask: np.ndarray, height: int, n_letters: int | None
) -> np.ndarray:
    """Lay glyphs out in lines of text inside the mask; ids 1..n in reading order."""
    h, w = mask.shape
    margin = int(0.04 * min(h, w) + 0.03 * min(h, w) + 0.6 * height)
    pitch_y, pitch_x = int(1.6 * height), int(1.15 * height)
    rows = max(0, (h - 2 * margin) // pitch_y + 1)
    cols = max(0, (w - 2 * margin) // pitch_x + 1)
    slots = [(r, c) for r in range(rows) for c in range(cols)]
    if n_letters is None:
        n_letters = len(slots)
    if not 1 <= n_letters <= len(slots):
        raise ValueError(f"n_letters={n_letters}: this shape holds 1..{len(slots)} letters")
    off_y = (h - (rows - 1) * pitch_y) // 2
    off_x = (w - (cols - 1) * pitch_x) // 2
    stroke = max(3, round(height / 8))
    start = int(rng.integers(len(_TEXT)))
    letters = np.zeros((h, w), np.int32)
    for index, (r, c) in enumerate(slots[:n_letters]):
        glyph = GLYPHS[_TEXT[(start + index) % len(_TEXT)]]
        crop = _glyph_image(rng, glyph, height, stroke)
        jitter = rng.integers(-height // 20, height // 20 + 1, size=2)
        cy, cx = off_y + r * pitch_y + jitter[0], off_x + c * pitch_x + jitter[1]
        y0, x0 = cy - crop.shape[0] // 2, cx - crop.shape[1] // 2
        view = letters[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]]
        view[crop & mask[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]]] = index + 1
    return letters

"""Smooth random fields and separable filters (numpy only) the papyrus is made of."""

from __future__ import annotations

import numpy as np
from PIL import Image


def _box(a: np.ndarray, radius: int, axis: int) -> np.ndarray:
    """Mean over a (2r+1) window along one axis via cumsum: O(1) per pixel at any radius."""
    if radius <= 0:
        return a
    pad = [(0, 0)] * a.ndim
    pad[axis] = (radius + 1, radius)
    c = np.cumsum(np.pad(a, pad, mode="reflect" if a.shape[axis] > radius + 1 else "edge"), axis)
    n = a.shape[axis]
    hi = np.take(c, np.arange(2 * radius + 1, 2 * radius + 1 + n), axis)
    lo = np.take(c, np.arange(n), axis)
    return (hi - lo) / np.float32(2 * radius + 1)


def _blur(a: np.ndarray, ry: int, rx: int, passes: int = 2) -> np.ndarray:
    """Separable repeated box blur (close to Gaussian after two passes)."""
    out = a.astype(np.float32)
    for _ in range(passes):
        out = _box(_box(out, ry, 0), rx, 1)
    return out


def _dilate(binary: np.ndarray, radius: int) -> np.ndarray:
    """Square dilation by ``radius`` px, through a box sum (no scipy)."""
    spread = _blur(binary.astype(np.float32), radius, radius, passes=1)
    return spread > 0.5 / (2 * radius + 1) ** 2


def _unit(a: np.ndarray) -> np.ndarray:
    """Zero mean, unit std (float32), so amplitudes are set in 8-bit units by the caller."""
    a = a - a.mean(dtype=np.float64)
    return (a / max(float(a.std(dtype=np.float64)), 1e-6)).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Unit-std noise smooth over ``scale`` px: coarse noise upsampled bicubically."""
    h, w = shape
    coarse = rng.standard_normal((max(2, round(h / scale)) + 2, max(2, round(w / scale)) + 2))
    image = Image.fromarray(coarse.astype(np.float32), mode="F")
    return _unit(np.asarray(image.resize((w, h), Image.Resampling.BICUBIC)))


def _fibres(rng: np.random.Generator, shape: tuple[int, int], along: int) -> np.ndarray:
    """Unit-std fibre texture: white noise smeared along one axis (0 = y, 1 = x)."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    long_r, short_r = 14, 1
    ry, rx = (long_r, short_r) if along == 0 else (short_r, long_r)
    strands = _blur(noise, ry, rx)
    strips = _smooth_noise(rng, shape, 24.0)  # fibre bundles: slow brightness modulation
    return _unit(strands + 0.15 * strips)

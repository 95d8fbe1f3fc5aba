"""The crackle inside letter strokes and the layers rendered from it (8-bit model, uint16 out)."""

from __future__ import annotations

import math

import numpy as np

from napari_inkdetect.synthetic.fields import _blur, _fibres, _smooth_noise

# 8-bit intensity model (uint16 >> 8); the model input window is 50..200.
_AIR, _SHEET, _DEEP = 55.0, 150.0, 100.0
_SHEET_LAYERS = 18.0  # thickness of the bright papyrus sheet
_FIBRE_AMP, _DENSITY_AMP, _NOISE_AMP = 9.0, 6.0, 5.0
_CRACK_DEPTH, _RIM_HEIGHT = 1.0, 0.35  # crack profile; rescaled to _CRACKLE_STD
_CRACKLE_STD = 8.0  # inside strokes at the band centre: similar to the fibre texture it damps
_CELL_PX = 9.0  # mean crackle cell size: cells ~6-12 px
_FIBRE_DAMPING = 0.7  # ink replaces part of the fibre texture, so variance stays comparable


def _crack_distance(
    rng: np.random.Generator, shape: tuple[int, int], yy: np.ndarray, xx: np.ndarray
) -> np.ndarray:
    """Distance (px) from points (yy, xx) to the nearest Voronoi cell boundary of a jittered
    grid of seeds (cells ~6-12 px); only the given points are evaluated, to stay fast."""
    gy, gx = int(shape[0] / _CELL_PX) + 3, int(shape[1] / _CELL_PX) + 3
    seeds = np.mgrid[0:gy, 0:gx].transpose(1, 2, 0) + rng.uniform(0.1, 0.9, (gy, gx, 2))
    seeds = (seeds * _CELL_PX - _CELL_PX).astype(np.float32)
    cy = np.clip((yy / _CELL_PX).astype(np.intp) + 1, 1, gy - 2)
    cx = np.clip((xx / _CELL_PX).astype(np.intp) + 1, 1, gx - 2)
    d1 = np.full(yy.shape, np.inf, np.float32)
    d2 = d1.copy()
    p1 = np.zeros((2, *yy.shape), np.float32)
    p2 = p1.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            seed = seeds[cy + dy, cx + dx].T  # (2, n)
            d = (yy - seed[0]) ** 2 + (xx - seed[1]) ** 2
            first, second = d < d1, (d >= d1) & (d < d2)
            d2 = np.where(first, d1, np.where(second, d, d2))
            p2 = np.where(first, p1, np.where(second, seed, p2))
            d1 = np.where(first, d, d1)
            p1 = np.where(first, seed, p1)
    gap = np.maximum(np.hypot(p2[0] - p1[0], p2[1] - p1[1]), 1e-3)
    return (d2 - d1) / (2 * gap)  # exact distance to the bisector of the two nearest seeds


def _crackle(rng: np.random.Generator, ink: np.ndarray) -> np.ndarray:
    """2-D crackle (8-bit units) inside the strokes, with zero local mean inside the strokes.

    Dark cracks 1-2 px wide with faint bright rims, their strength varying smoothly; the
    stroke-masked local mean is subtracted, so a region's mean brightness is unchanged.
    """
    yy, xx = np.nonzero(ink)
    dist = _crack_distance(rng, ink.shape, yy.astype(np.float32), xx.astype(np.float32))
    profile = -_CRACK_DEPTH * np.exp(-((dist / 0.9) ** 2))
    profile += _RIM_HEIGHT * np.exp(-(((dist - 2.0) / 0.8) ** 2))
    pattern = np.zeros(ink.shape, np.float32)
    pattern[yy, xx] = profile
    pattern *= np.clip(1 + 0.3 * _smooth_noise(rng, ink.shape, 2 * _CELL_PX), 0.3, 1.6)
    r = max(2, round(_CELL_PX))
    local_mean = _blur(pattern, r, r) / np.maximum(_blur(ink.astype(np.float32), r, r), 1e-3)
    crackle = (pattern - local_mean) * ink
    return (crackle * (_CRACKLE_STD / max(float(crackle[ink].std()), 1e-6))).astype(np.float32)


_LUT_STEPS = 32  # depth profile lookup: 1/32 layer resolution


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _depth_tables(depth: int, ink_offset: int, ink_thickness: int) -> tuple[np.ndarray, ...]:
    """1-D tables over d = z - surface: base intensity, texture weight, verso (vertical fibre)
    weight, crackle envelope. Looking them up is much cheaper than evaluating per voxel."""
    d = np.arange(-(depth + 4) * _LUT_STEPS, (depth + 4) * _LUT_STEPS) / _LUT_STEPS
    rise, fall = _sigmoid(d / 0.5), _sigmoid((d - _SHEET_LAYERS) / 2.0)
    base = _AIR + (_SHEET - _AIR) * rise - (_SHEET - _DEEP) * fall
    weight = rise * (1 - 0.5 * fall)
    verso = _sigmoid((d - _SHEET_LAYERS / 2) / 1.5)
    centre, half = ink_offset + (ink_thickness - 1) / 2, (ink_thickness + 1) / 2
    envelope = np.cos(np.pi / 2 * np.clip((d - centre) / half, -1, 1)) ** 2
    return tuple(t.astype(np.float32) for t in (base, weight, verso, envelope))


def _render(
    rng: np.random.Generator,
    depth: int,
    mask: np.ndarray,
    surface: np.ndarray,
    crackle: np.ndarray,
    ink_offset: int,
    ink_thickness: int,
    texture_strength: float = 1.0,
) -> np.ndarray:
    """Render the volume one float32 layer at a time (memory: a few 2-D temporaries)."""
    shape = mask.shape
    fibres_x = _fibres(rng, shape, 1), _fibres(rng, shape, 1)  # recto: horizontal fibres
    fibres_y = _fibres(rng, shape, 0), _fibres(rng, shape, 0)  # verso: vertical fibres
    density = _DENSITY_AMP * _smooth_noise(rng, shape, 48.0)
    base, weight, verso, envelope = _depth_tables(depth, ink_offset, ink_thickness)
    index0 = np.round((depth + 4 - surface) * _LUT_STEPS).astype(np.intp)
    ink = np.nonzero(crackle)  # empty when crackle_strength=0: then no ink signal at all
    ink_crackle, ink_index0 = crackle[ink], index0[ink]
    volume = np.zeros((depth, *shape), np.uint16)
    for z in range(depth):
        index = index0 + z * _LUT_STEPS
        t = z / max(depth - 1, 1)  # fibres drift slowly with depth
        fx = fibres_x[0] * np.float32(1 - t) + fibres_x[1] * np.float32(t)
        fy = fibres_y[0] * np.float32(1 - t) + fibres_y[1] * np.float32(t)
        texture = fy - fx
        texture *= verso[index]
        texture += fx
        texture *= np.float32(_FIBRE_AMP * texture_strength)
        env = envelope[ink_index0 + z * _LUT_STEPS]
        if env.any():
            texture[ink] *= 1 - _FIBRE_DAMPING * env
        texture += density
        texture *= weight[index]
        texture += base[index]
        if env.any():
            texture[ink] += env * ink_crackle
        texture += _noise(rng, shape)
        volume[z] = _to_uint16(texture, mask)
    return volume


def _noise(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Per-voxel noise of std _NOISE_AMP: a sum of two random bytes (triangular, close to
    Gaussian), four times faster than ``standard_normal``, which dominated the render time."""
    pair = np.frombuffer(rng.bytes(2 * shape[0] * shape[1]), np.uint8).reshape(2, *shape)
    noise = pair.sum(0, dtype=np.int16).astype(np.float32)
    noise -= 255
    noise *= np.float32(_NOISE_AMP / math.sqrt((256**2 - 1) / 6))
    return noise


def _to_uint16(value8: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """8-bit-scale float to uint16 (x256, so uint16 >> 8 gives it back); 0 outside the mask."""
    value8 *= 256
    value8 += 128
    np.clip(value8, 0, 65535, out=value8)
    value8 *= mask
    return value8.astype(np.uint16)

"""A procedural crackle segment: sample data, test fixture and benchmark input in one.

Real segments are gigabytes and their ink labels are uncertain, so tests, demos and benchmarks
need a segment whose truth is known exactly and which looks like the real thing to both a
person and a 3D CNN: a papyrus sheet with a smooth depth profile and crossed fibres, and ink
that shows only as *crackle* (a fine crack network) inside letter strokes, in a thin band of
layers below the surface. The crackle has zero local mean, so no intensity threshold finds it;
only texture (what a CNN learns) separates ink from papyrus.

Everything is numpy + Pillow, deterministic for a given seed, and generated layer by layer in
float32 so large shapes such as ``(65, 2048, 2048)`` fit in memory.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, ImageDraw

from napari_inkdetect.io.atomic import atomic_path

__all__ = ["GLYPHS", "SyntheticSegment", "make_segment", "write_segment"]

VOXEL_SIZE_UM = 7.91

# 8-bit intensity model (uint16 >> 8); the model input window is 50..200.
_AIR, _SHEET, _DEEP = 55.0, 150.0, 100.0
_SHEET_LAYERS = 18.0  # thickness of the bright papyrus sheet
_FIBRE_AMP, _DENSITY_AMP, _NOISE_AMP = 9.0, 6.0, 5.0
_CRACK_DEPTH, _RIM_HEIGHT = 1.0, 0.35  # crack profile; rescaled to _CRACKLE_STD
_CRACKLE_STD = 8.0  # inside strokes at the band centre: similar to the fibre texture it damps
_CELL_PX = 9.0  # mean crackle cell size: cells ~6-12 px
_FIBRE_DAMPING = 0.7  # ink replaces part of the fibre texture, so variance stays comparable

Stroke = Sequence[tuple[float, float]]


def _arc(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int = 24) -> Stroke:
    """Points on an elliptic arc (angles in degrees, y down), for round glyphs."""
    angles = np.radians(np.linspace(a0, a1, n))
    return [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles]


# Greek capitals as polylines in a unit box (x right, y down); no fonts, so no platform drift.
GLYPHS: dict[str, tuple[Stroke, ...]] = {
    "Α": (((0, 1), (0.5, 0), (1, 1)), ((0.22, 0.62), (0.78, 0.62))),
    "Γ": (((1, 0), (0, 0), (0, 1)),),
    "Δ": (((0, 1), (0.5, 0), (1, 1), (0, 1)),),
    "Ε": (((1, 0), (0, 0), (0, 1), (1, 1)), ((0, 0.5), (0.75, 0.5))),
    "Η": (((0, 0), (0, 1)), ((1, 0), (1, 1)), ((0, 0.5), (1, 0.5))),
    "Θ": (_arc(0.5, 0.5, 0.5, 0.5, 0, 360, 32), ((0.25, 0.5), (0.75, 0.5))),
    "Ι": (((0.5, 0), (0.5, 1)),),
    "Κ": (((0, 0), (0, 1)), ((1, 0), (0, 0.58)), ((0.3, 0.4), (1, 1))),
    "Λ": (((0, 1), (0.5, 0), (1, 1)),),
    "Μ": (((0, 1), (0, 0), (0.5, 0.65), (1, 0), (1, 1)),),
    "Ν": (((0, 1), (0, 0), (1, 1), (1, 0)),),
    "Ο": (_arc(0.5, 0.5, 0.5, 0.5, 0, 360, 32),),
    "Π": (((0, 1), (0, 0), (1, 0), (1, 1)),),
    "Ρ": (((0, 1), (0, 0), (0.55, 0)), (*_arc(0.55, 0.27, 0.4, 0.27, -90, 90, 16), (0, 0.54))),
    "Σ": (((1, 0), (0, 0), (0.5, 0.5), (0, 1), (1, 1)),),
    "Τ": (((0, 0), (1, 0)), ((0.5, 0), (0.5, 1))),
    "Υ": (((0, 0), (0.5, 0.5), (1, 0)), ((0.5, 0.5), (0.5, 1))),
    "Χ": (((0, 0), (1, 1)), ((1, 0), (0, 1))),
}
_TEXT = "ΚΑΙΤΟΝΘΕΟΝΠΑΝΤΑΣΥΜΗΡΧΕΝΔΙΑΛΟΓΟΣΠΕΡΙΗΔΟΝΗΣ"


@dataclass(frozen=True, eq=False)
class SyntheticSegment:
    """A generated segment with its exact truth; arrays are (Z, Y, X) and (Y, X)."""

    volume: np.ndarray
    mask: np.ndarray
    truth: np.ndarray
    letters: np.ndarray
    ink_layers: tuple[int, int]
    surface: np.ndarray
    voxel_size_um: float
    seed: int

    @property
    def n_letters(self) -> int:
        """Number of letters drawn (ids run 1..n in reading order)."""
        return int(self.letters.max())

    def train_labels(self, n_letters: int = 3) -> np.ndarray:
        """Sparse labels like a user paints: the first letters as ink, brush strokes near them
        (never on or next to any letter) as not ink. 0 = unlabeled, 1 = ink, 2 = not ink."""
        n = _check_n(n_letters, self.n_letters)
        boxes = _letter_boxes(self.letters)
        height = _letter_height(boxes)
        rng = np.random.default_rng([self.seed, 1])
        free = self.mask & ~_dilate(self.letters > 0, max(3, height // 16))
        not_ink = _brush_strokes(rng, boxes[:n], self.letters.shape, height) & _near(
            boxes[:n], self.letters.shape, height
        )
        not_ink |= _far_blobs(rng, self.mask & ~_near(boxes, self.letters.shape, height), height)
        labels = np.zeros(self.letters.shape, np.uint8)
        labels[not_ink & free] = 2
        labels[(self.letters >= 1) & (self.letters <= n)] = 1
        return labels

    def validation_labels(self, n_letters: int = 3) -> np.ndarray:
        """The held-out complement of :meth:`train_labels`: dense truth around the other letters,
        so validation F0.5 measures generalisation to letters the model never saw."""
        n = _check_n(n_letters, self.n_letters)
        boxes = _letter_boxes(self.letters)
        height = _letter_height(boxes)
        shape = self.letters.shape
        region = _near(boxes[n:], shape, height) & ~_near(boxes[:n], shape, height)
        region &= ~_dilate((self.letters >= 1) & (self.letters <= n), max(3, height // 16))
        return np.where(region, self.truth, 0).astype(np.uint8)


def make_segment(
    shape: tuple[int, int, int] = (48, 512, 768),
    seed: int = 0,
    n_letters: int | None = None,
    *,
    letter_height: int | None = None,
    ink_offset: int = 2,
    ink_thickness: int = 6,
    crackle_strength: float = 1.0,
    texture_strength: float = 1.0,
    ragged_mask: bool = False,
) -> SyntheticSegment:
    """Generate a segment: uint16 volume, papyrus mask, dense truth and letter instances.

    ``n_letters`` defaults to as many as fit in lines of text; ``letter_height`` defaults to a
    fifth of the smaller side, capped at 128 px so big segments hold many letters of a
    learnable size. The crackle lives at depths ``surface + [ink_offset, ink_offset +
    ink_thickness)``; ``crackle_strength=0`` gives a segment without any ink signal (a
    control for tests and benchmarks). ``texture_strength`` scales the papyrus fibres (2: a
    coarse papyrus whose texture competes with the crackle); ``ragged_mask`` gives the mask a
    torn outline and holes, where real segments have most of their border.
    """
    depth, height, width = (int(s) for s in shape)
    if depth < 1 or height < 64 or width < 64:
        raise ValueError(f"shape {shape} too small: need Z >= 1 and Y, X >= 64")
    rng = np.random.default_rng(seed)
    mask = _papyrus_mask(rng, (height, width))
    if ragged_mask:
        mask = _tear(rng, mask)
    surface = _surface(rng, (height, width), depth)
    letter_h = letter_height or int(np.clip(min(height, width) / 5, 24, 128))
    letters = _draw_letters(rng, mask, letter_h, n_letters)
    crackle = crackle_strength * _crackle(rng, letters > 0)
    volume = _render(
        rng, depth, mask, surface, crackle, ink_offset, ink_thickness, texture_strength
    )
    truth = np.where(mask, np.where(letters > 0, 1, 2), 0).astype(np.uint8)
    z0 = round(float(surface[mask].mean())) + ink_offset
    return SyntheticSegment(
        volume=volume,
        mask=mask,
        truth=truth,
        letters=letters,
        ink_layers=(z0, z0 + ink_thickness),
        surface=surface,
        voxel_size_um=VOXEL_SIZE_UM,
        seed=int(seed),
    )


def write_segment(
    segment: SyntheticSegment, out_dir: str | Path, segment_id: str = "synthetic"
) -> Path:
    """Write the on-disk layout of a real scroll segment (layers/NN.tif, mask, labels) so the
    readers, CLI and docks are exercised on exactly what users have. Returns the folder.

    The label PNGs hold ``train_labels(3)`` and ``validation_labels(3)`` (fewer train letters
    when the segment has 3 or fewer, so some are always held out)."""
    folder = Path(out_dir) / segment_id
    digits = 2 if segment.volume.shape[0] <= 100 else 3
    n_train = min(3, max(1, segment.n_letters - 1))  # leave letters for validation
    for z, layer in enumerate(segment.volume):
        with atomic_path(folder / "layers" / f"{z:0{digits}d}.tif") as tmp:
            tifffile.imwrite(tmp, layer, compression=None)
    pngs = {
        "mask": segment.mask.astype(np.uint8) * 255,
        "inklabels": (segment.truth == 1).astype(np.uint8) * 255,
        "train_labels": segment.train_labels(n_train),
        "validation_labels": segment.validation_labels(n_train),
    }
    for name, image in pngs.items():
        with atomic_path(folder / f"{segment_id}_{name}.png") as tmp:
            Image.fromarray(image).save(tmp, format="PNG")
    meta = {
        "voxel_size_um": segment.voxel_size_um,
        "synthetic": True,
        "seed": segment.seed,
        "ink_layers": list(segment.ink_layers),
        "shape": list(segment.volume.shape),
    }
    with atomic_path(folder / "meta.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
    return folder


# --- smooth fields and filters (numpy only) ---------------------------------------------------


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


# --- geometry: mask, surface, letters ----------------------------------------------------------


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


# --- crackle and rendering ---------------------------------------------------------------------


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


# --- label helpers -----------------------------------------------------------------------------


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

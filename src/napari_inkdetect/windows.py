"""Model inputs from a volume: the window geometry and the intensity pipeline, shared by the
trainer and the predictor so that inference repeats training exactly.

A *window* is ``layers`` consecutive layers starting at ``start`` and a square of
``tile`` model pixels. With an in-plane ``scale`` s (model pixels per volume pixel; 2.44 applies
3.24 um fragment-trained models to 7.91 um scroll data) the square covers ``tile / s`` volume
pixels, read once and resampled on the fly. Depth is not resampled unless ``depth_scale`` (the
legacy pipeline that zoomed depth too, so a 22-layer input held only ``22 / s`` distinct layers).

Depth convention, the same everywhere a person sees it (the depth slider, Finetune, Predict,
the overlay, Export, the CLI): the window ``[start, start + layers)`` is shown at, and named
by, its **centre** layer ``start + layers // 2`` (:func:`window_centre`; 22 layers: start + 11),
where Kaggle-style windows have the ink. Configs, checkpoints and prediction zarrs keep
``start_layer(s)``; :func:`window_start` converts back.

No torch here: the geometry and intensity helpers stay light (the ink depth estimate, Export
and the prediction store use them); tensors are made in :mod:`napari_inkdetect.window_tensors`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from napari_inkdetect.errors import ConfigError


def window_centre(start: int, layers: int) -> int:
    """The centre layer ``start + layers // 2`` of the window ``[start, start + layers)``:
    where the depth slider stands to show it (the upper middle when ``layers`` is even)."""
    return int(start) + int(layers) // 2


def window_start(centre: int, layers: int, depth: int | None = None) -> int:
    """The start layer of the ``layers``-layer window centred on ``centre`` (inverse of
    :func:`window_centre`); with ``depth``, clamped so the window fits in ``0..depth - 1``
    (as far as it can: 0 when it is longer than the volume)."""
    start = int(centre) - int(layers) // 2
    if depth is not None:
        start = max(0, min(start, int(depth) - int(layers)))
    return start


def centre_bounds(depth: int, layers: int) -> tuple[int, int]:
    """The first and last centre (inclusive) of a ``layers``-layer window inside ``depth``
    layers; ``(c, c)`` with the one clamped window when the volume is too shallow."""
    lo = window_centre(0, layers)
    return lo, max(lo, window_centre(int(depth) - int(layers), layers))


@dataclass(frozen=True)
class Normalisation:
    """uint16 -> float the 4th-place way: ``uint16 >> 8`` (like ``cv2.imread(path, 0)``),
    clip to 50..200, divide by 255. Or per-block percentile scaling as an option."""

    kind: str = "uint16_shift8_clip"
    shift: int = 8
    clip: tuple[float, float] = (50.0, 200.0)
    divide: float = 255.0
    percentiles: tuple[float, float] = (1.0, 99.0)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Normalisation:
        data = dict(data or {})
        known = {
            k: data[k] for k in ("kind", "shift", "clip", "divide", "percentiles") if k in data
        }
        for key in ("clip", "percentiles"):
            if key in known:
                known[key] = tuple(float(v) for v in known[key])
        norm = cls(**known)
        if norm.kind not in ("uint16_shift8_clip", "percentile"):
            raise ConfigError(f"unknown intensity normalisation {norm.kind!r}")
        return norm

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["clip"], data["percentiles"] = list(self.clip), list(self.percentiles)
        return data

    @property
    def pointwise(self) -> bool:
        """True when each voxel's input depends on that voxel alone (the shift-and-clip kind):
        a stack can then be normalised once and windows cut from it, and shipped as uint8."""
        return self.kind != "percentile"

    def to_uint8(self, block: np.ndarray, overwrite: bool = False) -> np.ndarray:
        """Raw values -> the clipped 8-bit values ``apply`` divides (pointwise kind only).

        A quarter of float32's bytes to copy and ship; ``uint8 / divide`` on the model's device
        equals :meth:`apply` exactly (integers below 256 are exact in float32). With
        ``overwrite`` a uint16 ``block`` is shifted and clipped in place (a block the caller
        owns): one pass less over the data."""
        if not self.pointwise:
            raise ValueError("percentile normalisation is not pointwise: use apply()")
        lo, hi = (int(np.clip(v, 0, 255)) for v in self.clip)
        if block.dtype == np.uint16:
            block = np.right_shift(block, self.shift, out=block if overwrite else None)
            overwrite = True
        values = np.clip(block, lo, hi, out=block if overwrite else None)
        return values.astype(np.uint8, copy=False)

    def to_uint8_into(
        self, block: np.ndarray, out: np.ndarray, scratch: np.ndarray | None = None
    ) -> np.ndarray:
        """:meth:`to_uint8` of ``block`` (any view, e.g. of a memory-mapped layer) written
        into ``out``: one read of the raw voxels, no intermediate copy; ``scratch`` (uint16,
        ``block``'s shape) is reused across calls when given."""
        if not self.pointwise:
            raise ValueError("percentile normalisation is not pointwise: use apply()")
        lo, hi = (int(np.clip(v, 0, 255)) for v in self.clip)
        if block.dtype == np.uint16:
            shifted = np.right_shift(block, self.shift, out=scratch)
            np.clip(shifted, lo, hi, out=shifted)
            np.copyto(out, shifted, casting="unsafe")
        else:
            np.copyto(out, np.clip(block, lo, hi), casting="unsafe")
        return out

    def apply(self, block: np.ndarray) -> np.ndarray:
        """Raw volume values (uint8 or uint16) -> float32 model input."""
        if self.kind == "percentile":
            return self._percentile(block)
        if block.dtype == np.uint16:
            block = block >> self.shift
        values = block.astype(np.float32)
        np.clip(values, self.clip[0], self.clip[1], out=values)
        values /= self.divide
        return values

    def _percentile(self, block: np.ndarray) -> np.ndarray:
        """Per-window (last three axes) percentile scaling to 0..1, ignoring zero padding."""
        values = block.astype(np.float32)
        flat = values.reshape(-1, int(np.prod(values.shape[-3:])))
        for window in flat:  # a view: scaled in place, one window at a time
            inside = window[window > 0]
            lo, hi = np.percentile(inside if inside.size else window, self.percentiles)
            window -= np.float32(lo)
            window /= np.float32(max(hi - lo, 1e-6))
        return np.clip(values, 0.0, 1.0, out=values)


@dataclass(frozen=True)
class WindowSpec:
    """Geometry of one model input: layers x tile x tile model pixels."""

    layers: int = 22
    tile: int = 256
    scale: float = 1.0
    depth_scale: bool = False
    normalisation: Normalisation = field(default_factory=Normalisation)

    def __post_init__(self) -> None:
        if self.layers < 4:
            raise ConfigError(f"window of {self.layers} layers: at least 4 are needed")
        if self.tile % 32:
            raise ConfigError(f"tile size {self.tile} must be a multiple of 32")
        if not 0.1 <= self.scale <= 10:
            raise ConfigError(f"scale {self.scale} outside 0.1..10")

    @property
    def extent(self) -> int:
        """Volume pixels a tile covers in Y and X."""
        return max(1, round(self.tile / self.scale))

    @property
    def ships_uint8(self) -> bool:
        """Whether windows can travel to the model's device as uint8 and become float there,
        bit for bit (:meth:`Normalisation.to_uint8`): pointwise normalisation, no resampling."""
        return self.normalisation.pointwise and not self.depth_scale and self.extent == self.tile

    @property
    def source_layers(self) -> int:
        """Volume layers a window reads (fewer than ``layers`` with legacy depth scaling)."""
        return math.ceil(self.layers / self.scale) if self.depth_scale else self.layers

    @property
    def source_offset(self) -> int:
        """First layer read, relative to the window's start layer ``s``.

        0 without depth scaling: the window reads ``[s, s + layers)``. With legacy
        ``depth_scale`` it reads ``n = source_layers = ceil(layers / scale)`` layers centred on
        the same centre ``c = s + layers // 2`` as the unscaled window: ``[c - n // 2,
        c - n // 2 + n)``. 22 layers at scale 2: ``[s + 6, s + 17)``, centre ``s + 11``, like the
        seed's ``zoom(block[s : s + 22], 2)[11:33]`` (about layers s + 5 .. s + 16); reading
        ``[s, s + 11)`` instead would put the same start number 5-6 layers shallower.
        """
        return self.layers // 2 - self.source_layers // 2 if self.depth_scale else 0

    def source_range(self, start: int) -> tuple[int, int]:
        """``(first, last + 1)`` of the volume layers the window at ``start`` reads."""
        first = int(start) + self.source_offset
        return first, first + self.source_layers

    def start_bounds(self, depth: int) -> tuple[int, int]:
        """``(lo, hi)``: the start layers whose reads fit in ``depth`` layers, inclusive (empty,
        ``lo > hi``, when the window is deeper than the volume)."""
        lo = -self.source_offset
        return lo, lo + int(depth) - self.source_layers

    def centred_start(self, depth: int) -> int:
        """The start layer whose reads sit in the middle of ``depth`` layers."""
        return (int(depth) - self.source_layers) // 2 - self.source_offset

    @classmethod
    def from_checkpoint_info(cls, info: Any) -> WindowSpec:
        """The window a checkpoint was trained with (``CheckpointInfo`` or its dict)."""
        get = info.get if isinstance(info, dict) else lambda k, d=None: getattr(info, k, d)
        return cls(
            layers=int(get("in_layers", 22)),
            tile=int(get("tile_size", 256)),
            scale=float(get("scale", 1.0)),
            depth_scale=bool(get("depth_scale", False)),
            normalisation=Normalisation.from_dict(get("normalisation")),
        )


def read_raw(
    segment: Any, start: int, y0: int, x0: int, spec: WindowSpec, n_layers: int | None = None
) -> np.ndarray:
    """Raw volume block of the window at start layer ``start`` (its
    :meth:`~WindowSpec.source_range`), zero-padded past the volume's edges in Y and X.

    With ``n_layers``: exactly the layers ``[start, start + n_layers)`` (a caller reading
    several windows at once, which applies the offset itself)."""
    if n_layers is None:
        start, n_layers = int(start) + spec.source_offset, spec.source_layers
    return read_padded(segment, (start, start + n_layers), y0, x0, spec.extent, spec.extent)


def read_padded(
    segment: Any, layers: tuple[int, int], y0: int, x0: int, height: int, width: int
) -> np.ndarray:
    """``segment[z0:z1, y0:y0 + height, x0:x0 + width]`` read straight from its files,
    zero-padded where the box leaves the volume in Y and X (a band of tile positions, or one)."""
    return np.ascontiguousarray(read_view(segment, layers, y0, x0, height, width))


def read_view(
    segment: Any, layers: tuple[int, int], y0: int, x0: int, height: int, width: int
) -> np.ndarray:
    """:func:`read_padded` without its copy where the box lies inside the volume: the block as
    the segment gives it (a view of its memory-mapped layers when it has them), for a caller
    that reads it once into a buffer of its own."""
    nz, ny, nx = segment.shape
    z0, z1 = int(layers[0]), int(layers[1])
    if z0 < 0 or z1 > nz:
        raise ConfigError(f"layers {z0}..{z1} outside the volume's 0..{nz}")
    ys, xs = (max(0, y0), min(ny, y0 + height)), (max(0, x0), min(nx, x0 + width))
    if ys == (y0, y0 + height) and xs == (x0, x0 + width):
        return segment.read_block((z0, z1), ys, xs)  # no padding copy
    out = np.zeros((z1 - z0, height, width), segment.dtype)
    if ys[1] > ys[0] and xs[1] > xs[0]:
        out[:, ys[0] - y0 : ys[1] - y0, xs[0] - x0 : xs[1] - x0] = segment.read_block(
            (z0, z1), ys, xs
        )
    return out


def blend_weight(extent: int) -> np.ndarray:
    """Separable raised-cosine (Hann) weight, sampled at pixel centres so it is never 0.

    At half-tile stride the shifted weights sum to a constant, a crossfade without seams. The
    predictor and the trainer's validation both blend with it, so the threshold chosen in
    validation is chosen on the map the user will see.
    """
    ramp = 0.5 - 0.5 * np.cos(2 * np.pi * (np.arange(extent) + 0.5) / extent)
    return np.outer(ramp, ramp).astype(np.float32)

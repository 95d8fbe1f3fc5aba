"""The synthetic segment: its arrays, how it is made, and how it is written as a real segment."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from napari_inkdetect.io.atomic import atomic_path
from napari_inkdetect.synthetic.fields import _dilate
from napari_inkdetect.synthetic.geometry import _draw_letters, _papyrus_mask, _surface, _tear
from napari_inkdetect.synthetic.labels import (
    _brush_strokes,
    _check_n,
    _far_blobs,
    _letter_boxes,
    _letter_height,
    _near,
)
from napari_inkdetect.synthetic.render import _crackle, _render

VOXEL_SIZE_UM = 7.91


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

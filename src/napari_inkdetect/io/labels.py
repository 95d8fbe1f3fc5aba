"""Ink labels on disk, in the three encodings users have, mapped onto one in-memory encoding.

In memory (and in our own files) labels are ``uint8`` with 0 = unlabeled (ignored by training),
1 = ink, 2 = not ink. On disk we also read Kaggle-style binary ``inklabels.png`` (255 = ink, 0
inside the mask = not ink, 0 outside = unlabeled) and read/write the ScrollPrize villa pair
``<id>_inklabels.png`` + ``<id>_supervision_mask.png`` [+ ``<id>_validation_mask.png``].
*Dense boxes* turn the unpainted pixels of a box into not ink, so a box of painted strokes
saves as villa supervision covering the whole box.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_inkdetect.errors import LabelsError
from napari_inkdetect.io.images import read_gray, write_gray

UNLABELED, INK, NOT_INK = 0, 1, 2
LABEL_NAMES = {UNLABELED: "unlabeled", INK: "ink", NOT_INK: "not ink"}
Box = tuple[int, int, int, int]  # (y0, y1, x0, x1): rows y0..y1-1, columns x0..x1-1


def check_shape(
    image: np.ndarray | tuple[int, ...], expected: tuple[int, ...], path: Path | str
) -> None:
    """Refuse a 2-D image (or image shape) that differs from the volume's (Y, X)."""
    shape = tuple(image) if isinstance(image, tuple) else tuple(image.shape)
    if shape != tuple(expected):
        raise LabelsError(
            f"{path}: shape {_fmt(shape)} does not match the volume's {_fmt(expected)}"
        )


def _fmt(shape: tuple[int, ...]) -> str:
    return " x ".join(str(int(s)) for s in shape)


def read_mask(path: Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A papyrus mask as bool: any non-zero pixel is papyrus."""
    data = read_gray(path, shape)  # a header of another size is refused before decoding
    if shape is not None:
        check_shape(data, shape, path)
    return data > 0


def encode_binary(ink: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Kaggle semantics: ink where set; not ink elsewhere inside the mask; unlabeled outside."""
    labels = np.full(ink.shape, NOT_INK, dtype=np.uint8)
    labels[ink] = INK
    if mask is not None:
        labels[~mask & ~ink] = UNLABELED
    return labels


def read_labels(
    path: Path,
    mask: np.ndarray | None = None,
    shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Read a label image in sparse (0/1/2) or Kaggle binary (0/255) encoding.

    The encoding is told by the values: a subset of {0, 1, 2} is sparse, a subset of {0, 255}
    that contains 255 is binary (then ``mask`` decides where 0 means "not ink"; without a mask
    the whole image counts as papyrus). Anything else is refused, because guessing would
    silently train on wrong labels.
    """
    path = Path(path)
    data = read_gray(path, shape)
    if shape is not None:
        check_shape(data, shape, path)
    if mask is not None:
        check_shape(mask, data.shape, f"mask for {path.name}")
    values = np.unique(data)
    if np.isin(values, (UNLABELED, INK, NOT_INK)).all():
        return data.astype(np.uint8, copy=False)
    if np.isin(values, (0, 255)).all():
        return encode_binary(data == 255, mask)
    bad = [_value(v) for v in values if v not in (0, 1, 2, 255)][:5]
    if not bad:  # mixes 1/2 with 255
        bad = [_value(v) for v in values]
    raise LabelsError(
        f"{path}: label values {bad} are not 0/1/2 (unlabeled/ink/not ink) "
        "nor 0/255 (binary ink labels)"
    )


def _value(v: np.generic) -> int | float | str:
    """A label value for a message: ints as ints, anything else (NaN, 0.5) as it is."""
    v = v.item()
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v if isinstance(v, int | float) else str(v)


def write_labels(path: Path, labels: np.ndarray) -> Path:
    """Write labels in the sparse 0/1/2 encoding (PNG or TIFF by suffix), atomically."""
    path = Path(path)
    labels = np.asarray(labels)
    validate_values(labels, path)
    write_gray(path, labels.astype(np.uint8))
    return path


def validate_values(labels: np.ndarray, where: Path | str) -> None:
    """Refuse values other than 0/1/2: a label layer painted with other ids is a user error."""
    if labels.ndim != 2:
        raise LabelsError(f"{where}: labels must be 2-D (Y, X), got shape {labels.shape}")
    extra = np.setdiff1d(np.unique(labels), (UNLABELED, INK, NOT_INK))
    if extra.size:
        raise LabelsError(
            f"{where}: label values {extra[:5].tolist()} are not 0/1/2 (unlabeled/ink/not ink)"
        )


def value_counts(labels: np.ndarray, minlength: int = 3, rows: int = 512) -> np.ndarray:
    """``np.bincount(labels.ravel(), minlength)`` in blocks of ``rows`` rows: bincount casts
    its input to int64, so one call on a 20k x 20k label image allocates 3.2 GB (measured: a
    144 MB image peaked at 1.1 GB); a block at a time allocates a few MB."""
    labels = np.asarray(labels)
    flat = labels.reshape(-1, labels.shape[-1]) if labels.ndim > 1 else labels.reshape(1, -1)
    counts = np.zeros(minlength, np.int64)
    for y in range(0, flat.shape[0], rows):
        block = np.bincount(flat[y : y + rows].ravel(), minlength=minlength)
        if block.size > counts.size:
            counts = np.pad(counts, (0, block.size - counts.size))
        counts[: block.size] += block
    return counts


def label_counts(labels: np.ndarray) -> dict[str, int]:
    """Pixel counts per class, for progress displays and for class weights."""
    counts = value_counts(labels)
    return {LABEL_NAMES[i]: int(counts[i]) for i in (INK, NOT_INK)}


def apply_dense_boxes(
    labels: np.ndarray, boxes: Iterable[Box], mask: np.ndarray | None = None
) -> np.ndarray:
    """A copy where every unlabeled pixel inside each box is not ink: a *dense* box.

    A dense box says "everything here that is not painted ink is not ink" (the villa
    supervision mask covers the box). Ink and painted not-ink stay as they are; with a papyrus
    ``mask`` only pixels on the papyrus are filled. Boxes are ``(y0, y1, x0, x1)``, end
    exclusive, clipped to the image; an empty or inverted box, or one wholly outside the image,
    is refused rather than silently ignored.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:  # values are checked on save: a np.unique here would cost seconds
        raise LabelsError(f"labels must be 2-D (Y, X), got shape {labels.shape}")
    if mask is not None:
        check_shape(mask, labels.shape, "papyrus mask")
    out = labels.copy()
    for box in boxes:
        y0, y1, x0, x1 = clip_box(box, labels.shape)
        region = out[y0:y1, x0:x1]  # a view: filling it fills ``out``
        fill = region == UNLABELED
        if mask is not None:
            fill &= np.asarray(mask[y0:y1, x0:x1], bool)
        region[fill] = NOT_INK
    return out


def clip_box(box: Box, shape: tuple[int, ...]) -> Box:
    """``(y0, y1, x0, x1)`` clipped to a ``(Y, X)`` image; empty, inverted or outside: refused."""
    if len(box) != 4:
        raise LabelsError(f"box {tuple(box)}: expected (y0, y1, x0, x1)")
    y0, y1, x0, x1 = (int(v) for v in box)
    if y1 <= y0 or x1 <= x0:
        raise LabelsError(f"box (y {y0}..{y1}, x {x0}..{x1}) is empty or inverted")
    height, width = (int(s) for s in shape[-2:])
    clipped = (max(y0, 0), min(y1, height), max(x0, 0), min(x1, width))
    if clipped[1] <= clipped[0] or clipped[3] <= clipped[2]:
        raise LabelsError(
            f"box (y {y0}..{y1}, x {x0}..{x1}) lies outside the {_fmt((height, width))} image"
        )
    return clipped


@dataclass(frozen=True)
class VillaPaths:
    """The ScrollPrize villa label files of one segment."""

    inklabels: Path
    supervision_mask: Path
    validation_mask: Path

    @classmethod
    def in_folder(cls, folder: Path, segment_id: str) -> VillaPaths:
        folder = Path(folder)
        return cls(
            folder / f"{segment_id}_inklabels.png",
            folder / f"{segment_id}_supervision_mask.png",
            folder / f"{segment_id}_validation_mask.png",
        )

    @classmethod
    def from_inklabels(cls, inklabels: Path) -> VillaPaths:
        """The pair that belongs to ``<id>_inklabels.png``."""
        inklabels = Path(inklabels)
        stem = inklabels.name.removesuffix(inklabels.suffix)
        segment_id = stem.removesuffix("_inklabels")
        return cls.in_folder(inklabels.parent, segment_id)


def read_villa_labels(
    paths: VillaPaths, shape: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Villa pair -> (training labels, validation labels or None) in the 0/1/2 encoding.

    Supervised pixels are ink where ``inklabels`` is set and not ink elsewhere; pixels inside
    the validation mask go to the validation labels instead of the training ones.
    """
    ink = read_gray(paths.inklabels, shape) > 0  # headers of another size: refused unread
    supervised = read_gray(paths.supervision_mask, ink.shape) > 0
    check_shape(supervised, ink.shape, paths.supervision_mask)
    if shape is not None:
        check_shape(ink, shape, paths.inklabels)
    labels = np.zeros(ink.shape, np.uint8)
    labels[supervised] = NOT_INK
    labels[supervised & ink] = INK
    if not paths.validation_mask.exists():
        return labels, None
    held_out = read_gray(paths.validation_mask, ink.shape) > 0
    check_shape(held_out, ink.shape, paths.validation_mask)
    validation = np.where(held_out, labels, UNLABELED).astype(np.uint8)
    labels[held_out] = UNLABELED
    return labels, validation


def write_villa_labels(
    paths: VillaPaths, labels: np.ndarray, validation: np.ndarray | None = None
) -> VillaPaths:
    """Write labels (and optional held-out validation labels) as a villa pair, atomically."""
    validate_values(labels, paths.inklabels)
    combined = labels.copy()
    if validation is not None:
        validate_values(validation, paths.validation_mask)
        check_shape(validation, labels.shape, paths.validation_mask)
        combined[validation > 0] = validation[validation > 0]
    write_gray(paths.inklabels, np.where(combined == INK, 255, 0).astype(np.uint8))
    write_gray(paths.supervision_mask, np.where(combined > 0, 255, 0).astype(np.uint8))
    if validation is not None:
        write_gray(paths.validation_mask, np.where(validation > 0, 255, 0).astype(np.uint8))
    return paths

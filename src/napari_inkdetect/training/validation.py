"""Where validation looks: dense regions that predict how the model does on unseen letters.

A validation score tells the truth only when it is measured like the next letter will be
judged: on letters the model never saw, with every pixel around them counted, so that a halo
around the strokes costs precision. Three sources, in order of preference:

- given validation labels (a file, a validation labels layer or a villa ``_validation_mask``):
  used as they are; the plan says whether they are *dense* (not-ink painted right next to the
  ink) or only sparse scribbles, which cannot see a halo;
- the automatic split: whole ink groups (a letter's strokes, grouped) held out, each with a
  box around it in which every pixel not painted ink counts as not-ink (the villa
  ``_supervision_mask`` semantics), and a gap of half a tile to any training label; training
  tiles never overlap a validation box (:meth:`ValidationPlan.allows`);
- none, with the reason, when too few ink groups are painted to hold one out honestly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from napari_inkdetect.io.labels import INK, NOT_INK, UNLABELED

Box = tuple[int, int, int, int]  # y0, y1, x0, x1 (half-open)

#: Fewest ink groups for the automatic split: with 3 painted letters, holding one out takes a
#: third of the ink from training, so validation needs a 4th letter or a region of its own.
MIN_GROUPS = 4
#: Not-ink within this many pixels of the ink's edge makes validation labels "dense".
DENSE_RING_PX = 4
#: Share of that ring that must be painted not-ink to count as dense.
DENSE_RING_FRACTION = 0.5
#: Width of the band inside the papyrus mask's border scored separately (false ink there).
BORDER_BAND_PX = 16


@dataclass
class ValidationPlan:
    """The validation labels (dense where possible), the boxes to predict, and what they are.

    ``labels`` is ``(Y, X)`` 0/1/2 (or None: no validation); ``boxes`` cover its labelled
    pixels; ``exclusive`` boxes may not be touched by any training tile."""

    source: str  # "given", "auto" or "none"
    labels: np.ndarray | None
    boxes: list[Box] = field(default_factory=list)
    exclusive: list[Box] = field(default_factory=list)
    n_groups: int = 0
    dense: bool = False
    note: str = ""

    @property
    def n_ink(self) -> int:
        return 0 if self.labels is None else int(np.count_nonzero(self.labels == INK))

    @property
    def n_not_ink(self) -> int:
        return 0 if self.labels is None else int(np.count_nonzero(self.labels == NOT_INK))

    def allows(self, y0: int, x0: int, extent: int) -> bool:
        """Whether a training tile at corner ``(y0, x0)`` stays clear of every exclusive box."""
        return not any(
            y0 < b[1] and b[0] < y0 + extent and x0 < b[3] and b[2] < x0 + extent
            for b in self.exclusive
        )

    def summary(self) -> str:
        """One line for the dock and the CLI."""
        if self.labels is None:
            return f"no validation: {self.note}"
        kind = "dense" if self.dense else "sparse"
        text = (
            f"validation ({self.source}, {kind}): {self.n_groups} held-out "
            f"{'group' if self.n_groups == 1 else 'groups'}, {self.n_ink} ink / "
            f"{self.n_not_ink} not-ink px"
        )
        return f"{text}; {self.note}" if self.note else text


def ink_groups(labels: np.ndarray, join_px: int) -> tuple[np.ndarray, int]:
    """Connected groups of ink, strokes closer than ``join_px`` joined (a letter's bars and
    bowls are one group): ``(group ids (Y, X) int32 on ink pixels, count)``."""
    ink = labels == INK
    out = np.zeros(labels.shape, np.int32)
    crop = _crop(ink, join_px)
    if crop is None:
        return out, 0
    joined = ink[crop]
    if join_px > 0:
        joined = ndimage.binary_dilation(joined, iterations=join_px)
    groups, n = ndimage.label(joined, structure=np.ones((3, 3)))
    out[crop] = np.where(ink[crop], groups, 0)
    return out, int(n)


def _crop(binary: np.ndarray, grow: int) -> tuple[slice, slice] | None:
    """The bounding box of ``binary`` grown by ``grow``: morphology on a 20k x 20k layer
    costs seconds per pass, on the labelled part milliseconds."""
    rows, cols = np.flatnonzero(binary.any(1)), np.flatnonzero(binary.any(0))
    if rows.size == 0:
        return None
    ny, nx = binary.shape
    return (
        slice(max(0, rows[0] - grow), min(ny, rows[-1] + 1 + grow)),
        slice(max(0, cols[0] - grow), min(nx, cols[-1] + 1 + grow)),
    )


def is_dense(labels: np.ndarray, ring_px: int = DENSE_RING_PX) -> bool:
    """Whether not-ink is painted right next to the ink (so a halo would be counted)."""
    crop = _crop(labels == INK, ring_px)
    if crop is None:
        return bool((labels == NOT_INK).any())
    labels = labels[crop]
    ink = labels == INK
    ring = ndimage.binary_dilation(ink, iterations=ring_px) & ~ink
    if not ring.any():
        return False
    return float(np.mean(labels[ring] == NOT_INK)) >= DENSE_RING_FRACTION


def _bounding_boxes(ids: np.ndarray, n: int) -> list[Box]:
    return [
        (s[0].start, s[0].stop, s[1].start, s[1].stop)
        for s in ndimage.find_objects(ids, max_label=n)
        if s is not None
    ]


def _grow(box: Box, by: int, shape: tuple[int, int]) -> Box:
    y0, y1, x0, x1 = box
    return max(0, y0 - by), min(shape[0], y1 + by), max(0, x0 - by), min(shape[1], x1 + by)


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]


def _cheapest_groups(
    labels: np.ndarray, boxes: list[Box], count: int, extent: int, seed: int
) -> set[int]:
    """``count`` groups to hold out, those whose box and half-tile gap cost training the
    fewest labelled pixels first (a letter at the end of a line before one in its middle),
    ties broken by the seed; a box overlapping another group's box takes that group along."""
    shape = labels.shape
    order = np.random.default_rng([seed, 7]).permutation(len(boxes))
    labelled = labels > 0

    def cost(i: int) -> int:
        y0, y1, x0, x1 = _grow(boxes[i], extent // 2, shape)
        return int(np.count_nonzero(labelled[y0:y1, x0:x1]))

    ranked = sorted(order.tolist(), key=cost)
    held: set[int] = set()
    for i in ranked:
        if len(held) >= count:
            break
        held.add(i)
        changed = True
        while changed:
            changed = False
            for j in range(len(boxes)):
                if j not in held and any(_overlaps(boxes[j], boxes[k]) for k in held):
                    held.add(j)
                    changed = True
    return held


def auto_split(
    labels: np.ndarray,
    extent: int,
    fraction: float,
    seed: int,
    mask: np.ndarray | None = None,
    min_groups: int = MIN_GROUPS,
) -> tuple[np.ndarray, ValidationPlan]:
    """Hold out ~``fraction`` of the ink groups as dense validation boxes.

    Each held-out group gets a box (its bounding box grown by 1/16 of a tile); inside it
    every papyrus pixel not painted ink is not-ink. Training labels within half a tile of a box
    are dropped, and the boxes are exclusive: no training tile may overlap one. Returns the
    training labels and the plan (``source="none"`` with the reason when there are fewer than
    ``min_groups`` groups)."""
    groups, n = ink_groups(labels, join_px=max(2, extent // 32))
    if n < min_groups or fraction <= 0:
        reason = (
            f"{n} ink {'group' if n == 1 else 'groups'} painted; the automatic split needs "
            f"{min_groups} to hold one out (paint another letter, or give validation labels "
            "or a validation box)"
        )
        return labels, ValidationPlan("none", None, note=reason)
    shape = labels.shape
    margin = max(4, extent // 16)
    boxes = [_grow(b, margin, shape) for b in _bounding_boxes(groups, n)]
    held = _cheapest_groups(labels, boxes, max(1, round(n * fraction)), extent, seed)
    if len(held) == n:  # everything overlaps: nothing would be left to train on
        return labels, ValidationPlan(
            "none", None, note="the painted letters overlap too much to hold one out"
        )
    val_boxes = [boxes[i] for i in sorted(held)]
    val = np.zeros_like(labels)
    keep_out = np.zeros(shape, bool)
    for y0, y1, x0, x1 in val_boxes:
        inside = labels[y0:y1, x0:x1]
        dense = np.where(inside == INK, INK, NOT_INK).astype(labels.dtype)
        if mask is not None:
            dense[~mask[y0:y1, x0:x1]] = UNLABELED
        val[y0:y1, x0:x1] = dense
        gy0, gy1, gx0, gx1 = _grow((y0, y1, x0, x1), extent // 2, shape)
        keep_out[gy0:gy1, gx0:gx1] = True
    train = np.where(keep_out, UNLABELED, labels).astype(labels.dtype)
    plan = ValidationPlan(
        "auto", val, boxes=val_boxes, exclusive=val_boxes, n_groups=len(held), dense=True
    )
    return train, plan


def given_plan(val_labels: np.ndarray, train_labels: np.ndarray, extent: int) -> ValidationPlan:
    """Plan for validation labels the user gave: predicted over the boxes of their labelled
    groups; says when they are sparse or when training labels come within half a tile."""
    labelled = val_labels > 0
    crop = _crop(labelled, extent // 2)
    if crop is None:
        return ValidationPlan("none", None, note="the validation labels are empty")
    oy, ox = crop[0].start, crop[1].start
    local = labelled[crop]
    groups, n = ndimage.label(
        ndimage.binary_dilation(local, iterations=max(2, extent // 16)),
        structure=np.ones((3, 3)),
    )
    boxes = [
        (y0 + oy, y1 + oy, x0 + ox, x1 + ox)
        for y0, y1, x0, x1 in _bounding_boxes(np.where(local, groups, 0), n)
    ]
    notes = []
    dense = is_dense(val_labels)
    if not dense:
        notes.append(
            "not-ink is only sparse scribbles, so this score cannot see a halo around the "
            "ink: draw a dense box around a validation letter"
        )
    near = ndimage.binary_dilation(local, iterations=max(1, extent // 2)) & (
        train_labels[crop] > 0
    )
    if near.any():
        notes.append(
            f"{int(near.sum())} training px lie within half a tile of validation px: "
            "the score may be optimistic"
        )
    _, n_ink = ink_groups(val_labels, join_px=max(2, extent // 16))
    return ValidationPlan(
        "given", val_labels, boxes=boxes, n_groups=n_ink, dense=dense, note="; ".join(notes)
    )


def border_band(mask: np.ndarray, width: int = BORDER_BAND_PX) -> np.ndarray:
    """Papyrus pixels within ``width`` px inside the mask's border (holes and tears too)."""
    inner = ndimage.binary_erosion(mask, iterations=width, border_value=1)
    return mask & ~inner


def mask_edges(mask: np.ndarray) -> np.ndarray:
    """Papyrus pixels on the mask's border (one pixel wide), where tiles teach "no ink here"."""
    return mask & ~ndimage.binary_erosion(mask, border_value=1)

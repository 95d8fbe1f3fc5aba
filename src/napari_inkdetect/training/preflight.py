"""Cheap checks before a training run starts: the mistakes a new user makes, with the fix.

The trainer validates everything itself, but only once its process is up (torch imported,
the model built): seconds to minutes before the message arrives. The Finetune dock and the
CLI call :func:`preflight` first, so that these stop at once, in one line that says what to do:

- labels with nothing painted, no ink (1) or no not-ink (2) pixel (validation labels too,
  and training labels with nothing left once the validation labels are held out);
- a window that reaches past the last layer (start layer + layers > the volume's depth);
- an ``init`` checkpoint trained on another window length than the one asked for (the
  front ends' policy: the engine itself only notes it, since 3D convolutions take any depth).

Only headers and label images are read; no model is built.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_inkdetect.errors import CheckpointError, ConfigError, LabelsError
from napari_inkdetect.io.labels import INK, NOT_INK
from napari_inkdetect.io.segment import open_segment, read_segment_labels
from napari_inkdetect.training.config import TrainConfig
from napari_inkdetect.training.init_settings import (
    read_init_facts,
    resolve_init_settings,
    window_spec,
)

__all__ = ["check_labels", "check_window", "preflight"]

PAINT_INK = "paint ink (1, key I) on a few crackle letters"
PAINT_NOT_INK = (
    "paint not ink (2, key N) on papyrus beside the ink, or draw dense boxes around the "
    "letters and press 'Fill boxes'"
)


def check_labels(
    labels: np.ndarray,
    name: str,
    val: np.ndarray | None = None,
    val_name: str | None = None,
) -> None:
    """Refuse labels a run cannot learn from: both classes must be painted, in the validation
    labels too, and some of each must be left to train on once the validation is held out.

    ``name`` / ``val_name`` say which layer or file each message is about.
    """
    _check_classes(labels, name)
    if val is None:
        return
    val_name = val_name or "the validation labels"
    _check_classes(val, val_name)
    if val.shape != labels.shape:
        raise LabelsError(
            f"{val_name} is {_size(val.shape)} px but {name} is {_size(labels.shape)}: make "
            "both on the same volume"
        )
    left = np.where(np.asarray(val) > 0, 0, np.asarray(labels))
    classes = ((INK, "ink"), (NOT_INK, "not ink"))
    missing = [what for cls, what in classes if not (left == cls).any()]
    if missing:
        raise LabelsError(
            f"{name}: no {' and no '.join(missing)} left to train on once {val_name} is held "
            "out (they cover the same pixels); paint training labels on other letters"
        )


def _size(shape: tuple[int, ...]) -> str:
    return " x ".join(str(int(n)) for n in shape)


def _check_classes(labels: np.ndarray, name: str) -> None:
    labels = np.asarray(labels)
    ink, not_ink = bool((labels == INK).any()), bool((labels == NOT_INK).any())
    if not ink and not not_ink:
        raise LabelsError(
            f"{name}: nothing painted (no ink (1) or not-ink (2) pixels); {PAINT_INK}, then "
            f"{PAINT_NOT_INK}"
        )
    if not ink:
        raise LabelsError(f"{name}: no ink (1) pixels; {PAINT_INK} (training needs both)")
    if not not_ink:
        raise LabelsError(f"{name}: no not-ink (2) pixels; {PAINT_NOT_INK}")


def check_window(config: TrainConfig, depth: int, voxel_size_um: float | None) -> TrainConfig:
    """The ``config`` resolved as the trainer will resolve it (window from the ``init``
    checkpoint where left None), after refusing a window length the checkpoint was not
    trained on and a window outside the volume's ``depth`` layers."""
    if config.init and config.layers is not None:
        facts = read_init_facts(config.init)  # ours: the header only
        if facts.layers is not None and not facts.assumed and facts.layers != config.layers:
            raise CheckpointError(
                f"{facts.path.name} was trained on {facts.layers}-layer windows but "
                f"{config.layers} layers are asked for: set Layers (--layers) to "
                f"{facts.layers}, or leave --layers out to take the checkpoint's window"
            )
    resolved, _ = resolve_init_settings(config, voxel_size_um)
    spec = window_spec(resolved)
    window = spec.source_layers
    if window > depth:
        raise ConfigError(
            f"a {window}-layer window does not fit in the volume's {depth} layers: use at most "
            f"{depth} layers" + (" (or a checkpoint with a shorter window)" if config.init else "")
        )
    start = spec.centred_start(depth) if config.start_layer is None else config.start_layer
    lo, hi = spec.start_bounds(depth)
    if not lo <= start <= hi:
        raise ConfigError(
            f"start layer {start} + {window} layers reaches outside the volume's {depth} "
            f"layers (0..{depth - 1}): use a start layer in {lo}..{hi}, or fewer layers"
        )
    return resolved


def preflight(config: TrainConfig, read_labels: bool = True) -> TrainConfig:
    """Every cheap check of :mod:`this module <napari_inkdetect.training.preflight>` on a run
    before it starts; returns the resolved config. ``read_labels=False``: the caller checked
    the label arrays itself (:func:`check_labels`), e.g. the dock on its layers."""
    segment = open_segment(config.segment)  # headers only
    if read_labels:
        labels = read_segment_labels(segment, Path(config.labels))
        val = read_segment_labels(segment, Path(config.val_labels)) if config.val_labels else None
        check_labels(labels, config.labels, val, config.val_labels)
    return check_window(config, int(segment.shape[0]), segment.voxel_size_um)

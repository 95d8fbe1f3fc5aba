"""Tiny real models saved as checkpoints, shared by the tests (imported by name: tests/ is on
``sys.path``, like :mod:`segment_files`)."""

from __future__ import annotations

from pathlib import Path


def save_tiny_checkpoint(path: Path, seed: int = 0, **save: object) -> Path:
    """A random resnet10 x0.125 saved with ``tile_size`` 64 (unless ``save`` says otherwise):
    the tiny real model most engine tests run on CPU; the same weights for the same seed."""
    import torch

    from napari_inkdetect.models import InkDetector, save_checkpoint

    torch.manual_seed(seed)
    return save_checkpoint(path, InkDetector("resnet10", width=0.125), **{"tile_size": 64, **save})

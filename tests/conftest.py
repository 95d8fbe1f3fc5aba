"""Shared fixtures: small real segments written to tmp dirs in every layout users have."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from model_files import save_tiny_checkpoint
from segment_files import random_volume, write_layers, write_png

# Keep the sample segment and pyramid caches out of the user's home during tests.
os.environ.setdefault("NAPARI_INKDETECT_CACHE", tempfile.mkdtemp(prefix="inkdetect-test-cache-"))


@pytest.fixture(autouse=True)
def dock_settings(tmp_path_factory, monkeypatch) -> Path:
    """The docks remember their settings in this test's own ini file (not the user's, and
    not another test's): napari_inkdetect._widgets._settings reads the variable."""
    path = tmp_path_factory.mktemp("settings") / "napari-inkdetect.ini"
    monkeypatch.setenv("NAPARI_INKDETECT_SETTINGS", str(path))
    return path


@pytest.fixture
def volume() -> np.ndarray:
    return random_volume()


@pytest.fixture
def scroll_segment(tmp_path, volume) -> Path:
    """``<id>/layers/NN.tif`` + ``<id>_mask.png`` + binary ``<id>_inklabels.png``."""
    folder = tmp_path / "20230702185753"
    write_layers(folder / "layers", volume)
    mask = np.zeros(volume.shape[1:], np.uint8)
    mask[8:-8, 8:-8] = 255
    ink = np.zeros(volume.shape[1:], np.uint8)
    ink[20:40, 30:60] = 255
    write_png(folder / f"{folder.name}_mask.png", mask)
    write_png(folder / f"{folder.name}_inklabels.png", ink)
    return folder


@pytest.fixture
def fragment(tmp_path, volume) -> Path:
    """Kaggle layout: ``surface_volume/NN.tif``, ``mask.png``, ``inklabels.png``."""
    folder = tmp_path / "train" / "1"
    write_layers(folder / "surface_volume", volume)
    write_png(folder / "mask.png", np.full(volume.shape[1:], 255))
    ink = np.zeros(volume.shape[1:], np.uint8)
    ink[10:20, 10:20] = 255
    write_png(folder / "inklabels.png", ink)
    return folder


@pytest.fixture(scope="session")
def tiny_checkpoint():
    """``tiny_checkpoint(path, **save_checkpoint_settings) -> path``: see
    :func:`save_tiny_checkpoint`."""
    return save_tiny_checkpoint


@pytest.fixture
def small_segment(tmp_path) -> Path:
    """The synthetic crackle segment at 12 x 96 x 128, written as segment ``s`` (its labels,
    mask and truth beside it) in this test's own folder."""
    from napari_inkdetect.synthetic import make_segment, write_segment

    return write_segment(make_segment(shape=(12, 96, 128)), tmp_path, "s")

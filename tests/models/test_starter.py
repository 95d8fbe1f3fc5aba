"""The bundled crackle starter: shipped, verified before use, loadable, refused when damaged."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from napari_inkdetect.errors import CheckpointError
from napari_inkdetect.models import InkDetector
from napari_inkdetect.models.starter import (
    STARTER_SHA256,
    load_starter,
    starter_path,
    verify_starter,
)
from napari_inkdetect.training.presets import PRESETS

ROOT = Path(__file__).resolve().parents[2]


def test_starter_is_bundled_small_and_matches_its_checksum():
    path = starter_path()
    assert path.parent.name == "models" and path.suffix == ".safetensors"
    assert path.stat().st_size < 3_000_000
    assert hashlib.sha256(path.read_bytes()).hexdigest() == STARTER_SHA256


def test_starter_loads_with_from_checkpoint_as_the_cpu_preset_model():
    model = InkDetector.from_checkpoint(starter_path())
    cpu = PRESETS["cpu"]
    assert (model.arch, model.width) == (cpu.arch, cpu.width)
    assert model.info.tile_size == cpu.tile and model.info.in_layers == 22
    assert model.info.provenance["source"] == "benchmarks/pretrain_starter.py"
    with torch.no_grad():
        out = load_starter()(torch.rand(1, 1, 22, 64, 64))
    assert out.shape == (1, 2, 64, 64) and torch.isfinite(out).all()


def test_a_corrupted_starter_is_refused_in_one_line(tmp_path):
    bad = tmp_path / "crackle_starter.safetensors"
    shutil.copy(starter_path(), bad)
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the weights: still a loadable file
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch") as info:
        verify_starter(bad)
    message = str(info.value)
    assert "\n" not in message and str(bad) in message and "reinstall" in message


def test_a_truncated_or_missing_starter_is_refused(tmp_path):
    short = tmp_path / "short.safetensors"
    short.write_bytes(starter_path().read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        verify_starter(short)
    with pytest.raises(CheckpointError, match="cannot be read"):
        verify_starter(tmp_path / "absent.safetensors")


def test_the_verified_copy_passes_and_an_edited_file_after_a_check_is_caught(tmp_path):
    copy = tmp_path / "copy.safetensors"
    shutil.copy(starter_path(), copy)
    assert verify_starter(copy) == copy
    copy.write_bytes(copy.read_bytes() + b"\0")  # size and mtime change: no stale cached digest
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        verify_starter(copy)


def test_a_non_editable_install_ships_the_starter():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = data["tool"]["setuptools"]["package-data"]["napari_inkdetect.models"]
    assert any(Path(starter_path().name).match(p) for p in patterns)


def test_init_starter_resolves_to_the_verified_file_with_its_own_preset(tmp_path):
    from napari_inkdetect.synthetic import make_segment, write_segment
    from napari_inkdetect.training import TrainConfig
    from napari_inkdetect.training.init_settings import resolve_init_settings
    from napari_inkdetect.training.starting_point import STARTER_INIT, STARTER_PRESET

    folder = write_segment(make_segment(shape=(24, 128, 160)), tmp_path, "s")
    config = TrainConfig(segment=str(folder), labels="l.png", out="o", init=STARTER_INIT)
    resolved, notes = resolve_init_settings(config, 7.91, "cpu", n_layers=24)
    assert resolved.init == str(starter_path())
    cpu = PRESETS["cpu"]
    window = (resolved.arch, resolved.width, resolved.tile, resolved.layers)
    assert window == (cpu.arch, cpu.width, cpu.tile, 22)  # the starter's, not the device's
    assert (resolved.lr, resolved.freeze_batchnorm) == (STARTER_PRESET.lr, False) == (1e-3, False)
    assert any("crackle starter" in n for n in notes)
    assert any("finetuning the crackle starter" in n for n in notes)  # why lr 1e-3
    # the same file given by its path gets the same preset (the dock passes the path)
    by_path = TrainConfig(segment=str(folder), labels="l.png", out="o", init=str(starter_path()))
    assert resolve_init_settings(by_path, 7.91, "cpu", n_layers=24)[0].lr == STARTER_PRESET.lr
    # a copy elsewhere is any trained ink model: the gentle preset
    copy = shutil.copy(starter_path(), tmp_path / "copy.safetensors")
    other = TrainConfig(segment=str(folder), labels="l.png", out="o", init=str(copy))
    assert resolve_init_settings(other, 7.91, "cpu", n_layers=24)[0].lr == 3e-5

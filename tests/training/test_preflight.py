"""Pre-run checks: the mistakes a new user makes stop before a run starts, with the fix.

No Qt here: the same function backs the CLI and the Finetune dock."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_inkdetect.cli import main
from napari_inkdetect.errors import CheckpointError, ConfigError, LabelsError
from napari_inkdetect.io.labels import INK, NOT_INK, write_labels
from napari_inkdetect.models import InkDetector, save_checkpoint
from napari_inkdetect.synthetic import make_segment, write_segment
from napari_inkdetect.training import TrainConfig
from napari_inkdetect.training.preflight import check_labels, preflight

DEPTH, SHAPE = 12, (96, 128)


@pytest.fixture(scope="module")
def segment(tmp_path_factory) -> Path:
    """A 12-layer synthetic segment with its own train and validation labels."""
    return write_segment(make_segment(shape=(DEPTH, *SHAPE)), tmp_path_factory.mktemp("seg"), "s")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """One of our checkpoints, trained (it says) on 8-layer windows."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "eight.safetensors"
    return save_checkpoint(path, InkDetector("resnet10", 0.125), in_layers=8, tile_size=64)


def _labels(tmp_path: Path, name: str, ink: bool, not_ink: bool) -> Path:
    data = np.zeros(SHAPE, np.uint8)
    if ink:
        data[10:30, 10:40] = INK
    if not_ink:
        data[50:70, 60:100] = NOT_INK
    return write_labels(tmp_path / name, data)


def _config(segment: Path, tmp_path: Path, labels: Path | None = None, **changes) -> TrainConfig:
    labels = labels or segment / "s_train_labels.png"
    return TrainConfig(
        segment=str(segment), labels=str(labels), out=str(tmp_path / "run"), tile=64, **changes
    )


@pytest.mark.parametrize(
    ("ink", "not_ink", "says", "fix"),
    [
        (False, False, "nothing painted", "paint ink (1, key I)"),
        (False, True, "no ink (1) pixels", "paint ink (1, key I) on a few crackle letters"),
        (True, False, "no not-ink (2) pixels", "press 'Fill boxes'"),
    ],
)
def test_unpainted_classes_are_refused_with_the_fix(segment, tmp_path, ink, not_ink, says, fix):
    labels = _labels(tmp_path, "mine.png", ink, not_ink)
    with pytest.raises(LabelsError) as err:
        preflight(_config(segment, tmp_path, labels, layers=8, start_layer=2))
    message = str(err.value)
    assert message.startswith(f"{labels}: ") and says in message and fix in message
    assert "\n" not in message
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_validation_labels_are_checked_too(segment, tmp_path):
    ink_only = _labels(tmp_path, "val.png", ink=True, not_ink=False)
    config = _config(segment, tmp_path, layers=8, start_layer=2, val_labels=str(ink_only))
    with pytest.raises(LabelsError, match="val.png: no not-ink"):
        preflight(config)
    both = _labels(tmp_path, "both.png", ink=True, not_ink=True)
    same = _config(segment, tmp_path, both, layers=8, start_layer=2, val_labels=str(both))
    with pytest.raises(LabelsError, match="no ink and no not ink left to train on"):
        preflight(same)


def test_check_labels_names_layers_and_passes_good_labels():
    good = np.zeros(SHAPE, np.uint8)
    good[:4], good[-4:] = INK, NOT_INK
    check_labels(good, "'s crackle labels'")  # both classes: no error
    with pytest.raises(LabelsError, match="^'s crackle labels': nothing painted"):
        check_labels(np.zeros(SHAPE, np.uint8), "'s crackle labels'")
    with pytest.raises(LabelsError, match="is 4 x 4 px but 'a' is 96 x 128"):
        val = np.array([[1, 2, 0, 0]] * 4, np.uint8)
        check_labels(good, "'a'", val, "'b'")


def test_window_past_the_last_layer_is_refused(segment, tmp_path):
    with pytest.raises(ConfigError) as err:
        preflight(_config(segment, tmp_path, layers=8, start_layer=6))
    assert "start layer 6 + 8 layers reaches outside the volume's 12 layers" in str(err.value)
    assert "use a start layer in 0..4, or fewer layers" in str(err.value)
    with pytest.raises(ConfigError, match="22-layer window does not fit .* use at most 12"):
        preflight(_config(segment, tmp_path))  # the default 22 layers on a 12-layer volume
    resolved = preflight(_config(segment, tmp_path, layers=8, start_layer=4))
    assert resolved.layers == 8 and not (tmp_path / "run").exists()


def test_checkpoint_for_another_window_length_is_refused(segment, tmp_path, checkpoint):
    with pytest.raises(CheckpointError) as err:
        preflight(_config(segment, tmp_path, init=str(checkpoint), layers=6, start_layer=0))
    message = str(err.value)
    assert "eight.safetensors was trained on 8-layer windows but 6 layers are asked for" in message
    assert "set Layers (--layers) to 8" in message
    resolved = preflight(_config(segment, tmp_path, init=str(checkpoint), start_layer=0))
    assert resolved.layers == 8  # left out: the checkpoint's window


def test_cli_train_stops_before_the_run_in_one_line(segment, tmp_path, capsys):
    empty = _labels(tmp_path, "empty.png", ink=False, not_ink=False)
    out = tmp_path / "cli-run"
    argv = ["train", str(segment), "--labels", str(empty), "--out", str(out), "--layers", "8",
            "--start-layer", "2", "--tile", "64", "--steps", "2"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("napari-inkdetect: error: ") and err.count("\n") == 1
    assert "empty.png: nothing painted" in err and "Traceback" not in err
    assert not out.exists()

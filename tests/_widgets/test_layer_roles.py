"""Layer roles in a real viewer: the docks choose layers by what they are for (metadata), not by
name or arrival order; Export preselects the latest prediction; pre-run errors stop before a
training process starts."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_inkdetect._napari_layers import (
    MASK,
    PREDICTION,
    PREVIEW,
    ROLE_KEY,
    TRAIN,
    TRUTH,
    VALIDATION,
    VOLUME,
    layer_role,
    prediction_layers,
)
from napari_inkdetect._widgets.export_dock import ExportWidget
from napari_inkdetect._widgets.finetune_dock import NO_VALIDATION, FinetuneWidget
from napari_inkdetect._widgets.labels_dock import CrackleLabelsWidget
from napari_inkdetect._widgets.predict_dock import PredictWidget
from napari_inkdetect.engine import drain
from napari_inkdetect.inference import PredictConfig, predict
from napari_inkdetect.models import InkDetector, save_checkpoint
from napari_inkdetect.synthetic import make_segment, write_segment

SHAPE = (12, 96, 128)
NEVER_TRAIN = ("s mask", "s inklabels", "t mask", "t inklabels")


@pytest.fixture(scope="module")
def segments(tmp_path_factory) -> dict[str, Path]:
    """Two segments ``s`` and ``t`` (volume, mask, truth, train and validation labels)."""
    root = tmp_path_factory.mktemp("roles")
    return {
        name: write_segment(make_segment(shape=SHAPE, seed=i), root, name)
        for i, name in enumerate(("s", "t"))
    }


def _items(combo) -> list[str]:
    return [combo.itemText(i) for i in range(combo.count())]


def _docks(viewer):
    return FinetuneWidget(viewer), PredictWidget(viewer)


def _assert_chosen_by_role(finetune, predict, prefix: str = "s") -> None:
    offered = _items(finetune.labels_combo) + _items(finetune.val_combo)
    assert not set(offered) & set(NEVER_TRAIN)
    assert finetune.volume_combo.currentText() == prefix
    assert finetune.labels_combo.currentText() == f"{prefix} train labels"
    assert finetune.val_combo.currentText() == f"{prefix} validation labels"
    assert predict.volume_combo.currentText() == prefix
    assert predict.val_combo.currentText() == f"{prefix} validation labels"
    assert f"{prefix} mask" not in _items(predict.val_combo)


def test_the_reader_records_each_layer_role(make_napari_viewer, segments):
    viewer = make_napari_viewer()
    viewer.open(segments["s"], plugin="napari-inkdetect")
    roles = {layer.name: layer_role(layer) for layer in viewer.layers}
    assert roles == {
        "s": VOLUME,
        "s mask": MASK,
        "s inklabels": TRUTH,  # dense answer key: the segment has training labels of its own
        "s train labels": TRAIN,
        "s validation labels": VALIDATION,
    }


def test_docks_first_then_segment(make_napari_viewer, segments):
    viewer = make_napari_viewer()
    finetune, predict = _docks(viewer)  # the mask arrives first, then truth, then train labels
    viewer.open(segments["s"], plugin="napari-inkdetect")
    _assert_chosen_by_role(finetune, predict)


def test_segment_first_then_docks(make_napari_viewer, segments):
    viewer = make_napari_viewer()
    viewer.open(segments["s"], plugin="napari-inkdetect")
    _assert_chosen_by_role(*_docks(viewer))


def test_a_second_segment_keeps_the_choices(make_napari_viewer, segments):
    viewer = make_napari_viewer()
    finetune, predict = _docks(viewer)
    viewer.open(segments["s"], plugin="napari-inkdetect")
    viewer.open(segments["t"], plugin="napari-inkdetect")
    _assert_chosen_by_role(finetune, predict)
    assert "t train labels" in _items(finetune.labels_combo)  # offered, not forced


def test_labels_loaded_later_replace_a_fallback_not_a_choice(
    make_napari_viewer, segments, tmp_path
):
    folder = shutil.copytree(segments["s"], tmp_path / "s")
    kept = tmp_path / "labels"
    kept.mkdir()
    for name in ("s_inklabels.png", "s_train_labels.png", "s_validation_labels.png"):
        shutil.move(folder / name, kept / name)  # the segment opens with its mask only
    viewer = make_napari_viewer()
    finetune, predict = _docks(viewer)
    labels_dock = CrackleLabelsWidget(viewer)
    viewer.open(folder, plugin="napari-inkdetect")
    assert _items(finetune.labels_combo) == []  # the mask is never offered
    assert finetune.val_combo.currentText() == NO_VALIDATION
    mine = viewer.add_labels(np.zeros(SHAPE[1:], np.uint8), name="scribbles")  # no role
    assert finetune.labels_combo.currentText() == "scribbles"  # the only candidate: a fallback
    train = labels_dock.load(kept / "s_train_labels.png")
    assert train.metadata[ROLE_KEY] == TRAIN
    assert finetune.labels_combo.currentText() == "s_train_labels"  # the role wins
    labels_dock.load(kept / "s_validation_labels.png")
    assert finetune.val_combo.currentText() == "s_validation_labels"
    assert predict.val_combo.currentText() == "s_validation_labels"
    # the user's choice is kept while new labels arrive
    finetune.labels_combo.setCurrentText(mine.name)
    painted = labels_dock.new_labels()
    assert painted.metadata[ROLE_KEY] == TRAIN and finetune.labels_combo.currentText() == mine.name
    val = labels_dock.new_validation_labels()
    assert val.metadata[ROLE_KEY] == VALIDATION
    assert finetune.val_combo.currentText() == "s_validation_labels"  # kept: also a role layer
    viewer.layers.remove("s_validation_labels")
    assert finetune.val_combo.currentText() == val.name
    assert "s mask" not in _items(finetune.labels_combo)


# --------------------------------------------------------------------------- Export


@pytest.fixture(scope="module")
def predictions(segments, tmp_path_factory) -> dict[str, Path]:
    """A real prediction zarr (tiny model), copied to stand for a preview and a second run."""
    root = tmp_path_factory.mktemp("predictions")
    torch.manual_seed(0)
    ckpt = save_checkpoint(root / "m.safetensors", InkDetector("resnet10", 0.125), tile_size=64)
    first = drain(predict(
        PredictConfig(
            segment=str(segments["s"]), checkpoint=str(ckpt), out=str(root / "a.zarr"), tile=64,
            chunk=64, layers=8, start_layers=(1, 2), device="cpu", autocast="off",
        )
    )).path  # fmt: skip
    (root / "preview").mkdir()
    return {
        "a": first,
        "preview": Path(shutil.copytree(first, root / "preview" / "step0000002.zarr")),
        "b": Path(shutil.copytree(first, root / "b.zarr")),
    }


def _add(viewer, path: Path, role: str) -> None:
    for data, kwargs, _ in prediction_layers(path, role=role):
        viewer.add_image(data, **kwargs)


def test_export_preselects_the_latest_prediction_not_a_preview(make_napari_viewer, predictions):
    viewer = make_napari_viewer()
    dock = ExportWidget(viewer)
    viewer.open(predictions["a"], plugin="napari-inkdetect")  # the reader: role prediction
    _add(viewer, predictions["preview"], PREVIEW)  # a training preview arrives later
    assert dock.prediction == predictions["a"]
    assert dock.folder_edit.text() == str(predictions["a"].parent / "a_export")
    assert _items(dock.prediction_combo) == ["s ink a (z = window centre, 8 layers)"]  # no preview
    _add(viewer, predictions["b"], PREDICTION)
    assert dock.prediction == predictions["b"]
    assert dock.folder_edit.text() == str(predictions["b"].parent / "b_export")
    assert dock.prediction_combo.count() == 2
    # a dock opened afterwards starts on the most recently added prediction too
    assert ExportWidget(viewer).prediction == predictions["b"]


# --------------------------------------------------------------------------- pre-run errors


@pytest.fixture
def finetune(make_napari_viewer, segments, tmp_path):
    viewer = make_napari_viewer()
    viewer.open(segments["s"], plugin="napari-inkdetect")
    dock = FinetuneWidget(viewer)
    dock.layers_spin.setValue(8)
    dock.device_combo.setCurrentText("cpu")
    dock.runs_edit.setText(str(tmp_path / "runs"))
    return dock


def _refused(dock, notifications, *expected: str) -> None:
    assert dock.start() is None and dock.worker is None and not dock.running
    messages = [str(n.message) for n in notifications]
    assert messages and all(part in messages[-1] for part in expected), messages
    assert all(part in dock.status_label.text() for part in expected)
    assert dock.run_button.text() == "Finetune"


def test_pre_run_errors_show_the_fix_and_start_no_worker(finetune, notifications, tmp_path):
    labels_dock = CrackleLabelsWidget(finetune.viewer)
    empty = labels_dock.new_labels()
    finetune.labels_combo.setCurrentText(empty.name)
    _refused(finetune, notifications, f"'{empty.name}': nothing painted", "key I")
    empty.data[10:20, 10:20] = 1  # ink only
    _refused(finetune, notifications, "no not-ink (2) pixels", "Fill boxes")
    assert not (tmp_path / "runs").exists()  # nothing written for a refused run
    finetune.labels_combo.setCurrentText("s train labels")
    finetune.centre_spin.setValue(10)  # the window 6-13 would pass layer 11: clamped to fit
    assert finetune.centre_spin.value() == 8 and finetune.window_start() == 4
    finetune.layers_spin.setValue(16)  # no 16-layer window fits in the 12 layers
    _refused(finetune, notifications, "does not fit in the volume's 12 layers", "at most 12")
    assert list((tmp_path / "runs").iterdir()) == []  # its run folder was taken back

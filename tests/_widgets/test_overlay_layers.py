"""A run's layers appear before it streams and are reused by the next run: napari takes
200-500 ms to add a layer (timed in benchmarks/bench_responsiveness.py), so the docks add
each one once, at the click, without taking the selection off the layer being painted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from napari_inkdetect._napari_layers import PREDICTION, PREDICTION_KEY, PREVIEW, layer_role
from napari_inkdetect._widgets.export_dock import ExportWidget
from napari_inkdetect._widgets.finetune_dock import FinetuneWidget
from napari_inkdetect._widgets.predict_dock import PredictWidget
from napari_inkdetect.models import InkDetector, save_checkpoint

TIMEOUT_MS = 60_000


@pytest.fixture
def viewer(segment_viewer):
    segment_viewer.layers.selection.active = segment_viewer.layers["s train labels"]  # painted
    return segment_viewer


@pytest.fixture
def predict(viewer, tmp_path):
    torch.manual_seed(0)
    model = InkDetector("resnet10", width=0.0625)
    checkpoint = save_checkpoint(tmp_path / "m.safetensors", model, in_layers=8, tile_size=64)
    dock = PredictWidget(viewer)
    viewer.window.add_dock_widget(dock, name="Predict")
    dock.checkpoint_edit.setText(str(checkpoint))
    dock.checkpoint_edit.editingFinished.emit()  # its window: the band of centres follows
    dock.out_edit.setText(str(tmp_path / "predictions"))
    dock.device_combo.setCurrentText("cpu")
    dock.region_combo.setCurrentText("Whole mask")
    return dock


def ours(viewer, role: str) -> list:
    return [layer for layer in viewer.layers if layer_role(layer) == role]


def test_the_overlay_is_made_at_the_click_and_reused_by_the_next_run(viewer, predict, qtbot):
    export = ExportWidget(viewer)
    painted = viewer.layers.selection.active
    assert predict.start() is not None
    made = ours(viewer, PREDICTION)  # before any event of the run is handled
    assert len(made) == 1 and viewer.layers.selection.active is painted
    qtbot.waitUntil(lambda: not predict.running, timeout=TIMEOUT_MS)
    overlay, peak = ours(viewer, PREDICTION)
    assert overlay is made[0]  # the run showed in the layer made at the click
    assert overlay.metadata[PREDICTION_KEY] == predict.config.out
    assert peak.metadata["projection"] and not peak.visible  # added after the run
    assert predict.runner.layers == [overlay, peak]
    assert viewer.layers.selection.active is painted
    assert export.prediction == Path(predict.config.out)

    first = predict.config.out
    predict.stride_spin.setValue(48)  # another prediction, another zarr
    predict.start()
    qtbot.waitUntil(lambda: not predict.running, timeout=TIMEOUT_MS)
    assert predict.config.out != first
    assert ours(viewer, PREDICTION) == [overlay, peak]  # the same layers, pointed at it
    for layer in (overlay, peak):
        assert layer.metadata[PREDICTION_KEY] == predict.config.out
    assert export.prediction == Path(predict.config.out)  # Export follows the reused layer


def test_a_run_that_fails_leaves_no_empty_layer(viewer, predict, qtbot, tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a checkpoint")
    predict.checkpoint_edit.setText(str(broken))
    before = list(viewer.layers)
    assert predict.start() is not None  # the engine finds out, in the worker
    assert len(ours(viewer, PREDICTION)) == 1
    qtbot.waitUntil(lambda: not predict.running, timeout=TIMEOUT_MS)
    assert predict.runner.error and list(viewer.layers) == before


def test_finetune_makes_its_preview_layer_before_training(viewer, tmp_path, qtbot):
    dock = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(dock, name="Finetune")
    dock.device_combo.setCurrentText("cpu")
    dock.width_spin.setValue(0.0625)
    dock.layers_spin.setValue(8)
    dock.tile_spin.setValue(64)
    dock.steps_spin.setValue(2)
    dock.batch_spin.setValue(2)
    dock.preview_spin.setValue(50)  # the run ends before its first preview
    dock.runs_edit.setText(str(tmp_path / "runs"))
    painted = viewer.layers.selection.active
    worker = dock.start()
    assert worker is not None
    (preview,) = ours(viewer, PREVIEW)
    assert preview.name == "s preview (training)" and viewer.layers.selection.active is painted
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT_MS):
        pass
    assert ours(viewer, PREVIEW) == []  # never used: removed

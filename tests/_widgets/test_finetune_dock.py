"""The Finetune dock in a real viewer: config from widgets, real child-process runs, stop,
bad input and closing the viewer mid-run."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest

from napari_inkdetect._widgets.finetune_dock import NO_VALIDATION, FinetuneWidget
from napari_inkdetect.io.images import read_gray
from napari_inkdetect.training import StepDone

RUN_TIMEOUT_MS = 60_000  # a spawned child imports torch first: ~8 s on two slow cores


@pytest.fixture
def dock(segment_viewer, tmp_path):
    """The dock, docked, set up for a tiny CPU run writing under ``tmp_path/runs``."""
    widget = FinetuneWidget(segment_viewer)
    segment_viewer.window.add_dock_widget(widget, name="Finetune")
    widget.new_radio.setChecked(True)
    widget.width_spin.setValue(0.125)
    widget.layers_spin.setValue(8)
    widget.tile_spin.setValue(64)
    widget.steps_spin.setValue(3)
    widget.batch_spin.setValue(2)
    widget.device_combo.setCurrentText("cpu")
    widget.val_every_spin.setValue(2)
    widget.runs_edit.setText(str(tmp_path / "runs"))
    segment_viewer.dims.set_current_step(0, 2)
    return widget


def test_build_config_reflects_widgets(dock, segment_viewer):
    # a second dock restores the device the first one left in the (per-test) settings store
    assert FinetuneWidget(segment_viewer).device_combo.currentText() == "cpu"
    assert dock.volume_combo.currentText() == "s"
    assert dock.labels_combo.currentText() == "s train labels"
    assert dock.val_combo.currentText() == "s validation labels"
    segment_viewer.dims.set_current_step(0, 5)
    dock.lr_spin.setValue(1e-3)
    dock.train_combo.setCurrentText("decoder+last")
    config = dock.build_config()
    assert dock.centre_spin.value() == 5  # the depth slider's position is the window's centre
    assert config.start_layer == 1  # the 8-layer window [1, 9), centred on layer 5
    assert "[c - 4, c - 4 + 8) = 1-8" in dock.centre_spin.toolTip()
    assert (config.width, config.layers, config.tile, config.steps) == (0.125, 8, 64, 3)
    assert (config.batch_size, config.lr, config.train) == (2, 1e-3, "decoder+last")
    assert (config.device, config.val_every, config.init) == ("cpu", 2, None)
    assert config.segment == segment_viewer.layers["s"].metadata["inkdetect_segment"]
    for path, name in (
        (config.labels, "s train labels"),
        (config.val_labels, "s validation labels"),
    ):
        np.testing.assert_array_equal(read_gray(path), segment_viewer.layers[name].data)
    # a typed centre stops following the slider; "from slider" follows it again
    dock.centre_spin.setValue(7)
    segment_viewer.dims.set_current_step(0, 4)
    assert dock.build_config().start_layer == 3
    dock.slider_button.click()
    assert dock.centre_spin.value() == 4 and dock.build_config().start_layer == 0
    # the slider near an end: the window is clamped so that it fits in the 12 layers
    segment_viewer.dims.set_current_step(0, 11)
    assert dock.centre_spin.value() == 8 and dock.build_config().start_layer == 4
    segment_viewer.dims.set_current_step(0, 1)
    assert dock.centre_spin.value() == 4 and dock.build_config().start_layer == 0
    # another window length keeps the centre (clamped where the window would not fit)
    segment_viewer.dims.set_current_step(0, 6)
    dock.layers_spin.setValue(4)
    assert dock.centre_spin.value() == 6 and dock.build_config().start_layer == 4
    dock.centre_spin.setValue(9)
    dock.layers_spin.setValue(8)
    assert dock.centre_spin.value() == 8 and dock.build_config().start_layer == 4
    dock.layers_spin.setValue(6)
    assert dock.centre_spin.value() == 8 and dock.build_config().start_layer == 5
    dock.layers_spin.setValue(8)
    # validation: automatic split; model: a checkpoint file
    dock.val_combo.setCurrentText(NO_VALIDATION)
    dock.checkpoint_radio.setChecked(True)
    dock.checkpoint_edit.setText("/models/best.safetensors")
    config = dock.build_config()
    assert config.val_labels is None and config.init == "/models/best.safetensors"


def test_layer_combos_follow_the_layer_list(dock, segment_viewer):
    segment_viewer.add_labels(np.zeros((96, 128), np.uint8), name="more labels")
    assert "more labels" in [
        dock.labels_combo.itemText(i) for i in range(dock.labels_combo.count())
    ]
    assert dock.labels_combo.currentText() == "s train labels"  # the choice is kept
    segment_viewer.layers.remove("s train labels")
    names = [dock.labels_combo.itemText(i) for i in range(dock.labels_combo.count())]
    assert "s train labels" not in names and dock.labels_combo.currentText() in names


def test_volume_without_segment_is_refused(dock, segment_viewer, notifications):
    segment_viewer.add_image(np.zeros((12, 96, 128), np.uint16), name="plain")
    dock.volume_combo.setCurrentText("plain")
    assert dock.start() is None
    assert any("napari-inkdetect's reader" in n.message for n in notifications)
    assert dock.run_button.text() == "Finetune" and not dock.running


def test_tiny_run_completes(dock, qtbot):
    worker = dock.start()
    assert dock.run_button.text() == "Stop"
    with qtbot.waitSignal(worker.finished, timeout=RUN_TIMEOUT_MS):
        pass
    assert dock.progress.value() == dock.progress.maximum() == 3
    assert [s for s, _ in dock.loss_plot.losses] == [1, 2, 3]
    assert [s for s, _ in dock.loss_plot.f05] == [2, 3]
    assert dock.last_checkpoint is not None and dock.last_checkpoint.exists()
    assert dock.last_checkpoint.name == "best.safetensors"
    assert str(dock.last_checkpoint) in dock.checkpoint_label.text()
    assert "tiles/s" in dock.eta_label.text() and "cpu" in dock.eta_label.text()
    assert dock.run_button.text() == "Finetune" and not dock.running
    assert not dock.finished_event.stopped


def test_stop_ends_the_run_with_last_checkpoint(dock, qtbot):
    dock.steps_spin.setValue(1000)
    dock.val_every_spin.setValue(1000)
    worker = dock.start()
    steps = []
    worker.yielded.connect(lambda e: isinstance(e, StepDone) and steps.append(e.step))
    qtbot.waitUntil(lambda: bool(steps), timeout=RUN_TIMEOUT_MS)
    with qtbot.waitSignal(worker.finished, timeout=15_000):
        dock.run_button.click()
        assert dock.run_button.text() == "Stopping..."
    finished = dock.finished_event
    assert finished.stopped and finished.steps < 1000
    assert finished.last_path.name == "last.safetensors" and finished.last_path.exists()
    assert dock.run_button.text() == "Finetune" and dock.run_button.isEnabled()
    assert not mp.active_children()


def test_bad_labels_show_the_engine_message(dock, segment_viewer, qtbot, notifications):
    # painted, but not on this volume's plane: only the engine (in the child) finds out
    wrong_shape = np.zeros((64, 96), np.uint8)
    wrong_shape[10:30, 10:30] = 1
    wrong_shape[40:50, 40:50] = 2
    segment_viewer.add_labels(wrong_shape, name="other plane")
    dock.labels_combo.setCurrentText("other plane")
    dock.val_combo.setCurrentText(NO_VALIDATION)
    worker = dock.start()
    with qtbot.waitSignal(worker.finished, timeout=RUN_TIMEOUT_MS):
        pass
    errors = [n.message for n in notifications if "does not match" in n.message]
    assert errors and "train_labels.png: shape 64 x 96" in errors[0]
    assert "does not match the volume's" in dock.status_label.text()
    assert dock.run_button.text() == "Finetune" and not dock.running
    assert dock.last_checkpoint is None


def test_closing_the_viewer_stops_the_run(dock, segment_viewer, qtbot):
    dock.steps_spin.setValue(1000)
    dock.val_every_spin.setValue(1000)
    worker = dock.start()
    qtbot.waitUntil(lambda: dock.progress.value() >= 1, timeout=RUN_TIMEOUT_MS)
    run_dir = Path(dock.config.out)
    with qtbot.waitSignal(worker.finished, timeout=30_000):
        segment_viewer.close()
    assert (run_dir / "last.safetensors").exists()
    assert not mp.active_children()

"""The docks remember their settings between sessions (an ini file the tests isolate), and
the Finetune dock continues from the last run's checkpoint in one click."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
from qtpy.QtCore import QSettings

from napari_inkdetect._widgets._settings import SETTINGS_ENV, settings_store
from napari_inkdetect._widgets.export_dock import ExportWidget
from napari_inkdetect._widgets.finetune_dock import FinetuneWidget
from napari_inkdetect._widgets.labels_dock import CrackleLabelsWidget
from napari_inkdetect._widgets.predict_dock import PredictWidget
from napari_inkdetect.models import InkDetector, save_checkpoint
from napari_inkdetect.training.init_settings import resolve_init_settings
from napari_inkdetect.training.presets import pick_preset


def close(widget, qtbot) -> None:
    """Close a dock as napari does when its window goes: the Qt object is deleted."""
    widget.close()
    widget.deleteLater()
    qtbot.waitUntil(lambda: not _alive(widget), timeout=5000)


def _alive(widget) -> bool:
    try:
        widget.objectName()
    except RuntimeError:
        return False
    return True


def test_the_store_is_this_tests_own_file(dock_settings):
    store = settings_store()
    assert os.environ[SETTINGS_ENV] == str(dock_settings)
    assert Path(store.fileName()) == dock_settings
    assert store.format() == QSettings.Format.IniFormat


def test_finetune_settings_survive_closing_the_dock(viewer, qtbot, dock_settings, tmp_path):
    dock = FinetuneWidget(viewer)
    # values no device preset gives, so restoring them cannot be the preset again
    values = {
        "width_spin": 0.1875,
        "layers_spin": 10,
        "scale_spin": 1.5,
        "steps_spin": 77,
        "batch_spin": 3,
        "lr_spin": 0.0002,
        "tile_spin": 96,
        "val_every_spin": 11,
        "seed_spin": 5,
        "preview_spin": 0,
        "preview_side_spin": 320,
    }
    for name, value in values.items():
        getattr(dock, name).setValue(value)
    dock.train_combo.setCurrentText("decoder")
    dock.autocast_combo.setCurrentText("off")
    dock.arch_combo.setCurrentText("resnet18")
    dock.checkpoint_radio.setChecked(True)
    dock.checkpoint_edit.setText("/models/kinetics.pth")
    dock.runs_edit.setText(str(tmp_path / "my-runs"))
    close(dock, qtbot)
    assert "steps=77" in dock_settings.read_text()  # on disk, not only in memory

    again = FinetuneWidget(viewer)
    assert {name: getattr(again, name).value() for name in values} == pytest.approx(values)
    assert again.train_combo.currentText() == "decoder"
    assert again.autocast_combo.currentText() == "off"
    assert again.arch_combo.currentText() == "resnet18"
    assert again.checkpoint_radio.isChecked() and not again.new_radio.isChecked()
    assert again.checkpoint_edit.isEnabled() and not again.arch_combo.isEnabled()
    assert again.checkpoint_edit.text() == "/models/kinetics.pth"
    assert again.runs_edit.text() == str(tmp_path / "my-runs")
    # choosing the device again applies its preset (the restored values only win at startup)
    again._apply_device_preset(again.device_combo.currentText())
    assert again.steps_spin.value() == pick_preset(again.device_combo.currentText())[0].steps


def test_sizes_saved_for_a_device_this_machine_lacks_give_way_to_its_preset(viewer):
    store = settings_store()
    store.setValue("finetune/device", "cuda:7")  # saved on a GPU machine
    store.setValue("finetune/steps", "99999")
    store.setValue("finetune/seed", "9")
    store.sync()
    dock = FinetuneWidget(viewer)
    device = dock.device_combo.currentText()
    assert device != "cuda:7"
    assert dock.steps_spin.value() == pick_preset(device)[0].steps
    assert dock.seed_spin.value() == 9  # not a size: kept


def test_predict_export_and_labels_settings_survive(viewer, qtbot, tmp_path):
    predict = PredictWidget(viewer)
    predict.region_combo.setCurrentText("Whole mask")
    predict.stride_spin.setValue(48)
    predict.tta_check.setChecked(True)
    predict.direction_combo.setCurrentText("reverse")
    predict.out_edit.setText(str(tmp_path / "preds"))
    predict.batch_spin.setValue(5)
    predict.max_view_spin.setValue(1024)
    predict.dtype_combo.setCurrentText("float16")
    predict.min_size_spin.setValue(40)
    predict.outline_check.setChecked(True)
    export = ExportWidget(viewer)
    export.png_check.setChecked(False)
    export.tif_check.setChecked(True)
    export.gif_check.setChecked(False)
    export.fps_spin.setValue(12)
    export.size_spin.setValue(640)
    labels = CrackleLabelsWidget(viewer)
    labels.brush_spin.setValue(7)
    for widget in (predict, export, labels):
        close(widget, qtbot)

    predict = PredictWidget(viewer)
    assert predict.region_combo.currentText() == "Whole mask"
    assert not predict.shapes_combo.isEnabled()
    assert (predict.stride_spin.value(), predict.batch_spin.value()) == (48, 5)
    assert predict.tta_check.isChecked() and predict.outline_check.isChecked()
    assert predict.direction_combo.currentText() == "reverse"
    assert predict.out_edit.text() == str(tmp_path / "preds")
    assert (predict.max_view_spin.value(), predict.min_size_spin.value()) == (1024, 40)
    assert predict.dtype_combo.currentText() == "float16"
    export = ExportWidget(viewer)
    assert not export.png_check.isChecked() and export.tif_check.isChecked()
    assert not export.gif_check.isChecked()
    assert (export.fps_spin.value(), export.size_spin.value()) == (12, 640)
    labels = CrackleLabelsWidget(viewer)
    assert labels.brush_spin.value() == 7
    assert labels.new_labels().brush_size == 7  # the new layer paints with it


def test_layer_choices_are_not_remembered(viewer, qtbot):
    dock = FinetuneWidget(viewer)
    dock.labels_combo.setCurrentText("s validation labels")
    close(dock, qtbot)
    text = settings_store().allKeys()
    assert not any("labels" in key or "volume" in key for key in text)
    assert FinetuneWidget(viewer).labels_combo.currentText() == "s train labels"


# ---------------------------------------------------------------------- continue


def _run_folder(root: Path, name: str, segment: str, *, kind: str = "best") -> Path:
    """A finished run as the trainer leaves it: config.json and a real tiny checkpoint."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"segment": segment, "layers": 8}))
    torch.manual_seed(0)
    model = InkDetector("resnet10", width=0.0625)
    return save_checkpoint(run / f"{kind}.safetensors", model, in_layers=8, tile_size=64)


def test_continue_uses_the_newest_run_of_this_segment(viewer, tmp_path):
    segment = viewer.layers["s"].metadata["inkdetect_segment"]
    runs = tmp_path / "runs"
    older = _run_folder(runs, "s-20240101-000000", segment)
    newest = _run_folder(runs, "s-20240102-000000", segment, kind="last")  # stopped early
    _run_folder(runs, "other-20240103-000000", "/elsewhere/other")  # another segment
    _run_folder(runs, "s-20240104-000000", "/elsewhere/s")  # same id, another segment
    os.utime(older, (time.time() - 3600,) * 2)

    dock = FinetuneWidget(viewer)
    dock.runs_edit.setText(str(tmp_path / "no-runs-yet"))
    dock.runs_edit.editingFinished.emit()
    assert not dock.continue_button.isEnabled()
    assert "no finetuned checkpoint" in dock.continue_button.toolTip()
    assert dock.continue_from_last() is None and not dock.checkpoint_radio.isChecked()
    dock.runs_edit.setText(str(runs))
    dock.runs_edit.editingFinished.emit()
    assert dock.continue_button.isEnabled()
    assert str(newest) in dock.continue_button.toolTip()

    dock.layers_spin.setValue(22)
    dock.tile_spin.setValue(256)
    dock.lr_spin.setValue(1e-3)
    dock.continue_button.click()
    assert dock.checkpoint_radio.isChecked() and dock.checkpoint_edit.text() == str(newest)
    assert (dock.layers_spin.value(), dock.tile_spin.value()) == (8, 64)  # the run's window
    assert dock.lr_spin.value() == dock.lr_spin.minimum()  # auto
    config = dock.build_config()
    assert config.init == str(newest) and config.lr is None
    resolved, _ = resolve_init_settings(config, 7.91)
    assert resolved.lr == 3e-5  # the core's preset for a trained ink model


def test_continue_prefers_this_sessions_last_finetune(viewer, tmp_path):
    dock = FinetuneWidget(viewer)
    segment = viewer.layers["s"].metadata["inkdetect_segment"]
    elsewhere = _run_folder(tmp_path / "other-root", "s-20240101-000000", segment)
    dock.runs_edit.setText(str(tmp_path / "empty"))
    dock.last_checkpoint = elsewhere  # what a finished run sets
    dock._update_continue(force=True)
    assert dock.continue_button.isEnabled()
    assert dock.continue_from_last() == elsewhere
    assert dock.checkpoint_edit.text() == str(elsewhere)

"""The Finetune dock takes its sizes from the same preset table as the command line, and its
learning rate is "auto" (None in the config) unless typed, so the core's preset for where
training starts applies: 3e-5 when finetuning a trained ink model."""

from __future__ import annotations

import pytest
import torch

from napari_inkdetect._widgets.finetune_dock import AUTO_LR, FinetuneWidget
from napari_inkdetect.models import InkDetector, save_checkpoint
from napari_inkdetect.models.starter import starter_path
from napari_inkdetect.synthetic import make_segment, write_segment
from napari_inkdetect.training import TrainConfig, TrainStarted
from napari_inkdetect.training.init_settings import resolve_init_settings
from napari_inkdetect.training.presets import PRESETS, pick_preset
from napari_inkdetect.training.starting_point import STARTER_PRESET

RUN_TIMEOUT_MS = 60_000  # a spawned child imports torch first: ~8 s on two slow cores
SIZES = ("arch", "width", "tile", "batch_size", "steps")


@pytest.fixture
def dock(make_napari_viewer, tmp_path):
    """The dock on a 24 x 128 x 160 synthetic segment opened by our reader, runs in tmp."""
    folder = write_segment(make_segment(shape=(24, 128, 160)), tmp_path, "s")
    viewer = make_napari_viewer()
    viewer.open(folder, plugin="napari-inkdetect")
    widget = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Finetune")
    widget.runs_edit.setText(str(tmp_path / "runs"))
    return widget


def test_dock_and_cli_take_the_cpu_preset_from_one_table(dock):
    dock.width_spin.setValue(1.0)
    dock.tile_spin.setValue(512)
    dock.lr_spin.setValue(0.01)
    dock.device_combo.setCurrentText("cpu")
    dock._apply_device_preset("cpu")  # what choosing "cpu" in the device combo runs
    cpu = PRESETS["cpu"]
    assert pick_preset("cpu")[0] == cpu
    shown = (
        dock.arch_combo.currentText(),
        dock.width_spin.value(),
        dock.tile_spin.value(),
        dock.batch_spin.value(),
        dock.steps_spin.value(),
    )
    assert shown == tuple(getattr(cpu, k) for k in SIZES)
    assert (dock.preview_spin.value(), dock.preview_side_spin.value()) == (
        cpu.preview_every,
        cpu.preview_side,
    )
    assert dock.lr_spin.text() == AUTO_LR
    assert dock.starter_radio.isChecked()  # a CPU starts from the bundled crackle starter
    config = dock.build_config()
    assert config.lr is None and config.init == str(starter_path())
    # the command line given no sizes on a CPU resolves to the same numbers: --init starter
    cli = TrainConfig(
        segment=config.segment, labels=config.labels, out="x", device="cpu", init="starter"
    )
    resolved, notes = resolve_init_settings(cli, 7.91)
    assert resolved.init == config.init and any("crackle starter" in n for n in notes)
    assert tuple(getattr(resolved, k) for k in SIZES) == tuple(getattr(config, k) for k in SIZES)
    lr = resolve_init_settings(config, 7.91)[0].lr
    assert resolved.lr == lr == STARTER_PRESET.lr
    assert not resolved.freeze_batchnorm  # the starter's BatchNorm adapts to the segment
    dock.new_radio.setChecked(True)  # a new model: the from-scratch CPU preset, same sizes
    config = dock.build_config()
    new_cli = TrainConfig(segment=config.segment, labels=config.labels, out="x", device="cpu")
    resolved, _ = resolve_init_settings(new_cli, 7.91)
    assert tuple(getattr(resolved, k) for k in SIZES) == tuple(getattr(config, k) for k in SIZES)
    assert resolved.lr == resolve_init_settings(config, 7.91)[0].lr == 1e-3
    dock.lr_spin.setValue(2e-4)  # a typed value is sent as it is
    assert dock.build_config().lr == 2e-4


def test_auto_lr_from_a_checkpoint_resolves_to_the_pretrained_lr(dock, tmp_path, qtbot):
    torch.manual_seed(0)
    ink_model = save_checkpoint(
        tmp_path / "ink.safetensors", InkDetector("resnet10", 0.125), in_layers=8, tile_size=64
    )
    dock.device_combo.setCurrentText("cpu")
    dock.checkpoint_radio.setChecked(True)
    dock.checkpoint_edit.setText(str(ink_model))
    dock.layers_spin.setValue(8)
    dock.tile_spin.setValue(64)
    dock.steps_spin.setValue(2)
    dock.batch_spin.setValue(2)
    dock.val_every_spin.setValue(2)
    dock.preview_spin.setValue(0)
    worker = dock.start()
    assert dock.config.lr is None and dock.config.init == str(ink_model)
    started = []
    worker.yielded.connect(lambda e: isinstance(e, TrainStarted) and started.append(e))
    with qtbot.waitSignal(worker.finished, timeout=RUN_TIMEOUT_MS):
        pass
    assert started and started[0].config.lr == 3e-5  # finetuning a trained ink model
    assert any("lr 3e-05" in n and "trained ink model" in n for n in started[0].notes)
    assert dock.lr_spin.text() == f"{AUTO_LR} (3e-05)"  # the resolved value, shown
    assert dock.build_config().lr is None and dock.lr_spin.text() == AUTO_LR


def test_the_crackle_starter_choice_trains_from_the_verified_bundled_file(dock):
    from napari_inkdetect.models.starter import STARTER_SHA256, starter_path, verify_starter

    dock.device_combo.setCurrentText("cpu")
    dock.width_spin.setValue(1.0)  # the starter's own sizes win over the new-model fields
    dock.starter_radio.setChecked(True)
    assert not dock.checkpoint_edit.isEnabled() and not dock.width_spin.isEnabled()
    config = dock.build_config()
    assert config.init == str(starter_path()) == str(verify_starter(expected=STARTER_SHA256))
    cpu = PRESETS["cpu"]
    assert (config.arch, config.width, config.tile) == (cpu.arch, cpu.width, cpu.tile)
    resolved, _ = resolve_init_settings(config, 7.91)
    assert resolved.lr == STARTER_PRESET.lr != 3e-5  # its own preset, not a trained model's
    assert dock.layers_spin.value() == 22 and not dock.layers_spin.isEnabled()  # its window


def test_a_default_cpu_run_finetunes_the_starter_at_its_preset(dock, qtbot):
    dock.device_combo.setCurrentText("cpu")
    assert dock.starter_radio.isChecked()
    dock.steps_spin.setValue(2)
    dock.batch_spin.setValue(2)
    dock.val_every_spin.setValue(2)
    dock.preview_spin.setValue(0)
    worker = dock.start()
    started = []
    worker.yielded.connect(lambda e: isinstance(e, TrainStarted) and started.append(e))
    with qtbot.waitSignal(worker.finished, timeout=RUN_TIMEOUT_MS):
        pass
    assert dock.finished_event is not None and dock.finished_event.steps == 2
    config = started[0].config
    assert config.init == str(starter_path()) and config.lr == STARTER_PRESET.lr
    assert (config.layers, config.tile, config.width) == (22, 128, 0.125)
    assert any("finetuning the crackle starter" in n for n in started[0].notes)


def test_a_volume_too_shallow_for_the_starter_falls_back_to_new_and_back(dock, tmp_path):
    viewer = dock.viewer
    deep = dock.volume_combo.currentText()
    assert dock.starter_radio.isChecked() and dock.starter_radio.isEnabled()
    shallow = write_segment(make_segment(shape=(16, 96, 96)), tmp_path, "shallow")
    viewer.open(shallow, plugin="napari-inkdetect")
    dock.volume_combo.setCurrentText(next(n for n in _items(dock.volume_combo) if "shallow" in n))
    assert dock.new_radio.isChecked() and not dock.starter_radio.isEnabled()
    assert "at least 22 layers" in dock.starter_radio.toolTip()
    assert dock.layers_spin.isEnabled()
    dock.volume_combo.setCurrentText(deep)  # a deep volume again: the starter comes back
    assert dock.starter_radio.isChecked() and not dock.layers_spin.isEnabled()
    dock.new_radio.click()  # the user's own choice is kept whatever the volume
    dock.volume_combo.setCurrentText(next(n for n in _items(dock.volume_combo) if "shallow" in n))
    dock.volume_combo.setCurrentText(deep)
    assert dock.new_radio.isChecked()


def test_the_cpu_preset_picks_the_starter_but_keeps_a_chosen_checkpoint(dock):
    dock.checkpoint_radio.setChecked(True)
    dock._apply_device_preset("cpu")  # what choosing "cpu" in the device combo runs
    assert dock.checkpoint_radio.isChecked()  # a chosen file is not replaced by a preset
    dock.new_radio.setChecked(True)
    dock._apply_device_preset("cpu")  # the device's preset: its model source too
    assert dock.starter_radio.isChecked()


def _items(box) -> list[str]:
    return [box.itemText(i) for i in range(box.count())]

"""Options are defined once: every field of the train, predict and export configs is a flag
of its command and a control of its dock (or says why not), and the docks' generated
controls are what their configs are built from."""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pytest
from magicgui.widgets.bases import ValueWidget
from qtpy.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QLineEdit, QWidget

from napari_inkdetect._widgets import export_dock, finetune_dock, predict_dock
from napari_inkdetect._widgets.config_form import (
    AUTO,
    ConfigForm,
    field_widget,
    form_fields,
    option_help,
)
from napari_inkdetect._widgets.export_dock import ExportWidget
from napari_inkdetect._widgets.finetune_dock import FinetuneWidget
from napari_inkdetect._widgets.predict_dock import PredictWidget
from napari_inkdetect.cli import build_parser
from napari_inkdetect.errors import ConfigError
from napari_inkdetect.export import ExportConfig
from napari_inkdetect.inference import PredictConfig
from napari_inkdetect.options import OPTION_KEY, Option, field_type, is_config
from napari_inkdetect.training import TrainConfig
from napari_inkdetect.training.config import AugmentConfig, LossConfig

COMMANDS = {TrainConfig: "train", PredictConfig: "predict", ExportConfig: "export"}
DOCKS = {
    TrainConfig: (FinetuneWidget, finetune_dock),
    PredictConfig: (PredictWidget, predict_dock),
    ExportConfig: (ExportWidget, export_dock),
}
PREDICTION_KEY = "inkdetect_prediction"


def leaves(cls: type, prefix: str = "") -> dict[str, Option]:
    """Every field of a config, nested ones dotted (``augment.flips``), with its option."""
    out: dict[str, Option] = {}
    for f in dataclasses.fields(cls):
        kind = field_type(cls, f.name)
        if is_config(kind):
            out.update(leaves(kind, prefix=f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = f.metadata.get(OPTION_KEY, Option())
    return out


def subcommand(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.fixture
def viewer(segment_viewer, tmp_path):
    """The segment viewer with a prediction layer (its zarr is never read: only the configs
    are built)."""
    viewer = segment_viewer
    viewer.add_image(
        np.zeros((2, 96, 128), np.float32),
        name="s ink",
        metadata={PREDICTION_KEY: str(tmp_path / "s.zarr")},
    )
    return viewer


@pytest.fixture
def finetune(viewer, tmp_path):
    dock = FinetuneWidget(viewer)
    dock.device_combo.setCurrentText("cpu")
    dock.runs_edit.setText(str(tmp_path / "runs"))
    return dock


@pytest.fixture
def predict(viewer):
    dock = PredictWidget(viewer)
    dock.checkpoint_edit.setText("/models/m.safetensors")  # only named, never read here
    dock.region_combo.setCurrentText("Whole mask")
    return dock


# ---------------------------------------------------------------------- every field


@pytest.mark.parametrize("cls", COMMANDS, ids=lambda c: c.__name__)
def test_every_field_is_a_flag_or_says_why_not(cls):
    dests = {action.dest for action in subcommand(COMMANDS[cls])._actions}
    fields = leaves(cls)
    assert "augment.flips" in fields or cls is not TrainConfig  # nested ones are counted
    missing = [n for n, o in fields.items() if o.cli and n not in dests]
    assert not missing, f"{cls.__name__}: no flag for {missing}"
    unexplained = [n for n, o in fields.items() if not o.cli and not o.why.strip()]
    assert not unexplained


@pytest.mark.parametrize("cls", DOCKS, ids=lambda c: c.__name__)
def test_every_field_is_a_dock_control_or_says_why_not(viewer, cls):
    dock_class, module = DOCKS[cls]
    dock = dock_class(viewer)
    viewer.window.add_dock_widget(dock)
    shown, elsewhere = dock.config_fields(), module.NOT_IN_FORM
    fields = leaves(cls)
    assert set(shown) <= set(fields) and set(elsewhere) <= set(fields)  # no stale names
    assert not set(shown) & set(elsewhere)
    for name, option in fields.items():
        if name in shown:
            assert option.form, f"{name} is shown, but its option keeps it off forms"
            continue
        why = elsewhere.get(name) or (option.why if not option.form else "")
        assert why.strip(), f"{cls.__name__}.{name}: no control, and no reason why"
    # each control is in the dock; the generated ones are what the config declares
    for name, widget in shown.items():
        for one in widget if isinstance(widget, tuple) else (widget,):
            assert isinstance(one, QWidget) and dock.isAncestorOf(one), name
    generated = dock.fields.fields
    assert set(generated) == set(shown) - set(module.HAND_BUILT)
    assert set(generated) == set(form_fields(cls)) - set(elsewhere) - set(module.HAND_BUILT)
    for name, f in generated.items():
        assert shown[name] is f.native and f.native.toolTip().startswith(option_help(f.option))
        assert "{preset:" not in f.native.toolTip()


def test_the_dock_attributes_are_the_generated_widgets(finetune, predict, viewer):
    export = ExportWidget(viewer)
    pairs = (
        (finetune, {"steps_spin": "steps", "lr_spin": "lr", "tile_spin": "tile",
                    "autocast_combo": "autocast", "layers_spin": "layers"}),
        (predict, {"stride_spin": "stride", "batch_spin": "batch_size",
                   "dtype_combo": "dtype", "direction_combo": "depth_direction"}),
        (export, {"fps_spin": "fps", "size_spin": "max_side", "gif_check": "gif",
                  "max_check": "max_projection"}),
    )  # fmt: skip
    for dock, names in pairs:
        for attribute, field in names.items():
            assert getattr(dock, attribute) is dock.fields[field].native
            assert isinstance(dock.fields[field].widget, ValueWidget)  # the magicgui object


# ---------------------------------------------------------------------- behaviour


def test_finetune_advanced_augmentation_and_loss_reach_the_config(finetune):
    default = finetune.build_config()
    assert default.weight_decay == TrainConfig.__dataclass_fields__["weight_decay"].default
    assert default.augment == AugmentConfig() and default.loss == LossConfig()
    assert default.warmup_steps is None and default.epochs is None  # auto: the default
    finetune.fields["weight_decay"].native.setValue(0.05)
    finetune.fields["augment.affine"].native.setChecked(True)
    finetune.fields["augment.p_affine"].native.setValue(0.8)
    finetune.fields["augment.gamma"].native.setText("0.7,1.3")
    finetune.fields["loss.dice_weight"].native.setValue(0.5)
    finetune.fields["warmup_steps"].native.setValue(50)
    finetune.fields["freeze_batchnorm"].native.setCurrentText("no")
    config = finetune.build_config()
    assert config.weight_decay == 0.05 and config.warmup_steps == 50
    assert isinstance(config.warmup_steps, int)
    assert config.augment == AugmentConfig(affine=True, p_affine=0.8, gamma=(0.7, 1.3))
    assert config.loss == LossConfig(dice_weight=0.5)
    assert config.freeze_batchnorm is False
    # "auto" again: None, the default the core resolves
    warmup = finetune.fields["warmup_steps"].native
    warmup.setValue(warmup.minimum())
    assert warmup.text() == AUTO
    finetune.fields["freeze_batchnorm"].native.setCurrentText(AUTO)
    finetune.steps_spin.setValue(finetune.steps_spin.minimum())
    config = finetune.build_config()
    assert (config.warmup_steps, config.freeze_batchnorm, config.steps) == (None, None, None)


def test_refused_text_is_a_config_error_before_any_run_folder(finetune, tmp_path):
    gamma = finetune.fields["augment.gamma"]
    gamma.native.setText("0.7")
    assert gamma.native.styleSheet()  # marked at once
    with pytest.raises(ConfigError, match="Gamma"):
        finetune.build_config()
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert finetune.start() is None  # shown, nothing started


def test_predict_and_export_generated_fields_reach_the_config(predict, viewer, tmp_path):
    assert predict.build_config().dtype == "uint8"
    predict.dtype_combo.setCurrentText("float16")
    predict.fields["chunk"].native.setValue(128)
    predict.fields["channels_last"].native.setCurrentText("yes")
    config = predict.build_config()
    assert (config.dtype, config.chunk, config.channels_last) == ("float16", 128, True)
    predict.stride_spin.setValue(0)  # lowest: tile / 2, i.e. None
    assert predict.stride_spin.text() == "tile / 2" and predict.build_config().stride is None

    export = ExportWidget(viewer)
    assert export.build_config().threshold is None and export.build_config().max_side == 1024
    export.fields["alpha"].native.setValue(0.3)
    export.fields["threshold"].native.setValue(0.4)
    export.fields["underlay"].native.setCurrentText("none")
    export.fields["label"].native.setChecked(False)
    export.size_spin.setValue(export.size_spin.minimum())  # full size: None, not the default
    config = export.build_config()
    assert (config.alpha, config.threshold, config.underlay) == (0.3, 0.4, "none")
    assert config.label is False and config.max_side is None
    export.fields["threshold"].set_value(None)
    assert export.build_config().threshold is None


def test_generated_fields_are_remembered(viewer, finetune, qtbot):
    finetune.fields["weight_decay"].native.setValue(0.2)
    finetune.fields["augment.noise"].native.setChecked(True)
    finetune.fields["epochs"].native.setValue(3)
    finetune.settings.save()
    again = FinetuneWidget(viewer)
    assert again.fields["weight_decay"].value == 0.2
    assert again.fields["augment.noise"].value is True
    assert again.fields["epochs"].value == 3.0


# ---------------------------------------------------------------------- the fields


def test_field_widgets_follow_the_annotation_and_the_option(qtbot):
    steps = field_widget(TrainConfig, "steps")
    assert isinstance(steps.native, QDoubleSpinBox) and steps.native.decimals() == 0
    assert steps.value is None and steps.native.text() == AUTO  # None: auto
    assert "preset: 1000 on every device" in steps.native.toolTip()  # {preset:steps} filled
    steps.set_value(40)
    assert steps.value == 40 and isinstance(steps.value, int)
    tile = field_widget(TrainConfig, "tile")
    assert tile.native.suffix() == " px" and tile.native.maximum() == 1024
    assert isinstance(field_widget(TrainConfig, "depth_scale").native, QCheckBox)
    autocast = field_widget(TrainConfig, "autocast")
    assert isinstance(autocast.native, QComboBox)
    assert [autocast.native.itemText(i) for i in range(autocast.native.count())] == list(
        TrainConfig.__dataclass_fields__["autocast"].metadata[OPTION_KEY].choices
    )
    segment = field_widget(ExportConfig, "segment", none_text="recorded")
    assert isinstance(segment.native, QLineEdit) and segment.value is None
    assert segment.native.placeholderText() == "recorded"
    lr = field_widget(TrainConfig, "lr")
    assert lr.label == "Learning rate" and field_widget(LossConfig, "dice_weight").label == (
        "Dice weight"
    )
    lr.set_value(2e-4)
    assert lr.value == 2e-4
    with pytest.raises(ValueError):
        field_widget(TrainConfig, "layers", auto=False)  # no auto state needs a value


def test_config_form_values_and_set_values(qtbot):
    form = ConfigForm(TrainConfig, ["steps", "seed", "augment.flips", "loss.label_smoothing"])
    assert form.values() == {"seed": 0, "augment": AugmentConfig(), "loss": LossConfig()}
    form.set_values(
        {"steps": 7, "augment": AugmentConfig(flips=False), "loss.label_smoothing": 0.1}
    )
    assert form.values() == {
        "steps": 7,
        "seed": 0,
        "augment": AugmentConfig(flips=False),
        "loss": LossConfig(label_smoothing=0.1),
    }
    assert set(form.widgets) == set(form.fields)

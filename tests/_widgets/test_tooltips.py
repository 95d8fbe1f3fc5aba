"""Every option in the four docks says what it does in a tooltip, and numbers say their unit."""

from __future__ import annotations

import re

import pytest
from qtpy.QtWidgets import (
    QAbstractSpinBox,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QWidget,
)

from napari_inkdetect._widgets.export_dock import ExportWidget
from napari_inkdetect._widgets.finetune_dock import FinetuneWidget
from napari_inkdetect._widgets.labels_dock import CrackleLabelsWidget
from napari_inkdetect._widgets.predict_dock import PredictWidget

INPUTS = (QSpinBox, QDoubleSpinBox, QComboBox, QCheckBox, QLineEdit, QPushButton, QRadioButton)
DOCKS = (CrackleLabelsWidget, FinetuneWidget, PredictWidget, ExportWidget)
#: the window centre controls change hands (another change names their tooltips)
MAY_LACK = {"centre_spin", "centre_from", "centre_to", "start_spin", "start_from", "start_to"}
#: how a number's tooltip (or suffix) names its unit (the generated Advanced fields add
#: degrees, batches read ahead, windows per call and a held-out share)
UNITS = re.compile(
    r"layers?|pixels?|\bpx\b|steps?|tiles?|0\.\.1|fps|frames|multiplier|seed"
    r"|\bdeg\b|batch(es)?\b|windows?\b|share"
)
#: numbers without a unit: a learning rate, counts of processes, the loss's coefficients
UNITLESS = {"lr_spin", "workers_spin", "loss.label_smoothing", "loss.dice_weight"}


def inputs(dock: QWidget) -> list[tuple[str, QWidget]]:
    """(attribute name or class, widget) of every input in the dock; the text field inside
    a spin box or a combo box is part of it, not an input of its own."""
    names = {id(value): name for name, value in vars(dock).items() if isinstance(value, QWidget)}
    if hasattr(dock, "config_fields"):  # the generated fields without an attribute: by field
        for field, value in dock.config_fields().items():
            if isinstance(value, QWidget):
                names.setdefault(id(value), field)
    found = []
    for kind in INPUTS:
        for widget in dock.findChildren(kind):
            if isinstance(widget, QLineEdit) and isinstance(
                widget.parent(), QAbstractSpinBox | QComboBox
            ):
                continue
            found.append((names.get(id(widget), f"a {type(widget).__name__}"), widget))
    return found


@pytest.mark.parametrize("dock_class", DOCKS, ids=lambda c: c.__name__)
def test_every_option_has_a_tooltip_and_numbers_their_unit(viewer, dock_class):
    dock = dock_class(viewer)
    viewer.window.add_dock_widget(dock)
    found = inputs(dock)
    assert len(found) > 5
    missing = [
        f"{name} ({widget.text() if hasattr(widget, 'text') else ''!r})"
        for name, widget in found
        if not widget.toolTip().strip() and name not in MAY_LACK
    ]
    assert not missing, f"{dock_class.__name__}: no tooltip on {', '.join(missing)}"
    vague = [
        name
        for name, widget in found
        if isinstance(widget, QAbstractSpinBox)
        and name not in MAY_LACK | UNITLESS
        and not UNITS.search(f"{widget.toolTip()} {widget.suffix()}".lower())
    ]
    assert not vague, f"{dock_class.__name__}: no unit in the tooltip of {', '.join(vague)}"


def test_the_advanced_toggles_and_the_ink_depth_button_explain_themselves(viewer):
    finetune, predict = FinetuneWidget(viewer), PredictWidget(viewer)
    for dock in (finetune, predict):
        toggle = dock.advanced.findChild(QPushButton)
        assert toggle.text().strip().endswith("Advanced") and toggle.toolTip()
    assert "ink" in finetune.depth_button.toolTip()

"""Small form builders the docks share (one place for how a spin box or a combo is set up)."""

from __future__ import annotations

from qtpy.QtWidgets import QComboBox, QDoubleSpinBox, QSpinBox


def spin(lo: int, hi: int, value: int, step: int = 1) -> QSpinBox:
    """An integer spin box in ``lo..hi``."""
    box = QSpinBox()
    box.setRange(lo, hi)
    box.setSingleStep(step)
    box.setValue(value)
    return box


def double_spin(lo: float, hi: float, value: float, step: float, decimals: int) -> QDoubleSpinBox:
    """A float spin box in ``lo..hi`` showing ``decimals`` digits."""
    box = QDoubleSpinBox()
    box.setDecimals(decimals)
    box.setRange(lo, hi)
    box.setSingleStep(step)
    box.setValue(value)
    return box


def combo(items: list[str] | tuple[str, ...], current: str | None = None) -> QComboBox:
    """A combo box of ``items`` with ``current`` chosen."""
    box = QComboBox()
    box.addItems(list(items))
    if current is not None:
        box.setCurrentText(current)
    return box


def fill_names(box: QComboBox, names: list[str], preferred: list[str]) -> None:
    """Refill ``box`` with layer names, keeping its choice while that name exists, else the
    first of ``preferred``; listeners hear one change."""
    current = box.currentText()
    box.blockSignals(True)
    box.clear()
    box.addItems(names)
    box.blockSignals(False)
    if current in names:
        box.setCurrentText(current)
    elif preferred:
        box.setCurrentText(preferred[0])
    box.currentIndexChanged.emit(box.currentIndex())

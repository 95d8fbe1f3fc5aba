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


class LayerChoice:
    """A combo of layer names that tells the user's choice from the dock's own.

    The dock refills it as layers come and go (:meth:`fill`): a name the user picked is kept
    while its layer exists, and so is one of the ``keep`` names (the right role); any other
    choice was only a fallback and gives way to the first of ``preferred``, so the choice
    does not depend on the order in which layers arrive.
    """

    def __init__(self, box: QComboBox) -> None:
        self.box = box
        self.user_choice: str | None = None
        box.currentTextChanged.connect(self._on_text_changed)

    @classmethod
    def of(cls, box: QComboBox) -> LayerChoice:
        """The one ``LayerChoice`` of ``box`` (made at the first call, i.e. the dock's first
        refill, before the user can choose anything)."""
        choice = getattr(box, "_inkdetect_choice", None)
        if choice is None:
            choice = cls(box)
            box._inkdetect_choice = choice
        return choice

    def _on_text_changed(self, text: str) -> None:
        self.user_choice = text or None  # fill() blocks signals: only outside choices land here

    def fill(self, names: list[str], preferred: list[str], keep: list[str] | None = None) -> None:
        """Refill with ``names``; listeners hear one change."""
        current = self.box.currentText()
        if self.user_choice not in names:
            self.user_choice = None
        kept = current in names and (current == self.user_choice or current in (keep or ()))
        choice = current if kept else next((n for n in preferred if n in names), None)
        self.box.blockSignals(True)
        self.box.clear()
        self.box.addItems(names)
        if choice is not None:
            self.box.setCurrentText(choice)
        self.box.blockSignals(False)
        self.box.currentIndexChanged.emit(self.box.currentIndex())

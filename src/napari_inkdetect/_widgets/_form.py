"""Small form builders the docks share (one place for how a spin box, a combo, a browse
button, a status line or the Advanced section is set up)."""

from __future__ import annotations

from collections.abc import Iterable

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLayout,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QWidget,
)
from superqt import QCollapsible


def spin(lo: int, hi: int, value: int, step: int = 1) -> QSpinBox:
    """An integer spin box in ``lo..hi``."""
    box = QSpinBox()
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


def hbox(*widgets: QWidget, grow: tuple[QWidget, ...] | None = None) -> QHBoxLayout:
    """A row of ``widgets``; those in ``grow`` (default: the first) share the spare width."""
    grow = widgets[:1] if grow is None else grow
    row = QHBoxLayout()
    for widget in widgets:
        row.addWidget(widget, 1 if any(widget is g for g in grow) else 0)
    return row


def add_rows(form: QFormLayout, rows: Iterable[tuple[str, QWidget | QLayout]]) -> None:
    """``form.addRow(label, field)`` for each row."""
    for label, field in rows:
        form.addRow(label, field)


def browse_button(tooltip: str) -> QPushButton:
    """The narrow "..." button beside a path field."""
    button = QPushButton("...")
    button.setToolTip(tooltip)
    button.setMaximumWidth(30)
    return button


def text_label(text: str = "") -> QLabel:
    """A word-wrapped label whose text can be selected (and copied): status lines, paths."""
    label = QLabel(text)
    label.setWordWrap(True)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


def progress_bar(text_format: str | None = None) -> QProgressBar:
    """An empty progress bar (0 of 1), its text ``text_format`` (e.g. ``"%v / %m steps"``)."""
    bar = QProgressBar()
    bar.setRange(0, 1)
    bar.setValue(0)
    if text_format is not None:
        bar.setFormat(text_format)
    return bar


def advanced_section(tooltip: str) -> tuple[QCollapsible, QFormLayout]:
    """A collapsed "Advanced" section (its toggle's tooltip says what is inside) and the form
    to fill."""
    return collapsed_section("Advanced", tooltip)


def collapsed_section(title: str, tooltip: str) -> tuple[QCollapsible, QFormLayout]:
    """A collapsed section titled ``title`` (its toggle's tooltip says what is inside) and
    the form to fill: the Advanced section, and the sub-sections inside it."""
    section = QCollapsible(title)
    section.findChild(QPushButton).setToolTip(tooltip)  # its toggle, the only button yet
    inner = QWidget()
    form = QFormLayout(inner)
    form.setContentsMargins(0, 0, 0, 0)
    section.addWidget(inner)
    return section, form


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

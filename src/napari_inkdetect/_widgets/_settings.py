"""Docks remember their settings between sessions, in Qt's settings store (an ini file).

Each dock names the controls worth keeping (sizes, device, folders, output options; never a
layer choice or a run's state). :class:`DockSettings` restores them when the dock is built
and saves each change as it happens, so closing napari any way keeps the last values.
``$NAPARI_INKDETECT_SETTINGS`` points the store at another ini file: the tests use one per
test, so they never read or change a developer's settings.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Mapping
from typing import Any

from qtpy.QtCore import QSettings
from qtpy.QtWidgets import (
    QAbstractButton,
    QComboBox,
    QDoubleSpinBox,
    QLineEdit,
    QSpinBox,
    QWidget,
)

ORGANISATION = APPLICATION = "napari-inkdetect"
SETTINGS_ENV = "NAPARI_INKDETECT_SETTINGS"  # an ini file to use instead of the user's


def settings_store() -> QSettings:
    """The store: ``$NAPARI_INKDETECT_SETTINGS`` if set, else the user's
    ``napari-inkdetect/napari-inkdetect.ini`` (``~/.config`` on Linux)."""
    path = os.environ.get(SETTINGS_ENV)
    if path:
        return QSettings(path, QSettings.Format.IniFormat)
    return QSettings(
        QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORGANISATION, APPLICATION
    )


def control_value(widget: QWidget) -> str:
    """A control's value as the text the store keeps (a combo box: its item's text)."""
    if isinstance(widget, QAbstractButton):
        return "true" if widget.isChecked() else "false"
    if isinstance(widget, QComboBox):
        return widget.currentText()
    if isinstance(widget, QLineEdit):
        return widget.text()
    if isinstance(widget, QDoubleSpinBox) and widget.decimals() == 0:  # a generated int field
        return str(round(widget.value()))
    if isinstance(widget, QSpinBox | QDoubleSpinBox):
        return repr(widget.value())
    raise TypeError(f"cannot keep the value of a {type(widget).__name__}")


def set_control_value(widget: QWidget, text: str) -> bool:
    """Set a control from stored text; False (left as it is) when the text does not fit,
    e.g. a device this machine does not have."""
    try:
        if isinstance(widget, QAbstractButton):
            widget.setChecked(text == "true")
        elif isinstance(widget, QComboBox):
            index = widget.findText(text)
            if index < 0:
                return False
            widget.setCurrentIndex(index)
        elif isinstance(widget, QLineEdit):
            widget.setText(text)
        elif isinstance(widget, QSpinBox):
            widget.setValue(int(text))
        elif isinstance(widget, QDoubleSpinBox):
            widget.setValue(float(text))
        else:
            return False
    except ValueError:
        return False
    return True


def _changed(widget: QWidget) -> Any:
    """The signal a control emits when its value changes (by the user or by code)."""
    if isinstance(widget, QAbstractButton):
        return widget.toggled
    if isinstance(widget, QComboBox):
        return widget.currentTextChanged
    if isinstance(widget, QLineEdit):
        return widget.textChanged
    return widget.valueChanged


class DockSettings:
    """Restore a dock's named controls from the store now, and save each change.

    Controls are restored in the order given: put first those whose change resets others
    (the Finetune device applies its preset), so the values restored after them win.
    """

    def __init__(self, dock: QWidget, group: str, controls: Mapping[str, QWidget]) -> None:
        self.group, self.controls = group, dict(controls)
        self.store = settings_store()
        self.restored = self.restore()
        for name, widget in self.controls.items():
            _changed(widget).connect(functools.partial(self._save_one, name))
        # however the dock goes: to disk now (the store also writes by itself, from the loop)
        dock.destroyed.connect(functools.partial(_sync, self.store))

    def _key(self, name: str) -> str:
        return f"{self.group}/{name}"

    def stored(self, name: str) -> str | None:
        """The stored text of control ``name`` (None: never saved)."""
        value = self.store.value(self._key(name))
        if isinstance(value, list):  # an ini value with commas can read back as a list
            value = ", ".join(str(v) for v in value)
        return None if value is None else str(value)

    def restore(self) -> list[str]:
        """Set every control that has a stored value that fits; the names restored."""
        restored = []
        for name, widget in self.controls.items():
            text = self.stored(name)
            if text is not None and set_control_value(widget, text):
                restored.append(name)
        return restored

    def save(self) -> None:
        """Store every control's value now, and write the store to disk."""
        for name in self.controls:
            self._save_one(name)
        self.store.sync()

    def _save_one(self, name: str, *_: Any) -> None:
        self.store.setValue(self._key(name), control_value(self.controls[name]))


def _sync(store: QSettings, *_: Any) -> None:
    with contextlib.suppress(RuntimeError):  # at exit Qt may delete the store first (synced)
        store.sync()

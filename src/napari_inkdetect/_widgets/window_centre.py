"""The Finetune dock's window centre: it follows napari's depth slider until the user types
another (or Find ink depth sets one), and always lets the window fit in the volume.

The depth slider marks the centre of the window trained on (:mod:`napari_inkdetect.windows`),
so by default the window is the one around the layer the user is looking at.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QObject
from qtpy.QtWidgets import QAbstractSpinBox, QPushButton, QSpinBox

from napari_inkdetect.windows import centre_bounds, window_start


class WindowCentre(QObject):
    """Keeps ``centre`` (the window's centre layer) and ``layers`` (its length) consistent with
    the volume of depth ``depth()`` and with the viewer's depth slider.

    The centre follows the slider (clamped so that the window fits) until it is edited;
    ``follow_button`` makes it follow again. Its tooltip names the window's layers.
    """

    def __init__(
        self,
        viewer: Any,
        centre: QSpinBox,
        layers: QAbstractSpinBox,
        follow_button: QPushButton,
        depth: Callable[[], int],
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.viewer, self.centre, self.layers, self.depth = viewer, centre, layers, depth
        self.following = True
        self.refit()
        viewer.dims.events.current_step.connect(self._on_slider_moved)
        centre.valueChanged.connect(self._on_edited)
        layers.valueChanged.connect(self.refit)
        follow_button.clicked.connect(self.follow)

    def start(self) -> int:
        """The start layer of the window (what a config records)."""
        return window_start(self.centre.value(), self.length())

    def length(self) -> int:
        """The window length (its spin box may be a float one showing no decimals)."""
        return int(self.layers.value())

    def refit(self, *_: Any) -> None:
        """Another volume or window length: centres range over those whose window fits
        (``layers // 2 .. depth - layers + layers // 2``), a typed centre is clamped."""
        self.centre.blockSignals(True)
        self.centre.setRange(*centre_bounds(self.depth(), self.length()))
        self.centre.blockSignals(False)
        self._show()
        if self.following:
            self.follow()

    def follow(self) -> None:
        """Centre = the depth slider's position (clamped), from now on."""
        self.following = True
        self.centre.blockSignals(True)
        self.centre.setValue(int(self.viewer.dims.current_step[0]))
        self.centre.blockSignals(False)
        self._show()

    def set_found(self, centre: int) -> None:
        """A centre found for the user (Find ink depth): it no longer follows the slider."""
        self.centre.setValue(centre)
        self.following = False
        self._show()

    def _on_slider_moved(self, event: Any = None) -> None:
        if self.following:
            self.follow()

    def _on_edited(self, value: int) -> None:
        self.following = False
        self._show()

    def _show(self) -> None:
        c, n = self.centre.value(), self.length()
        first = window_start(c, n)
        follows = "follows the depth slider" if self.following else "typed (or found)"
        self.centre.setToolTip(
            f"layer the {n}-layer window is centred on ({follows}): the window is layers "
            f"[c - {n // 2}, c - {n // 2} + {n}) = {first}-{first + n - 1}"
        )

"""Where the plugin's docks go in napari's window, so the image keeps most of the screen.

A dock's form is taller than a laptop screen once all four are stacked (the window then grows
past the screen), and napari's layer controls already take ~330 px on the left, so a second
column on the right leaves the image under half of a 1366 or 1600 px window (issue 11).
``make_scrollable`` moves a dock's form into a scroll area inside the dock (its minimum height
drops to a few rows and the dock stays the object napari and tests know); ``arrange_docks``
puts the four docks in napari's left column, as tabs beside the layer list, under the layer
controls, so there is one column of docks and the image gets the rest.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence

from qtpy.QtCore import QEvent, QObject, QSize, Qt, QTimer
from qtpy.QtWidgets import (
    QBoxLayout,
    QDockWidget,
    QFrame,
    QMainWindow,
    QScrollArea,
    QSizePolicy,
    QStyle,
    QWidget,
)

SCROLL_NAME = "inkdetect_scroll"
SUFFIX = " (napari-inkdetect)"  # in the dock titles: too long for five tabs in one column
# A window too narrow for the docks widens until the image gets this share of it (screen
# allowing): the canvas keeps over 60% beside napari's margins, also on a 1366 px screen.
IMAGE_SHARE = 2 / 3
_EXPANDING = (
    QSizePolicy.Policy.Expanding,
    QSizePolicy.Policy.MinimumExpanding,
    QSizePolicy.Policy.Ignored,
)


def make_scrollable(widget: QWidget) -> QScrollArea:
    """Put ``widget``'s form in a scroll area inside it, so its minimum height stays small.

    The widget itself stays the dock's widget (napari's ``dock_widgets`` and the docks'
    attributes are unchanged); calling it twice does nothing more.
    """
    done = widget.findChild(QScrollArea, SCROLL_NAME, Qt.FindChildOption.FindDirectChildrenOnly)
    if done is not None:
        return done
    outer = widget.layout()
    if not isinstance(outer, QBoxLayout):
        raise TypeError(f"{type(widget).__name__} needs a box layout to scroll, not {outer!r}")
    content = QWidget()
    content.setLayout(_moved_items(outer))
    scroll = FormScroll(widget)
    scroll.setWidget(content)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(scroll)
    return scroll


class FormScroll(QScrollArea):
    """A vertical scroll area as wide as its form (plus the scroll bar): short, never clipped
    and never scrolled sideways; it widens with the form (a longer layer name in a combo)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName(SCROLL_NAME)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)

    def minimumSizeHint(self) -> QSize:
        """The form's minimum width, a few rows high."""
        hint = super().minimumSizeHint()
        if self.widget() is None:
            return hint
        bar = self.style().pixelMetric(QStyle.PixelMetric.PM_ScrollBarExtent)
        width = self.widget().minimumSizeHint().width() + bar + 2 * self.frameWidth()
        return QSize(width, hint.height())

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        """Pass the form's new minimum width on to the dock when the form's layout changes."""
        if watched is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()
        return super().eventFilter(watched, event)


def _moved_items(outer: QBoxLayout) -> QBoxLayout:
    """A new box layout holding ``outer``'s items (stretch, alignment, margins kept)."""
    inner = QBoxLayout(outer.direction())
    inner.setContentsMargins(outer.contentsMargins())
    inner.setSpacing(outer.spacing())
    while outer.count():
        stretch = outer.stretch(0)
        item = outer.takeAt(0)
        if item.widget() is not None:
            inner.addWidget(item.widget(), stretch, item.alignment())
        elif item.layout() is not None:
            inner.addLayout(item.layout(), stretch)
        else:
            inner.addItem(item)
            inner.setStretch(inner.count() - 1, stretch)
    if not _has_vertical_give(inner):
        inner.addStretch()  # what napari adds to a dock's form: rows stay at the top
    return inner


def _has_vertical_give(layout: QBoxLayout) -> bool:
    """Whether the layout already ends in a stretch or holds a widget that takes height."""
    last = layout.itemAt(layout.count() - 1) if layout.count() else None
    if last is not None and last.spacerItem() is not None:
        return True
    widgets = (layout.itemAt(i).widget() for i in range(layout.count()))
    return any(w is not None and w.sizePolicy().verticalPolicy() in _EXPANDING for w in widgets)


def arrange_docks(window: QMainWindow, anchor: QDockWidget, widgets: Sequence[QWidget]) -> None:
    """Tab the docks of ``widgets`` with napari's ``anchor`` dock (the layer list), first raised.

    The docks move into ``anchor``'s column, which widens to the widest scrolled form; a
    narrow window widens for the image, and no window stays larger than its screen.
    """
    for widget in widgets:
        make_scrollable(widget)
    docks = [_dock_of(w) for w in widgets]
    area = window.dockWidgetArea(anchor)
    for dock in docks:
        window.addDockWidget(area, dock)
        window.tabifyDockWidget(anchor, dock)
        dock.setWindowTitle(dock.windowTitle().removesuffix(SUFFIX))
    width = max(dock.minimumSizeHint().width() for dock in [anchor, *docks])
    window.resizeDocks([anchor], [width], Qt.Orientation.Horizontal)
    # widen a narrow window for the image (fit_to_screen keeps it on the screen)
    side = width + window.style().pixelMetric(QStyle.PixelMetric.PM_DockWidgetSeparatorExtent)
    window.resize(max(window.width(), math.ceil(side / (1 - IMAGE_SHARE))), window.height())
    fit_to_screen(window)
    # Qt builds the tab bar at the next turn of the event loop: raise the first dock then.
    # Weak references: a pending call must not keep a closed viewer alive.
    refs = [weakref.ref(w) for w in (window, anchor, *docks)]
    QTimer.singleShot(0, lambda: _show_first(*(r() for r in refs)))


def _show_first(
    window: QMainWindow | None, anchor: QDockWidget | None, *docks: QDockWidget | None
) -> None:
    """Select the first dock's tab and shrink the column's other docks (napari's layer
    controls) to their minimum height, so the tabs get the rest (unless the window closed)."""
    if any(w is None or _deleted(w) for w in (window, anchor, *docks)):
        return
    docks[0].raise_()
    area = window.dockWidgetArea(anchor)
    group = [anchor, *docks]
    others = [
        d
        for d in window.findChildren(QDockWidget)
        if d not in group and d.isVisible() and window.dockWidgetArea(d) == area
    ]
    for dock in others:  # never taller than their tallest page needs, when the window grows
        policy = dock.sizePolicy()
        policy.setVerticalPolicy(QSizePolicy.Policy.Maximum)
        dock.setSizePolicy(policy)
    heights = [d.minimumSizeHint().height() for d in others]
    window.resizeDocks([*others, anchor], [*heights, window.height()], Qt.Orientation.Vertical)


def _deleted(obj: QObject) -> bool:
    """Whether Qt has deleted the object under this Python wrapper."""
    try:
        obj.objectName()
    except RuntimeError:
        return True
    return False


def _dock_of(widget: QWidget) -> QDockWidget:
    """The dock widget around ``widget``."""
    while widget is not None and not isinstance(widget, QDockWidget):
        widget = widget.parentWidget()
    if widget is None:
        raise ValueError("the widget is not in a dock; add it with add_dock_widget first")
    return widget


def fit_to_screen(window: QWidget) -> None:
    """Shrink ``window`` to its screen's free area where it is larger (never below its
    minimum size, which the scrolled docks keep small)."""
    screen = window.screen() if hasattr(window, "screen") else None
    if screen is None:
        return
    free = screen.availableGeometry()
    size = window.size().boundedTo(free.size()).expandedTo(window.minimumSizeHint())
    if size != window.size():
        window.resize(size)

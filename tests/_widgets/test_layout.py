"""Where the docks go: at laptop and desktop screen sizes the image keeps most of the window
and no window grows past the screen (issue 11); the testing binding shows no deprecation.

Screenshots of each size are kept in ``$INKDETECT_ARTIFACTS`` (else the test's tmp_path).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from qtpy import API_NAME
from qtpy.QtWidgets import QLabel, QVBoxLayout, QWidget

from napari_inkdetect._napari_app import DOCKS, add_docks, add_layers
from napari_inkdetect._sample_data import make_sample_segment
from napari_inkdetect._widgets._layout import SCROLL_NAME, FormScroll, make_scrollable

SIZES = [(1366, 768), (1600, 1000), (1920, 1080)]
MIN_CANVAS_FRACTION = 0.6


@pytest.fixture
def artefacts(tmp_path) -> Path:
    folder = Path(os.environ.get("INKDETECT_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def sample_viewer(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    add_layers(viewer, make_sample_segment())
    return viewer


def _resized(qtbot, window, width: int, height: int) -> None:
    """Resize the main window and let Qt lay it out (it stays larger if its minimum is)."""
    window.resize(width, height)
    qtbot.waitUntil(lambda: window.width() >= width and window.height() >= height)
    qtbot.wait(50)


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_view_docks_leave_the_image_most_of_the_window(sample_viewer, qtbot, artefacts, size):
    width, height = size
    widgets = add_docks(sample_viewer)
    window = sample_viewer.window._qt_window
    _resized(qtbot, window, width, height)
    qt_viewer = sample_viewer.window._qt_viewer
    controls = qt_viewer.dockLayerControls  # no taller than it needs: the tabs get the rest
    qtbot.waitUntil(lambda: controls.height() <= controls.sizeHint().height())
    canvas = qt_viewer.canvas.native
    shot = artefacts / f"layout_{API_NAME}_{width}x{height}.png"
    window.grab().save(str(shot))
    print(f"layout screenshot: {shot} (canvas {canvas.width()} of {window.width()} px)")
    assert window.height() <= height and window.width() <= width  # minimums fit the screen
    assert canvas.width() / window.width() >= MIN_CANVAS_FRACTION
    # one column of docks: the four are tabs beside napari's layer list, the first one shown
    layer_list = qt_viewer.dockLayerList
    docks = [w.parentWidget() for w in widgets]
    assert set(window.tabifiedDockWidgets(layer_list)) >= set(docks)
    assert [d.windowTitle() for d in docks] == list(DOCKS)
    assert not docks[0].visibleRegion().isEmpty() and docks[1].visibleRegion().isEmpty()
    for widget, dock in zip(widgets, docks, strict=True):  # every form fits its column
        dock.raise_()
        qtbot.waitUntil(lambda d=dock: not d.visibleRegion().isEmpty())
        scroll = widget.findChild(FormScroll, SCROLL_NAME)
        assert scroll.viewport().width() >= scroll.widget().minimumSizeHint().width()


@pytest.mark.parametrize("start", [(1000, 700), (2500, 1500)], ids=["narrow", "past-screen"])
def test_view_fits_the_window_to_image_and_screen(sample_viewer, qtbot, start):
    """``view`` opens napari at its own size: too narrow for the docks and the image, it
    widens; larger than the screen (as the stacked docks used to make it), it shrinks."""
    window = sample_viewer.window._qt_window
    _resized(qtbot, window, *start)
    add_docks(sample_viewer)
    canvas = sample_viewer.window._qt_viewer.canvas.native
    qtbot.waitUntil(lambda: canvas.width() / window.width() >= MIN_CANVAS_FRACTION)
    screen = window.screen().availableGeometry()
    assert window.width() <= screen.width() and window.height() <= screen.height()


def test_docks_opened_one_by_one_keep_the_window_on_screen(sample_viewer, qtbot):
    """From the Plugins menu napari stacks the docks in one column on the right: with each
    form scrolled, their minimum heights no longer add up past a laptop screen."""
    window = sample_viewer.window._qt_window
    for name in DOCKS:
        widget = sample_viewer.window.add_plugin_dock_widget("napari-inkdetect", name)[1]
        make_scrollable(widget)
    _resized(qtbot, window, 1366, 768)
    assert window.height() <= 768
    assert set(sample_viewer.window.dock_widgets) >= {f"{n} (napari-inkdetect)" for n in DOCKS}


def test_make_scrollable_keeps_the_widget_and_its_rows(qtbot):
    widget = QWidget()
    qtbot.addWidget(widget)
    layout = QVBoxLayout(widget)
    rows = [QLabel(f"row {i}") for i in range(40)]
    for row in rows:
        layout.addWidget(row)
    tall = widget.minimumSizeHint().height()
    scroll = make_scrollable(widget)
    assert make_scrollable(widget) is scroll  # a second call changes nothing
    assert widget.layout() is layout and layout.count() == 1  # the scroll area only
    assert all(row.parentWidget() is scroll.widget() for row in rows)
    assert widget.minimumSizeHint().height() < tall / 4
    assert widget.minimumSizeHint().width() >= scroll.widget().minimumSizeHint().width()
    widget.resize(300, 200)
    widget.show()
    qtbot.waitExposed(widget)
    assert rows[0].isVisible() and rows[0].y() < rows[1].y()


def test_make_scrollable_needs_a_box_layout(qtbot):
    widget = QWidget()
    qtbot.addWidget(widget)
    with pytest.raises(TypeError, match="needs a box layout"):
        make_scrollable(widget)


def test_new_viewer_shows_no_qt_binding_deprecation(tmp_path):
    """napari warns about PyQt5 in a notification on the first window (the test fixtures
    silence it, so a fresh process opens one); the testing extra installs PyQt6."""
    script = (
        "import napari\n"
        "from napari.utils.notifications import notification_manager\n"
        "from qtpy.QtWidgets import QApplication\n"
        "viewer = napari.Viewer(show=True)\n"
        "QApplication.processEvents()\n"
        "print('NOTES', [str(n.message) for n in notification_manager.records])\n"
        "viewer.close()\n"
    )
    env = {**os.environ, "NAPARI_CONFIG": str(tmp_path / "settings.yaml")}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    notes = next(line for line in done.stdout.splitlines() if line.startswith("NOTES"))
    assert "deprecat" not in notes.lower(), (
        f"{notes} ({API_NAME}): reinstall '.[testing]' in a new venv"
    )

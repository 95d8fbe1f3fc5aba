"""What the dock tests share: a real napari viewer with the small synthetic segment opened by
our reader, and the notifications napari shows."""

from __future__ import annotations

import pytest
from napari.utils.notifications import notification_manager


@pytest.fixture
def segment_viewer(make_napari_viewer, small_segment):
    """A viewer with the 12 x 96 x 128 synthetic segment ``s`` opened by our reader."""
    viewer = make_napari_viewer()
    viewer.open(small_segment, plugin="napari-inkdetect")
    return viewer


@pytest.fixture
def viewer(segment_viewer):
    """The segment viewer, under the name most dock tests use (a module may override it)."""
    return segment_viewer


@pytest.fixture
def notifications():
    """Every notification napari dispatches during the test."""
    seen = []
    notification_manager.notification_ready.connect(seen.append)
    yield seen
    notification_manager.notification_ready.disconnect(seen.append)

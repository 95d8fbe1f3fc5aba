"""Crackle labels dock, driven on a real viewer: alignment, brush, keys, counts, load and save."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import write_png
from napari.utils.notifications import notification_manager

from napari_inkdetect._napari_layers import segment_layers
from napari_inkdetect._widgets.labels_dock import BRUSH_SIZE, CrackleLabelsWidget
from napari_inkdetect.io.images import read_gray
from napari_inkdetect.io.labels import INK, NOT_INK, UNLABELED
from napari_inkdetect.io.segment import open_segment


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture
def dock(viewer, qtbot) -> CrackleLabelsWidget:
    widget = CrackleLabelsWidget(viewer)
    qtbot.addWidget(widget)
    return widget


@pytest.fixture
def segment_dock(viewer, dock, scroll_segment) -> CrackleLabelsWidget:
    """The dock over a real segment opened the way our reader opens it (mask, binary labels)."""
    for data, kwargs, kind in segment_layers(open_segment(scroll_segment)):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    return dock


def _errors_since(start: int) -> list[str]:
    return [str(n.message) for n in notification_manager.records[start:] if n.severity == "error"]


def test_new_labels_align_with_the_volume(viewer, dock):
    viewer.add_image(np.zeros((4, 30, 40), np.uint16), scale=(1, 2, 3), translate=(0, 10, 20))
    layer = dock.new_labels()
    assert layer.data.shape == (30, 40)
    assert layer.data.dtype == np.uint8
    np.testing.assert_allclose(layer.scale, (2, 3))
    np.testing.assert_allclose(layer.translate, (10, 20))
    assert layer.mode == "paint"
    assert layer.selected_label == INK
    assert layer.brush_size == BRUSH_SIZE
    assert viewer.layers.selection.active is layer
    assert dock.labels is layer


def test_new_labels_use_full_resolution_of_multiscale_volume(viewer, dock):
    levels = [np.zeros((2, 64, 96), np.uint16), np.zeros((2, 32, 48), np.uint16)]
    viewer.add_image(levels, multiscale=True)
    assert dock.new_labels().data.shape == (64, 96)


def test_colours_are_red_ink_and_cyan_not_ink(viewer, dock, volume):
    viewer.add_image(volume)
    layer = dock.new_labels()
    ink, not_ink = layer.colormap.map(np.array([INK, NOT_INK]))
    assert ink[0] > 0.8 and ink[1] < 0.3 and ink[2] < 0.3
    assert not_ink[0] < 0.3 and not_ink[1] > 0.6 and not_ink[2] > 0.8


def test_keys_switch_ink_not_ink_and_eraser(viewer, dock, volume):
    viewer.add_image(volume)
    layer = dock.new_labels()
    keys = viewer.window._qt_viewer._key_map_handler  # the handler real key presses go through
    keys.press_key("N")
    keys.release_key("N")
    assert (layer.mode, layer.selected_label) == ("paint", NOT_INK)
    keys.press_key("E")
    keys.release_key("E")
    assert layer.mode == "erase"
    keys.press_key("I")
    keys.release_key("I")
    assert (layer.mode, layer.selected_label) == ("paint", INK)


def test_combos_follow_layers(viewer, dock, volume):
    assert dock.volume is None and not dock.new_button.isEnabled()
    image = viewer.add_image(volume)
    assert dock.volume is image and dock.new_button.isEnabled()
    layer = dock.new_labels()
    viewer.layers.remove(layer)
    assert dock.labels is None
    assert dock.counts_label.text() == "No labels layer"


def test_painting_updates_counts_after_debounce(viewer, dock, volume, qtbot):
    viewer.add_image(volume)
    layer = dock.new_labels()
    assert "> ink: 0 px" in dock.counts_label.text()
    layer.paint((50, 50), INK)  # one brush stroke, as the mouse does it
    qtbot.waitUntil(lambda: "> ink: 0 px" not in dock.counts_label.text(), timeout=2000)
    n_ink = int((layer.data == INK).sum())
    assert n_ink > 0 and f"> ink: {n_ink:,} px" in dock.counts_label.text()
    data = np.zeros_like(layer.data)
    data[:10, :10] = NOT_INK
    layer.data = data
    qtbot.waitUntil(lambda: "not ink: 100 px" in dock.counts_label.text(), timeout=2000)


def test_save_and_load_round_trip_sparse_png(viewer, dock, volume, tmp_path):
    viewer.add_image(volume)
    layer = dock.new_labels()
    layer.data[5:9, 5:9] = INK
    layer.data[20:30, 40:50] = NOT_INK
    written = dock.save(tmp_path / "labels.png")
    assert written == [tmp_path / "labels.png"]
    loaded = dock.load(written[0])
    np.testing.assert_array_equal(loaded.data, layer.data)
    assert loaded.metadata["source"] == str(written[0])


def test_save_villa_pair_writes_both_files(viewer, dock, volume, tmp_path):
    viewer.add_image(volume)
    layer = dock.new_labels()
    layer.data[5:9, 5:9] = INK
    layer.data[20:30, 40:50] = NOT_INK
    written = dock.save(tmp_path / "seg_inklabels.png")
    assert written == [tmp_path / "seg_inklabels.png", tmp_path / "seg_supervision_mask.png"]
    assert (read_gray(written[0]) > 0).sum() == 16
    assert (read_gray(written[1]) > 0).sum() == 16 + 100
    np.testing.assert_array_equal(dock.load(written[0]).data, layer.data)


def test_import_kaggle_binary_inklabels_uses_the_segment_mask(segment_dock, scroll_segment):
    layer = segment_dock.load(scroll_segment / f"{scroll_segment.name}_inklabels.png")
    assert layer.data[30, 45] == INK
    assert layer.data[50, 100] == NOT_INK  # 0 inside the mask
    assert layer.data[2, 2] == UNLABELED  # 0 outside the mask
    assert segment_dock.labels is layer


@pytest.mark.parametrize(
    "content",
    [np.zeros((10, 10), np.uint8), np.full((96, 128), 7, np.uint8), b"not a png"],
    ids=["wrong-shape", "bad-values", "corrupt"],
)
def test_bad_file_notifies_and_adds_nothing(segment_dock, viewer, tmp_path, content):
    path = tmp_path / "bad.png"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        write_png(path, content)
    start, n_layers = len(notification_manager.records), len(viewer.layers)
    assert segment_dock.load(path) is None
    assert _errors_since(start) and "bad.png" in _errors_since(start)[0]
    assert len(viewer.layers) == n_layers
    assert segment_dock.new_labels() is not None  # still usable


def test_errors_without_volume_or_with_foreign_label_values(viewer, dock, volume, tmp_path):
    start = len(notification_manager.records)
    assert dock.new_labels() is None
    assert dock.load(tmp_path / "x.png") is None
    assert dock.save(tmp_path / "x.png") == []
    viewer.add_image(volume)
    dock.new_labels().data[0, 0] = 3  # e.g. the "=" key raised the label id
    assert dock.save(tmp_path / "three.png") == []
    assert not Path(tmp_path / "three.png").exists()
    assert len(_errors_since(start)) == 4

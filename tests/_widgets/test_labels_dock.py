"""Crackle labels dock on a real viewer: alignment, keys, counts, load, save, dense boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from napari.utils.notifications import notification_manager
from segment_files import write_png

from napari_inkdetect._napari_layers import segment_layers
from napari_inkdetect._widgets.dense_boxes import rectangle_boxes
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


@pytest.fixture
def painted(viewer, dock, volume):
    """Labels over a scaled, shifted volume with one painted ink stroke and one not-ink dab."""
    viewer.add_image(volume, scale=(1, 2, 2), translate=(0, 10, 20))
    layer = dock.new_labels()
    layer.data[20:30, 20:30] = INK
    layer.data[0:5, 0:5] = NOT_INK
    return layer


def test_new_dense_boxes_align_with_the_labels(viewer, dock, painted):
    dock.boxes_button.click()
    shapes = viewer.layers[f"{painted.name} dense boxes"]
    assert shapes.metadata == {"inkdetect_role": "dense_boxes", "inkdetect_labels": painted.name}
    np.testing.assert_allclose(shapes.scale, painted.scale)
    np.testing.assert_allclose(shapes.translate, painted.translate)
    assert shapes.mode == "add_rectangle"
    assert viewer.layers.selection.active is shapes
    shapes.add_rectangles(np.array([[10, 10], [39, 49]]))
    np.testing.assert_allclose(shapes.edge_color[0], (0, 1, 1, 1))  # cyan
    assert shapes.face_color[0][3] == 0  # transparent
    assert dock.new_dense_boxes() is shapes  # one layer per labels layer
    assert dock.labels is painted  # selecting the shapes layer keeps the labels chosen


def test_fill_boxes_makes_unpainted_pixels_not_ink_in_one_undo(viewer, dock, painted):
    before = painted.data.copy()
    dock.new_dense_boxes().add_rectangles(np.array([[10, 10], [39, 49]]))  # rows 10-39, x 10-49
    start = len(notification_manager.records)
    dock.fill_button.click()
    assert int((painted.data == INK).sum()) == 100
    assert int((painted.data == NOT_INK).sum()) == 30 * 40 - 100 + 25
    assert (painted.data[10:40, 10:50] != UNLABELED).all()
    assert int((painted.data[40:, :] != UNLABELED).sum()) == 0
    assert "not ink: 1,125 px" in dock.counts_label.text()
    messages = [str(n.message) for n in notification_manager.records[start:]]
    assert any("1,100 px" in m and "became not ink" in m for m in messages)
    painted.undo()
    np.testing.assert_array_equal(painted.data, before)


def test_rectangles_in_world_coordinates_are_converted(viewer, dock, painted):
    shapes = viewer.add_shapes(
        np.array([[[30, 40], [30, 120], [88, 120], [88, 40]]]),  # world: y = 10 + 2 * row
        shape_type="rectangle",
        metadata={"inkdetect_role": "dense_boxes", "inkdetect_labels": painted.name},
    )
    assert rectangle_boxes(shapes, painted) == [(10, 40, 10, 51)]
    assert dock.fill_dense_boxes() == 30 * 41 - 100


def test_fill_boxes_uses_the_segment_mask_and_saves_as_supervision(
    segment_dock, scroll_segment, tmp_path
):
    layer = segment_dock.new_labels()
    layer.data[20:40, 30:60] = INK
    segment_dock.new_dense_boxes().add_rectangles(np.array([[-10, -10], [200, 200]]))
    assert segment_dock.fill_dense_boxes() == (96 - 16) * (128 - 16) - 20 * 30
    assert (layer.data[:8] == UNLABELED).all() and (layer.data[:, -8:] == UNLABELED).all()
    assert (layer.data[8:-8, 8:-8] != UNLABELED).all()
    written = segment_dock.save(tmp_path / f"{scroll_segment.name}_inklabels.png")
    assert (read_gray(written[1]) > 0).sum() == (96 - 16) * (128 - 16)
    np.testing.assert_array_equal(segment_dock.load(written[0]).data, layer.data)


def test_fill_boxes_errors_leave_the_labels_unchanged(viewer, dock, painted):
    before = painted.data.copy()
    start = len(notification_manager.records)
    assert dock.fill_dense_boxes() is None  # no dense-boxes layer
    shapes = dock.new_dense_boxes()
    assert dock.fill_dense_boxes() is None  # a layer without rectangles
    shapes.add_polygons(np.array([[5, 5], [5, 30], [30, 5]]))
    assert dock.fill_dense_boxes() is None  # a triangle is not a box
    shapes.selected_data = {0}
    shapes.remove_selected()
    shapes.add_rectangles(np.array([[100, 10], [120, 20]]))  # below the 96-row image
    assert dock.fill_dense_boxes() is None
    errors = _errors_since(start)
    assert len(errors) == 4
    assert "No dense boxes for" in errors[0] and "No dense boxes for" in errors[1]
    assert "shape 1 is a polygon" in errors[2]
    assert "outside the 96 x 128 image" in errors[3]
    np.testing.assert_array_equal(painted.data, before)
    dock.update_counts()
    assert "ink: 100 px" in dock.counts_label.text()
    assert "not ink: 25 px" in dock.counts_label.text()
    viewer.layers.remove(painted)
    assert dock.fill_dense_boxes() is None and dock.new_dense_boxes() is None
    assert len(_errors_since(start)) == 6

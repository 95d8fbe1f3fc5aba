"""Where to look next in the Predict dock, in a real viewer: the depth map and uncertainty
layers sit exactly on the prediction, and "label here next" boxes take the user there."""

from __future__ import annotations

import numpy as np
import pytest
from prediction_files import write_prediction

from napari_inkdetect._napari_layers import DERIVED_KEY, ROLE_KEY, UNCERTAINTY
from napari_inkdetect._widgets.look_next import SUGGESTIONS_NAME
from napari_inkdetect._widgets.predict_dock import PredictWidget
from napari_inkdetect._widgets.prediction_overlay import camera_of
from napari_inkdetect.prediction_maps import StoredPrediction, depth_map

REGION = (16, 0, 80, 128)  # of the 96 x 128 segment
STARTS = (0, 2, 4)  # window 8: centres 4, 6, 8
TIMEOUT_MS = 30_000


def planes(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    prob = rng.uniform(0.0, 0.3, (3, 64, 128))
    prob[:, 10:30, 20:60] = 0.9  # ink, seen by every window ...
    prob[1, 10:30, 20:60] = 0.97  # ... best by the middle one
    prob[:, 40:60, 80:120] = 0.5  # doubt at the threshold
    return prob


@pytest.fixture
def predicted(segment_viewer, tmp_path):
    path = write_prediction(tmp_path / "a.zarr", planes(0), region=REGION, start_layers=STARTS,
                            segment_id="s")  # fmt: skip
    segment_viewer.open(path, plugin="napari-inkdetect")
    dock = PredictWidget(segment_viewer)
    segment_viewer.window.add_dock_widget(dock, name="Predict")
    return segment_viewer, dock.look_next, path


def overlay_of(viewer):
    return next(x for x in viewer.layers if x.name.endswith("layers)"))


def test_depth_map_layer_is_the_argmax_and_sits_on_the_prediction(predicted):
    viewer, panel, path = predicted
    assert panel.prediction_combo.currentText() == overlay_of(viewer).name
    layer = panel.add_depth_map()
    assert layer is not None and layer.metadata[ROLE_KEY] == UNCERTAINTY
    expected = np.asarray(depth_map(StoredPrediction.open(path), 0.5))
    np.testing.assert_array_equal(np.asarray(layer.data), expected)
    assert np.nanmax(expected) == 6.0  # the ink sits in the middle window (centre 6)
    assert tuple(layer.translate) == (16.0, 0.0) and layer.colorbar.visible
    assert "peaks at layer" in panel.legend.text()
    panel.add_depth_map()  # a second click replaces the layer instead of stacking copies
    assert sum(x.name == layer.name for x in viewer.layers) == 1


def test_uncertainty_is_aligned_with_the_overlay_and_sees_a_second_model(predicted, tmp_path):
    viewer, panel, _ = predicted
    overlay = overlay_of(viewer)
    alone = panel.add_uncertainty()
    assert tuple(alone.scale) == tuple(overlay.scale)
    assert tuple(alone.translate) == tuple(overlay.translate)
    assert alone.metadata[DERIVED_KEY] == "uncertainty"
    single = np.asarray(alone.data)
    other = planes(0)
    other[:, 10:30, 20:60] = 0.05  # the second model misses the ink
    second = write_prediction(tmp_path / "b.zarr", other, region=REGION, start_layers=STARTS,
                              segment_id="s")  # fmt: skip
    panel.second_edit.setText(str(second))
    both = np.asarray(panel.add_uncertainty().data)
    assert single[:, 10:30, 20:60].max() < 0.7 < both[:, 10:30, 20:60].min()
    assert "second model" in panel.legend.text()


def test_a_second_prediction_of_another_region_is_a_notification(
    predicted, tmp_path, notifications
):
    viewer, panel, _ = predicted
    other = write_prediction(tmp_path / "c.zarr", planes(1)[:, :32], region=(0, 0, 32, 128),
                             start_layers=STARTS, segment_id="s")  # fmt: skip
    panel.second_edit.setText(str(other))
    before = len(viewer.layers)
    assert panel.add_uncertainty() is None
    assert len(viewer.layers) == before
    assert any("differs" in str(n.message) for n in notifications)
    assert panel.legend.text().startswith("Error:")


def test_label_here_next_boxes_and_a_click_that_goes_there(predicted, qtbot):
    viewer, panel, _ = predicted
    panel.box_spin.setValue(16)
    panel.count_spin.setValue(4)
    train = viewer.layers["s train labels"]
    painted = np.zeros(train.data.shape, np.uint8)
    painted[30:40, 10:70] = 1  # a few strokes the user painted; nothing for validation
    painted[60:64, 90:100] = 2
    train.data = painted
    viewer.layers["s validation labels"].data = np.zeros_like(painted)
    mask = np.asarray(viewer.layers["s mask"].data) != 0
    worker = panel.suggest()
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT_MS):
        pass
    qtbot.waitUntil(lambda: SUGGESTIONS_NAME in viewer.layers, timeout=5000)
    assert panel.list.count() == len(panel.suggestions) > 0
    painted = (np.asarray(train.data) != 0) | (
        np.asarray(viewer.layers["s validation labels"].data) != 0
    )
    for s in panel.suggestions:
        y0, x0, y1, x1 = s.box
        assert REGION[0] <= y0 and y1 <= REGION[2]
        assert mask[y0:y1, x0:x1].all() and not painted[y0:y1, x0:x1].any()
    assert any(s.doubt > 0.9 for s in panel.suggestions)  # the doubtful patch is among them
    shapes = viewer.layers[SUGGESTIONS_NAME]
    assert len(shapes.data) == len(panel.suggestions)
    assert np.allclose(shapes.data[0].min(axis=0), panel.suggestions[0].box[:2])
    viewer.layers.selection.active = viewer.layers["s"]
    panel.list.setCurrentRow(0)
    centre = panel.suggestions[0].centre
    assert np.allclose(camera_of(viewer).center[-2:], centre)
    assert viewer.layers.selection.active is train and train.mode == "paint"


def test_compare_adds_the_difference_on_the_shared_pixels_and_lists_what_differs(
    predicted, tmp_path
):
    viewer, panel, _ = predicted
    assert panel.compare() is None  # no second prediction chosen yet: said, not raised
    assert "second model" in panel.legend.text()
    other = planes(0)[1:, 8:40] - 0.1  # windows 2 and 4 only, rows 24..56 of the segment
    second = write_prediction(tmp_path / "b.zarr", other.clip(0, 1), region=(24, 0, 56, 128),
                              start_layers=(2, 4), segment_id="s",
                              extra={"config": {"tta_flips": True}})  # fmt: skip
    panel.second_edit.setText(str(second))
    layer = panel.compare()
    data = np.asarray(layer.data)
    assert data.shape == (2, 32, 128)
    expected = np.round(planes(0)[1:, 8:40] * 255) / 255 - np.round(other.clip(0, 1) * 255) / 255
    np.testing.assert_allclose(data, expected, atol=1e-6)
    overlay = overlay_of(viewer)
    assert tuple(layer.translate) == (overlay.translate[0] + overlay.scale[0], 24.0, 0.0)
    assert tuple(layer.scale) == tuple(overlay.scale)
    assert "tta_flips" in panel.legend.text()

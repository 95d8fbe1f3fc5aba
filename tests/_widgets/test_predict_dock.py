"""The Predict dock in a real viewer: overlay placement on the depth axis, streaming from the
zarr on disk, threshold outline and live scores, follow-the-view, restore, stop and errors."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_inkdetect._widgets._runs import session
from napari_inkdetect._widgets.predict_dock import PredictWidget
from napari_inkdetect._widgets.prediction_overlay import camera_of
from napari_inkdetect.engine import drain
from napari_inkdetect.inference import ChunkDone, ClusterReady, PredictStarted, predict
from napari_inkdetect.io.prediction_store import open_prediction
from napari_inkdetect.models import InkDetector, save_checkpoint
from napari_inkdetect.postprocess import plane_scores, threshold_mask
from napari_inkdetect.scoring.metrics import score
from napari_inkdetect.synthetic import make_segment, write_segment

CONSTANT_U8 = round(255 / (1 + np.exp(-1.0)))  # softmax([0, 1])[1] x 255
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A random model and one that says p = 0.73 everywhere (8-layer window, tile 64)."""
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = InkDetector("resnet10", width=0.125)
    random = save_checkpoint(root / "random.safetensors", model, tile_size=64, in_layers=8)
    with torch.no_grad():
        model.decoder.logit.weight.zero_()
        model.decoder.logit.bias.copy_(torch.tensor([0.0, 1.0]))
    constant = save_checkpoint(
        root / "constant.safetensors", model, tile_size=64, in_layers=8, start_layer=5
    )
    return {"random": random, "constant": constant}


@pytest.fixture
def viewer(make_napari_viewer, tmp_path):
    folder = write_segment(make_segment(shape=(16, 128, 192)), tmp_path, "s")
    viewer = make_napari_viewer()
    viewer.open(folder, plugin="napari-inkdetect")
    return viewer


@pytest.fixture
def dock(viewer, tmp_path, checkpoints):
    widget = PredictWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Predict")
    widget.checkpoint_edit.setText(str(checkpoints["random"]))
    widget.out_edit.setText(str(tmp_path / "predictions"))
    widget.device_combo.setCurrentText("cpu")
    widget.region_combo.setCurrentText("Whole mask")
    return widget


def run(dock, qtbot, config=None):
    events = []
    dock.runner.on_event = lambda e, inner=dock._on_event: (events.append(e), inner(e))
    assert dock.start(config) is not None
    qtbot.waitUntil(lambda: not dock.running, timeout=TIMEOUT_MS)
    return events


def test_overlay_sits_on_the_depth_axis_and_shows_what_is_on_disk(dock, viewer, qtbot):
    viewer.add_shapes([[[10, 20], [10, 150], [110, 150], [110, 20]]], shape_type="rectangle")
    dock.region_combo.setCurrentText("Shapes rectangle")
    dock.centre_from.setValue(6)  # the 8-layer windows [2, 10), [4, 12), [6, 14)
    dock.centre_to.setValue(10)
    dock.centre_step.setValue(2)
    config = dock.build_config()
    assert config.region == (10, 20, 110, 150) and config.centre_layers == (6, 8, 10)

    events = run(dock, qtbot, config.with_(chunk=64))  # several chunks stream in
    started = next(e for e in events if isinstance(e, PredictStarted))
    chunks = [e for e in events if isinstance(e, ChunkDone)]
    assert started.shape == (3, 100, 130) and len(chunks) == started.total_chunks > 1

    overlay = dock.overlay()
    assert overlay.data.shape == (3, 100, 130)
    assert tuple(overlay.translate) == (6, 10, 20) and tuple(overlay.scale) == (2, 1, 1)
    assert "window centre" in overlay.name and overlay.metadata["start_layers"] == [2, 4, 6]
    assert overlay.metadata["centre_layers"] == [6, 8, 10]
    # the depth slider at a window's centre shows that window's plane; at its start, not
    prob, _ = open_prediction(config.out)
    viewer.dims.set_current_step(0, 4)
    assert dock.current_index() is None
    viewer.dims.set_current_step(0, 8)
    qtbot.waitUntil(lambda: dock.current_index() == 1)
    np.testing.assert_array_equal(np.asarray(overlay._slice.image.raw), np.asarray(prob[1]))
    # the max projection and the depth profile agree with the data
    peak = next(x for x in viewer.layers if x.name.endswith("max over starts"))
    np.testing.assert_array_equal(np.asarray(peak.data), np.asarray(prob).max(axis=0))
    planes = np.asarray(prob).reshape(3, -1).astype(float)
    inside = planes.any(axis=0)
    np.testing.assert_allclose(
        dock.profile_plot.means, planes[:, inside].mean(axis=1) / 255, rtol=1e-6
    )
    assert dock.profile_plot.starts == (6, 8, 10) and dock.profile_plot.current == 8
    assert dock.last_stall_ms is not None and dock.last_stall_ms >= 0
    assert "Longest GUI stall" in dock.status_label.text()


def test_rerun_resumes_and_a_saved_prediction_is_restored(dock, viewer, qtbot):
    dock.centre_from.setValue(7)  # the window [3, 11)
    dock.centre_to.setValue(7)
    config = dock.build_config()
    run(dock, qtbot)
    again = run(dock, qtbot, config)
    started = next(e for e in again if isinstance(e, PredictStarted))
    assert started.done_chunks == started.total_chunks and started.total_tiles == 0

    for layer in list(viewer.layers):
        if "ink" in layer.name:
            viewer.layers.remove(layer)
    restored = viewer.open(config.out, plugin="napari-inkdetect")
    y0, x0, y1, x1 = open_prediction(config.out)[1]["region"]  # the mask's bounding box
    assert (y1 - y0, x1 - x0) != (128, 192)
    assert [x.data.shape for x in restored] == [(1, y1 - y0, x1 - x0), (y1 - y0, x1 - x0)]
    assert tuple(restored[0].translate) == (7, y0, x0)
    assert restored[0].metadata["inkdetect_prediction"] == config.out


def test_threshold_outline_and_scores_against_validation_labels(dock, viewer, qtbot, checkpoints):
    dock.checkpoint_edit.setText(str(checkpoints["constant"]))
    dock._on_checkpoint_edited()
    # around the trained window [5, 13), centred on 9: 9 +- 2 x 2, to the last centre 12
    assert (dock.centre_from.value(), dock.centre_to.value()) == (5, 11)
    dock.centre_from.setValue(9)
    dock.centre_to.setValue(9)
    run(dock, qtbot)
    prob, prov = open_prediction(dock.config.out)
    assert set(np.unique(prob)) <= {0, CONSTANT_U8} and prov["start_layers"] == [5]

    viewer.dims.set_current_step(0, 9)
    dock.val_combo.setCurrentText("s validation labels")
    dock.outline_check.setChecked(True)
    dock.threshold_slider.setValue(70)  # 0.70 < 0.73: every papyrus pixel is "ink"
    qtbot.waitUntil(lambda: "F0.5" in dock.metrics_label.text(), timeout=5000)
    outline = viewer.layers["ink above threshold"]
    assert outline.name not in [dock.val_combo.itemText(i) for i in range(dock.val_combo.count())]
    np.testing.assert_array_equal(np.asarray(outline.data[0]), np.asarray(prob[0]) > 0)
    y0, x0, y1, x1 = dock.config.region or open_prediction(dock.config.out)[1]["region"]
    labels = viewer.layers["s validation labels"].data[y0:y1, x0:x1]
    expected = score(np.asarray(prob[0]), labels, 0.70)
    assert f"F0.5 {expected.f05:.3f}" in dock.metrics_label.text()
    assert expected.recall == 1.0 and 0 < expected.precision < 1

    dock.threshold_slider.setValue(80)  # above 0.73: nothing is ink
    qtbot.waitUntil(lambda: "R 0.000" in dock.metrics_label.text(), timeout=5000)
    assert not np.asarray(outline.data).any()


def test_threshold_slider_takes_the_checkpoint_calibrated_threshold(
    dock, viewer, qtbot, checkpoints, tmp_path
):
    torch.manual_seed(1)
    metrics = {"best_threshold": 0.37, "best_f05": 0.6, "f05": 0.5, "threshold": 0.5}
    calibrated = save_checkpoint(
        tmp_path / "best.safetensors", InkDetector("resnet10", width=0.125), tile_size=64,
        in_layers=8, provenance={"steps": 4, "metrics": metrics},
    )  # fmt: skip
    dock._on_checkpoint_edited()  # the random checkpoint: not validated
    assert dock.threshold == 0.5 and dock.threshold_source.text() == ""
    assert "no validation threshold" in dock.threshold_slider.toolTip()

    dock.checkpoint_edit.setText(str(calibrated))
    dock._on_checkpoint_edited()
    assert dock.threshold == 0.37 and dock.threshold_label.text() == "0.37"
    assert dock.threshold_source.text() == "0.37 from the checkpoint's validation"
    assert "0.37 from the checkpoint's validation" in dock.threshold_slider.toolTip()
    dock.threshold_slider.setValue(60)  # the user's choice survives the same checkpoint again
    assert "chosen by hand" in dock.threshold_source.text()
    dock._on_checkpoint_edited()
    assert dock.threshold == 0.6

    dock.centre_from.setValue(7)
    dock.centre_to.setValue(7)
    config = dock.build_config()
    run(dock, qtbot)  # predicting with it keeps the user's threshold too
    assert dock.overlay().metadata["threshold"] == 0.37 and dock.threshold == 0.6

    dock.checkpoint_edit.setText(str(checkpoints["random"]))
    dock._on_checkpoint_edited()  # no recommendation any more: the hand-set value stays
    assert dock.threshold == 0.6 and dock.threshold_source.text() == ""
    run(dock, qtbot, config)  # a restored (resumed) prediction brings its own threshold
    assert dock.threshold == 0.37
    assert dock.threshold_source.text() == "0.37 from the checkpoint's validation"
    dock.checkpoint_edit.setText(str(checkpoints["random"]))
    dock._on_checkpoint_edited()  # the slider sat on the old recommendation: back to 0.5
    assert dock.threshold == 0.5

    dock.threshold_slider.setValue(80)
    session(viewer).set_checkpoint(calibrated, 3)  # handed over by Finetune: always applied
    assert dock.checkpoint_edit.text() == str(calibrated) and dock.threshold == 0.37
    fresh = PredictWidget(viewer)  # a new dock preselects it, threshold included
    assert fresh.threshold == 0.37 and fresh.threshold_label.text() == "0.37"

    for layer in list(viewer.layers):
        if "ink" in layer.name:
            viewer.layers.remove(layer)
    restored = viewer.open(config.out, plugin="napari-inkdetect")
    assert restored[0].metadata["threshold"] == 0.37


def test_threshold_mask_removes_small_blobs():
    plane = np.zeros((1, 40, 40), np.uint8)
    plane[0, 2:4, 2:4] = 200  # 4 px
    plane[0, 10:30, 10:30] = 200  # 400 px
    assert np.asarray(threshold_mask(plane, 0.5)).sum() == 404
    assert np.asarray(threshold_mask(plane, 0.5, min_size=10)).sum() == 400
    labels = np.zeros((40, 40), np.uint8)
    labels[10:30, 10:30], labels[0:5, 0:5] = 1, 2
    raw, cleaned = plane_scores(plane, 0, labels, 0.5), plane_scores(plane, 0, labels, 0.5, 10)
    assert raw.precision < 1 and cleaned.precision == 1.0 and cleaned.recall == 1.0


def test_follow_view_predicts_the_view_and_returning_is_instant(dock, viewer, qtbot):
    dock.centre_from.setValue(6)
    dock.centre_to.setValue(6)
    dock.max_view_spin.setValue(128)
    camera = camera_of(viewer)
    camera.center = (0, 40, 60)
    camera.zoom = camera.zoom * 4
    qtbot.wait(300)  # drawn: the layer knows what is in view
    dock.follow_check.setChecked(True)
    assert dock.region_combo.currentText() == "Current view"
    qtbot.waitUntil(lambda: dock.config is not None and not dock.running, timeout=TIMEOUT_MS)
    first = dock.config
    y0, x0, y1, x1 = first.region
    assert y1 - y0 <= 128 + 64 and x1 - x0 <= 128 + 64  # the view limit, snapped to 64 px
    assert y0 <= 40 <= y1 and x0 <= 60 <= x1 and y0 % 64 == 0 and x0 % 64 == 0

    camera.center = (0, 90, 140)  # pan: a new run for the new view
    qtbot.waitUntil(lambda: dock.config.out != first.out and not dock.running, timeout=TIMEOUT_MS)
    assert dock.config.region != first.region
    assert Path(first.out).exists() and Path(dock.config.out).exists()

    camera.center = (0, 40, 60)  # back: that view's prediction is on disk already
    qtbot.waitUntil(lambda: dock.config.out == first.out and not dock.running, timeout=TIMEOUT_MS)
    assert dock.runner.finished.tiles == 0
    dock.follow_check.setChecked(False)


def test_removing_the_overlay_mid_run_stops_the_prediction(dock, viewer, qtbot):
    dock.tta_check.setChecked(True)  # 8x the work: still running when the layer goes
    dock.centre_from.setValue(4)
    dock.centre_to.setValue(12)
    dock.centre_step.setValue(1)
    worker = dock.start()
    qtbot.waitUntil(lambda: dock.overlay() is not None, timeout=TIMEOUT_MS)
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT_MS):
        viewer.layers.remove(dock.overlay())
    qtbot.waitUntil(lambda: not dock.running)
    assert dock.runner.finished is not None and dock.runner.finished.stopped
    assert dock.run_button.text() == "Predict" and dock.run_button.isEnabled()


def test_bad_input_is_a_notification_and_the_dock_stays_usable(
    dock, qtbot, tmp_path, notifications
):
    dock.checkpoint_edit.setText("")
    assert dock.start() is None
    assert "choose a checkpoint" in dock.status_label.text()
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 64)
    dock.checkpoint_edit.setText(str(corrupt))
    assert dock.start() is not None
    qtbot.waitUntil(lambda: not dock.running, timeout=TIMEOUT_MS)
    assert "corrupt.safetensors" in dock.status_label.text()
    assert any("corrupt.safetensors" in str(n.message) for n in notifications)
    assert dock.run_button.text() == "Predict" and dock.run_button.isEnabled()


def test_the_last_finetuned_checkpoint_is_preselected(viewer, checkpoints):
    session(viewer).set_checkpoint(checkpoints["constant"], 5)
    widget = PredictWidget(viewer)
    assert widget.checkpoint_edit.text() == str(checkpoints["constant"])
    session(viewer).set_checkpoint(checkpoints["random"], 4)
    assert widget.checkpoint_edit.text() == str(checkpoints["random"])
    # the band around the trained window [4, 12): centres 8 +- 4, i.e. windows 0..8
    assert (widget.centre_from.value(), widget.centre_to.value()) == (4, 12)


@pytest.mark.slow
def test_local_workers_stream_into_the_same_overlay(dock, viewer, qtbot, tmp_path):
    dock.centre_from.setValue(6)
    dock.centre_to.setValue(8)
    dock.run_on_combo.setCurrentText("local workers")
    dock.workers_spin.setValue(2)
    config = dock.build_config().with_(chunk=64)
    events = run(dock, qtbot, config)
    assert "dask workers" in next(e for e in events if isinstance(e, PredictStarted)).device
    assert len([e for e in events if isinstance(e, ChunkDone)]) > 1
    assert dock.runner.finished is not None and not dock.runner.finished.stopped
    reference = drain(predict(config.with_(out=str(tmp_path / "one-process.zarr")))).path
    np.testing.assert_array_equal(
        np.asarray(dock.overlay().data), np.asarray(open_prediction(reference)[0])
    )
    # the second run finds the same workers up (no spawn, no imports, the model loaded)
    first = next(e for e in events if isinstance(e, ClusterReady))
    again = run(dock, qtbot, config.with_(out=str(tmp_path / "again.zarr")))
    assert next(e for e in again if isinstance(e, ClusterReady)).address == first.address
    assert multiprocessing.active_children()  # still up while the dock is open
    viewer.close()  # the dock goes with it, and its idle cluster with the dock
    qtbot.waitUntil(lambda: not multiprocessing.active_children(), timeout=30_000)


def test_large_predictions_are_multiscale_overlays(dock, viewer, qtbot, monkeypatch):
    from napari_inkdetect.io import prediction_store

    monkeypatch.setattr(prediction_store, "LEVELS_ABOVE", 64)  # as if it were 13k px wide
    dock.centre_from.setValue(7)
    dock.centre_to.setValue(7)
    run(dock, qtbot, dock.build_config().with_(chunk=64))
    overlay = dock.overlay()
    assert overlay.multiscale and len(overlay.data) == 3
    viewer.dims.set_current_step(0, 7)
    dock.val_combo.setCurrentText("s validation labels")
    dock.outline_check.setChecked(True)
    qtbot.waitUntil(lambda: "F0.5" in dock.metrics_label.text(), timeout=5000)
    outline = viewer.layers["ink above threshold"]
    assert outline.multiscale and outline.data[2].shape == overlay.data[2].shape

"""The whole loop through the docks, as a user does it: paint crackle labels, press Finetune
(a live preview appears while it trains), press Predict with the checkpoint it made, and see
ink where the letters are on the depth the model was trained on."""

from __future__ import annotations

import numpy as np
import pytest

from napari_inkdetect._napari_app import add_docks
from napari_inkdetect.io.labels import INK, NOT_INK
from napari_inkdetect.io.prediction_store import open_prediction
from napari_inkdetect.synthetic import make_segment, write_segment

STEPS = 300
LAYERS = 12
RUN_TIMEOUT_MS = 240_000


@pytest.mark.slow
def test_paint_finetune_with_preview_then_predict(make_napari_viewer, qtbot, tmp_path):
    seg = make_segment(shape=(20, 128, 192), crackle_strength=6.0, seed=3)  # loud crackle
    folder = write_segment(seg, tmp_path, "s")
    viewer = make_napari_viewer(show=True)
    viewer.open(folder, plugin="napari-inkdetect")
    labels_dock, finetune, predict, _ = add_docks(viewer)
    start = max(0, seg.ink_layers[0] - 3)  # the window 5-16 holds the ink (8-13) ...
    centre = start + LAYERS // 2  # ... and the slider marks its centre
    viewer.dims.set_current_step(0, centre)

    # paint: ink on the letters and papyrus around them, on the left half only
    painted = labels_dock.new_labels()
    left = np.zeros(seg.truth.shape, bool)
    left[:, : seg.truth.shape[1] // 2] = True
    data = np.zeros(seg.truth.shape, np.uint8)
    data[left & (seg.truth == 1)] = INK
    data[left & (seg.truth == 2)] = NOT_INK
    painted.data = data
    assert painted.name in [finetune.labels_combo.itemText(i) for i in range(99)]

    finetune.labels_combo.setCurrentText(painted.name)
    finetune.val_combo.setCurrentText("s validation labels")
    finetune.device_combo.setCurrentText("cpu")
    finetune.width_spin.setValue(0.125)
    finetune.layers_spin.setValue(LAYERS)
    finetune.tile_spin.setValue(64)
    finetune.steps_spin.setValue(STEPS)
    finetune.val_every_spin.setValue(STEPS)
    finetune.preview_spin.setValue(100)
    finetune.runs_edit.setText(str(tmp_path / "runs"))
    assert finetune.build_config().start_layer == start  # centred on the depth slider
    finetune.run_button.click()
    assert finetune.running and finetune.run_button.text() == "Stop"
    qtbot.waitUntil(lambda: not finetune.running, timeout=RUN_TIMEOUT_MS)
    assert finetune.finished_event is not None and finetune.finished_event.steps == STEPS

    # live preview: the model at steps 100 and/or 200 predicted the view while training ran
    assert finetune.previews >= 1
    preview = viewer.layers["s preview (training)"]
    assert preview.ndim == 2 and preview.metadata["start_layers"] == [start]

    # Predict picks up the finetuned checkpoint and a band of centres around its window's
    assert predict.checkpoint_edit.text() == str(finetune.last_checkpoint)
    assert predict.centre_from.value() <= centre <= predict.centre_to.value()
    predict.region_combo.setCurrentText("Whole mask")
    predict.device_combo.setCurrentText("cpu")
    predict.out_edit.setText(str(tmp_path / "predictions"))
    predict.run_button.click()
    qtbot.waitUntil(lambda: not predict.running, timeout=RUN_TIMEOUT_MS)
    assert predict.runner.finished is not None and not predict.runner.finished.stopped

    overlay = predict.overlay()
    prob, prov = open_prediction(overlay.metadata["inkdetect_prediction"])
    starts = prov["start_layers"]
    assert overlay.data.shape == (len(starts), *prob.shape[1:]) and start in starts
    assert overlay.translate[0] == starts[0] + LAYERS // 2  # each window at its centre
    # values from the trained model: ink on the letters it never saw (right half)
    y0, x0, y1, x1 = prov["region"]
    truth, right = seg.truth[y0:y1, x0:x1], ~left[y0:y1, x0:x1]
    plane = np.asarray(prob[starts.index(start)], float)
    ink, papyrus = plane[right & (truth == 1)].mean(), plane[right & (truth == 2)].mean()
    assert ink > papyrus + 25, (ink, papyrus)

    # the stall meter ran during both runs
    assert finetune.last_stall_ms is not None and finetune.stall.ticks > 100
    assert predict.last_stall_ms is not None and predict.runner.stall.ticks > 0
    viewer.dims.set_current_step(0, centre)
    for layer in viewer.layers:  # the volume and the prediction only
        layer.visible = layer is overlay or layer.name == "s"
    shot = viewer.screenshot(str(tmp_path / "workflow.png"), canvas_only=True)
    assert shot[..., :3].std() > 10  # not blank
    overlay.visible = False
    without = viewer.screenshot(canvas_only=True)

    def warm(image: np.ndarray) -> int:
        return int((image[..., 0].astype(int) - image[..., 2] > 80).sum())

    assert warm(shot) > warm(without) + 200  # the ink overlay shows, orange over the papyrus

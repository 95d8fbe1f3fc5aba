"""Find ink depth in a real viewer: the Finetune button, the Predict band, the plot, and the
bundled sample opening at its ink depth."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_inkdetect._napari_app import open_sample
from napari_inkdetect._widgets.finetune_dock import FinetuneWidget
from napari_inkdetect._widgets.predict_dock import PredictWidget
from napari_inkdetect.sample import sample_segment_path
from napari_inkdetect.synthetic import make_segment, write_segment

ESTIMATE_TIMEOUT_MS = 30_000


def assert_band(predict, estimate):
    """Predict sweeps the estimate's band, as window centres, on its step's grid through the
    chosen window's centre."""
    first, last, step = (
        w.value() for w in (predict.centre_from, predict.centre_to, predict.centre_step)
    )
    lo, hi = estimate.centre_band
    assert estimate.centre_band == tuple(s + estimate.layers // 2 for s in estimate.band)
    assert lo <= first <= estimate.centre <= last <= hi
    assert (estimate.centre - first) % step == 0 and (last - estimate.centre) % step == 0
    assert first - lo < step and hi - last < step


@pytest.fixture
def docks(make_napari_viewer, tmp_path):
    """A 48 x 256 x 384 segment (ink in layers 16-22) opened by our reader, with the Finetune
    and Predict docks docked, and the depth slider in the middle of the stack as napari puts it.
    """
    seg = make_segment(shape=(48, 256, 384), seed=0)
    folder = write_segment(seg, tmp_path, "s")
    viewer = make_napari_viewer()
    viewer.open(folder, plugin="napari-inkdetect")
    finetune, predict = FinetuneWidget(viewer), PredictWidget(viewer)
    viewer.window.add_dock_widget(finetune, name="Finetune")
    viewer.window.add_dock_widget(predict, name="Predict")
    viewer.dims.set_current_step(0, 24)
    return viewer, finetune, predict, seg.ink_layers


def test_find_ink_depth_sets_the_window_centre_the_predict_band_and_plots(docks, qtbot):
    viewer, finetune, predict, (z0, z1) = docks
    assert finetune.centre_spin.value() == 24  # following the slider (napari's middle)
    assert finetune.window_start() == 13  # the window 13-34, centred 5 layers below the ink
    assert finetune.depth_plot.isHidden()
    finetune.depth_button.click()
    assert finetune.depth_worker is not None and not finetune.depth_button.isEnabled()
    qtbot.waitUntil(lambda: finetune.depth_worker is None, timeout=ESTIMATE_TIMEOUT_MS)
    estimate = finetune.depth_plot.estimate
    assert estimate is not None and estimate.source == "labels" and estimate.found
    start = finetune.window_start()
    assert finetune.centre_spin.value() == estimate.centre == start + 11
    assert start == estimate.start and start <= z0 and z1 <= start + 22
    assert finetune.depth_button.isEnabled()
    # the centre no longer follows the slider; the Predict band is the estimate's
    viewer.dims.set_current_step(0, 40)
    assert finetune.centre_spin.value() == estimate.centre
    assert finetune.build_config().start_layer == start
    assert_band(predict, estimate)
    # the plot shows: the score curve's colour is on screen, and the explanation as tooltip
    assert not finetune.depth_plot.isHidden()
    image = finetune.depth_plot.grab().toImage()
    curve = finetune.depth_plot.CURVE
    pixels = [
        image.pixelColor(x, y)
        for x in range(0, image.width(), 2)
        for y in range(0, image.height(), 2)
    ]
    near = [abs(p.red() - curve.red()) + abs(p.green() - curve.green()) < 60 for p in pixels]
    assert np.mean(near) > 0.002
    assert f"start {start}" in finetune.depth_plot.toolTip()
    assert finetune.depth_plot.summary().startswith(f"ink near layer {estimate.depth}")


def test_find_ink_depth_without_labels_uses_the_volume(docks, qtbot):
    viewer, finetune, _, (z0, z1) = docks
    for name in ("s train labels", "s validation labels", "s inklabels"):
        if name in viewer.layers:
            viewer.layers.remove(name)
    finetune.find_ink_depth()
    qtbot.waitUntil(lambda: finetune.depth_worker is None, timeout=ESTIMATE_TIMEOUT_MS)
    estimate = finetune.depth_plot.estimate
    assert estimate is not None and estimate.source == "volume"
    assert estimate.start <= z0 and z1 <= estimate.start + 22
    assert finetune.centre_spin.value() == estimate.centre
    assert finetune.window_start() == estimate.start


def test_the_sample_opens_at_its_ink_depth(make_napari_viewer):
    viewer = make_napari_viewer()
    (_, finetune, predict, _), estimate = open_sample(viewer)
    meta = json.loads((sample_segment_path() / "meta.json").read_text())
    z0, z1 = meta["ink_layers"]
    assert estimate is not None and estimate.source == "labels"
    assert z0 <= viewer.dims.current_step[0] < z1  # the crackle is what the user sees first
    start = finetune.window_start()
    assert finetune.centre_spin.value() == estimate.centre == start + 11
    assert start == estimate.start and start <= z0 and z1 <= start + 22
    assert finetune.build_config().start_layer == start
    assert_band(predict, estimate)

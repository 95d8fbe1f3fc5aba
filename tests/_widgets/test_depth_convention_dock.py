"""One depth convention in a real viewer: with the depth slider where the crackle is, the
Finetune window, the Predict overlay, Export and the CLI all mean the window centred there."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from napari_inkdetect._widgets._runs import session
from napari_inkdetect._widgets.export_dock import ExportWidget
from napari_inkdetect._widgets.finetune_dock import FinetuneWidget
from napari_inkdetect._widgets.predict_dock import PredictWidget
from napari_inkdetect.cli import main
from napari_inkdetect.export import FrameRendered, export, render_sweep
from napari_inkdetect.io.prediction_store import open_prediction
from napari_inkdetect.models import InkDetector, save_checkpoint
from napari_inkdetect.synthetic import make_segment, write_segment

LAYERS = 22
REGION = (64, 64, 192, 192)
TIMEOUT_MS = 60_000


@pytest.fixture
def docked(make_napari_viewer, tmp_path):
    """The synthetic segment (known ink band) opened by our reader, Finetune and Predict
    docked, and the depth slider on the middle of the ink: where a person sees the crackle."""
    seg = make_segment(shape=(48, 256, 384))
    folder = write_segment(seg, tmp_path, "s")
    viewer = make_napari_viewer()
    viewer.open(folder, plugin="napari-inkdetect")
    finetune, predict = FinetuneWidget(viewer), PredictWidget(viewer)
    viewer.window.add_dock_widget(finetune, name="Finetune")
    viewer.window.add_dock_widget(predict, name="Predict")
    finetune.runs_edit.setText(str(tmp_path / "runs"))
    predict.out_edit.setText(str(tmp_path / "predictions"))
    predict.device_combo.setCurrentText("cpu")
    z0, z1 = seg.ink_layers
    centre = (z0 + z1) // 2
    viewer.dims.set_current_step(0, centre)
    return viewer, finetune, predict, folder, (z0, z1), centre


def test_finetune_predict_export_and_cli_agree_on_the_slider(docked, qtbot, tmp_path, capsys):
    viewer, finetune, predict, folder, (z0, z1), slider = docked
    assert slider == 19 and (z0, z1) == (16, 22)
    # Finetune: the window centred on the slider, which holds the ink band mid-window
    config = finetune.build_config()
    start = config.start_layer
    assert finetune.centre_spin.value() == slider and config.layers == LAYERS
    assert start == slider - LAYERS // 2 and start <= z0 and z1 <= start + LAYERS
    assert abs((z0 + z1 - 1) / 2 - slider) <= 1
    assert f"= {start}-{start + LAYERS - 1}" in finetune.centre_spin.toolTip()

    # Predict: its checkpoint (trained on that window) preselects a band centred on it
    torch.manual_seed(0)
    ckpt = save_checkpoint(
        tmp_path / "best.safetensors", InkDetector("resnet10", width=0.125), tile_size=64,
        in_layers=LAYERS, start_layer=start,
    )  # fmt: skip
    session(viewer).set_checkpoint(ckpt, start)
    lo, hi = predict.centre_from.value(), predict.centre_to.value()
    assert lo < slider < hi and slider - lo == hi - slider
    predict.set_centre_band(slider, slider)
    predict_config = predict.build_config(region=REGION)
    assert predict_config.centre_layers == (slider,)
    assert predict.start(predict_config) is not None
    qtbot.waitUntil(lambda: not predict.running, timeout=TIMEOUT_MS)
    overlay = predict.overlay()
    prob, prov = open_prediction(predict_config.out)
    assert prov["start_layers"] == [start] and prov["centre_layers"] == [slider]
    assert overlay.translate[0] == slider  # napari draws it on the slider's layer ...
    assert predict.current_index() == 0  # ... so the slider shows it there
    qtbot.waitUntil(lambda: overlay._slice.image.raw.shape == prob.shape[1:])
    np.testing.assert_array_equal(np.asarray(overlay._slice.image.raw), np.asarray(prob[0]))

    # Export (what the dock would run) draws that window over volume layer = the slider's
    export_dock = ExportWidget(viewer)
    assert export_dock.prediction is not None
    assert str(export_dock.prediction) == predict_config.out
    export_dock.folder_edit.setText(str(tmp_path / "export"))
    export_config = export_dock.build_config()
    events = list(export(export_config))
    assert [(e.start_layer, e.centre_layer) for e in events if isinstance(e, FrameRendered)] == [
        (start, slider)
    ]
    (frame,) = render_sweep(export_config.prediction, alpha=0.0, label=False, max_side=None)
    volume = viewer.layers["s"]
    y0, x0, y1, x1 = REGION
    shown = np.asarray(volume.data[int(viewer.dims.current_step[0]), y0:y1, x0:x1], float)
    low, high = volume.contrast_limits
    expected = np.clip((shown - low) / (high - low), 0, 1) * 255
    assert np.abs(frame[..., 0] - expected).max() <= 1

    # the CLI predicts the checkpoint's window and says (and records) the same centre
    out = tmp_path / "cli.zarr"
    argv = ["predict", str(folder), "--checkpoint", str(ckpt), "--out", str(out),
            "--region", ",".join(map(str, REGION)), "--device", "cpu", "--quiet"]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 0
    assert f"window {start}-{start + LAYERS - 1}, centre {slider}" in capsys.readouterr().out
    cli = zarr.open_group(str(out), mode="r").attrs["napari_inkdetect"]
    assert cli["centre_layers"] == [slider] and cli["start_layers"] == [start]
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["prob"][...], prob[...])

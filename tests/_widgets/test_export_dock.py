"""The Export dock in a real viewer: prediction layers, export through the button, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch
import zarr
from PIL import Image

from napari_inkdetect._widgets.export_dock import ExportWidget
from napari_inkdetect.engine import drain
from napari_inkdetect.inference import PredictConfig, predict
from napari_inkdetect.io.images import read_gray
from napari_inkdetect.models import InkDetector, save_checkpoint
from napari_inkdetect.synthetic import make_segment, write_segment

STARTS = (1, 2, 3, 4)
RUN_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def prediction(tmp_path_factory) -> Path:
    """A prediction zarr made by the real engine (tiny model, 4 start layers)."""
    root = tmp_path_factory.mktemp("export-dock")
    segment = write_segment(make_segment(shape=(12, 96, 128), seed=2), root, "seg")
    torch.manual_seed(0)
    ckpt = save_checkpoint(
        root / "m.safetensors", InkDetector("resnet10", width=0.125), tile_size=64
    )
    return drain(predict(
        PredictConfig(
            segment=str(segment), checkpoint=str(ckpt), out=str(root / "pred.zarr"), tile=64,
            chunk=64, layers=8, start_layers=STARTS, device="cpu", autocast="off",
        )
    )).path  # fmt: skip


def _add_prediction(viewer, path: Path, name: str = "seg ink pred"):
    """A prediction layer as the Predict dock and the reader make it (the zarr path in its
    metadata), plus its max projection, which names the same zarr."""
    prob = zarr.open_group(str(path), mode="r")["prob"]
    layer = viewer.add_image(prob, name=name, metadata={"inkdetect_prediction": str(path)})
    viewer.add_image(
        np.asarray(prob).max(0), name=f"{name} max", metadata={"inkdetect_prediction": str(path)}
    )
    return layer


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture
def dock(viewer, qtbot) -> ExportWidget:
    widget = ExportWidget(viewer)
    qtbot.addWidget(widget)
    return widget


def _run(dock: ExportWidget, qtbot) -> None:
    """Press Export and wait until the worker is done."""
    assert dock.export_button.text() == "Export"
    dock.export_button.click()
    assert dock.worker is not None and dock.export_button.text() == "Stop"
    qtbot.waitUntil(lambda: not dock.running, timeout=RUN_TIMEOUT_MS)


def test_combo_lists_each_prediction_once_and_follows_layers(viewer, dock, prediction):
    viewer.add_image(np.zeros((4, 8, 8)), name="volume")
    assert dock.prediction_combo.count() == 0 and dock.prediction is None
    _add_prediction(viewer, prediction)
    assert [dock.prediction_combo.itemText(i) for i in range(dock.prediction_combo.count())] == [
        "seg ink pred"
    ]
    assert dock.prediction == prediction
    assert dock.folder_edit.text() == str(prediction.parent / "pred_export")
    dock.folder_edit.setText("/my/exports")  # a typed folder is kept
    viewer.layers.remove("seg ink pred")
    assert dock.prediction == prediction  # the max projection layer still names it
    assert dock.folder_edit.text() == "/my/exports"
    viewer.layers.remove("seg ink pred max")
    assert dock.prediction is None


def test_export_button_writes_images_gif_and_mp4(viewer, dock, prediction, tmp_path, qtbot):
    _add_prediction(viewer, prediction)
    dock.folder_edit.setText(str(tmp_path / "out"))
    dock.mp4_check.setChecked(True)
    dock.fps_spin.setValue(5)
    dock.size_spin.setValue(64)
    _run(dock, qtbot)
    names = [p.name for p in dock.written]
    assert names == [f"pred_z{s:02d}.png" for s in STARTS] + [
        "pred_max.png",
        "pred_sweep.gif",
        "pred_sweep.mp4",
    ]
    assert all((tmp_path / "out" / n).is_file() for n in names)
    prob = zarr.open_group(str(prediction), mode="r")["prob"][...]
    np.testing.assert_array_equal(read_gray(tmp_path / "out" / "pred_z03.png"), prob[2])
    with Image.open(tmp_path / "out" / "pred_sweep.gif") as gif:
        assert gif.n_frames == len(STARTS) and max(gif.size) <= 64
        assert gif.info["duration"] == 200
    n_frames, _ = imageio_ffmpeg.count_frames_and_secs(str(tmp_path / "out" / "pred_sweep.mp4"))
    assert n_frames == len(STARTS)
    assert dock.progress.value() == dock.progress.maximum() == len(names) + len(STARTS)
    assert f"Wrote {len(names)} files to {tmp_path / 'out'}" in dock.status_label.text()
    assert dock.export_button.text() == "Export" and dock.export_button.isEnabled()


def test_engine_error_is_notified_and_the_dock_stays_usable(
    viewer, dock, prediction, tmp_path, qtbot, notifications
):
    gone = tmp_path / "gone.zarr"
    shutil.copytree(prediction, gone)
    _add_prediction(viewer, gone, name="gone")
    shutil.rmtree(gone)  # deleted behind napari's back
    dock.folder_edit.setText(str(tmp_path / "out"))
    _run(dock, qtbot)
    errors = [n.message for n in notifications if "no such prediction" in n.message]
    assert errors and "gone.zarr" in errors[0]
    assert dock.status_label.text().startswith("Error:")
    assert dock.export_button.text() == "Export" and dock.export_button.isEnabled()
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    # still usable: a good prediction exports
    _add_prediction(viewer, prediction)
    dock.prediction_combo.setCurrentText("seg ink pred")
    dock.gif_check.setChecked(False)
    _run(dock, qtbot)
    assert (tmp_path / "out" / "pred_max.png").is_file()


def test_refused_input_is_notified_without_a_run(viewer, dock, prediction, notifications):
    dock.export_button.click()
    assert not dock.running
    assert any("No prediction layer" in n.message for n in notifications)
    _add_prediction(viewer, prediction)
    dock.png_check.setChecked(False)
    assert not dock.max_check.isEnabled()  # the max projection is written in the image formats
    assert dock.build_config().max_projection is False
    dock.gif_check.setChecked(False)
    assert dock.start() is None
    assert any("nothing to export" in n.message for n in notifications)
    assert "nothing to export" in dock.status_label.text()
    assert dock.export_button.text() == "Export" and dock.export_button.isEnabled()

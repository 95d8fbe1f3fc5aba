"""The sample segment, opened in a real viewer the way a user does (File > Open Sample)."""

from __future__ import annotations

import dask.array as da
import numpy as np

from napari_inkdetect._napari_app import add_docks, add_layers
from napari_inkdetect._sample_data import make_sample_segment
from napari_inkdetect.io.labels import INK, NOT_INK


def test_open_sample_adds_lazy_volume_and_labels(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer(show=True)
    layers = viewer.open_sample("napari-inkdetect", "synthetic_crackle")
    names = [layer.name for layer in layers]
    assert names == [
        "synthetic",
        "synthetic mask",
        "synthetic truth",
        "synthetic train labels",
        "synthetic validation labels",
    ]
    volume = layers[0]
    assert isinstance(volume.data, da.Array) and volume.data.dtype == np.uint16
    assert volume.data.shape[0] >= 22  # room for a 22-layer window and a sweep
    assert volume.metadata["voxel_size_um"] == 7.91
    train = viewer.layers["synthetic train labels"]
    assert train.visible and not viewer.layers["synthetic truth"].visible
    assert set(np.unique(train.data)) == {0, INK, NOT_INK}
    # what a user sees: papyrus on a dark background, red ink labels over it
    viewer.dims.set_current_step(0, 19)
    shot = viewer.screenshot(str(tmp_path / "sample.png"), canvas_only=True)
    assert shot.shape[-1] == 4 and shot[..., :3].std() > 10
    reds = (shot[..., 0] > 150) & (shot[..., 1] < 120) & (shot[..., 2] < 120)
    assert reds.mean() > 0.002  # the painted ink letters are visible


def test_view_command_selects_labels_for_painting_and_opens_docks(make_napari_viewer):
    viewer = make_napari_viewer()
    add_layers(viewer, make_sample_segment())
    assert viewer.layers.selection.active.name == "synthetic train labels"
    labels_dock, finetune_dock, predict_dock, export_dock = add_docks(viewer)
    assert type(labels_dock).__name__ == "CrackleLabelsWidget"
    assert type(finetune_dock).__name__ == "FinetuneWidget"
    assert type(predict_dock).__name__ == "PredictWidget"
    assert type(export_dock).__name__ == "ExportWidget"
    assert predict_dock.volume_combo.currentText() == "synthetic"
    # the labels dock counts what the user paints, not the mask, and follows the layer list
    assert labels_dock.labels.name == "synthetic train labels"
    viewer.layers.selection.active = viewer.layers["synthetic validation labels"]
    assert labels_dock.labels.name == "synthetic validation labels"
    # on a CPU the finetune dock proposes sizes that finish in minutes
    if finetune_dock.device_combo.currentText() == "cpu":
        assert finetune_dock.width_spin.value() == 0.125 and finetune_dock.tile_spin.value() == 128
    assert set(viewer.window.dock_widgets) >= {
        "Crackle labels (napari-inkdetect)",
        "Finetune (napari-inkdetect)",
    }

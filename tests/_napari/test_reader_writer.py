"""The npe2 reader and writer, driven through a real napari viewer."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from segment_files import random_volume, write_layers

from napari_inkdetect import _napari_layers
from napari_inkdetect._reader import get_reader
from napari_inkdetect.io.labels import INK, NOT_INK, read_labels
from napari_inkdetect.io.sources import ReadCounter

PLUGIN = "napari-inkdetect"


def test_open_scroll_segment_adds_aligned_lazy_layers(make_napari_viewer, scroll_segment, volume):
    viewer = make_napari_viewer()
    layers = viewer.open(scroll_segment, plugin=PLUGIN)
    names = [layer.name for layer in layers]
    assert names == [
        scroll_segment.name,
        f"{scroll_segment.name} mask",
        f"{scroll_segment.name} inklabels",
    ]
    image, mask, labels = layers
    assert isinstance(image.data, da.Array) and image.data.shape == volume.shape
    lo, hi = image.contrast_limits
    assert 0 < lo < hi <= 65535
    assert labels.data.shape == mask.data.shape == volume.shape[1:]
    assert set(np.unique(labels.data)) == {0, INK, NOT_INK}
    assert image.metadata["voxel_size_um"] == pytest.approx(7.91)
    # ink is drawn red and not-ink cyan, whatever napari's default palette
    np.testing.assert_allclose(
        labels.colormap.map(np.array([INK]))[0][:3], (1.0, 42 / 255, 42 / 255), atol=0.01
    )


def test_open_reads_only_the_shown_layer_and_a_sample(make_napari_viewer, tmp_path):
    vol = random_volume((8, 1024, 1024))
    write_layers(tmp_path / "seg" / "layers", vol)
    viewer = make_napari_viewer()
    before = ReadCounter.bytes_read
    (image,) = viewer.open(tmp_path / "seg", plugin=PLUGIN)
    assert image.multiscale is False  # 1024 px is below the pyramid threshold
    read = ReadCounter.bytes_read - before
    # napari slices layer 0, then the middle layer it jumps to (2 x 2 MiB), plus the contrast
    # sample (9 blocks of 256 x 256): far from the 16 MiB volume
    assert read <= 2 * vol[0].nbytes + 9 * 256 * 256 * 2
    np.testing.assert_array_equal(viewer.layers[0].data[4, :3, :3].compute(), vol[4, :3, :3])


def test_reader_declines_what_is_not_a_volume(tmp_path):
    (tmp_path / "empty").mkdir()
    assert get_reader(str(tmp_path / "empty")) is None
    from segment_files import write_png

    assert get_reader(str(write_png(tmp_path / "x.png", np.zeros((4, 4))))) is None
    import tifffile

    tifffile.imwrite(tmp_path / "single.tif", np.zeros((8, 8), np.uint16))
    assert get_reader(str(tmp_path / "single.tif")) is None  # napari's own reader takes 2-D TIFFs


def test_broken_segment_reports_our_message(make_napari_viewer, tmp_path, volume):
    files = write_layers(tmp_path / "broken" / "layers", volume)
    files[2].unlink()
    viewer = make_napari_viewer()
    with pytest.raises(Exception, match="layer files are not consecutive"):
        viewer.open(tmp_path / "broken", plugin=PLUGIN)
    assert len(viewer.layers) == 0


def test_large_volume_opens_as_lazy_multiscale(make_napari_viewer, tmp_path, monkeypatch):
    vol = random_volume((3, 600, 900))
    write_layers(tmp_path / "wide", vol)
    monkeypatch.setattr(_napari_layers, "PYRAMID_ABOVE", 512)
    monkeypatch.setattr(_napari_layers, "PYRAMID_COARSEST", 256)
    viewer = make_napari_viewer()
    (image,) = viewer.open(tmp_path / "wide", plugin=PLUGIN)
    assert image.multiscale
    assert [level.shape for level in image.data][:2] == [(3, 600, 900), (3, 300, 450)]
    np.testing.assert_array_equal(np.asarray(image.data[0][1, :5, :5]), vol[1, :5, :5])


def test_writer_saves_sparse_and_villa(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    data = np.zeros((30, 40), np.uint8)
    data[2:8, 2:8] = INK
    data[20:25, 10:30] = NOT_INK
    viewer.add_labels(data, name="crackle")
    written = viewer.layers.save(str(tmp_path / "painted.png"), plugin=PLUGIN)
    assert written == [str(tmp_path / "painted.png")]
    np.testing.assert_array_equal(read_labels(tmp_path / "painted.png"), data)

    villa = viewer.layers.save(str(tmp_path / "seg9_inklabels.png"), plugin=PLUGIN)
    assert sorted(villa) == sorted(
        [str(tmp_path / "seg9_inklabels.png"), str(tmp_path / "seg9_supervision_mask.png")]
    )
    reopened = viewer.open(tmp_path / "seg9_inklabels.png", layer_type="labels")[0]
    assert set(np.unique(reopened.data)) == {0, 255}


def test_writer_refuses_foreign_label_values(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_labels(np.full((10, 10), 5, np.uint8), name="instances")
    with pytest.raises(Exception, match=r"label values \[5\] are not 0/1/2"):
        viewer.layers.save(str(tmp_path / "bad.png"), plugin=PLUGIN)
    assert not (tmp_path / "bad.png").exists()

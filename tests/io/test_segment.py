"""open_segment: every layout, laziness, depth reversal, pyramids and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import zarr
from segment_files import random_volume, write_layers, write_png

from napari_inkdetect import open_segment
from napari_inkdetect.errors import CorruptFileError, LabelsError, SegmentError
from napari_inkdetect.io.pyramid import build_pyramid, flush_cache_writes
from napari_inkdetect.io.sources import ReadCounter


def test_scroll_segment_layout(scroll_segment, volume):
    seg = open_segment(scroll_segment)
    assert seg.layout == "scroll-segment"
    assert seg.segment_id == "20230702185753"
    assert seg.voxel_size_um == pytest.approx(7.91)
    assert seg.shape == volume.shape and seg.dtype == np.uint16
    assert [f.name for f in seg.layer_files] == [f"{z:02d}.tif" for z in range(volume.shape[0])]
    np.testing.assert_array_equal(seg.volume.compute(), volume)
    mask = seg.mask.compute()
    assert mask.dtype == bool and mask[8:-8, 8:-8].all() and not mask[:8].any()
    labels = seg.inklabels.compute()
    assert (labels[20:40, 30:60] == 1).all()  # 255 -> ink
    assert labels[50, 100] == 2  # 0 inside the mask -> not ink
    assert labels[2, 2] == 0  # 0 outside the mask -> unlabeled


def test_kaggle_fragment_layout(fragment, volume):
    seg = open_segment(fragment)
    assert seg.layout == "kaggle-fragment"
    assert seg.voxel_size_um == pytest.approx(3.24)
    assert seg.mask_path.name == "mask.png" and seg.inklabels_path.name == "inklabels.png"
    np.testing.assert_array_equal(seg.volume[2:4, 5:50, 7:9].compute(), volume[2:4, 5:50, 7:9])
    assert np.bincount(seg.inklabels.compute().ravel(), minlength=3)[1] == 100


def test_folder_of_layers_three_digits(tmp_path, volume):
    write_layers(tmp_path / "stack", volume, digits=3)
    seg = open_segment(tmp_path / "stack")
    assert seg.layout == "layer-folder" and seg.voxel_size_um is None
    np.testing.assert_array_equal(seg.volume.compute(), volume)


def test_layers_may_start_above_zero(tmp_path, volume):
    folder = tmp_path / "crop"
    folder.mkdir()
    for z, plane in enumerate(volume):
        tifffile.imwrite(folder / f"{z + 10}.tif", plane)
    seg = open_segment(folder)
    assert seg.first_layer == 10
    np.testing.assert_array_equal(seg.volume.compute(), volume)


def test_multipage_tiff(tmp_path, volume):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, volume, photometric="minisblack")
    seg = open_segment(path)
    assert seg.layout == "multipage-tiff" and seg.shape == volume.shape
    np.testing.assert_array_equal(seg.volume.compute(), volume)


def test_compressed_tiled_layers_are_read_through_zarr(tmp_path, volume):
    write_layers(tmp_path / "lzw", volume, compression="zlib", tile=(32, 32))
    seg = open_segment(tmp_path / "lzw")
    assert seg.source.layers[0].memmap_offset is None  # not memmappable: chunked path
    np.testing.assert_array_equal(
        seg.read_block((1, 4), (3, 70), (40, 100)), volume[1:4, 3:70, 40:100]
    )


def test_uint8_big_endian_tiff(tmp_path):
    vol = random_volume((3, 40, 50), np.uint8)
    path = tmp_path / "be.tif"
    tifffile.imwrite(path, vol, byteorder=">", photometric="minisblack")
    np.testing.assert_array_equal(open_segment(path).volume.compute(), vol)
    vol16 = random_volume((3, 40, 50))
    tifffile.imwrite(tmp_path / "be16.tif", vol16, byteorder=">", photometric="minisblack")
    np.testing.assert_array_equal(open_segment(tmp_path / "be16.tif").volume.compute(), vol16)


def test_plain_zarr_and_ome_zarr(tmp_path, volume):
    plain = zarr.open_array(
        tmp_path / "vol.zarr", mode="w", shape=volume.shape, chunks=(1, 32, 32), dtype=volume.dtype
    )
    plain[:] = volume
    np.testing.assert_array_equal(open_segment(tmp_path / "vol.zarr").volume.compute(), volume)

    group = zarr.open_group(tmp_path / "img.ome.zarr", mode="w")
    group.create_array("0", shape=(1, *volume.shape), chunks=(1, 1, 32, 32), dtype=volume.dtype)[
        :
    ] = volume[None]
    group.create_array("1", shape=(1, volume.shape[0], 48, 64), dtype=volume.dtype)
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [{"name": "c", "type": "channel"}]
            + [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"],
            "datasets": [
                {
                    "path": "0",
                    "coordinateTransformations": [
                        {"type": "scale", "scale": [1, 7.91, 7.91, 7.91]}
                    ],
                },
                {
                    "path": "1",
                    "coordinateTransformations": [
                        {"type": "scale", "scale": [1, 7.91, 15.82, 15.82]}
                    ],
                },
            ],
        }
    ]
    seg = open_segment(tmp_path / "img.ome.zarr")
    assert seg.layout == "zarr" and seg.shape == volume.shape
    assert seg.voxel_size_um == pytest.approx(7.91)
    np.testing.assert_array_equal(seg.read_block((2, 5), (0, 96), (64, 128)), volume[2:5, :, 64:])


def test_reverse_flips_depth_everywhere(scroll_segment, volume):
    seg = open_segment(scroll_segment, reverse=True)
    assert seg.reversed
    np.testing.assert_array_equal(seg.volume.compute(), volume[::-1])
    np.testing.assert_array_equal(
        seg.read_block((1, 4), (0, 10), (0, 10)), volume[::-1][1:4, :10, :10]
    )


def test_meta_json_voxel_size_and_override(scroll_segment):
    (scroll_segment / "meta.json").write_text(json.dumps({"voxel_size_um": 3.24}))
    assert open_segment(scroll_segment).voxel_size_um == pytest.approx(3.24)
    assert open_segment(scroll_segment, voxel_size_um=2.0).voxel_size_um == 2.0


def test_open_reads_no_pixels_and_views_read_their_chunks(tmp_path):
    vol = random_volume((4, 1024, 1024))
    write_layers(tmp_path / "big", vol)
    before = ReadCounter.bytes_read
    seg = open_segment(tmp_path / "big", chunk=256)
    assert ReadCounter.bytes_read == before
    assert seg.volume.chunksize == (1, 256, 256)
    view = seg.volume[2, 100:356, 300:556].compute()  # a 256 view straddling 4 chunks
    np.testing.assert_array_equal(view, vol[2, 100:356, 300:556])
    assert ReadCounter.bytes_read - before == 4 * 256 * 256 * 2  # one layer, four chunks


def test_contrast_limits_sample_few_pixels(scroll_segment):
    seg = open_segment(scroll_segment)
    before = ReadCounter.bytes_read
    low, high = seg.contrast_limits(n_blocks=4, block=32)
    assert ReadCounter.bytes_read - before <= 4 * 32 * 32 * 2
    assert 0 < low < high <= 65535


def test_pyramid_levels_are_means_and_cached(tmp_path):
    vol = random_volume((2, 256, 384))
    write_layers(tmp_path / "seg", vol)
    seg = open_segment(tmp_path / "seg")
    levels = build_pyramid(seg, min_size=64, cache_dir=tmp_path / "cache")
    assert [lv.shape[1:] for lv in levels] == [(256, 384), (128, 192), (64, 96), (32, 48)]
    level1 = levels[1].compute().astype(float)
    expected = vol.astype(float).reshape(2, 128, 2, 192, 2).mean(axis=(2, 4))
    assert np.abs(level1 - expected).max() <= 0.5
    coarse = levels[3].compute()
    flush_cache_writes()
    assert list((tmp_path / "cache").rglob("*.npy"))  # coarse chunks written to the cache
    before = ReadCounter.bytes_read
    again = build_pyramid(
        open_segment(tmp_path / "seg"), min_size=64, cache_dir=tmp_path / "cache"
    )
    np.testing.assert_array_equal(again[3].compute(), coarse)
    assert ReadCounter.bytes_read == before  # served from the cache, no full-resolution reads


def test_pyramid_of_odd_sizes_keeps_edges(tmp_path):
    vol = np.full((1, 101, 67), 1000, np.uint16)
    write_layers(tmp_path / "odd", vol)
    levels = build_pyramid(open_segment(tmp_path / "odd"), min_size=20, cache_dir=tmp_path / "c")
    assert levels[1].shape == (1, 51, 34)
    assert (levels[-1].compute() == 1000).all()


# --- bad input: each gets its own clear one-line error naming the file -------------------


def test_missing_path(tmp_path):
    with pytest.raises(SegmentError, match="no such file or folder"):
        open_segment(tmp_path / "nope")


def test_folder_without_layers(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(SegmentError, match="no surface volume found"):
        open_segment(tmp_path / "empty")


def test_gap_in_layer_numbers(tmp_path, volume):
    files = write_layers(tmp_path / "gap" / "layers", volume)
    files[3].unlink()
    with pytest.raises(
        SegmentError, match=r"not consecutive: layers 3 missing between 00.tif and 05.tif"
    ):
        open_segment(tmp_path / "gap")


def test_layers_of_different_shapes(tmp_path, volume):
    files = write_layers(tmp_path / "s", volume)
    tifffile.imwrite(files[2], volume[2, :50])
    with pytest.raises(
        SegmentError, match=r"02.tif: layer shape 50 x 128 differs from 00.tif's 96 x 128"
    ):
        open_segment(tmp_path / "s")


def test_layers_of_different_dtypes(tmp_path, volume):
    files = write_layers(tmp_path / "d", volume)
    tifffile.imwrite(files[4], volume[4].astype(np.uint8))
    with pytest.raises(SegmentError, match=r"04.tif: layer dtype uint8 differs"):
        open_segment(tmp_path / "d")


def test_unsupported_dtype(tmp_path, volume):
    write_layers(tmp_path / "f", volume.astype(np.float32))
    with pytest.raises(SegmentError, match="unsupported dtype float32"):
        open_segment(tmp_path / "f")


def test_garbage_tiff_named_in_error(tmp_path, volume):
    files = write_layers(tmp_path / "g", volume)
    files[1].write_bytes(b"this is not a tiff at all")
    with pytest.raises(CorruptFileError, match=r"01.tif: not a readable TIFF"):
        open_segment(tmp_path / "g")


def test_truncated_tiff_detected_at_open(tmp_path, volume):
    files = write_layers(tmp_path / "t", volume)
    data = files[5].read_bytes()
    files[5].write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match=r"05.tif: truncated"):
        open_segment(tmp_path / "t")


def test_corrupt_compressed_data_detected_when_read(tmp_path, volume):
    files = write_layers(tmp_path / "c", volume, compression="zlib")
    raw = bytearray(files[2].read_bytes())
    with tifffile.TiffFile(files[2]) as tif:
        offset = tif.pages[0].dataoffsets[0]
    raw[offset : offset + 64] = b"\xff" * 64  # damage the compressed stream, keep the header
    files[2].write_bytes(bytes(raw))
    seg = open_segment(tmp_path / "c")  # headers are fine
    with pytest.raises(CorruptFileError, match=r"02.tif: cannot read layer 2"):
        seg.volume[2].compute()


def test_mask_shape_mismatch(scroll_segment):
    write_png(scroll_segment / f"{scroll_segment.name}_mask.png", np.zeros((10, 10)))
    with pytest.raises(
        LabelsError, match=r"_mask.png: shape 10 x 10 does not match the volume's 96 x 128"
    ):
        open_segment(scroll_segment)


def test_labels_shape_mismatch(fragment):
    write_png(fragment / "inklabels.png", np.zeros((96, 127)))
    with pytest.raises(LabelsError, match=r"inklabels.png: shape 96 x 127"):
        open_segment(fragment)


def test_read_block_outside_depth(scroll_segment):
    seg = open_segment(scroll_segment)
    with pytest.raises(SegmentError, match=r"layers 4..9 outside the volume's 0..6"):
        seg.read_block((4, 9), (0, 8), (0, 8))


def test_segment_pickles_for_workers(scroll_segment, volume):
    import pickle

    seg = open_segment(scroll_segment)
    seg.volume[0, :4, :4].compute()  # handles opened in this process must not be pickled
    clone = pickle.loads(pickle.dumps(seg.volume))
    np.testing.assert_array_equal(clone.compute(), volume)

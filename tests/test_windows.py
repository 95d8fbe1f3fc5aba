"""Window geometry and the 4th-place intensity pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from napari_inkdetect import open_segment
from napari_inkdetect.errors import ConfigError
from napari_inkdetect.window_tensors import to_model_input, to_volume_pixels
from napari_inkdetect.windows import Normalisation, WindowSpec, read_raw


def test_normalisation_matches_cv2_gray_pipeline():
    raw = np.array([0, 255, 12800, 12799, 40000, 51455, 51456, 65535], np.uint16)
    expected = np.clip((raw >> 8).astype(np.float32), 50, 200) / 255  # not /257, not min-max
    np.testing.assert_array_equal(Normalisation().apply(raw), expected)
    assert Normalisation().apply(np.array([10, 120], np.uint8)).tolist() == pytest.approx(
        [50 / 255, 120 / 255]
    )


def test_normalisation_round_trips_through_dict():
    norm = Normalisation(clip=(40.0, 220.0))
    assert Normalisation.from_dict(norm.to_dict()) == norm
    with pytest.raises(ConfigError, match="unknown intensity normalisation 'magic'"):
        Normalisation.from_dict({"kind": "magic"})


def test_scaled_window_reads_fewer_volume_pixels(scroll_segment, volume):
    seg = open_segment(scroll_segment)
    spec = WindowSpec(layers=4, tile=64, scale=2.0)
    assert spec.extent == 32 and spec.source_layers == 4
    raw = read_raw(seg, 1, 10, 20, spec)
    np.testing.assert_array_equal(raw, volume[1:5, 10:42, 20:52])
    x = to_model_input(raw, spec)
    assert tuple(x.shape) == (4, 64, 64) and x.dtype.is_floating_point
    back = to_volume_pixels(x, spec)
    assert tuple(back.shape) == (4, 32, 32)


def test_legacy_depth_scaling_reads_half_the_layers(scroll_segment):
    seg = open_segment(scroll_segment)
    spec = WindowSpec(layers=4, tile=64, scale=2.0, depth_scale=True)
    assert spec.source_layers == 2
    assert tuple(to_model_input(read_raw(seg, 0, 0, 0, spec), spec).shape) == (4, 64, 64)


def test_window_past_edges_is_zero_padded(scroll_segment, volume):
    seg = open_segment(scroll_segment)
    spec = WindowSpec(layers=4, tile=64)
    raw = read_raw(seg, 0, 80, 100, spec)
    np.testing.assert_array_equal(raw[:, :16, :28], volume[:4, 80:, 100:])
    assert not raw[:, 16:, :].any() and not raw[:, :, 28:].any()
    with pytest.raises(ConfigError, match=r"layers 4..8 outside the volume's 0..6"):
        read_raw(seg, 4, 0, 0, spec)


def test_bad_specs_refused():
    with pytest.raises(ConfigError, match="multiple of 32"):
        WindowSpec(tile=100)
    with pytest.raises(ConfigError, match="at least 4"):
        WindowSpec(layers=2)


def test_percentile_normalisation_is_per_window_and_float32():
    rng = np.random.default_rng(0)
    dark = rng.integers(1000, 2000, (4, 8, 8)).astype(np.uint16)
    bright = rng.integers(50000, 60000, (4, 8, 8)).astype(np.uint16)
    norm = Normalisation(kind="percentile", percentiles=(0.0, 100.0))
    out = norm.apply(np.stack([dark, bright]))
    assert out.dtype == np.float32
    for window in out:  # each window spans 0..1 on its own, whatever the other's range
        assert window.min() == 0.0 and window.max() == pytest.approx(1.0)
    np.testing.assert_array_equal(norm.apply(dark), out[0])

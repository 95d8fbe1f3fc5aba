"""Depth map, depth profile and uncertainty read off real prediction zarrs."""

from __future__ import annotations

import numpy as np
import pytest
from prediction_files import write_prediction

from napari_inkdetect.errors import ConfigError
from napari_inkdetect.prediction_maps import (
    StoredPrediction,
    depth_map,
    depth_profile,
    uncertainty,
)


def random_planes(seed: int, shape=(5, 40, 56)) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 1.0, shape)


def test_depth_map_is_the_argmax_over_start_layers_masked_below_threshold(tmp_path):
    prob = random_planes(0)
    path = write_prediction(tmp_path / "p.zarr", prob, start_layers=(4, 6, 8, 10, 12),
                            window_length=8, threshold=0.7)  # fmt: skip
    prediction = StoredPrediction.open(path)
    depth = np.asarray(depth_map(prediction))
    stored = np.asarray(prediction.prob[:]).astype(np.float32) / 255  # what the zarr holds
    expected = np.array([8, 10, 12, 14, 16], np.float32)[stored.argmax(axis=0)]
    below = stored.max(axis=0) < 0.7
    assert below.any() and (~below).any()
    np.testing.assert_array_equal(np.isnan(depth), below)
    np.testing.assert_array_equal(depth[~below], expected[~below])
    # an explicit threshold overrides the calibrated one
    assert np.isnan(np.asarray(depth_map(prediction, threshold=0.01))).sum() == 0


def test_depth_map_is_lazy_and_reads_only_what_is_asked(tmp_path):
    path = write_prediction(tmp_path / "p.zarr", random_planes(1, (3, 96, 96)), chunk=32)
    lazy = depth_map(StoredPrediction.open(path))
    assert lazy.shape == (96, 96) and lazy.chunksize == (32, 32)
    assert np.asarray(lazy[:8, :8]).shape == (8, 8)


def test_depth_profile_counts_papyrus_only_and_follows_the_box(tmp_path):
    prob = np.zeros((3, 20, 30))
    prob[:, :10, :] = np.array([0.2, 0.8, 0.4])[:, None, None]  # top half papyrus
    prob[:, 10:, 15:] = np.array([0.6, 0.2, 0.2])[:, None, None]  # bottom right papyrus
    path = write_prediction(tmp_path / "p.zarr", prob, region=(100, 200, 120, 230),
                            start_layers=(0, 2, 4), window_length=6)  # fmt: skip
    prediction = StoredPrediction.open(path)
    centres, top = depth_profile(prediction, (100, 200, 110, 230))
    assert centres == (3, 5, 7)
    np.testing.assert_allclose(top, [0.2, 0.8, 0.4], atol=1 / 255)
    _, bottom = depth_profile(prediction, (110, 200, 120, 230))  # left half is off the mask
    np.testing.assert_allclose(bottom, [0.6, 0.2, 0.2], atol=1 / 255)
    with pytest.raises(ConfigError, match="outside the prediction"):
        depth_profile(prediction, (0, 0, 50, 50))


def test_uncertainty_is_high_where_two_checkpoints_disagree_and_low_where_they_agree(tmp_path):
    """Constructed case: two models agree (both sure) on the left, disagree on the right."""
    a = np.full((3, 32, 64), 0.02)
    b = a.copy()
    a[:, 8:24, 4:28] = b[:, 8:24, 4:28] = 0.98  # both see this letter
    a[:, 8:24, 36:60] = 0.95  # only model A sees this one
    b[:, 8:24, 36:60] = 0.05
    pa = StoredPrediction.open(write_prediction(tmp_path / "a.zarr", a))
    pb = StoredPrediction.open(write_prediction(tmp_path / "b.zarr", b))
    doubt = np.asarray(uncertainty(pa, pb))
    assert doubt.shape == a.shape and doubt.dtype == np.float32
    assert doubt[:, 8:24, 36:60].min() > 0.9
    assert doubt[:, :, :32].max() < 0.1
    # without the second model the same pixels look sure: the doubt came from the models
    assert np.asarray(uncertainty(pa))[:, 8:24, 36:60].max() < 0.15


def test_uncertainty_parts_threshold_and_neighbouring_starts(tmp_path):
    prob = np.full((4, 16, 16), 0.05)
    prob[:, :, :4] = 0.5  # right at the threshold: full doubt
    prob[2, :, 8:12] = 0.9  # one start layer jumps: it and its neighbours doubt
    prediction = StoredPrediction.open(write_prediction(tmp_path / "p.zarr", prob))
    near = np.asarray(uncertainty(prediction, parts=("threshold",)))
    assert near[:, :, :4].min() > 0.99 and near[:, :, 12:].max() < 0.15
    starts = np.asarray(uncertainty(prediction, parts=("starts",)))
    assert starts[1:4, :, 8:12].min() > 0.99  # layers 1, 2, 3 border the jump
    assert starts[0, :, 8:12].max() == 0.0  # layer 0 is two steps away
    assert starts[:, :, :8].max() == 0.0


def test_uncertainty_is_zero_off_the_mask(tmp_path):
    prob = np.zeros((2, 16, 16))
    prob[:, :8] = 0.5
    doubt = np.asarray(
        uncertainty(StoredPrediction.open(write_prediction(tmp_path / "p.zarr", prob)))
    )
    assert doubt[:, :8].min() > 0.99 and doubt[:, 8:].max() == 0.0


def test_a_second_prediction_of_another_region_is_refused_in_one_line(tmp_path):
    prob = random_planes(2, (2, 16, 16))
    a = StoredPrediction.open(write_prediction(tmp_path / "a.zarr", prob))
    b = StoredPrediction.open(write_prediction(tmp_path / "b.zarr", prob, region=(16, 0, 32, 16)))
    with pytest.raises(ConfigError, match="region .* differs") as info:
        uncertainty(a, b)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="parts"):
        uncertainty(a, parts=("colour",))

"""Label here next: boxes inside the mask, off existing labels, diverse, deterministic."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prediction_files import write_prediction

from napari_inkdetect.errors import ConfigError
from napari_inkdetect.next_labels import cell_means, label_here_next
from napari_inkdetect.prediction_maps import StoredPrediction


@pytest.fixture(scope="module")
def doubtful(tmp_path_factory):
    """A 192 x 256 prediction at (64, 32) of a 320 x 320 segment: sure everywhere except
    three doubtful patches (p = 0.5 at threshold 0.5)."""
    prob = np.full((2, 192, 256), 0.03)
    for y, x in ((24, 24), (24, 168), (120, 96)):
        prob[:, y : y + 48, x : x + 48] = 0.5
    path = tmp_path_factory.mktemp("pred") / "p.zarr"
    return StoredPrediction.open(write_prediction(path, prob, region=(64, 32, 256, 288)))


def box_of(s):
    return tuple(s.box)


def test_boxes_go_to_the_doubtful_patches_first(doubtful):
    picks = label_here_next(doubtful, box=48, count=3)
    assert [s.rank for s in picks] == [1, 2, 3]
    found = sorted(box_of(s) for s in picks)
    expected = sorted((64 + y, 32 + x, 64 + y + 48, 32 + x + 48)
                      for y, x in ((24, 24), (24, 168), (120, 96)))  # fmt: skip
    assert found == expected
    assert all(s.doubt > 0.95 for s in picks) and picks[0].label_distance is None
    assert "doubt" in picks[0].describe()


def test_never_outside_the_mask_nor_on_labels(doubtful):
    mask = np.zeros((320, 320), np.uint8)
    mask[64:256, 32:200] = 1  # the patch at x = 168.. is outside the papyrus
    labels = np.zeros((320, 320), np.uint8)
    labels[100, 70] = 1  # one labelled pixel inside the first patch
    picks = label_here_next(doubtful, labels=labels, mask=mask, box=32, count=12)
    assert picks
    for s in picks:
        y0, x0, y1, x1 = s.box
        assert mask[y0:y1, x0:x1].all()
        assert not labels[y0:y1, x0:x1].any()
        assert s.label_distance is not None


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 1000),
    box=st.sampled_from([8, 16, 24, 32]),
    mask_box=st.tuples(st.integers(0, 80), st.integers(0, 80), st.integers(20, 100)),
    label_at=st.tuples(st.integers(0, 119), st.integers(0, 119)),
)
def test_property_boxes_lie_in_the_mask_off_labels_and_apart(
    tmp_path_factory, seed, box, mask_box, label_at
):
    rng = np.random.default_rng(seed)
    path = tmp_path_factory.mktemp("p") / "p.zarr"
    prediction = StoredPrediction.open(
        write_prediction(path, rng.uniform(0, 1, (2, 100, 100)), region=(10, 20, 110, 120))
    )
    mask = np.zeros((120, 130), bool)
    y, x, side = mask_box
    mask[y : y + side, x : x + side] = True
    labels = np.zeros((120, 130), np.uint8)
    labels[label_at] = 2
    picks = label_here_next(prediction, labels, mask, box=box, count=6, seed=seed)
    for s in picks:
        y0, x0, y1, x1 = s.box
        assert (y1 - y0, x1 - x0) == (box, box)
        assert y0 >= 10 and y1 <= 110 and x0 >= 20 and x1 <= 120  # inside the prediction
        assert mask[y0:y1, x0:x1].all() and not labels[y0:y1, x0:x1].any()
    centres = np.array([s.centre for s in picks])
    for i in range(len(centres)):
        for j in range(i):
            assert np.hypot(*(centres[i] - centres[j])) >= 1.5 * box - 1e-6
    assert [s.box for s in picks] == [
        s.box for s in label_here_next(prediction, labels, mask, box=box, count=6, seed=seed)
    ]  # deterministic for a seed


def test_boxes_are_spread_out_not_stacked_on_one_letter(tmp_path):
    prob = np.full((1, 128, 256), 0.02)
    prob[:, 32:96, 16:112] = 0.5  # one large doubtful letter
    prob[:, 40:72, 180:212] = 0.35  # a second, less doubtful one
    prediction = StoredPrediction.open(write_prediction(tmp_path / "p.zarr", prob))
    picks = label_here_next(prediction, box=32, count=3)
    assert any(s.box[1] >= 160 for s in picks)  # the second letter gets a box in the top 3


def test_near_labels_is_worth_less_than_far(tmp_path):
    prob = np.full((1, 64, 256), 0.02)
    prob[:, 16:48, 16:48] = 0.5
    prob[:, 16:48, 208:240] = 0.5  # the same doubt, far away
    prediction = StoredPrediction.open(write_prediction(tmp_path / "p.zarr", prob))
    labels = np.zeros((64, 256), np.uint8)
    labels[16:48, 50:54] = 1  # painted right beside the first patch
    first = label_here_next(prediction, labels=labels, box=32, count=1)[0]
    assert first.box == (16, 208, 48, 240)


def test_cell_means_average_partial_edge_cells():
    image = np.arange(35, dtype=float).reshape(5, 7)
    means = cell_means(image, 3)
    assert means.shape == (2, 3)
    assert means[0, 0] == image[:3, :3].mean() and means[1, 2] == image[3:, 6:].mean()


def test_bad_requests_are_refused_clearly(doubtful):
    with pytest.raises(ConfigError, match="too small"):
        label_here_next(doubtful, box=2)
    with pytest.raises(ConfigError, match="does not cover"):
        label_here_next(doubtful, mask=np.ones((10, 10), bool), box=32)

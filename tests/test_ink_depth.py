"""Find the ink depth on synthetic segments whose ink band is known exactly (Qt-free)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from napari_inkdetect.errors import ConfigError, LabelsError
from napari_inkdetect.ink_depth import choose_window, estimate_ink_depth
from napari_inkdetect.synthetic import make_segment
from napari_inkdetect.windows import window_centre, window_start

LAYERS = 22
SHAPE = (48, 256, 384)
#: name: (make_segment arguments, reverse the depth)
CASES = {
    "default": (dict(shape=SHAPE, seed=0), False),
    "ink near the top": (dict(shape=SHAPE, seed=1, ink_offset=0), False),
    "ink near the bottom": (dict(shape=(32, 256, 384), seed=2, ink_offset=14), False),
    "reversed depth": (dict(shape=SHAPE, seed=4), True),
    "faint": (dict(shape=SHAPE, seed=3, crackle_strength=0.5), False),
}
_segments: dict[str, tuple] = {}


def case(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
    """(volume, mask, train labels, ink band) of a case, generated once per session."""
    if name not in _segments:
        kwargs, reverse = CASES[name]
        seg = make_segment(**kwargs)
        volume, (z0, z1) = seg.volume, seg.ink_layers
        if reverse:
            volume, (z0, z1) = volume[::-1], (len(volume) - z1, len(volume) - z0)
        _segments[name] = (volume, seg.mask, seg.train_labels(3), (z0, z1))
    return _segments[name]


@pytest.mark.parametrize("source", ["labels", "volume"])
@pytest.mark.parametrize("name", list(CASES))
def test_chosen_window_holds_the_ink_band(name, source):
    volume, mask, labels, (z0, z1) = case(name)
    estimate = estimate_ink_depth(volume, labels if source == "labels" else None, mask=mask)
    assert estimate.source == source and estimate.found, estimate.explanation
    start, stop = estimate.window
    assert start <= z0 and z1 <= stop, f"window [{start}, {stop}) vs ink [{z0}, {z1})"
    assert stop <= len(volume) and estimate.layers == LAYERS
    assert z0 <= estimate.depth < z1  # where a person sees the crackle
    lo, hi = estimate.band
    assert lo <= start <= hi and hi <= len(volume) - LAYERS
    assert len(estimate.profile) == len(volume)
    assert len(estimate.scores) == len(volume) - LAYERS + 1
    assert estimate.scores[start] >= 0.97 * estimate.scores.max()  # the best, or tied with it
    assert f"start {start}" in estimate.explanation


def test_without_ink_nothing_is_claimed():
    seg = make_segment(shape=SHAPE, seed=7, crackle_strength=0.0)
    for labels in (seg.train_labels(3), None):
        estimate = estimate_ink_depth(seg.volume, labels, mask=seg.mask)
        assert not estimate.found
        assert "no depth stands out" in estimate.explanation


def test_a_lazy_volume_is_read_only_where_labelled():
    volume, mask, labels, (z0, z1) = case("default")
    reads = []

    class Layers:  # a lazy on-disk stack: what dask asks of it is what would be read
        shape, dtype, ndim = volume.shape, volume.dtype, 3

        def __getitem__(self, key):
            block = volume[key]
            reads.append(block.size)
            return block

    lazy = da.from_array(Layers(), chunks=(1, 64, 64))
    corner = np.zeros_like(labels)
    corner[:96, :128] = labels[:96, :128]  # the letters painted in one corner only
    assert {1, 2} <= set(np.unique(corner))
    estimate = estimate_ink_depth(lazy, corner, mask=mask)
    assert sum(reads) <= 0.3 * volume.size
    assert estimate.source == "labels"
    assert estimate.start <= z0 and z1 <= estimate.start + LAYERS
    reads.clear()  # the volume alone reads a sample of tiles, within the budget
    estimate_ink_depth(lazy, None, max_pixels=4 * 128 * 128)
    assert sum(reads) <= 5 * 128 * 128 * len(volume)


def test_labels_with_one_class_fall_back_to_the_volume():
    volume, mask, labels, (z0, z1) = case("default")
    only_ink = np.where(labels == 1, 1, 0).astype(np.uint8)
    estimate = estimate_ink_depth(volume, only_ink, mask=mask)
    assert estimate.source == "volume" and estimate.found
    assert "0 not-ink px" in estimate.explanation
    assert estimate.start <= z0 and z1 <= estimate.start + LAYERS


def test_bad_input_is_a_one_line_error():
    volume, _, labels, _ = case("default")
    with pytest.raises(LabelsError, match="does not match"):
        estimate_ink_depth(volume, labels[:, :-1])
    with pytest.raises(LabelsError, match="not 0/1/2"):
        estimate_ink_depth(volume, np.full(labels.shape, 5, np.uint8))
    with pytest.raises(ConfigError, match="3-D"):
        estimate_ink_depth(volume[0], labels)
    with pytest.raises(ConfigError, match="at least 1"):
        estimate_ink_depth(volume, labels, layers=0)


def test_tied_windows_centre_the_ink_and_a_short_stack_has_one_window():
    profile = np.zeros(48)
    profile[18:21] = [0.5, 1.0, 0.5]  # the whole signal fits in many 22-layer windows
    estimate = choose_window(profile, LAYERS)
    assert estimate.depth == 19
    assert abs(estimate.centre - 19) <= 1 and estimate.found
    short = choose_window(profile[:12], LAYERS)
    assert (short.start, short.layers, len(short.scores)) == (0, 12, 1)


def test_window_centre_and_start_convert_both_ways():
    assert window_centre(8, 22) == 19  # the slider's layer for window [8, 30): 8 + 22 // 2
    assert window_start(19, 22) == 8
    assert window_start(window_centre(5, 7), 7) == 5
    assert window_start(2, 22, depth=48) == 0  # clipped to the stack
    assert window_start(45, 22, depth=48) == 26


def test_the_estimate_reports_its_window_by_centre():
    volume, mask, labels, (z0, z1) = case("default")
    estimate = estimate_ink_depth(volume, labels, mask=mask)
    assert estimate.centre == estimate.start + LAYERS // 2
    lo, hi = estimate.band
    assert estimate.centre_band == (lo + LAYERS // 2, hi + LAYERS // 2)
    assert f"centre {estimate.centre} (start {estimate.start})" in estimate.explanation
    assert abs(estimate.centre - (z0 + z1) / 2) <= 3  # the ink sits mid-window

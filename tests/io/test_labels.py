"""Label files: sparse 0/1/2, Kaggle binary, the villa pair, dense boxes; round trips, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image
from segment_files import write_png

from napari_inkdetect.errors import CorruptFileError, LabelsError
from napari_inkdetect.io.images import read_gray
from napari_inkdetect.io.labels import (
    INK,
    NOT_INK,
    UNLABELED,
    VillaPaths,
    apply_dense_boxes,
    label_counts,
    read_labels,
    read_villa_labels,
    write_labels,
    write_villa_labels,
)


@pytest.fixture
def sparse() -> np.ndarray:
    labels = np.zeros((40, 60), np.uint8)
    labels[5:15, 5:25] = INK
    labels[20:30, 30:55] = NOT_INK
    return labels


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_sparse_round_trip(tmp_path, sparse, suffix):
    path = write_labels(tmp_path / f"labels{suffix}", sparse)
    np.testing.assert_array_equal(read_labels(path), sparse)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


def test_kaggle_binary_uses_mask(tmp_path):
    ink = np.zeros((20, 20), np.uint8)
    ink[2:6, 2:6] = 255
    mask = np.zeros((20, 20), bool)
    mask[:, :10] = True
    labels = read_labels(write_png(tmp_path / "inklabels.png", ink), mask=mask)
    assert (labels[2:6, 2:6] == INK).all()
    assert labels[15, 5] == NOT_INK  # 0 inside the mask
    assert labels[15, 15] == 0  # 0 outside the mask: unlabeled
    assert (read_labels(tmp_path / "inklabels.png")[ink == 0] == NOT_INK).all()  # no mask


def test_one_bit_png_reads_as_binary(tmp_path):
    ink = np.zeros((8, 8), bool)
    ink[1:3, 1:3] = True
    Image.fromarray(ink).convert("1").save(tmp_path / "one_bit.png")
    assert label_counts(read_labels(tmp_path / "one_bit.png")) == {"ink": 4, "not ink": 60}


def test_gray_rgb_accepted_colour_refused(tmp_path, sparse):
    rgb = np.repeat(sparse[..., None], 3, axis=2)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_labels(tmp_path / "rgb.png"), sparse)
    rgb[0, 0] = (1, 2, 0)
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    with pytest.raises(LabelsError, match="colour.png: colour image"):
        read_labels(tmp_path / "colour.png")


def test_values_outside_encodings_refused(tmp_path):
    data = np.array([[0, 1, 2, 7]], np.uint8)
    with pytest.raises(LabelsError, match=r"bad.png: label values \[7\] are not 0/1/2"):
        read_labels(write_png(tmp_path / "bad.png", data))
    with pytest.raises(LabelsError, match=r"mixed.png: label values \[0, 1, 255\]"):
        read_labels(write_png(tmp_path / "mixed.png", np.array([[0, 1, 255]])))


def test_shape_checked(tmp_path, sparse):
    path = write_labels(tmp_path / "l.png", sparse)
    with pytest.raises(
        LabelsError, match=r"l.png: shape 40 x 60 does not match the volume's 40 x 61"
    ):
        read_labels(path, shape=(40, 61))


def test_corrupt_label_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(CorruptFileError, match="broken.png: not a readable image"):
        read_labels(tmp_path / "broken.png")


def test_writing_bad_values_leaves_previous_file(tmp_path, sparse):
    path = write_labels(tmp_path / "keep.png", sparse)
    with pytest.raises(LabelsError, match=r"label values \[3\]"):
        write_labels(path, np.full((40, 60), 3, np.uint8))
    np.testing.assert_array_equal(read_labels(path), sparse)


def test_villa_round_trip_with_validation(tmp_path, sparse):
    validation = np.zeros_like(sparse)
    validation[32:38, 2:10] = INK
    validation[32:38, 40:50] = NOT_INK
    paths = write_villa_labels(VillaPaths.in_folder(tmp_path, "seg1"), sparse, validation)
    assert paths.inklabels.name == "seg1_inklabels.png"
    ink = (
        tifffile.imread(paths.inklabels)
        if paths.inklabels.suffix == ".tif"
        else np.asarray(Image.open(paths.inklabels))
    )
    assert set(np.unique(ink)) == {0, 255}
    supervision = np.asarray(Image.open(paths.supervision_mask))
    assert (supervision > 0).sum() == (sparse > 0).sum() + (validation > 0).sum()
    train, val = read_villa_labels(VillaPaths.from_inklabels(paths.inklabels))
    np.testing.assert_array_equal(train, sparse)
    np.testing.assert_array_equal(val, validation)


def test_villa_without_validation_mask(tmp_path, sparse):
    paths = write_villa_labels(VillaPaths.in_folder(tmp_path, "s"), sparse)
    assert not paths.validation_mask.exists()
    train, val = read_villa_labels(paths)
    np.testing.assert_array_equal(train, sparse)
    assert val is None


@pytest.fixture
def strokes() -> np.ndarray:
    """Painted ink letters, a hand-painted not-ink patch, the rest unlabeled."""
    labels = np.zeros((40, 60), np.uint8)
    labels[12:18, 12:30] = INK
    labels[30:34, 40:44] = NOT_INK
    return labels


def test_dense_box_fills_only_unlabeled_pixels_inside(strokes):
    filled = apply_dense_boxes(strokes, [(10, 20, 10, 40)])
    inside = filled[10:20, 10:40]
    np.testing.assert_array_equal(inside == INK, strokes[10:20, 10:40] == INK)  # ink kept
    assert (inside[strokes[10:20, 10:40] == UNLABELED] == NOT_INK).all()
    outside = np.ones(strokes.shape, bool)
    outside[10:20, 10:40] = False
    np.testing.assert_array_equal(filled[outside], strokes[outside])  # untouched
    assert label_counts(filled) == {"ink": 6 * 18, "not ink": 10 * 30 - 6 * 18 + 16}
    assert label_counts(strokes)["not ink"] == 16  # the input is not modified


def test_dense_boxes_keep_painted_not_ink_and_overlap(strokes):
    filled = apply_dense_boxes(strokes, [(28, 36, 38, 46), (30, 40, 40, 50)])
    assert (filled[30:34, 40:44] == NOT_INK).all()
    assert label_counts(filled)["not ink"] == 8 * 8 + 10 * 10 - 6 * 6


def test_dense_box_respects_the_papyrus_mask(strokes):
    mask = np.zeros(strokes.shape, bool)
    mask[:, :20] = True
    filled = apply_dense_boxes(strokes, [(10, 20, 10, 40)], mask=mask)
    assert (filled[10:12, 10:20] == NOT_INK).all()
    assert (filled[10:12, 20:40] == UNLABELED).all()  # off the papyrus: still unlabeled
    assert (filled[12:18, 12:30] == INK).all()  # ink off the mask is kept too
    with pytest.raises(LabelsError, match="papyrus mask: shape 40 x 59"):
        apply_dense_boxes(strokes, [(0, 5, 0, 5)], mask=mask[:, 1:])


def test_dense_box_is_clipped_to_the_image(strokes):
    filled = apply_dense_boxes(strokes, [(-5, 3, 50, 500)])
    assert (filled[0:3, 50:60] == NOT_INK).all()
    assert label_counts(filled)["not ink"] == 16 + 3 * 10


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ((5, 5, 0, 10), "empty or inverted"),
        ((10, 5, 0, 10), "empty or inverted"),
        ((0, 10, 8, 2), "empty or inverted"),
        ((40, 50, 0, 10), "outside the 40 x 60 image"),
        ((0, 10, -9, 0), "outside the 40 x 60 image"),
        ((0, 10, 5), "expected"),
    ],
)
def test_bad_dense_boxes_refused(strokes, box, message):
    with pytest.raises(LabelsError, match=message):
        apply_dense_boxes(strokes, [(0, 4, 0, 4), box])


def test_dense_boxes_round_trip_through_the_villa_pair(tmp_path, strokes):
    filled = apply_dense_boxes(strokes, [(8, 22, 8, 36)])
    paths = write_villa_labels(VillaPaths.in_folder(tmp_path, "seg"), filled)
    supervision = read_gray(paths.supervision_mask) > 0
    box = np.zeros(strokes.shape, bool)
    box[8:22, 8:36] = True
    np.testing.assert_array_equal(supervision, box | (strokes > 0))  # the box is supervised
    train, val = read_villa_labels(paths)
    np.testing.assert_array_equal(train, filled)
    assert val is None


def test_value_counts_matches_bincount_blockwise():
    from napari_inkdetect.io.labels import value_counts

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (1031, 77)).astype(np.uint8)
    np.testing.assert_array_equal(value_counts(labels, rows=100), np.bincount(labels.ravel()))
    labels[5, 5] = 9  # a value past minlength widens the counts
    counts = value_counts(labels, rows=64)
    assert counts.size == 10 and counts[9] == 1 and counts.sum() == labels.size
    assert value_counts(np.zeros((0, 4), np.uint8)).tolist() == [0, 0, 0]

"""The synthetic segment must be exact (truth, labels, files) and honest: ink invisible to
intensity thresholds, yet present as texture in the ink band."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_inkdetect.synthetic import SyntheticSegment, make_segment, write_segment
from napari_inkdetect.synthetic.fields import _dilate


@pytest.fixture(scope="module")
def segment() -> SyntheticSegment:
    return make_segment(seed=3)


def _eight_bit(volume: np.ndarray) -> np.ndarray:
    """The model's view of intensities: uint16 >> 8 clipped to 50..200."""
    return np.clip(volume >> 8, 50, 200).astype(np.float32)


def _best_f05(values: np.ndarray, ink: np.ndarray) -> float:
    """Best F0.5 of a single threshold (either direction) over 64 levels of 50..200."""
    best = 0.0
    for level in np.linspace(50, 201, 64):
        for predicted in (values >= level, values < level):
            tp = np.count_nonzero(predicted & ink)
            if tp:
                p, r = tp / np.count_nonzero(predicted), tp / np.count_nonzero(ink)
                best = max(best, 1.25 * p * r / (0.25 * p + r))
    return best


def _near_papyrus(segment: SyntheticSegment) -> np.ndarray:
    """Papyrus next to the strokes (same surface height, away from the mask edge)."""
    ink = segment.truth == 1
    return _dilate(ink, 16) & ~_dilate(ink, 3) & (segment.truth == 2)


def _gradient_ratio(layer: np.ndarray, inside: np.ndarray, outside: np.ndarray) -> float:
    """Mean squared x-gradient inside vs outside: fine texture across the recto fibres."""
    energy = np.diff(layer, axis=1)[:, :-1] ** 2
    inside, outside = inside[:, :-2], outside[:, :-2]
    return float(energy[inside].mean() / energy[outside].mean())


def test_same_seed_same_arrays_other_seed_differs() -> None:
    a, b = make_segment((24, 160, 224), seed=5), make_segment((24, 160, 224), seed=5)
    for name in ("volume", "mask", "truth", "letters", "surface"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.ink_layers == b.ink_layers
    c = make_segment((24, 160, 224), seed=6)
    assert not np.array_equal(a.volume, c.volume)
    assert not np.array_equal(a.letters, c.letters)


def test_dtypes_and_shapes(segment: SyntheticSegment) -> None:
    assert segment.volume.shape == (48, 512, 768)
    assert segment.volume.dtype == np.uint16
    for name, dtype in (("mask", bool), ("truth", np.uint8), ("letters", np.int32)):
        assert getattr(segment, name).shape == (512, 768)
        assert getattr(segment, name).dtype == dtype
    assert segment.surface.dtype == np.float32
    assert segment.voxel_size_um == pytest.approx(7.91)
    z0, z1 = segment.ink_layers
    assert 0 < z0 < z1 <= 48 and z1 - z0 == 6
    assert 8 <= segment.n_letters <= 12


def test_intensity_ranges_match_real_segments(segment: SyntheticSegment) -> None:
    eight = segment.volume >> 8
    assert not segment.volume[:, ~segment.mask].any()
    assert 40 <= np.median(eight[0][segment.mask]) <= 70  # air above the surface
    sheet = eight[segment.ink_layers[1] + 2][segment.mask]
    assert 110 <= np.median(sheet) <= 170
    assert np.percentile(sheet, 1) >= 50 and np.percentile(sheet, 99) <= 200


def test_truth_matches_mask_and_letters(segment: SyntheticSegment) -> None:
    truth, mask, letters = segment.truth, segment.mask, segment.letters
    assert not truth[~mask].any()
    assert set(np.unique(truth[mask])) == {1, 2}
    np.testing.assert_array_equal(truth == 1, letters > 0)
    assert not letters[_dilate(~mask, 4)].any()  # letters keep a margin to the mask edge
    assert set(np.unique(letters)) == set(range(segment.n_letters + 1))


def test_letter_ids_in_reading_order(segment: SyntheticSegment) -> None:
    ids = range(1, segment.n_letters + 1)
    centres = [np.argwhere(segment.letters == i).mean(0) for i in ids]
    height = 512 / 5
    for (y0, x0), (y1, x1) in itertools.pairwise(centres):
        same_line = abs(y1 - y0) < height / 2
        assert (same_line and x1 > x0) or y1 - y0 > height


def test_n_letters_and_out_of_range() -> None:
    assert make_segment((8, 256, 384), n_letters=4).n_letters == 4
    with pytest.raises(ValueError, match="n_letters"):
        make_segment((8, 256, 384), n_letters=500)


def test_ink_does_not_change_mean_intensity(segment: SyntheticSegment) -> None:
    plain = make_segment(seed=3, crackle_strength=0.0)  # the same segment without ink
    eight, eight_plain = _eight_bit(segment.volume), _eight_bit(plain.volume)
    ink, near = segment.truth == 1, _near_papyrus(segment)
    z0, z1 = segment.ink_layers
    for z in range(z0 - 1, z1 + 1):
        std = eight[z][near].std()
        assert abs(eight[z][ink].mean() - eight_plain[z][ink].mean()) < 0.02 * std, z
        if z > z0:  # past the surface rise, where the surface's tilt moves the means
            assert abs(eight[z][ink].mean() - eight[z][near].mean()) < 0.05 * std, z


def test_no_single_threshold_finds_ink(segment: SyntheticSegment) -> None:
    eight = _eight_bit(segment.volume)
    mask, ink = segment.mask, (segment.truth == 1)[segment.mask]
    layers = [eight[z][mask] for z in range(*segment.ink_layers)] + [eight.mean(0)[mask]]
    assert max(_best_f05(values, ink) for values in layers) < 0.3
    brightened = layers[2] + 20 * ink  # the metric does catch ink 2 std brighter
    assert _best_f05(brightened, ink) > 0.45


def test_crackle_is_texture_in_the_band_only(segment: SyntheticSegment) -> None:
    eight = _eight_bit(segment.volume)
    ink, near = segment.truth == 1, _near_papyrus(segment)
    z0, z1 = segment.ink_layers
    centre = (z0 + z1) // 2
    assert _gradient_ratio(eight[centre], ink, near) > 1.3
    for z in (z0 - 6, z1 + 3, z1 + 10):
        assert 0.95 < _gradient_ratio(eight[z], ink, near) < 1.05, z


def test_crackle_peaks_in_the_reported_band(segment: SyntheticSegment) -> None:
    eight = _eight_bit(segment.volume)
    ink, near = segment.truth == 1, _near_papyrus(segment)
    ratios = [_gradient_ratio(eight[z], ink, near) for z in range(eight.shape[0])]
    z0, z1 = segment.ink_layers
    assert z0 <= int(np.argmax(ratios)) < z1


def test_no_crackle_gives_no_texture_difference() -> None:
    plain = make_segment((24, 256, 384), seed=1, crackle_strength=0.0)
    eight = _eight_bit(plain.volume)
    z = sum(plain.ink_layers) // 2
    assert 0.95 < _gradient_ratio(eight[z], plain.truth == 1, _near_papyrus(plain)) < 1.05


def test_train_labels_are_first_letters_plus_not_ink(segment: SyntheticSegment) -> None:
    train = segment.train_labels(3)
    np.testing.assert_array_equal(train == 1, (segment.letters >= 1) & (segment.letters <= 3))
    not_ink = train == 2
    assert not_ink.sum() > 500
    assert not (not_ink & _dilate(segment.letters > 0, 3)).any()
    assert not (not_ink & ~segment.mask).any()


def test_validation_is_the_held_out_complement(segment: SyntheticSegment) -> None:
    train, valid = segment.train_labels(3), segment.validation_labels(3)
    assert not ((train > 0) & (valid > 0)).any()
    np.testing.assert_array_equal(valid[valid > 0], segment.truth[valid > 0])
    held_out = segment.letters > 3
    assert not ((valid == 1) & ~held_out).any()
    assert (valid == 1).sum() > 0.95 * held_out.sum()
    assert (valid == 2).sum() > (valid == 1).sum()


def test_write_segment_layout(tmp_path) -> None:
    seg = make_segment((12, 160, 224), seed=2)
    folder = write_segment(seg, tmp_path, "demo")
    assert folder == tmp_path / "demo"
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    layers = {f"layers/{z:02d}.tif" for z in range(12)}
    pngs = {f"demo_{k}.png" for k in ("mask", "inklabels", "train_labels", "validation_labels")}
    assert names == layers | pngs | {"meta.json"}
    for z in (0, 11):
        with tifffile.TiffFile(folder / f"layers/{z:02d}.tif") as tif:
            assert tif.pages[0].compression == 1
            np.testing.assert_array_equal(tif.asarray(), seg.volume[z])
    read = {k: np.asarray(Image.open(folder / f"demo_{k}.png")) for k in ("mask", "inklabels")}
    np.testing.assert_array_equal(read["mask"], seg.mask * np.uint8(255))
    np.testing.assert_array_equal(read["inklabels"], (seg.truth == 1) * np.uint8(255))
    train = np.asarray(Image.open(folder / "demo_train_labels.png"))
    assert train.dtype == np.uint8 and set(np.unique(train)) == {0, 1, 2}
    np.testing.assert_array_equal(train, seg.train_labels())
    meta = json.loads((folder / "meta.json").read_text())
    assert meta == {
        "voxel_size_um": 7.91,
        "synthetic": True,
        "seed": 2,
        "ink_layers": list(seg.ink_layers),
        "shape": [12, 160, 224],
    }


def test_write_segment_three_digit_layers(tmp_path) -> None:
    folder = write_segment(make_segment((101, 64, 96), seed=0), tmp_path)
    assert (folder / "layers/000.tif").exists() and (folder / "layers/100.tif").exists()
    assert not (folder / "layers/00.tif").exists()


def test_ragged_mask_has_holes_and_a_torn_border_and_texture_strength_scales_fibres():
    from scipy import ndimage

    plain = make_segment(shape=(8, 256, 384), seed=3)
    ragged = make_segment(shape=(8, 256, 384), seed=3, ragged_mask=True)
    _, holes_plain = ndimage.label(~ndimage.binary_fill_holes(plain.mask) ^ ~plain.mask)
    _, holes = ndimage.label(ndimage.binary_fill_holes(ragged.mask) & ~ragged.mask)
    assert holes_plain == 0 and holes >= 2
    perimeter = [int((m ^ ndimage.binary_erosion(m)).sum()) for m in (plain.mask, ragged.mask)]
    assert perimeter[1] > 1.5 * perimeter[0]
    assert not (ragged.truth[~ragged.mask]).any()  # no labels in the holes
    # fibres: the window's mean with the slow shading removed (per-voxel noise averages out)
    spread = []
    for strength in (1.0, 2.0):
        seg = make_segment(shape=(40, 128, 192), seed=3, texture_strength=strength)
        image = seg.volume[12:24].astype(np.float64).mean(0)
        detail = image - ndimage.uniform_filter(image, 15)
        paper = ndimage.binary_erosion(seg.mask & (seg.truth == 2), iterations=8)
        spread.append(float(detail[paper].std()))
    assert spread[1] > 1.4 * spread[0]

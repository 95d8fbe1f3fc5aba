"""F0.5 and friends on sparse labels."""

from __future__ import annotations

import numpy as np
import pytest

from napari_inkdetect.scoring.metrics import chance_f05, score


def test_perfect_and_inverted_predictions():
    labels = np.array([[1, 1, 2, 2, 0]])
    perfect = score(np.array([[0.9, 0.8, 0.1, 0.2, 1.0]]), labels)
    assert perfect.f05 == 1.0 and perfect.precision == 1.0 and perfect.recall == 1.0
    inverted = score(np.array([[0.1, 0.2, 0.9, 0.8, 0.0]]), labels)
    assert inverted.f05 == 0.0
    assert inverted.best_f05 == pytest.approx(1.25 * 0.5 / (0.25 * 0.5 + 1))  # all-ink at t=0


def test_f05_weights_precision_over_recall():
    labels = np.array([1] * 10 + [2] * 10)
    precise = np.array([1.0] * 5 + [0.0] * 5 + [0.0] * 10)  # P=1, R=0.5
    recalling = np.array([1.0] * 10 + [1.0] * 10)  # P=0.5, R=1
    assert score(precise, labels).f05 == pytest.approx(1.25 * 0.5 / (0.25 + 0.5))
    assert score(precise, labels).f05 > score(recalling, labels).f05


def test_uint8_probabilities_and_unlabeled_ignored():
    labels = np.array([[0, 1, 2]])
    s = score(np.array([[255, 200, 10]], np.uint8), labels)
    assert s.f05 == 1.0 and s.n_ink == 1 and s.n_not_ink == 1


def test_shape_mismatch_refused():
    with pytest.raises(ValueError, match="differs from labels"):
        score(np.zeros((2, 2)), np.zeros((2, 3)))


def test_chance_f05_is_what_calling_everything_ink_scores():
    labels = np.array([1] * 25 + [2] * 75, np.uint8)
    everything = score(np.ones(100), labels, threshold=0.5)
    assert chance_f05(25, 75) == pytest.approx(everything.f05) == pytest.approx(0.2941, abs=1e-4)
    assert chance_f05(15, 85) < chance_f05(25, 75)  # rises with the ink fraction
    assert chance_f05(0, 10) == 0.0 and chance_f05(0, 0) == 0.0

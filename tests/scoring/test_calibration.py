"""Platt calibration: the fit, its limits, and folding it into a model's last layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_inkdetect.models import InkDetector
from napari_inkdetect.scoring.calibration import Calibration, fit_platt
from napari_inkdetect.scoring.metrics import score


def _squeezed(rng: np.random.Generator, n: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
    """Scores squeezed into 0.15..0.85 like a label-smoothed model's: truth is known."""
    labels = np.where(rng.random(n) < 0.2, 1, 2).astype(np.uint8)
    z = np.where(labels == 1, 2.0, -2.0) + rng.normal(0, 1.0, n)  # true logit-ish margin
    raw = 0.15 + 0.7 / (1 + np.exp(-z))
    return raw, labels


def test_fit_spreads_squeezed_scores_to_calibrated_probabilities():
    raw, labels = _squeezed(np.random.default_rng(0))
    cal = fit_platt(raw, labels)
    prob = cal.apply(raw)
    assert cal.slope > 1.5  # the squeeze is undone
    assert prob[labels == 2].mean() < 0.5 * raw[labels == 2].mean()  # papyrus falls
    # calibrated: among pixels called ~p, a fraction ~p is ink (reliability, 5 bins)
    bins = np.digitize(prob, np.linspace(0, 1, 6)[1:-1])
    for b in range(5):
        sel = bins == b
        if sel.sum() > 500:
            assert abs((labels[sel] == 1).mean() - prob[sel].mean()) < 0.06
    # a monotone map: the best F0.5 is the same map's
    assert score(prob, labels).best_f05 == pytest.approx(score(raw, labels).best_f05, abs=0.01)


def test_fit_refuses_too_few_pixels_and_inverted_maps():
    rng = np.random.default_rng(1)
    raw = rng.random(1000)
    only_paper = np.full(1000, 2, np.uint8)
    only_paper[:10] = 1
    assert fit_platt(raw, only_paper).is_identity  # 10 ink pixels: no fit
    labels = np.where(raw > 0.5, 2, 1).astype(np.uint8)  # high score = papyrus
    assert fit_platt(raw, labels).is_identity  # would invert the map
    assert not fit_platt(raw, np.where(raw > 0.5, 1, 2).astype(np.uint8)).is_identity


def test_folding_into_the_last_layer_is_the_calibration_exactly_and_undone_after():
    torch.manual_seed(0)
    model = InkDetector("resnet10", width=0.0625).eval()
    x = torch.randn(2, 1, 8, 64, 64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        raw = torch.softmax(model(x), 1)[:, 1].double().numpy()
        cal = Calibration(slope=2.5, offset=-1.25)
        with model.calibration_folded(cal.slope, cal.offset):
            folded = torch.softmax(model(x), 1)[:, 1].double().numpy()
    np.testing.assert_allclose(folded, cal.apply(raw), atol=1e-5)
    assert not np.allclose(folded, raw, atol=1e-3)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key

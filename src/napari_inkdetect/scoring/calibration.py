"""Probability calibration (Platt scaling) fitted on a run's validation region.

Trained with label smoothing and class weights, the network's ink probabilities are squeezed
into roughly 0.15..0.85: papyrus sits at 0.2 however sure the model is, and a threshold of 0.5
means nothing in particular. A researcher reads the map as "how likely is ink here", so the
trainer fits ``p' = sigmoid(a * logit(p) + b)`` on the validation pixels (the held-out letters'
dense boxes) and folds it into the saved model's last layer: the checkpoint then predicts
calibrated probabilities everywhere (Predict, preview, evaluate) with no extra step, and
F0.5 at the best threshold is unchanged (the map is a monotone function of the old one).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.special import expit

from napari_inkdetect.io.labels import INK, NOT_INK

#: Fewer labelled pixels of either class than this and the fit is not trusted (identity).
MIN_PIXELS_PER_CLASS = 50
_EPS = 1e-6


@dataclass(frozen=True)
class Calibration:
    """``p' = sigmoid(slope * logit(p) + offset)``; the identity is slope 1, offset 0."""

    slope: float = 1.0
    offset: float = 0.0

    @property
    def is_identity(self) -> bool:
        return self.slope == 1.0 and self.offset == 0.0

    def apply(self, probability: np.ndarray | float) -> np.ndarray:
        """Calibrated probabilities for raw ones (any shape, float)."""
        p = np.clip(np.asarray(probability, dtype=np.float64), _EPS, 1 - _EPS)
        return expit(self.slope * np.log(p / (1 - p)) + self.offset)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def fit_platt(probability: np.ndarray, labels: np.ndarray, iterations: int = 50) -> Calibration:
    """Platt scaling of raw ink probabilities against labels (1 ink, 2 not ink, 0 ignored).

    Newton's method on the logistic loss, with Platt's smoothed targets
    ``(n+ + 1) / (n+ + 2)`` and ``1 / (n- + 2)`` so a perfectly separated region does not
    send the slope to infinity. Returns the identity when either class has fewer than
    :data:`MIN_PIXELS_PER_CLASS` pixels or the fit would invert the map (slope <= 0).
    """
    prob = np.asarray(probability, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    ink, paper = labels == INK, labels == NOT_INK
    n_pos, n_neg = int(ink.sum()), int(paper.sum())
    if min(n_pos, n_neg) < MIN_PIXELS_PER_CLASS:
        return Calibration()
    keep = ink | paper
    p = np.clip(prob[keep], _EPS, 1 - _EPS)
    x = np.log(p / (1 - p))
    t = np.where(ink[keep], (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    a, b = 1.0, 0.0
    for _ in range(iterations):
        q = expit(a * x + b)
        g = q - t
        w = q * (1 - q) + 1e-12
        grad = np.array([np.dot(g, x), g.sum()])
        hess = np.array([[np.dot(w * x, x), np.dot(w, x)], [np.dot(w, x), w.sum()]])
        hess += 1e-9 * np.eye(2) * max(1.0, float(np.trace(hess)))
        step = np.linalg.solve(hess, grad)
        a, b = a - float(step[0]), b - float(step[1])
        if not (math.isfinite(a) and math.isfinite(b)):
            return Calibration()
        if float(np.abs(step).max()) < 1e-7:
            break
    return Calibration(slope=a, offset=b) if a > 0 else Calibration()

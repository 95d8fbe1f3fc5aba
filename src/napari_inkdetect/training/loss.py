"""Loss on sparse labels: only painted pixels count (0 = unlabeled is ignored)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from napari_inkdetect.io.labels import INK, NOT_INK, value_counts

IGNORE = -100


def to_targets(labels: torch.Tensor) -> torch.Tensor:
    """Sparse labels (0/1/2) -> class targets (1 ink, 0 not ink, ``IGNORE`` unlabeled)."""
    targets = torch.full(labels.shape, IGNORE, dtype=torch.long, device=labels.device)
    targets[labels == INK] = 1
    targets[labels == NOT_INK] = 0
    return targets


def class_weights(labels: np.ndarray) -> torch.Tensor:
    """Inverse-frequency weights ``[not ink, ink]`` (mean 1), for unbalanced paintings."""
    counts = value_counts(labels).astype(np.float64)
    freq = np.array([counts[NOT_INK], counts[INK]]) / max(counts[1:].sum(), 1)
    weights = 1.0 / np.maximum(freq, 1e-6)
    return torch.tensor(weights / weights.mean(), dtype=torch.float32)


def sparse_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    smoothing: float = 0.3,
    dice_weight: float = 0.0,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Label-smoothed cross-entropy (+ optional soft dice) over labelled pixels only.

    ``logits`` are ``(B, 2, H, W)``, ``labels`` ``(B, H, W)`` in 0/1/2. A batch without any
    labelled pixel gives a zero loss that still has a gradient path (no NaN).
    """
    targets = to_targets(labels)
    if not (targets != IGNORE).any():
        return logits.sum() * 0.0
    w = None if weights is None else weights.to(logits.device, torch.float32)
    loss = F.cross_entropy(
        logits.float(), targets, weight=w, ignore_index=IGNORE, label_smoothing=smoothing
    )
    if dice_weight > 0:
        loss = loss + dice_weight * soft_dice(logits, targets)
    return loss


def soft_dice(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 - soft dice of the ink class over labelled pixels."""
    valid = targets != IGNORE
    prob = torch.softmax(logits.float(), dim=1)[:, 1][valid]
    truth = (targets[valid] == 1).float()
    return 1 - (2 * (prob * truth).sum() + 1) / (prob.sum() + truth.sum() + 1)

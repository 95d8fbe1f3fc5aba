"""Scoring a run on its validation plan, the way Predict's map would be scored."""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_inkdetect.inference.boxes import predict_box
from napari_inkdetect.io.labels import NOT_INK
from napari_inkdetect.scoring.calibration import fit_platt
from napari_inkdetect.scoring.metrics import chance_f05, score
from napari_inkdetect.training.run import Run, set_train_mode
from napari_inkdetect.training.validation import (
    border_band,
)


def validate(run: Run) -> dict[str, Any]:
    """Scores over the plan's boxes only (the labelled pixels' tiles, never the bounding box
    of all validation labels), plus the false-ink rate in the mask's border band."""
    plan, probs, labels, band = run.plan, [], [], []
    for box in plan.boxes:
        prob = predict_box(
            run.model,
            run.segment,
            run.spec,
            run.start_layer,
            box,
            run.device,
            batch=2 * run.config.batch_size,
            reverse=run.config.depth_direction == "reverse",
            autocast=run.autocast,
        )
        y0, y1, x0, x1 = box
        truth = plan.labels[y0:y1, x0:x1]
        keep = truth > 0
        probs.append(prob[keep])
        labels.append(truth[keep])
        if run.mask is not None:
            band.append(border_band(run.mask[y0:y1, x0:x1])[keep])
    raw, truth = np.concatenate(probs), np.concatenate(labels)
    calibration = fit_platt(raw, truth)  # folded into best.safetensors (calibration.py)
    prob = calibration.apply(raw)
    scores = score(prob, truth).to_dict()
    scores["calibration"] = calibration.to_dict()
    scores["raw_best_threshold"] = score(raw, truth).best_threshold
    scores["chance_f05"] = chance_f05(scores["n_ink"], scores["n_not_ink"])
    in_band = np.concatenate(band) if band else np.zeros(truth.shape, bool)
    paper_band = in_band & (truth == NOT_INK)
    scores["border_fp"] = float(np.mean(prob[paper_band] >= 0.5)) if paper_band.any() else None
    scores.update(n_groups=plan.n_groups, dense=plan.dense, source=plan.source)
    set_train_mode(run)
    return scores

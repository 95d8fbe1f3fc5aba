"""The whole loop on the synthetic segment: train on 3 letters, predict a sweep of start
layers, and check that the model finds the *other* letters better than intensity thresholding
and that its ink lights up where the crackle lives in depth."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from napari_inkdetect.engine import drain
from napari_inkdetect.inference import PredictConfig, predict
from napari_inkdetect.io.labels import apply_dense_boxes
from napari_inkdetect.io.prediction_store import open_prediction
from napari_inkdetect.io.segment import open_segment
from napari_inkdetect.scoring.metrics import score
from napari_inkdetect.synthetic import make_segment, write_segment
from napari_inkdetect.training import AugmentConfig, LossConfig, TrainConfig, Validated, train
from napari_inkdetect.training.validation import border_band
from napari_inkdetect.windows import WindowSpec

STEPS = 600
LAYERS = 22


def threshold_baseline(segment, start: int, labels: np.ndarray) -> float:
    """Best F0.5 of thresholding intensity: each layer of the window and their mean."""
    raw = segment.read_block((start, start + LAYERS), (0, labels.shape[0]), (0, labels.shape[1]))
    norm = WindowSpec(layers=LAYERS, tile=32).normalisation.apply(raw)
    candidates = [*norm, norm.mean(0)]
    best = 0.0
    for image in candidates:
        scaled = (image - image.min()) / max(float(image.max() - image.min()), 1e-6)
        best = max(best, score(scaled, labels).best_f05, score(1 - scaled, labels).best_f05)
    return best


def dense_box_labels(seg, n_letters: int) -> np.ndarray:
    """What a user paints in the labels dock: the strokes of ``n_letters`` letters, scribbled
    not-ink, and a dense box around each letter ("Fill boxes": the rest of it is not-ink)."""
    labels = seg.train_labels(n_letters)
    boxes = []
    for i in range(1, n_letters + 1):
        ys, xs = np.nonzero(seg.letters == i)
        grow = max(4, int(ys.max() - ys.min()) // 4)
        boxes.append((max(0, ys.min() - grow), ys.max() + 1 + grow, max(0, xs.min() - grow),
                      xs.max() + 1 + grow))  # fmt: skip
    near_other = ndimage.binary_dilation(seg.letters > n_letters, iterations=3)
    return apply_dense_boxes(labels, boxes, mask=seg.mask & ~near_other)


@pytest.mark.slow
def test_train_then_predict_finds_held_out_letters_at_the_ink_depth(tmp_path):
    seg = make_segment(shape=(64, 256, 384))  # real segments have ~65 layers
    folder = write_segment(seg, tmp_path, "syn")
    z0, z1 = seg.ink_layers
    start = max(0, z0 - 8)  # a window that holds the whole ink band
    assert start + LAYERS >= z1
    painted = folder / "painted.png"
    Image.fromarray(dense_box_labels(seg, 3)).save(painted)
    config = TrainConfig(
        segment=str(folder), labels=str(painted),
        out=str(tmp_path / "run"),
        val_labels=str(folder / "syn_validation_labels.png"), init="starter",  # the CPU default
        start_layer=start, layers=LAYERS, batch_size=4, steps=STEPS,
        val_every=STEPS // 2, augment=replace(AugmentConfig.none(), flips=True, rot90=True),
        loss=LossConfig(), device="cpu", seed=0,
    )  # fmt: skip
    validations = [e for e in train(config) if isinstance(e, Validated)]
    assert [v.step for v in validations] == [STEPS // 2, STEPS]

    starts = [0, start, 24, 33, 42]  # 33 and 42: windows entirely below the ink band
    assert z1 < 33 and 42 + LAYERS <= 64
    out = drain(predict(
        PredictConfig(segment=str(folder), checkpoint=str(tmp_path / "run" / "best.safetensors"),
                      out=str(tmp_path / "pred.zarr"), start_layers=starts, device="cpu",
                      region=(0, 0, 256, 384))
    )).path  # fmt: skip
    prob, prov = open_prediction(out)
    assert list(prov["start_layers"]) == starts and prob.shape == (5, 256, 384)
    planes = np.asarray(prob)

    val = seg.validation_labels(3)
    model = score(planes[starts.index(start)], val).best_f05
    baseline = threshold_baseline(open_segment(folder), start, val)
    print(f"held-out letters: model F0.5 {model:.3f}, thresholding {baseline:.3f}")
    # measured 0.789 against 0.233 from the starter (a new model at lr 1e-3: 0.656)
    assert model >= 0.70 and model >= baseline + 0.4

    # no false ink along the papyrus mask's border: the band is no brighter than the interior
    plane = planes[starts.index(start)].astype(np.float32) / 255
    far = ndimage.distance_transform_edt(seg.truth != 1) > 20
    band = border_band(seg.mask) & far
    interior = seg.mask & far & ~band
    band_fp, interior_fp = (plane[band] >= 0.5).mean(), (plane[interior] >= 0.5).mean()
    print(f"papyrus far from ink: border band {plane[band].mean():.3f}, "
          f"interior {plane[interior].mean():.3f}; called ink at 0.5: band {band_fp:.3f}, "
          f"interior {interior_fp:.3f}")  # fmt: skip
    # the issue's own measure: not-ink called ink at 0.5 in the band (50% before the mask band)
    assert band_fp <= interior_fp + 0.05
    # and no glow: measured 0.117-0.169 against 0.090-0.100 (run-to-run noise of 600 steps)
    assert plane[band].mean() <= plane[interior].mean() + 0.1
    assert plane[interior].mean() <= 0.15  # calibrated: measured 0.04 (a new model: 0.09)

    # ink contrast (mean probability on ink minus on papyrus) per start layer
    contrast = [p[val == 1].mean() / 255 - p[val == 2].mean() / 255 for p in planes]
    print("contrast per start layer:", dict(zip(starts, np.round(contrast, 3), strict=True)))
    assert int(np.argmax(contrast)) == starts.index(start)
    assert contrast[starts.index(start)] > max(contrast[3], contrast[4]) + 0.1

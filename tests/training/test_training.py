"""Training engine: loss, augmentation, sampling, the event stream, resume, bad inputs and a
small end-to-end run that must beat intensity thresholding on held-out letters."""

from __future__ import annotations

import itertools
import json
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy import ndimage

from napari_inkdetect.engine import drain
from napari_inkdetect.errors import ConfigError, InkDetectError, LabelsError
from napari_inkdetect.io.segment import open_segment
from napari_inkdetect.models import InkDetector, read_checkpoint_metadata
from napari_inkdetect.scoring.calibration import Calibration
from napari_inkdetect.scoring.metrics import chance_f05
from napari_inkdetect.synthetic import make_segment, write_segment
from napari_inkdetect.training import (
    AugmentConfig,
    BatchHalved,
    CheckpointSaved,
    StepDone,
    TrainConfig,
    TrainFinished,
    TrainStarted,
    Validated,
    augment_batch,
    auto_split,
    given_plan,
    lr_at,
    run_scoring,
    sparse_loss,
    train,
)
from napari_inkdetect.training.augment import depth_crop_paste, flip_rot90, step_generator
from napari_inkdetect.training.sampling import TileSampler
from napari_inkdetect.window_tensors import to_model_input
from napari_inkdetect.windows import Normalisation, WindowSpec, read_raw

NO_AUG = AugmentConfig.none()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    seg = make_segment(shape=(40, 256, 384))
    folder = write_segment(seg, tmp_path_factory.mktemp("seg"), "syn")
    return seg, folder


def small_config(folder: Path, out: Path, **changes) -> TrainConfig:
    base = TrainConfig(
        segment=str(folder),
        labels=str(folder / "syn_train_labels.png"),
        val_labels=str(folder / "syn_validation_labels.png"),
        out=str(out),
        arch="resnet10",
        width=0.125,
        start_layer=12,
        layers=8,
        tile=64,
        steps=6,
        batch_size=2,
        lr=1e-3,
        val_every=3,
        autocast="off",
        augment=NO_AUG,
        prefetch=2,
    )
    return replace(base, **changes)


# --------------------------------------------------------------------------- units


def test_loss_ignores_unlabeled_pixels():
    logits = torch.randn(2, 2, 8, 8)
    labels = torch.zeros(2, 8, 8, dtype=torch.uint8)
    labels[:, :4] = 1
    labels[:, 4:6] = 2
    base = sparse_loss(logits, labels)
    changed = logits.clone()
    changed[:, :, 6:] = 100 * torch.randn(2, 2, 2, 8)  # only unlabeled rows change
    assert torch.allclose(sparse_loss(changed, labels), base)
    logits.requires_grad_(True)
    sparse_loss(logits, labels, dice_weight=1.0).backward()
    assert logits.grad[:, :, 6:].abs().max() == 0
    assert logits.grad[:, :, :6].abs().max() > 0
    empty = sparse_loss(logits, torch.zeros_like(labels))
    assert empty.item() == 0 and torch.isfinite(empty)


def test_geometric_augmentations_keep_label_alignment():
    # each tile's image encodes its label at every depth: image == label / 2
    blocks = torch.randint(0, 3, (6, 4, 4), dtype=torch.uint8)
    labels = blocks.repeat_interleave(8, 1).repeat_interleave(8, 2)
    images = (labels.float() / 2)[:, None, None].expand(6, 1, 5, 32, 32).contiguous()
    i2, l2 = flip_rot90(images, labels, step_generator(0, 0))
    assert not torch.equal(l2, labels)
    assert torch.equal((i2[:, 0, 0] * 2).round().to(torch.uint8), l2)  # exact
    cfg = replace(NO_AUG, flips=True, rot90=True, affine=True, p_affine=1.0)
    out_i, out_l = augment_batch(images, labels, cfg, seed=3, step=1)
    assert out_i.shape == images.shape and out_l.shape == labels.shape
    for z in range(5):  # bilinear image vs nearest labels: differ only along block edges
        agree = (out_i[:, 0, z] * 2).round().to(torch.uint8) == out_l
        assert agree.float().mean() > 0.93


def test_depth_augmentations_keep_shape_and_content():
    images = torch.arange(22, dtype=torch.float32).view(1, 1, 22, 1, 1).expand(4, 1, 22, 8, 8)
    out = depth_crop_paste(images.contiguous(), step_generator(0, 5), 12, p=1.0)
    assert out.shape == images.shape
    for tile in out[:, 0, :, 0, 0]:
        kept = tile[tile > 0]
        assert kept.numel() >= 11  # 12..22 consecutive layers (layer 0 is value 0)
        assert torch.all(kept.diff() == 1)  # pasted in order, consecutive
    full = augment_batch(images.contiguous(), torch.zeros(4, 8, 8, dtype=torch.uint8),
                         AugmentConfig.all(), seed=0, step=0)[0]  # fmt: skip
    assert full.shape == images.shape and torch.isfinite(full).all()


def test_augmentation_is_deterministic_per_step():
    images, labels = torch.rand(3, 1, 8, 32, 32), torch.randint(0, 3, (3, 32, 32))
    a = augment_batch(images, labels, AugmentConfig.all(), seed=1, step=7)
    b = augment_batch(images, labels, AugmentConfig.all(), seed=1, step=7)
    c = augment_batch(images, labels, AugmentConfig.all(), seed=1, step=8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_sampler_is_balanced_deterministic_and_lazy(synthetic):
    seg, folder = synthetic
    segment = open_segment(folder)
    labels = seg.train_labels(3)
    spec = WindowSpec(layers=8, tile=64, scale=2.0)
    sampler = TileSampler(segment, labels, spec, 12, seed=0)
    assert sampler.positions(4, 16) == sampler.positions(4, 16) != sampler.positions(5, 16)
    batch = sampler.batch(0, 16)
    assert batch.images.shape == (16, 1, 8, 64, 64) and batch.labels.shape == (16, 64, 64)
    blocks = [labels[y : y + 32, x : x + 32] for y, x in sampler.positions(0, 200)]
    assert all((b > 0).any() for b in blocks)  # every tile holds labels
    assert sum((b == 1).any() for b in blocks) >= 90  # ink in about half (or more) of them
    y0, x0 = sampler.positions(0, 1)[0]
    expect = to_model_input(read_raw(segment, 12, y0, x0, spec), spec)
    assert torch.allclose(batch.images[0, 0], expect)


@pytest.mark.parametrize("kind", ["uint16_shift8_clip", "percentile"])
@pytest.mark.parametrize("reverse", [False, True])
def test_sampler_ships_uint8_and_the_device_side_gives_the_float_input_bit_for_bit(
    synthetic, kind, reverse
):
    seg, folder = synthetic
    segment = open_segment(folder)
    spec = WindowSpec(layers=8, tile=32, normalisation=Normalisation(kind=kind))
    sampler = TileSampler(segment, seg.train_labels(3), spec, 12, seed=0, reverse=reverse)
    corners = sampler.positions(3, 6)
    stacks, labels = sampler.read_stacks(corners)
    assert stacks.dtype == (torch.uint8 if kind != "percentile" else torch.float32)
    assert stacks.shape == (6, 8, 32, 32) and labels.shape == (6, 32, 32)
    raw = np.stack([read_raw(segment, 12, y, x, spec) for y, x in corners])
    expect = to_model_input(raw, spec)
    expect = (expect.flip(1) if reverse else expect)[:, None]
    assert torch.equal(sampler.model_input(stacks), expect)
    assert torch.equal(sampler.read(corners)[0], expect)


def test_lr_schedule_warms_up_then_decays():
    lrs = [lr_at(s, 100, 1.0, 10, 0.01) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert lrs[-1] < 0.02


def _letters(rng, shape=(256, 320), n=6, size=14):
    """Random ink blobs (letters) with not-ink scribbles near them."""
    labels = np.zeros(shape, np.uint8)
    for _ in range(n):
        y, x = rng.integers(0, shape[0] - size), rng.integers(0, shape[1] - size)
        labels[y : y + size, x : x + 3] = 1  # a stroke
        labels[y : y + 3, x : x + size] = 1  # and a bar of the same letter
        labels[y + size // 2 : y + size // 2 + 2, x + 5 : x + size] = 2
    return labels


@pytest.mark.parametrize("seed", range(12))
def test_auto_split_never_lets_a_training_tile_see_a_validation_pixel(seed):
    rng = np.random.default_rng(seed)
    labels = _letters(rng)
    extent = 32
    train_l, plan = auto_split(labels, extent, 0.25, seed=seed)
    if plan.labels is None:  # letters merged into fewer than 4 groups
        assert "ink group" in plan.note
        return
    val = plan.labels > 0
    assert plan.n_groups >= 1 and plan.dense and val.any()
    assert not ((train_l > 0) & val).any()
    # dense: inside every box, each papyrus pixel not painted ink is not-ink
    for y0, y1, x0, x1 in plan.boxes:
        box = plan.labels[y0:y1, x0:x1]
        assert set(np.unique(box)) <= {1, 2}
        assert np.array_equal(box == 1, labels[y0:y1, x0:x1] == 1)
    # a gap of at least half a tile between training labels and validation boxes
    near = ndimage.binary_dilation(val, iterations=extent // 2 - 1)
    assert not ((train_l > 0) & near).any()
    if not ((train_l == 1).any() and (train_l == 2).any()):
        return
    sampler = TileSampler(None, train_l, WindowSpec(layers=4, tile=extent),
                          0, seed, plan=plan)  # fmt: skip
    for y0, x0 in sampler.positions(0, 300):
        assert not val[y0 : y0 + extent, x0 : x0 + extent].any()


def test_auto_split_refuses_with_three_letters_and_says_why():
    labels = np.zeros((128, 128), np.uint8)
    for i in range(3):
        labels[10 + 40 * i : 20 + 40 * i, 10:20] = 1
    labels[:, 100:] = 2
    train_l, plan = auto_split(labels, 32, 0.2, seed=0)
    assert plan.labels is None and plan.source == "none"
    assert "3 ink groups" in plan.summary() and np.array_equal(train_l, labels)


def test_sparse_validation_labels_are_flagged_dense_ones_not():
    labels = np.zeros((128, 128), np.uint8)
    labels[40:60, 40:60] = 1
    sparse = labels.copy()
    sparse[100:110, 0:30] = 2  # a scribble far from the ink
    dense = labels.copy()
    dense[30:70, 30:70][labels[30:70, 30:70] == 0] = 2  # a dense box
    empty = np.zeros_like(labels)
    assert not given_plan(sparse, empty, 32).dense
    assert "cannot see a halo" in given_plan(sparse, empty, 32).summary()
    plan = given_plan(dense, empty, 32)
    assert plan.dense and plan.n_groups == 1 and plan.boxes == [(30, 70, 30, 70)]


def test_mask_edges_are_sampled_and_outside_counts_as_not_ink():
    shape = (256, 256)
    mask = np.zeros(shape, bool)
    mask[:, :160] = True
    labels = np.zeros(shape, np.uint8)
    labels[100:110, 40:50], labels[20:30, 40:50] = 1, 2
    sampler = TileSampler(None, labels, WindowSpec(layers=4, tile=32), 0, 0,
                          mask=mask, edge_fraction=0.25)  # fmt: skip
    assert (
        (sampler.labels[:, 160:176] == 2).all()
        and (sampler.labels[:, 176:] == 0).all()
        and (sampler.labels[:, :160] == labels[:, :160]).all()
    )
    corners = sampler.positions(0, 400)
    at_edge = sum(x0 <= 160 <= x0 + 32 for _, x0 in corners)
    assert 0.15 < at_edge / 400 < 0.35  # about a quarter of the tiles sit on the border


def test_config_round_trips_through_json(tmp_path):
    cfg = small_config(tmp_path, tmp_path / "run", augment=AugmentConfig.all())
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match="unknown training settings"):
        TrainConfig.from_dict({**cfg.to_dict(), "stpes": 3})
    with pytest.raises(ConfigError, match="unknown model part"):
        replace(cfg, train="decoder+head")


# --------------------------------------------------------------------------- runs


def test_event_stream_and_run_directory(synthetic, tmp_path):
    _, folder = synthetic
    events = list(train(small_config(folder, tmp_path / "run")))
    assert isinstance(events[0], TrainStarted) and events[0].total_steps == 6
    assert isinstance(events[-1], TrainFinished) and not events[-1].stopped
    steps = [e for e in events if isinstance(e, StepDone)]
    assert [e.step for e in steps] == [1, 2, 3, 4, 5, 6]
    etas = [e.eta_s for e in steps]
    assert all(a >= b for a, b in itertools.pairwise(etas)) and etas[-1] == 0
    assert [e.step for e in events if isinstance(e, Validated)] == [3, 6]
    kinds = {(e.kind, e.step) for e in events if isinstance(e, CheckpointSaved)}
    assert ("last", 6) in kinds and any(k == "best" for k, _ in kinds)
    run = tmp_path / "run"
    for name in ("config.json", "metrics.jsonl", "last.safetensors", "best.safetensors"):
        assert (run / name).exists()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["kind"] == "step" for r in records) == 6
    assert sum(r["kind"] == "val" for r in records) == 2
    meta = read_checkpoint_metadata(run / "best.safetensors")
    assert (meta["start_layer"], meta["in_layers"], meta["tile_size"]) == (12, 8, 64)
    assert meta["normalisation"]["clip"] == [50.0, 200.0] and meta["depth_reverse"] is False
    prov = meta["provenance"]
    assert len(prov["labels_sha256"]) == 64 and prov["seed"] == 0 and prov["created"]
    assert "best_f05" in prov["metrics"]
    state = torch.load(run / "last.state.pt", weights_only=True)
    assert state["step"] == 6


def test_cancel_within_one_step(synthetic, tmp_path):
    _, folder = synthetic
    stop = threading.Event()
    events = []
    for event in train(small_config(folder, tmp_path / "run", steps=50), stop=stop):
        events.append(event)
        if isinstance(event, StepDone) and event.step == 2:
            stop.set()
    assert max(e.step for e in events if isinstance(e, StepDone)) == 2
    assert isinstance(events[-1], TrainFinished) and events[-1].stopped and events[-1].steps == 2
    assert any(isinstance(e, CheckpointSaved) and e.kind == "last" for e in events)


def test_kill_and_resume_gives_the_same_weights(synthetic, tmp_path):
    _, folder = synthetic
    aug = AugmentConfig.all()  # augmentations must replay too
    full = drain(train(small_config(folder, tmp_path / "full", augment=aug, steps=5))).run_dir
    cfg = small_config(folder, tmp_path / "part", augment=aug, steps=5)
    stop = threading.Event()
    for event in train(cfg, stop=stop):
        if isinstance(event, StepDone) and event.step == 2:
            stop.set()
    with pytest.raises(ConfigError, match="already holds a run"):
        next(train(cfg))
    with pytest.raises(ConfigError, match="lr"):
        next(train(replace(cfg, resume=True, lr=0.5)))
    events = list(train(replace(cfg, resume=True)))
    assert events[0].start_step == 2 and events[-1].steps == 5
    a = load_file(str(full / "last.safetensors"))
    b = load_file(str(tmp_path / "part" / "last.safetensors"))
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), rtol=1e-5, atol=1e-6), key
    steps = [json.loads(x)["step"] for x in (tmp_path / "part" / "metrics.jsonl").open()]
    assert sorted(steps) == steps and steps.count(2) == 1


def test_out_of_memory_halves_the_batch(synthetic, tmp_path, monkeypatch):
    _, folder = synthetic
    from napari_inkdetect.models import InkDetector

    forward = InkDetector.forward

    def fake_oom(self, x):
        if x.shape[0] > 1 and self.training:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")
        return forward(self, x)

    monkeypatch.setattr(InkDetector, "forward", fake_oom)
    events = list(train(small_config(folder, tmp_path / "run", steps=2, val_labels=None)))
    halved = [e for e in events if isinstance(e, BatchHalved)]
    assert halved == [BatchHalved(new_batch=1, accumulation=2)]
    assert events[-1].steps == 2 and events[-1].best_path.exists()  # best = last, no val


def test_nan_loss_stops_with_a_clear_error(synthetic, tmp_path):
    _, folder = synthetic
    cfg = small_config(folder, tmp_path / "run", lr=1e30, steps=8, val_every=100)
    with pytest.raises(InkDetectError, match="diverged"):
        for _ in train(cfg):
            pass


def test_bad_inputs(synthetic, tmp_path):
    _, folder = synthetic
    from PIL import Image

    only_ink = tmp_path / "only_ink.png"
    ink = np.zeros((256, 384), np.uint8)
    ink[:, :50] = 1
    Image.fromarray(ink).save(only_ink)
    wrong = tmp_path / "wrong.png"
    Image.fromarray(np.ones((10, 10), np.uint8)).save(wrong)
    cfg = small_config(folder, tmp_path / "run")
    with pytest.raises(LabelsError, match=r"only_ink.png: no not-ink"):
        next(train(replace(cfg, labels=str(only_ink))))
    with pytest.raises(LabelsError, match=r"wrong.png: shape 10 x 10"):
        next(train(replace(cfg, labels=str(wrong))))
    with pytest.raises(ConfigError, match="outside the volume"):
        next(train(replace(cfg, start_layer=35)))
    with pytest.raises(ConfigError, match="nope"):
        next(train(replace(cfg, arch="nope")))


# --------------------------------------------------------------------------- end to end


def test_best_checkpoint_predicts_the_calibrated_map_validation_scored(
    synthetic, tmp_path, monkeypatch
):
    """best.safetensors carries the validation's Platt fit in its weights, so it predicts the
    calibrated map the logged scores came from; last stays raw (training goes on from it)."""
    _, folder = synthetic
    # A 12-step model is still at chance (the fit is then the identity, tested in
    # test_calibration); pin a fit so the fold through the trainer is what is tested.
    monkeypatch.setattr(run_scoring, "fit_platt", lambda *_: Calibration(2.5, -1.25))
    config = small_config(folder, tmp_path / "run", steps=12, val_every=12)
    validated = [e for e in train(config) if isinstance(e, Validated)][-1]
    run = tmp_path / "run"
    best_meta = read_checkpoint_metadata(run / "best.safetensors")["provenance"]["metrics"]
    last_meta = read_checkpoint_metadata(run / "last.safetensors")["provenance"]["metrics"]
    cal = best_meta["calibration"]
    assert best_meta["calibrated"] is True and cal["slope"] > 0
    assert (cal["slope"], cal["offset"]) == (2.5, -1.25)
    assert last_meta["calibrated"] is False and last_meta["calibration"] is None
    assert last_meta["best_threshold"] == best_meta["raw_best_threshold"]
    assert best_meta["best_threshold"] == validated.best_threshold
    chance = chance_f05(validated.n_ink, validated.n_not_ink)
    assert 0 < validated.chance_f05 == pytest.approx(chance)
    best = InkDetector.from_checkpoint(run / "best.safetensors").eval()
    last = InkDetector.from_checkpoint(run / "last.safetensors").eval()
    spec = WindowSpec(layers=8, tile=64)
    x = to_model_input(read_raw(open_segment(folder), 12, 64, 64, spec)[None], spec)[:, None]
    with torch.no_grad():
        p_best = torch.softmax(best(x), 1)[:, 1].double().numpy()
        p_last = torch.softmax(last(x), 1)[:, 1].double().numpy()
    expected = Calibration(cal["slope"], cal["offset"]).apply(p_last)
    np.testing.assert_allclose(p_best, expected, atol=1e-4)  # one step apart: same weights

"""Training starts from the initial checkpoint's own settings: window, scale, depth order,
normalisation and the optimisation preset, resolved before the run directory is written."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from napari_inkdetect.cli import main
from napari_inkdetect.errors import ConfigError
from napari_inkdetect.io.segment import open_segment
from napari_inkdetect.models import InkDetector, read_checkpoint_metadata, save_checkpoint
from napari_inkdetect.models.checkpoints import (
    KIND_INK_MODEL,
    KIND_NAPARI_INKDETECT,
    KIND_PRETRAINED_ENCODER,
)
from napari_inkdetect.synthetic import make_segment, write_segment
from napari_inkdetect.training import AugmentConfig, StepDone, TrainConfig, TrainStarted, train
from napari_inkdetect.training.init_settings import (
    batchnorm_should_freeze,
    default_optimisation,
    read_init_facts,
    resolve_init_settings,
)

SCROLL_UM, FRAGMENT_UM = 7.91, 3.24


@pytest.fixture(scope="module")
def tiny_model() -> InkDetector:
    torch.manual_seed(0)
    return InkDetector("resnet10", 0.125)


@pytest.fixture(scope="module")
def ours(tiny_model, tmp_path_factory) -> Path:
    """Our format, trained (say) on 8 reversed layers, tile 64, at scale 2."""
    path = tmp_path_factory.mktemp("ckpt") / "ours.safetensors"
    return save_checkpoint(
        path, tiny_model, in_layers=8, tile_size=64, scale=2.0, depth_reverse=True
    )


@pytest.fixture(scope="module")
def kaggle_fold(tiny_model, tmp_path_factory) -> Path:
    """A foreign ink model as the 4th place saved them: ``torch.save({"model": state})``."""
    path = tmp_path_factory.mktemp("ckpt") / "resnet10_fold0.pth"
    torch.save({"model": tiny_model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def kinetics(tiny_model, tmp_path_factory) -> Path:
    """A Kinetics-pretrained encoder: bare ``conv1``/``layer1..4`` keys, no decoder."""
    path = tmp_path_factory.mktemp("ckpt") / "r3d10_KM_200ep.pth"
    state = {
        k.removeprefix("encoder."): v
        for k, v in tiny_model.state_dict().items()
        if k.startswith("encoder.")
    }
    torch.save({"state_dict": state}, path)
    return path


@pytest.fixture(scope="module")
def segment(tmp_path_factory) -> Path:
    seg = make_segment(shape=(24, 160, 224))
    return write_segment(seg, tmp_path_factory.mktemp("seg"), "syn")


def _config(init: Path | None = None, **changes) -> TrainConfig:
    return TrainConfig(segment="seg", labels="labels.png", out="run", init=_str(init), **changes)


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


# --------------------------------------------------------------------------- resolving


def test_unset_window_comes_from_our_checkpoint(ours):
    assert read_init_facts(ours).kind == KIND_NAPARI_INKDETECT
    cfg, notes = resolve_init_settings(_config(ours), SCROLL_UM)
    assert (cfg.layers, cfg.tile, cfg.scale, cfg.depth_direction) == (8, 64, 2.0, "reverse")
    assert cfg.normalisation["kind"] == "uint16_shift8_clip" and not cfg.unresolved()
    assert (cfg.lr, cfg.freeze_batchnorm) == (3e-5, True)  # finetuning a trained ink model
    assert any("8 layers, tile 64, scale 2 and depth reversed taken from" in n for n in notes)
    assert any("lr 3e-05 and BatchNorm frozen" in n for n in notes)


def test_recorded_voxel_size_rescales(tiny_model, tmp_path):
    path = save_checkpoint(
        tmp_path / "v.safetensors", tiny_model, scale=2.0, provenance={"voxel_size_um": 3.24}
    )
    cfg, notes = resolve_init_settings(_config(path), SCROLL_UM)
    assert cfg.scale == pytest.approx(2.0 * SCROLL_UM / FRAGMENT_UM, abs=1e-4)
    assert any("7.91 um segment voxels vs 3.24 um training data at scale 2" in n for n in notes)


def test_kaggle_fold_is_upscaled_to_scroll_data(kaggle_fold):
    assert read_init_facts(kaggle_fold).kind == KIND_INK_MODEL
    cfg, notes = resolve_init_settings(_config(kaggle_fold), SCROLL_UM)
    assert (cfg.layers, cfg.tile, cfg.depth_direction) == (22, 256, "forward")
    assert cfg.scale == pytest.approx(SCROLL_UM / FRAGMENT_UM, abs=1e-4)  # 2.44
    assert any("scale 2.44" in n and "Kaggle" in n for n in notes)
    assert resolve_init_settings(_config(kaggle_fold), FRAGMENT_UM)[0].scale == 1.0
    cfg, notes = resolve_init_settings(_config(kaggle_fold), None)  # voxel size unknown
    assert cfg.scale == 1.0 and any("--scale 2.44" in n for n in notes)


def test_kinetics_encoder_gets_defaults_and_its_preset(kinetics):
    assert read_init_facts(kinetics).kind == KIND_PRETRAINED_ENCODER
    cfg, notes = resolve_init_settings(_config(kinetics), SCROLL_UM, device_type="cpu")
    assert (cfg.layers, cfg.tile, cfg.scale, cfg.depth_direction) == (22, 128, 1.0, "forward")
    assert (cfg.lr, cfg.freeze_batchnorm) == (1e-4, False)
    assert any("(the defaults)" in n for n in notes)
    # it records no tile: the device preset's (128 on the CPU, 256 on a GPU)
    assert resolve_init_settings(_config(kinetics), SCROLL_UM, device_type="cuda")[0].tile == 256


def test_explicit_settings_win_and_contradictions_are_noted(ours):
    given = dict(layers=12, tile=128, scale=1.0, depth_direction="forward", lr=1e-3)
    sizes = dict(steps=10, batch_size=2)  # given too: no device preset applies
    cfg, notes = resolve_init_settings(
        _config(ours, freeze_batchnorm=False, **given, **sizes), 7.91
    )
    assert (cfg.layers, cfg.tile, cfg.scale, cfg.depth_direction) == (12, 128, 1.0, "forward")
    assert (cfg.lr, cfg.freeze_batchnorm) == (1e-3, False)
    text = "\n".join(notes)
    assert "taken from" not in text and "preset" not in text
    for expected in (
        "layers 12 given",
        "trained on 8-layer windows",
        "tile 128 given",
        "scale 1 given",
        "expects 2",
        "depth forward given",
        "depth reversed",
    ):
        assert expected in text
    # a partial override: the rest still comes from the checkpoint
    cfg, _ = resolve_init_settings(_config(ours, scale=1.5), SCROLL_UM)
    assert (cfg.layers, cfg.tile, cfg.scale, cfg.depth_direction) == (8, 64, 1.5, "reverse")


def test_lr_preset_depends_on_where_training_starts(ours):
    scratch_cpu, notes = resolve_init_settings(_config(), SCROLL_UM, device_type="cpu")
    scratch_gpu, _ = resolve_init_settings(_config(), SCROLL_UM, device_type="cuda")
    finetune, _ = resolve_init_settings(_config(ours), SCROLL_UM, device_type="cpu")
    assert (scratch_cpu.lr, scratch_gpu.lr, finetune.lr) == (1e-3, 3e-4, 3e-5)
    assert not scratch_cpu.freeze_batchnorm and finetune.freeze_batchnorm
    assert (scratch_cpu.layers, scratch_cpu.tile, scratch_cpu.scale) == (22, 128, 1.0)
    assert (scratch_gpu.layers, scratch_gpu.tile, scratch_gpu.scale) == (22, 256, 1.0)
    assert notes[-1] == (
        "lr 0.001 and BatchNorm trains: the preset for training from scratch on the CPU "
        "(override with --lr, --freeze-batchnorm/--train-batchnorm)"
    )
    for kind in (None, KIND_PRETRAINED_ENCODER, KIND_INK_MODEL, KIND_NAPARI_INKDETECT):
        assert default_optimisation(kind).train == "all"
    assert default_optimisation(KIND_PRETRAINED_ENCODER).lr == 1e-4


def test_batchnorm_freezes_when_asked_or_on_few_tiles():
    assert batchnorm_should_freeze(8, True) and batchnorm_should_freeze(2, False)
    assert batchnorm_should_freeze(1, None) and not batchnorm_should_freeze(4, None)
    assert not batchnorm_should_freeze(2, False, processes=2)  # SyncBatchNorm pools 2 x 2


def test_unset_and_resolved_configs_round_trip_through_json(ours):
    for cfg in (_config(ours), resolve_init_settings(_config(ours), SCROLL_UM)[0]):
        assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match="depth_direction"):
        _config(depth_direction="backwards")


# --------------------------------------------------------------------------- runs


def _run_config(segment: Path, out: Path, init: Path, **changes) -> TrainConfig:
    return TrainConfig(
        segment=str(segment),
        labels=str(segment / "syn_train_labels.png"),
        val_labels=str(segment / "syn_validation_labels.png"),
        out=str(out),
        init=str(init),
        start_layer=8,
        steps=4,
        batch_size=2,
        val_every=100,
        autocast="off",
        augment=AugmentConfig.none(),
        prefetch=1,
        device="cpu",
        **changes,
    )


def test_training_records_resolved_settings_and_resumes(segment, ours, tmp_path):
    assert open_segment(segment).voxel_size_um == SCROLL_UM
    cfg = _run_config(segment, tmp_path / "run", ours)
    stop = threading.Event()
    events = []
    for event in train(cfg, stop=stop):
        events.append(event)
        if isinstance(event, StepDone) and event.step == 2:
            stop.set()
    started = events[0]
    assert isinstance(started, TrainStarted) and started.notes
    assert any("taken from init checkpoint ours.safetensors" in n for n in started.notes)
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["layers"] == 8 and recorded["tile"] == 64 and recorded["scale"] == 2.0
    assert recorded["depth_direction"] == "reverse" and recorded["lr"] == 3e-5
    assert recorded["freeze_batchnorm"] is True
    assert recorded["normalisation"]["kind"] == "uint16_shift8_clip"
    assert started.config == TrainConfig.from_dict(recorded)
    last = read_checkpoint_metadata(tmp_path / "run" / "last.safetensors")
    assert (last["in_layers"], last["tile_size"], last["scale"]) == (8, 64, 2.0)
    assert last["depth_reverse"] is True
    # frozen BatchNorm: the statistics learned before are kept exactly
    before, after = load_file(str(ours)), load_file(str(tmp_path / "run" / "last.safetensors"))
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)
    assert any(not torch.equal(before[k], after[k]) for k in before if k not in stats)
    # resume with the same (unset) settings: compared with the recorded, resolved ones
    resumed = list(train(replace(cfg, resume=True)))
    assert resumed[0].start_step == 2 and resumed[-1].steps == 4
    assert resumed[0].config == replace(started.config, resume=True)
    assert any(n.startswith("resuming: layers, tile, scale") for n in resumed[0].notes)
    with pytest.raises(ConfigError, match="scale"):
        next(train(replace(cfg, resume=True, scale=1.0)))


def test_cli_prints_what_it_took_from_the_checkpoint(segment, ours, tmp_path, capsys):
    argv = ["train", str(segment), "--labels", str(segment / "syn_train_labels.png"),
            "--out", str(tmp_path / "run"), "--init", str(ours), "--steps", "2",
            "--batch-size", "2", "--start-layer", "8", "--device", "cpu", "--scale", "1.5",
            "--quiet"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "8 layers, tile 64 and depth reversed taken from init checkpoint" in out
    assert "scale 1.5 given" in out and "lr 3e-05" in out
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (recorded["scale"], recorded["layers"]) == (1.5, 8)


def test_train_help_states_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("window length in layers (default: from --init checkpoint, else 22)",
                 "(default: from --init checkpoint, else preset: cpu 128 / gpu 256",
                 "(default: from --init checkpoint, else forward)",
                 "(default: from --init checkpoint and the voxel sizes",
                 "3e-5 from a trained ink model"):  # fmt: skip
        assert flag in text


def test_default_start_layer_is_where_the_painted_ink_is(tmp_path):
    """No start layer given (CLI, API): the window goes where the labels show the ink, not to
    the middle of the stack, which here would miss the ink band entirely."""
    seg = make_segment(shape=(96, 192, 256), seed=2)
    folder = write_segment(seg, tmp_path, "deep")
    z0, z1 = seg.ink_layers
    centred = (96 - 22) // 2
    assert not (centred <= z0 and z1 <= centred + 22)  # the old default misses the ink
    config = TrainConfig(
        segment=str(folder), labels=str(folder / "deep_train_labels.png"), out=str(tmp_path / "r")
    )
    resolved, notes = resolve_init_settings(config, seg.voxel_size_um, device_type="cpu")
    start = resolved.start_layer
    assert start <= z0 and z1 <= start + 22, (start, seg.ink_layers)
    assert any(n.startswith(f"start layer {start} (window centre {start + 11})") for n in notes)

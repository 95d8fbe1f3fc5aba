"""Device presets: a run given no sizes gets ones that finish on its device (a 1/8-width
model on 128 px tiles on a CPU), from one table the command line, the dock and the API share;
the run records them and the start layer it trained on."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from napari_inkdetect.cli import build_parser, main
from napari_inkdetect.errors import ConfigError
from napari_inkdetect.synthetic import make_segment, write_segment
from napari_inkdetect.training import TrainConfig, TrainStarted, train
from napari_inkdetect.training.config import SIZE_FIELDS
from napari_inkdetect.training.init_settings import resolve_init_settings
from napari_inkdetect.training.presets import PRESETS, pick_preset

NZ = 24  # 2 layers more than the default 22-layer window: the centred start is 1
CPU = PRESETS["cpu"]


@pytest.fixture(scope="module")
def segment(tmp_path_factory) -> Path:
    return write_segment(make_segment(shape=(NZ, 160, 224)), tmp_path_factory.mktemp("seg"), "p")


def _sizes(config: TrainConfig | dict) -> tuple:
    get = config.get if isinstance(config, dict) else lambda k: getattr(config, k)
    return tuple(get(k) for k in ("arch", "width", "tile", "batch_size"))


def test_pick_preset_by_device():
    assert pick_preset("cpu") == (CPU, "training on the CPU")
    gpu, why = pick_preset(torch.device("cuda", 0))
    assert gpu == PRESETS["gpu"] and (gpu.width, gpu.tile, gpu.batch_size) == (1.0, 256, 8)
    assert pick_preset(torch.device("mps"))[0] == PRESETS["gpu"]
    two, why = pick_preset("cuda", processes=2)  # the global batch: 8 tiles per GPU
    assert (two.name, two.label, two.batch_size) == ("gpus", "2-GPU", 16) and "2 GPUs" in why
    assert pick_preset("cpu", processes=3)[0].batch_size == 6  # splits over 3 gloo processes
    assert (CPU.width, CPU.tile, CPU.batch_size, CPU.steps) == (0.125, 128, 4, 1000)
    with pytest.raises(ConfigError, match="not available"):
        pick_preset("cuda:99")


def test_cli_without_sizes_on_cpu_trains_the_cpu_preset(segment, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", str(segment), "--labels", str(segment / "p_train_labels.png"),
            "--out", str(run), "--device", "cpu", "--steps", "2", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "CPU preset: resnet10 x0.125, tile 128, batch 4 (training on the CPU" in out
    recorded = json.loads((run / "config.json").read_text())
    assert _sizes(recorded) == (CPU.arch, CPU.width, CPU.tile, CPU.batch_size)
    assert recorded["steps"] == 2 and recorded["lr"] == 1e-3  # the from-scratch CPU lr
    start = recorded["start_layer"]  # where the painted ink is (ink_depth), else centred
    assert isinstance(start, int) and 0 <= start <= NZ - 22
    assert f"start layer {start} (window centre {start + 11}): the painted ink" in out


def test_api_gets_the_preset_and_resume_keeps_it_on_another_device(segment, tmp_path):
    config = TrainConfig(
        segment=str(segment),
        labels=str(segment / "p_train_labels.png"),
        val_labels=str(segment / "p_validation_labels.png"),
        out=str(tmp_path / "run"),
        device="cpu",
        steps=1,
        prefetch=1,
    )
    events = train(config)
    started = next(events)  # the run is set up: config.json is written
    events.close()
    assert isinstance(started, TrainStarted)
    assert _sizes(started.config) == (CPU.arch, CPU.width, CPU.tile, CPU.batch_size)
    assert any(n.startswith("CPU preset: resnet10 x0.125, tile 128") for n in started.notes)
    recorded = TrainConfig.from_dict(json.loads((tmp_path / "run" / "config.json").read_text()))
    assert recorded == started.config and recorded.start_layer == (NZ - 22) // 2
    # resumed where a GPU preset would apply: the recorded sizes, so like is compared with like
    resumed, notes = resolve_init_settings(
        config.with_(resume=True, steps=None), 7.91, device_type="cuda"
    )
    assert _sizes(resumed) == _sizes(recorded) and resumed.steps == 1
    assert resumed.start_layer == recorded.start_layer and not recorded.differences(resumed)
    assert not any("preset:" in n for n in notes)


def test_given_sizes_win_and_a_legacy_run_resumes(tmp_path):
    given = dict(arch="resnet18", width=0.25, tile=64, batch_size=2, steps=5, lr=1e-4)
    given["freeze_batchnorm"] = False
    base = TrainConfig(segment="missing", labels="l.png", out=str(tmp_path), **given)
    cfg, notes = resolve_init_settings(base, None, device_type="cpu", n_layers=30)
    assert all(getattr(cfg, k) == v for k, v in given.items())
    assert not any("preset" in n for n in notes) and cfg.start_layer == 4
    assert not [n for n in SIZE_FIELDS if getattr(cfg, n) is None]
    # a config.json from before start layers were recorded holds null: the centred window,
    # left for the trainer to compute again, so resuming it is not refused
    legacy = {**cfg.to_dict(), "start_layer": None}
    (tmp_path / "config.json").write_text(json.dumps(legacy))
    resumed, _ = resolve_init_settings(
        TrainConfig(segment="missing", labels="l.png", out=str(tmp_path), resume=True), None
    )
    assert resumed.start_layer is None
    assert not TrainConfig.from_dict(legacy).differences(resumed)


def _train_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def test_train_help_lists_every_default(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    gpu = PRESETS["gpu"]
    for expected in (
        f"preset: cpu {CPU.tile} / gpu {gpu.tile}",
        f"preset: cpu {CPU.width:g} / gpu {gpu.width:g}",
        f"preset: cpu {CPU.batch_size} / gpu {gpu.batch_size} / gpus 8 per GPU",
        f"preset: {CPU.steps} on every device"
        if CPU.steps == gpu.steps
        else f"preset: cpu {CPU.steps} / gpu {gpu.steps}",
        f"preset: {CPU.arch} on every device",
        "(default: the window centred in the volume's depth)",
    ):
        assert expected in text
    valued = [
        a
        for a in _train_parser()._actions
        if a.option_strings and a.nargs != 0 and not a.required and a.dest != "help"
    ]
    assert len(valued) > 15
    undocumented = [a.option_strings[-1] for a in valued if "default" not in (a.help or "")]
    assert not undocumented

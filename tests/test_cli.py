"""The command line: outputs, and one-line errors with a non-zero exit for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_inkdetect.cli import main


def test_sample_writes_a_real_segment_layout(tmp_path, capsys):
    assert main(["sample", str(tmp_path), "--id", "demo", "--shape", "24,128,160"]) == 0
    folder = tmp_path / "demo"
    assert capsys.readouterr().out.strip() == str(folder)
    layers = sorted((folder / "layers").glob("*.tif"))
    assert [f.name for f in layers] == [f"{z:02d}.tif" for z in range(24)]
    assert tifffile.imread(layers[0]).shape == (128, 160)
    assert (folder / "demo_mask.png").is_file() and (folder / "demo_inklabels.png").is_file()


def test_info_describes_segment(scroll_segment, capsys):
    assert main(["info", str(scroll_segment), "--reverse"]) == 0
    out = capsys.readouterr().out
    assert "scroll-segment" in out and "6 layers x 96 x 128 px, uint16" in out
    assert "7.91 um  (depth reversed)" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["info", "/nonexistent/segment"], "no such file or folder"),
        (["sample", "/tmp/x", "--shape", "1,2"], "expected three integers"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(argv, message, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("napari-inkdetect: error: ") and message in err


def test_corrupt_layer_via_console_script(tmp_path):
    folder = tmp_path / "seg" / "layers"
    folder.mkdir(parents=True)
    for z in range(3):
        tifffile.imwrite(folder / f"{z:02d}.tif", np.zeros((8, 8), np.uint16))
    (folder / "01.tif").write_bytes(b"garbage")
    run = subprocess.run(
        [sys.executable, "-m", "napari_inkdetect", "info", str(tmp_path / "seg")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1
    assert run.stderr.startswith("napari-inkdetect: error: ")
    assert "01.tif: not a readable TIFF" in run.stderr and run.stderr.count("\n") == 1
    assert "Traceback" not in run.stderr


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("napari-inkdetect ")


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli-sample")
    assert main(["sample", str(out), "--shape", "28,160,224"]) == 0
    return out / "synthetic"


def test_train_writes_a_run_directory(sample_dir, tmp_path, capsys):
    argv = ["train", str(sample_dir), "--labels", str(sample_dir / "synthetic_train_labels.png"),
            "--out", str(tmp_path / "run"), "--width", "0.125", "--tile", "64", "--layers", "8",
            "--start-layer", "14", "--steps", "4", "--batch-size", "2", "--val-every", "2",
            "--quiet"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "finished after 4 steps" in out
    assert {p.name for p in (tmp_path / "run").iterdir()} >= {
        "config.json",
        "metrics.jsonl",
        "last.safetensors",
        "best.safetensors",
    }


def test_train_refuses_labels_without_not_ink(sample_dir, tmp_path, capsys):
    argv = ["train", str(sample_dir), "--labels", str(sample_dir / "synthetic_mask.png"),
            "--out", str(tmp_path / "run"), "--steps", "2"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "synthetic_mask.png: no not-ink (2) pixels" in err and err.count("\n") == 1


def test_train_refuses_window_outside_volume(sample_dir, tmp_path, capsys):
    argv = ["train", str(sample_dir), "--labels", str(sample_dir / "synthetic_train_labels.png"),
            "--out", str(tmp_path / "run"), "--start-layer", "20", "--layers", "22"]  # fmt: skip
    assert main(argv) == 1
    assert "outside" in capsys.readouterr().err


def test_predict_export_and_evaluate(sample_dir, tmp_path, capsys):
    run = tmp_path / "run"
    labels = sample_dir / "synthetic_train_labels.png"
    train = ["train", str(sample_dir), "--labels", str(labels), "--out", str(run),
             "--width", "0.125", "--tile", "64", "--layers", "8", "--start-layer", "14",
             "--steps", "2", "--batch-size", "2", "--quiet"]  # fmt: skip
    assert main(train) == 0
    out = tmp_path / "pred.zarr"
    argv = ["predict", str(sample_dir), "--checkpoint", str(run / "last.safetensors"),
            "--out", str(out), "--start-layers", "10:16:2", "--region", "0,0,96,128",
            "--format", "png", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    pngs = sorted(p.name for p in (tmp_path / "pred_png").iterdir())
    assert pngs == ["pred_max.png", "pred_z10.png", "pred_z12.png", "pred_z14.png"]
    capsys.readouterr()
    truth = sample_dir / "synthetic_inklabels.png"
    mask = sample_dir / "synthetic_mask.png"
    assert (
        main(["evaluate", str(out), "--truth", str(truth), "--region-mask", str(mask), "--json"])
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert [r["start_layer"] for r in rows] == [10, 12, 14]
    assert all(0 <= r["best_f05"] <= 1 and r["n_ink"] > 0 for r in rows)
    assert main(["evaluate", str(out), "--truth", str(truth), "--start-layer", "11"]) == 1
    assert "start layer 11 not predicted" in capsys.readouterr().err

    sweep = tmp_path / "sweep"
    assert main(["export", str(out), "--out", str(sweep), "--images", "none", "--quiet"]) == 0
    assert sorted(p.name for p in sweep.iterdir()) == ["pred_sweep.gif"]
    with Image.open(sweep / "pred_sweep.gif") as gif:
        assert gif.n_frames == 3  # one frame per start layer
    assert main(["export", str(out), "--images", "jpg"]) == 1
    assert capsys.readouterr().err.count("\n") == 1  # one line, no traceback


def test_evaluate_defaults_to_the_calibrated_threshold(sample_dir, tmp_path, capsys):
    import torch

    from napari_inkdetect.models import InkDetector, save_checkpoint

    torch.manual_seed(0)
    model = InkDetector("resnet10", width=0.125)
    metrics = {"best_threshold": 0.37, "best_f05": 0.6, "f05": 0.5, "threshold": 0.5}
    kw = {"tile_size": 64, "in_layers": 8, "start_layer": 10}
    calibrated = save_checkpoint(
        tmp_path / "best.safetensors", model, provenance={"metrics": metrics}, **kw
    )
    plain = save_checkpoint(tmp_path / "plain.safetensors", model, **kw)
    truth = ["--truth", str(sample_dir / "synthetic_inklabels.png")]
    for ckpt in (calibrated, plain):
        out = str(tmp_path / f"{ckpt.stem}.zarr")
        argv = ["predict", str(sample_dir), "--checkpoint", str(ckpt), "--out", out,
                "--region", "0,0,96,128", "--quiet"]  # fmt: skip
        assert main(argv) == 0
    pred = str(tmp_path / "best.zarr")
    capsys.readouterr()

    def rows(*extra):
        assert main(["evaluate", pred, *truth, "--json", *extra]) == 0
        return json.loads(capsys.readouterr().out)

    default, given = rows(), rows("--threshold", "0.6")
    assert [(r["threshold"], r["threshold_source"]) for r in default] == [
        (0.37, "checkpoint validation")
    ]
    assert [(r["threshold"], r["threshold_source"]) for r in given] == [(0.6, "given")]
    assert rows("--threshold", "0.37")[0]["f05"] == default[0]["f05"]

    assert main(["evaluate", pred, *truth]) == 0
    table = capsys.readouterr().out
    assert "threshold 0.37 (from the checkpoint's validation" in table and "F0.5@0.37" in table
    assert main(["evaluate", pred, *truth, "--threshold", "0.6"]) == 0
    assert "threshold 0.60 (given with --threshold)" in capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "plain.zarr"), *truth]) == 0
    table = capsys.readouterr().out
    assert "threshold 0.50 (the default" in table and "F0.5@0.50" in table
    assert main(["evaluate", pred, *truth, "--threshold", "1.5"]) == 1
    assert "threshold 1.5: must lie in 0..1" in capsys.readouterr().err


def test_predict_bad_inputs(sample_dir, tmp_path, capsys):
    assert main(["predict", str(sample_dir), "--checkpoint", str(tmp_path / "none.safetensors"),
                 "--out", str(tmp_path / "p.zarr")]) == 1  # fmt: skip
    assert "none.safetensors" in capsys.readouterr().err
    assert main(["predict", str(sample_dir), "--checkpoint", "x", "--out", "y",
                 "--region", "1,2,3"]) == 1  # fmt: skip
    assert "--region '1,2,3': expected 4 comma-separated integers" in capsys.readouterr().err

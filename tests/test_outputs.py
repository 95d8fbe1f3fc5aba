"""Outputs that cannot be written: a path under a regular file, a read-only folder or file
system, a full disk, the output folder removed mid-run. Each ends with one line (CLI: one line
on stderr, exit 1, no traceback); what was finished stays valid; no half-written file looks
valid, and a rerun after the fix finishes the job identically."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zarr
from fuzz.records import recorded

from napari_inkdetect._writer import write_labels_layer
from napari_inkdetect.cli import main
from napari_inkdetect.engine import drain
from napari_inkdetect.errors import InkDetectError
from napari_inkdetect.export import export
from napari_inkdetect.export.config import export_config
from napari_inkdetect.inference import ChunkDone, PredictConfig, predict
from napari_inkdetect.models import load_checkpoint
from napari_inkdetect.training import StepDone, TrainConfig, train

ONE_LINE = "one line on stderr, exit 1, no traceback; nothing else changed"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    import torch

    from napari_inkdetect.models import InkDetector, save_checkpoint
    from napari_inkdetect.synthetic import make_segment, write_segment

    root = tmp_path_factory.mktemp("outputs")
    segment = write_segment(make_segment(shape=(12, 96, 128), seed=2), root)
    torch.manual_seed(0)
    model = InkDetector("resnet10", width=0.125)
    checkpoint = save_checkpoint(root / "tiny.safetensors", model, tile_size=64, in_layers=8)
    prediction = drain(predict(_engine(segment, checkpoint, root / "pred.zarr"))).path
    return {"root": root, "segment": segment, "checkpoint": checkpoint, "prediction": prediction}


def _engine(segment: Path, checkpoint: Path, out: Path, **kw) -> PredictConfig:
    """A prediction of 12 chunks of 32 x 32 px (so a run can fail half-way)."""
    base = dict(segment=str(segment), checkpoint=str(checkpoint), out=str(out), tile=64,
                chunk=32, device="cpu", autocast="off", start_layers=(2, 3))  # fmt: skip
    return PredictConfig(**{**base, **kw})


def _train_config(inputs, out: Path, **kw) -> TrainConfig:
    segment = inputs["segment"]
    base = dict(segment=str(segment), labels=str(segment / "synthetic_train_labels.png"),
                out=str(out), arch="resnet10", width=0.125, start_layer=2, layers=8, tile=64,
                steps=4, batch_size=2, lr=1e-3, val_every=100, save_every=2, device="cpu",
                autocast="off")  # fmt: skip
    return TrainConfig(**{**base, **kw})


def _predict_argv(inputs, out: Path, *extra: str) -> list[str]:
    ckpt = str(inputs["checkpoint"])
    return ["predict", str(inputs["segment"]), "--checkpoint", ckpt, "--out", str(out),
            "--start-layers", "2", "--device", "cpu", "--quiet", *extra]  # fmt: skip


def _train_argv(inputs, out: Path) -> list[str]:
    segment = inputs["segment"]
    return ["train", str(segment), "--labels", str(segment / "synthetic_train_labels.png"),
            "--out", str(out), "--arch", "resnet10", "--width", "0.125", "--tile", "64",
            "--layers", "8", "--start-layer", "2", "--steps", "2", "--batch-size", "2",
            "--device", "cpu", "--quiet"]  # fmt: skip


def _export_argv(inputs, out: Path) -> list[str]:
    return ["export", str(inputs["prediction"]), "--out", str(out), "--quiet"]


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        rc = main(argv)
    except Exception as exc:  # what escapes main is a traceback for the user
        return -1, f"traceback ({type(exc).__name__}: {exc})"
    return rc, capsys.readouterr().err


def _outcome(rc: int, err: str) -> str:
    if rc == -1:
        return err
    if rc == 0:
        return "accepted (should be refused)"
    lines = err.strip().splitlines()
    return (
        "one-line error" if len(lines) == 1 and "Traceback" not in err else f"{len(lines)} lines"
    )


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --------------------------------------------------------------------------- under a file


CLI_CASES = {
    "predict --out under a regular file": lambda i, f: _predict_argv(i, f / "o.zarr"),
    "train --out under a regular file": lambda i, f: _train_argv(i, f / "run"),
    "export --out under a regular file": lambda i, f: _export_argv(i, f / "export"),
    "export --out is a regular file": lambda i, f: _export_argv(i, f),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_output_under_a_regular_file(inputs, case, tmp_path, capsys):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    with recorded(case, "CLI", ONE_LINE) as outcome:
        rc, err = _cli(CLI_CASES[case](inputs, blocker), capsys)
        outcome["observed"] = _outcome(rc, err)
        assert outcome["observed"] == "one-line error", err
        assert "notes.txt" in err
        assert blocker.read_text() == "mine" and _listing(tmp_path) == ["notes.txt"]


@pytest.mark.parametrize("name", ["l.png", "x_inklabels.png", "l.tif"])
def test_labels_saved_under_a_regular_file(name, tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    labels = np.zeros((8, 8), np.uint8)
    labels[2:4, 2:4] = 1
    case = f"labels save ({'villa pair' if 'inklabels' in name else name[-3:]}) under a file"
    with recorded(case, "napari writer / Labels dock", "one-line error") as outcome:
        with pytest.raises(InkDetectError) as info:
            write_labels_layer(str(blocker / name), labels, {})
        outcome["observed"] = "one-line error" if "\n" not in str(info.value) else "lines"
        assert "notes.txt" in str(info.value)
        assert _listing(tmp_path) == ["notes.txt"]


def test_predict_images_where_their_folder_is_a_file(inputs, tmp_path, capsys):
    (tmp_path / "o_png").write_text("mine")
    case = "predict --format png where the image folder is a regular file"
    with recorded(case, "CLI", "one-line error; the zarr is kept") as outcome:
        rc, err = _cli(_predict_argv(inputs, tmp_path / "o.zarr", "--format", "png"), capsys)
        outcome["observed"] = _outcome(rc, err)
        assert outcome["observed"] == "one-line error", err
        assert (tmp_path / "o_png").read_text() == "mine"
        assert zarr.open_group(tmp_path / "o.zarr", mode="r")["done"][...].all()


# --------------------------------------------------------------------------- read-only


NOBODY = 65534
CHILD = textwrap.dedent(
    """
    import contextlib, io, json, os, sys
    from napari_inkdetect.cli import main
    import napari_inkdetect.training.preflight, napari_inkdetect.training.trainer, tqdm
    cases, warm, drop = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3] == "1"
    for argv in warm:  # as root: every lazy import is done before the privileges go
        with contextlib.redirect_stdout(io.StringIO()):
            main(argv)
    if drop:
        os.setgid({uid}); os.setuid({uid})
    results = {{}}
    for name, argv in cases.items():
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                rc = main(argv)
            results[name] = [rc, err.getvalue()]
        except BaseException as exc:
            results[name] = [-1, f"traceback ({{type(exc).__name__}}: {{exc}})"]
    print(json.dumps(results))
    """
).format(uid=NOBODY)


@pytest.fixture(scope="module")
def read_only_results(inputs, tmp_path_factory) -> tuple[dict[str, list], Path]:
    """Every CLI output case run once, in one child process, into a folder it may not write
    (the test runner is root, so the child drops to ``nobody`` first)."""
    root = tmp_path_factory.mktemp("read-only")
    for path in (root, inputs["segment"], inputs["checkpoint"], inputs["prediction"]):
        _world_readable(path)
    locked = root / "locked"
    locked.mkdir()
    (locked / "old_labels.png").write_bytes(b"")
    locked.chmod(0o555)
    cases = {
        name.replace("under a regular file", "in a read-only folder"): make(inputs, locked)
        for name, make in CLI_CASES.items()
        if "under a regular file" in name
    }
    warm = [_predict_argv(inputs, root / "warm.zarr"), _export_argv(inputs, root / "warm-export")]
    drop = os.geteuid() == 0
    run = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(cases), json.dumps(warm), "1" if drop else "0"],
        capture_output=True, text=True, timeout=120, cwd=root,
        env={**os.environ, "HOME": str(root)},
    )  # fmt: skip
    if run.returncode != 0 or not run.stdout.strip():
        pytest.fail(f"child failed: {run.stderr[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1]), locked


def tempfile_root() -> str:
    import tempfile

    return tempfile.gettempdir()


def _world_readable(path: Path) -> None:
    """Let an unprivileged child read ``path`` (its parent folders in the temp dir become
    traversable, not listable)."""
    top = Path(tempfile_root())
    for folder in path.parents:
        if folder != top and top in folder.parents:
            folder.chmod(stat.S_IMODE(folder.stat().st_mode) | 0o711)
    for p in [path, *(path.rglob("*") if path.is_dir() else [])]:
        p.chmod(stat.S_IMODE(p.stat().st_mode) | (0o755 if p.is_dir() else 0o644))


@pytest.mark.parametrize(
    "case", [n.replace("under a regular file", "in a read-only folder")
             for n in CLI_CASES if "is a regular file" not in n],
)  # fmt: skip
def test_cli_output_in_a_read_only_folder(read_only_results, case):
    results, locked = read_only_results
    rc, err = results[case]
    who = "as an unprivileged user" if os.geteuid() == 0 else ""
    with recorded(case, f"CLI {who}".strip(), ONE_LINE) as outcome:
        outcome["observed"] = _outcome(rc, err)
        assert outcome["observed"] == "one-line error", err
        assert "locked" in err and ("Permission denied" in err or "read-only" in err), err
        assert _listing(locked) == ["old_labels.png"]


# --------------------------------------------------------------------------- small file systems


@contextlib.contextmanager
def small_disk(path: Path, kib: int, read_only: bool = False) -> Iterator[Path]:
    """A real tmpfs of ``kib`` KiB at ``path`` (skips where it cannot be mounted: not root)."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={kib}k" + (",ro" if read_only else "")
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                           capture_output=True, text=True)  # fmt: skip
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mount.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def resize(path: Path, kib: int, read_only: bool = False) -> None:
    options = f"remount,size={kib}k" + (",ro" if read_only else ",rw")
    subprocess.run(["mount", "-o", options, str(path)], check=True, capture_output=True)


def test_cli_outputs_on_a_read_only_file_system(inputs, tmp_path, capsys):
    with small_disk(tmp_path / "ro", 256) as disk:
        (disk / "labels.png").write_bytes(b"old")
        resize(disk, 256, read_only=True)
        for case, make in CLI_CASES.items():
            if "is a regular file" in case:
                continue
            case = case.replace("under a regular file", "on a read-only file system")
            with recorded(case, "CLI", ONE_LINE) as outcome:
                rc, err = _cli(make(inputs, disk), capsys)
                outcome["observed"] = _outcome(rc, err)
                assert outcome["observed"] == "one-line error", err
                assert "Read-only file system" in err
        case = "labels saved over a file on a read-only file system"
        with recorded(case, "napari writer / Labels dock", "one-line error; old file kept"):
            with pytest.raises(InkDetectError, match="labels.png.*Read-only"):
                write_labels_layer(str(disk / "labels.png"), np.ones((4, 4), np.uint8), {})
            assert (disk / "labels.png").read_bytes() == b"old"
        assert _listing(disk) == ["labels.png"]


def _partials(folder: Path) -> list[str]:
    marks = (".partial", ".tmp", ".pending")  # zarr's, atomic_path's and the trainer's
    return [p.name for p in folder.rglob("*") if any(m in p.name for m in marks)]


def test_prediction_on_a_full_disk_resumes_identically(inputs, tmp_path):
    clean = _prob(drain(predict(_engine(inputs["segment"], inputs["checkpoint"],
                                         tmp_path / "clean.zarr"))).path)  # fmt: skip
    case = "predict: the disk fills up half-way through"
    expected = "one-line error; finished chunks valid; a rerun resumes to the same result"
    with small_disk(tmp_path / "disk", 88) as disk, recorded(case, "engine", expected) as outcome:
        config = _engine(inputs["segment"], inputs["checkpoint"], disk / "o.zarr")
        with pytest.raises(InkDetectError) as info:
            for _ in predict(config):
                pass
        message = str(info.value)
        assert "\n" not in message and "o.zarr" in message and "No space left" in message
        done = zarr.open_group(disk / "o.zarr", mode="r")["done"][...]
        assert 0 < done.sum() < done.size, "the disk should fill up half-way"
        partial = _prob(disk / "o.zarr")
        for cy, cx in zip(*np.nonzero(done), strict=True):  # finished chunks are right
            box = np.s_[:, cy * 32 : cy * 32 + 32, cx * 32 : cx * 32 + 32]
            np.testing.assert_array_equal(partial[box], clean[box])
        assert _partials(disk) == []
        resize(disk, 4096)
        drain(predict(config))
        np.testing.assert_array_equal(_prob(disk / "o.zarr"), clean)
        outcome["observed"] = f"one-line error after {done.sum()}/{done.size} chunks; resumed"


def _prob(path: Path) -> np.ndarray:
    return zarr.open_group(path, mode="r")["prob"][...]


def test_training_on_a_full_disk_keeps_its_checkpoint(inputs, tmp_path):
    """The disk fills up at the second checkpoint: the first stays valid and resumable."""
    probe = tmp_path / "probe"
    drain(train(_train_config(inputs, probe, steps=1)))
    names = ("config.json", "metrics.jsonl", "last.safetensors", "last.state.pt")
    sizes = {name: (probe / name).stat().st_size for name in names}
    pages = sum(-(-s // 4096) for s in sizes.values())
    kib = 4 * (pages + 4) + sizes["last.safetensors"] // 2048  # free: half a checkpoint
    case = "train: the disk fills up at a checkpoint"
    expected = "one-line error; the previous checkpoint stays valid; --resume finishes"
    with small_disk(tmp_path / "disk", kib) as disk, recorded(case, "engine", expected) as outcome:
        config = _train_config(inputs, disk / "run", steps=2, save_every=1)
        with pytest.raises(InkDetectError) as info:
            for _ in train(config):
                pass
        message = str(info.value)
        assert "\n" not in message and "run" in message and "No space left" in message
        assert _partials(disk) == []
        model, _ = load_checkpoint(disk / "run" / "last.safetensors")
        assert model.info.provenance["steps"] == 1
        resize(disk, 8192)
        drain(train(config.with_(resume=True)))
        model, _ = load_checkpoint(disk / "run" / "last.safetensors")
        assert model.info.provenance["steps"] == 2
        outcome["observed"] = "one-line error at step 2; step-1 checkpoint kept; resumed"


def test_export_and_labels_on_a_full_disk(inputs, tmp_path):
    with small_disk(tmp_path / "disk", 32) as disk:
        (disk / "labels.png").write_bytes(b"old")
        (disk / "fill").write_bytes(b"\0" * (disk_free(disk) - 8192))
        case = "export: the disk fills up while writing images / the GIF"
        with recorded(case, "engine", "one-line error; no half-written file") as outcome:
            with pytest.raises(InkDetectError, match="No space left") as info:
                drain(
                    export(
                        export_config(inputs["prediction"], disk / "export", images=("png", "tif"))
                    )
                )
            assert "\n" not in str(info.value)
            outcome["observed"] = "one-line error"
        assert _partials(disk) == []
        big = np.random.default_rng(0).integers(0, 3, (256, 256)).astype(np.uint8)
        case = "labels saved over a file on a full disk"
        with recorded(case, "napari writer / Labels dock", "one-line error; old file kept"):
            with pytest.raises(InkDetectError, match="labels.png.*No space left"):
                write_labels_layer(str(disk / "labels.png"), big, {})
            assert (disk / "labels.png").read_bytes() == b"old"
        assert _partials(disk) == []


def disk_free(path: Path) -> int:
    return shutil.disk_usage(path).free


def test_cli_predict_over_the_file_size_limit(inputs, tmp_path):
    """A full disk as far as the process can tell (``RLIMIT_FSIZE``): works without root."""
    code = textwrap.dedent(
        """
        import resource, signal, sys
        from napari_inkdetect.cli import main
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))
        sys.exit(main(sys.argv[1:]))
        """
    )
    argv = _predict_argv(inputs, tmp_path / "o.zarr", "--region", "0,0,96,128")
    case = "predict over the process's file size limit (RLIMIT_FSIZE)"
    with recorded(case, "CLI (child process)", ONE_LINE) as outcome:
        run = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True,
                             text=True, timeout=120)  # fmt: skip
        outcome["observed"] = _outcome(run.returncode, run.stderr)
        if run.returncode not in (0, 1):
            outcome["observed"] = f"traceback or crash (exit {run.returncode})"
        assert outcome["observed"] == "one-line error", run.stderr
        assert "File too large" in run.stderr and "o.zarr" in run.stderr


# --------------------------------------------------------------------------- removed mid-run


def test_prediction_folder_removed_mid_run(inputs, tmp_path):
    config = _engine(inputs["segment"], inputs["checkpoint"], tmp_path / "o.zarr")
    case = "predict: the output zarr is removed mid-run"
    with recorded(case, "engine", "one-line error; nothing recreated") as outcome:
        with pytest.raises(InkDetectError) as info:
            for event in predict(config):
                if isinstance(event, ChunkDone) and (tmp_path / "o.zarr").exists():
                    shutil.rmtree(tmp_path / "o.zarr")
        assert "\n" not in str(info.value) and "o.zarr" in str(info.value)
        assert _listing(tmp_path) == [], "a removed output must not be recreated in pieces"
        outcome["observed"] = "one-line error; nothing recreated"


def test_run_folder_removed_mid_run(inputs, tmp_path):
    config = _train_config(inputs, tmp_path / "run")
    case = "train: the run folder is removed mid-run"
    with recorded(case, "engine", "one-line error; nothing recreated") as outcome:
        with pytest.raises(InkDetectError) as info:
            for event in train(config):
                if isinstance(event, StepDone) and event.step == 1:
                    shutil.rmtree(tmp_path / "run")
        assert "\n" not in str(info.value) and "run" in str(info.value)
        assert _listing(tmp_path) == [], "a removed run folder must not be recreated in pieces"
        outcome["observed"] = "one-line error; nothing recreated"

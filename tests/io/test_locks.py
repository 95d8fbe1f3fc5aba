"""Two runs, one output: a prediction zarr or a run folder that another process is writing is
refused with a message naming it (pid, host, command); a lock left by a killed process is taken
over; of processes racing for one lock exactly one wins."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from fuzz.records import recorded
from model_files import save_tiny_checkpoint

from napari_inkdetect.cli import main
from napari_inkdetect.engine import drain
from napari_inkdetect.errors import ConfigError
from napari_inkdetect.inference import PredictConfig, predict, prepare_output
from napari_inkdetect.io.locks import OutputLock, lock_path, read_owner

REFUSED = "refused in one line naming the other run (pid, host)"


def _owner_file(target: Path, **fields) -> Path:
    lock = lock_path(target)
    data = {"pid": os.getpid(), "host": socket.gethostname(), "started": "2026-01-01T02:00:00",
            "command": "napari-inkdetect predict", "token": "t0", **fields}  # fmt: skip
    lock.write_text(json.dumps(data))
    return lock


def test_lock_names_its_owner_and_goes_away(tmp_path):
    target = tmp_path / "o.zarr"
    with OutputLock(target, "prediction") as lock:
        owner = read_owner(lock_path(target))
        assert (owner.pid, owner.host) == (os.getpid(), socket.gethostname())
        assert lock.path.name == ".o.zarr.lock" and not target.exists()
        lock.verify()
    assert not lock_path(target).exists()


def test_a_lock_held_in_this_process_is_refused_too(tmp_path):
    """The Predict dock runs predictions in threads of one process: two into one zarr clash."""
    with recorded("second writer in the same process (two docks)", "io.locks", REFUSED):
        with OutputLock(tmp_path / "o.zarr"), pytest.raises(ConfigError) as info:
            OutputLock(tmp_path / "o.zarr").acquire()
        assert f"pid {os.getpid()}" in str(info.value) and "\n" not in str(info.value)


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    dead = int(child.stdout)
    target = tmp_path / "o.zarr"
    _owner_file(target, pid=dead)
    with recorded("stale lock: its process is gone", "io.locks", "taken over") as outcome:
        with OutputLock(target) as lock:
            assert read_owner(lock.path).pid == os.getpid()
        outcome["observed"] = "taken over"


def test_lock_of_a_reused_pid_is_stale(tmp_path):
    """A pid that runs again, but another process (its start time differs), is not the owner."""
    target = tmp_path / "o.zarr"
    _owner_file(target, pid=os.getppid(), process_start=1)
    case = "stale lock: its pid now belongs to another process"
    with recorded(case, "io.locks", "taken over"), OutputLock(target) as lock:
        assert read_owner(lock.path).pid == os.getpid()


def test_lock_of_another_host_is_not_guessed_at(tmp_path):
    target = tmp_path / "o.zarr"
    lock = _owner_file(target, host="gpu-node-7")
    with recorded("lock held by a run on another machine", "io.locks", REFUSED + ", how to clear"):
        with pytest.raises(ConfigError) as info:
            OutputLock(target).acquire()
        message = str(info.value)
        assert "gpu-node-7" in message and f"delete {lock}" in message and "\n" not in message
        assert lock.exists()


@pytest.mark.parametrize("age", [0, 60], ids=["fresh", "old"])
def test_unreadable_lock_file(tmp_path, age):
    """Killed between creating and filling its lock: stale once old, else still starting."""
    target = tmp_path / "o.zarr"
    lock = lock_path(target)
    lock.write_text("")
    os.utime(lock, (time.time() - age, time.time() - age))
    case = f"empty lock file, {'just written' if age == 0 else 'a minute old'}"
    with recorded(case, "io.locks", "refused" if age == 0 else "taken over"):
        if age == 0:
            with pytest.raises(ConfigError, match="just starting"):
                OutputLock(target).acquire()
        else:
            with OutputLock(target):
                assert read_owner(lock).pid == os.getpid()


def test_verify_notices_the_lock_was_taken(tmp_path):
    case = "lock removed or taken over while running"
    with recorded(case, "io.locks", "one-line error"), OutputLock(tmp_path / "o.zarr") as lock:
        lock.path.unlink()
        with pytest.raises(ConfigError, match="gone or belongs to another run"):
            lock.verify()


def test_lock_that_cannot_be_created(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with (
        recorded("lock under a regular file", "io.locks", "one-line error"),
        pytest.raises(ConfigError, match="notes.txt is a file"),
    ):
        OutputLock(tmp_path / "notes.txt" / "o.zarr").acquire()


RACER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from napari_inkdetect.errors import ConfigError
    from napari_inkdetect.io.locks import OutputLock
    go = Path(sys.argv[2])
    while not go.exists():
        time.sleep(0.001)
    try:
        lock = OutputLock(sys.argv[1]).acquire()
        print("won", flush=True)
        sys.stdin.readline()
        lock.release()
    except ConfigError:
        print("lost", flush=True)
    """
)


def test_racing_processes_one_wins(tmp_path):
    go = tmp_path / "go"
    argv = [sys.executable, "-c", RACER, str(tmp_path / "o.zarr"), str(go)]
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
    racers = [subprocess.Popen(argv, **pipes) for _ in range(4)]
    time.sleep(1.0)  # all of them waiting for the start signal
    go.touch()
    with recorded("four processes take one lock at once", "io.locks", "exactly one wins"):
        results = [r.stdout.readline().strip() for r in racers]
        for r in racers:
            r.communicate("\n", timeout=30)
        assert sorted(results) == ["lost", "lost", "lost", "won"], results
    assert not lock_path(tmp_path / "o.zarr").exists()


# --------------------------------------------------------------------------- real runs


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:

    from napari_inkdetect.synthetic import make_segment, write_segment

    root = tmp_path_factory.mktemp("locks")
    segment = write_segment(make_segment(shape=(12, 96, 128), seed=4), root)
    checkpoint = save_tiny_checkpoint(root / "tiny.safetensors", in_layers=8)
    return {"segment": segment, "checkpoint": checkpoint}


def _config(inputs, out: Path) -> PredictConfig:
    return PredictConfig(
        segment=str(inputs["segment"]), checkpoint=str(inputs["checkpoint"]), out=str(out),
        tile=64, chunk=32, device="cpu", autocast="off", start_layers=(2, 3),
    )  # fmt: skip


PAUSED = textwrap.dedent(
    """
    import json, sys
    kind, config = sys.argv[1], json.loads(sys.argv[2])
    if kind == "predict":
        from napari_inkdetect.inference import ChunkDone as Event, PredictConfig, predict
        events = predict(PredictConfig.from_dict(config))
    else:
        from napari_inkdetect.training import CheckpointSaved as Event, TrainConfig, train
        events = train(TrainConfig.from_dict(config))
    for event in events:
        if isinstance(event, Event):
            print("working", flush=True)
            sys.stdin.readline()  # paused mid-run, lock held, until killed
    """
)


def _paused(kind: str, config) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, "-c", PAUSED, kind, json.dumps(config.to_dict())],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    line = child.stdout.readline()
    assert line.strip() == "working", child.stderr.read()
    return child


def _kill(child: subprocess.Popen) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)


def _prob(path: Path) -> np.ndarray:
    return zarr.open_group(path, mode="r")["prob"][...]


def test_second_predict_into_a_zarr_being_written(inputs, tmp_path, capsys):
    out = tmp_path / "o.zarr"
    clean = drain(predict(_config(inputs, tmp_path / "clean.zarr"))).path
    child = _paused("predict", _config(inputs, out))
    try:
        case = "second predict into a zarr another process is writing"
        with recorded(case, "CLI", REFUSED) as outcome:
            ckpt = str(inputs["checkpoint"])
            argv = ["predict", str(inputs["segment"]), "--checkpoint", ckpt, "--out", str(out),
                    "--start-layers", "2", "--device", "cpu", "--quiet"]  # fmt: skip
            capsys.readouterr()
            assert main(argv) == 1
            err = capsys.readouterr().err
            assert f"pid {child.pid}" in err and socket.gethostname() in err, err
            assert err.count("\n") == 1
            outcome["observed"] = "refused in one line naming pid and host"
        case = "cluster prediction into a zarr another process is writing"
        with (
            recorded(case, "prepare_output (cluster driver)", REFUSED),
            pytest.raises(ConfigError, match=f"pid {child.pid}"),
        ):
            prepare_output(_config(inputs, out))
    finally:
        _kill(child)
    case = "predict again after the writer was killed (stale lock, half-done zarr)"
    with recorded(case, "engine", "lock taken over; resumes to the same result") as outcome:
        done = zarr.open_group(out, mode="r")["done"][...]
        assert 0 < done.sum() < done.size
        drain(predict(_config(inputs, out)))
        np.testing.assert_array_equal(_prob(out), _prob(clean))
        assert not lock_path(out).exists()
        outcome["observed"] = f"took over, resumed from {done.sum()}/{done.size} chunks"


def test_second_train_into_a_run_folder_being_written(inputs, tmp_path, capsys):
    from napari_inkdetect.models import load_checkpoint
    from napari_inkdetect.training import TrainConfig, train

    segment = inputs["segment"]
    run = tmp_path / "run"
    labels = str(segment / "synthetic_train_labels.png")
    config = TrainConfig(
        segment=str(segment), labels=labels, out=str(run), arch="resnet10", width=0.125,
        start_layer=2, layers=8, tile=64, steps=4, batch_size=2, lr=1e-3, val_every=100,
        save_every=1, device="cpu", autocast="off",
    )  # fmt: skip
    child = _paused("train", config)
    try:
        argv = ["train", str(segment), "--labels", labels, "--out", str(run), "--width",
                "0.125", "--tile", "64", "--layers", "8", "--start-layer", "2", "--steps", "2",
                "--batch-size", "2", "--device", "cpu", "--quiet"]  # fmt: skip
        for resume in (False, True):
            case = "second train into a run folder being written" + (" (--resume)" * resume)
            with recorded(case, "CLI", REFUSED):
                capsys.readouterr()
                assert main(argv + ["--resume"] * resume) == 1
                err = capsys.readouterr().err
                assert f"pid {child.pid}" in err and err.count("\n") == 1, err
        before = (run / "config.json").read_text()
    finally:
        _kill(child)
    assert (run / "config.json").read_text() == before, "the refused run changed the folder"
    case = "train --resume after the trainer was killed (stale lock)"
    with recorded(case, "engine", "lock taken over; the run resumes to its last step"):
        drain(train(config.with_(resume=True)))
        model, _ = load_checkpoint(run / "last.safetensors")
        assert model.info.provenance["steps"] == 4
        assert not lock_path(run).exists()

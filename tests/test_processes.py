"""Event generators in a spawned child: relay, stop, errors and crashes cross cleanly."""

from __future__ import annotations

import os
import threading

import pytest

from napari_inkdetect.errors import ChildCrashedError, LabelsError
from napari_inkdetect.processes import run_in_child


def test_events_are_relayed_from_another_process():
    ticks = list(run_in_child("_child_targets:count", {"n": 5}))
    assert [t.i for t in ticks] == [0, 1, 2, 3, 4]
    assert {t.pid for t in ticks} != {os.getpid()}


def test_stop_ends_the_child_early():
    stop = threading.Event()
    seen = []
    for tick in run_in_child("_child_targets:count", {"n": 1000, "sleep": 0.01}, stop=stop):
        seen.append(tick.i)
        if tick.i == 3:
            stop.set()
    assert 4 <= len(seen) < 100


def test_package_errors_keep_type_and_message():
    with pytest.raises(LabelsError, match="labels.png: no ink pixels"):
        list(run_in_child("_child_targets:fail", {}))


def test_crashed_child_is_reported_not_hung_on():
    with pytest.raises(
        ChildCrashedError, match=r"crash process ended unexpectedly \(exit code 3\)"
    ):
        list(run_in_child("_child_targets:crash", {}))


def test_training_runs_in_a_child_and_returns_a_loadable_checkpoint(tmp_path):
    from napari_inkdetect.models import InkDetector
    from napari_inkdetect.synthetic import make_segment, write_segment
    from napari_inkdetect.training import StepDone, TrainConfig, TrainFinished

    folder = write_segment(make_segment(shape=(12, 96, 128)), tmp_path, "s")
    config = TrainConfig(
        segment=str(folder), labels=str(folder / "s_train_labels.png"), out=str(tmp_path / "r"),
        arch="resnet10", width=0.125, layers=8, tile=64, steps=3, batch_size=2, device="cpu",
    )  # fmt: skip
    events = list(run_in_child("napari_inkdetect.training:train", config))
    assert [e.step for e in events if isinstance(e, StepDone)] == [1, 2, 3]
    finished = events[-1]
    assert isinstance(finished, TrainFinished)
    assert InkDetector.from_checkpoint(finished.last_path).width == 0.125

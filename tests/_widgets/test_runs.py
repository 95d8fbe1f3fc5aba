"""The run controller every dock uses: events routed on the GUI thread, the button through
idle / busy / stopping, errors as notifications and status lines, and an owner that goes away."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest
from qtpy.QtWidgets import QLabel, QProgressBar, QPushButton, QWidget

from napari_inkdetect._widgets._runs import RunController
from napari_inkdetect.errors import InkDetectError

TIMEOUT_MS = 10_000


@dataclass(frozen=True)
class Tick:
    i: int


@dataclass(frozen=True)
class Other:
    pass


def ticks(n: int, stop: threading.Event):
    """``n`` ticks and an ``Other``; returns how it ended."""
    for i in range(n):
        if stop.is_set():
            return "stopped"
        yield Tick(i)
    yield Other()
    return "done"


def until_stopped(started: threading.Event, stop: threading.Event):
    """Ticks until asked to stop (then returns "stopped")."""
    started.set()
    while not stop.wait(0.01):
        yield Tick(0)
    return "stopped"


def failing(error: Exception, stop: threading.Event):
    raise error
    yield  # a generator function


@pytest.fixture
def owner(qtbot):
    widget = QWidget()
    qtbot.addWidget(widget)
    widget.button, widget.status = QPushButton("Go", widget), QLabel("", widget)
    widget.progress = QProgressBar(widget)
    return widget


def controller(owner, **kwargs) -> RunController:
    return RunController(
        button=owner.button, status=owner.status, progress=owner.progress, parent=owner, **kwargs
    )


def test_events_go_to_their_handlers_and_the_button_comes_back(owner, qtbot):
    seen, returned, done = [], [], []
    run = controller(
        owner, on_returned=returned.append, on_done=lambda: done.append(owner.button.text())
    )
    run.on_event = {Tick: seen.append}  # other event types are ignored
    worker = run.start(ticks, 3, total=3)
    assert run.running and run.worker is worker
    assert owner.button.text() == "Stop" and owner.button.isEnabled()
    assert (owner.progress.maximum(), owner.progress.value()) == (3, 0)
    with pytest.raises(InkDetectError, match="already"):
        run.start(ticks, 1)
    qtbot.waitUntil(lambda: not run.running, timeout=TIMEOUT_MS)
    assert seen == [Tick(0), Tick(1), Tick(2)] and returned == ["done"]
    assert done == ["Go"] and owner.button.isEnabled()  # reset before on_done runs
    assert run.error is None and run.last_stall_ms is not None


def test_stop_ends_the_run_through_its_event(owner, qtbot):
    returned = []
    run = controller(owner, on_returned=lambda value: returned.append((value, run.stop_requested)))
    started = threading.Event()
    run.start(until_stopped, started)
    assert started.wait(5)
    run.stop(show=False)  # a run about to be replaced: the button still says Stop
    assert owner.button.text() == "Stop" and owner.button.isEnabled()
    qtbot.waitUntil(lambda: not run.running, timeout=TIMEOUT_MS)
    assert returned == [("stopped", True)] and not run.stop_requested

    started.clear()
    run.start(until_stopped, started)
    assert started.wait(5)
    run.stop()  # the user's Stop
    assert owner.button.text() == "Stopping..." and not owner.button.isEnabled()
    qtbot.waitUntil(lambda: not run.running, timeout=TIMEOUT_MS)
    assert owner.button.text() == "Go" and owner.button.isEnabled()


def test_errors_are_notified_and_shown_in_the_status(owner, qtbot, notifications):
    run = controller(owner)
    run.start(failing, InkDetectError("no such prediction: x.zarr"))
    qtbot.waitUntil(lambda: not run.running, timeout=TIMEOUT_MS)
    assert run.error == "no such prediction: x.zarr"  # ours: the message as it is
    assert owner.status.text() == "Error: no such prediction: x.zarr"
    run.start(failing, ValueError("bad value"))
    qtbot.waitUntil(lambda: not run.running, timeout=TIMEOUT_MS)
    assert run.error == "ValueError: bad value"  # anything else names its type
    assert [str(n.message) for n in notifications][-2:] == [
        "no such prediction: x.zarr",
        "ValueError: bad value",
    ]
    assert owner.button.text() == "Go" and owner.button.isEnabled()
    plain = controller(owner, as_is=(Exception,))
    plain.start(failing, ValueError("bad value"))
    qtbot.waitUntil(lambda: not plain.running, timeout=TIMEOUT_MS)
    assert plain.error == "bad value"


def test_a_run_without_stop_disables_its_button(owner, qtbot):
    run = controller(owner, busy_text="Finding...", stoppable=False)
    run.start(ticks, 1)
    assert owner.button.text() == "Finding..." and not owner.button.isEnabled()
    qtbot.waitUntil(lambda: not run.running, timeout=TIMEOUT_MS)
    assert owner.button.text() == "Go" and owner.button.isEnabled()


def test_a_gone_owner_stops_the_run_and_hears_nothing_more(qtbot):
    seen, done = [], []
    owner = QWidget()
    run = RunController(seen.append, on_done=lambda: done.append(True), parent=owner)
    started = threading.Event()
    worker = run.start(until_stopped, started)
    assert started.wait(5)
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT_MS):
        owner.deleteLater()  # its destroyed signal sets the run's stop event
    count = len(seen)
    qtbot.wait(50)
    assert not run.alive and len(seen) == count and done == []

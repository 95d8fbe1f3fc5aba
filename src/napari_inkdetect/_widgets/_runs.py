"""What the docks share about runs: stoppable workers, a stall meter and per-viewer state.

``StoppableWorker.quit()`` sets the run's stop event, because napari calls ``quit()`` on running
workers when its window closes and a plain quit only abandons the generator at its next yield
(the engine would keep going). ``StallMeter`` measures how long the Qt event loop was blocked.
``session(viewer)`` carries the last finetuned checkpoint from the Finetune to the Predict dock.
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from napari.qt.threading import GeneratorWorker, create_worker
from psygnal import Signal
from qtpy.QtCore import QObject, QThreadPool, QTimer


def make_room_in_thread_pool(spare: int = 3) -> None:
    """Keep ``spare`` threads free in Qt's global pool before starting a long worker.

    napari workers run in ``QThreadPool.globalInstance()``, whose size is the core count, and
    Qt itself uses that pool (e.g. ``QImage`` format conversions when a window repaints, which
    block the GUI thread until a pool thread runs them). On a 2-core machine a training relay
    plus a preview prediction filled the pool and froze napari for good; found by the
    workflow test.
    """
    pool = QThreadPool.globalInstance()
    needed = pool.activeThreadCount() + 1 + spare
    if pool.maxThreadCount() < needed:
        pool.setMaxThreadCount(needed)


class StoppableWorker(GeneratorWorker):
    """A generator worker whose ``quit()`` asks the engine to stop instead of abandoning it."""

    stop_event: threading.Event | None = None

    def start(self) -> None:
        """Start in Qt's global pool, leaving room for Qt's own work there."""
        make_room_in_thread_pool()
        super().start()

    def quit(self) -> None:
        """Ask the engine to stop after its current step or batch."""
        if self.stop_event is not None:
            self.stop_event.set()


def stoppable_worker(
    function: Any, *args: Any, connect: dict[str, Any]
) -> tuple[StoppableWorker, threading.Event]:
    """A not-yet-started worker running ``function(*args, stop)`` with its ``stop`` event
    (set by ``quit()``, the dock's Stop button and the dock's destruction)."""
    stop = threading.Event()
    worker = create_worker(
        function, *args, stop, _worker_class=StoppableWorker, _start_thread=False, _connect=connect
    )
    worker.stop_event = stop
    return worker, stop


@dataclass
class RunState:
    """Plain state a widget's ``destroyed`` handler may touch after the Qt object is gone."""

    stop: threading.Event | None = None
    alive: bool = True

    def on_destroyed(self, *_: Any) -> None:
        """The dock (or its viewer) is gone: stop the run, and ignore its remaining events."""
        self.alive = False
        if self.stop is not None:
            self.stop.set()


class StallMeter(QObject):
    """The longest time the GUI event loop went without running a 10 ms timer.

    A timer that fires late by ``x`` ms means the loop was blocked for about ``x`` ms: the
    figure users feel as a frozen window. Started and stopped around each run.
    """

    def __init__(self, interval_ms: int = 10, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.interval_ms = interval_ms
        self.longest_ms = 0.0
        self.ticks = 0
        self.lates: list[float] = []
        self._last = 0.0
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)

    @property
    def running(self) -> bool:
        return self._timer.isActive()

    def start(self) -> None:
        """Reset and start measuring."""
        self.longest_ms, self.ticks, self.lates = 0.0, 0, []
        self._last = time.perf_counter()
        self._timer.start()

    def stop(self) -> float:
        """Stop measuring; the longest stall in ms."""
        self._timer.stop()
        return self.longest_ms

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile of how late the timer fired (ms)."""
        return float(np.percentile(self.lates, q)) if self.lates else 0.0

    def _tick(self) -> None:
        now = time.perf_counter()
        late = (now - self._last) * 1000.0 - self.interval_ms
        self.longest_ms = max(self.longest_ms, late)
        self.lates.append(late)
        self.ticks += 1
        self._last = now


class Throttle(QObject):
    """Call ``callback`` at most every ``interval_ms`` however often ``request()`` is called
    (the last request is never dropped). Progress widgets repaint synchronously
    (``QProgressBar.setValue``), so per-step updates cost a window repaint each."""

    def __init__(self, callback: Any, interval_ms: int = 250, parent: QObject | None = None):
        super().__init__(parent)
        self.callback, self.interval_ms = callback, interval_ms
        self._last = -1e9
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.flush)

    def request(self) -> None:
        """Ask for a call: now if the last one was long enough ago, else when it is due."""
        if self._timer.isActive():
            return
        wait = self.interval_ms - (time.perf_counter() - self._last) * 1000
        self._timer.start(int(max(0, wait)))

    def flush(self) -> None:
        """Call now (and cancel a pending call)."""
        self._timer.stop()
        self._last = time.perf_counter()
        self.callback()


class Session:
    """Per-viewer state shared by the docks (the Predict dock preselects the last checkpoint)."""

    checkpoint_changed = Signal(object)  # Path of the newest finetuned checkpoint

    def __init__(self) -> None:
        self.last_checkpoint: Path | None = None
        self.training_start_layer: int | None = None

    def set_checkpoint(self, path: Path, start_layer: int | None) -> None:
        """A finetune produced ``path`` (trained on the window at ``start_layer``)."""
        self.last_checkpoint = Path(path)
        self.training_start_layer = start_layer
        self.checkpoint_changed.emit(self.last_checkpoint)


_SESSIONS: dict[int, Session] = {}


def session(viewer: Any) -> Session:
    """The docks' shared state for ``viewer`` (created on first use, dropped with it)."""
    key = id(viewer)
    if key not in _SESSIONS:
        _SESSIONS[key] = Session()
        weakref.finalize(viewer, _SESSIONS.pop, key, None)
    return _SESSIONS[key]

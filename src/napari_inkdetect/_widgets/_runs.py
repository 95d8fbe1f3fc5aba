"""What the docks share about runs: one run controller, stoppable workers, a stall meter and
per-viewer state.

:class:`RunController` owns a run from start to cleanup, the same way in every dock (training,
prediction, export, the ink-depth estimate). ``StoppableWorker.quit()`` sets the run's stop
event, because napari calls ``quit()`` on running workers when its window closes and a plain
quit only abandons the generator at its next yield (the engine would keep going).
``StallMeter`` measures how long the Qt event loop was blocked. ``session(viewer)`` carries the
last finetuned checkpoint from the Finetune to the Predict dock.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from napari.qt.threading import GeneratorWorker, create_worker
from psygnal import Signal
from qtpy.QtCore import QEvent, QObject, QThreadPool, QTimer
from qtpy.QtWidgets import QLabel, QProgressBar, QPushButton, QWidget

from napari_inkdetect._widgets._common import show_error
from napari_inkdetect.errors import InkDetectError

STOPPING = "Stopping..."


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
    """Plain state a widget's ``destroyed`` handler may touch after the Qt object is gone.

    ``alive``: the run's events still go to the owner; ``gone``: the owner was destroyed.
    """

    stop: threading.Event | None = None
    alive: bool = True
    gone: bool = False

    def on_destroyed(self, *_: Any) -> None:
        """The dock (or its viewer) is gone: stop the run, and ignore its remaining events."""
        self.gone = True
        self.detach()

    def detach(self) -> None:
        """Stop the run and ignore its remaining events (the owner stays usable)."""
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


def error_message(exc: BaseException, as_is: tuple[type[BaseException], ...]) -> str:
    """A worker's error for the user: the message of ``as_is`` errors (ours: one line with
    the fix), anything else named by its type."""
    return str(exc) if isinstance(exc, as_is) else f"{type(exc).__name__}: {exc}"


class RunController(QObject):
    """One background run at a time, from start to cleanup, the same way in every dock.

    ``start(function, *args)`` runs the generator ``function(*args, stop)`` in a
    :class:`StoppableWorker`. On the GUI thread, each yielded event goes to ``on_event`` (a
    callable, or a mapping from event type to handler; other types are ignored) and the
    generator's return value to ``on_returned``. An error becomes a napari notification and
    ``Error: ...`` in ``status``. ``stop()`` sets the run's stop event: the engine ends after
    its current step and returns. However the worker ends (returned, errored, stopped), the
    state is cleared, ``button`` reads its idle text again and ``on_done()`` runs.

    The owning dock removed from the window (``remove_dock_widget``: it loses its parent, but
    lives on) is a dock nobody sees: its run is stopped and, unless ``events_when_removed``,
    its remaining events are dropped, so a removed dock never adds layers to a viewer that
    may be closed by then, nor races a dock added in its place.

    ``button`` (its text when the controller is made is the idle text) reads ``busy_text``
    during a run: a Stop button if ``stoppable`` (``Stopping...`` and disabled once clicked),
    else disabled. ``progress`` starts each run at 0 of ``total``. The parent's destruction
    (or :meth:`shutdown`) stops the run and drops whatever its worker still sends, so
    nothing touches deleted widgets. Every run measures the GUI's longest stall
    (``last_stall_ms``).
    """

    def __init__(
        self,
        on_event: Callable[[Any], None] | Mapping[type, Callable[[Any], None]] | None = None,
        *,
        on_returned: Callable[[Any], None] | None = None,
        on_done: Callable[[], None] | None = None,
        button: QPushButton | None = None,
        busy_text: str = "Stop",
        stoppable: bool = True,
        status: QLabel | None = None,
        progress: QProgressBar | None = None,
        as_is: tuple[type[BaseException], ...] = (InkDetectError,),
        events_when_removed: bool = False,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.on_event, self.on_returned, self.on_done = on_event, on_returned, on_done
        self.events_when_removed = events_when_removed
        self.button, self.status, self.progress = button, status, progress
        self.idle_text = button.text() if button is not None else ""
        self.busy_text, self.stoppable, self.as_is = busy_text, stoppable, as_is
        self.worker: StoppableWorker | None = None
        self.error: str | None = None
        self.stall = StallMeter(parent=self)
        self.last_stall_ms: float | None = None
        # plain state: the parent's ``destroyed`` handler must work once the Qt objects are gone
        self._state = RunState()
        if parent is not None:
            parent.destroyed.connect(self._state.on_destroyed)
        self._dock = _owning_widget(parent)
        if self._dock is not None:
            self._dock.installEventFilter(self)

    @property
    def running(self) -> bool:
        """Whether a run is in progress (its worker has not finished)."""
        return self.worker is not None

    @property
    def alive(self) -> bool:
        """False once the owner is gone: late events are dropped."""
        return self._state.alive

    def owner_open(self) -> Callable[[], bool]:
        """A plain callable, safe from any thread and after the owner is destroyed: whether
        the owner still hears the run (not destroyed, not taken out of the window during it;
        a run asks when it ends, e.g. whether to keep its cluster for the next one)."""
        state = self._state
        return lambda: state.alive and not state.gone

    @property
    def stop_requested(self) -> bool:
        """Whether the running run was asked to stop."""
        return self._state.stop is not None and self._state.stop.is_set()

    def start(self, function: Callable[..., Any], *args: Any, total: int = 1) -> StoppableWorker:
        """Run ``function(*args, stop)`` in a worker; raises if a run is going on."""
        if self.running:
            raise InkDetectError("a run is already going on: stop it first")
        self._state.alive = not self._state.gone  # a dock added again hears its new run
        worker, self._state.stop = stoppable_worker(
            function,
            *args,
            connect={
                "yielded": self._on_yielded,
                "returned": self._on_returned,
                "errored": self._on_errored,
                "finished": self._on_finished,
            },
        )
        self.worker, self.error = worker, None
        if self.button is not None:
            self.button.setText(self.busy_text)
            self.button.setEnabled(self.stoppable)
        if self.progress is not None:
            self.progress.setRange(0, total)
            self.progress.setValue(0)
        self.stall.start()
        worker.start()
        return worker

    def stop(self, show: bool = True) -> None:
        """Ask the engine to stop after its current step; ``show``: the button says so
        (not for a run about to be replaced by the next one)."""
        if self._state.stop is not None:
            self._state.stop.set()
        if show and self.running and self.button is not None:
            self.button.setText(STOPPING)
            self.button.setEnabled(False)

    def shutdown(self) -> None:
        """The owner is going away: stop, and ignore whatever the worker still sends."""
        self._state.on_destroyed()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        """The owning dock taken out of the window during a run: stop it (see the class)."""
        removed = event.type() == QEvent.Type.ParentChange and watched.parent() is None
        if removed and self.running:
            if self.events_when_removed:
                self.stop(show=False)
            else:
                self._state.detach()
        return False

    def _on_yielded(self, event: Any) -> None:
        if not self._state.alive:
            return
        route = self.on_event
        handler = route.get(type(event)) if isinstance(route, Mapping) else route
        if handler is not None:
            handler(event)

    def _on_returned(self, value: Any) -> None:
        if self._state.alive and self.on_returned is not None:
            self.on_returned(value)

    def _on_errored(self, exc: Exception) -> None:
        if self._state.alive:
            self.error = error_message(exc, self.as_is)
            show_error(self.error, self.status)

    def _on_finished(self) -> None:
        self._state.stop = None
        self.worker = None
        self.last_stall_ms = self.stall.stop()
        if self._state.gone:
            return
        if self.button is not None:  # also for a removed dock: it may be added again
            self.button.setText(self.idle_text)
            self.button.setEnabled(True)
        if self._state.alive and self.on_done is not None:
            self.on_done()


def _owning_widget(obj: QObject | None) -> QWidget | None:
    """The widget ``obj`` belongs to: itself, or its nearest widget ancestor (the dock)."""
    while obj is not None and not isinstance(obj, QWidget):
        obj = obj.parent()
    return obj


class RunOwner:
    """Mixed into whatever owns a :class:`RunController` as ``self.run`` (a dock, a runner):
    the run's state under the names its callers (and the tests) use."""

    run: RunController

    @property
    def running(self) -> bool:
        """Whether a run is in progress (its worker has not finished)."""
        return self.run.running

    @property
    def worker(self) -> StoppableWorker | None:
        """The running run's worker (``None`` between runs)."""
        return self.run.worker

    @property
    def stall(self) -> StallMeter:
        """The GUI stall meter of the runs."""
        return self.run.stall

    @property
    def last_stall_ms(self) -> float | None:
        """The longest GUI stall of the last run (ms)."""
        return self.run.last_stall_ms


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

"""Run an event generator in a spawned child process and relay its events.

Training and prediction run in a child so the GUI's interpreter is never held by the GIL and
GPU memory is returned to the system when a run ends. The child runs
``target(config, stop=stop_event)`` and sends each event, then its result, through a queue;
cancellation crosses over as a multiprocessing Event; the package's own errors are re-raised
here with their type and message; a child that dies is reported, not waited on forever.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing as mp
import queue
import sys
import threading
import traceback
from collections.abc import Generator
from typing import Any

from napari_inkdetect import errors
from napari_inkdetect.engine import drain
from napari_inkdetect.errors import ChildCrashedError, InkDetectError


def run_in_child(
    target: str,
    config: Any,
    stop: threading.Event | None = None,
    poll_s: float = 0.1,
    join_timeout_s: float = 30.0,
) -> Generator[Any, None, Any]:
    """Yield the events of ``target(config, stop=...)`` run in a spawned process and return
    its result (the engine contract, :mod:`napari_inkdetect.engine`).

    ``target`` is ``"package.module:function"`` (importable in a fresh interpreter). Setting
    ``stop`` asks the child to stop; closing this generator does too.
    """
    ctx = mp.get_context("spawn")
    channel = ctx.Queue(maxsize=32)
    child_stop = ctx.Event()
    proc = ctx.Process(
        target=_child_main, args=(target, config, channel, child_stop), name=f"inkdetect:{target}"
    )
    proc.daemon = True
    proc.start()
    try:
        while True:
            if stop is not None and stop.is_set():
                child_stop.set()
            try:
                kind, payload = channel.get(timeout=poll_s)
            except queue.Empty:
                if not proc.is_alive():
                    raise ChildCrashedError(
                        f"the {target.rsplit(':', 1)[-1]} process ended unexpectedly "
                        f"(exit code {proc.exitcode})"
                    ) from None
                continue
            if kind == "event":
                yield payload
            elif kind == "error":
                raise rebuild_error(*payload)
            else:
                return payload  # the engine's result
    finally:
        child_stop.set()
        _drain(channel)
        proc.join(timeout=join_timeout_s)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=5)


def _child_main(target: str, config: Any, channel: Any, stop: Any) -> None:
    module_name, func_name = target.split(":")
    try:
        func = getattr(importlib.import_module(module_name), func_name)
        result = drain(func(config, stop=stop), lambda event: channel.put(("event", event)))
        channel.put(("done", result))
    except InkDetectError as exc:
        channel.put(("error", (type(exc).__name__, str(exc))))
    except BaseException as exc:  # report anything, the parent must never hang
        traceback.print_exc(file=sys.stderr)
        channel.put(("error", ("InkDetectError", f"{type(exc).__name__}: {exc}")))
    finally:
        channel.close()
        channel.join_thread()


def rebuild_error(type_name: str, message: str) -> InkDetectError:
    cls = getattr(errors, type_name, None)
    if not (isinstance(cls, type) and issubclass(cls, InkDetectError)):
        cls = InkDetectError
    return cls(message)


def _drain(channel: Any) -> None:
    with contextlib.suppress(Exception):
        while True:
            channel.get_nowait()

"""The engine contract: every long operation is a generator of events that returns a result.

``fn(config, stop=None) -> Generator[Event, None, Result]``: training, prediction and export
all have this shape. A caller that wants progress looks at the events; the result is the
generator's return value (``StopIteration.value``), which :func:`drain` hands back. Where the
work runs (this process, a child process, dask workers) is part of the config, so the CLI, the
tests, a child process and the docks all drive engines the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, Protocol, TypeVar

__all__ = ["Engine", "drain"]

R = TypeVar("R")


class Engine(Protocol):
    """A long operation: events while it runs, its result at the end."""

    def __call__(
        self, config: Any, stop: Any = None
    ) -> Generator[Any, None, Any]: ...  # pragma: no cover - typing only


def drain(events: Generator[Any, None, R], on_event: Callable[[Any], None] | None = None) -> R:
    """Run an engine's generator to its end, passing each event to ``on_event``; returns the
    engine's result. Closing happens on any error, so an engine's cleanup always runs."""
    try:
        while True:
            try:
                event = next(events)
            except StopIteration as finished:
                return finished.value
            if on_event is not None:
                on_event(event)
    finally:
        events.close()

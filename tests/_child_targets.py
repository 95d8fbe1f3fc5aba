"""Event generators run in child processes by tests/test_processes.py."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from napari_inkdetect.errors import LabelsError


@dataclass(frozen=True)
class Tick:
    i: int
    pid: int


def count(config: dict, stop) -> object:
    for i in range(config["n"]):
        if stop.is_set():
            return
        yield Tick(i, os.getpid())
        time.sleep(config.get("sleep", 0))


def fail(config: dict, stop) -> object:
    yield Tick(0, os.getpid())
    raise LabelsError("labels.png: no ink pixels")


def crash(config: dict, stop) -> object:
    yield Tick(0, os.getpid())
    os._exit(3)

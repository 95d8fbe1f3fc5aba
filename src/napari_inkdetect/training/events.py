"""The typed events a training run yields, one frozen dataclass per kind.

Errors are not events: a run that cannot go on raises an :class:`~napari_inkdetect.errors.
InkDetectError` (bad input, NaN loss, out of memory at batch 1), so every driver handles
failure the same way it handles any other call that fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TrainStarted:
    """The run is set up: ``params`` trainable parameters on ``device``."""

    config: Any
    total_steps: int
    device: str
    params: int
    start_step: int = 0


@dataclass(frozen=True)
class StepDone:
    """One optimiser step; ``eta_s`` never increases (mean step time x steps left)."""

    step: int
    total: int
    loss: float
    lr: float
    tiles_per_s: float
    eta_s: float


@dataclass(frozen=True)
class Validated:
    """Scores on the validation labels after ``step`` steps."""

    step: int
    f05: float
    best_f05: float
    best_threshold: float
    precision: float
    recall: float


@dataclass(frozen=True)
class CheckpointSaved:
    """A checkpoint was written atomically; ``kind`` is ``"last"`` or ``"best"``."""

    path: Path
    step: int
    kind: str


@dataclass(frozen=True)
class BatchHalved:
    """Out of GPU memory: the batch is split into ``accumulation`` micro-batches of
    ``new_batch`` tiles, so the effective batch (and the result) stays the same."""

    new_batch: int
    accumulation: int


@dataclass(frozen=True)
class TrainFinished:
    """The run ended (all steps, or ``stopped`` early by request); the result paths."""

    run_dir: Path
    best_path: Path | None
    last_path: Path
    steps: int
    seconds: float
    stopped: bool = False

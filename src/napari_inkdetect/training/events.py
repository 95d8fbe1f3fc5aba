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
    """The run is set up: ``params`` trainable parameters on ``device``; ``notes``: the
    settings taken from the initial checkpoint or a preset, and where given ones contradict
    it (one line each)."""

    config: Any
    total_steps: int
    device: str
    params: int
    start_step: int = 0
    notes: tuple[str, ...] = ()


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
class ValidationPlanned:
    """What validation will measure: ``source`` "given", "auto" (held-out ink groups in dense
    boxes) or "none"; ``dense`` when not-ink is painted next to the ink, so a halo counts;
    ``summary`` is the line to show beside the score (the reason, when there is none)."""

    source: str
    n_groups: int
    n_ink: int
    n_not_ink: int
    dense: bool
    summary: str


@dataclass(frozen=True)
class Validated:
    """Scores on the validation region after ``step`` steps; ``n_groups`` held-out ink groups
    and ``n_ink``/``n_not_ink`` pixels beside them; ``border_fp`` is the share of not-ink in
    the 16 px band inside the mask's border called ink at 0.5 (None: no border in view).
    ``chance_f05`` is what calling every pixel ink scores on the same pixels: a model near
    it has learnt nothing, whatever the number looks like (it rises with the ink fraction)."""

    step: int
    f05: float
    best_f05: float
    best_threshold: float
    precision: float
    recall: float
    n_groups: int = 0
    n_ink: int = 0
    n_not_ink: int = 0
    dense: bool = False
    border_fp: float | None = None
    chance_f05: float = 0.0


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

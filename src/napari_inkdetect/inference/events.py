"""What a prediction reports while it runs (the engine contract's events and result).

A run yields :class:`PredictStarted`, then :class:`BatchDone` per model batch (or per chunk on
a cluster, counting windows either way) and :class:`ChunkDone` per written output chunk
(:class:`ClusterReady` once on a cluster), and :class:`PredictFinished` last, which is also the
generator's return value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "BatchDone",
    "ChunkDone",
    "ClusterReady",
    "PredictBatchHalved",
    "PredictFinished",
    "PredictStarted",
]


@dataclass(frozen=True)
class PredictStarted:
    """Set up; ``total_tiles`` counts model inputs (positions x start layers x TTA) still to
    run, ``shape`` is the output ``(n_start, H, W)`` whose pixel (0, 0) is volume
    ``(region[0], region[1])``."""

    path: Path
    shape: tuple[int, int, int]
    region: tuple[int, int, int, int]
    start_layers: tuple[int, ...]
    total_tiles: int
    total_chunks: int
    done_chunks: int
    device: str
    dtype: str


@dataclass(frozen=True)
class BatchDone:
    """One model batch finished (progress; the place where ``stop`` is honoured)."""

    done: int
    total: int
    tiles_per_s: float
    eta_s: float


@dataclass(frozen=True)
class ChunkDone:
    """An output chunk is on disk: ``array`` (n_start, h, w) in the stored dtype sits at
    ``[:, y0:y0+h, x0:x0+w]`` of the output (region coordinates)."""

    index: tuple[int, int]
    y0: int
    x0: int
    array: np.ndarray = field(repr=False)
    done: int
    total: int
    tiles_per_s: float


@dataclass(frozen=True)
class PredictFinished:
    """The run ended (all chunks, or ``stopped`` early with finished chunks kept)."""

    path: Path
    seconds: float
    tiles_per_s: float
    tiles: int
    stopped: bool = False


@dataclass(frozen=True)
class ClusterReady:
    """The cluster runs the job: its scheduler ``address``, the number of ``workers``, their
    ``devices`` (e.g. ``("cuda:0",)`` or ``("cpu",)``), the ``dashboard_link`` (None without
    one) and whether the cluster was started here (``local``, closed at the end)."""

    address: str
    workers: int
    devices: tuple[str, ...]
    dashboard_link: str | None
    local: bool


@dataclass(frozen=True)
class PredictBatchHalved:
    """Out of device memory: the model now sees ``new_batch`` windows per call (the result is
    the same; only slower). Yielded before the batch that needed it is reported."""

    new_batch: int

"""Prediction in this process: the local driver and the one-chunk task of a dask worker.

Each output chunk is written, then flagged done, before any event reports it, so a stopped,
killed or closed run keeps every finished chunk and a rerun resumes from there;
:func:`predict_chunk` computes one chunk from plain arguments (the task of a dask worker).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_inkdetect.host_memory import bound_heap
from napari_inkdetect.inference.blending import Blender, forward_fitting
from napari_inkdetect.inference.config import PredictConfig
from napari_inkdetect.inference.events import (
    BatchDone,
    ChunkDone,
    PredictBatchHalved,
    PredictFinished,
    PredictStarted,
)
from napari_inkdetect.inference.job import PredictJob, cached_job, open_job, prepare_output
from napari_inkdetect.inference.pipeline import batches, prefetch
from napari_inkdetect.io.locks import OutputLock
from napari_inkdetect.io.prediction_store import done_flags, reopen_store, write_chunk

__all__ = ["pending_chunks", "predict_chunk", "run_here", "run_job"]


def run_here(
    config: PredictConfig, stop: threading.Event | None = None
) -> Generator[Any, None, PredictFinished]:
    """Predict in this process (the model on ``config.device``)."""
    stop = stop or threading.Event()
    bound_heap()  # peak RSS independent of the region's size (host_memory)
    job = None
    try:
        job = open_job(config)
        with OutputLock(config.out, "prediction"):  # a second writer is refused (io.locks)
            return (yield from run_job(job, stop))
    finally:
        _release(job)


def _release(job: PredictJob | None) -> None:
    if job is not None and job.device.type == "cuda":
        job.model = None
        torch.cuda.empty_cache()


def _write(job: PredictJob, root: Any, chunk: tuple[int, int], data: np.ndarray) -> None:
    write_chunk(root, Path(job.config.out), chunk, job.chunk_box(*chunk), data, job.chunk)


def run_job(job: PredictJob, stop: threading.Event) -> Generator[Any, None, PredictFinished]:
    """Predict an opened job into its output (the caller holds the output's lock); a
    benchmark swaps ``job.model`` for a null module to time the host pipeline alone."""
    root = prepare_output(job)
    all_chunks = job.pending()
    chunks = job.pending(done_flags(root))
    total = job.windows_in(chunks)
    yield PredictStarted(
        Path(job.config.out), job.shape, job.region, job.start_layers, total,
        len(all_chunks), len(all_chunks) - len(chunks), str(job.device), job.config.dtype,
    )  # fmt: skip
    started, done, chunks_done = time.perf_counter(), 0, len(all_chunks) - len(chunks)
    blender, producer_stop = Blender(job), threading.Event()
    queued = prefetch(batches(job, chunks, producer_stop), job.config.prefetch, producer_stop)
    try:
        for batch in queued:
            if stop.is_set():
                break
            probs, halved = forward_fitting(job, batch)
            if halved is not None:
                yield PredictBatchHalved(halved)
            finished = blender.add(batch, probs)
            for chunk, data in finished:  # on disk before any yield: a closed driver loses none
                _write(job, root, chunk, data)
            done += len(batch.rows)
            rate = done / max(time.perf_counter() - started, 1e-9)
            yield BatchDone(done, total, rate, (total - done) / max(rate, 1e-9))
            for chunk, data in finished if job.config.chunk_events else ():
                chunks_done += 1
                y0, x0, _, _ = job.chunk_box(*chunk)
                yield ChunkDone(chunk, y0, x0, data, chunks_done, len(all_chunks), rate)
    finally:
        queued.close()
    seconds = time.perf_counter() - started
    stopped = len(job.pending(done_flags(root))) > 0
    result = PredictFinished(
        Path(job.config.out), seconds, done / max(seconds, 1e-9), done, stopped
    )
    yield result
    return result


def pending_chunks(config: PredictConfig | dict[str, Any]) -> list[tuple[int, int]]:
    """Chunks still to compute (run :func:`prepare_output` first): the task list of a
    distributed run, each task ``predict_chunk(config, index)``."""
    job = cached_job(config)
    return job.pending(done_flags(reopen_store(Path(job.config.out), job.fingerprint())))


def predict_chunk(
    config: PredictConfig | dict[str, Any], index: tuple[int, int], write: bool = True
) -> np.ndarray | None:
    """Compute one output chunk from plain arguments (a task for a distributed scheduler).

    The job (model included) is cached per process. With ``write`` the chunk and its done flag
    go to the output made by :func:`prepare_output`; returns the encoded chunk (None when the
    chunk has no tile inside the mask).
    """
    job = cached_job(config)
    index = (int(index[0]), int(index[1]))
    if not job.chunk_tiles(*index):
        return None
    blender = Blender(job)
    result = None
    for batch in batches(job, [index], threading.Event()):
        for _, data in blender.add(batch, forward_fitting(job, batch)[0]):
            result = data
    if write:
        _write(job, reopen_store(Path(job.config.out), job.fingerprint()), index, result)
    return result

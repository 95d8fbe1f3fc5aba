"""The host side of prediction: windows read from the segment, batched, prefetched.

For several start layers each tile position's layers ``min(start) .. max(start) + layers`` are
read once and all of its windows go through the model together. A prefetch thread reads and
normalises the next batches into a bounded queue while the model runs.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from napari_inkdetect.inference.job import PredictJob
from napari_inkdetect.window_tensors import to_model_input
from napari_inkdetect.windows import read_raw

__all__ = ["Batch", "batches", "prefetch", "windows"]


@dataclass
class Batch:
    inputs: torch.Tensor  # (B, 1, L, T, T)
    rows: list[tuple[tuple[int, int], int, int, int, int]]  # chunk, ky, kx, start i, tta j
    finished: list[tuple[int, int]]  # chunks whose windows all lie in this or earlier batches


def _tile_stack(job: PredictJob, ky: int, kx: int) -> tuple[np.ndarray | torch.Tensor, bool]:
    """Layers ``min(start) .. max(start) + layers`` of one tile position, read once (shifted
    by the spec's ``source_offset`` with legacy depth scaling).

    Pointwise normalisation without depth resampling is applied to the whole stack (each
    window is then a slice of it); otherwise the raw stack is returned for per-window prep.
    """
    spec, starts = job.spec, job.start_layers
    first = min(starts) + spec.source_offset  # legacy depth scaling reads a centred part
    depth = max(starts) - min(starts) + spec.source_layers
    y0, x0 = job.region[0] + ky * job.stride, job.region[1] + kx * job.stride
    raw = read_raw(job.segment, first, y0, x0, spec, n_layers=depth)
    shared = spec.normalisation.kind != "percentile" and not spec.depth_scale
    return (to_model_input(raw, spec) if shared else raw), shared


def windows(job: PredictJob, ky: int, kx: int) -> Iterator[tuple[int, int, torch.Tensor]]:
    """``(start index, tta index, (L, T, T) input)`` of every window at one tile position."""
    stack, shared = _tile_stack(job, ky, kx)
    first, spec = min(job.start_layers), job.spec
    for i, start in enumerate(job.start_layers):
        off = start - first
        if shared:
            x = stack[off : off + spec.layers]
        else:
            x = to_model_input(stack[off : off + spec.source_layers], spec)
        if job.reverse:
            x = x.flip(0)
        for j, (k, flip) in enumerate(job.transforms):
            xt = torch.rot90(x, k, dims=(-2, -1)) if k else x
            yield i, j, (xt.flip(-1) if flip else xt)


def batches(
    job: PredictJob, chunks: Iterable[tuple[int, int]], stop: threading.Event
) -> Iterator[Batch]:
    """Full batches of windows in chunk order, each naming the chunks it completes.

    Batches run across chunk borders (no half-empty batch per chunk); one window is held back
    so that a chunk's completion always rides with the batch holding its last window.
    """
    size, pin = job.config.batch_size, job.device.type == "cuda"
    xs: list[torch.Tensor] = []
    rows: list = []
    waiting: list[tuple[tuple[int, int], int]] = []  # chunk, windows added up to its end
    counts = {"added": 0, "emitted": 0}

    def emit(n: int) -> Batch:
        x = torch.stack(xs[:n])[:, None]
        counts["emitted"] += n
        finished = [c for c, end in waiting if end <= counts["emitted"]]
        waiting[:] = [(c, end) for c, end in waiting if end > counts["emitted"]]
        batch = Batch(x.pin_memory() if pin else x, rows[:n], finished)
        del xs[:n], rows[:n]
        return batch

    for chunk in chunks:
        for ky, kx in job.chunk_tiles(*chunk):
            if stop.is_set():
                return
            for i, j, x in windows(job, ky, kx):
                xs.append(x)
                rows.append((chunk, ky, kx, i, j))
                counts["added"] += 1
                if len(xs) > size:
                    yield emit(size)
        waiting.append((chunk, counts["added"]))
    while xs:
        yield emit(min(size, len(xs)))


def prefetch(source: Iterator[Batch], depth: int, stop: threading.Event) -> Iterator[Batch]:
    """Run ``source`` in a thread, ``depth`` batches ahead; errors re-raise here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    end = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            with torch.inference_mode():
                for batch in source:
                    if not put(batch):
                        return
            put(end)
        except BaseException as exc:  # handed to the consumer, re-raised there
            put(exc)

    thread = threading.Thread(target=work, name="inkdetect-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            _drain(q)
            thread.join(timeout=0.05)


def _drain(q: queue.Queue) -> None:
    try:
        while True:
            q.get_nowait()
    except queue.Empty:
        pass

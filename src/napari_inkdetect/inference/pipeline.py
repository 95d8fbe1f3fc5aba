"""The host side of prediction: windows read from the segment, batched, prefetched, and
assembled into model inputs on the model's device.

The host does only what the device cannot: reading. With the 4th-place intensity pipeline
(pointwise shift and clip, no resampling) each row of tile positions of a chunk is read as one
band of the layers ``min(start) .. max(start) + layers`` and clipped to uint8 in place; each
tile position's layer stack is a view of it, packed once per batch (pinned on CUDA). Every
start layer and TTA variant of a position is cut from that stack on the device
(:func:`assemble`), where the division by 255, the depth reversal and the TTA run. A float32
window is 4x the bytes of a uint8 one; a window per start layer and TTA variant is
``windows_per_tile`` x more.

Percentile normalisation, in-plane scaling and legacy depth scaling keep the float path: the
host prepares float32 inputs (per position, or per window when the normalisation is not
pointwise) and the device only cuts, reverses and transforms them. Both paths give the model
bit-identical inputs. A prefetch thread builds the next batches into a bounded queue while
the model runs.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from napari_inkdetect.inference.job import PredictJob
from napari_inkdetect.window_tensors import from_uint8, to_model_input
from napari_inkdetect.windows import read_padded, read_raw

__all__ = ["Batch", "assemble", "batches", "prefetch", "uint8_path", "windows"]

#: chunk, tile row ky, tile column kx, start layer index i, TTA index j
Row = tuple[tuple[int, int], int, int, int, int]


@dataclass
class Batch:
    """The windows of one model call as the host ships them.

    ``stacks`` holds each tile position's layers once: ``(P, D, e, e)`` uint8 clipped values
    on the uint8 path, float32 model inputs ``(P, D, T, T)`` otherwise. Row ``r`` is the
    window ``stacks[p, off : off + layers]`` with ``(p, off) = sources[r]``, under the TTA
    variant ``job.transforms[rows[r][4]]``.
    """

    stacks: torch.Tensor
    rows: list[Row]
    sources: list[tuple[int, int]]
    finished: list[tuple[int, int]]  # chunks whose windows all lie in this or earlier batches

    def part(self, i: int, j: int) -> Batch:
        """Rows ``i:j`` (the same stacks, no copy): a micro-batch."""
        if i == 0 and j >= len(self.rows):
            return self
        return Batch(self.stacks, self.rows[i:j], self.sources[i:j], [])


def uint8_path(job: PredictJob) -> bool:
    """Whether windows ship as uint8 stacks: pointwise normalisation, no resampling."""
    return job.spec.ships_uint8


# --------------------------------------------------------------------------- host side


def _runs(kxs: list[int]) -> Iterator[list[int]]:
    """Consecutive runs of tile columns: a band never spans masked-out gaps."""
    run: list[int] = []
    for kx in kxs:
        if run and kx != run[-1] + 1:
            yield run
            run = []
        run.append(kx)
    if run:
        yield run


def _band(job: PredictJob, ky: int, run: list[int]) -> np.ndarray:
    """uint8 layers ``min(start) .. max(start) + layers`` of one run of tile positions of
    row ``ky``, read once, zero-padded past the volume (clipped like every other pixel)."""
    spec, starts, s = job.spec, job.start_layers, job.stride
    first, depth = min(starts), max(starts) - min(starts) + spec.layers
    y0, x0 = job.region[0] + ky * s, job.region[1] + run[0] * s
    width = (run[-1] - run[0]) * s + spec.extent
    raw = read_padded(job.segment, (first, first + depth), y0, x0, spec.extent, width)
    return spec.normalisation.to_uint8(raw, overwrite=True)


def _float_stacks(job: PredictJob, ky: int, kx: int) -> Iterator[tuple[np.ndarray, list]]:
    """Float path: one position's inputs and the ``(i, off)`` windows cut from each."""
    spec, starts = job.spec, job.start_layers
    first = min(starts) + spec.source_offset  # legacy depth scaling reads a centred part
    depth = max(starts) - min(starts) + spec.source_layers
    y0, x0 = job.region[0] + ky * job.stride, job.region[1] + kx * job.stride
    raw = read_raw(job.segment, first, y0, x0, spec, n_layers=depth)
    if spec.normalisation.pointwise and not spec.depth_scale:  # normalised once per stack
        offsets = [(i, start - min(starts)) for i, start in enumerate(starts)]
        yield to_model_input(raw, spec).numpy(), offsets
        return
    for i, start in enumerate(starts):
        off = start - min(starts)
        yield to_model_input(raw[off : off + spec.source_layers], spec).numpy(), [(i, 0)]


def _stacks(
    job: PredictJob, chunk: tuple[int, int], tiles: list[tuple[int, int]]
) -> Iterator[tuple[np.ndarray, list[tuple[Row, int]]]]:
    """``(stack, [(row, offset)])`` of every tile position of a chunk, in tile order."""
    n_tta, e, s = len(job.transforms), job.spec.extent, job.stride

    def windows_of(ky: int, kx: int, offsets: list[tuple[int, int]]) -> list[tuple[Row, int]]:
        return [((chunk, ky, kx, i, j), off) for i, off in offsets for j in range(n_tta)]

    if not uint8_path(job):
        for ky, kx in tiles:
            for stack, offsets in _float_stacks(job, ky, kx):
                yield stack, windows_of(ky, kx, offsets)
        return
    starts = job.start_layers
    offsets = [(i, start - min(starts)) for i, start in enumerate(starts)]
    rows: dict[int, list[int]] = {}
    for ky, kx in tiles:
        rows.setdefault(ky, []).append(kx)
    for ky, kxs in rows.items():
        for run in _runs(kxs):
            band = _band(job, ky, run)
            for kx in run:
                x = (kx - run[0]) * s
                yield band[:, :, x : x + e], windows_of(ky, kx, offsets)


def _pack(views: list[np.ndarray], pin: bool) -> torch.Tensor:
    """One contiguous (pinned on CUDA) tensor of the batch's stacks: the only host copy."""
    dtype = torch.from_numpy(views[0][:0, :0, :0]).dtype
    out = torch.empty((len(views), *views[0].shape), dtype=dtype, pin_memory=pin)
    np.stack(views, out=out.numpy())
    return out


def batches(
    job: PredictJob, chunks: Iterable[tuple[int, int]], stop: threading.Event
) -> Iterator[Batch]:
    """Full batches of windows in chunk order, each naming the chunks it completes.

    Batches run across chunk borders (no half-empty batch per chunk); one window is held back
    so that a chunk's completion always rides with the batch holding its last window. A
    position whose windows straddle two batches ships its stack in both.
    """
    size, pin = job.config.batch_size, job.device.type == "cuda"
    queued: deque[tuple[np.ndarray, list[tuple[Row, int]]]] = deque()
    waiting: list[tuple[tuple[int, int], int]] = []  # chunk, windows added up to its end
    counts = {"added": 0, "emitted": 0}

    def emit(n: int) -> Batch:
        views: list[np.ndarray] = []
        rows: list[Row] = []
        sources: list[tuple[int, int]] = []
        while len(rows) < n:
            stack, windows_left = queued[0]
            take = windows_left[: n - len(rows)]
            for row, off in take:
                rows.append(row)
                sources.append((len(views), off))
            views.append(stack)
            del windows_left[: len(take)]
            if not windows_left:
                queued.popleft()
        counts["emitted"] += n
        finished = [c for c, end in waiting if end <= counts["emitted"]]
        waiting[:] = [(c, end) for c, end in waiting if end > counts["emitted"]]
        return Batch(_pack(views, pin), rows, sources, finished)

    for chunk in chunks:
        for stack, windows_here in _stacks(job, chunk, job.chunk_tiles(*chunk)):
            if stop.is_set():
                return
            queued.append((stack, windows_here))
            counts["added"] += len(windows_here)
            while counts["added"] - counts["emitted"] > size:
                yield emit(size)
        waiting.append((chunk, counts["added"]))
    while counts["added"] > counts["emitted"]:
        yield emit(min(size, counts["added"] - counts["emitted"]))


# --------------------------------------------------------------------------- device side


def assemble(job: PredictJob, batch: Batch, stacks: torch.Tensor) -> torch.Tensor:
    """The ``(n, 1, layers, T, T)`` float32 model input of a batch's rows from its stacks
    already on the device: windows cut, uint8 divided, depth reversed, TTA applied."""
    layers = job.spec.layers
    if (
        stacks.shape[1] == layers
        and len(batch.sources) == stacks.shape[0]
        and all(p == r and off == 0 for r, (p, off) in enumerate(batch.sources))
    ):
        x = stacks  # one window per stack, in order: nothing to cut
    else:
        x = torch.stack([stacks[p, off : off + layers] for p, off in batch.sources])
    if x.dtype == torch.uint8:
        x = from_uint8(x, job.spec)
    if job.reverse:
        x = x.flip(1)
    return tta(x, [row[4] for row in batch.rows], job.transforms)[:, None]


def tta(
    x: torch.Tensor, variants: list[int], transforms: tuple[tuple[int, bool], ...], undo=False
) -> torch.Tensor:
    """Each row of ``x`` (..., H, W) under its TTA variant (rot90 k, then flip W), or with
    ``undo`` the inverse: one call per variant, not per row."""
    if len(transforms) == 1 and transforms[0] == (0, False):
        return x
    out = torch.empty_like(x)
    for j, (k, flip) in enumerate(transforms):
        rows = [r for r, v in enumerate(variants) if v == j]
        if not rows:
            continue
        index = torch.tensor(rows, device=x.device)
        part = x.index_select(0, index)
        if undo:
            part = part.flip(-1) if flip else part
            part = torch.rot90(part, -k, dims=(-2, -1)) if k else part
        else:
            part = torch.rot90(part, k, dims=(-2, -1)) if k else part
            part = part.flip(-1) if flip else part
        out[index] = part
    return out


def windows(job: PredictJob, ky: int, kx: int) -> Iterator[tuple[int, int, torch.Tensor]]:
    """``(start index, tta index, (L, T, T) input)`` of every window at one tile position, as
    the model receives them (on the CPU): for tests that compare them with the trainer's."""
    for stack, windows_here in _stacks(job, (0, 0), [(ky, kx)]):
        rows = [row for row, _ in windows_here]
        batch = Batch(
            torch.from_numpy(stack[None]), rows, [(0, off) for _, off in windows_here], []
        )
        for row, x in zip(rows, assemble(job, batch, batch.stacks), strict=True):
            yield row[3], row[4], x[0]


# --------------------------------------------------------------------------- prefetch


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

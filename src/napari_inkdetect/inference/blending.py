"""The model side of prediction: batches through the model, TTA undone, blended per chunk.

Each output chunk blends every tile of the global grid that overlaps it (its halo) in a
chunk-local accumulator, so chunk borders are seamless and memory is bounded by the chunk,
never the region.
"""

from __future__ import annotations

import numpy as np
import torch

from napari_inkdetect.devices import is_out_of_memory
from napari_inkdetect.errors import InkDetectError
from napari_inkdetect.inference.job import PredictJob
from napari_inkdetect.inference.pipeline import Batch
from napari_inkdetect.io.prediction_store import encode
from napari_inkdetect.window_tensors import to_volume_pixels

__all__ = ["Blender", "forward", "forward_fitting"]


def forward(job: PredictJob, batch: Batch) -> np.ndarray:
    """Ink probabilities ``(B, e, e)`` in volume pixels, TTA undone."""
    x = job.speed.prepare_input(batch.inputs.to(job.device, non_blocking=True))
    with torch.inference_mode(), job.speed.autocast_context(job.device):
        logits = job.model(x)
        prob = torch.softmax(logits.float(), 1)[:, 1]
        if len(job.transforms) > 1:
            prob = torch.stack(
                [_undo(p, job.transforms[row[4]]) for p, row in zip(prob, batch.rows, strict=True)]
            )
        return to_volume_pixels(prob, job.spec).cpu().numpy()


def forward_fitting(job: PredictJob, batch: Batch) -> tuple[np.ndarray, int | None]:
    """:func:`forward` in calls of ``job.micro_batch`` windows, halving it on out of device
    memory (as training halves its micro-batch) until the batch fits; returns the
    probabilities and the new micro-batch when it was halved (else None). The result does not
    depend on the split: every window goes through the model on its own row."""
    n, halved = len(batch.rows), None
    job.micro_batch = job.micro_batch or job.config.batch_size
    while True:
        size = min(job.micro_batch, n)
        try:
            parts = [forward(job, _rows(batch, i, i + size)) for i in range(0, n, size)]
            return (parts[0] if len(parts) == 1 else np.concatenate(parts)), halved
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            if size == 1:
                raise InkDetectError(
                    f"out of memory on {job.device} even with one window per model call: use "
                    "a smaller model or tile, free the device, or predict on the CPU"
                ) from None
            if job.device.type == "cuda":
                torch.cuda.empty_cache()
            job.micro_batch = halved = max(1, size // 2)


def _rows(batch: Batch, i: int, j: int) -> Batch:
    """Windows ``i:j`` of a batch (all of it when they are all)."""
    if i == 0 and j >= len(batch.rows):
        return batch
    return Batch(batch.inputs[i:j], batch.rows[i:j], [])


def _undo(prob: torch.Tensor, transform: tuple[int, bool]) -> torch.Tensor:
    k, flip = transform
    prob = prob.flip(-1) if flip else prob
    return torch.rot90(prob, -k, dims=(-2, -1)) if k else prob


class _Accumulator:
    """Chunk-local sums of ``w * p`` per start layer and of ``w``."""

    def __init__(self, job: PredictJob, chunk: tuple[int, int]) -> None:
        self.box = job.chunk_box(*chunk)
        y0, x0, y1, x1 = self.box
        self.sum = np.zeros((len(job.start_layers), y1 - y0, x1 - x0), np.float32)
        self.weight = np.zeros((y1 - y0, x1 - x0), np.float32)
        self.mask = None if job.region_mask is None else job.region_mask[y0:y1, x0:x1]

    def add(self, job: PredictJob, ky: int, kx: int, i: int, j: int, prob: np.ndarray) -> None:
        e, (y0, x0, y1, x1) = job.spec.extent, self.box
        ty, tx = ky * job.stride, kx * job.stride
        sy = slice(max(ty, y0), min(ty + e, y1))
        sx = slice(max(tx, x0), min(tx + e, x1))
        local = (slice(sy.start - y0, sy.stop - y0), slice(sx.start - x0, sx.stop - x0))
        inner = (slice(sy.start - ty, sy.stop - ty), slice(sx.start - tx, sx.stop - tx))
        w = job.weight[inner]
        self.sum[i][local] += prob[inner] * (w / len(job.transforms))
        if i == 0 and j == 0:
            self.weight[local] += w

    def result(self) -> np.ndarray:
        """Blended probabilities; 0 outside the papyrus mask (no ink off the papyrus)."""
        valid = self.weight > 0 if self.mask is None else (self.weight > 0) & self.mask
        out = np.divide(self.sum, self.weight, out=np.zeros_like(self.sum), where=valid)
        return np.clip(out, 0.0, 1.0, out=out)


class Blender:
    """Open chunk accumulators fed batch by batch; hands back chunks as they complete."""

    def __init__(self, job: PredictJob) -> None:
        self.job, self.open = job, {}

    def add(self, batch: Batch, prob: np.ndarray) -> list[tuple[tuple[int, int], np.ndarray]]:
        for (chunk, ky, kx, i, j), p in zip(batch.rows, prob, strict=True):
            acc = self.open.get(chunk) or self.open.setdefault(
                chunk, _Accumulator(self.job, chunk)
            )
            acc.add(self.job, ky, kx, i, j, p)
        return [
            (c, encode(self.open.pop(c).result(), self.job.config.dtype)) for c in batch.finished
        ]

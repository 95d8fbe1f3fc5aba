"""The model side of prediction: batches through the model, TTA undone, blended per chunk,
all on the model's device.

Each output chunk blends every tile of the global grid that overlaps it (its halo) in a
chunk-local accumulator, so chunk borders are seamless and memory is bounded by the chunk,
never the region. The accumulators live on the model's device and a finished chunk is encoded
there: one copy to the host per chunk, of the stored dtype.
"""

from __future__ import annotations

import numpy as np
import torch

from napari_inkdetect.devices import is_out_of_memory
from napari_inkdetect.errors import InkDetectError
from napari_inkdetect.inference.job import PredictJob
from napari_inkdetect.inference.pipeline import Batch, assemble, tta
from napari_inkdetect.window_tensors import to_volume_pixels

__all__ = ["Blender", "encode_on_device", "forward", "forward_fitting"]


def forward(job: PredictJob, batch: Batch, stacks: torch.Tensor | None = None) -> torch.Tensor:
    """Ink probabilities ``(B, e, e)`` in volume pixels on the model's device, TTA undone;
    ``stacks``: the batch's stacks already on the device (moved here when not given)."""
    if stacks is None:
        stacks = batch.stacks.to(job.device, non_blocking=True)
    with torch.inference_mode():
        x = job.speed.prepare_input(assemble(job, batch, stacks))
        with job.speed.autocast_context(job.device):
            logits = job.model(x)
        prob = torch.softmax(logits.float(), 1)[:, 1]
        prob = tta(prob, [row[4] for row in batch.rows], job.transforms, undo=True)
        return to_volume_pixels(prob, job.spec)


def forward_fitting(job: PredictJob, batch: Batch) -> tuple[torch.Tensor, int | None]:
    """:func:`forward` in calls of ``job.micro_batch`` windows, halving it on out of device
    memory (as training halves its micro-batch) until the batch fits; returns the
    probabilities and the new micro-batch when it was halved (else None). The result does not
    depend on the split: every window goes through the model on its own row."""
    n, halved = len(batch.rows), None
    job.micro_batch = job.micro_batch or job.config.batch_size
    stacks = batch.stacks.to(job.device, non_blocking=True)
    while True:
        size = min(job.micro_batch, n)
        try:
            parts = [forward(job, batch.part(i, i + size), stacks) for i in range(0, n, size)]
            return (parts[0] if len(parts) == 1 else torch.cat(parts)), halved
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


def encode_on_device(prob: torch.Tensor, dtype: str) -> np.ndarray:
    """:func:`napari_inkdetect.io.prediction_store.encode` on the device, bit for bit
    (float32 ``p x 255`` rounded half to even, or float16), then one copy to the host."""
    if dtype == "uint8":
        return torch.round(prob * 255.0).clamp_(0, 255).to(torch.uint8).cpu().numpy()
    return prob.to(torch.float16).cpu().numpy()


class _Accumulator:
    """Chunk-local sums of ``w * p`` per start layer and of ``w``, on the device."""

    def __init__(self, blender: Blender, chunk: tuple[int, int]) -> None:
        job, device = blender.job, blender.job.device
        self.box = job.chunk_box(*chunk)
        y0, x0, y1, x1 = self.box
        self.sum = torch.zeros((len(job.start_layers), y1 - y0, x1 - x0), device=device)
        self.weight = torch.zeros((y1 - y0, x1 - x0), device=device)
        mask = None if job.region_mask is None else job.region_mask[y0:y1, x0:x1]
        self.mask = None if mask is None else torch.from_numpy(np.ascontiguousarray(mask))
        self.blender = blender

    def add(self, ky: int, kx: int, i: int, j: int, prob: torch.Tensor) -> None:
        job, (y0, x0, y1, x1) = self.blender.job, self.box
        e, ty, tx = job.spec.extent, ky * job.stride, kx * job.stride
        sy = slice(max(ty, y0), min(ty + e, y1))
        sx = slice(max(tx, x0), min(tx + e, x1))
        local = (slice(sy.start - y0, sy.stop - y0), slice(sx.start - x0, sx.stop - x0))
        inner = (slice(sy.start - ty, sy.stop - ty), slice(sx.start - tx, sx.stop - tx))
        self.sum[i][local] += prob[inner] * self.blender.weight_per_variant[inner]
        if i == 0 and j == 0:
            self.weight[local] += self.blender.weight[inner]

    def result(self) -> np.ndarray:
        """Blended probabilities, encoded; 0 outside the papyrus mask (no ink off the papyrus)."""
        valid = self.weight > 0
        if self.mask is not None:
            valid &= self.mask.to(valid.device)
        out = torch.where(valid, self.sum / self.weight.clamp_min(1e-30), 0.0).clamp_(0.0, 1.0)
        return encode_on_device(out, self.blender.job.config.dtype)


class Blender:
    """Open chunk accumulators fed batch by batch; hands back chunks as they complete."""

    def __init__(self, job: PredictJob) -> None:
        self.job, self.open = job, {}
        self.weight = torch.from_numpy(job.weight).to(job.device)
        self.weight_per_variant = self.weight / len(job.transforms)

    def add(self, batch: Batch, prob: torch.Tensor) -> list[tuple[tuple[int, int], np.ndarray]]:
        for (chunk, ky, kx, i, j), p in zip(batch.rows, prob, strict=True):
            acc = self.open.get(chunk) or self.open.setdefault(chunk, _Accumulator(self, chunk))
            acc.add(ky, kx, i, j, p)
        return [(c, self.open.pop(c).result()) for c in batch.finished]

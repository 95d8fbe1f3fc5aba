"""Training throughput: end-to-end tiles/s (lazy sampling + augmentation + step) against the
step-only ceiling on tensors already in memory. The target ratio is >= 0.8: the prefetch thread
must hide reading and augmenting behind the optimiser step.

    python benchmarks/bench_training.py [--device cpu] [--arch resnet10] [--width 0.25]
        [--tile 128] [--batch 4] [--steps 30]
    python benchmarks/bench_training.py --null-model [--tile 256] [--batch 16]

``--null-model`` times the host's share of a training sample alone (no model, no step): the
sampler's positions and its read of 22-layer windows in one thread (``thread_time``), as
uint8 stacks (what ships to the device since issue 13) and, for comparison, as the float32
model input the host made before. Target (issue 13): <= 2 ms CPU per 22 x 256 x 256 sample,
i.e. >= 500 samples/s with both cores.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from napari_inkdetect.devices import resolve_device
from napari_inkdetect.models import InkDetector
from napari_inkdetect.synthetic import make_segment, write_segment
from napari_inkdetect.training import AugmentConfig, StepDone, TrainConfig, augment_batch, train
from napari_inkdetect.training.loss import sparse_loss


def step_ceiling(args: argparse.Namespace, device: torch.device) -> float:
    """Tiles/s of forward + loss + backward + AdamW on one in-memory batch."""
    torch.manual_seed(0)
    model = InkDetector(args.arch, args.width).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.rand(args.batch, 1, 22, args.tile, args.tile, device=device)
    y = torch.randint(0, 3, (args.batch, args.tile, args.tile), device=device)
    times = []
    for i in range(args.steps):
        t0 = time.perf_counter()
        opt.zero_grad()
        sparse_loss(model(x), y).backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return args.batch * len(times) / sum(times)


def augment_cost(args: argparse.Namespace, device: torch.device) -> float:
    """Seconds to augment one batch with every augmentation on (torch ops on ``device``)."""
    x = torch.rand(args.batch, 1, 22, args.tile, args.tile, device=device)
    y = torch.randint(0, 3, (args.batch, args.tile, args.tile), device=device)
    t0 = time.perf_counter()
    for step in range(10):
        augment_batch(x, y, AugmentConfig(), 0, step)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / 10


def end_to_end(args: argparse.Namespace, folder: Path, out: Path, in_worker: bool | None) -> float:
    """Tiles/s of ``train`` over the last steps (no validation)."""
    seg_ink = args.ink_layers
    cfg = TrainConfig(
        segment=str(folder),
        labels=str(folder / "bench_train_labels.png"),
        out=str(out),
        arch=args.arch,
        width=args.width,
        start_layer=max(0, seg_ink[0] - 6),
        tile=args.tile,
        batch_size=args.batch,
        steps=args.steps,
        val_fraction=0.0,
        val_every=10**9,
        device=args.device,
        autocast="off",
        augment_in_worker=in_worker,
    )
    stamps = [time.perf_counter() for e in train(cfg) if isinstance(e, StepDone)]
    warm = 3
    return args.batch * (len(stamps) - 1 - warm) / (stamps[-1] - stamps[warm])


def host_share(args: argparse.Namespace, seg: object, folder: Path) -> dict[str, float]:
    """CPU ms per sample of the sampler alone (positions + read), uint8 vs float32 stacks."""
    import threading

    from napari_inkdetect.io.segment import open_segment
    from napari_inkdetect.training.sampling import TileSampler
    from napari_inkdetect.window_tensors import to_model_input
    from napari_inkdetect.windows import WindowSpec, read_raw

    spec = WindowSpec(layers=22, tile=args.tile)
    segment = open_segment(folder)
    start = max(0, min(seg.ink_layers[0] - 6, segment.shape[0] - 22))
    sampler = TileSampler(segment, seg.train_labels(3), spec, start, seed=0)

    def float_stacks(corners: list) -> torch.Tensor:  # the host's work before issue 13
        raw = [read_raw(segment, start, y, x, spec) for y, x in corners]
        return to_model_input(__import__("numpy").stack(raw), spec)[:, None].contiguous()

    out: dict[str, float] = {}
    for name, read in (("uint8", lambda c: sampler.read_stacks(c)[0]), ("float32", float_stacks)):
        best = float("inf")
        for repeat in range(4):  # the first pass warms the page cache
            cpu, n = time.thread_time(), 0
            for step in range(args.steps):
                n += read(sampler.positions(1000 * repeat + step, args.batch)).shape[0]
            if repeat:
                best = min(best, 1000 * (time.thread_time() - cpu) / n)
        out[name] = best
    out["threads"] = threading.active_count()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--arch", default="resnet10")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--null-model", action="store_true",
                        help="time the host's share of a sample alone (no model)")  # fmt: skip
    args = parser.parse_args()
    device = resolve_device(args.device)
    seg = make_segment()
    args.ink_layers = seg.ink_layers
    tmp = Path(tempfile.mkdtemp(prefix="bench-training-"))
    folder = write_segment(seg, tmp, "bench")
    if args.null_model:
        h = host_share(args, seg, folder)
        print(f"host share of a training sample, 22 x {args.tile}^2, batch {args.batch}, "
              f"{args.steps} steps, one thread (thread_time)")  # fmt: skip
        for name in ("float32", "uint8"):
            print(f"  {name:8s} stacks {h[name]:6.2f} ms CPU/sample = "
                  f"{1000 / h[name]:7.0f} samples/s per core")  # fmt: skip
        print(f"  ratio float32 / uint8: {h['float32'] / h['uint8']:.2f}  (target <= 2 ms)")
        return
    print(f"device {device}, {args.arch} width {args.width}, tile {args.tile}, batch {args.batch}")
    ceiling = step_ceiling(args, device)
    print(f"step-only ceiling      {ceiling:8.2f} tiles/s")
    aug = augment_cost(args, device)
    print(f"augment one batch      {aug * 1000:8.1f} ms on {device} (torch ops)")
    for label, choice in (("augment in worker", True), ("augment on device", False)):
        rate = end_to_end(args, folder, tmp / f"run-{choice}", choice)
        print(f"end to end, {label}: {rate:8.2f} tiles/s, ratio {rate / ceiling:.2f}")


if __name__ == "__main__":
    main()

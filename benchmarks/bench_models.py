"""Benchmark the model family: parameters, GFLOPs per tile, throughput and peak memory.

For each architecture and width, and each speed option (fp32, bf16 autocast, channels_last_3d,
activation checkpointing, their combinations, optionally torch.compile), it measures forward
tiles/s (eval, no grad) and training-step tiles/s (forward, cross-entropy, backward, AdamW
step) on ``B x 1 x 22 x 256 x 256`` batches, and the peak memory of the training step:
``torch.cuda.max_memory_allocated`` on CUDA, the peak resident set growth (Linux ``VmHWM``,
reset through ``/proc/self/clear_refs``) on the CPU, where each measurement runs in a fresh
process (``--no-isolate`` to skip) because freed memory stays resident in the allocator.

Usage::

    python benchmarks/bench_models.py --quick                       # CPU: 1/8, 1/4 widths
    python benchmarks/bench_models.py --device cuda          # full resnet50/152/200, resnext101
    python benchmarks/bench_models.py --device cuda --archs resnet152 --modes bf16+ckpt --batch 16

On a GPU the goal is a finetuning step of full-width resnet152 at batch 16 within 12 GB using
bf16 autocast + activation checkpointing; the script prints whether it is met.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from napari_inkdetect.models import InkDetector, SpeedOptions
from napari_inkdetect.models.registry import conv_flops

MODES: dict[str, SpeedOptions] = {
    "fp32": SpeedOptions(),
    "bf16": SpeedOptions(autocast="bf16"),
    "cl3d": SpeedOptions(channels_last=True),
    "bf16+cl3d": SpeedOptions(autocast="bf16", channels_last=True),
    "ckpt": SpeedOptions(activation_checkpointing=True),
    "bf16+ckpt": SpeedOptions(autocast="bf16", activation_checkpointing=True),
    "bf16+cl3d+ckpt": SpeedOptions(
        autocast="bf16", channels_last=True, activation_checkpointing=True
    ),
    "compile": SpeedOptions(compile=True),
    "bf16+compile": SpeedOptions(autocast="bf16", compile=True),
}
DEFAULTS = {
    "cpu": {"archs": "resnet10,resnet18,resnet50", "widths": "0.125,0.25", "batch": 2},
    "cuda": {"archs": "resnet50,resnet152,resnet200,resnext101", "widths": "1.0", "batch": 16},
}
GOAL = ("resnet152", 1.0, 16, "bf16+ckpt", 12 * 2**30)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], None], device: torch.device, warmup: int, iters: int) -> float:
    """Seconds per call after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / iters


def _rss_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory of a block: CUDA allocator peak, or resident-set growth on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak: int | None = None

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            with contextlib.suppress(OSError):  # reset VmHWM to the current RSS
                Path("/proc/self/clear_refs").write_text("5")
            self.base = _rss_kib("VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            hwm = _rss_kib("VmHWM")
            if hwm is not None and self.base is not None:
                self.peak = max(0, hwm - self.base) * 1024


def bench_one(
    base: InkDetector,
    mode: str,
    batch: int,
    depth: int,
    tile: int,
    device: torch.device,
    quick: bool,
) -> dict[str, float | None]:
    options = MODES[mode]
    model = options.apply(copy.deepcopy(base).to(device))
    x = options.prepare_input(torch.rand(batch, 1, depth, tile, tile, device=device))
    target = torch.randint(0, 2, (batch, tile, tile), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    warmup, iters = (2, 2) if quick else (3, 10)
    if options.compile:
        warmup += 1

    def forward() -> None:
        model.eval()
        with torch.no_grad(), options.autocast_context(device):
            model(x)

    def train_step() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with options.autocast_context(device):
            loss = F.cross_entropy(model(x).float(), target, label_smoothing=0.3)
        loss.backward()
        optimizer.step()

    result: dict[str, float | None] = {}
    if not options.activation_checkpointing:  # checkpointing only changes training
        result["fwd"] = batch / _timed(forward, device, warmup, iters)
    with PeakMemory(device) as mem:
        result["train"] = batch / _timed(train_step, device, warmup, iters)
    result["peak"] = mem.peak
    return result


def _measure(arch: str, width: float, mode: str, args: argparse.Namespace, batch: int) -> dict:
    """One measurement, in a fresh process on the CPU so that RSS peaks are not shared."""
    device = torch.device(args.device)
    if device.type == "cpu" and not args.no_isolate:
        job = {"arch": arch, "width": width, "mode": mode, "batch": batch, "depth": args.depth,
               "tile": args.tile, "quick": args.quick}  # fmt: skip
        cmd = [sys.executable, __file__, "--child", json.dumps(job)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])
    torch.manual_seed(0)
    base = InkDetector(arch, width)
    return bench_one(base, mode, batch, args.depth, args.tile, device, args.quick)


def _child(job: dict) -> int:
    torch.manual_seed(0)
    base = InkDetector(job["arch"], job["width"])
    device = torch.device("cpu")
    result = bench_one(
        base, job["mode"], job["batch"], job["depth"], job["tile"], device, job["quick"]
    )
    print(json.dumps(result))
    return 0


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--archs", help="comma-separated registry names")
    parser.add_argument("--widths", help="comma-separated width multipliers")
    parser.add_argument("--batch", type=int, help="tiles per batch")
    parser.add_argument("--depth", type=int, default=22)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--modes", help=f"comma-separated, from: {', '.join(MODES)}")
    parser.add_argument("--compile", action="store_true", help="add the torch.compile modes")
    parser.add_argument("--quick", action="store_true", help="2 warm-up + 2 timed iterations")
    parser.add_argument("--no-isolate", action="store_true", help="CPU: one process for all")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(json.loads(args.child))

    device = torch.device(args.device)
    defaults = DEFAULTS["cuda" if device.type == "cuda" else "cpu"]
    archs = (args.archs or defaults["archs"]).split(",")
    widths = [float(w) for w in (args.widths or defaults["widths"]).split(",")]
    batch = args.batch or defaults["batch"]
    modes = (args.modes or "fp32,bf16,cl3d,bf16+cl3d,ckpt,bf16+ckpt").split(",")
    if args.compile:
        modes += ["compile", "bf16+compile"]
    unit = "MiB alloc" if device.type == "cuda" else "MiB RSS+"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    threads = torch.get_num_threads()
    print(f"# {name}, torch {torch.__version__}, {threads} threads, batch {batch} x 1x"
          f"{args.depth}x{args.tile}x{args.tile}")  # fmt: skip
    header = (
        f"{'arch':<11} {'width':>5} {'params(M)':>9} {'GFLOP/tile':>10} {'mode':<15} "
        f"{'fwd tiles/s':>11} {'train tiles/s':>13} {'peak ' + unit:>14}"
    )
    print(header)
    print("-" * len(header))
    for arch in archs:
        for width in widths:
            with torch.device("meta"):
                shapes = InkDetector(arch, width)
            params = sum(p.numel() for p in shapes.parameters()) - sum(
                p.numel() for p in shapes.encoder.fc.parameters()
            )
            gflops = conv_flops(shapes, (1, args.depth, args.tile, args.tile)) / 1e9
            for mode in modes:
                try:
                    r = _measure(arch, width, mode, args, batch)
                except torch.OutOfMemoryError:
                    r = {"fwd": None, "train": None, "peak": None}
                    mode += " (OOM)"
                peak = None if r.get("peak") is None else r["peak"] / 2**20
                print(
                    f"{arch:<11} {width:>5g} {params / 1e6:>9.2f} {gflops:>10.1f} {mode:<15} "
                    f"{_fmt(r.get('fwd'), '11.2f')} {_fmt(r['train'], '13.2f')} "
                    f"{_fmt(peak, '14.0f')}",
                    flush=True,
                )
                if device.type == "cuda" and (arch, width, batch, mode) == GOAL[:4] and peak:
                    met = "met" if r["peak"] <= GOAL[4] else "NOT met"
                    print(f"# goal resnet152 b16 bf16+ckpt <= 12 GiB: {met} ({peak:.0f} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""One command for a GPU: every number the project's goals need, as a table and as JSON.

    python benchmarks/gpu_suite.py                      # the full suite on cuda (<= ~8 min)
    python benchmarks/gpu_suite.py --device cpu --quick # its CPU parts, in seconds (CI)

Measured, per model (resnet152, resnext101, resnet50 at full width; ``--quick``: resnet10 at
1/8 width, tiny tiles):

* forward windows/s and training samples/s (forward + loss + backward + AdamW) for fp32,
  bf16 autocast, bf16 + channels_last_3d, bf16 + activation checkpointing, and bf16 +
  ``torch.compile`` (the first model only, when it compiles within ``--compile-budget``
  seconds; a timeout is a row that says so, never a silent gap); rows past ``--budget``
  seconds say so too;
* peak GPU memory of a training step at batch 16 (goal: resnet152 finetuning within 12 GB;
  the seed workbench needed > 20 GB);
* the project's real pipelines against those model-only ceilings: end-to-end ``predict``
  and ``train`` windows/s and their ratio (benchmarks/bench_inference.py, bench_training.py);
* bf16 vs fp32 agreement of large conv3d shapes (known cuDNN hazards): max relative error;
* DDP over the visible GPUs with NCCL (``train --gpus N``), when there are two or more;
* the GPU pinning of cluster workers (each local worker sees its own CUDA device).

It fails loudly: any check that cannot run where it should (a CUDA error, a DDP failure, a
pinning mismatch) ends the suite with a non-zero exit after printing what did run. Checks that
need more hardware than there is (DDP on one GPU, pinning on CPU) are reported as ``not run:
<why>`` rows, in the table and the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from napari_inkdetect.models import (  # noqa: E402
    InkDetector,
    autocast_context,
    channels_last_input,
    maybe_compile,
    to_channels_last_3d,
)
from napari_inkdetect.training.loss import sparse_loss  # noqa: E402

FULL_MODELS = ("resnet152", "resnext101", "resnet50")
MODES = ("fp32", "bf16", "bf16+channels_last", "bf16+checkpointing", "bf16+compile")
MEMORY_GOAL_GB = 12.0
GOALS = {"predict_windows_s": 800.0, "train_samples_s": 250.0}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(arch: str, width: float, mode: str, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    model = InkDetector(arch, width).to(device)
    if "channels_last" in mode:
        to_channels_last_3d(model)
    if "checkpointing" in mode:
        model.set_activation_checkpointing(True)
    return model


def precision(mode: str) -> str:
    return "off" if mode == "fp32" else "bf16"


def timed(step: Callable[[], Any], device: torch.device, warmup: int, iters: int) -> float:
    """Seconds per call of ``step`` after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    sync(device)
    started = time.perf_counter()
    for _ in range(iters):
        step()
    sync(device)
    return (time.perf_counter() - started) / iters


def model_rates(
    arch: str, width: float, mode: str, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """Forward windows/s and training samples/s of one model in one mode."""
    model = build(arch, width, mode, device)
    if "compile" in mode:
        model = maybe_compile(model)
    shape = (args.batch, 1, args.layers, args.tile, args.tile)
    x = torch.rand(shape, device=device)
    if "channels_last" in mode:
        x = channels_last_input(x)
    y = torch.randint(0, 3, (args.batch, args.tile, args.tile), device=device)
    amp = precision(mode)
    if "compile" in mode:  # the first call compiles: bounded, or the row says it timed out
        started = time.perf_counter()
        done = run_with_budget(lambda: forward_once(model, x, device, amp), args.compile_budget)
        if not done:
            return {"not_run": f"torch.compile took over {args.compile_budget:.0f} s"}
        compile_s = time.perf_counter() - started
    model.eval()

    def forward() -> None:
        with torch.inference_mode(), autocast_context(device, amp):
            model(x).float().softmax(1)

    forward_s = timed(forward, device, args.warmup, args.iters)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast_context(device, amp):
            loss = sparse_loss(model(x), y)
        loss.backward()
        opt.step()

    train_s = timed(train_step, device, args.warmup, args.iters)
    out = {"forward_windows_s": args.batch / forward_s, "train_samples_s": args.batch / train_s}
    if "compile" in mode:
        out["compile_s"] = compile_s
    return out


def forward_once(model: torch.nn.Module, x: torch.Tensor, device: torch.device, amp: str) -> None:
    with torch.inference_mode(), autocast_context(device, amp):
        model(x)
    sync(device)


def run_with_budget(work: Callable[[], None], seconds: float) -> bool:
    """Run ``work`` in a thread; False when it has not finished within ``seconds`` (it is
    left to finish in the background: a daemon thread, so the suite can still exit)."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            work()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if errors:
        raise errors[0]
    return not thread.is_alive()


def peak_memory(arch: str, width: float, args: argparse.Namespace, device: torch.device) -> dict:
    """Peak GPU memory of a bf16 + checkpointing training step at batch 16 (the finetuning
    setting the 12 GB goal is about), and of plain bf16."""
    if device.type != "cuda":
        return {"not_run": "peak GPU memory needs CUDA"}
    out = {}
    for mode in ("bf16", "bf16+checkpointing"):
        model = build(arch, width, mode, device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = torch.rand(16, 1, args.layers, args.tile, args.tile, device=device)
        y = torch.randint(0, 3, (16, args.tile, args.tile), device=device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(2):
            opt.zero_grad(set_to_none=True)
            with autocast_context(device, "bf16"):
                loss = sparse_loss(model(x), y)
            loss.backward()
            opt.step()
        sync(device)
        out[f"{mode}_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        del model, opt, x, y
    out["goal_gb"] = MEMORY_GOAL_GB
    out["meets_goal"] = min(out["bf16_gb"], out["bf16+checkpointing_gb"]) <= MEMORY_GOAL_GB
    return out


def conv3d_agreement(device: torch.device, quick: bool) -> dict[str, Any]:
    """Max relative error of bf16 against fp32 for conv3d shapes of the encoder's first and
    deepest stages at full resolution (shapes where cuDNN kernels have misbehaved)."""
    shapes = (
        [(2, 1, 8, 32, 32, 8, 7)]
        if quick
        else [
            (8, 1, 22, 256, 256, 64, 7),
            (8, 256, 6, 64, 64, 256, 3),
            (4, 1024, 3, 16, 16, 512, 1),
        ]
    )
    rows = []
    for n, cin, d, h, w, cout, k in shapes:
        torch.manual_seed(0)
        x = torch.randn(n, cin, d, h, w, device=device)
        conv = torch.nn.Conv3d(cin, cout, k, padding=k // 2, bias=False).to(device)
        with torch.no_grad():
            ref = conv(x)
            with autocast_context(device, "bf16"):
                low = conv(x).float()
        scale = ref.abs().max().item() or 1.0
        error = (low - ref).abs().max().item() / scale
        rows.append({"shape": [n, cin, d, h, w], "out": cout, "kernel": k, "max_rel_err": error})
    worst = max(r["max_rel_err"] for r in rows)
    return {"shapes": rows, "worst": worst, "ok": worst < 0.05}


def end_to_end(args: argparse.Namespace, device: torch.device, arch: str, width: float) -> dict:
    """The real predict and train pipelines against their model-only ceilings."""
    import bench_inference
    import bench_training

    with tempfile.TemporaryDirectory(prefix="gpu-suite-") as tmp:
        predict_args = argparse.Namespace(
            size=args.e2e_size, arch=arch, width=width, tile=args.tile, batch=args.batch,
            device=str(device), autocast="auto", repeats=1,
        )  # fmt: skip
        predicted = bench_inference.throughput(predict_args, Path(tmp))
        from napari_inkdetect.synthetic import make_segment, write_segment

        seg = make_segment(shape=(32, 256, 256)) if args.quick else make_segment()
        folder = write_segment(seg, Path(tmp), "bench")
        train_args = argparse.Namespace(
            arch=arch, width=width, tile=args.train_tile, batch=args.batch,
            steps=args.train_steps, device=str(device), ink_layers=seg.ink_layers,
        )  # fmt: skip
        ceiling = bench_training.step_ceiling(train_args, device)
        trained = bench_training.end_to_end(train_args, folder, Path(tmp) / "run", None)
    return {
        "predict_windows_s": predicted["e2e"],
        "predict_ceiling": predicted["ceiling"],
        "predict_ratio": predicted["e2e"] / predicted["ceiling"],
        "train_samples_s": trained,
        "train_ceiling": ceiling,
        "train_ratio": trained / ceiling,
    }


def ddp(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """``train --gpus N`` (NCCL) for a few steps over every visible GPU."""
    n = torch.cuda.device_count() if device.type == "cuda" else 0
    if n < 2:
        return {"not_run": f"{n} GPU visible: DDP needs two or more"}
    from napari_inkdetect.synthetic import make_segment, write_segment

    with tempfile.TemporaryDirectory(prefix="gpu-suite-ddp-") as tmp:
        seg = make_segment()
        folder = write_segment(seg, Path(tmp), "ddp")
        command = [
            sys.executable, "-m", "napari_inkdetect", "train", str(folder),
            "--labels", str(folder / "ddp_train_labels.png"), "--out", str(Path(tmp) / "run"),
            "--gpus", str(n), "--steps", "20", "--arch", "resnet50", "--width", "0.25",
            "--tile", "128", "--batch-size", str(4 * n), "--device", "cuda", "--quiet",
        ]  # fmt: skip
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, timeout=240)
        if done.returncode != 0:
            raise RuntimeError(f"DDP over {n} GPUs failed: {done.stderr.strip()[-400:]}")
        return {"gpus": n, "seconds_20_steps": time.perf_counter() - started}


def pinning(device: torch.device) -> dict[str, Any]:
    """Each local cluster worker sees its own CUDA device (CUDA_VISIBLE_DEVICES)."""
    from napari_inkdetect.inference.cluster import visible_gpus

    gpus = visible_gpus() if device.type == "cuda" else ()
    if len(gpus) < 1:
        return {"not_run": "no CUDA device to pin workers to"}
    from distributed import Client, LocalCluster

    from napari_inkdetect.inference.cluster import PinnedNanny

    n = max(2, len(gpus))
    with (
        LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True, worker_class=PinnedNanny,
            gpus=gpus, dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        seen = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
    expected = {str(i): gpus[i % len(gpus)] for i in range(n)}
    names = {str(w["name"]): w for w in cluster.scheduler_info["workers"].values()}
    by_name = {name: seen[w["id"]] for name, w in names.items()}
    if by_name != expected:
        raise RuntimeError(f"worker pinning {by_name} != expected {expected}")
    return {"workers": n, "pinned": by_name}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: the CPU parts in CI")
    parser.add_argument("--models", help="comma-separated (default: the three full models)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile-budget", type=float, default=60.0, help="seconds")
    parser.add_argument("--budget", type=float, default=300.0,
                        help="seconds for the model table; the rest of the 8 minutes is for "
                        "end to end, DDP and pinning")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_suite: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    if args.quick:
        models, width = ("resnet10",), 0.125
        args.batch, args.tile, args.layers, args.iters, args.warmup = 2, 32, 8, 1, 1
        args.e2e_size, args.train_tile, args.train_steps = 128, 32, 6
        modes = ("fp32", "bf16")
    else:
        models, width = FULL_MODELS, 1.0
        args.e2e_size, args.train_tile, args.train_steps = 1024, 256, 12
        modes = MODES
    if args.models:
        models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "batch": args.batch, "tile": args.tile, "layers": args.layers,
        "models": {}, "failures": [],
    }  # fmt: skip
    started = time.perf_counter()

    def attempt(name: str, work: Callable[[], Any]) -> Any:
        try:
            return work()
        except Exception as exc:  # recorded, printed, and the exit code says so
            results["failures"].append({"check": name, "error": f"{type(exc).__name__}: {exc}"})
            traceback.print_exc()
            return {"failed": str(exc)[:200]}

    for arch in models:
        row: dict[str, Any] = {}
        for mode in modes:
            if time.perf_counter() - started > args.budget:  # said in the row, not skipped
                row[mode] = {"not_run": f"over the {args.budget:.0f} s budget"}
                continue
            if mode.endswith("compile") and arch != models[0]:
                row[mode] = {"not_run": "compiled for the first model only (time budget)"}
                continue
            row[mode] = attempt(
                f"{arch} {mode}", partial(model_rates, arch, width, mode, args, device)
            )
            if device.type == "cuda":
                torch.cuda.empty_cache()
        row["peak_memory"] = attempt(
            f"{arch} memory", partial(peak_memory, arch, width, args, device)
        )
        results["models"][arch] = row
    results["conv3d_bf16_vs_fp32"] = attempt(
        "conv3d", lambda: conv3d_agreement(device, args.quick)
    )
    e2e_arch = models[-1]
    results["end_to_end"] = attempt(
        "end to end", lambda: end_to_end(args, device, e2e_arch, width)
    )
    results["end_to_end"]["model"] = e2e_arch
    results["ddp"] = attempt("ddp", lambda: ddp(args, device))
    results["pinning"] = attempt("pinning", lambda: pinning(device))
    conv = results["conv3d_bf16_vs_fp32"]
    if isinstance(conv, dict) and conv.get("ok") is False:
        results["failures"].append({"check": "conv3d", "error": f"bf16 error {conv['worst']:.3g}"})
    results["seconds"] = time.perf_counter() - started
    print_table(results, modes)
    text = json.dumps(results, indent=1, default=float)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 1 if results["failures"] else 0


def print_table(results: dict[str, Any], modes: tuple[str, ...]) -> None:
    print(f"\ngpu_suite on {results['device']} (torch {results['torch']}), batch "
          f"{results['batch']}, {results['layers']} x {results['tile']}^2")  # fmt: skip
    print(f"{'model':12s} {'mode':22s} {'fwd win/s':>10s} {'train smp/s':>12s}")
    for arch, row in results["models"].items():
        for mode in modes:
            r = row[mode]
            if "forward_windows_s" in r:
                print(f"{arch:12s} {mode:22s} {r['forward_windows_s']:10.1f} "
                      f"{r['train_samples_s']:12.1f}")  # fmt: skip
            else:
                print(f"{arch:12s} {mode:22s} {r.get('not_run') or 'FAILED ' + r['failed']}")
        mem = row["peak_memory"]
        print(f"{arch:12s} {'peak memory, batch 16':22s} " + (
            f"bf16 {mem['bf16_gb']:.2f} GB, + checkpointing {mem['bf16+checkpointing_gb']:.2f} "
            f"GB (goal <= {MEMORY_GOAL_GB:.0f})" if "bf16_gb" in mem
            else (mem.get("not_run") or "FAILED")))  # fmt: skip
    e2e = results["end_to_end"]
    if "predict_ratio" in e2e:
        print(f"end to end ({e2e['model']}): predict {e2e['predict_windows_s']:.1f} windows/s "
              f"= {e2e['predict_ratio']:.2f} of the model-only ceiling; train "
              f"{e2e['train_samples_s']:.1f} samples/s = {e2e['train_ratio']:.2f}")  # fmt: skip
    conv = results["conv3d_bf16_vs_fp32"]
    if "worst" in conv:
        print(f"conv3d bf16 vs fp32: worst relative error {conv['worst']:.2e} "
              f"({'ok' if conv['ok'] else 'TOO LARGE'})")  # fmt: skip
    for key in ("ddp", "pinning"):
        print(f"{key:8s} {results[key]}")
    print(f"{len(results['failures'])} failures, {results['seconds']:.0f} s\n")


if __name__ == "__main__":
    sys.exit(main())

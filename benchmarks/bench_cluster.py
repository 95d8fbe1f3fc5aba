"""Cluster prediction benchmark: scaling with workers, and what travels through the scheduler.

Run: ``python benchmarks/bench_cluster.py [--quick] [--arch resnet10 --width 0.25]
[--size 1024] [--tile 64]``.

1. Scaling: tiles/s of :func:`napari_inkdetect.inference.predict` with a scheduler on a warm
   ``LocalCluster`` of 2 workers x 1 thread vs 1 worker x 1 thread, same job (every worker
   runs torch on one thread, ``OMP_NUM_THREADS=1``). Target: ratio >= 1.7 on 2 free cores.
   Single-process :func:`napari_inkdetect.inference.predict` with ``torch.set_num_threads(1)``
   is the reference per core.
2. Traffic: bytes per block through the scheduler (the pickled task: function, config dict,
   chunk index; its result), against the block's output pixels that stay on the workers, plus
   bytes read from the segment per window (``ReadCounter`` on the workers) and worker-to-worker
   transfers. Target: kilobytes per block.
3. Host preparation: CPU milliseconds to read and normalise one 256 x 256 window, the work a
   GPU worker does between forward passes.
4. Geometry: windows of a 13513 x 17381 x 65 segment at the defaults (tile 256, stride 128,
   22 layers, scale 1, the default chunk), counted with the engine's own chunk/tile plan.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from distributed import Client, LocalCluster
from distributed.protocol.pickle import dumps

from napari_inkdetect.inference import (
    PredictConfig,
    PredictFinished,
    PredictStarted,
    open_job,
    predict,
)
from napari_inkdetect.inference import job as inference_job
from napari_inkdetect.inference.cluster import (
    PinnedNanny,
    _predict_block,
    _task_config,
)
from napari_inkdetect.io.sources import ReadCounter
from napari_inkdetect.models import InkDetector, save_checkpoint
from napari_inkdetect.synthetic import make_segment, write_segment
from napari_inkdetect.window_tensors import to_model_input
from napari_inkdetect.windows import read_raw

LAYERS = 26
SCROLL = (65, 13513, 17381)  # a typical segment: layers, height, width


def _checkpoint(folder: Path, arch: str, width: float, tile: int) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(folder / f"{arch}_{width}_{tile}.safetensors",
                           InkDetector(arch, width), tile_size=tile)  # fmt: skip


def _job_config(args: argparse.Namespace, folder: Path) -> PredictConfig:
    segment = write_segment(make_segment(shape=(LAYERS, args.size, args.size), seed=0), folder)
    (segment / "synthetic_mask.png").unlink()  # every tile runs
    ckpt = _checkpoint(folder, args.arch, args.width, args.tile)
    return PredictConfig(
        segment=str(segment), checkpoint=str(ckpt), out=str(folder / "pred.zarr"),
        tile=args.tile, chunk=args.chunk or 4 * args.tile, batch_size=args.batch, device="cpu",
        autocast="off", start_layers=args.start_layers, overwrite=True,
    )  # fmt: skip


def single_process(config: PredictConfig) -> dict[str, float]:
    """Tiles/s of ``predict`` in this process on one torch thread (its prefetch thread reads
    and normalises alongside), and tiles per CPU-second."""
    threads, cpu = torch.get_num_threads(), time.process_time()
    torch.set_num_threads(1)
    try:
        done = [e for e in predict(config) if isinstance(e, PredictFinished)][-1]
    finally:
        torch.set_num_threads(threads)
    return {"tiles_s": done.tiles_per_s, "cpu_s": time.process_time() - cpu, "tiles": done.tiles}


def start_cluster(stack: contextlib.ExitStack, workers: int, config: PredictConfig) -> Client:
    """A warm local cluster: workers x 1 thread, imports done and the model cached."""
    cluster = stack.enter_context(
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            worker_class=PinnedNanny,
            dashboard_address=":0",
        )
    )
    client = stack.enter_context(Client(cluster, set_as_default=False))
    _drain(config.with_(region=(0, 0, config.tile, config.tile)), client)
    client.run(_reset_reads)
    return client


def on_cluster(config: PredictConfig, client: Client) -> dict[str, float]:
    """Tiles/s from submission to the last chunk, the workers' CPU seconds, bytes they sent."""
    cpu = sum(client.run(time.process_time).values())
    sent = sum(client.run(_sent).values())
    first, done = _drain(config, client)
    return {
        "tiles_s": done.tiles_per_s, "tiles": done.tiles, "blocks": first.total_chunks,
        "cpu_s": sum(client.run(time.process_time).values()) - cpu,
        "sent": sum(client.run(_sent).values()) - sent,
    }  # fmt: skip


def _drain(config: PredictConfig, client: Client) -> tuple[PredictStarted, PredictFinished]:
    address = client.scheduler.address
    events = list(predict(config.with_(scheduler=address, chunk_events=False)))
    return events[0], events[-1]


def best_of(runs: list[dict[str, float]]) -> dict[str, float]:
    """The fastest run, with CPU and bytes summed over all runs (per tile/block figures)."""
    best = dict(max(runs, key=lambda r: r["tiles_s"]))
    for key in ("cpu_s", "sent", "blocks", "tiles"):
        if key in best:
            best[f"total_{key}"] = sum(r[key] for r in runs)
    return best


def _reset_reads() -> None:
    ReadCounter.bytes_read = 0


def _reads() -> int:
    return ReadCounter.bytes_read


def _sent(dask_worker) -> int:
    """Bytes this worker sent to others and to the client (the results it handed over)."""
    return dask_worker.transfer_outgoing_bytes_total


def traffic(config: PredictConfig) -> dict[str, int]:
    """Bytes of one block's task message and result vs the pixels it writes itself."""
    job = open_job(config)
    n, _, _ = job.shape
    task = _task_config(config, pinned=False)
    return {
        "task": len(dumps((_predict_block, task, (0, 0)))),
        "result": len(dumps(((0, 0), None))),
        "pixels": n * job.chunk * job.chunk * np.dtype(config.dtype).itemsize,
    }


def preparation(config: PredictConfig, folder: Path) -> dict[str, float]:
    """CPU milliseconds per 256 x 256 x 22 window (one start layer, one thread) to read it
    from the segment and to normalise it: the host work a GPU worker does between forward
    passes (``predict_chunk`` does it in the task's own thread)."""
    ckpt = _checkpoint(folder, "resnet10", 0.125, 256)
    job = open_job(config.with_(checkpoint=str(ckpt), tile=None, chunk=None, start_layers=None))
    y0, x0 = job.region[:2]
    corners = [(y0 + ky * job.stride, x0 + kx * job.stride) for ky, kx in np.argwhere(job.tiles)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        started = time.process_time()
        raws = [read_raw(job.segment, job.start_layers[0], y, x, job.spec) for y, x in corners]
        read = time.process_time() - started
        started = time.process_time()
        for raw in raws:
            to_model_input(raw, job.spec)
        normalise = time.process_time() - started
    finally:
        torch.set_num_threads(threads)
    return {"read": read * 1000 / len(raws), "normalise": normalise * 1000 / len(raws)}


def geometry(config: PredictConfig, folder: Path, starts: int) -> dict[str, int]:
    """The engine's plan for a whole scroll segment (no mask: every tile position runs)."""
    ckpt = _checkpoint(folder, "resnet10", 0.125, 256)
    job = open_job(config.with_(checkpoint=str(ckpt), tile=None, chunk=None, start_layers=None))
    nz, ny, nx = SCROLL
    first = (nz - job.spec.layers) // 2 - starts // 2
    region = (0, 0, ny, nx)
    tiles = inference_job._tile_mask(None, region, job.spec.extent, job.stride)
    job = replace(job, region=region, tiles=tiles, region_mask=None,
                  start_layers=tuple(range(first, first + starts)))  # fmt: skip
    chunks = job.pending()
    positions = sum(len(job.chunk_tiles(*c)) for c in chunks)
    return {"positions": int(tiles.sum()), "computed_positions": positions,
            "windows": positions * job.windows_per_tile, "chunks": len(chunks),
            "chunk": job.chunk, "stride": job.stride, "first_start": first}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small job, one repeat")
    parser.add_argument("--arch", default="resnet10")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--size", type=int, default=1024, help="region side (volume px)")
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--chunk", type=int, help="output chunk side (default 4 tiles)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--start-layers", default="2,3", help="A:B or A,B,... (default 2,3)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if args.quick:
        args.size, args.chunk, args.repeats = 512, args.chunk or 2 * args.tile, 1
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp, contextlib.ExitStack() as st:
        folder = Path(tmp)
        config = _job_config(args, folder)
        print(f"{args.arch} x{args.width}, tile {args.tile}, chunk {config.chunk}, batch "
              f"{args.batch}, {args.size}^2 x starts {args.start_layers}, CPU, "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")  # fmt: skip
        clients = {n: start_cluster(st, n, config) for n in (1, 2)}
        runs: dict[str, list] = {"single": [], 1: [], 2: []}
        for _ in range(args.repeats):  # interleaved, best of each: robust to a busy machine
            runs["single"].append(single_process(config))
            for n, client in clients.items():
                runs[n].append(on_cluster(config, client))
        reads = {n: sum(c.run(_reads).values()) for n, c in clients.items()}
        report_scaling({k: best_of(v) for k, v in runs.items()})
        report_traffic(config, best_of(runs[2]), reads[2])
        report_scroll(config, folder)


def report_scaling(best: dict) -> None:
    one, c1, c2 = best["single"], best[1], best[2]
    per_cpu = {k: b["total_tiles"] / b["total_cpu_s"] for k, b in best.items()}
    print(f"single process, 1 thread   {one['tiles_s']:8.1f} tiles/s  "
          f"({per_cpu['single']:.1f} tiles per CPU-s)")  # fmt: skip
    for n in (1, 2):
        print(f"cluster {n} worker(s) x 1 thr {best[n]['tiles_s']:8.1f} tiles/s  "
              f"({best[n]['tiles']} tiles, {per_cpu[n]:.1f} tiles per worker CPU-s)")  # fmt: skip
    print(f"speed-up 2 vs 1 worker     {c2['tiles_s'] / c1['tiles_s']:8.2f}  (target >= 1.7; "
          f"per worker CPU-s {per_cpu[2] / per_cpu[1]:.2f})")  # fmt: skip
    print(f"1 worker vs single process {c1['tiles_s'] / one['tiles_s']:8.2f}  (per CPU-s "
          f"{per_cpu[1] / per_cpu['single']:.2f}; workers get MALLOC_SETTINGS)")  # fmt: skip


def report_traffic(config: PredictConfig, run: dict, reads: int) -> None:
    t = traffic(config)
    print(f"scheduler bytes per block  {t['task'] + t['result']:8d}  (task {t['task']}, "
          f"result {t['result']}; the block's {t['pixels']} output bytes stay on the worker; "
          "target: kilobytes)")  # fmt: skip
    print(f"worker data sent per block {run['total_sent'] / run['total_blocks']:8.0f}  "
          "(measured: transfer_outgoing_bytes_total, i.e. results to the client)")  # fmt: skip
    print(f"segment bytes read/window  {reads / run['total_tiles']:8.0f}  (one stack per tile "
          "position, shared by its start layers)")  # fmt: skip


def report_scroll(config: PredictConfig, folder: Path) -> None:
    prep = preparation(config, folder)
    read, norm = prep["read"], prep["normalise"]
    print(f"host prep per 256^2 window {read + norm:8.1f} ms CPU  (read {read:.1f} + normalise "
          f"{norm:.1f}, 1 thread, 1 start layer)")  # fmt: skip
    for starts in (1, 9):
        g = geometry(config, folder, starts)
        print(f"{SCROLL[1]} x {SCROLL[2]} x {SCROLL[0]}, {starts} start layer(s) from "
              f"{g['first_start']}: {g['positions']} tile positions, {g['computed_positions']} "
              f"computed with chunk halos ({g['chunks']} chunks of {g['chunk']} px), "
              f"{g['windows']} windows")  # fmt: skip


if __name__ == "__main__":
    main()

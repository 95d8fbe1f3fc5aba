"""Prediction on a dask ``distributed`` cluster: one task per output chunk.

``predict(config)`` comes here when ``config.workers`` or ``config.scheduler`` is set; it
yields the events of a local run (:class:`PredictStarted`, :class:`BatchDone`,
:class:`ChunkDone`, :class:`PredictFinished`) plus one :class:`ClusterReady`, so the CLI, tests
and a dock drain it the way they drain a local run.

Design
------
- *Plan on the client*: the client resolves the job on the CPU (no GPU memory taken from the
  workers), runs :func:`prepare_output` and submits only the chunks not flagged done, so an
  interrupted run resumes without redoing finished chunks.
- *Tasks*: ``predict_chunk(config_dict, (cy, cx))`` on a worker. The arguments are a ~1 kB
  dict and two ints and the result is the index: pixels never cross the scheduler. Each
  task opens the segment lazily and writes its own zarr chunk and then its done flag. Chunks
  do not overlap (the halo is recomputed per chunk), so writes need no lock. A worker caches
  the job (model included) per config, so the model loads once per worker process.
- *Faults*: a task is pure (same input, same bytes written). A worker that dies has its tasks
  rerun elsewhere by the scheduler. Other exceptions are retried (``retries``). The package's
  own errors are returned, not raised, so they are not retried, and are raised again here.
- *GPUs*: ``workers=N`` on a machine with CUDA GPUs gives worker ``i`` the environment
  ``CUDA_VISIBLE_DEVICES=<gpu i mod n>`` through its nanny (:class:`PinnedNanny`), so every
  worker sees one GPU as ``cuda:0``. On an existing cluster, pin devices when starting workers
  (``CUDA_VISIBLE_DEVICES=i dask worker ...``, or dask-cuda).
- *Shared storage*: before submitting, every worker checks that the segment, checkpoint and
  output exist under the same absolute paths (:class:`ClusterError` otherwise).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from distributed import Nanny

from napari_inkdetect.devices import resolve_device
from napari_inkdetect.errors import ChildCrashedError, ClusterError, ConfigError, InkDetectError
from napari_inkdetect.inference.config import PredictConfig
from napari_inkdetect.inference.events import (
    BatchDone,
    ChunkDone,
    ClusterReady,
    PredictFinished,
    PredictStarted,
)
from napari_inkdetect.inference.job import PredictJob, open_job, prepare_output
from napari_inkdetect.inference.local import predict_chunk
from napari_inkdetect.io.locks import OutputLock
from napari_inkdetect.io.prediction_store import done_flags, read_chunk
from napari_inkdetect.processes import rebuild_error

__all__ = [
    "ClusterReady",
    "PinnedNanny",
    "close_warm_clusters",
    "predict_on_cluster",
    "visible_gpus",
]

RETRIES = 2
POLL_S = 0.1
# glibc: large arrays reuse heap memory (batches come and go); measured 2x faster than
# distributed's MALLOC_TRIM_THRESHOLD_=65536 on CPU workers (benchmarks/bench_cluster.py)
MALLOC_SETTINGS = {
    "MALLOC_TRIM_THRESHOLD_": str(64 << 20),
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
}


# --------------------------------------------------------------------------- worker side


def _visible(path: str) -> bool:
    """Whether a worker sees ``path`` (tests hide paths by replacing this on workers)."""
    return os.path.exists(path)


def _probe(paths: list[str], out: str, device: str) -> dict[str, Any]:
    """Run on each worker: missing paths, output writability and the device it would use."""
    try:
        resolved = str(resolve_device(device))
    except ConfigError as exc:
        resolved = f"unavailable ({exc})"
    return {
        "host": socket.gethostname(),
        "missing": [p for p in paths if not _visible(p)],
        "writable": os.access(out, os.W_OK),
        "device": resolved,
    }


def _predict_block(config: dict[str, Any], index: tuple[int, int]) -> tuple[Any, Any]:
    """The task: one output chunk written by the worker; returns ``(index, error or None)``."""
    try:
        predict_chunk(config, index)
    except InkDetectError as exc:  # the user's problem: not worth a retry, raised on the client
        return tuple(index), (type(exc).__name__, str(exc))
    return tuple(index), None


# --------------------------------------------------------------------------- cluster setup


class PinnedNanny(Nanny):
    """A nanny whose worker sees one GPU and runs torch on its own threads only.

    ``LocalCluster(worker_class=PinnedNanny, gpus=("0", "1"))`` names its workers 0, 1, ...;
    worker ``i`` gets ``CUDA_VISIBLE_DEVICES=gpus[i % len(gpus)]`` (set in the worker process
    before the worker starts, long before CUDA initialises, so CUDA never sees the other
    GPUs) and ``OMP_NUM_THREADS`` = its threads. glibc gets :data:`MALLOC_SETTINGS` instead
    of distributed's ``MALLOC_TRIM_THRESHOLD_=65536``, which turns every array over 128 KiB
    into a fresh ``mmap`` (page faults on each batch).
    """

    def __init__(self, *args: Any, gpus: tuple[str, ...] = (), env: Any = None, **kwargs: Any):
        env = dict(env or {})
        threads = str(kwargs.get("nthreads") or 1)
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[int(kwargs.get("name", 0)) % len(gpus)]
        super().__init__(*args, env=env, **kwargs)
        self.pre_spawn_env.update(MALLOC_SETTINGS)  # read by glibc when the process starts
        self.env.update(MALLOC_SETTINGS)  # and what the worker's os.environ then says


def visible_gpus() -> tuple[str, ...]:
    """The CUDA devices this process may hand out (ids from ``CUDA_VISIBLE_DEVICES`` if set)."""
    count = torch.cuda.device_count()
    if not count:
        return ()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in listed.split(",") if v.strip()] if listed else []
    return tuple(ids[:count]) if len(ids) >= count else tuple(str(i) for i in range(count))


def _uses_cuda(config: PredictConfig) -> bool:
    return config.device in ("auto", "cuda") or config.device.startswith("cuda:")


def _start_local(workers: int | None, gpus: tuple[str, ...]) -> Any:
    from distributed import LocalCluster

    n = workers if workers is not None else (len(gpus) or os.cpu_count() or 1)
    return LocalCluster(
        n_workers=n, threads_per_worker=1, processes=True, worker_class=PinnedNanny, gpus=gpus,
        dashboard_address=":0",  # a free port (the scheduler's HTTP server runs anyway)
    )  # fmt: skip


#: Local clusters left running between runs by ``keep_warm``, by (workers, GPUs), and how
#: many runs use each now (an idle one may be closed; one in use only by its last run).
_WARM: dict[tuple[int | None, tuple[str, ...]], Any] = {}
_USERS: dict[tuple[int | None, tuple[str, ...]], int] = {}
_WARM_LOCK = threading.Lock()
KeepWarm = bool | Callable[[], bool]


def _warm_local(key: tuple[int | None, tuple[str, ...]]) -> Any:
    """The running local cluster for these (workers, GPUs), started on first use, counted as
    used until :func:`_release_warm`. Measured start-up on 2 busy cores: 5.6 s of spawning,
    imports and nannies that a second run skips (and its workers keep the model loaded, in
    their job cache)."""
    with _WARM_LOCK:
        cluster = _WARM.get(key)
        if cluster is None or getattr(cluster.status, "name", "") != "running":
            if not _WARM:
                atexit.register(close_warm_clusters)
            cluster = _WARM[key] = _start_local(*key)
        _USERS[key] = _USERS.get(key, 0) + 1
        return cluster


def _release_warm(key: tuple[int | None, tuple[str, ...]], keep: KeepWarm) -> None:
    """A run is done with its warm cluster: close it when ``keep`` (called now if callable:
    e.g. "the dock is still there") says no and no other run uses it."""
    still = keep() if callable(keep) else bool(keep)
    with _WARM_LOCK:
        _USERS[key] = max(0, _USERS.get(key, 1) - 1)
        cluster = None if still or _USERS[key] else _WARM.pop(key, None)
    if cluster is not None:
        with contextlib.suppress(Exception):  # already gone: nothing left to close
            cluster.close()


def close_warm_clusters(idle_only: bool = False) -> int:
    """Close every local cluster ``keep_warm`` left running (napari closing, a dock removed;
    ``idle_only``: only those no run uses now, the others close when their run ends if it was
    told not to keep them); returns how many were closed."""
    with _WARM_LOCK:
        keys = [k for k in _WARM if not (idle_only and _USERS.get(k, 0))]
        clusters = [_WARM.pop(k) for k in keys]
    for cluster in clusters:
        with contextlib.suppress(Exception):  # already gone: nothing left to close
            cluster.close()
    return len(clusters)


def _environ_restorer() -> Callable[[], None]:
    """Undo what nannies write into this process's environment before spawning workers
    (``OMP_NUM_THREADS=1``, malloc settings, ``PYTHONHASHSEED``): left there, they would reach
    every process started later, e.g. a training child with one torch thread."""
    import dask

    keys = {*dask.config.get("distributed.nanny.pre-spawn-environ"), *MALLOC_SETTINGS}
    saved = {k: os.environ.get(k) for k in keys | {"PYTHONHASHSEED"}}

    def restore() -> None:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    return restore


def _connect(address: Any) -> Any:
    from distributed import Client

    try:
        return Client(address, set_as_default=False)
    except Exception as exc:  # refused, timed out, bad address: all mean "not reachable"
        where = getattr(address, "scheduler_address", address)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ClusterError(f"cannot reach the dask scheduler at {where}: {reason}") from None


def _wait_for_workers(client: Any, address: str, timeout_s: float = 60.0) -> None:
    try:
        client.wait_for_workers(1, timeout=timeout_s)
    except Exception:  # distributed raises TimeoutError
        raise ClusterError(
            f"the dask scheduler at {address} has no workers (waited {timeout_s:.0f} s); "
            "start some with `dask worker " + address + "`"
        ) from None


# --------------------------------------------------------------------------- plan + checks


def _absolute(config: PredictConfig) -> PredictConfig:
    """Paths as workers must see them: absolute, the same on every machine."""
    return config.with_(
        segment=os.path.abspath(config.segment),
        checkpoint=os.path.abspath(config.checkpoint),
        out=os.path.abspath(config.out),
    )


def _plan(config: PredictConfig) -> PredictJob:
    """The job resolved on the client's CPU (geometry and output only; workers run the model)."""
    job = open_job(config.with_(device="cpu", autocast="off", channels_last=False))
    return replace(job, config=config)


def _task_config(config: PredictConfig, pinned: bool) -> dict[str, Any]:
    """What each task receives; a pinned worker's own GPU is its ``cuda:0``."""
    task = config.with_(overwrite=False, workers=None, scheduler=None, in_child=False)
    if pinned and config.device.startswith("cuda"):
        task = task.with_(device="cuda")
    return task.to_dict()


def _check_workers(client: Any, config: PredictConfig, device: str) -> tuple[str, ...]:
    """Every worker sees the data and has the device; returns the devices in use."""
    paths = [config.segment, config.checkpoint, config.out]
    reports = client.run(_probe, paths, config.out, device)
    blind = {w: r for w, r in reports.items() if r["missing"] or not r["writable"]}
    if blind:
        worker, report = next(iter(blind.items()))
        what = ", ".join(report["missing"]) or f"{config.out} (not writable)"
        raise ClusterError(
            f"{len(blind)} of {len(reports)} dask workers (e.g. {worker} on {report['host']}) "
            f"cannot see {what}: the segment, checkpoint and output must be on a filesystem "
            "that all workers share, under the same absolute paths"
        )
    bad = [r["device"] for r in reports.values() if r["device"].startswith("unavailable")]
    if bad:
        raise ClusterError(f"a dask worker cannot run on device {device!r}: {bad[0]}")
    return tuple(sorted({r["device"] for r in reports.values()}))


# --------------------------------------------------------------------------- the driver


def predict_on_cluster(
    config: PredictConfig, stop: threading.Event | None = None, keep_warm: KeepWarm = False
) -> Generator[Any, None, PredictFinished]:
    """Predict as ``config`` says on a dask cluster, yielding the events of ``predict``.

    ``config.workers`` starts a ``LocalCluster`` of that many single-threaded worker
    processes (with CUDA GPUs each worker is pinned to one GPU); ``config.scheduler`` is the
    address of a running scheduler (``tcp://host:8786``), left running. The paths must be
    visible to every worker under the same names. A set ``stop`` cancels queued chunks and
    ends with ``PredictFinished(stopped=True)``; finished chunks stay on disk (a rerun
    resumes).

    Yields PredictStarted, ClusterReady, then per finished chunk BatchDone (windows done so
    far, as ``predict`` counts them) and ChunkDone (read back from the output, unless
    ``config.chunk_events`` is off), and
    PredictFinished last, which is also the return value.

    ``keep_warm`` (the GUI's choice) leaves a local cluster running after the run, for the
    next run with the same workers (no spawn, imports or model load again): see
    :func:`close_warm_clusters`. A callable is asked when the run ends (the dock passes
    "am I still open?": a run that outlives its viewer closes its cluster).
    """
    stop = stop or threading.Event()
    job = _plan(_absolute(config))
    with contextlib.ExitStack() as resources:  # closed before PredictFinished: no late writes
        # this client holds the output's lock while workers write it: a second run is refused
        resources.enter_context(OutputLock(job.config.out, "prediction"))
        root = prepare_output(job)
        client, pinned = _open_cluster(resources, job.config, keep_warm)
        seconds, tiles = yield from _run(client, job, root, pinned, stop)
    stopped = len(job.pending(done_flags(root))) > 0
    rate = tiles / max(seconds, 1e-9)
    result = PredictFinished(Path(job.config.out), seconds, rate, tiles, stopped)
    yield result
    return result


def _open_cluster(
    resources: contextlib.ExitStack, config: PredictConfig, keep_warm: KeepWarm = False
) -> tuple[Any, bool]:
    """A client of the scheduler, or of a local cluster (new, or a warm one with
    ``keep_warm``); the client and a new cluster close with ``resources``. Also says whether
    workers were pinned to GPUs."""
    scheduler = config.scheduler
    gpus = visible_gpus() if scheduler is None and _uses_cuda(config) else ()
    if scheduler is None:
        resources.callback(_environ_restorer())
    if scheduler is not None:
        target = scheduler
    elif keep_warm:
        key = (config.workers, gpus)
        target = _warm_local(key)
        resources.callback(_release_warm, key, keep_warm)  # after the client's close
    else:
        target = _start_local(config.workers, gpus)
        resources.callback(target.close)
    client = _connect(target)
    resources.callback(client.close)
    return client, bool(gpus)


def _run(
    client: Any, job: PredictJob, root: Any, pinned: bool, stop: threading.Event
) -> Generator[Any, None, tuple[float, int]]:
    """Check the workers, submit the pending chunks and report them as they finish; returns
    the seconds since submission and the tiles computed."""
    task = _task_config(job.config, pinned)
    chunks = yield from _announce(client, job, root, task)
    tiles = {c: len(job.chunk_tiles(*c)) * job.windows_per_tile for c in chunks}
    total, done = sum(tiles.values()), 0
    n_chunks = len(job.pending())
    chunks_done, started = n_chunks - len(chunks), time.perf_counter()
    futures = _submit(client, task, chunks)
    try:
        for index in _completed(client, futures, stop):
            done, chunks_done = done + tiles[index], chunks_done + 1
            rate = done / max(time.perf_counter() - started, 1e-9)
            yield BatchDone(done, total, rate, (total - done) / max(rate, 1e-9))
            if job.config.chunk_events:  # read back from the output for a viewer
                y0, x0, _, _ = box = job.chunk_box(*index)
                yield ChunkDone(index, y0, x0, read_chunk(root, box), chunks_done, n_chunks, rate)
    finally:
        with contextlib.suppress(Exception):  # a lost scheduler must not hide the real error
            client.cancel(list(futures.values()))
    return time.perf_counter() - started, done


def _announce(
    client: Any, job: PredictJob, root: Any, task: dict[str, Any]
) -> Generator[Any, None, list[tuple[int, int]]]:
    """Wait for workers, check them, yield PredictStarted and ClusterReady; returns the
    chunks still to compute."""
    address = client.scheduler_info(n_workers=0)["address"]
    _wait_for_workers(client, address)
    devices = _check_workers(client, job.config, task["device"])
    every = job.pending()
    chunks = job.pending(done_flags(root))
    total = job.windows_in(chunks)
    n_workers = len(client.nthreads())
    yield PredictStarted(
        Path(job.config.out), job.shape, job.region, job.start_layers, total, len(every),
        len(every) - len(chunks), f"{n_workers} dask workers ({', '.join(devices)})",
        job.config.dtype,
    )  # fmt: skip
    local = client.cluster is not None  # a cluster object (ours) rather than an address
    yield ClusterReady(address, n_workers, devices, _dashboard(client), local)
    return chunks


def _has_dashboard() -> bool:
    """Run on the scheduler: its dashboard needs bokeh (without it the link shows nothing)."""
    return importlib.util.find_spec("bokeh") is not None


def _dashboard(client: Any) -> str | None:
    return client.dashboard_link if client.run_on_scheduler(_has_dashboard) else None


def _submit(client: Any, task: dict[str, Any], chunks: list[tuple[int, int]]) -> dict:
    """One task per chunk, in row order, with unique keys (a rerun never meets old ones)."""
    run = uuid.uuid4().hex[:8]
    futures = client.map(
        _predict_block, [task] * len(chunks), chunks,
        key=[f"inkdetect-chunk-{cy}-{cx}-{run}" for cy, cx in chunks],
        retries=RETRIES, pure=False,
    )  # fmt: skip
    return dict(zip(chunks, futures, strict=True))


def _completed(client: Any, futures: dict, stop: threading.Event) -> Iterator[tuple[int, int]]:
    """Indices of finished chunks as they finish; returns early once ``stop`` is set."""
    from distributed import KilledWorker, as_completed

    finished = as_completed(list(futures.values()), loop=client.loop)
    while not finished.is_empty() and not stop.is_set():
        batch = finished.next_batch(block=False)
        if not batch:
            time.sleep(POLL_S)
        for future in batch:
            try:
                index, error = future.result()
            except KilledWorker as exc:
                raise ChildCrashedError(
                    f"dask workers died repeatedly on chunk {future.key} ({exc}); "
                    "out of memory? see the worker logs"
                ) from None
            if error is not None:
                raise rebuild_error(*error)
            yield index

"""Prediction on a dask cluster: same result as one process, worker loss, resume, CLI, errors."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import dask
import numpy as np
import pytest
import torch
import zarr
from distributed import Client, LocalCluster
from model_files import save_tiny_checkpoint

from napari_inkdetect.cli import main
from napari_inkdetect.engine import drain
from napari_inkdetect.errors import ClusterError
from napari_inkdetect.inference import (
    BatchDone,
    ChunkDone,
    PredictConfig,
    PredictFinished,
    PredictStarted,
    pending_chunks,
    predict,
    predict_chunk,
    prepare_output,
)
from napari_inkdetect.inference import job as inference_job
from napari_inkdetect.inference.cluster import (
    MALLOC_SETTINGS,
    ClusterReady,
    PinnedNanny,
    _environ_restorer,
)
from napari_inkdetect.synthetic import make_segment, write_segment

pytestmark = pytest.mark.slow
STARTS = [3, 4, 5]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """A small synthetic segment, a tiny random model and the single-process reference."""
    root = tmp_path_factory.mktemp("cluster")
    segment = write_segment(make_segment(shape=(30, 160, 224), seed=1), root)
    ckpt = save_tiny_checkpoint(root / "random.safetensors")
    data = {"segment": segment, "checkpoint": ckpt, "root": root}
    drain(predict(_config(data, root / "reference.zarr")))
    return {**data, "reference": _prob(root / "reference.zarr")}


@pytest.fixture(scope="module")
def cluster():
    """Two single-threaded worker processes, shared by the tests that pass ``scheduler``;
    the nanny pins fake GPU ids (harmless: the tests run on the CPU)."""
    restore = _environ_restorer()  # keep OMP_NUM_THREADS=1 etc. out of the other tests
    local = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                         worker_class=PinnedNanny, gpus=("5", "7"))  # fmt: skip
    with local as cluster, Client(cluster, set_as_default=False) as client:
        cluster.test_client = client
        yield cluster
    restore()


def _config(data, out: Path, **kw) -> PredictConfig:
    base = dict(segment=str(data["segment"]), checkpoint=str(data["checkpoint"]), out=str(out),
                start_layers=STARTS, tile=64, chunk=64, device="cpu", autocast="off")  # fmt: skip
    return PredictConfig(**{**base, **kw})


def _prob(path: Path) -> np.ndarray:
    return zarr.open_group(str(path), mode="r")["prob"][...]


def _chunk_keys(cluster) -> set[str]:
    """Chunk tasks the scheduler has seen (its transition log)."""
    return {str(t[0]) for t in cluster.scheduler.transition_log if "inkdetect-chunk" in str(t[0])}


# --------------------------------------------------------------------------- run on workers


def _cache_info() -> tuple[int, int]:
    info = inference_job.job_from_json.cache_info()
    return info.hits, info.misses


def _worker_env() -> tuple[str | None, str | None, str | None, int]:
    env = os.environ.get
    return (env("CUDA_VISIBLE_DEVICES"), env("OMP_NUM_THREADS"), env("MALLOC_TRIM_THRESHOLD_"),
            torch.get_num_threads())  # fmt: skip


def _hide(prefix: str) -> None:
    import napari_inkdetect.inference.cluster as c

    c._visible = lambda path: not str(path).startswith(prefix)


def _unhide() -> None:
    import napari_inkdetect.inference.cluster as c

    c._visible = os.path.exists


# --------------------------------------------------------------------------- same result


def test_local_workers_stop_then_resume_match_one_process(data, tmp_path, cluster, monkeypatch):
    cfg, stop = _config(data, tmp_path / "p.zarr"), threading.Event()
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    children = set(multiprocessing.active_children())
    first = []
    for event in predict(cfg.with_(workers=2), stop=stop):
        first.append(event)
        if isinstance(event, ChunkDone):
            stop.set()
    started, ready, stopped = first[0], first[1], first[-1]
    assert isinstance(started, PredictStarted) and isinstance(ready, ClusterReady)
    assert ready.local and ready.workers == 2 and ready.devices == ("cpu",)
    assert started.start_layers == tuple(STARTS) and started.total_chunks == 12
    assert isinstance(stopped, PredictFinished) and stopped.stopped
    _wait_until(lambda: not set(multiprocessing.active_children()) - children)
    assert not set(multiprocessing.active_children()) - children  # the cluster is closed
    assert os.environ["OMP_NUM_THREADS"] == "7" and "MALLOC_MMAP_THRESHOLD_" not in os.environ
    done = int(zarr.open_group(str(tmp_path / "p.zarr"))["done"][...].sum())
    second = list(predict(cfg.with_(scheduler=cluster.scheduler_address)))
    assert not second[1].local and second[0].done_chunks == done >= 1
    prob = _prob(tmp_path / "p.zarr")
    np.testing.assert_array_equal(prob, data["reference"])
    resumed = [e for e in second if isinstance(e, ChunkDone)]
    assert len(resumed) == 12 - done
    for e in [e for e in first if isinstance(e, ChunkDone)] + resumed:
        np.testing.assert_array_equal(e.array, prob[:, e.y0 : e.y0 + 64, e.x0 : e.x0 + 64])
    assert not second[-1].stopped and second[-1].tiles == second[0].total_tiles


def _wait_until(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)


def test_model_loads_once_per_worker_and_workers_are_pinned(data, tmp_path, cluster):
    client = cluster.test_client
    client.run(inference_job.job_from_json.cache_clear)
    cfg = _config(data, tmp_path / "p.zarr")
    events = list(predict(cfg.with_(scheduler=cluster.scheduler_address, chunk_events=False)))
    assert not any(isinstance(e, ChunkDone) for e in events)
    assert sum(isinstance(e, BatchDone) for e in events) == 12  # one per finished chunk
    calls = client.run(_cache_info)
    assert all(misses <= 1 for _, misses in calls.values())  # one job (model) per process
    assert sum(hits + misses for hits, misses in calls.values()) == 12
    trim = MALLOC_SETTINGS["MALLOC_TRIM_THRESHOLD_"]
    assert sorted(client.run(_worker_env).values()) == [("5", "1", trim, 1), ("7", "1", trim, 1)]
    np.testing.assert_array_equal(_prob(tmp_path / "p.zarr"), data["reference"])


# --------------------------------------------------------------------------- faults, resume


def test_killed_worker_gives_an_identical_result(data, tmp_path, cluster):
    client = cluster.test_client
    pids, before, killed = client.run(os.getpid), _chunk_keys(cluster), None
    cfg = _config(data, tmp_path / "p.zarr")
    for event in predict(cfg.with_(scheduler=cluster.scheduler_address, chunk_events=False)):
        if isinstance(event, BatchDone) and killed is None:
            busy = [w for w, keys in client.processing().items() if keys]
            killed = pids[busy[0]]
            os.kill(killed, signal.SIGKILL)
    assert killed is not None and event.tiles > 0 and not event.stopped
    np.testing.assert_array_equal(_prob(tmp_path / "p.zarr"), data["reference"])
    runs = [t[0] for t in cluster.scheduler.transition_log if t[2] == "processing"]
    keys = _chunk_keys(cluster) - before
    assert len(keys) == 12 and max(runs.count(k) for k in keys) >= 2  # recomputed elsewhere
    client.wait_for_workers(2, timeout=30)
    assert killed not in client.run(os.getpid).values()


def test_resume_submits_only_pending_chunks(data, tmp_path, cluster):
    cfg = _config(data, tmp_path / "p.zarr")
    prepare_output(cfg)
    every = pending_chunks(cfg)
    early = every[:5]
    for index in early:
        predict_chunk(cfg.to_dict(), index)
    files = {i: tmp_path / "p.zarr" / "prob" / "c" / "0" / str(i[0]) / str(i[1]) for i in early}
    mtimes = {i: f.stat().st_mtime_ns for i, f in files.items()}
    before = _chunk_keys(cluster)
    events = list(predict(cfg.with_(scheduler=cluster.scheduler_address)))
    assert len(_chunk_keys(cluster) - before) == 7  # tasks submitted
    assert events[0].done_chunks == 5 and events[0].total_chunks == 12
    assert sorted(e.index for e in events if isinstance(e, ChunkDone)) == every[5:]
    assert {i: f.stat().st_mtime_ns for i, f in files.items()} == mtimes  # not rewritten
    np.testing.assert_array_equal(_prob(tmp_path / "p.zarr"), data["reference"])


# --------------------------------------------------------------------------- errors, CLI


def test_paths_the_workers_cannot_see(data, tmp_path, cluster):
    client = cluster.test_client
    client.run(_hide, str(data["segment"]))
    try:
        with pytest.raises(ClusterError, match="filesystem that all workers share") as err:
            list(predict(_config(data, tmp_path / "p.zarr").with_(
                scheduler=cluster.scheduler_address)))  # fmt: skip
    finally:
        client.run(_unhide)
    assert "2 of 2 dask workers" in str(err.value) and str(data["segment"]) in str(err.value)
    assert "\n" not in str(err.value)


def test_cli_workers_and_unreachable_scheduler(data, tmp_path, capsys):
    base = ["predict", str(data["segment"]), "--checkpoint", str(data["checkpoint"]),
            "--start-layers", "3:6"]  # fmt: skip
    out = tmp_path / "cli.zarr"
    assert main([*base, "--out", str(out), "--workers", "2"]) == 0
    captured = capsys.readouterr()
    assert "2 dask workers" in captured.err + captured.out and "tiles/s" in captured.out
    # the CLI's default chunk (512 px) batches tiles differently: float rounding, <= 1/255
    assert np.abs(_prob(out).astype(int) - data["reference"]).max() <= 1
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        code = main([*base, "--out", str(tmp_path / "u.zarr"), "--scheduler", "tcp://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("napari-inkdetect: error: cannot reach the dask scheduler at tcp://")
    with pytest.raises(SystemExit):
        main([*base, "--out", str(out), "--workers", "2", "--scheduler", "tcp://127.0.0.1:9"])


def test_a_warm_local_cluster_serves_the_next_run_without_start_up(data, tmp_path):
    """``keep_cluster`` (the GUI's): the second run reuses the first run's workers (same
    scheduler, model already loaded) and starts sooner; closing leaves no worker behind."""
    from napari_inkdetect.inference.cluster import close_warm_clusters

    restore = _environ_restorer()
    children = set(multiprocessing.active_children())
    try:
        ready, seconds = [], []
        for name in ("a.zarr", "b.zarr"):
            started = time.perf_counter()
            events = list(predict(_config(data, tmp_path / name, workers=2), keep_cluster=True))
            ready.append(next(e for e in events if isinstance(e, ClusterReady)))
            seconds.append(time.perf_counter() - started)
            assert not events[-1].stopped
        assert ready[0].address == ready[1].address and ready[1].local
        assert set(multiprocessing.active_children()) - children  # still up between runs
        assert seconds[1] < seconds[0]
        np.testing.assert_array_equal(_prob(tmp_path / "b.zarr"), data["reference"])
    finally:
        closed = close_warm_clusters()
        restore()
    assert closed == 1
    _wait_until(lambda: not set(multiprocessing.active_children()) - children)
    assert not set(multiprocessing.active_children()) - children

"""Memory benchmark: predicting a whole scroll-sized segment keeps peak RSS flat (issue 14).

Run: ``python benchmarks/bench_memory.py [--sizes 2048,8192,20000] [--layers 65] [--quick]
[--train | --viewer]``.

A logical ``layers`` x 20000 x 20000 uint16 segment is written as sparse TIFF layers (headers
and holes: it costs almost no disk, reads as zeros with a few real rows). Square regions of
each size are predicted, each in a fresh interpreter, with the model replaced by a module that
returns zeros (``--null-model``, the default here: the model's own memory is not what this
measures), at the CLI's default chunk and batch. Printed: peak RSS per region and the ratio of
the largest to the smallest. Target: ratio <= 1.25 (only chunk-local accumulators and bounded
prefetch queues, never the region). ``--real-model`` runs the tiny resnet10 x0.125 instead.
``--train``: the peak RSS of a few training steps on segments of each size (sparse labels).
``--viewer`` (under ``xvfb-run -a`` without a display): the peak RSS of napari browsing a
segment of each size, zoomed out and at 1:1, as :func:`viewer_child` says.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from napari_inkdetect.engine import drain
from napari_inkdetect.inference import PredictConfig, predict
from napari_inkdetect.models import InkDetector, save_checkpoint

TARGET = 1.25


class NullModel(torch.nn.Module):
    """Zero logits at the tile's resolution: the pipeline's cost without the network's."""

    def __init__(self, info: object) -> None:
        super().__init__()
        self.info = info
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # .to(device) has something to move

    def set_activation_checkpointing(self, on: bool) -> None:
        """Nothing to checkpoint (the engine's speed options ask every model)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros((x.shape[0], 2, x.shape[-2], x.shape[-1]))


def make_sparse_segment(folder: Path, layers: int, side: int) -> Path:
    """``layers`` sparse uint16 TIFF layers of ``side`` x ``side`` (a few real rows each)."""
    out = folder / "sparse" / "layers"
    out.mkdir(parents=True, exist_ok=True)
    for z in range(layers):
        path = out / f"{z:02d}.tif"
        tifffile.imwrite(path, shape=(side, side), dtype=np.uint16)
        mm = tifffile.memmap(path)
        mm[:: max(1, side // 16), :] = 20000 + 500 * z
        mm.flush()
        del mm
    return out.parent


def child(config_json: str, null_model: bool) -> None:
    """Predict in this fresh interpreter and print its peak RSS (MB) and seconds."""
    if null_model:
        import napari_inkdetect.inference.job as job_module

        real = job_module.load_checkpoint

        def load_null(path, **kw):
            model, report = real(path, **kw)
            return NullModel(model.info), report

        job_module.load_checkpoint = load_null
    started = time.perf_counter()
    finished = drain(predict(PredictConfig.from_dict(json.loads(config_json))))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mb": peak_mb, "seconds": time.perf_counter() - started,
                      "windows": finished.tiles}))  # fmt: skip


def run_region(segment: Path, ckpt: Path, size: int, null_model: bool) -> dict:
    config = PredictConfig(
        segment=str(segment), checkpoint=str(ckpt), out=str(segment.parent / f"p{size}.zarr"),
        region=(0, 0, size, size), device="cpu", autocast="off", overwrite=True,
        chunk_events=False,
    )  # fmt: skip
    cmd = [sys.executable, __file__, "--child", json.dumps(config.to_dict())]
    cmd += ["--real-model"] if not null_model else []
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def train_child(config_json: str) -> None:
    """Train in this fresh interpreter and print its peak RSS (MB) and seconds."""
    from napari_inkdetect.training import TrainConfig, train

    started = time.perf_counter()
    drain(train(TrainConfig.from_dict(json.loads(config_json))))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mb": peak_mb, "seconds": time.perf_counter() - started}))


def train_on_size(folder: Path, layers: int, side: int) -> dict:
    """Peak RSS of a few training steps on a ``side``^2 sparse segment with sparse labels
    (a few painted strokes), tiny model, default batch: what grows with the segment."""
    from PIL import Image

    from napari_inkdetect.training import TrainConfig

    segment = make_sparse_segment(folder / f"train{side}", layers, side)
    labels = np.zeros((side, side), np.uint8)
    labels[100:140, 100:400] = 1
    labels[300:340, 100:400] = 2
    Image.fromarray(labels).save(segment / "labels.png")
    del labels
    config = TrainConfig(
        segment=str(segment), labels=str(segment / "labels.png"), out=str(segment / "run"),
        arch="resnet10", width=0.125, tile=64, batch_size=2, steps=4, val_fraction=0.0,
        val_every=10**9, device="cpu", autocast="off", start_layer=0, layers=22,
    )  # fmt: skip
    cmd = [sys.executable, __file__, "--train-child", json.dumps(config.to_dict())]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def viewer_child(segment: str) -> None:
    """Browse ``segment`` in a real napari viewer as a user does, then print the peak RSS:
    the whole segment zoomed out at three depths, then 1:1 at three places and two depths,
    each view drawn (a screenshot forces the canvas to render what it shows)."""
    import napari
    from qtpy.QtWidgets import QApplication

    started = time.perf_counter()
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1366, 768)
    viewer.open(segment, plugin="napari-inkdetect")
    volume = viewer.layers[0]
    nz, ny, nx = volume.data[0].shape if volume.multiscale else volume.data.shape
    app = QApplication.instance()

    def settle() -> None:
        for _ in range(5):
            app.processEvents()
            time.sleep(0.02)
        viewer.screenshot(canvas_only=True)

    views = 0
    viewer.reset_view()  # the whole segment
    for z in (0, nz // 2, nz - 1):
        viewer.dims.set_current_step(0, z)
        settle()
        views += 1
    for fy, fx in ((0.25, 0.25), (0.5, 0.5), (0.9, 0.1)):
        viewer.camera.center = (fy * ny, fx * nx)
        viewer.camera.zoom = 1.0  # one screen pixel per volume pixel
        for z in (nz // 2, nz // 2 + 1):
            viewer.dims.set_current_step(0, z)
            settle()
            views += 1
    viewer.close()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mb": peak_mb, "seconds": time.perf_counter() - started,
                      "views": views, "multiscale": bool(volume.multiscale)}))  # fmt: skip


def browse_size(folder: Path, layers: int, side: int) -> dict:
    """Peak RSS of a fresh interpreter browsing a ``side``^2 sparse segment in napari."""
    segment = make_sparse_segment(folder / f"view{side}", layers, side)
    env = {**os.environ, "NAPARI_INKDETECT_CACHE": str(folder / f"cache{side}")}
    cmd = [sys.executable, __file__, "--viewer-child", str(segment)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="2048,8192,20000", help="region sides, px")
    parser.add_argument("--layers", type=int, default=65)
    parser.add_argument("--real-model", action="store_true", help="resnet10 x0.125, not null")
    parser.add_argument("--quick", action="store_true", help="sizes 1024,4096 on 26 layers")
    parser.add_argument("--train", action="store_true", help="training's peak RSS instead")
    parser.add_argument(
        "--viewer", action="store_true", help="napari browsing it instead (needs a display)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--train-child", help=argparse.SUPPRESS)
    parser.add_argument("--viewer-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, not args.real_model)
    if args.train_child:
        return train_child(args.train_child)
    if args.viewer_child:
        return viewer_child(args.viewer_child)
    sizes = [1024, 4096] if args.quick else [int(s) for s in args.sizes.split(",")]
    layers = 26 if args.quick else args.layers
    if args.viewer:
        with tempfile.TemporaryDirectory(prefix="bench-memory-viewer-") as tmp:
            browsed = {size: browse_size(Path(tmp), layers, size) for size in sizes}
        title = (
            f"napari browsing {layers}-layer sparse segments (1366 x 768 window): zoomed out "
            "at 3 depths, 1:1 at 3 places x 2 depths; a fresh interpreter each"
        )
        return report(title, "segment", browsed, lambda r: f"{r['views']} views  "
                      f"({'multiscale' if r['multiscale'] else 'one level'})")  # fmt: skip
    if args.train:
        with tempfile.TemporaryDirectory(prefix="bench-memory-train-") as tmp:
            trained = {size: train_on_size(Path(tmp), layers, size) for size in sizes}
        title = (
            f"training, {layers}-layer sparse segments, sparse labels, resnet10 x0.125, "
            "tile 64, batch 2, 4 steps, CPU"
        )
        return report(title, "segment", trained, lambda r: "")
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        folder = Path(tmp)
        segment = make_sparse_segment(folder, layers, max(sizes))
        torch.manual_seed(0)
        ckpt = save_checkpoint(folder / "tiny.safetensors", InkDetector("resnet10", 0.125))
        model = "resnet10 x0.125" if args.real_model else "null model"
        print(f"{layers} x {max(sizes)} x {max(sizes)} sparse segment, {model}, CPU, "
              "default chunk and batch")  # fmt: skip
        results = {size: run_region(segment, ckpt, size, not args.real_model) for size in sizes}
    return report(None, "region", results, lambda r: f"{r['windows']:>7} windows")


def report(title: str | None, what: str, results: dict[int, dict], more) -> None:
    """Print ``title``, a row per size (peak RSS, ``more(row)``, seconds) and the ratio of the
    largest size's peak RSS to the smallest's against :data:`TARGET`."""
    if title:
        print(title)
    for size, r in results.items():
        print(f"{what} {size:>6}^2  peak RSS {r['peak_mb']:8.1f} MB  {more(r)}  "
              f"{r['seconds']:7.1f} s")  # fmt: skip
    sizes = list(results)
    ratio = results[sizes[-1]]["peak_mb"] / results[sizes[0]]["peak_mb"]
    ok = "ok" if ratio <= TARGET else "MISSED"
    print(f"RSS ratio {sizes[-1]}^2 / {sizes[0]}^2: {ratio:.3f}  (target <= {TARGET}) {ok}")


if __name__ == "__main__":
    main()

"""Responsiveness benchmark: how long the napari event loop is blocked while the docks work.

Run: ``xvfb-run -a python benchmarks/bench_responsiveness.py [--steps 150] [--size 512]``.

A 10 ms Qt timer runs on the GUI thread (the docks' ``StallMeter``); a late tick means the
loop was blocked that long. Measured through the real docks in a shown viewer:

1. idle: the viewer with a segment, nothing running (the floor of this machine);
2. finetune: the Finetune dock trains a 1/8-width resnet10 in its child process, with a live
   preview every ``steps // 3`` steps (preview predictions run in a thread of the GUI process);
3. predict: the Predict dock predicts the whole mask over 5 start layers in a thread,
   streaming chunks into the overlay (refreshes throttled to 4 per second);
4. follow: the Predict dock in follow-the-view mode while the camera pans every 0.3 s.

Target: the longest stall < 100 ms in 2-4. Prints the longest stall, the 99th percentile and
the ratio to idle.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from napari_inkdetect._napari_app import add_docks
from napari_inkdetect._widgets._runs import StallMeter
from napari_inkdetect._widgets.prediction_overlay import camera_of
from napari_inkdetect.synthetic import make_segment, write_segment

TARGET_MS = 100.0


def wait(app: QApplication, condition, timeout: float = 900.0) -> None:
    end = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > end:
            raise TimeoutError("the run did not finish")
        app.processEvents()
        time.sleep(0.002)


def measure(app: QApplication, action, done, meter: StallMeter) -> dict[str, float]:
    """Run ``action``, pump events until ``done()``, and report the meter's stalls."""
    meter.start()
    started = time.perf_counter()
    action()
    wait(app, done)
    meter.stop()
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "longest_ms": round(meter.longest_ms, 1),
        "p99_ms": round(meter.percentile(99), 1),
        "ticks": meter.ticks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--size", type=int, default=512, help="segment side (px)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-responsive-"))
    seg = make_segment(shape=(24, args.size, args.size), crackle_strength=6.0, seed=3)
    folder = write_segment(seg, tmp, "s")
    app = QApplication.instance() or napari.qt.get_qapp()
    viewer = napari.Viewer(show=True)
    viewer.open(folder, plugin="napari-inkdetect")
    _, finetune, predict, _ = add_docks(viewer)
    start = max(0, seg.ink_layers[0] - 3)
    viewer.dims.set_current_step(0, start)
    wait(app, lambda: True)
    meter = StallMeter()
    results: dict[str, dict[str, float]] = {}

    idle_until = time.perf_counter() + 5
    results["idle"] = measure(app, lambda: None, lambda: time.perf_counter() > idle_until, meter)

    finetune.labels_combo.setCurrentText("s train labels")
    finetune.device_combo.setCurrentText("cpu")
    finetune.layers_spin.setValue(12)
    finetune.tile_spin.setValue(64)
    finetune.steps_spin.setValue(args.steps)
    finetune.val_every_spin.setValue(args.steps)
    finetune.preview_spin.setValue(max(1, args.steps // 3))
    finetune.runs_edit.setText(str(tmp / "runs"))
    results["finetune"] = measure(
        app, finetune.run_button.click, lambda: not finetune.running, meter
    )
    results["finetune"]["previews"] = finetune.previews

    predict.region_combo.setCurrentText("Whole mask")
    predict.device_combo.setCurrentText("cpu")
    predict.out_edit.setText(str(tmp / "predictions"))
    predict.start_from.setValue(max(0, start - 4))
    predict.start_to.setValue(max(0, start - 4) + 8)
    results["predict"] = measure(app, predict.run_button.click, lambda: not predict.running, meter)
    results["predict"]["tiles_per_s"] = round(predict.runner.finished.tiles_per_s, 1)

    camera = camera_of(viewer)
    camera.zoom *= 3
    predict.max_view_spin.setValue(256)
    centres = [(args.size * f, args.size * g) for f, g in np.random.default_rng(0).random((8, 2))]
    pans = iter(centres)

    def pan_then_follow() -> None:
        predict.follow_check.setChecked(True)

    last_pan = [time.perf_counter()]

    def panned_all() -> bool:
        now = time.perf_counter()
        if now - last_pan[0] > 0.3:
            last_pan[0] = now
            centre = next(pans, None)
            if centre is None:
                return not predict.running
            camera.center = (0, *centre)
        return False

    results["follow"] = measure(app, pan_then_follow, panned_all, meter)
    predict.follow_check.setChecked(False)

    idle = max(results["idle"]["longest_ms"], 1.0)
    print(json.dumps(results, indent=1))
    print(f"{'phase':<10}{'longest ms':>12}{'p99 ms':>9}{'x idle':>9}  target < {TARGET_MS:.0f}")
    for phase, r in results.items():
        ok = "" if phase == "idle" else ("ok" if r["longest_ms"] < TARGET_MS else "MISSED")
        print(
            f"{phase:<10}{r['longest_ms']:>12.1f}{r['p99_ms']:>9.1f}"
            f"{r['longest_ms'] / idle:>9.2f}  {ok}"
        )
    viewer.close()


if __name__ == "__main__":
    main()

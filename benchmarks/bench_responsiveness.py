"""Responsiveness benchmark: how long the napari event loop is blocked while the docks work.

Run: ``xvfb-run -a python benchmarks/bench_responsiveness.py [--steps 150] [--size 512]``.

A 10 ms Qt timer runs on the GUI thread (the docks' ``StallMeter``); a late tick means the
loop was blocked that long. Measured through the real docks in a shown viewer:

1. idle: the viewer with a segment, nothing running, after a 3 s warm-up (the floor of this
   machine: under Xvfb every repaint goes through Mesa's software OpenGL);
2. finetune: the Finetune dock trains a 1/8-width resnet10 in its child process, with a live
   preview every ``steps // 3`` steps (preview predictions run in a thread of the GUI process);
3. predict: the Predict dock predicts the whole mask over 5 start layers in a thread,
   streaming chunks into the overlay (refreshes throttled to 4 per second);
4. pan: the camera pans every 0.3 s, nothing running (the floor for 5: each pan repaints);
5. follow: the Predict dock in follow-the-view mode while the camera pans the same way.

Target: the longest stall < 100 ms in 2, 3 and 5. Prints the longest stall, the 99th
percentile, the number of stalls over 100 ms and the ratio to the matching floor.
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
        "over_100ms": sum(late > TARGET_MS for late in meter.lates),
        "ticks": meter.ticks,
    }


def panner(camera, centres, busy):
    """A ``done()`` that pans to the next centre every 0.3 s, true once all are visited and
    ``busy()`` is false."""
    pending, last = list(centres), [time.perf_counter()]

    def done() -> bool:
        if time.perf_counter() - last[0] > 0.3:
            last[0] = time.perf_counter()
            if not pending:
                return not busy()
            camera.center = (0, *pending.pop(0))
        return False

    return done


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
    warm_until = time.perf_counter() + 3
    wait(app, lambda: time.perf_counter() > warm_until)

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
    results["pan"] = measure(app, lambda: None, panner(camera, centres, lambda: False), meter)
    results["follow"] = measure(
        app,
        lambda: predict.follow_check.setChecked(True),
        panner(camera, centres[::-1], lambda: predict.running),
        meter,
    )
    predict.follow_check.setChecked(False)

    print(json.dumps(results, indent=1))
    floors = {"finetune": "idle", "predict": "idle", "follow": "pan"}
    header = f"{'phase':<10}{'longest ms':>12}{'p99 ms':>9}{'>100 ms':>9}{'x floor':>9}"
    print(f"{header}  target < {TARGET_MS:.0f}")
    for phase, r in results.items():
        floor = results[floors.get(phase, phase)]["longest_ms"]
        ok = "" if phase not in floors else ("ok" if r["longest_ms"] < TARGET_MS else "MISSED")
        print(
            f"{phase:<10}{r['longest_ms']:>12.1f}{r['p99_ms']:>9.1f}{r['over_100ms']:>9}"
            f"{r['longest_ms'] / max(floor, 1.0):>9.2f}  {ok}"
        )
    viewer.close()


if __name__ == "__main__":
    main()

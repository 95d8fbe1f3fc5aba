"""Record the README's screenshot and GIF: the sample segment, Finetune with live preview, then
Predict, captured from a real viewer.

Run: ``xvfb-run -a -s "-screen 0 1600x1000x24" python docs/record_workflow.py [--steps 600]``
(about 3 minutes on 2 CPU cores). Writes ``docs/workflow.png`` and ``docs/workflow.gif``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import napari
import numpy as np
from PIL import Image
from qtpy.QtWidgets import QApplication

from napari_inkdetect._napari_app import add_docks, add_layers
from napari_inkdetect._sample_data import make_sample_segment

DOCS = Path(__file__).parent
GIF_WIDTH = 560  # with 96 colours: about 1.4 MB for the whole loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=float, default=16.0, help="seconds between frames")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="record-"))
    app = QApplication.instance() or napari.qt.get_qapp()
    viewer = napari.Viewer(title="napari-inkdetect: synthetic crackle sample")
    viewer.window.resize(1560, 960)
    add_layers(viewer, make_sample_segment())
    _, finetune, predict, _ = add_docks(viewer)
    centre = 17  # the window 6-27, centred on layer 17, holds the sample's ink band (16-22)
    viewer.dims.set_current_step(0, centre)
    frames: list[Image.Image] = []

    def grab() -> None:
        shot = viewer.screenshot(canvas_only=False, flash=False)
        image = Image.fromarray(np.asarray(shot)[..., :3])
        size = (GIF_WIDTH, round(image.height * GIF_WIDTH / image.width))
        frames.append(image.resize(size, Image.LANCZOS).quantize(96, Image.Quantize.MEDIANCUT))

    def pump(until, every: float) -> None:
        last = 0.0
        while not until():
            app.processEvents()
            if time.perf_counter() - last > every:
                grab()
                last = time.perf_counter()
            time.sleep(0.01)

    def settle(seconds: float) -> None:
        end = time.perf_counter() + seconds
        pump(lambda: time.perf_counter() > end, 10 * seconds)

    pump(lambda: len(frames) >= 2, 0.5)
    finetune.device_combo.setCurrentText("cpu")
    finetune.steps_spin.setValue(args.steps)
    finetune.preview_spin.setValue(max(1, args.steps // 4))
    finetune.preview_side_spin.setValue(768)
    finetune.runs_edit.setText(str(tmp / "runs"))
    finetune.run_button.click()
    pump(lambda: not finetune.running, args.every)

    predict.region_combo.setCurrentText("Whole mask")
    predict.out_edit.setText(str(tmp / "predictions"))
    predict.val_combo.setCurrentText("synthetic validation labels")
    preview = next((x for x in viewer.layers if "preview" in x.name), None)
    if preview is not None:
        preview.visible = False
    predict.run_button.click()
    pump(lambda: not predict.running, 1.0)
    for layer in viewer.layers:
        if layer.name.endswith(("train labels", "validation labels")):
            layer.visible = False
    predict.outline_check.setChecked(True)
    predict.threshold_slider.setValue(50)
    for z in range(predict.centre_from.value(), predict.centre_to.value() + 1, 2):
        viewer.dims.set_current_step(0, z)
        settle(1.2)
        grab()
    viewer.dims.set_current_step(0, centre)
    settle(1.5)
    viewer.screenshot(str(DOCS / "workflow.png"), canvas_only=False, flash=False)
    frames[0].save(
        DOCS / "workflow.gif",
        save_all=True,
        append_images=frames[1:],
        duration=600,
        loop=0,
        optimize=True,
    )
    print(f"{len(frames)} frames; {DOCS / 'workflow.gif'}, {DOCS / 'workflow.png'}")
    viewer.close()


if __name__ == "__main__":
    main()

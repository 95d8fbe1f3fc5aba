"""GUI faults (issue 14, item 6): what a user at 2 am does to a running viewer.

* The segment's files go away while the viewer shows it (deleted, the folder renamed, a
  network drive gone, a layer file truncated): browsing gives one notification saying what
  happened and what to do, black where nothing can be read, and a viewer that still works.
* The viewer is closed during an export and during a prediction on local dask workers: the
  run ends (no thread, no worker process left), nothing half-written, and what was finished
  stays valid (a rerun resumes).
* A dock is removed and a new one added during a run: the old run stops cleanly (a dock
  nobody sees), and the new dock never becomes a second writer of the same output.

Real viewers, files, models and processes. To act while a run is in the middle, a test holds
the worker thread at one event (:class:`Gate`), as if that frame or chunk took a while.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import tifffile
import zarr
from fuzz.records import recorded
from model_files import save_tiny_checkpoint
from PIL import Image
from qtpy.QtCore import Qt

from napari_inkdetect import _napari_layers
from napari_inkdetect._napari_layers import strict_data
from napari_inkdetect._widgets.export_dock import ExportWidget
from napari_inkdetect._widgets.finetune_dock import FinetuneWidget
from napari_inkdetect._widgets.predict_dock import PredictWidget
from napari_inkdetect._widgets.prediction_overlay import camera_of
from napari_inkdetect.engine import drain
from napari_inkdetect.errors import InkDetectError
from napari_inkdetect.export import FrameRendered
from napari_inkdetect.inference import ChunkDone, PredictConfig, PredictStarted, predict
from napari_inkdetect.io.locks import lock_path
from napari_inkdetect.io.prediction_store import done_flags, open_prediction
from napari_inkdetect.models import load_checkpoint
from napari_inkdetect.synthetic import make_segment, write_segment
from napari_inkdetect.training import StepDone

PLUGIN = "napari-inkdetect"
RUN_TIMEOUT_MS = 90_000
SHOWN = 6  # the layer the depth slider shows when the fault happens
#: a layer file the viewer has open (memory-mapped to set the contrast, never shown), and one
#: it never read: opening the segment reads the contrast from layers 3..8 and napari shows 0
OPEN, UNREAD = 4, 11
REFUSED = "old run stops cleanly; the new dock's run is refused in one line (the output's lock)"
ONE_NOTE = "one notification (what happened, what to do); black where unreadable; usable"


class Gate:
    """Connected directly to a worker's ``yielded``: holds the worker thread at the first
    event of ``kind`` until :meth:`open`, so the run is mid-way while the test acts."""

    def __init__(self, kind: type) -> None:
        self.kind = kind
        self.reached = threading.Event()
        self._open = threading.Event()

    def __call__(self, event: object) -> None:
        if isinstance(event, self.kind) and not self.reached.is_set():
            self.reached.set()
            self._open.wait(60)

    def attach(self, worker) -> Gate:
        worker.yielded.connect(self, Qt.ConnectionType.DirectConnection)
        return self

    def open(self) -> None:
        self._open.set()


def _ended(worker) -> bool:
    """The worker's thread has left its run (superqt clears ``is_running`` at the end)."""
    return not worker.is_running


#: started once per interpreter by the first dask cluster and kept, idle, until it exits:
#: multiprocessing's resource tracker and distributed's offload thread (not a run's workers)
HELPERS = ("multiprocessing.resource_tracker", "Dask-Offload")


def _leftovers(children_before: set[int], threads_before: set[threading.Thread]) -> list[str]:
    """Processes started by this process and threads started since the test began that still
    run (each named), after up to 30 s for them to end; the interpreter's helpers aside."""
    deadline = time.monotonic() + 30
    while True:
        children = [
            p
            for p in psutil.Process().children(recursive=True)
            if p.pid not in children_before and _alive(p) and not _helper(_cmd(p))
        ]
        threads = [
            t
            for t in threading.enumerate()
            if t not in threads_before
            and t.is_alive()
            and not isinstance(t, threading._DummyThread)  # Qt's pool threads, seen by Python
            and not _helper(t.name)
        ]
        if (not children and not threads) or time.monotonic() > deadline:
            return [f"process {p.pid} {_cmd(p)}" for p in children] + [
                f"thread {t.name}" for t in threads
            ]
        time.sleep(0.2)


def _helper(name: str) -> bool:
    return any(helper in name for helper in HELPERS)


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _cmd(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())[:120]
    except psutil.Error:
        return "?"


def _tracebacks(capfd) -> list[str]:
    out, err = capfd.readouterr()
    text = out + err
    return [line for line in text.splitlines() if "Traceback" in line or "Error:" in line]


# --------------------------------------------------------------------------- files vanish


def _layer_files(segment: Path) -> list[Path]:
    return sorted((segment / "layers").glob("*.tif"))


def _fault(segment: Path, fault: str) -> None:
    """Do ``fault`` to the segment on disk."""
    files = _layer_files(segment)
    if fault == "folder deleted":
        shutil.rmtree(segment)
    elif fault == "folder renamed (network drive gone)":
        segment.rename(segment.with_name(segment.name + "-moved"))
    elif fault == "layer files deleted":
        for f in files:
            f.unlink()
    elif fault == "open layer file truncated in place":
        os.truncate(files[OPEN], 64)
    elif fault == "unread layer file truncated in place":
        os.truncate(files[UNREAD], 64)
    else:
        raise ValueError(fault)


def _browse(viewer, layer, rounds: int = 3) -> list[BaseException]:
    """Move the depth slider over every layer and refresh, ``rounds`` times; what escaped."""
    escaped = []
    depth = layer.level_shapes[0][0] if layer.multiscale else layer.data.shape[0]
    for _ in range(rounds):
        for z in range(depth):
            try:
                viewer.dims.set_current_step(0, z)
            except Exception as exc:  # what escapes a slider move is what is under test
                escaped.append(exc)
        try:
            layer.refresh()
        except Exception as exc:
            escaped.append(exc)
    return escaped


def _judge(outcome: dict, escaped: list, notes: list, segment: Path) -> None:
    """Record what browsing did, then assert it was one clear notification."""
    messages = [str(n.message) for n in notes]
    if escaped:
        kinds = sorted({type(e).__name__ for e in escaped})
        outcome["observed"] = f"traceback ({', '.join(kinds)}) on {len(escaped)} slider moves"
    elif len(messages) != 1:
        outcome["observed"] = f"{len(messages)} notifications, expected one (but {messages[:2]})"
    else:
        outcome["observed"] = "one notification; black where unreadable; viewer usable"
    assert not escaped, escaped[:3]
    assert len(messages) == 1, messages
    (message,) = messages
    assert "\n" not in message and str(segment) in message, message
    assert "reopen" in message, message


FAULTS = [
    "folder deleted",
    "folder renamed (network drive gone)",
    "layer files deleted",
    "open layer file truncated in place",
    "unread layer file truncated in place",
]


@pytest.mark.parametrize("fault", FAULTS)
def test_segment_files_vanish_while_shown(make_napari_viewer, small_segment, fault, notifications):
    viewer = make_napari_viewer()
    (volume, *_) = viewer.open(small_segment, plugin=PLUGIN)
    expected = [tifffile.imread(f) for f in _layer_files(small_segment)]
    viewer.dims.set_current_step(0, SHOWN)
    with recorded(f"segment {fault} while shown", "napari viewer (depth slider)", ONE_NOTE) as out:
        _fault(small_segment, fault)
        escaped = _browse(viewer, volume)
        _judge(out, escaped, notifications, small_segment)
        shown = [np.asarray(volume.data[z]) for z in range(len(expected))]
        for z, (plane, truth) in enumerate(zip(shown, expected, strict=True)):
            assert not plane.any() or np.array_equal(plane, truth), f"layer {z}: garbage"
        assert any(not plane.any() for plane in shown), "the fault was not noticed"
        if "truncated" in fault:
            bad = OPEN if fault.startswith("open") else UNREAD
            assert not shown[bad].any()
            assert all(np.array_equal(shown[z], expected[z]) for z in range(12) if z != bad)
        # what computes on the volume (the ink-depth estimate) reads it strictly: no black
        with pytest.raises(InkDetectError, match=r"\.tif: .*(gone|truncated)"):
            np.asarray(strict_data(volume.data)[OPEN if fault.startswith("open") else UNREAD])
        # still usable: another layer, the slider, removing the broken volume
        viewer.add_image(np.ones((12, 96, 128), np.uint8), name="other")
        viewer.dims.set_current_step(0, 1)
        viewer.layers.remove(volume)
        viewer.dims.set_current_step(0, 2)
        assert len(notifications) == 1


def test_multiscale_volume_gone_while_panning(
    make_napari_viewer, small_segment, notifications, monkeypatch, tmp_path
):
    """A pyramid (here from 128 px wide) reads coarse levels while zoomed out and new tiles
    while panning, at draw time: the drive going away is still one notification."""
    monkeypatch.setattr(_napari_layers, "PYRAMID_ABOVE", 64)
    monkeypatch.setattr(_napari_layers, "PYRAMID_COARSEST", 32)
    monkeypatch.setenv("NAPARI_INKDETECT_CACHE", str(tmp_path / "cache"))
    viewer = make_napari_viewer(show=True)
    (volume, *_) = viewer.open(small_segment, plugin=PLUGIN)
    assert volume.multiscale and len(volume.data) == 3
    viewer.dims.set_current_step(0, SHOWN)
    viewer.screenshot(canvas_only=True)
    case = "segment folder renamed while a pyramid is shown (zoom, pan)"
    with recorded(case, "napari viewer (canvas draw)", ONE_NOTE) as out:
        _fault(small_segment, "folder renamed (network drive gone)")
        escaped = []
        camera = camera_of(viewer)
        for zoom, z, centre in [(0.2, 0, (48, 64)), (0.5, 11, (20, 20)), (4, 2, (80, 100))] * 2:
            camera.zoom, camera.center = zoom, centre
            try:
                viewer.dims.set_current_step(0, z)
                viewer.screenshot(canvas_only=True)
            except Exception as exc:  # what escapes a draw is what is under test
                escaped.append(exc)
        escaped += _browse(viewer, volume, rounds=1)
        _judge(out, escaped, notifications, small_segment)
        assert viewer.screenshot(canvas_only=True).shape[-1] == 4


# --------------------------------------------------------------------------- closing napari


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A 12 x 96 x 128 segment, a tiny 8-layer checkpoint and its prediction (5 windows)."""
    root = tmp_path_factory.mktemp("gui-faults")
    segment = write_segment(make_segment(shape=(12, 96, 128), seed=3), root, "g")
    checkpoint = save_tiny_checkpoint(root / "tiny.safetensors", in_layers=8)
    config = _predict_config(segment, checkpoint, root / "pred.zarr", start_layers=(0, 1, 2, 3, 4))
    prediction = drain(predict(config)).path
    # wider, for a run on workers that must still be going after the test's steps
    wide = write_segment(make_segment(shape=(12, 256, 384), seed=3), root, "w")
    return {
        "root": root, "segment": segment, "wide": wide, "checkpoint": checkpoint,
        "prediction": prediction,
    }  # fmt: skip


def _predict_config(segment: Path, checkpoint: Path, out: Path, **kw) -> PredictConfig:
    base = dict(segment=str(segment), checkpoint=str(checkpoint), out=str(out), tile=64,
                chunk=32, device="cpu", autocast="off", start_layers=(2, 3))  # fmt: skip
    return PredictConfig(**{**base, **kw})


def test_closing_the_viewer_during_an_export(
    make_napari_viewer, inputs, tmp_path, qtbot, capfd, request
):
    viewer = make_napari_viewer()
    viewer.open(inputs["prediction"], plugin=PLUGIN)
    dock = ExportWidget(viewer)
    viewer.window.add_dock_widget(dock, name="Export")
    out = tmp_path / "export"
    dock.folder_edit.setText(str(out))
    dock.gif_check.setChecked(True)
    dock.mp4_check.setChecked(False)
    children = {p.pid for p in psutil.Process().children(recursive=True)}
    threads = set(threading.enumerate())
    capfd.readouterr()
    case = "viewer closed during an export (depth-sweep GIF half rendered)"
    expected = "run ends, no thread left; finished images intact; no half-written GIF"
    with recorded(case, "Export dock", expected) as outcome:
        worker = dock.start()
        gate = Gate(FrameRendered).attach(worker)
        request.addfinalizer(gate.open)
        qtbot.waitUntil(gate.reached.is_set, timeout=RUN_TIMEOUT_MS)
        viewer.close()
        gate.open()
        qtbot.waitUntil(lambda: _ended(worker), timeout=RUN_TIMEOUT_MS)
        left = _leftovers(children, threads)
        printed = _tracebacks(capfd)
        files = sorted(p.name for p in out.iterdir())
        outcome["observed"] = (
            f"left {left}" if left else f"printed {printed[:1]}" if printed else
            "run ended; images intact; no GIF" if not any(".gif" in f for f in files) else
            f"data lost (half-written {files})"
        )  # fmt: skip
        assert not left and not printed, (left, printed)
        assert not [f for f in files if ".gif" in f or "tmp" in f], files
        assert any(f.endswith(".png") for f in files), files
        for f in out.glob("*.png"):
            with Image.open(f) as image:
                image.load()


def _predict_dock(viewer, inputs, tmp_path) -> PredictWidget:
    dock = PredictWidget(viewer)
    viewer.window.add_dock_widget(dock, name="Predict")
    dock.checkpoint_edit.setText(str(inputs["checkpoint"]))
    dock.out_edit.setText(str(tmp_path / "predictions"))
    dock.device_combo.setCurrentText("cpu")
    dock.region_combo.setCurrentText("Whole mask")
    dock.centre_from.setValue(6)
    dock.centre_to.setValue(7)
    return dock


def _reference(inputs, config: PredictConfig, tmp_path: Path) -> np.ndarray:
    clean = config.with_(out=str(tmp_path / "reference.zarr"), workers=None, scheduler=None)
    return np.asarray(open_prediction(drain(predict(clean)).path)[0])


def _chunks_intact(out: Path, reference: np.ndarray) -> tuple[int, int]:
    """(chunks flagged done, chunks): each done chunk holds exactly the reference's values."""
    root = zarr.open_group(str(out), mode="r")
    prob, done = root["prob"], done_flags(root)
    cy, cx = prob.chunks[-2:]
    for y, x in zip(*np.nonzero(done), strict=True):
        box = (slice(None), slice(y * cy, (y + 1) * cy), slice(x * cx, (x + 1) * cx))
        np.testing.assert_array_equal(prob[box], reference[box], err_msg=f"chunk {y},{x}")
    return int(done.sum()), int(done.size)


@pytest.mark.slow
def test_local_workers_prediction_dock_readded_then_viewer_closed(
    make_napari_viewer, inputs, tmp_path, qtbot, capfd, notifications, request
):
    """One cluster run for two faults: its dock removed and a new one run into the same
    output (refused: the run on local workers holds the output's lock), then the viewer
    closed while it goes on."""
    viewer = make_napari_viewer()
    viewer.open(inputs["wide"], plugin=PLUGIN)
    old = _predict_dock(viewer, inputs, tmp_path)
    old.run_on_combo.setCurrentText("local workers")
    old.workers_spin.setValue(1)
    config = old.build_config().with_(chunk=32)
    children = {p.pid for p in psutil.Process().children(recursive=True)}
    threads = set(threading.enumerate())
    capfd.readouterr()
    worker = old.start(config)
    gate = Gate(ChunkDone).attach(worker)
    request.addfinalizer(gate.open)  # a failed check must not leave the run held
    qtbot.waitUntil(gate.reached.is_set, timeout=RUN_TIMEOUT_MS)
    out = Path(old.config.out)
    case = "Predict dock (local workers) removed and a new one run into the same output"
    with recorded(case, "Predict dock (local workers)", REFUSED) as outcome:
        viewer.window.remove_dock_widget(old)
        new = _predict_dock(viewer, inputs, tmp_path)
        new.run_on_combo.setCurrentText("local workers")
        assert new.start(config) is not None, new.status_label.text()
        qtbot.waitUntil(lambda: not new.running, timeout=RUN_TIMEOUT_MS)
        outcome["observed"] = _second_writer(new)
        _assert_refused(new, notifications)
        outcome["observed"] = "refused in one line naming the run (pid, host)"
    case = "viewer closed during a prediction on local dask workers"
    expected = "run ends, no worker process or thread left; done chunks valid; a rerun resumes"
    with recorded(case, "Predict dock (local workers)", expected) as outcome:
        viewer.close()
        gate.open()
        qtbot.waitUntil(lambda: _ended(worker), timeout=RUN_TIMEOUT_MS)
        left = _leftovers(children, threads)
        printed = _tracebacks(capfd)
        outcome["observed"] = f"left {left}" if left else f"printed {printed[:1]}"
        assert not left and not printed, (left, printed)
        reference = _reference(inputs, config, tmp_path)
        done, total = _chunks_intact(out, reference)
        assert not lock_path(out).exists()
        started = []
        rerun = config.with_(workers=None)
        drain(
            predict(rerun), on_event=lambda e: isinstance(e, PredictStarted) and started.append(e)
        )
        np.testing.assert_array_equal(np.asarray(open_prediction(out)[0]), reference)
        assert started[0].done_chunks == done
        assert done > 0 and total == 96  # how many the worker finished meanwhile varies
        outcome["observed"] = "ended cleanly; the chunks done are valid; a rerun resumed"


def _second_writer(dock: PredictWidget) -> str:
    """What the new dock's run did, in the report's words (before it is asserted)."""
    status = dock.status_label.text()
    if status.startswith("Error: ") and "another run" in status:
        return "refused"
    return f"accepted (should be refused): a second writer ran ({status[:50]})"


def _assert_refused(dock: PredictWidget, notifications: list) -> None:
    """The dock's run was refused once, in one line naming this process (the lock's owner)."""
    refused = [str(n.message) for n in notifications if "another run" in str(n.message)]
    assert len(refused) == 1 and f"pid {os.getpid()}" in refused[0], (
        refused,
        dock.status_label.text(),
    )
    assert "\n" not in refused[0] and dock.status_label.text().startswith("Error: ")


# --------------------------------------------------------------------------- docks re-added


def test_predict_dock_removed_and_readded_during_a_run(
    make_napari_viewer, inputs, tmp_path, qtbot, capfd, notifications, request
):
    viewer = make_napari_viewer()
    viewer.open(inputs["segment"], plugin=PLUGIN)
    old = _predict_dock(viewer, inputs, tmp_path)
    config = old.build_config().with_(chunk=32)
    capfd.readouterr()
    case = "Predict dock removed and a new one run into the same output mid-run"
    with recorded(case, "Predict dock", REFUSED) as outcome:
        first = old.start(config)
        gate = Gate(ChunkDone).attach(first)
        request.addfinalizer(gate.open)
        qtbot.waitUntil(gate.reached.is_set, timeout=RUN_TIMEOUT_MS)
        viewer.window.remove_dock_widget(old)
        new = _predict_dock(viewer, inputs, tmp_path)
        second = new.start(config)
        assert second is not None, new.status_label.text()
        qtbot.waitUntil(lambda: not new.running, timeout=RUN_TIMEOUT_MS)
        outcome["observed"] = _second_writer(new)
        _assert_refused(new, notifications)
        gate.open()
        qtbot.waitUntil(lambda: _ended(first), timeout=RUN_TIMEOUT_MS)
        printed = _tracebacks(capfd)
        assert not printed, printed
        reference = _reference(inputs, config, tmp_path)
        done, total = _chunks_intact(Path(config.out), reference)
        assert not lock_path(config.out).exists()
        assert 0 < done < total, "the old run was not stopped mid-way"
        outcome["observed"] = "refused in one line; the old run stopped, its chunks valid"
        # the new dock works: it resumes the output the old run left
        assert new.start(config) is not None
        qtbot.waitUntil(lambda: not new.running, timeout=RUN_TIMEOUT_MS)
        np.testing.assert_array_equal(np.asarray(open_prediction(config.out)[0]), reference)


@pytest.mark.slow
def test_finetune_dock_removed_and_readded_during_a_run(segment_viewer, tmp_path, qtbot, capfd):
    def dock() -> FinetuneWidget:
        widget = FinetuneWidget(segment_viewer)
        segment_viewer.window.add_dock_widget(widget, name="Finetune")
        widget.new_radio.setChecked(True)
        widget.width_spin.setValue(0.125)
        widget.layers_spin.setValue(8)
        widget.tile_spin.setValue(64)
        widget.batch_spin.setValue(2)
        widget.device_combo.setCurrentText("cpu")
        widget.val_every_spin.setValue(1000)
        widget.preview_spin.setValue(0)
        widget.runs_edit.setText(str(tmp_path / "runs"))
        return widget

    segment_viewer.dims.set_current_step(0, 2)
    old = dock()
    old.steps_spin.setValue(1000)
    capfd.readouterr()
    children = {p.pid for p in psutil.Process().children(recursive=True)}
    threads = set(threading.enumerate())
    case = "Finetune dock removed mid-run, a new one added"
    expected = "old run stops, saving its checkpoint; no process left; the new dock continues"
    with recorded(case, "Finetune dock", expected) as outcome:
        worker = old.start()
        steps = []
        worker.yielded.connect(lambda e: isinstance(e, StepDone) and steps.append(e.step))
        qtbot.waitUntil(lambda: bool(steps), timeout=RUN_TIMEOUT_MS)
        segment_viewer.window.remove_dock_widget(old)
        qtbot.waitUntil(lambda: _ended(worker), timeout=RUN_TIMEOUT_MS)
        left = _leftovers(children, threads)
        run_dir = Path(old.config.out)
        outcome["observed"] = f"left {left}" if left else "stopped"
        assert not left, left
        assert old.finished_event is not None and old.finished_event.stopped
        model, _ = load_checkpoint(run_dir / "last.safetensors")
        assert model.info.provenance["steps"] < 1000
        assert not lock_path(run_dir).exists()
        new = dock()
        new.steps_spin.setValue(2)
        new.checkpoint_radio.setChecked(True)
        new.checkpoint_edit.setText(str(run_dir / "last.safetensors"))
        second = new.start()
        assert second is not None, new.status_label.text()
        with qtbot.waitSignal(second.finished, timeout=RUN_TIMEOUT_MS):
            pass
        assert Path(new.config.out) != run_dir and new.finished_event is not None
        assert not new.finished_event.stopped and not _tracebacks(capfd)
        outcome["observed"] = "old run stopped and saved; the new dock trained on from it"

"""Finetune dock: train a model on the painted labels in a child process, with live progress.

Thin by design: :class:`~napari_inkdetect._widgets.finetune_form.FinetuneForm` maps widget
values to a :class:`~napari_inkdetect.training.TrainConfig` (saving the painted labels to files
the engine reads); the dock's :class:`~napari_inkdetect._widgets._runs.RunController` relays
the engine's events, run in a child process (``TrainConfig.in_child``), through a napari
thread worker and this dock turns them into UI updates on the GUI thread. Stopping goes through
the run's ``threading.Event``: ``quit()`` would only abandon the generator at its next yield
and leave the child running.

The form's controls are made from ``TrainConfig``'s field declarations; the hand-built ones
are the documented exceptions of :mod:`~napari_inkdetect._widgets.finetune_form`:
``HAND_BUILT`` (architecture, trained parts, device) and ``NOT_IN_FORM`` (the layers, the run
folder, New / Checkpoint, the window centre, Preview every). ``config_fields()`` maps each
config field to the widget that edits it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QEvent
from qtpy.QtWidgets import QFileDialog

from napari_inkdetect._napari_layers import SEGMENT_KEY
from napari_inkdetect._widgets._common import chosen_layer, show_error
from napari_inkdetect._widgets._layout import make_scrollable
from napari_inkdetect._widgets._runs import (
    RunController,
    RunOwner,
    StoppableWorker,
    Throttle,
    session,
)
from napari_inkdetect._widgets._settings import DockSettings
from napari_inkdetect._widgets.find_ink_depth import estimate_inputs, estimate_run, predict_docks
from napari_inkdetect._widgets.finetune_form import (
    AUTO_LR,
    HAND_BUILT,
    NO_VALIDATION,
    NOT_IN_FORM,
    FinetuneForm,
)
from napari_inkdetect._widgets.prediction_overlay import PredictionRunner, visible_region
from napari_inkdetect.errors import InkDetectError
from napari_inkdetect.inference import PredictConfig
from napari_inkdetect.ink_depth import InkDepth
from napari_inkdetect.models.checkpoints import KIND_INK_MODEL, read_checkpoint_metadata
from napari_inkdetect.runs import discard_run_dir, format_eta, newest_run_checkpoint
from napari_inkdetect.training import (
    BatchHalved,
    CheckpointSaved,
    StepDone,
    TrainConfig,
    TrainFinished,
    TrainStarted,
    Validated,
    ValidationPlanned,
    train,
)
from napari_inkdetect.training.init_settings import default_optimisation
from napari_inkdetect.training.preflight import preflight

if TYPE_CHECKING:
    import napari


def relay_training(config: TrainConfig, stop: threading.Event) -> Iterator[Any]:
    """The worker's generator: the engine run in a spawned child (``in_child``), one yield
    per event; the GUI's interpreter stays free and GPU memory is returned at the end."""
    return (yield from train(config.with_(in_child=True), stop))


#: napari's window close calls ``quit()``; ours sets the stop event so the child saves and ends
TrainWorker = StoppableWorker


def _preview_name(volume: Any) -> str:
    """The training preview layer's name (one per volume, reused by every preview)."""
    return f"{volume.metadata.get('segment_id') or volume.name} preview (training)"


class FinetuneWidget(RunOwner, FinetuneForm):
    """Finetune a model on the painted labels; Finetune becomes Stop while a run goes on.

    ``build_config()`` maps the widget to a ``TrainConfig`` (writing the labels layers to the
    run folder), ``start()`` runs it in a child process, ``stop()`` asks it to stop. After a
    run, ``last_checkpoint`` holds the best checkpoint (the Predict dock preselects it).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(napari_viewer)
        self.config: TrainConfig | None = None
        self.last_checkpoint: Path | None = None
        self.finished_event: TrainFinished | None = None
        self.session = session(self.viewer)
        self.run = RunController(
            {
                TrainStarted: self._on_started,
                StepDone: self._on_step,
                Validated: self._on_validated,
                ValidationPlanned: self._on_validation_planned,
                CheckpointSaved: self._on_checkpoint,
                BatchHalved: self._on_batch_halved,
                TrainFinished: self._on_train_finished,
            },
            on_done=self._on_finished,
            button=self.run_button,
            status=self.status_label,
            progress=self.progress,
            events_when_removed=True,  # a stopped run still reports its checkpoint
            parent=self,
        )
        self.depth_run = RunController(
            on_returned=self.apply_ink_depth,
            button=self.depth_button,
            busy_text="Finding...",
            stoppable=False,
            status=self.status_label,
            as_is=(Exception,),  # the estimate's messages are the user's to read as they are
            parent=self,
        )
        self.preview = PredictionRunner(self.viewer, two_d=True, parent=self)
        self.previews = 0
        self._last_step: StepDone | None = None
        self._step_throttle = Throttle(self._show_step, parent=self)
        self._device = ""
        self._continue_key: tuple[str, str | None] | None = None  # what Continue last read
        self.run_button.clicked.connect(self._on_run_clicked)
        self.depth_button.clicked.connect(self.find_ink_depth)
        self.continue_button.clicked.connect(self.continue_from_last)
        self.browse_runs.clicked.connect(self._choose_runs_folder)
        self.volume_combo.currentIndexChanged.connect(self._update_continue)
        self.runs_edit.editingFinished.connect(lambda: self._update_continue(force=True))
        self.settings = DockSettings(self, "finetune", self._kept_controls())
        if self.settings.stored("device") not in (None, self.device_combo.currentText()):
            self._apply_device_preset(self.device_combo.currentText())  # sizes of another device
        self._update_continue(force=True)
        make_scrollable(self)  # last: a short dock whatever the form's height

    @property
    def depth_worker(self) -> StoppableWorker | None:
        """The ink-depth estimate's worker while it runs."""
        return self.depth_run.worker

    # ------------------------------------------------------------------ continue

    def _choose_runs_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Run folder", self.runs_edit.text())
        if path:
            self.runs_edit.setText(path)
        self._update_continue(force=True)

    def last_run_checkpoint(self) -> Path | None:
        """The checkpoint "Continue" uses: this session's last finetune, else the newest run
        of the chosen volume's segment in the run folder."""
        if self.last_checkpoint is not None and self.last_checkpoint.is_file():
            return self.last_checkpoint
        volume = chosen_layer(self.viewer, self.volume_combo)
        if volume is None:
            return None
        name = volume.metadata.get("segment_id") or volume.name
        return newest_run_checkpoint(self._runs_root(), name, volume.metadata.get(SEGMENT_KEY))

    def continue_from_last(self) -> Path | None:
        """One click: start from the last run's checkpoint, with its window length, tile and
        scale and the learning rate on auto (the core's preset for a trained ink model).
        ``None`` (and a message) when there is no run to continue."""
        path = self.last_run_checkpoint()
        self._update_continue(force=True)
        if path is None:
            message = "no finetuned checkpoint to continue from: press Finetune first"
            show_error(message, self.status_label)
            return None
        self.checkpoint_radio.setChecked(True)
        self.checkpoint_edit.setText(str(path))
        self.fields["lr"].set_value(None)  # auto
        try:
            meta = read_checkpoint_metadata(path)
        except InkDetectError:
            meta = {}
        for key, box in (("in_layers", self.layers_spin), ("tile_size", self.tile_spin)):
            if meta.get(key):
                box.setValue(int(meta[key]))
        if meta.get("scale"):
            self.scale_spin.setValue(float(meta["scale"]))
        lr = default_optimisation(KIND_INK_MODEL).lr
        self.status_label.setText(f"Continuing from {path} (learning rate auto: {lr:g}).")
        return path

    def _update_continue(self, *_: Any, force: bool = False) -> None:
        """The Continue button names the checkpoint it will use and is off without one (the
        run folder is read again only when the segment or the folder changes)."""
        volume = chosen_layer(self.viewer, self.volume_combo)
        key = (self.runs_edit.text(), volume.name if volume is not None else None)
        if not force and key == self._continue_key:
            return
        self._continue_key = key
        path = self.last_run_checkpoint()
        self.continue_button.setEnabled(path is not None)
        lr = default_optimisation(KIND_INK_MODEL).lr
        self.continue_button.setToolTip(
            f"start from {path} (its window; learning rate auto: {lr:g} for a trained model)"
            if path is not None
            else "no finetuned checkpoint yet for this segment in the run folder"
        )

    # ------------------------------------------------------------------ run control

    def _on_run_clicked(self) -> None:
        if self.running:
            self.stop()
        else:
            self.start()

    def start(self) -> TrainWorker | None:
        """Build the config and start training in a child process; ``None`` if the input is
        refused (the reason and its fix are shown as a notification and in the status line,
        before any process starts: see :mod:`~napari_inkdetect.training.preflight`)."""
        if self.running:
            return self.worker
        config = None
        try:
            self._check_labels()  # what is painted, before a run folder is written
            config = self.build_config()
            preflight(config, read_labels=False)  # the window and the checkpoint
        except InkDetectError as exc:
            if config is not None:
                discard_run_dir(Path(config.out))
            show_error(str(exc), self.status_label)
            return None
        self.config = config
        self._reset_progress(config)
        volume = chosen_layer(self.viewer, self.volume_combo)
        if self.preview_spin.value() and volume is not None:  # now, not at the first preview
            self.preview.prepare(volume, _preview_name(volume))
        return self.run.start(relay_training, config, total=config.steps)

    def stop(self) -> None:
        """Ask the engine to stop after its current step (it saves the last checkpoint)."""
        self.run.stop()
        if self.running:
            self.status_label.setText("Stopping after the current step...")

    def _reset_progress(self, config: TrainConfig) -> None:
        self.finished_event = None
        self.previews = 0
        self.eta_label.setText("")
        self.loss_plot.clear(config.steps)
        self.checkpoint_label.setText("")
        self.status_label.setText(f"Starting a training process ({config.device})...")

    # ------------------------------------------------------------------ events (GUI thread)

    def _on_started(self, event: TrainStarted) -> None:
        self.progress.setRange(0, event.total_steps)
        self.progress.setValue(event.start_step)
        self.loss_plot.clear(event.total_steps)
        self._device = event.device
        if self.fields["lr"].is_auto:  # show what it resolved to
            self.fields["lr"].show_auto(f"{AUTO_LR} ({event.config.lr:g})")
        notes = "".join(f"\n{note}" for note in getattr(event, "notes", ()))
        self.status_label.setText(
            f"Training {event.params / 1e6:.2f}M parameters on {event.device}{notes}"
        )

    def _on_step(self, event: StepDone) -> None:
        self.loss_plot.add_loss(event.step, event.loss)
        self._last_step = event
        self._step_throttle.request()

    def _show_step(self) -> None:
        """Progress, ETA and the loss curve, at most 4 times a second."""
        event = self._last_step
        if event is None or not self.run.alive:
            return
        self.progress.setValue(event.step)
        self.loss_plot.update()
        self.eta_label.setText(
            f"ETA {format_eta(event.eta_s)}  |  {event.tiles_per_s:.1f} tiles/s  |  {self._device}"
        )

    def _on_validation_planned(self, event: ValidationPlanned) -> None:
        """Say what the score will measure (or why there is none) before the first one."""
        self.validation_label.setText(event.summary)

    def _on_validated(self, event: Validated) -> None:
        self.loss_plot.add_f05(event.step, event.f05)
        kind = "dense" if event.dense else "sparse: cannot see a halo"
        border = "" if event.border_fp is None else f", border false ink {event.border_fp:.0%}"
        self.validation_label.setText(
            f"step {event.step}: validation F0.5 {event.f05:.3f} (best {event.best_f05:.3f} at "
            f"{event.best_threshold:.2f}; all-ink chance {event.chance_f05:.3f}) on "
            f"{event.n_groups} held-out groups, {event.n_ink} ink / {event.n_not_ink} not-ink px "
            f"({kind}){border}"
        )

    def _on_checkpoint(self, event: CheckpointSaved) -> None:
        if event.kind == "best":
            self.checkpoint_label.setText(f"best so far (step {event.step}): {event.path}")
        elif (
            self.preview_spin.value()
            and event.step < self.progress.maximum()  # the final save: Predict comes next
            and not self.run.stop_requested
        ):
            self._start_preview(event)

    def _start_preview(self, event: CheckpointSaved) -> None:
        """The model so far predicts the view into a 'preview' layer while training goes on
        (skipped while the previous preview still runs)."""
        volume, config = chosen_layer(self.viewer, self.volume_combo), self.config
        if self.preview.running or volume is None or config is None:
            return
        region = visible_region(self.viewer, volume, self.preview_side_spin.value())
        preview = PredictConfig(
            segment=config.segment,
            checkpoint=str(event.path),
            out=str(Path(config.out) / "preview" / f"step{event.step:07d}.zarr"),
            region=region,
            start_layers=(config.start_layer,),
            device=config.device,
            batch_size=config.batch_size,
        )
        try:
            self.preview.start(preview, volume, name=_preview_name(volume))
        except InkDetectError as exc:
            show_error(str(exc), self.status_label)
            return
        self.previews += 1
        self.eta_label.setToolTip(f"preview of step {event.step}: {preview.out}")

    def _on_batch_halved(self, event: BatchHalved) -> None:
        self.status_label.setText(
            f"Out of GPU memory: {event.accumulation} micro-batches of {event.new_batch} tiles"
        )

    def _on_train_finished(self, event: TrainFinished) -> None:
        self._step_throttle.flush()
        self.finished_event = event
        self.last_checkpoint = Path(event.best_path or event.last_path)
        config = self.config
        self.session.set_checkpoint(self.last_checkpoint, config.start_layer if config else None)
        self._update_continue(force=True)
        how = "Stopped" if event.stopped else "Finished"
        self.status_label.setText(f"{how} after {event.steps} steps in {event.seconds:.0f} s")
        self.checkpoint_label.setText(f"Checkpoint: {self.last_checkpoint}")

    def _on_finished(self) -> None:
        """The run ended (its controller reset the button and showed any error)."""
        if not self.preview.running:
            self.preview.drop_placeholder()  # the run ended before its first preview

    # ------------------------------------------------------------------ ink depth

    def find_ink_depth(self) -> Any:
        """Estimate the ink depth of the chosen volume (from the chosen labels if they hold ink
        and not ink) in a worker; :meth:`apply_ink_depth` takes the result. The worker, or
        ``None`` when there is no 3-D volume."""
        volume = chosen_layer(self.viewer, self.volume_combo)
        if volume is None or volume.ndim != 3:
            show_error("choose a 3-D volume to find the ink depth in", self.status_label)
            return None
        if self.depth_run.running:
            return self.depth_worker
        labels = chosen_layer(self.viewer, self.labels_combo)
        inputs = estimate_inputs(self.viewer, volume, labels)
        return self.depth_run.start(estimate_run, *inputs, self.fields["layers"].value)

    def apply_ink_depth(self, estimate: InkDepth) -> None:
        """Plot the estimate; if a depth stands out, the window is centred there (the centre
        stops following the slider) and the Predict dock gets the estimate's band."""
        if not self.run.alive:
            return
        self.depth_plot.set_estimate(estimate)
        if not self.running:
            self.status_label.setText(estimate.explanation)
        if estimate.found:
            self.window_centre.set_found(estimate.centre)
            for dock in predict_docks(self.viewer):
                dock.set_start_band(*estimate.band, through=estimate.start, layers=estimate.layers)

    # ------------------------------------------------------------------ lifetime

    def event(self, event: QEvent) -> bool:
        """Removed from its dock (no parent any more): stop a run nobody can see."""
        if event.type() == QEvent.Type.ParentChange and self.parent() is None and self.running:
            self.stop()
        return super().event(event)


__all__ = [
    "AUTO_LR",
    "HAND_BUILT",
    "NOT_IN_FORM",
    "NO_VALIDATION",
    "FinetuneWidget",
    "relay_training",
]

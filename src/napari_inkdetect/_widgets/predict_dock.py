"""Predict dock: stream a checkpoint's ink prediction over a region into overlay layers.

Thin by design: :class:`~napari_inkdetect._widgets.predict_form.PredictForm` maps widget values
to a :class:`~napari_inkdetect.inference.PredictConfig`; :class:`PredictionRunner` runs the
engine's ``predict`` (or the cluster driver) in a thread worker and refreshes the zarr-backed
overlay as chunks land. The overlay has one plane per window placed on the volume's depth axis
at the window's centre, so the depth slider at ``z`` shows the prediction of the window centred
on layer ``z``. Threshold, metrics and the depth profile are views of what is on disk
(:mod:`napari_inkdetect.postprocess`).

The form's controls are made from ``PredictConfig``'s field declarations; the hand-built ones
are the documented exceptions of :mod:`~napari_inkdetect._widgets.predict_form`:
``HAND_BUILT`` (checkpoint, device, TTA, Run on with Workers and Scheduler) and
``NOT_IN_FORM`` (the volume layer, region, window centres, the output zarr). The threshold,
outline, min blob, view limit and output folder are no config's fields: views of what is on
disk, and where it goes. ``config_fields()`` maps each config field to its widget.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image
from napari.qt.threading import create_worker
from qtpy.QtCore import QEvent, QTimer
from qtpy.QtWidgets import QFileDialog

from napari_inkdetect._napari_layers import DERIVED_KEY
from napari_inkdetect._widgets._common import CHECKPOINT_FILTER, chosen_layer, show_error
from napari_inkdetect._widgets._layout import make_scrollable
from napari_inkdetect._widgets._runs import Throttle, make_room_in_thread_pool
from napari_inkdetect._widgets._settings import DockSettings
from napari_inkdetect._widgets.predict_form import (
    DEFAULT_THRESHOLD,
    HAND_BUILT,
    NOT_IN_FORM,
    PredictForm,
)
from napari_inkdetect._widgets.prediction_overlay import PredictionRunner, camera_of
from napari_inkdetect.errors import InkDetectError
from napari_inkdetect.inference import (
    BatchDone,
    ClusterReady,
    PredictConfig,
    PredictFinished,
    PredictStarted,
    predict,
)
from napari_inkdetect.models.checkpoints import recommended_threshold
from napari_inkdetect.postprocess import plane_centres, plane_scores, threshold_mask

if TYPE_CHECKING:
    import napari

FOLLOW_DELAY_MS = 600  # the view must rest this long before a follow-the-view run starts
METRICS_DELAY_MS = 150
CALIBRATED = "the checkpoint's validation"
OUTLINE = "ink above threshold"


def run_place(run_on: str, workers: int, address: str) -> dict[str, Any]:
    """The config's ``workers`` / ``scheduler`` for where the user wants the work done."""
    if run_on == "this process":
        return {}
    if run_on == "local workers":
        return {"workers": workers}
    if not address.strip():
        raise InkDetectError("give the scheduler's address (tcp://host:8786)")
    return {"scheduler": address.strip()}


def _close_idle_clusters(*_: Any) -> None:
    """A Predict dock is gone: close the local clusters no run uses (only if one was ever
    started: distributed takes a second to import)."""
    cluster = sys.modules.get("napari_inkdetect.inference.cluster")
    if cluster is not None:
        cluster.close_warm_clusters(idle_only=True)


def _single_shot(parent: PredictWidget, slot: Any) -> QTimer:
    timer = QTimer(parent)
    timer.setSingleShot(True)
    timer.timeout.connect(slot)
    return timer


class PredictWidget(PredictForm):
    """Predict ink over a region; the overlay streams in as chunks finish.

    ``build_config()`` maps the widget to a ``PredictConfig``, ``start()`` runs it in the
    background, ``stop()`` asks it to stop. "Follow view" re-runs on the view whenever it
    rests (each view's output is kept, so returning to a view is instant).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(napari_viewer)
        self.runner = PredictionRunner(
            self.viewer,
            on_event=self._on_event,
            on_done=self._on_done,
            parent=self,
            button=self.run_button,
            status=self.status_label,
            progress=self.progress,
        )
        self.config: PredictConfig | None = None
        #: the checkpoint's calibrated threshold (best F0.5 on its run's validation region)
        self.recommended_threshold: float | None = None
        self.last_stall_ms: float | None = None
        self._queued: PredictConfig | None = None
        self._metrics_worker: Any = None
        self._last_batch: BatchDone | None = None
        self._batch_throttle = Throttle(self._show_batch, parent=self)
        self._show_threshold_source()
        if self.session.last_checkpoint is not None:
            self._on_checkpoint_finetuned(self.session.last_checkpoint)
        self._connect()
        # local workers stay up between runs (the second run pays no start-up) while the
        # dock is open; idle ones close with it, a running one when its run ends
        self._predict = functools.partial(predict, keep_cluster=self.runner.run.owner_open())
        self.destroyed.connect(_close_idle_clusters)
        self.settings = DockSettings(self, "predict", self._kept_controls())
        self._restore_checkpoint()
        make_scrollable(self)  # last: a short dock whatever the form's height

    def _restore_checkpoint(self) -> None:
        """Last session's checkpoint, while the file exists and no finetune of this session
        gave one; the one in use is saved as it changes."""
        key, text = "predict/checkpoint", self.settings.stored("checkpoint")
        if self.session.last_checkpoint is None and text and Path(text).is_file():
            self.checkpoint_edit.setText(text)
            self._on_checkpoint_edited(force=True)
        self.checkpoint_edit.textChanged.connect(lambda t: self.settings.store.setValue(key, t))

    def _connect(self) -> None:
        layers = self.viewer.layers.events
        layers.inserted.connect(self._refresh_layers)
        layers.removed.connect(self._on_layer_removed)
        self.viewer.dims.events.current_step.connect(self._on_slider_moved)
        camera = camera_of(self.viewer)
        camera.events.center.connect(self._on_view_changed)
        camera.events.zoom.connect(self._on_view_changed)
        self.session.checkpoint_changed.connect(self._on_checkpoint_finetuned)
        self.browse_checkpoint.clicked.connect(self._choose_checkpoint)
        self.checkpoint_edit.editingFinished.connect(self._on_checkpoint_edited)
        self.run_button.clicked.connect(self._on_run_clicked)
        self.follow_check.toggled.connect(self._on_follow_toggled)
        self.threshold_slider.valueChanged.connect(self._on_threshold_changed)
        self.min_size_spin.valueChanged.connect(self._on_threshold_changed)
        self.outline_check.toggled.connect(self._on_threshold_changed)
        self.val_combo.currentIndexChanged.connect(self._schedule_metrics)
        self.best_button.clicked.connect(self._use_best_threshold)
        self._follow_timer = _single_shot(self, self._follow_view)
        self._metrics_timer = _single_shot(self, self._update_metrics)

    # ------------------------------------------------------------------ checkpoint

    def _on_layer_removed(self, event: Any = None) -> None:
        """A removed overlay stops the run drawing into it; a removed volume stops it too."""
        removed = getattr(event, "value", None)
        if self.runner.running and (
            removed in self.runner.layers or removed is self.runner._volume
        ):
            self.stop()
        self._refresh_layers()

    def _on_checkpoint_finetuned(self, path: Path) -> None:
        """A finetune finished (or is running): predict with its checkpoint by default."""
        self.checkpoint_edit.setText(str(path))
        self._on_checkpoint_edited(force=True)

    def _choose_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Checkpoint", "", CHECKPOINT_FILTER)
        if path:
            self.checkpoint_edit.setText(path)
            self._on_checkpoint_edited(force=True)

    def _on_checkpoint_edited(self, force: bool = False) -> None:
        """Window centres around the trained window's, the threshold the checkpoint was
        calibrated at (``force``: even when it is the one already recommended)."""
        meta = self._checkpoint_meta()
        self._default_centres(meta)
        self.set_recommended_threshold(recommended_threshold(meta), force=force)

    # ------------------------------------------------------------------ run control

    @property
    def running(self) -> bool:
        return self.runner.running

    def _on_run_clicked(self) -> None:
        if self.running:
            self._queued = None
            self.stop()
        else:
            self.start()

    def start(self, config: PredictConfig | None = None) -> Any:
        """Start predicting (``config`` or the widget's); None when the input is refused."""
        if self.running:
            return self.runner.worker
        try:
            config = config or self.build_config()
            place = run_place(
                self.run_on_combo.currentText(),
                self.workers_spin.value(),
                self.address_edit.text(),
            )
            config = config.with_(**place) if place else config
            volume = chosen_layer(self.viewer, self.volume_combo)
            worker = self.runner.start(config, volume, source=self._predict)
        except InkDetectError as exc:
            show_error(str(exc), self.status_label)
            return None
        self.config = config
        self.status_label.setText(f"Loading the model ({config.device})...")
        return worker

    def stop(self) -> None:
        """Ask the engine to stop after its current batch (finished chunks are kept)."""
        self.runner.stop()

    # ------------------------------------------------------------------ live mode

    def _on_follow_toggled(self, on: bool) -> None:
        if on:
            self.region_combo.setCurrentText("Current view")
            self._follow_view()
        else:
            self._queued = None

    def _on_view_changed(self, event: Any = None) -> None:
        if self.follow_check.isChecked():
            self._follow_timer.start(FOLLOW_DELAY_MS)

    def _follow_view(self) -> None:
        """Predict the view unless the running (or last) prediction already covers it."""
        try:
            config = self.build_config()
        except InkDetectError as exc:
            self.follow_check.setChecked(False)
            show_error(str(exc), self.status_label)
            return
        if self.config is not None and config.out == self.config.out:
            return
        if self.running:
            self._queued = config
            self.runner.stop(show=False)  # the next run follows at once
        else:
            self.start(config)

    # ------------------------------------------------------------------ events (GUI thread)

    def _on_event(self, event: Any) -> None:
        if isinstance(event, PredictStarted):
            self.progress.setRange(0, max(1, event.total_tiles))
            self.progress.setValue(0)
            done = f", {event.done_chunks} already done" if event.done_chunks else ""
            self.status_label.setText(
                f"Predicting {event.shape[1]} x {event.shape[2]} px x {event.shape[0]} windows "
                f"on {event.device} ({event.total_chunks} chunks{done})"
            )
            self._threshold_from_overlay()
            self._on_slider_moved()
        elif isinstance(event, ClusterReady):
            where = "local" if event.local else "the cluster's"
            self.status_label.setText(
                f"{self.status_label.text()}; {event.workers} {where} dask workers at "
                f"{event.address}"
            )
            return
        elif isinstance(event, BatchDone):
            self._last_batch = event
            self._batch_throttle.request()
            return
        elif isinstance(event, PredictFinished):
            self._batch_throttle.flush()
            self._threshold_from_overlay()
            how = "Stopped" if event.stopped else "Done"
            self.status_label.setText(
                f"{how}: {event.tiles} tiles in {event.seconds:.1f} s "
                f"({event.tiles_per_s:.0f} tiles/s). Saved in {event.path}"
            )
        profile = self.runner.profile
        if profile is not None and profile.count:
            self.profile_plot.set_profile(profile.centre_layers, profile.means)
        if not isinstance(event, BatchDone):
            self._schedule_metrics()

    def _show_batch(self) -> None:
        """Progress at most 4 times a second (a progress bar repaints synchronously)."""
        event = self._last_batch
        if event is not None:
            self.progress.setValue(event.done)
            self.progress.setFormat(f"%v / %m tiles  {event.tiles_per_s:.0f} tiles/s")

    def _on_done(self, finished: PredictFinished | None) -> None:
        """The run ended (its controller reset the button and showed any error)."""
        self.last_stall_ms = self.runner.last_stall_ms
        if finished is not None and self.last_stall_ms is not None and not self.runner.error:
            self.status_label.setText(
                f"{self.status_label.text()}  Longest GUI stall {self.last_stall_ms:.0f} ms."
            )
        self._on_threshold_changed()
        queued, self._queued = self._queued, None
        if queued is not None:
            self.start(queued)

    # ------------------------------------------------------------------ threshold + metrics

    def overlay(self) -> Image | None:
        """The current per-start-layer overlay layer, if it is still in the viewer."""
        layers = [x for x in self.runner.layers if x in self.viewer.layers]
        return layers[0] if layers else None

    def current_index(self) -> int | None:
        """The overlay plane the depth slider shows (None: the slider is outside it)."""
        layer = self.overlay()
        if layer is None:
            return None
        centres = plane_centres(layer.metadata)
        z = int(self.viewer.dims.current_step[0])
        return centres.index(z) if z in centres else None

    @property
    def threshold(self) -> float:
        return self.threshold_slider.value() / 100.0

    def _on_slider_moved(self, event: Any = None) -> None:
        index = self.current_index()
        layer = self.overlay()
        self.profile_plot.set_current(
            plane_centres(layer.metadata)[index] if index is not None else None
        )
        self._schedule_metrics()

    def _on_threshold_changed(self, *_: Any) -> None:
        self.threshold_label.setText(f"{self.threshold:.2f}")
        self._show_threshold_source()
        self._update_outline()
        self._schedule_metrics()

    def set_recommended_threshold(self, value: float | None, force: bool = False) -> None:
        """Move the slider to a calibrated threshold (``None``: the checkpoint has none).

        Only a new recommendation (or ``force``) moves it, so a threshold the user chose
        survives reruns of the same checkpoint; losing the recommendation puts a slider
        still on the old one back to 0.5.
        """
        previous, self.recommended_threshold = self.recommended_threshold, value
        if value is not None and (force or value != previous):
            self.threshold_slider.setValue(round(value * 100))
        elif (
            value is None
            and previous is not None
            and self.threshold_slider.value() == round(previous * 100)
        ):
            self.threshold_slider.setValue(round(DEFAULT_THRESHOLD * 100))
        self.threshold_label.setText(f"{self.threshold:.2f}")  # also before signals connect
        self._show_threshold_source()

    def _threshold_from_overlay(self) -> None:
        """The shown prediction's calibrated threshold (recorded in its provenance)."""
        layer = self.overlay()
        if layer is not None and "threshold" in layer.metadata:
            self.set_recommended_threshold(layer.metadata["threshold"])

    def _show_threshold_source(self) -> None:
        """Say where the threshold comes from (a label under the slider and its tooltip)."""
        value = self.recommended_threshold
        if value is None:
            self.threshold_source.setText("")
            self.threshold_slider.setToolTip(
                "probability above which a pixel counts as ink (the checkpoint has no "
                f"validation threshold: {DEFAULT_THRESHOLD:.2f} by default)"
            )
            return
        if self.threshold_slider.value() == round(value * 100):
            self.threshold_source.setText(f"{value:.2f} from {CALIBRATED}")
        else:
            self.threshold_source.setText(f"chosen by hand ({CALIBRATED}: {value:.2f})")
        self.threshold_slider.setToolTip(
            f"{value:.2f} from {CALIBRATED} (its best F0.5 on the held-out region); "
            "drag to choose another"
        )

    def _update_outline(self) -> None:
        """The thresholded ink as a lazily computed labels layer drawn as outlines."""
        layer = self.overlay()
        existing = next((x for x in self.viewer.layers if x.name == OUTLINE), None)
        if layer is None or not self.outline_check.isChecked():
            if existing is not None:
                existing.visible = False
            return
        args = (self.threshold, self.min_size_spin.value())
        if layer.multiscale:  # one lazy mask per overview level
            mask = [threshold_mask(level, *args) for level in layer.data]
        else:
            mask = threshold_mask(layer.data, *args)
        if existing is None or existing.multiscale != layer.multiscale:
            if existing is not None:
                self.viewer.layers.remove(existing)
            existing = self.viewer.add_labels(
                mask,
                multiscale=layer.multiscale,
                name=OUTLINE,
                scale=layer.scale,
                translate=layer.translate,
                opacity=0.9,
                metadata={DERIVED_KEY: "threshold outline"},
            )
            existing.contour = 1
            existing.editable = False
        else:
            existing.data = mask
            existing.scale, existing.translate = layer.scale, layer.translate
        existing.visible = True

    def _schedule_metrics(self, *_: Any) -> None:
        self._metrics_timer.start(METRICS_DELAY_MS)

    def _update_metrics(self) -> None:
        """F0.5 / precision / recall of the shown plane against the chosen labels (in a
        worker thread: a large region takes a while)."""
        layer, index = self.overlay(), self.current_index()
        labels = chosen_layer(self.viewer, self.val_combo)
        if layer is None or labels is None or index is None:
            waiting = layer is not None and labels is not None  # the slider is off the overlay
            self.metrics_label.setText(
                "move the depth slider onto a predicted window centre to score it"
                if waiting
                else ""
            )
            self.best_button.setEnabled(False)
            return
        if self._metrics_worker is not None:
            self._schedule_metrics()  # one at a time; try again shortly
            return
        y0, x0, y1, x1 = layer.metadata["region"]
        worker = create_worker(
            plane_scores,
            layer.data[0] if layer.multiscale else layer.data,
            index,
            np.asarray(labels.data[y0:y1, x0:x1]),  # the region only, not a copy of it all
            self.threshold,
            self.min_size_spin.value(),
            _start_thread=False,
            _connect={"returned": self._show_metrics, "finished": self._metrics_done},
        )
        self._metrics_worker = worker
        make_room_in_thread_pool()
        worker.start()

    def _metrics_done(self) -> None:
        self._metrics_worker = None

    def _show_metrics(self, result: Any) -> None:
        if result is None:
            self.metrics_label.setText("no ink or not-ink labels inside the prediction")
            self.best_button.setEnabled(False)
            return
        self.scores = result
        self.metrics_label.setText(
            f"F0.5 {result.f05:.3f}  P {result.precision:.3f}  R {result.recall:.3f} "
            f"at {result.threshold:.2f} (best {result.best_f05:.3f} at "
            f"{result.best_threshold:.2f})"
        )
        self.best_button.setEnabled(True)

    def event(self, event: QEvent) -> bool:
        """Removed from its dock (no parent any more): stop following the view, so a dock
        nobody sees starts no runs (its running one is stopped by its RunController)."""
        follow = getattr(self, "follow_check", None)  # events come during __init__ too
        if follow is not None and event.type() == QEvent.Type.ParentChange and not self.parent():
            follow.setChecked(False)
        return super().event(event)

    def _use_best_threshold(self) -> None:
        scores = getattr(self, "scores", None)
        if scores is not None:
            self.threshold_slider.setValue(round(scores.best_threshold * 100))


__all__ = ["HAND_BUILT", "NOT_IN_FORM", "PredictWidget", "run_place"]

"""Predict dock: stream a checkpoint's ink prediction over a region into overlay layers.

Thin by design: the dock maps widget values to a :class:`~napari_inkdetect.inference.
PredictConfig`; :class:`PredictionRunner` runs the engine's ``predict`` (or the cluster driver)
in a thread worker and refreshes the zarr-backed overlay as chunks land. The overlay has one
plane per window placed on the volume's depth axis at the window's centre, so the depth
slider at ``z`` shows the prediction of the window centred on layer ``z`` (the band is chosen
as window centres too: :mod:`napari_inkdetect.windows`). Threshold, metrics and the depth
profile are views of what is on disk.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels, Shapes
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error
from qtpy.QtCore import QPointF, QRectF, Qt, QTimer
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from napari_inkdetect._napari_layers import (
    DERIVED_KEY,
    MASK,
    TRUTH,
    VALIDATION,
    VOLUME,
    is_derived,
    layer_role,
    names_with_role,
)
from napari_inkdetect._widgets._form import LayerChoice, combo, fill_names, spin
from napari_inkdetect._widgets._layout import make_scrollable
from napari_inkdetect._widgets._runs import Throttle, make_room_in_thread_pool, session
from napari_inkdetect._widgets._settings import DockSettings
from napari_inkdetect._widgets.prediction_overlay import (
    PredictionRunner,
    camera_of,
    visible_region,
)
from napari_inkdetect.devices import available_devices
from napari_inkdetect.errors import InkDetectError
from napari_inkdetect.inference import (
    BatchDone,
    PredictConfig,
    PredictFinished,
    PredictStarted,
    predict,
)
from napari_inkdetect.metrics import score
from napari_inkdetect.models.checkpoints import read_checkpoint_metadata, recommended_threshold
from napari_inkdetect.windows import centre_bounds, window_centre, window_start

if TYPE_CHECKING:
    import napari

SEGMENT_KEY = "inkdetect_segment"
REGIONS = ("Current view", "Shapes rectangle", "Whole mask")
DIRECTIONS = ("auto", "forward", "reverse")
RUN_ON = ("this process", "local workers", "scheduler")
DEFAULT_OUT = Path.home() / "inkdetect-runs" / "predictions"
CHECKPOINT_FILTER = "Checkpoints (*.safetensors *.pt *.pth *.ckpt *.bin);;All files (*)"
FOLLOW_DELAY_MS = 600  # the view must rest this long before a follow-the-view run starts
METRICS_DELAY_MS = 150
NO_LABELS = "(none)"
DEFAULT_THRESHOLD = 0.5
CALIBRATED = "the checkpoint's validation"


class ProfilePlot(QWidget):
    """Mean ink probability per window, at its centre layer: at which depth the ink lights up
    (``starts`` are the windows' centres, as the depth slider shows them)."""

    COLOR = QColor("#ffa040")

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumHeight(80)
        self.starts: tuple[int, ...] = ()
        self.means = np.zeros(0)
        self.current: int | None = None

    def set_profile(self, starts: tuple[int, ...], means: np.ndarray) -> None:
        """Show ``means[i]`` (0..1) at window centre ``starts[i]``."""
        self.starts, self.means = tuple(starts), np.asarray(means, float)
        self.update()

    def set_current(self, start: int | None) -> None:
        """Mark the window centre the depth slider shows."""
        self.current = start
        self.update()

    def paintEvent(self, event: Any) -> None:
        """Axes box, polyline with dots, the slider's window centre, and the peak's label."""
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        font_h = painter.fontMetrics().height()
        plot = QRectF(6, font_h + 4, self.width() - 12, self.height() - 2 * font_h - 10)
        painter.setPen(QPen(QColor("#808080")))
        painter.drawRect(plot)
        if not self.starts:
            painter.drawText(plot, Qt.AlignmentFlag.AlignCenter, "mean ink per window centre")
            return
        # the spread between depths is what matters: scale min..max (at least 0.02 tall)
        bottom, top = float(self.means.min()), float(self.means.max())
        pad = max(0.0, 0.02 - (top - bottom)) / 2 + 0.1 * (top - bottom)
        bottom, top = max(0.0, bottom - pad), top + pad
        lo, hi = self.starts[0], max(self.starts[-1], self.starts[0] + 1)

        def point(start: float, value: float) -> QPointF:
            x = plot.left() + (start - lo) / (hi - lo) * plot.width()
            return QPointF(x, plot.bottom() - (value - bottom) / (top - bottom) * plot.height())

        points = [point(s, m) for s, m in zip(self.starts, self.means, strict=True)]
        if self.current is not None and lo <= self.current <= hi:
            painter.setPen(QPen(QColor("#40d0ff"), 1, Qt.PenStyle.DashLine))
            x = point(self.current, 0).x()
            painter.drawLine(QPointF(x, plot.top()), QPointF(x, plot.bottom()))
        painter.setPen(QPen(self.COLOR, 2))
        painter.drawPolyline(QPolygonF(points))
        for p in points:
            painter.drawEllipse(p, 2.5, 2.5)
        peak = int(np.argmax(self.means))
        painter.setPen(QPen(QColor("#d0d0d0")))
        painter.drawText(
            QPointF(6, font_h),
            f"mean ink: peak {self.means[peak]:.2f} at window centre {self.starts[peak]}",
        )
        painter.drawText(
            QPointF(6, self.height() - 4),
            f"window centre {lo} .. {self.starts[-1]}   (scale {bottom:.2f} .. {top:.2f})",
        )


def run_source(run_on: str, workers: int, address: str) -> Any:
    """The event generator for where the user wants the work done."""
    if run_on == "this process":
        return predict
    from napari_inkdetect.cluster import predict_on_cluster

    if run_on == "local workers":
        return functools.partial(_on_cluster, predict_on_cluster, workers=workers)
    if not address.strip():
        raise InkDetectError("give the scheduler's address (tcp://host:8786)")
    return functools.partial(_on_cluster, predict_on_cluster, scheduler=address.strip())


def _on_cluster(driver: Any, config: PredictConfig, stop: threading.Event, **where: Any) -> Any:
    return driver(config, stop=stop, **where)


class PredictWidget(QWidget):
    """Predict ink over a region; the overlay streams in as chunks finish.

    ``build_config()`` maps the widget to a ``PredictConfig``, ``start()`` runs it in the
    background, ``stop()`` asks it to stop. "Follow view" re-runs on the view whenever it
    rests (each view's output is kept, so returning to a view is instant).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        self.session = session(self.viewer)
        self.runner = PredictionRunner(
            self.viewer, on_event=self._on_event, on_done=self._on_done, parent=self
        )
        self.config: PredictConfig | None = None
        #: the checkpoint's calibrated threshold (best F0.5 on its run's validation region)
        self.recommended_threshold: float | None = None
        self.last_stall_ms: float | None = None
        self._queued: PredictConfig | None = None
        self._metrics_worker: Any = None
        self._volume: Any = None
        self._last_batch: BatchDone | None = None
        self._batch_throttle = Throttle(self._show_batch, parent=self)
        self._build_ui()
        self._refresh_layers()
        self._on_volume_changed()
        if self.session.last_checkpoint is not None:
            self._on_checkpoint_finetuned(self.session.last_checkpoint)
        self._connect()
        self.settings = DockSettings(self, "predict", self._kept_controls())
        self._restore_checkpoint()
        self.destroyed.connect(self.runner.shutdown)
        make_scrollable(self)  # last: a short dock whatever the form's height

    def _kept_controls(self) -> dict[str, QWidget]:
        """What the dock remembers between sessions (not the layers, the window centres or
        the threshold: they follow the segment and the checkpoint)."""
        return {
            "device": self.device_combo,
            "region": self.region_combo,
            "stride": self.stride_spin,
            "depth": self.direction_combo,
            "tta": self.tta_check,
            "output": self.out_edit,
            "batch": self.batch_spin,
            "view_limit": self.max_view_spin,
            "stored_as": self.dtype_combo,
            "run_on": self.run_on_combo,
            "workers": self.workers_spin,
            "scheduler": self.address_edit,
            "min_blob": self.min_size_spin,
            "outline": self.outline_check,
        }

    def _restore_checkpoint(self) -> None:
        """Last session's checkpoint, while the file exists and no finetune of this session
        gave one; the one in use is saved as it changes."""
        key, text = "predict/checkpoint", self.settings.stored("checkpoint")
        if self.session.last_checkpoint is None and text and Path(text).is_file():
            self.checkpoint_edit.setText(text)
            self._on_checkpoint_edited(force=True)
        self.checkpoint_edit.textChanged.connect(lambda t: self.settings.store.setValue(key, t))

    # ------------------------------------------------------------------ layout

    def _build_ui(self) -> None:
        layout = QVBoxLayout(self)
        layout.addLayout(self._input_form())
        layout.addWidget(self._advanced_section())
        buttons = QHBoxLayout()
        self.run_button = QPushButton("Predict")
        self.run_button.setToolTip(
            "predict the region into an overlay layer, chunk by chunk; Stop keeps finished chunks"
        )
        self.follow_check = QCheckBox("Follow view")
        self.follow_check.setToolTip("predict the view each time it rests (live mode)")
        buttons.addWidget(self.run_button, 1)
        buttons.addWidget(self.follow_check)
        layout.addLayout(buttons)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("%v / %m tiles")
        self.status_label = QLabel("Choose a checkpoint (the last finetune is picked for you).")
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.progress)
        layout.addWidget(self.status_label)
        layout.addLayout(self._display_form())
        self.profile_plot = ProfilePlot()
        layout.addWidget(self.profile_plot)
        layout.addStretch(1)

    def _input_form(self) -> QFormLayout:
        form = QFormLayout()
        self.volume_combo = QComboBox()
        self.volume_combo.setToolTip("the segment to predict (opened by napari-inkdetect)")
        self.checkpoint_edit = QLineEdit()
        self.checkpoint_edit.setPlaceholderText("the last finetuned checkpoint, or browse")
        self.checkpoint_edit.setToolTip("the model to predict with (.safetensors, .pt, ... file)")
        self.browse_checkpoint = QPushButton("...")
        self.browse_checkpoint.setToolTip("choose the checkpoint file")
        self.browse_checkpoint.setMaximumWidth(30)
        ckpt_row = QHBoxLayout()
        ckpt_row.addWidget(self.checkpoint_edit, 1)
        ckpt_row.addWidget(self.browse_checkpoint)
        self.region_combo = combo(REGIONS, REGIONS[0])
        self.region_combo.setToolTip(
            "what to predict: the view (at most 'View limit' px a side), the last rectangle of "
            "a Shapes layer, or the papyrus mask's bounding box"
        )
        self.shapes_combo = QComboBox()
        self.shapes_combo.setToolTip("the Shapes layer whose last rectangle is the region")
        region_row = QHBoxLayout()
        region_row.addWidget(self.region_combo, 1)
        region_row.addWidget(self.shapes_combo, 1)
        self.centre_from = spin(0, 0, 0)
        self.centre_to = spin(0, 0, 0)
        self.centre_step = spin(1, 64, 2)
        self.centre_step.setToolTip("layers between the predicted windows' centres")
        self._window_layers = 22  # the checkpoint's window length, once it is read
        self._show_band()
        starts_row = QHBoxLayout()
        parts = ((self.centre_from, None), (self.centre_to, "to"), (self.centre_step, "step"))
        for widget, text in parts:
            if text:
                starts_row.addWidget(QLabel(text))
            starts_row.addWidget(widget, 1)
        self.stride_spin = spin(0, 4096, 0, 16)
        self.stride_spin.setSpecialValueText("tile / 2")
        self.stride_spin.setToolTip("model pixels between tiles (smaller: smoother, slower)")
        self.device_combo = combo(available_devices())
        self.device_combo.setToolTip("where the model runs")
        self.direction_combo = combo(DIRECTIONS, "auto")
        self.direction_combo.setToolTip("auto: the checkpoint's depth order")
        self.tta_check = QCheckBox("TTA (flips + rotations, 8x slower)")
        self.tta_check.setToolTip(
            "test-time augmentation: the mean over 8 flipped and rotated copies of each tile"
        )
        for label, widget in (
            ("Volume", self.volume_combo),
            ("Checkpoint", ckpt_row),
            ("Region", region_row),
            ("Window centres", starts_row),
            ("Stride", self.stride_spin),
            ("Device", self.device_combo),
            ("Depth", self.direction_combo),
            ("", self.tta_check),
        ):
            form.addRow(label, widget)
        return form

    def _advanced_section(self) -> QCollapsible:
        self.advanced = QCollapsible("Advanced")
        self.advanced.findChild(QPushButton).setToolTip(  # its toggle, the only button yet
            "output folder, batch, view limit, storage type and where the work runs"
        )
        inner = QWidget()
        form = QFormLayout(inner)
        form.setContentsMargins(0, 0, 0, 0)
        self.out_edit = QLineEdit(str(DEFAULT_OUT))
        self.out_edit.setToolTip("predictions are kept here as zarr (open one to restore it)")
        self.batch_spin = spin(1, 1024, 8)
        self.batch_spin.setToolTip("tiles per forward pass (tiles); fewer need less memory")
        self.max_view_spin = spin(128, 65536, 2048, 256)
        self.max_view_spin.setToolTip("largest side predicted for 'Current view' (volume px)")
        self.dtype_combo = combo(("uint8", "float16"), "uint8")
        self.dtype_combo.setToolTip(
            "probabilities on disk: uint8 (0..255, half the size) or float16 (0..1)"
        )
        self.run_on_combo = combo(RUN_ON, RUN_ON[0])
        self.run_on_combo.setToolTip(
            "a thread of napari, local dask worker processes, or an existing dask scheduler"
        )
        self.workers_spin = spin(1, 256, 2)
        self.workers_spin.setToolTip("local dask worker processes ('Run on: local workers')")
        self.address_edit = QLineEdit()
        self.address_edit.setPlaceholderText("tcp://scheduler:8786 (shared filesystem)")
        self.address_edit.setToolTip("the dask scheduler's address ('Run on: scheduler')")
        for label, widget in (
            ("Output folder", self.out_edit),
            ("Batch", self.batch_spin),
            ("View limit", self.max_view_spin),
            ("Stored as", self.dtype_combo),
            ("Run on", self.run_on_combo),
            ("Workers", self.workers_spin),
            ("Scheduler", self.address_edit),
        ):
            form.addRow(label, widget)
        self.advanced.addWidget(inner)
        return self.advanced

    def _display_form(self) -> QFormLayout:
        form = QFormLayout()
        self.threshold_slider = QSlider(Qt.Orientation.Horizontal)
        self.threshold_slider.setRange(0, 100)
        self.threshold_slider.setValue(round(DEFAULT_THRESHOLD * 100))
        self.threshold_label = QLabel(f"{DEFAULT_THRESHOLD:.2f}")
        self.threshold_source = QLabel("")
        self.threshold_source.setWordWrap(True)
        self.outline_check = QCheckBox("outline")
        self.outline_check.setToolTip("draw the thresholded ink as an outline layer")
        threshold_row = QHBoxLayout()
        threshold_row.addWidget(self.threshold_slider, 1)
        threshold_row.addWidget(self.threshold_label)
        threshold_row.addWidget(self.outline_check)
        self.min_size_spin = spin(0, 1_000_000, 0, 10)
        self.min_size_spin.setSpecialValueText("keep all")
        self.min_size_spin.setToolTip("drop thresholded blobs smaller than this (px)")
        self.val_combo = QComboBox()
        self.val_combo.setToolTip(
            "labels to score the shown window against (F0.5, precision, recall at the threshold)"
        )
        self.metrics_label = QLabel("")
        self.metrics_label.setWordWrap(True)
        self.best_button = QPushButton("use best")
        self.best_button.setToolTip("move the threshold to the best F0.5 against those labels")
        self.best_button.setEnabled(False)
        metrics_row = QHBoxLayout()
        metrics_row.addWidget(self.metrics_label, 1)
        metrics_row.addWidget(self.best_button)
        form.addRow("Threshold", threshold_row)
        form.addRow("", self.threshold_source)
        form.addRow("Min blob", self.min_size_spin)
        form.addRow("Compare to", self.val_combo)
        form.addRow("", metrics_row)
        self._show_threshold_source()
        return form

    def _connect(self) -> None:
        layers = self.viewer.layers.events
        layers.inserted.connect(self._refresh_layers)
        layers.removed.connect(self._on_layer_removed)
        self.viewer.dims.events.current_step.connect(self._on_slider_moved)
        camera = camera_of(self.viewer)
        camera.events.center.connect(self._on_view_changed)
        camera.events.zoom.connect(self._on_view_changed)
        self.session.checkpoint_changed.connect(self._on_checkpoint_finetuned)
        self.volume_combo.currentIndexChanged.connect(self._on_volume_changed)
        self.centre_from.valueChanged.connect(self._show_band)
        self.centre_to.valueChanged.connect(self._show_band)
        self.region_combo.currentIndexChanged.connect(self._on_region_mode_changed)
        self.browse_checkpoint.clicked.connect(self._choose_checkpoint)
        self.checkpoint_edit.editingFinished.connect(self._on_checkpoint_edited)
        self.run_button.clicked.connect(self._on_run_clicked)
        self.follow_check.toggled.connect(self._on_follow_toggled)
        self.threshold_slider.valueChanged.connect(self._on_threshold_changed)
        self.min_size_spin.valueChanged.connect(self._on_threshold_changed)
        self.outline_check.toggled.connect(self._on_threshold_changed)
        self.val_combo.currentIndexChanged.connect(self._schedule_metrics)
        self.best_button.clicked.connect(self._use_best_threshold)
        self._follow_timer = QTimer(self)
        self._follow_timer.setSingleShot(True)
        self._follow_timer.timeout.connect(self._follow_view)
        self._metrics_timer = QTimer(self)
        self._metrics_timer.setSingleShot(True)
        self._metrics_timer.timeout.connect(self._update_metrics)
        self._on_region_mode_changed()

    # ------------------------------------------------------------------ widget state

    def _refresh_layers(self, event: Any = None) -> None:
        """Refill the layer combos by role: volumes (role ``volume`` first), and labels to
        compare to (``validation``, else ``truth``; never a mask or a derived layer). A
        fallback choice gives way when a layer of the right role arrives."""
        layers = list(self.viewer.layers)
        volumes = [x for x in layers if isinstance(x, Image) and SEGMENT_KEY in x.metadata]
        volumes.sort(key=lambda x: layer_role(x) != VOLUME)
        names = [x.name for x in volumes]
        LayerChoice.of(self.volume_combo).fill(names, names, keep=names_with_role(volumes, VOLUME))
        volume = self._layer(self.volume_combo)
        segment = volume.metadata.get(SEGMENT_KEY) if volume is not None else None
        shapes = [x.name for x in layers if isinstance(x, Shapes)]
        labels = [
            x
            for x in layers
            if isinstance(x, Labels) and not is_derived(x) and layer_role(x) != MASK
        ]
        loose = [x.name for x in labels if layer_role(x) is None]
        val = names_with_role(labels, VALIDATION, segment)  # held out: the honest score
        fallback = names_with_role(labels, TRUTH, segment)  # dense, but trained letters too
        fallback += [n for n in loose if "validation" in n] + [n for n in loose if "truth" in n]
        fill_names(self.shapes_combo, shapes, shapes[-1:])
        LayerChoice.of(self.val_combo).fill(
            [NO_LABELS, *(x.name for x in labels)], [*val, *fallback, NO_LABELS], keep=val
        )

    def _on_layer_removed(self, event: Any = None) -> None:
        """A removed overlay stops the run drawing into it; a removed volume stops it too."""
        removed = getattr(event, "value", None)
        if self.runner.running and (
            removed in self.runner.layers or removed is self.runner._volume
        ):
            self.stop()
        self._refresh_layers()

    def _layer(self, combo: QComboBox) -> Any:
        name = combo.currentText()
        return next((layer for layer in self.viewer.layers if layer.name == name), None)

    def _on_volume_changed(self, *_: Any) -> None:
        """A different volume: its depth bounds the window centres (defaults set anew)."""
        volume = self._layer(self.volume_combo)
        if volume is self._volume:
            return
        self._volume = volume
        depth = int(volume.data.shape[0]) if volume is not None and volume.ndim == 3 else 1
        for box in (self.centre_from, self.centre_to):
            box.setMaximum(max(0, depth - 1))
        self._default_centres()

    def _on_region_mode_changed(self, *_: Any) -> None:
        self.shapes_combo.setEnabled(self.region_combo.currentText() == "Shapes rectangle")

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

    def _checkpoint_meta(self) -> dict[str, Any]:
        """Our checkpoint's metadata from its header ({} for other or unreadable files)."""
        text = self.checkpoint_edit.text().strip()
        try:
            return read_checkpoint_metadata(text) if text else {}
        except InkDetectError:
            return {}

    def _checkpoint_window(self, meta: dict[str, Any] | None = None) -> tuple[int | None, int]:
        """(trained start layer, window length) from our checkpoint's metadata if readable."""
        text = self.checkpoint_edit.text().strip()
        meta = self._checkpoint_meta() if meta is None else meta
        start = meta.get("start_layer")
        if start is None and self.session.last_checkpoint == Path(text):
            start = self.session.training_start_layer
        return start, int(meta.get("in_layers") or 22)

    def _default_centres(self, meta: dict[str, Any] | None = None) -> None:
        """A band of about +-6 layers around the trained window's centre (or the depth
        slider), on the step's grid through it, so the trained window itself is predicted;
        only centres whose window fits in the volume."""
        volume = self._layer(self.volume_combo)
        depth = int(volume.data.shape[0]) if volume is not None and volume.ndim == 3 else 1
        start, layers = self._checkpoint_window(meta)
        self._window_layers = layers
        first, last = centre_bounds(depth, layers)
        slider = int(self.viewer.dims.current_step[0])
        centre = window_centre(start, layers) if start is not None else slider
        centre = min(last, max(first, centre))
        step = self.centre_step.value()
        self.centre_from.setValue(centre - step * (min(6, centre - first) // step))
        self.centre_to.setValue(centre + step * (min(6, last - centre) // step))
        self._show_band()

    def set_centre_band(self, lo: int, hi: int, through: int | None = None) -> None:
        """Predict the windows centred on ``lo..hi`` (inclusive); with ``through``, trimmed to
        the step's grid through that centre."""
        lo, hi = sorted((int(lo), int(hi)))
        if through is not None and lo <= through <= hi:
            step = self.centre_step.value()
            lo, hi = (
                through - step * ((through - lo) // step),
                through + step * ((hi - through) // step),
            )
        self.centre_from.setValue(lo)
        self.centre_to.setValue(hi)
        self._show_band()

    def set_start_band(
        self, lo: int, hi: int, through: int | None = None, layers: int | None = None
    ) -> None:
        """Predict the windows starting at ``lo..hi`` (inclusive; e.g. the band Find ink depth
        proposes), shown and kept as their centres: ``layers`` long (default: the
        checkpoint's window); with ``through``, on the step's grid through that start."""
        n = int(layers) if layers is not None else self._window_layers
        self.set_centre_band(
            window_centre(lo, n),
            window_centre(hi, n),
            None if through is None else window_centre(through, n),
        )

    def _show_band(self, *_: Any) -> None:
        """The band's tooltips name the windows' layers."""
        n = self._window_layers
        for box, which in ((self.centre_from, "first"), (self.centre_to, "last")):
            first = window_start(box.value(), n)
            box.setToolTip(
                f"centre layer of the {which} window to predict (the depth slider shows it "
                f"there): the {n}-layer window centred on c is layers [c - {n // 2}, "
                f"c - {n // 2} + {n}) = {first}-{first + n - 1}"
            )

    # ------------------------------------------------------------------ config

    def region(self) -> tuple[int, int, int, int] | None:
        """The region the widget describes, in volume pixels (None: the whole mask)."""
        mode = self.region_combo.currentText()
        volume = self._layer(self.volume_combo)
        if mode == "Whole mask":
            return None
        if mode == "Current view":
            return visible_region(self.viewer, volume, self.max_view_spin.value())
        shapes = self._layer(self.shapes_combo)
        if shapes is None or not len(shapes.data):
            raise InkDetectError("draw a rectangle in a Shapes layer, or choose another region")
        corners = np.asarray(shapes.data[-1])[:, -2:]
        world = [np.asarray(shapes.data_to_world(np.r_[0, c][-shapes.ndim :])) for c in corners]
        data = np.array([volume.world_to_data(np.r_[0, w[-2:]])[-2:] for w in world])
        lo, hi = np.floor(data.min(axis=0)), np.ceil(data.max(axis=0))
        full = np.asarray(volume.level_shapes[0] if volume.multiscale else volume.data.shape)[-2:]
        lo, hi = np.clip(lo, 0, full), np.clip(hi, 0, full)
        if np.any(hi - lo < 1):
            raise InkDetectError("the rectangle is outside the volume")
        return (int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1]))

    def build_config(self, region: tuple[int, ...] | str | None = "widget") -> PredictConfig:
        """The run the widget describes (``region`` overrides the region choice)."""
        volume = self._layer(self.volume_combo)
        if volume is None:
            raise InkDetectError("open a segment with napari-inkdetect's reader first")
        checkpoint = self.checkpoint_edit.text().strip()
        if not checkpoint:
            raise InkDetectError("choose a checkpoint (finetune one, or browse for a file)")
        lo, hi = self.centre_from.value(), self.centre_to.value()
        if hi < lo:
            raise InkDetectError(f"window centres {lo} to {hi}: the first is after the last")
        region = self.region() if region == "widget" else region
        centres = f"{lo}:{hi + 1}:{self.centre_step.value()}"
        config = PredictConfig(
            segment=str(volume.metadata[SEGMENT_KEY]),
            checkpoint=checkpoint,
            out="",
            region=region,
            centre_layers=centres,
            stride=self.stride_spin.value() or None,
            batch_size=self.batch_spin.value(),
            device=self.device_combo.currentText(),
            tta_flips=self.tta_check.isChecked(),
            tta_rot90=self.tta_check.isChecked(),
            depth_direction=self.direction_combo.currentText(),
            segment_reverse=bool(volume.metadata.get("reversed", False)),
            dtype=self.dtype_combo.currentText(),
        )
        return config.with_(out=str(self._output_path(config, volume)))

    def _output_path(self, config: PredictConfig, volume: Any) -> Path:
        """One zarr per distinct prediction: rerunning the same one resumes (or is instant)."""
        key = json.dumps({k: v for k, v in config.to_dict().items() if k != "out"}, sort_keys=True)
        digest = hashlib.sha1(key.encode()).hexdigest()[:10]
        stem = Path(config.checkpoint).stem
        segment_id = volume.metadata.get("segment_id") or volume.name
        root = Path(self.out_edit.text().strip() or DEFAULT_OUT).expanduser()
        return root / segment_id / f"{stem}-{digest}.zarr"

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
            source = run_source(
                self.run_on_combo.currentText(),
                self.workers_spin.value(),
                self.address_edit.text(),
            )
            worker = self.runner.start(config, self._layer(self.volume_combo), source=source)
        except InkDetectError as exc:
            self._show_error(str(exc))
            return None
        self.config = config
        self.run_button.setText("Stop")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status_label.setText(f"Loading the model ({config.device})...")
        return worker

    def stop(self) -> None:
        """Ask the engine to stop after its current batch (finished chunks are kept)."""
        if self.running:
            self.runner.stop()
            self.run_button.setText("Stopping...")
            self.run_button.setEnabled(False)

    def _show_error(self, message: str) -> None:
        self.status_label.setText(f"Error: {message}")
        show_error(message)

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
            self._show_error(str(exc))
            return
        if self.config is not None and config.out == self.config.out:
            return
        if self.running:
            self._queued = config
            self.runner.stop()
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
        self.last_stall_ms = self.runner.last_stall_ms
        self.run_button.setText("Predict")
        self.run_button.setEnabled(True)
        if finished is not None and self.last_stall_ms is not None:
            self.status_label.setText(
                f"{self.status_label.text()}  Longest GUI stall {self.last_stall_ms:.0f} ms."
            )
        if self.runner.error:
            self.status_label.setText(f"Error: {self.runner.error}")
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
        centres = _centres(layer.metadata)
        z = int(self.viewer.dims.current_step[0])
        return centres.index(z) if z in centres else None

    @property
    def threshold(self) -> float:
        return self.threshold_slider.value() / 100.0

    def _on_slider_moved(self, event: Any = None) -> None:
        index = self.current_index()
        layer = self.overlay()
        self.profile_plot.set_current(
            _centres(layer.metadata)[index] if index is not None else None
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
        name = "ink above threshold"
        existing = next((x for x in self.viewer.layers if x.name == name), None)
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
                name=name,
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
        layer, labels, index = self.overlay(), self._layer(self.val_combo), self.current_index()
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

    def _use_best_threshold(self) -> None:
        scores = getattr(self, "scores", None)
        if scores is not None:
            self.threshold_slider.setValue(round(scores.best_threshold * 100))


def _centres(metadata: dict[str, Any]) -> list[int]:
    """The overlay planes' window centres (the layers the depth slider shows them at)."""
    layers = int(metadata.get("window_length") or 22)
    return [window_centre(s, layers) for s in metadata["start_layers"]]


def threshold_mask(data: Any, threshold: float, min_size: int = 0) -> Any:
    """``data >= threshold`` lazily per chunk (uint8 data: threshold x 255), blobs smaller
    than ``min_size`` px removed chunk by chunk."""
    import dask.array as da

    if isinstance(data, da.Array):
        lazy = data
    elif isinstance(data, np.ndarray):
        lazy = da.from_array(data, chunks=data.shape)
    else:
        lazy = da.from_zarr(data)
    cut = threshold * 255.0 if lazy.dtype == np.uint8 else threshold
    mask = (lazy >= cut).astype(np.uint8)
    if min_size > 0:
        mask = mask.map_blocks(_remove_small, min_size, dtype=np.uint8)
    return mask


def _remove_small(block: np.ndarray, min_size: int) -> np.ndarray:
    from scipy import ndimage

    out = np.zeros_like(block)
    for i, plane in enumerate(block.reshape(-1, *block.shape[-2:])):
        labelled, n = ndimage.label(plane)
        if n:
            sizes = np.bincount(labelled.ravel())
            keep = sizes >= min_size
            keep[0] = False
            out.reshape(-1, *block.shape[-2:])[i] = keep[labelled]
    return out


def plane_scores(
    data: Any, index: int, labels: np.ndarray, threshold: float, min_size: int = 0
) -> Any:
    """Scores of plane ``index`` against sparse labels; with ``min_size`` the F0.5/precision/
    recall are those of the cleaned mask (the best threshold is from the raw plane)."""
    plane = np.asarray(data[index])
    if labels.shape != plane.shape:
        raise InkDetectError(f"labels {labels.shape} and prediction {plane.shape} differ")
    if not ((labels == 1).any() and (labels == 2).any()):
        return None
    scores = score(plane, labels, threshold)
    if min_size > 0:
        cleaned = np.asarray(threshold_mask(plane[None], threshold, min_size)[0])
        at = score(cleaned.astype(np.float32), labels, 0.5)
        scores = dataclasses.replace(
            scores, f05=at.f05, precision=at.precision, recall=at.recall, threshold=threshold
        )
    return scores


__all__ = ["PredictWidget", "ProfilePlot", "plane_scores", "threshold_mask"]

"""Finetune dock: train a model on the painted labels in a child process, with live progress.

Thin by design: the dock maps widget values to a :class:`~napari_inkdetect.training.TrainConfig`
(saving the painted labels to files the engine reads), relays the engine's events from
:func:`~napari_inkdetect.processes.run_in_child` through a napari ``thread_worker`` and turns
them into UI updates on the GUI thread. Stopping goes through the run's ``threading.Event``:
``quit()`` would only abandon the generator at its next yield and leave the child running.
"""

from __future__ import annotations

import datetime
import json
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error
from qtpy.QtCore import QEvent, QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import (
    QAbstractSpinBox,
    QButtonGroup,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from napari_inkdetect._napari_layers import (
    PREDICTION,
    PREVIEW,
    TRAIN,
    UNCERTAINTY,
    VALIDATION,
    VOLUME,
    is_trainable,
    layer_role,
    names_with_role,
)
from napari_inkdetect._widgets._form import LayerChoice, combo, double_spin, spin
from napari_inkdetect._widgets._layout import make_scrollable
from napari_inkdetect._widgets._runs import (
    RunState,
    StallMeter,
    StoppableWorker,
    Throttle,
    session,
    stoppable_worker,
)
from napari_inkdetect._widgets._settings import DockSettings
from napari_inkdetect._widgets.ink_depth_plot import (
    InkDepth,
    InkDepthPlot,
    predict_docks,
    start_estimate,
)
from napari_inkdetect._widgets.prediction_overlay import PredictionRunner, visible_region
from napari_inkdetect.devices import available_devices
from napari_inkdetect.errors import InkDetectError
from napari_inkdetect.inference import PredictConfig
from napari_inkdetect.io.labels import write_labels
from napari_inkdetect.models import list_models
from napari_inkdetect.models.checkpoints import KIND_INK_MODEL, read_checkpoint_metadata
from napari_inkdetect.processes import run_in_child
from napari_inkdetect.training import (
    BatchHalved,
    CheckpointSaved,
    StepDone,
    TrainConfig,
    TrainFinished,
    TrainStarted,
    Validated,
    ValidationPlanned,
)
from napari_inkdetect.training.init_settings import default_optimisation
from napari_inkdetect.training.preflight import check_labels, preflight
from napari_inkdetect.training.presets import pick_preset
from napari_inkdetect.training.trainer import BEST, CONFIG_FILE, LAST
from napari_inkdetect.windows import centre_bounds, window_start

if TYPE_CHECKING:
    import napari

TARGET = "napari_inkdetect.training:train"
SEGMENT_KEY = "inkdetect_segment"
NO_VALIDATION = "(automatic split)"
TRAIN_PARTS = ("all", "decoder", "decoder+last")
AUTOCAST = ("auto", "off", "bf16", "fp16")
DEFAULT_RUNS = Path.home() / "inkdetect-runs"
CHECKPOINT_FILTER = "Checkpoints (*.safetensors *.pt *.pth *.ckpt *.bin);;All files (*)"
AUTO_LR = "auto"  # the learning rate spin box at 0


def relay_training(config: TrainConfig, stop: threading.Event) -> Iterator[Any]:
    """The worker's generator: the engine's events from a spawned child, one yield each."""
    yield from run_in_child(TARGET, config, stop)


#: napari's window close calls ``quit()``; ours sets the stop event so the child saves and ends
TrainWorker = StoppableWorker


def _discard_run_dir(run_dir: Path) -> None:
    """A refused run leaves nothing behind: the label files written for it, then the folder."""
    for name in ("train_labels.png", "validation_labels.png"):
        (run_dir / name).unlink(missing_ok=True)
    if run_dir.is_dir() and not any(run_dir.iterdir()):  # anything else in it: leave it
        run_dir.rmdir()


class LossPlot(QWidget):
    """A live loss curve (polyline) with validation F0.5 points, drawn with QPainter.

    No plotting dependency: thousands of steps are decimated to the widget's width.
    """

    LOSS_COLOR = QColor("#ffa040")
    F05_COLOR = QColor("#40d0ff")

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumHeight(110)
        self.losses: list[tuple[int, float]] = []
        self.f05: list[tuple[int, float]] = []
        self.total = 1

    def clear(self, total: int = 1) -> None:
        """Start a new run of ``total`` steps."""
        self.losses, self.f05, self.total = [], [], max(1, total)
        self.update()

    def add_loss(self, step: int, loss: float) -> None:
        """Append one step's training loss."""
        if math.isfinite(loss):
            self.losses.append((step, loss))  # drawn at the next (throttled) update()

    def add_f05(self, step: int, f05: float) -> None:
        """Append one validation F0.5 (plotted on a fixed 0..1 scale)."""
        self.f05.append((step, f05))
        self.update()

    def paintEvent(self, event: Any) -> None:
        """Frame, loss polyline (own min..max scale), F0.5 dots (0..1) and the last values."""
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        pad = 6
        font_h = painter.fontMetrics().height()
        plot = QRectF(pad, pad + font_h, self.width() - 2 * pad, self.height() - 2 * pad - font_h)
        painter.setPen(QPen(self.palette().mid().color(), 1))
        painter.drawRect(plot)
        self._draw_loss(painter, plot)
        self._draw_f05(painter, plot)
        self._draw_text(painter, pad, font_h)
        painter.end()

    def _x(self, plot: QRectF, step: int) -> float:
        return plot.left() + plot.width() * step / self.total

    def _draw_loss(self, painter: QPainter, plot: QRectF) -> None:
        if not self.losses:
            return
        stride = max(1, len(self.losses) // max(1, int(plot.width())))
        points = self.losses[::stride] + ([self.losses[-1]] if stride > 1 else [])
        values = [v for _, v in self.losses]
        lo, hi = min(values), max(values)
        span = (hi - lo) or 1.0
        line = QPolygonF(
            [
                QPointF(self._x(plot, s), plot.bottom() - plot.height() * (v - lo) / span)
                for s, v in points
            ]
        )
        painter.setPen(QPen(self.LOSS_COLOR, 1.5))
        painter.drawPolyline(line)
        if len(points) == 1:
            painter.drawEllipse(line[0], 2, 2)

    def _draw_f05(self, painter: QPainter, plot: QRectF) -> None:
        painter.setPen(QPen(self.F05_COLOR, 1))
        painter.setBrush(self.F05_COLOR)
        for step, f05 in self.f05:
            y = plot.bottom() - plot.height() * min(max(f05, 0.0), 1.0)
            painter.drawEllipse(QPointF(self._x(plot, step), y), 3, 3)
        painter.setBrush(Qt.BrushStyle.NoBrush)

    def _draw_text(self, painter: QPainter, pad: int, font_h: int) -> None:
        baseline = pad + font_h - painter.fontMetrics().descent()
        if self.losses:
            painter.setPen(self.LOSS_COLOR)
            painter.drawText(pad, baseline, f"loss {self.losses[-1][1]:.4f}")
        if self.f05:
            text = f"val F0.5 {self.f05[-1][1]:.3f} (best {max(f for _, f in self.f05):.3f})"
            painter.setPen(self.F05_COLOR)
            width = painter.fontMetrics().horizontalAdvance(text)
            painter.drawText(self.width() - pad - width, baseline, text)


def _auto_lr_tip() -> str:
    """What "auto" picks, from the core's presets (not repeated here)."""
    from napari_inkdetect.models.checkpoints import KIND_INK_MODEL, KIND_PRETRAINED_ENCODER

    starts = ((None, "cpu"), (None, "cuda"), (KIND_PRETRAINED_ENCODER,), (KIND_INK_MODEL,))
    cpu, gpu, kinetics, ink = (default_optimisation(*start).lr for start in starts)
    return (
        f"auto: the preset for where training starts: from scratch {cpu:g} on a CPU, {gpu:g} "
        f"on a GPU; from a Kinetics encoder {kinetics:g}; from a trained ink model {ink:g}. "
        "Type a value to override it"
    )


def newest_run_checkpoint(root: Path, name: str, segment: str | None = None) -> Path | None:
    """The checkpoint of the newest run folder ``<name>-<time>`` in ``root`` (of ``segment``
    when its config.json says so): its best.safetensors, else last.safetensors."""
    try:
        runs = [d for d in root.iterdir() if d.name.startswith(f"{name}-") and d.is_dir()]
    except OSError:
        return None
    found = []
    for run in runs:
        path = next((run / f for f in (BEST, LAST) if (run / f).is_file()), None)
        if path is not None and _trained_on(run, segment):
            found.append(path)
    return max(found, key=lambda p: p.stat().st_mtime, default=None)


def _trained_on(run: Path, segment: str | None) -> bool:
    """Whether run folder ``run`` trained on ``segment`` (unreadable config: its name says)."""
    try:
        recorded = json.loads((run / CONFIG_FILE).read_text()).get("segment")
    except (OSError, ValueError, AttributeError):
        return True
    if not recorded or not segment:
        return True
    return Path(recorded).expanduser().resolve() == Path(segment).expanduser().resolve()


def _preview_name(volume: Any) -> str:
    """The training preview layer's name (one per volume, reused by every preview)."""
    return f"{volume.metadata.get('segment_id') or volume.name} preview (training)"


def _format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "--:--"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class FinetuneWidget(QWidget):
    """Finetune a model on the painted labels; Finetune becomes Stop while a run goes on.

    ``build_config()`` maps the widget to a ``TrainConfig`` (writing the labels layers to the
    run folder), ``start()`` runs it in a child process, ``stop()`` asks it to stop. After a
    run, ``last_checkpoint`` holds the best checkpoint (the Predict dock preselects it).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        # napari hands plugins a PublicOnlyProxy whose layers are new proxies on every access;
        # the docks compare layers by identity, so they keep the viewer itself
        self.viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        self.worker: TrainWorker | None = None
        self.config: TrainConfig | None = None
        self.last_checkpoint: Path | None = None
        self.finished_event: TrainFinished | None = None
        self._state = RunState()
        self.session = session(self.viewer)
        self.preview = PredictionRunner(self.viewer, two_d=True, parent=self)
        self.previews = 0
        self.stall = StallMeter(parent=self)
        self.last_stall_ms: float | None = None
        self._last_step: StepDone | None = None
        self._step_throttle = Throttle(self._show_step, parent=self)
        self._device = ""
        self._follow_slider = True
        self._continue_key: tuple[str, str | None] | None = None  # what Continue last read
        self._build_ui()
        self._refresh_layers()
        self._on_volume_changed()
        self._connect()
        self.settings = DockSettings(self, "finetune", self._kept_controls())
        if self.settings.stored("device") not in (None, self.device_combo.currentText()):
            self._apply_device_preset(self.device_combo.currentText())  # sizes of another device
        self._update_continue(force=True)
        # A plain function of plain state: it must work after the Qt object is deleted.
        self.destroyed.connect(self._state.on_destroyed)
        self.destroyed.connect(self.preview.shutdown)
        make_scrollable(self)  # last: a short dock whatever the form's height

    def _kept_controls(self) -> dict[str, QWidget]:
        """What the dock remembers between sessions (no layer choice, no window centre: it
        follows the segment). The device comes first: its preset must not undo the rest."""
        return {
            "device": self.device_combo,
            "new_model": self.new_radio,
            "from_checkpoint": self.checkpoint_radio,
            "checkpoint": self.checkpoint_edit,
            "arch": self.arch_combo,
            "width": self.width_spin,
            "layers": self.layers_spin,
            "scale": self.scale_spin,
            "steps": self.steps_spin,
            "batch": self.batch_spin,
            "lr": self.lr_spin,
            "train": self.train_combo,
            "tile": self.tile_spin,
            "validate_every": self.val_every_spin,
            "autocast": self.autocast_combo,
            "seed": self.seed_spin,
            "preview_every": self.preview_spin,
            "preview_size": self.preview_side_spin,
            "runs": self.runs_edit,
        }

    # ------------------------------------------------------------------ layout

    def _build_ui(self) -> None:
        layout = QVBoxLayout(self)
        layout.addLayout(self._data_form())
        layout.addLayout(self._model_form())
        layout.addLayout(self._training_form())
        self.depth_plot = InkDepthPlot()  # shown after "Find ink depth"
        layout.addWidget(self.depth_plot)
        layout.addWidget(self._advanced_section())
        self.run_button = QPushButton("Finetune")
        self.run_button.setToolTip(
            "train in a separate process; Stop saves the last checkpoint and ends the run"
        )
        layout.addWidget(self.run_button)
        layout.addLayout(self._progress_rows())
        layout.addStretch(1)

    def _data_form(self) -> QFormLayout:
        form = QFormLayout()
        self.volume_combo = QComboBox()
        self.labels_combo = QComboBox()
        self.val_combo = QComboBox()
        self.val_combo.setToolTip("held-out labels; by default some labelled regions are held out")
        self.volume_combo.setToolTip("the segment to train on (opened by napari-inkdetect)")
        self.labels_combo.setToolTip(
            "painted labels to train on: 1 ink, 2 not ink, 0 unlabelled (never a mask or truth)"
        )
        form.addRow("Volume", self.volume_combo)
        form.addRow("Labels", self.labels_combo)
        form.addRow("Validation", self.val_combo)
        return form

    def _model_form(self) -> QFormLayout:
        form = QFormLayout()
        self.new_radio = QRadioButton("New")
        self.new_radio.setToolTip("train a new model: the architecture and width beside it")
        self.checkpoint_radio = QRadioButton("Checkpoint")
        self.checkpoint_radio.setToolTip(
            "start from a file: a Kinetics-pretrained encoder, a Kaggle ink model or a run's"
        )
        self.new_radio.setChecked(True)
        self._model_group = QButtonGroup(self)
        self._model_group.addButton(self.new_radio)
        self._model_group.addButton(self.checkpoint_radio)
        self.arch_combo = combo(list_models(), "resnet10")
        self.arch_combo.setToolTip("a new model's 3D ResNet encoder (deeper: slower, stronger)")
        self.width_spin = double_spin(0.0625, 2.0, 1.0, 0.125, 4)
        self.width_spin.setButtonSymbols(QAbstractSpinBox.ButtonSymbols.NoButtons)  # "0.0625" fits
        self.width_spin.setToolTip("channel width multiplier: 0.125-0.25 train on a CPU")
        new_row = QHBoxLayout()
        new_row.addWidget(self.new_radio)
        new_row.addWidget(self.arch_combo, 1)
        new_row.addWidget(QLabel("width"))
        new_row.addWidget(self.width_spin)
        self.checkpoint_edit = QLineEdit()
        self.checkpoint_edit.setPlaceholderText("Kinetics, Kaggle or our own .safetensors")
        self.checkpoint_edit.setToolTip("the checkpoint file to start from")
        self.browse_checkpoint = QPushButton("...")
        self.browse_checkpoint.setToolTip("choose the checkpoint file to start from")
        self.browse_checkpoint.setMaximumWidth(30)
        ckpt_row = QHBoxLayout()
        ckpt_row.addWidget(self.checkpoint_radio)
        ckpt_row.addWidget(self.checkpoint_edit, 1)
        ckpt_row.addWidget(self.browse_checkpoint)
        self.continue_button = QPushButton("Continue from the last checkpoint")
        form.addRow("Model", new_row)
        form.addRow("", ckpt_row)
        form.addRow("", self.continue_button)
        self._on_model_source_changed()
        return form

    def _training_form(self) -> QFormLayout:
        form = QFormLayout()
        self.centre_spin = spin(0, 0, 0)  # tooltip: _show_window (it names the layers)
        self.slider_button = QPushButton("from slider")
        self.slider_button.setToolTip("the window centre follows the depth slider again")
        start_row = QHBoxLayout()
        start_row.addWidget(self.centre_spin, 1)
        start_row.addWidget(self.slider_button)
        self.depth_button = QPushButton("Find ink depth")
        self.depth_button.setToolTip(
            "set the window centre (and Predict's band of centres) where the ink texture shows"
        )
        self.depth_button.clicked.connect(self.find_ink_depth)
        self.depth_worker: Any = None
        start_row.addWidget(self.depth_button)
        self.layers_spin = spin(1, 256, 22)
        self.layers_spin.setToolTip(
            "window length: consecutive volume layers the model sees at once (layers)"
        )
        self.scale_spin = double_spin(0.1, 8.0, 1.0, 0.1, 3)
        self.scale_spin.setToolTip(
            "in-plane zoom (model pixels per volume pixel); fragment-trained models need ~2.44 "
            "on scrolls"
        )
        self.steps_spin = spin(1, 10_000_000, 1000, 100)
        self.steps_spin.setToolTip("optimiser steps to train for (steps; one batch each)")
        self.batch_spin = spin(1, 1024, 8)
        self.batch_spin.setToolTip("tiles per step (tiles); fewer need less memory")
        self.lr_spin = double_spin(0.0, 1.0, 0.0, 1e-4, 6)
        self.lr_spin.setSpecialValueText(AUTO_LR)  # 0: lr None, the core's preset decides
        self.lr_spin.setToolTip(_auto_lr_tip())
        self.train_combo = combo(TRAIN_PARTS, "all")
        self.train_combo.setToolTip("parts to train; the others stay frozen")
        self.device_combo = combo(available_devices())
        self.device_combo.setToolTip(
            "where training runs; choosing one applies its preset (model, tile, batch, steps)"
        )
        for label, widget in (
            ("Window centre", start_row),
            ("Layers", self.layers_spin),
            ("Scale", self.scale_spin),
            ("Steps", self.steps_spin),
            ("Batch", self.batch_spin),
            ("Learning rate", self.lr_spin),
            ("Train", self.train_combo),
            ("Device", self.device_combo),
        ):
            form.addRow(label, widget)
        return form

    def _advanced_section(self) -> QCollapsible:
        self.advanced = QCollapsible("Advanced")
        inner = QWidget()
        form = QFormLayout(inner)
        form.setContentsMargins(0, 0, 0, 0)
        self.advanced.findChild(QPushButton).setToolTip(  # its toggle, the only button yet
            "tile, validation, precision, seed, live preview and the run folder"
        )
        self.tile_spin = spin(32, 2048, 256, 32)
        self.tile_spin.setToolTip("side of each training tile (model pixels)")
        self.val_every_spin = spin(1, 1_000_000, 100, 10)
        self.val_every_spin.setToolTip(
            "score held-out labels (F0.5) and keep the best checkpoint every N steps (steps)"
        )
        self.autocast_combo = combo(AUTOCAST, "auto")
        self.autocast_combo.setToolTip(
            "mixed precision: auto is bf16 (or fp16) on a GPU and float32 on a CPU; off: float32"
        )
        self.seed_spin = spin(0, 2**31 - 1, 0)
        self.seed_spin.setToolTip("random seed: tile sampling, augmentation, new model weights")
        self.preview_spin = spin(0, 1_000_000, 100, 50)
        self.preview_spin.setSpecialValueText("off")
        self.preview_spin.setToolTip(
            "every N steps, the model so far predicts the view (the 'preview' layer)"
        )
        self.preview_side_spin = spin(64, 16384, 512, 128)
        self.preview_side_spin.setToolTip("largest side of the previewed view (volume px)")
        self.runs_edit = QLineEdit(str(DEFAULT_RUNS))
        self.runs_edit.setToolTip("each run gets its own <segment>-<time> folder in here")
        self.browse_runs = QPushButton("...")
        self.browse_runs.setToolTip("choose the run folder")
        self.browse_runs.setMaximumWidth(30)
        runs_row = QHBoxLayout()
        runs_row.addWidget(self.runs_edit, 1)
        runs_row.addWidget(self.browse_runs)
        for label, widget in (
            ("Tile", self.tile_spin),
            ("Validate every", self.val_every_spin),
            ("Autocast", self.autocast_combo),
            ("Seed", self.seed_spin),
            ("Preview every", self.preview_spin),
            ("Preview size", self.preview_side_spin),
            ("Run folder", runs_row),
        ):
            form.addRow(label, widget)
        self.advanced.addWidget(inner)
        self.device_combo.currentTextChanged.connect(self._apply_device_preset)
        self._apply_device_preset(self.device_combo.currentText())
        return self.advanced

    def _apply_device_preset(self, device: str) -> None:
        """Sizes that finish in minutes on the chosen device, from the table the command line
        uses too (:mod:`napari_inkdetect.training.presets`: a full-width model on a GPU, a
        1/8-width one on tiles of 128 on a CPU); the learning rate back to auto."""
        preset, _ = pick_preset(device)
        self.arch_combo.setCurrentText(preset.arch)
        self.width_spin.setValue(preset.width)
        self.tile_spin.setValue(preset.tile)
        self.steps_spin.setValue(preset.steps)
        self.batch_spin.setValue(preset.batch_size)
        self.lr_spin.setValue(self.lr_spin.minimum())
        self.preview_spin.setValue(preset.preview_every)
        self.preview_side_spin.setValue(preset.preview_side)

    def _lr(self) -> float | None:
        """The typed learning rate, or None on auto (the core's preset for where training
        starts: the spin box shows the value once the run has started)."""
        self.lr_spin.setSpecialValueText(AUTO_LR)
        value = self.lr_spin.value()
        return None if value <= self.lr_spin.minimum() else value

    def _progress_rows(self) -> QVBoxLayout:
        box = QVBoxLayout()
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("%v / %m steps")
        self.eta_label = QLabel("")
        self.loss_plot = LossPlot()
        self.status_label = QLabel("Paint ink (1) and not ink (2), then press Finetune.")
        self.checkpoint_label = QLabel("")
        self.validation_label = QLabel("")
        for label in (self.status_label, self.validation_label, self.checkpoint_label):
            label.setWordWrap(True)
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        for widget in (
            self.progress,
            self.eta_label,
            self.loss_plot,
            self.status_label,
            self.validation_label,
            self.checkpoint_label,
        ):
            box.addWidget(widget)
        return box

    def _connect(self) -> None:
        layers = self.viewer.layers.events
        layers.inserted.connect(self._refresh_layers)
        layers.removed.connect(self._refresh_layers)
        self.viewer.dims.events.current_step.connect(self._on_slider_moved)
        self.volume_combo.currentIndexChanged.connect(self._on_volume_changed)
        self.new_radio.toggled.connect(self._on_model_source_changed)
        self.centre_spin.valueChanged.connect(self._on_centre_edited)
        self.layers_spin.valueChanged.connect(self._on_layers_changed)
        self.slider_button.clicked.connect(self._follow_depth_slider)
        self.browse_checkpoint.clicked.connect(self._choose_checkpoint)
        self.browse_runs.clicked.connect(self._choose_runs_folder)
        self.run_button.clicked.connect(self._on_run_clicked)
        self.continue_button.clicked.connect(self.continue_from_last)
        self.volume_combo.currentIndexChanged.connect(self._update_continue)
        self.runs_edit.editingFinished.connect(lambda: self._update_continue(force=True))

    # ------------------------------------------------------------------ widget state

    def _refresh_layers(self, event: Any = None) -> None:
        """Refill the layer combos by role, whatever order the layers arrive in: the labels
        never offer a mask, truth or prediction; a fallback choice gives way to a layer of the
        right role (``train``, ``validation``) when one arrives; a user's choice is kept."""
        layers = list(self.viewer.layers)
        images = [
            x
            for x in layers
            if isinstance(x, Image) and layer_role(x) not in (PREDICTION, PREVIEW, UNCERTAINTY)
        ]
        images.sort(key=lambda x: (layer_role(x) != VOLUME, SEGMENT_KEY not in x.metadata))
        names = [x.name for x in images]
        LayerChoice.of(self.volume_combo).fill(names, names, keep=names_with_role(images, VOLUME))
        volume = self._layer(self.volume_combo)
        segment = volume.metadata.get(SEGMENT_KEY) if volume is not None else None
        labels = [x for x in layers if isinstance(x, Labels) and is_trainable(x)]
        names = [x.name for x in labels]
        loose = [x.name for x in labels if layer_role(x) is None]  # the user's own layers
        train = names_with_role(labels, TRAIN, segment)
        val = names_with_role(labels, VALIDATION, segment)
        named = [n for n in loose if "train" in n.lower()]
        LayerChoice.of(self.labels_combo).fill(names, train + named + loose + names, keep=train)
        named = [n for n in loose if "validation" in n.lower()]
        LayerChoice.of(self.val_combo).fill(
            [NO_VALIDATION, *names], [*val, *named, NO_VALIDATION], keep=val
        )

    def _on_volume_changed(self, *_: Any) -> None:
        """The window centre ranges over the centres whose window fits the chosen volume."""
        self._update_centre_range()
        if self._follow_slider:
            self._follow_depth_slider()

    def _on_layers_changed(self, *_: Any) -> None:
        """A longer or shorter window keeps its centre (clamped so that it still fits)."""
        self._update_centre_range()
        if self._follow_slider:
            self._follow_depth_slider()

    def _update_centre_range(self) -> None:
        """Centres ``Layers // 2 .. depth - Layers + Layers // 2``: the spin box clamps to them."""
        layer = self._layer(self.volume_combo)
        depth = int(layer.data.shape[0]) if layer is not None and layer.ndim == 3 else 1
        self.centre_spin.blockSignals(True)
        self.centre_spin.setRange(*centre_bounds(depth, self.layers_spin.value()))
        self.centre_spin.blockSignals(False)
        self._show_window()

    def _on_slider_moved(self, event: Any = None) -> None:
        if self._follow_slider:
            self._follow_depth_slider()

    def _follow_depth_slider(self) -> None:
        """Window centre = the depth slider's position, clamped so that the window fits (until
        the user types another): the slider marks the centre of the window trained on."""
        self._follow_slider = True
        self.centre_spin.blockSignals(True)
        self.centre_spin.setValue(int(self.viewer.dims.current_step[0]))
        self.centre_spin.blockSignals(False)
        self._show_window()

    def _on_centre_edited(self, value: int) -> None:
        self._follow_slider = False
        self._show_window()

    def window_start(self) -> int:
        """The start layer of the window the dock describes (what the config records)."""
        return window_start(self.centre_spin.value(), self.layers_spin.value())

    def _show_window(self) -> None:
        """The centre's tooltip names the window's layers."""
        c, n = self.centre_spin.value(), self.layers_spin.value()
        first = window_start(c, n)
        follows = "follows the depth slider" if self._follow_slider else "typed (or found)"
        self.centre_spin.setToolTip(
            f"layer the {n}-layer window is centred on ({follows}): the window is layers "
            f"[c - {n // 2}, c - {n // 2} + {n}) = {first}-{first + n - 1}"
        )

    def find_ink_depth(self) -> Any:
        """Estimate the ink depth of the chosen volume (from the chosen labels if they hold ink
        and not ink) in a worker; :meth:`apply_ink_depth` takes the result. The worker, or
        ``None`` when there is no 3-D volume."""
        volume = self._layer(self.volume_combo)
        if volume is None or volume.ndim != 3:
            self._show_error("choose a 3-D volume to find the ink depth in")
            return None
        if self.depth_worker is not None:
            return self.depth_worker

        def done() -> None:
            self.depth_worker = None
            if self._state.alive:
                self.depth_button.setEnabled(True)
                self.depth_button.setText("Find ink depth")

        self.depth_button.setEnabled(False)
        self.depth_button.setText("Finding...")
        labels = self._layer(self.labels_combo)
        self.depth_worker = start_estimate(
            self.viewer,
            volume,
            labels,
            self.layers_spin.value(),
            on_done=self.apply_ink_depth,
            on_error=lambda exc: self._state.alive and self._show_error(str(exc)),
        )
        self.depth_worker.finished.connect(done)
        return self.depth_worker

    def apply_ink_depth(self, estimate: InkDepth) -> None:
        """Plot the estimate; if a depth stands out, the window is centred there (the centre
        stops following the slider) and the Predict dock gets the estimate's band."""
        if not self._state.alive:
            return
        self.depth_plot.set_estimate(estimate)
        if not self.running:
            self.status_label.setText(estimate.explanation)
        if estimate.found:
            self.centre_spin.setValue(estimate.centre)
            self._follow_slider = False
            self._show_window()
            for dock in predict_docks(self.viewer):
                dock.set_start_band(*estimate.band, through=estimate.start, layers=estimate.layers)

    def _on_model_source_changed(self, *_: Any) -> None:
        new = self.new_radio.isChecked()
        self.arch_combo.setEnabled(new)
        self.width_spin.setEnabled(new)
        self.checkpoint_edit.setEnabled(not new)
        self.browse_checkpoint.setEnabled(not new)

    def _choose_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Start from checkpoint", "", CHECKPOINT_FILTER)
        if path:
            self.checkpoint_edit.setText(path)
            self.checkpoint_radio.setChecked(True)

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
        volume = self._layer(self.volume_combo)
        if volume is None:
            return None
        root = Path(self.runs_edit.text().strip() or DEFAULT_RUNS).expanduser()
        name = volume.metadata.get("segment_id") or volume.name
        return newest_run_checkpoint(root, name, volume.metadata.get(SEGMENT_KEY))

    def continue_from_last(self) -> Path | None:
        """One click: start from the last run's checkpoint, with its window length, tile and
        scale and the learning rate on auto (the core's preset for a trained ink model).
        ``None`` (and a message) when there is no run to continue."""
        path = self.last_run_checkpoint()
        self._update_continue(force=True)
        if path is None:
            self._show_error("no finetuned checkpoint to continue from: press Finetune first")
            return None
        self.checkpoint_radio.setChecked(True)
        self.checkpoint_edit.setText(str(path))
        self.lr_spin.setValue(self.lr_spin.minimum())
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
        volume = self._layer(self.volume_combo)
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

    def _layer(self, combo: QComboBox) -> Any:
        name = combo.currentText()
        return next((layer for layer in self.viewer.layers if layer.name == name), None)

    # ------------------------------------------------------------------ config

    def build_config(self) -> TrainConfig:
        """The run the widget describes; writes the labels layers into a new run folder.

        Raises ``InkDetectError`` (shown as a notification by ``start``) for missing layers or
        labels the engine could not read.
        """
        volume, labels = self._layer(self.volume_combo), self._layer(self.labels_combo)
        if volume is None or labels is None:
            raise InkDetectError("choose a volume and a labels layer to train on")
        segment = volume.metadata.get(SEGMENT_KEY)
        if not segment:
            raise InkDetectError(
                f"{volume.name} has no segment on disk: "
                "open the volume with napari-inkdetect's reader"
            )
        run_dir = self._new_run_dir(volume.metadata.get("segment_id") or volume.name)
        val = self._layer(self.val_combo)
        new_model = self.new_radio.isChecked()
        return TrainConfig(
            segment=str(segment),
            labels=str(self._save_labels(labels, run_dir / "train_labels.png")),
            out=str(run_dir),
            val_labels=str(self._save_labels(val, run_dir / "validation_labels.png"))
            if val is not None
            else None,
            init=None if new_model else (self.checkpoint_edit.text().strip() or None),
            arch=self.arch_combo.currentText(),
            width=self.width_spin.value(),
            start_layer=self.window_start(),
            layers=self.layers_spin.value(),
            scale=self.scale_spin.value(),
            tile=self.tile_spin.value(),
            steps=self.steps_spin.value(),
            batch_size=self.batch_spin.value(),
            lr=self._lr(),
            train=self.train_combo.currentText(),
            device=self.device_combo.currentText(),
            autocast=self.autocast_combo.currentText(),
            val_every=self.val_every_spin.value(),
            save_every=self.preview_spin.value() or None,
            seed=self.seed_spin.value(),
        )

    def _new_run_dir(self, name: str) -> Path:
        root = Path(self.runs_edit.text().strip() or DEFAULT_RUNS).expanduser()
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir, n = root / f"{name}-{stamp}", 1
        while run_dir.exists():
            n += 1
            run_dir = root / f"{name}-{stamp}-{n}"
        run_dir.mkdir(parents=True)
        return run_dir

    @staticmethod
    def _save_labels(layer: Labels, path: Path) -> Path:
        """The engine reads labels from files: save what is painted now (values checked)."""
        return write_labels(path, np.asarray(layer.data))

    # ------------------------------------------------------------------ run control

    @property
    def running(self) -> bool:
        """Whether a run is in progress (its worker has not finished)."""
        return self.worker is not None

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
                _discard_run_dir(Path(config.out))
            self._show_error(str(exc))
            return None
        worker, self._state.stop = stoppable_worker(
            relay_training,
            config,
            connect={
                "yielded": self._on_event,
                "errored": self._on_errored,
                "finished": self._on_finished,
            },
        )
        self.worker, self.config = worker, config
        self._reset_progress(config)
        volume = self._layer(self.volume_combo)
        if self.preview_spin.value() and volume is not None:  # now, not at the first preview
            self.preview.prepare(volume, _preview_name(volume))
        self.stall.start()
        worker.start()
        return worker

    def _check_labels(self) -> None:
        """Refuse labels with nothing painted or one class missing, named by their layers."""
        labels, val = self._layer(self.labels_combo), self._layer(self.val_combo)
        if labels is None:
            return  # build_config says what to choose
        check_labels(
            np.asarray(labels.data),
            f"'{labels.name}'",
            np.asarray(val.data) if val is not None else None,
            f"'{val.name}'" if val is not None else None,
        )

    def stop(self) -> None:
        """Ask the engine to stop after its current step (it saves the last checkpoint)."""
        if self._state.stop is not None:
            self._state.stop.set()
        if self.running:
            self.run_button.setText("Stopping...")
            self.run_button.setEnabled(False)
            self.status_label.setText("Stopping after the current step...")

    def _reset_progress(self, config: TrainConfig) -> None:
        self.finished_event = None
        self.previews = 0
        self.run_button.setText("Stop")
        self.progress.setRange(0, config.steps)
        self.progress.setValue(0)
        self.eta_label.setText("")
        self.loss_plot.clear(config.steps)
        self.checkpoint_label.setText("")
        self.status_label.setText(f"Starting a training process ({config.device})...")

    def _show_error(self, message: str) -> None:
        self.status_label.setText(f"Error: {message}")
        show_error(message)

    # ------------------------------------------------------------------ events (GUI thread)

    def _on_event(self, event: Any) -> None:
        if not self._state.alive:
            return
        handler = {
            TrainStarted: self._on_started,
            StepDone: self._on_step,
            Validated: self._on_validated,
            ValidationPlanned: self._on_validation_planned,
            CheckpointSaved: self._on_checkpoint,
            BatchHalved: self._on_batch_halved,
            TrainFinished: self._on_train_finished,
        }.get(type(event))
        if handler is not None:
            handler(event)

    def _on_started(self, event: TrainStarted) -> None:
        self.progress.setRange(0, event.total_steps)
        self.progress.setValue(event.start_step)
        self.loss_plot.clear(event.total_steps)
        self._device = event.device
        if self.lr_spin.value() <= self.lr_spin.minimum():  # auto: show what it resolved to
            self.lr_spin.setSpecialValueText(f"{AUTO_LR} ({event.config.lr:g})")
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
        if event is None or not self._state.alive:
            return
        self.progress.setValue(event.step)
        self.loss_plot.update()
        self.eta_label.setText(
            f"ETA {_format_eta(event.eta_s)}  |  {event.tiles_per_s:.1f} tiles/s  |  "
            f"{self._device}"
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
            and not (self._state.stop and self._state.stop.is_set())
        ):
            self._start_preview(event)

    def _start_preview(self, event: CheckpointSaved) -> None:
        """The model so far predicts the view into a 'preview' layer while training goes on
        (skipped while the previous preview still runs)."""
        volume, config = self._layer(self.volume_combo), self.config
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
            self._show_error(str(exc))
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

    def _on_errored(self, exc: Exception) -> None:
        """Our errors are one-line messages for the user; anything else names its type."""
        if self._state.alive:
            message = (
                str(exc) if isinstance(exc, InkDetectError) else f"{type(exc).__name__}: {exc}"
            )
            self._show_error(message)

    def _on_finished(self) -> None:
        self._state.stop = None
        self.worker = None
        self.last_stall_ms = self.stall.stop()
        if not self._state.alive:
            return
        if not self.preview.running:
            self.preview.drop_placeholder()  # the run ended before its first preview
        self.run_button.setText("Finetune")
        self.run_button.setEnabled(True)

    # ------------------------------------------------------------------ lifetime

    def event(self, event: QEvent) -> bool:
        """Removed from its dock (no parent any more): stop a run nobody can see."""
        if event.type() == QEvent.Type.ParentChange and self.parent() is None and self.running:
            self.stop()
        return super().event(event)

"""Export dock: a prediction's images per start layer, max projection and depth-sweep GIF/MP4.

Thin by design: the dock maps widget values to an :class:`~napari_inkdetect.export.ExportConfig`
and runs :func:`~napari_inkdetect.export.export` in a napari ``thread_worker``, turning its
events into progress on the GUI thread. Export becomes Stop while a run goes on.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari.layers import Image
from napari.utils.notifications import show_error
from qtpy.QtCore import Qt
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
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_inkdetect._napari_layers import PREDICTION, PREDICTION_KEY, layer_role
from napari_inkdetect._widgets._layout import make_scrollable
from napari_inkdetect._widgets._runs import RunState, StoppableWorker, stoppable_worker
from napari_inkdetect._widgets._settings import DockSettings
from napari_inkdetect.errors import ConfigError, InkDetectError
from napari_inkdetect.export import MP4_HINT, ExportConfig, FileWritten, FrameRendered, export

if TYPE_CHECKING:
    import napari

IDLE_TEXT = "Choose a prediction and what to write, then press Export."


def _spin(lo: int, hi: int, value: int, suffix: str = "") -> QSpinBox:
    box = QSpinBox()
    box.setRange(lo, hi)
    box.setValue(value)
    box.setSuffix(suffix)
    return box


def _prediction_path(layer: Any) -> str | None:
    """The zarr a prediction layer shows (not a training preview's), else None."""
    if not isinstance(layer, Image) or layer_role(layer) not in (PREDICTION, None):
        return None
    path = layer.metadata.get(PREDICTION_KEY)
    return str(path) if path else None


def _arrived(event: Any) -> Any:
    """The layer an event brings: one inserted, or an overlay the Predict dock pointed at a
    new output (it reuses its layers and sets their metadata)."""
    kind = getattr(event, "type", None)
    if kind == "inserted":
        return event.value
    return getattr(event, "source", None) if kind == "metadata" else None


class ExportWidget(QWidget):
    """Write a prediction layer's files: PNG/TIFF per start layer, max projection, GIF/MP4."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        # napari hands plugins a PublicOnlyProxy whose layers are new proxies on every access;
        # the docks compare layers by identity, so they keep the viewer itself
        self.viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        self.worker: StoppableWorker | None = None
        self.written: list[Path] = []
        self._state = RunState()
        self._auto_folder = ""
        self._added: list[str] = []  # prediction zarrs in the order their layers arrived
        self._build()
        self.settings = DockSettings(self, "export", self._kept_controls())
        layers = self.viewer.layers.events
        layers.inserted.connect(self._on_layers_changed)
        layers.removed.connect(self._on_layers_changed)
        for layer in self.viewer.layers:
            layer.events.metadata.connect(self._on_layers_changed)
        self._on_layers_changed()
        self.destroyed.connect(self._state.on_destroyed)
        make_scrollable(self)  # last: a short dock whatever the form's height

    # ------------------------------------------------------------------ layout

    def _build(self) -> None:
        self.prediction_combo = QComboBox()
        self.prediction_combo.setToolTip("the prediction to write (the newest one is chosen)")
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("output folder")
        self.folder_edit.setToolTip("where the files go (proposed: <prediction>_export beside it)")
        self.browse_button = QPushButton("...")
        self.browse_button.setToolTip("choose the output folder")
        self.browse_button.setMaximumWidth(30)
        folder = QHBoxLayout()
        folder.addWidget(self.folder_edit, 1)
        folder.addWidget(self.browse_button)
        self.png_check = QCheckBox("PNG")
        self.png_check.setToolTip("one 8-bit PNG per window (0..255: probability 0..1)")
        self.png_check.setChecked(True)
        self.tif_check = QCheckBox("TIFF")
        self.tif_check.setToolTip("in the stored dtype (float for float16 predictions)")
        self.max_check = QCheckBox("max projection")
        self.max_check.setToolTip("also the maximum over all windows, in the image formats chosen")
        self.max_check.setChecked(True)
        images = QHBoxLayout()
        for box in (self.png_check, self.tif_check, self.max_check):
            images.addWidget(box)
        self.gif_check = QCheckBox("GIF")
        self.gif_check.setToolTip("an animated GIF sweeping through the windows over the volume")
        self.gif_check.setChecked(True)
        self.mp4_check = QCheckBox("MP4")
        self.mp4_check.setToolTip("an MP4 of the same depth sweep")
        if importlib.util.find_spec("imageio_ffmpeg") is None:
            self.mp4_check.setEnabled(False)
            self.mp4_check.setToolTip(MP4_HINT)
        self.fps_spin = _spin(1, 60, 4, " fps")
        self.fps_spin.setToolTip("frames per second of the sweep (one frame per window)")
        self.size_spin = _spin(64, 16384, 1024, " px")
        self.size_spin.setToolTip("largest side of the sweep's frames (block-averaged)")
        sweep = QHBoxLayout()
        for widget in (self.gif_check, self.mp4_check, self.fps_spin, self.size_spin):
            sweep.addWidget(widget)
        form = QFormLayout()
        form.addRow("Prediction", self.prediction_combo)
        form.addRow("Folder", folder)
        form.addRow("Start layers", images)
        form.addRow("Depth sweep", sweep)
        self.export_button = QPushButton("Export")
        self.export_button.setToolTip("write the files in the background; Stop keeps those done")
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status_label = QLabel(IDLE_TEXT)
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.export_button)
        layout.addWidget(self.progress)
        layout.addWidget(self.status_label)
        layout.addStretch(1)
        self.prediction_combo.currentIndexChanged.connect(self._on_prediction_changed)
        self.png_check.toggled.connect(self._on_formats_changed)
        self.tif_check.toggled.connect(self._on_formats_changed)
        self.browse_button.clicked.connect(self._choose_folder)
        self.export_button.clicked.connect(self._on_export_clicked)

    def _kept_controls(self) -> dict[str, QWidget]:
        """What the dock remembers between sessions (the folder follows the prediction)."""
        return {
            "png": self.png_check,
            "tiff": self.tif_check,
            "max_projection": self.max_check,
            "gif": self.gif_check,
            "mp4": self.mp4_check,
            "fps": self.fps_spin,
            "frame_size": self.size_spin,
        }

    # ------------------------------------------------------------------ widget state

    @property
    def prediction(self) -> Path | None:
        """The zarr of the chosen prediction layer."""
        path = self.prediction_combo.currentData()
        return Path(path) if path else None

    def _on_layers_changed(self, event: Any = None) -> None:
        """One entry per prediction zarr (its max-projection layer shares the path); training
        previews are left out. A prediction that arrives becomes the choice; otherwise the
        choice is kept while it exists, else the most recently added prediction."""
        paths: dict[str, str] = {}  # zarr path -> the name of its first layer
        for layer in self.viewer.layers:
            path = _prediction_path(layer)
            if path and path not in paths:
                paths[path] = layer.name
        self._added = [p for p in self._added if p in paths]
        self._added += [p for p in paths if p not in self._added]  # present from the start
        layer = _arrived(event)
        if layer is not None and getattr(event, "type", None) == "inserted":
            layer.events.metadata.connect(self._on_layers_changed)
        arrived = _prediction_path(layer) if layer in self.viewer.layers else None
        if arrived:
            self._added = [p for p in self._added if p != arrived] + [arrived]
        current = self.prediction_combo.currentData()
        choice = arrived or (current if current in paths else None)
        choice = choice or (self._added[-1] if self._added else None)
        self.prediction_combo.blockSignals(True)
        self.prediction_combo.clear()
        for path, name in paths.items():
            self.prediction_combo.addItem(name, path)
        self.prediction_combo.setCurrentIndex(self.prediction_combo.findData(choice))
        self.prediction_combo.blockSignals(False)
        self._on_prediction_changed()

    def _on_prediction_changed(self, *_: Any) -> None:
        """Propose ``<prediction>_export`` beside the zarr unless a folder was typed."""
        path = self.prediction
        if path is None or self.folder_edit.text() not in ("", self._auto_folder):
            return
        self._auto_folder = str(path.parent / f"{path.name.split('.')[0]}_export")
        self.folder_edit.setText(self._auto_folder)

    def _on_formats_changed(self, *_: Any) -> None:
        """The max projection is written in the image formats: none chosen, none written."""
        self.max_check.setEnabled(self.png_check.isChecked() or self.tif_check.isChecked())

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export to", self.folder_edit.text())
        if folder:
            self.folder_edit.setText(folder)

    def build_config(self) -> ExportConfig:
        """The export the widgets describe (``ConfigError`` for missing input)."""
        if self.prediction is None:
            raise ConfigError("No prediction layer: run Predict or open a prediction zarr first")
        folder = self.folder_edit.text().strip()
        if not folder:
            raise ConfigError("Choose an output folder")
        images = [
            f for f, box in (("png", self.png_check), ("tif", self.tif_check)) if box.isChecked()
        ]
        return ExportConfig(
            prediction=str(self.prediction),
            out_dir=str(Path(folder).expanduser()),
            images=tuple(images),
            max_projection=self.max_check.isChecked() and self.max_check.isEnabled(),
            gif=self.gif_check.isChecked(),
            mp4=self.mp4_check.isChecked() and self.mp4_check.isEnabled(),
            fps=self.fps_spin.value(),
            max_side=self.size_spin.value(),
        )

    # ------------------------------------------------------------------ run control

    @property
    def running(self) -> bool:
        """Whether an export is in progress (its worker has not finished)."""
        return self.worker is not None

    def _on_export_clicked(self) -> None:
        if self.running:
            self.stop()
        else:
            self.start()

    def start(self) -> StoppableWorker | None:
        """Export in a background thread; ``None`` if the input is refused (notified)."""
        if self.running:
            return self.worker
        try:
            config = self.build_config()
        except InkDetectError as exc:
            self._show_error(str(exc))
            return None
        worker, self._state.stop = stoppable_worker(
            export,
            config,
            connect={
                "yielded": self._on_event,
                "returned": self._on_returned,
                "errored": self._on_errored,
                "finished": self._on_finished,
            },
        )
        self.worker, self.written = worker, []
        self.export_button.setText("Stop")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status_label.setText(f"Exporting {Path(config.prediction).name}...")
        worker.start()
        return worker

    def stop(self) -> None:
        """Stop after the current frame or image format (finished files stay)."""
        if self._state.stop is not None:
            self._state.stop.set()
        if self.running:
            self.export_button.setText("Stopping...")
            self.export_button.setEnabled(False)

    def _show_error(self, message: str) -> None:
        self.status_label.setText(f"Error: {message}")
        show_error(message)

    # ------------------------------------------------------------------ events (GUI thread)

    def _on_event(self, event: FrameRendered | FileWritten) -> None:
        if not self._state.alive:
            return
        self.progress.setRange(0, event.total)
        self.progress.setValue(event.done)
        if isinstance(event, FrameRendered):
            self.status_label.setText(f"Depth sweep: start layer {event.start_layer}")
        else:
            self.status_label.setText(f"Wrote {event.path.name}")

    def _on_returned(self, written: list[Path]) -> None:
        self.written = list(written)
        if not self._state.alive:
            return
        stopped = self._state.stop is not None and self._state.stop.is_set()
        folder = written[0].parent if written else self.folder_edit.text()
        how = "Stopped: wrote" if stopped else "Wrote"
        self.status_label.setText(f"{how} {len(written)} files to {folder}")
        if not stopped:
            self.progress.setValue(self.progress.maximum())

    def _on_errored(self, exc: Exception) -> None:
        """Our errors are one-line messages for the user; anything else names its type."""
        if self._state.alive:
            message = (
                str(exc)
                if isinstance(exc, InkDetectError | OSError)
                else f"{type(exc).__name__}: {exc}"
            )
            self._show_error(message)

    def _on_finished(self) -> None:
        self._state.stop = None
        self.worker = None
        if self._state.alive:
            self.export_button.setText("Export")
            self.export_button.setEnabled(True)

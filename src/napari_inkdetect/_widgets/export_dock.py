"""Export dock: a prediction's images per start layer, max projection and depth-sweep GIF/MP4.

Thin by design: the dock maps widget values to an :class:`~napari_inkdetect.export.ExportConfig`
and runs :func:`~napari_inkdetect.export.export` under a
:class:`~napari_inkdetect._widgets._runs.RunController`, turning its events into progress on the
GUI thread. Export becomes Stop while a run goes on.

Every control that edits one ``ExportConfig`` field is made from the field's declaration
(:mod:`~napari_inkdetect._widgets.config_form`): max projection, GIF, MP4, frames per second
and frame size in the form; ink opacity, threshold, underlay, caption and the segment in
Advanced, where a field added to the config appears by itself. The documented exceptions,
hand-built:

* :data:`HAND_BUILT`: the output folder (``out_dir``: proposed beside the prediction, with a
  browse button) and the PNG and TIFF boxes (``images``: the formats ticked);
* :data:`NOT_IN_FORM`: the prediction layer chosen (``prediction``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari.layers import Image
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_inkdetect._napari_layers import PREDICTION, PREDICTION_KEY, layer_role
from napari_inkdetect._widgets._common import show_error, unwrap_viewer
from napari_inkdetect._widgets._form import (
    add_rows,
    advanced_section,
    browse_button,
    hbox,
    progress_bar,
    text_label,
)
from napari_inkdetect._widgets._layout import make_scrollable
from napari_inkdetect._widgets._runs import RunController, RunOwner, StoppableWorker
from napari_inkdetect._widgets._settings import DockSettings
from napari_inkdetect._widgets.config_form import ConfigForm, form_fields
from napari_inkdetect.errors import ConfigError, InkDetectError
from napari_inkdetect.export import MP4_HINT, ExportConfig, FileWritten, FrameRendered, export

if TYPE_CHECKING:
    import napari

IDLE_TEXT = "Choose a prediction and what to write, then press Export."

#: Config fields set from something other than a control of their own, and from what.
NOT_IN_FORM: dict[str, str] = {"prediction": "the prediction layer chosen above (its zarr)"}
#: Config fields edited by a hand-built control, and why it is not the generated one.
HAND_BUILT: dict[str, str] = {
    "out_dir": "a folder proposed beside the prediction, with a browse button",
    "images": "a PNG and a TIFF box: the formats ticked",
}
#: Generated fields of the main form: the max projection, then the depth sweep's row.
IMAGE_FIELDS = ("max_projection",)
SWEEP_FIELDS = ("gif", "mp4", "fps", "max_side")
FIELD_SETTINGS: dict[str, dict[str, Any]] = {
    "max_side": {"none_text": "full size"},
    "threshold": {"none_text": "none"},
    "segment": {"none_text": "the one the prediction records"},
}
NOT_KEPT = ("segment",)  # another prediction's segment is not this one's


def advanced_fields() -> list[str]:
    """Every form field of ``ExportConfig`` not in the main form or set otherwise, in
    declaration order (a new config field included)."""
    shown = {*IMAGE_FIELDS, *SWEEP_FIELDS, *NOT_IN_FORM, *HAND_BUILT}
    return [n for n in form_fields(ExportConfig) if n not in shown]


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


class ExportWidget(RunOwner, QWidget):
    """Write a prediction layer's files: PNG/TIFF per start layer, max projection, GIF/MP4.

    ``build_config()`` maps the widgets to an ``ExportConfig``; ``config_fields()`` names
    the widget of each field it shows.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = unwrap_viewer(napari_viewer)
        self.written: list[Path] = []
        self._auto_folder = ""
        self._added: list[str] = []  # prediction zarrs in the order their layers arrived
        self.fields = ConfigForm(
            ExportConfig, [*IMAGE_FIELDS, *SWEEP_FIELDS, *advanced_fields()], FIELD_SETTINGS
        )
        self._build()
        self.run = RunController(
            self._on_event,
            on_returned=self._on_returned,
            button=self.export_button,
            status=self.status_label,
            progress=self.progress,
            as_is=(InkDetectError, OSError),  # a folder we cannot write says so itself
            parent=self,
        )
        self.settings = DockSettings(self, "export", self._kept_controls())
        layers = self.viewer.layers.events
        layers.inserted.connect(self._on_layers_changed)
        layers.removed.connect(self._on_layers_changed)
        for layer in self.viewer.layers:
            layer.events.metadata.connect(self._on_layers_changed)
        self._on_layers_changed()
        make_scrollable(self)  # last: a short dock whatever the form's height

    # ------------------------------------------------------------------ layout

    def _build(self) -> None:
        self.prediction_combo = QComboBox()
        self.prediction_combo.setToolTip("the prediction to write (the newest one is chosen)")
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("output folder")
        self.folder_edit.setToolTip("where the files go (proposed: <prediction>_export beside it)")
        self.browse_button = browse_button("choose the output folder")
        self.png_check = QCheckBox("PNG")
        self.png_check.setToolTip("one 8-bit PNG per window (0..255: probability 0..1)")
        self.png_check.setChecked(True)
        self.tif_check = QCheckBox("TIFF")
        self.tif_check.setToolTip("in the stored dtype (float for float16 predictions)")
        self.max_check = self.fields["max_projection"].native
        self.gif_check = self.fields["gif"].native
        self.mp4_check = self.fields["mp4"].native
        if importlib.util.find_spec("imageio_ffmpeg") is None:
            self.mp4_check.setEnabled(False)
            self.mp4_check.setToolTip(MP4_HINT)
        self.fps_spin = self.fields["fps"].native
        self.size_spin = self.fields["max_side"].native
        images = (self.png_check, self.tif_check, self.max_check)
        sweep = (self.gif_check, self.mp4_check, self.fps_spin, self.size_spin)
        form = QFormLayout()
        add_rows(
            form,
            (
                ("Prediction", self.prediction_combo),
                ("Folder", hbox(self.folder_edit, self.browse_button)),
                ("Start layers", hbox(*images, grow=())),
                ("Depth sweep", hbox(*sweep, grow=())),
            ),
        )
        self.export_button = QPushButton("Export")
        self.export_button.setToolTip("write the files in the background; Stop keeps those done")
        self.progress = progress_bar()
        self.status_label = text_label(IDLE_TEXT)
        self.advanced, advanced = advanced_section(
            "ink opacity and threshold, the volume under the ink, the caption, a moved segment"
        )
        self.fields.add_rows(advanced, advanced_fields())
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.advanced)
        layout.addWidget(self.export_button)
        layout.addWidget(self.progress)
        layout.addWidget(self.status_label)
        layout.addStretch(1)
        self.prediction_combo.currentIndexChanged.connect(self._on_prediction_changed)
        self.png_check.toggled.connect(self._on_formats_changed)
        self.tif_check.toggled.connect(self._on_formats_changed)
        self.browse_button.clicked.connect(self._choose_folder)
        self.export_button.clicked.connect(self._on_export_clicked)

    def config_fields(self) -> dict[str, Any]:
        """Config field -> the widget that edits it (``images``: the PNG and TIFF boxes);
        the prediction is in :data:`NOT_IN_FORM`."""
        return {
            **self.fields.widgets,
            "out_dir": self.folder_edit,
            "images": (self.png_check, self.tif_check),
        }

    def _kept_controls(self) -> dict[str, QWidget]:
        """What the dock remembers between sessions (the folder follows the prediction, and
        so does the segment); the generated Advanced fields by their field names."""
        named = {
            "png": self.png_check,
            "tiff": self.tif_check,
            "max_projection": self.max_check,
            "gif": self.gif_check,
            "mp4": self.mp4_check,
            "fps": self.fps_spin,
            "frame_size": self.size_spin,
        }
        kept = set(named.values())
        more = {
            n: w for n, w in self.fields.widgets.items() if w not in kept and n not in NOT_KEPT
        }
        return {**named, **more}

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
        values = self.fields.values()
        values["max_projection"] &= self.max_check.isEnabled()  # no image format: none
        values["mp4"] &= self.mp4_check.isEnabled()  # no ffmpeg here
        return ExportConfig(
            prediction=str(self.prediction),
            out_dir=str(Path(folder).expanduser()),
            images=tuple(images),
            **values,
        )

    # ------------------------------------------------------------------ run control

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
            show_error(str(exc), self.status_label)
            return None
        self.written = []
        self.status_label.setText(f"Exporting {Path(config.prediction).name}...")
        return self.run.start(export, config)

    def stop(self) -> None:
        """Stop after the current frame or image format (finished files stay)."""
        self.run.stop()

    # ------------------------------------------------------------------ events (GUI thread)

    def _on_event(self, event: FrameRendered | FileWritten) -> None:
        self.progress.setRange(0, event.total)
        self.progress.setValue(event.done)
        if isinstance(event, FrameRendered):
            self.status_label.setText(f"Depth sweep: start layer {event.start_layer}")
        else:
            self.status_label.setText(f"Wrote {event.path.name}")

    def _on_returned(self, written: list[Path]) -> None:
        self.written = list(written)
        stopped = self.run.stop_requested
        folder = written[0].parent if written else self.folder_edit.text()
        how = "Stopped: wrote" if stopped else "Wrote"
        self.status_label.setText(f"{how} {len(written)} files to {folder}")
        if not stopped:
            self.progress.setValue(self.progress.maximum())

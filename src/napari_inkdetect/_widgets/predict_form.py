"""The Predict dock's form: its widgets, and the :class:`~napari_inkdetect.inference.
PredictConfig` they describe (volume, checkpoint, band of window centres, region, output).

What the dock does with them (runs, live mode, threshold and scores) is
:class:`~napari_inkdetect._widgets.predict_dock.PredictWidget`, a subclass. The band is chosen
as window centres, the layers the depth slider shows each window's plane at
(:mod:`napari_inkdetect.windows`).

Every control that edits one ``PredictConfig`` field is made from the field's declaration
(:mod:`~napari_inkdetect._widgets.config_form`): stride and depth order in the form; batch,
storage type and every other setting (tile, window length, scale, precision, chunk, prefetch)
in Advanced, where a field added to the config appears by itself. The documented
exceptions, hand-built:

* :data:`HAND_BUILT`: the checkpoint (``checkpoint``: a path with a browse button, preset
  from the last finetune), the device (``device``: the devices this machine has), TTA
  (``tta_flips`` and ``tta_rot90`` together, as the command line's ``--tta``) and Run on with
  its Workers and Scheduler (``workers`` or ``scheduler``, or neither);
* :data:`NOT_IN_FORM`: the volume layer (``segment``, ``segment_reverse``), the region
  (``region``), the window centres from / to / step (``centre_layers``; never
  ``start_layers``) and the output zarr (``out``, named by a digest of the settings);
* kept off every form by the config itself (``Option.form=False``): ``chunk_events``,
  ``in_child``, ``overwrite``.

Its length (about 480 lines) is on purpose: one dock's form is one class whose rows and their
wiring read top to bottom in the order the user sees them; the form's own logic lives in
:mod:`~napari_inkdetect._widgets.config_form` and the dock's behaviour in its subclass.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels, Shapes
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from napari_inkdetect._napari_layers import (
    MASK,
    SEGMENT_KEY,
    TRUTH,
    VALIDATION,
    VOLUME,
    is_derived,
    layer_role,
    names_with_role,
)
from napari_inkdetect._widgets._common import chosen_layer, unwrap_viewer
from napari_inkdetect._widgets._form import (
    LayerChoice,
    add_rows,
    advanced_section,
    browse_button,
    combo,
    fill_names,
    hbox,
    progress_bar,
    spin,
    text_label,
)
from napari_inkdetect._widgets._runs import session
from napari_inkdetect._widgets.config_form import ConfigForm, form_fields
from napari_inkdetect._widgets.look_next import LookNextPanel
from napari_inkdetect._widgets.plots import ProfilePlot
from napari_inkdetect._widgets.prediction_overlay import visible_region
from napari_inkdetect.devices import available_devices
from napari_inkdetect.errors import InkDetectError
from napari_inkdetect.inference import PredictConfig
from napari_inkdetect.models.checkpoints import read_checkpoint_metadata
from napari_inkdetect.postprocess import DEFAULT_WINDOW
from napari_inkdetect.runs import DEFAULT_RUNS
from napari_inkdetect.windows import centre_bounds, window_centre, window_start

if TYPE_CHECKING:
    import napari

REGIONS = ("Current view", "Shapes rectangle", "Whole mask")
RUN_ON = ("this process", "local workers", "scheduler")
DEFAULT_OUT = DEFAULT_RUNS / "predictions"
NO_LABELS = "(none)"
DEFAULT_THRESHOLD = 0.5

#: Config fields set from something other than a control of their own, and from what.
NOT_IN_FORM: dict[str, str] = {
    "segment": "the volume layer chosen above (the segment it was opened from)",
    "segment_reverse": "the volume layer's depth order (as the reader opened it)",
    "region": "Region above: the view, a Shapes rectangle or the mask's bounding box",
    "start_layers": "the dock gives window centres instead (centre_layers)",
    "centre_layers": "Window centres above: from, to and step",
    "out": "<Output folder>/<segment>/<checkpoint>-<digest of the settings>.zarr",
}
#: Config fields edited by a hand-built control, and why it is not the generated one.
HAND_BUILT: dict[str, str] = {
    "checkpoint": "a path with a browse button, preset from the last finetune",
    "device": "a combo of the devices this machine has",
    "tta_flips": "one TTA box sets both kinds, as the command line's --tta",
    "tta_rot90": "one TTA box sets both kinds, as the command line's --tta",
    "workers": "Run on: local workers (Workers), a scheduler (Scheduler) or this process",
    "scheduler": "Run on: local workers (Workers), a scheduler (Scheduler) or this process",
}
#: Generated fields of the main form, and the first ones of Advanced.
MAIN_FIELDS = ("stride", "depth_direction")
ADVANCED_FIRST = ("batch_size", "dtype")
FIELD_SETTINGS: dict[str, dict[str, Any]] = {"stride": {"none_text": "tile / 2"}}


def advanced_fields() -> list[str]:
    """Every form field of ``PredictConfig`` not in the main form or set otherwise, in
    declaration order after :data:`ADVANCED_FIRST` (a new config field included)."""
    shown = {*MAIN_FIELDS, *ADVANCED_FIRST, *NOT_IN_FORM, *HAND_BUILT}
    return [*ADVANCED_FIRST, *(n for n in form_fields(PredictConfig) if n not in shown)]


class PredictForm(QWidget):
    """The Predict dock's widgets; ``build_config()`` maps them to a ``PredictConfig``."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = unwrap_viewer(napari_viewer)
        self.session = session(self.viewer)
        self._volume: Any = None
        self._window_layers = DEFAULT_WINDOW  # the checkpoint's window length, once read
        self.fields = ConfigForm(PredictConfig, [*MAIN_FIELDS, *advanced_fields()], FIELD_SETTINGS)
        self._build_ui()
        self._refresh_layers()
        self._on_volume_changed()
        self.volume_combo.currentIndexChanged.connect(self._on_volume_changed)
        self.centre_from.valueChanged.connect(self._show_band)
        self.centre_to.valueChanged.connect(self._show_band)
        self.region_combo.currentIndexChanged.connect(self._on_region_mode_changed)
        self._on_region_mode_changed()

    def config_fields(self) -> dict[str, Any]:
        """Config field -> the widget that edits it; the other fields are in
        :data:`NOT_IN_FORM` or kept off forms by the config."""
        return {
            **self.fields.widgets,
            "checkpoint": self.checkpoint_edit,
            "device": self.device_combo,
            "tta_flips": self.tta_check,
            "tta_rot90": self.tta_check,
            "workers": self.workers_spin,
            "scheduler": self.address_edit,
        }

    def _kept_controls(self) -> dict[str, QWidget]:
        """What the dock remembers between sessions (not the layers, the window centres or
        the threshold: they follow the segment and the checkpoint); the generated Advanced
        fields by their field names."""
        named = {
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
        kept = set(named.values())
        more = {n: w for n, w in self.fields.widgets.items() if w not in kept}
        return {**named, **more}

    # ------------------------------------------------------------------ layout

    def _build_ui(self) -> None:
        layout = QVBoxLayout(self)
        layout.addLayout(self._input_form())
        layout.addWidget(self._advanced_section())
        self.run_button = QPushButton("Predict")
        self.run_button.setToolTip(
            "predict the region into an overlay layer, chunk by chunk; Stop keeps finished chunks"
        )
        self.follow_check = QCheckBox("Follow view")
        self.follow_check.setToolTip("predict the view each time it rests (live mode)")
        layout.addLayout(hbox(self.run_button, self.follow_check))
        self.progress = progress_bar("%v / %m tiles")
        self.status_label = text_label(
            "Choose a checkpoint (the last finetune is picked for you)."
        )
        layout.addWidget(self.progress)
        layout.addWidget(self.status_label)
        layout.addLayout(self._display_form())
        self.profile_plot = ProfilePlot()
        layout.addWidget(self.profile_plot)
        self.look_next = LookNextPanel(self.viewer, self, threshold=lambda: self.threshold)
        layout.addWidget(self.look_next)
        layout.addStretch(1)

    def _input_form(self) -> QFormLayout:
        form = QFormLayout()
        self.volume_combo = QComboBox()
        self.volume_combo.setToolTip("the segment to predict (opened by napari-inkdetect)")
        self.checkpoint_edit = QLineEdit()
        self.checkpoint_edit.setPlaceholderText("the last finetuned checkpoint, or browse")
        self.checkpoint_edit.setToolTip("the model to predict with (.safetensors, .pt, ... file)")
        self.browse_checkpoint = browse_button("choose the checkpoint file")
        self.region_combo = combo(REGIONS, REGIONS[0])
        self.region_combo.setToolTip(
            "what to predict: the view (at most 'View limit' px a side), the last rectangle of "
            "a Shapes layer, or the papyrus mask's bounding box"
        )
        self.shapes_combo = QComboBox()
        self.shapes_combo.setToolTip("the Shapes layer whose last rectangle is the region")
        region = (self.region_combo, self.shapes_combo)
        self.centre_from = spin(0, 0, 0)
        self.centre_to = spin(0, 0, 0)
        self.centre_step = spin(1, 64, 2)
        self.centre_step.setToolTip("layers between the predicted windows' centres")
        self._show_band()
        starts = (self.centre_from, QLabel("to"), self.centre_to, QLabel("step"), self.centre_step)
        self.stride_spin = self.fields["stride"].native  # lowest: tile / 2
        self.device_combo = combo(available_devices())
        self.device_combo.setToolTip("where the model runs")
        self.direction_combo = self.fields["depth_direction"].native
        self.tta_check = QCheckBox("TTA (flips + rotations, 8x slower)")
        self.tta_check.setToolTip(
            "test-time augmentation: the mean over 8 flipped and rotated copies of each tile"
        )
        add_rows(
            form,
            (
                ("Volume", self.volume_combo),
                ("Checkpoint", hbox(self.checkpoint_edit, self.browse_checkpoint)),
                ("Region", hbox(*region, grow=region)),
                ("Window centres", hbox(*starts, grow=starts[::2])),
            ),
        )
        self.fields.add_rows(form, MAIN_FIELDS[:1])
        form.addRow("Device", self.device_combo)
        self.fields.add_rows(form, MAIN_FIELDS[1:])
        form.addRow("", self.tta_check)
        return form

    def _advanced_section(self) -> QCollapsible:
        self.advanced, form = advanced_section(
            "output folder, batch, view limit, storage type, where the work runs, and every "
            "other prediction setting: tile, window, scale, precision, chunks"
        )
        self.out_edit = QLineEdit(str(DEFAULT_OUT))
        self.out_edit.setToolTip("predictions are kept here as zarr (open one to restore it)")
        self.batch_spin = self.fields["batch_size"].native
        self.dtype_combo = self.fields["dtype"].native
        self.max_view_spin = spin(128, 65536, 2048, 256)
        self.max_view_spin.setToolTip("largest side predicted for 'Current view' (volume px)")
        self.run_on_combo = combo(RUN_ON, RUN_ON[0])
        self.run_on_combo.setToolTip(
            "a thread of napari, local dask worker processes, or an existing dask scheduler"
        )
        self.workers_spin = spin(1, 256, 2)
        self.workers_spin.setToolTip("local dask worker processes ('Run on: local workers')")
        self.address_edit = QLineEdit()
        self.address_edit.setPlaceholderText("tcp://scheduler:8786 (shared filesystem)")
        self.address_edit.setToolTip("the dask scheduler's address ('Run on: scheduler')")
        form.addRow("Output folder", self.out_edit)
        self.fields.add_rows(form, ADVANCED_FIRST[:1])
        form.addRow("View limit", self.max_view_spin)
        self.fields.add_rows(form, ADVANCED_FIRST[1:])
        add_rows(
            form,
            (
                ("Run on", self.run_on_combo),
                ("Workers", self.workers_spin),
                ("Scheduler", self.address_edit),
            ),
        )
        self.fields.add_rows(form, advanced_fields()[len(ADVANCED_FIRST) :])
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
        slider = (self.threshold_slider, self.threshold_label, self.outline_check)
        add_rows(
            form,
            (
                ("Threshold", hbox(*slider)),
                ("", self.threshold_source),
                ("Min blob", self.min_size_spin),
                ("Compare to", self.val_combo),
                ("", hbox(self.metrics_label, self.best_button)),
            ),
        )
        return form

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
        volume = chosen_layer(self.viewer, self.volume_combo)
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
        own = [x.name for x in layers if isinstance(x, Shapes) and not is_derived(x)]
        fill_names(self.shapes_combo, shapes, own[-1:] or shapes[-1:])  # the user's own first
        LayerChoice.of(self.val_combo).fill(
            [NO_LABELS, *(x.name for x in labels)], [*val, *fallback, NO_LABELS], keep=val
        )

    def _on_volume_changed(self, *_: Any) -> None:
        """A different volume: its depth bounds the window centres (defaults set anew)."""
        volume = chosen_layer(self.viewer, self.volume_combo)
        if volume is self._volume:
            return
        self._volume = volume
        depth = int(volume.data.shape[0]) if volume is not None and volume.ndim == 3 else 1
        for box in (self.centre_from, self.centre_to):
            box.setMaximum(max(0, depth - 1))
        self._default_centres()

    def _on_region_mode_changed(self, *_: Any) -> None:
        self.shapes_combo.setEnabled(self.region_combo.currentText() == "Shapes rectangle")

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
        return start, int(meta.get("in_layers") or DEFAULT_WINDOW)

    def _default_centres(self, meta: dict[str, Any] | None = None) -> None:
        """A band of about +-6 layers around the trained window's centre (or the depth
        slider), on the step's grid through it, so the trained window itself is predicted;
        only centres whose window fits in the volume."""
        volume = chosen_layer(self.viewer, self.volume_combo)
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
        volume = chosen_layer(self.viewer, self.volume_combo)
        if mode == "Whole mask":
            return None
        if mode == "Current view":
            return visible_region(self.viewer, volume, self.max_view_spin.value())
        shapes = chosen_layer(self.viewer, self.shapes_combo)
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
        volume = chosen_layer(self.viewer, self.volume_combo)
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
            device=self.device_combo.currentText(),
            tta_flips=self.tta_check.isChecked(),
            tta_rot90=self.tta_check.isChecked(),
            segment_reverse=bool(volume.metadata.get("reversed", False)),
            **self.fields.values(),
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

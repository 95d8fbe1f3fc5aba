"""The Finetune dock's form: its widgets, and the :class:`~napari_inkdetect.training.
TrainConfig` they describe (volume and labels by role, model, window centre, sizes).

What the dock does with them (runs, events, Continue, Find ink depth) is
:class:`~napari_inkdetect._widgets.finetune_dock.FinetuneWidget`, a subclass. The window is
chosen by its centre layer, the layer the depth slider shows (:mod:`napari_inkdetect.windows`).

Every control that edits one ``TrainConfig`` field is made from the field's declaration
(:mod:`~napari_inkdetect._widgets.config_form`): window length, scale, steps, batch, learning
rate and width in the form; tile, validation, precision, seed and every other setting in
Advanced, augmentation and loss in sub-sections of their own. A field added to the config
appears in Advanced by itself. The documented exceptions, hand-built:

* :data:`HAND_BUILT` (one control, one field, but the choices are not the field's): the
  architecture (``arch``), the trained parts (``train``) and the device (``device``);
* :data:`NOT_IN_FORM` (set from something else): the volume, labels and validation layers
  (``segment``, ``labels``, ``val_labels``), the run folder (``out``), New / Checkpoint /
  Crackle starter (``init``), the window centre that follows the depth slider (``start_layer``) and
  "Preview every" (``save_every``);
* kept off every form by the config itself (``Option.form=False``): ``in_child``, ``resume``,
  ``sync_batchnorm``.

Its length (about 480 lines) is on purpose: one dock's form is one class whose rows and their
wiring read top to bottom in the order the user sees them; the form's own logic lives in
:mod:`~napari_inkdetect._widgets.config_form` and the dock's behaviour in its subclass.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtWidgets import (
    QAbstractSpinBox,
    QButtonGroup,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from napari_inkdetect._napari_layers import (
    PREDICTION,
    PREVIEW,
    SEGMENT_KEY,
    TRAIN,
    UNCERTAINTY,
    VALIDATION,
    VOLUME,
    is_trainable,
    layer_role,
    names_with_role,
)
from napari_inkdetect._widgets._common import CHECKPOINT_FILTER, chosen_layer, unwrap_viewer
from napari_inkdetect._widgets._form import (
    LayerChoice,
    add_rows,
    advanced_section,
    browse_button,
    collapsed_section,
    combo,
    hbox,
    progress_bar,
    spin,
    text_label,
)
from napari_inkdetect._widgets.config_form import (
    AUTO,
    ConfigForm,
    form_fields,
    section_title,
)
from napari_inkdetect._widgets.plots import InkDepthPlot, LossPlot
from napari_inkdetect._widgets.window_centre import WindowCentre
from napari_inkdetect.devices import available_devices
from napari_inkdetect.errors import InkDetectError
from napari_inkdetect.io.labels import write_labels
from napari_inkdetect.models import list_models
from napari_inkdetect.models.starter import starter_model, starter_path
from napari_inkdetect.runs import DEFAULT_RUNS, new_run_dir
from napari_inkdetect.training import TrainConfig
from napari_inkdetect.training.config import WINDOW_DEFAULTS
from napari_inkdetect.training.preflight import check_labels
from napari_inkdetect.training.presets import pick_preset

if TYPE_CHECKING:
    import napari

NO_VALIDATION = "(automatic split)"
STARTER_TIP = (
    "start from the 1/8-width resnet10 shipped with the plugin, pretrained on varied synthetic "
    "crackle (128 px tiles, 22 layers; nothing is downloaded): the default on a CPU"
)
TRAIN_PARTS = ("all", "decoder", "decoder+last")
AUTO_LR = AUTO  # the learning rate spin box at its lowest value

#: Config fields set from something other than a control of their own, and from what.
NOT_IN_FORM: dict[str, str] = {
    "segment": "the volume layer chosen above (the segment it was opened from)",
    "labels": "the labels layer chosen above, saved into the run folder",
    "val_labels": "the validation layer chosen above (none: an automatic split)",
    "out": "a new <segment>-<time> folder in the run folder (Advanced)",
    "init": "Model: New (none), Checkpoint and its file, or the bundled Crackle starter",
    "start_layer": "the window centre, which follows the depth slider: centre - layers // 2",
    "save_every": "Preview every (Advanced): each preview saves the model so far",
}
#: Config fields edited by a hand-built control, and why it is not the generated one.
HAND_BUILT: dict[str, str] = {
    "arch": "a combo of the architectures the model registry has, off for a checkpoint",
    "train": "a combo of the usual part sets (the field takes any '+'-joined parts)",
    "device": "a combo of the devices this machine has; choosing one applies its preset",
}
#: Generated fields of the main form (the width sits in the model row).
MAIN_FIELDS = ("width", "layers", "scale", "steps", "batch_size", "lr")
#: Generated fields at the top of Advanced, before the preview and run folder controls.
ADVANCED_FIRST = ("tile", "val_every", "autocast", "seed")
#: Starting values and auto words of some generated fields (the others: the field's own).
FIELD_SETTINGS: dict[str, dict[str, Any]] = {
    "layers": {"value": WINDOW_DEFAULTS["layers"], "auto": False},  # the centre needs it
    "scale": {"value": 1.0, "decimals": 3},
    "epochs": {"none_text": "off"},
}


def advanced_fields() -> list[str]:
    """Every form field of ``TrainConfig`` that is not in the main form or set otherwise,
    in declaration order: Advanced shows them (a new config field included)."""
    shown = {*MAIN_FIELDS, *ADVANCED_FIRST, *NOT_IN_FORM, *HAND_BUILT}
    rest = [n for n in form_fields(TrainConfig) if n not in shown]
    return [*ADVANCED_FIRST, *rest]


class FinetuneForm(QWidget):
    """The Finetune dock's widgets; ``build_config()`` maps them to a ``TrainConfig``."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = unwrap_viewer(napari_viewer)
        self.fields = ConfigForm(TrainConfig, [*MAIN_FIELDS, *advanced_fields()], FIELD_SETTINGS)
        self._build_ui()
        self._refresh_layers()
        self.window_centre = WindowCentre(
            self.viewer, self.centre_spin, self.layers_spin, self.slider_button, self._depth, self
        )
        layers = self.viewer.layers.events
        layers.inserted.connect(self._refresh_layers)
        layers.removed.connect(self._refresh_layers)
        self.volume_combo.currentIndexChanged.connect(self.window_centre.refit)
        self.volume_combo.currentIndexChanged.connect(self._fit_starter)
        self._fit_starter()
        self.new_radio.toggled.connect(self._on_model_source_changed)
        self.starter_radio.toggled.connect(self._on_model_source_changed)
        self.browse_checkpoint.clicked.connect(self._choose_checkpoint)

    def config_fields(self) -> dict[str, Any]:
        """Config field (dotted inside ``augment`` and ``loss``) -> the widget that edits it;
        the other fields are in :data:`NOT_IN_FORM` or kept off forms by the config."""
        return {
            **self.fields.widgets,
            "arch": self.arch_combo,
            "train": self.train_combo,
            "device": self.device_combo,
        }

    def _kept_controls(self) -> dict[str, QWidget]:
        """What the dock remembers between sessions (no layer choice, no window centre: it
        follows the segment). The device comes first: its preset must not undo the rest;
        the generated Advanced fields are kept by their field names."""
        named = {
            "device": self.device_combo,
            "new_model": self.new_radio,
            "from_checkpoint": self.checkpoint_radio,
            "from_starter": self.starter_radio,
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
        kept = set(named.values())
        more = {n: w for n, w in self.fields.widgets.items() if w not in kept}
        return {**named, **more}

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
        add_rows(
            form,
            (
                ("Volume", self.volume_combo),
                ("Labels", self.labels_combo),
                ("Validation", self.val_combo),
            ),
        )
        return form

    def _model_form(self) -> QFormLayout:
        form = QFormLayout()
        self.new_radio = QRadioButton("New")
        self.new_radio.setToolTip("train a new model: the architecture and width beside it")
        self.checkpoint_radio = QRadioButton("Checkpoint")
        self.checkpoint_radio.setToolTip(
            "start from a file: a Kinetics-pretrained encoder, a Kaggle ink model or a run's"
        )
        self.starter_radio = QRadioButton("Crackle starter (bundled)")
        self.starter_radio.setToolTip(STARTER_TIP)
        self.new_radio.setChecked(True)  # the device preset picks the starter on a CPU
        self._check_starter()
        self._model_group = QButtonGroup(self)
        self._model_group.addButton(self.new_radio)
        self._model_group.addButton(self.checkpoint_radio)
        self._model_group.addButton(self.starter_radio)
        self.arch_combo = combo(list_models(), "resnet10")
        self.arch_combo.setToolTip("a new model's 3D ResNet encoder (deeper: slower, stronger)")
        self.width_spin = self.fields["width"].native
        self.width_spin.setButtonSymbols(QAbstractSpinBox.ButtonSymbols.NoButtons)  # "0.0625" fits
        new = (self.new_radio, self.arch_combo, QLabel("width"), self.width_spin)
        self.checkpoint_edit = QLineEdit()
        self.checkpoint_edit.setPlaceholderText("Kinetics, Kaggle or our own .safetensors")
        self.checkpoint_edit.setToolTip("the checkpoint file to start from")
        self.browse_checkpoint = browse_button("choose the checkpoint file to start from")
        start = (self.checkpoint_radio, self.checkpoint_edit, self.browse_checkpoint)
        self.continue_button = QPushButton("Continue from the last checkpoint")
        add_rows(
            form,
            (
                ("Model", hbox(*new, grow=new[1:2])),
                ("", hbox(*start, grow=start[1:2])),
                ("", self.starter_radio),
                ("", self.continue_button),
            ),
        )
        self._on_model_source_changed()
        return form

    def _training_form(self) -> QFormLayout:
        form = QFormLayout()
        self.centre_spin = spin(0, 0, 0)  # tooltip: WindowCentre's (it names the layers)
        self.slider_button = QPushButton("from slider")
        self.slider_button.setToolTip("the window centre follows the depth slider again")
        self.depth_button = QPushButton("Find ink depth")
        self.depth_button.setToolTip(
            "set the window centre (and Predict's band of centres) where the ink texture shows"
        )
        self.layers_spin = self.fields["layers"].native
        self.scale_spin = self.fields["scale"].native
        self.steps_spin = self.fields["steps"].native
        self.batch_spin = self.fields["batch_size"].native
        self.lr_spin = self.fields["lr"].native  # lowest: auto, the core's preset decides
        self.train_combo = combo(TRAIN_PARTS, "all")
        self.train_combo.setToolTip("parts to train; the others stay frozen")
        self.device_combo = combo(available_devices())
        self.device_combo.setToolTip(
            "where training runs; choosing one applies its preset (model, tile, batch, steps)"
        )
        form.addRow("Window centre", hbox(self.centre_spin, self.slider_button, self.depth_button))
        self.fields.add_rows(form, MAIN_FIELDS[1:])
        add_rows(form, (("Train", self.train_combo), ("Device", self.device_combo)))
        return form

    def _advanced_section(self) -> QCollapsible:
        self.advanced, form = advanced_section(
            "tile, validation, precision, seed, live preview, the run folder, and every other "
            "training setting: optimiser, window, memory, augmentation and loss"
        )
        self.tile_spin = self.fields["tile"].native
        self.val_every_spin = self.fields["val_every"].native
        self.autocast_combo = self.fields["autocast"].native
        self.seed_spin = self.fields["seed"].native
        self.preview_spin = spin(0, 1_000_000, 100, 50)
        self.preview_spin.setSpecialValueText("off")
        self.preview_spin.setToolTip(
            "every N steps, the model so far predicts the view (the 'preview' layer)"
        )
        self.preview_side_spin = spin(64, 16384, 512, 128)
        self.preview_side_spin.setToolTip("largest side of the previewed view (volume px)")
        self.runs_edit = QLineEdit(str(DEFAULT_RUNS))
        self.runs_edit.setToolTip("each run gets its own <segment>-<time> folder in here")
        self.browse_runs = browse_button("choose the run folder")
        self.fields.add_rows(form, ADVANCED_FIRST)
        add_rows(
            form,
            (
                ("Preview every", self.preview_spin),
                ("Preview size", self.preview_side_spin),
                ("Run folder", hbox(self.runs_edit, self.browse_runs)),
            ),
        )
        self._add_other_fields(form)
        self.device_combo.currentTextChanged.connect(self._apply_device_preset)
        self._apply_device_preset(self.device_combo.currentText())
        return self.advanced

    def _add_other_fields(self, form: QFormLayout) -> None:
        """The rest of Advanced: the other top-level fields, then one collapsed sub-section
        per nested config (augmentation, loss)."""
        rest = advanced_fields()[len(ADVANCED_FIRST) :]
        self.fields.add_rows(form, [n for n in rest if "." not in n])
        self.subsections: dict[str, QCollapsible] = {}
        for outer in dict.fromkeys(n.split(".")[0] for n in rest if "." in n):
            names = [n for n in rest if n.startswith(f"{outer}.")]
            title = section_title(TrainConfig, outer)
            labels = ", ".join(self.fields[n].label.lower() for n in names[:4])
            section, inner = collapsed_section(title, f"{title.lower()} settings: {labels}, ...")
            self.fields.add_rows(inner, names)
            form.addRow(section)
            self.subsections[outer] = section

    def _apply_device_preset(self, device: str) -> None:
        """Sizes that finish in minutes on the chosen device, from the table the command line
        uses too (:mod:`napari_inkdetect.training.presets`: a full-width model on a GPU, a
        1/8-width one on tiles of 128 on a CPU); the learning rate back to auto."""
        preset, _ = pick_preset(device)
        self.arch_combo.setCurrentText(preset.arch)
        self.fields.set_values(
            {
                "width": preset.width,
                "tile": preset.tile,
                "steps": preset.steps,
                "batch_size": preset.batch_size,
                "lr": None,
            }
        )
        self.preview_spin.setValue(preset.preview_every)
        self.preview_side_spin.setValue(preset.preview_side)
        if not self.checkpoint_radio.isChecked():  # a chosen file stays chosen
            self._starter_fell_back = False
            use_starter = preset.name == "cpu" and self._starter_intact
            (self.starter_radio if use_starter else self.new_radio).setChecked(True)
            self._fit_starter()
            self._on_model_source_changed()

    def _progress_rows(self) -> QVBoxLayout:
        self.progress = progress_bar("%v / %m steps")
        self.eta_label = QLabel("")
        self.loss_plot = LossPlot()
        self.status_label = text_label("Paint ink (1) and not ink (2), then press Finetune.")
        self.validation_label = text_label()
        self.checkpoint_label = text_label()
        box = QVBoxLayout()
        for widget in (self.progress, self.eta_label, self.loss_plot, self.status_label):
            box.addWidget(widget)
        box.addWidget(self.validation_label)
        box.addWidget(self.checkpoint_label)
        return box

    def _field_values(self) -> dict[str, Any]:
        """The generated fields' values (auto left out: the core resolves it). The learning
        rate's auto says "auto" again (a run shows what it resolved to)."""
        self.fields["lr"].show_auto()
        return self.fields.values()

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
        volume = chosen_layer(self.viewer, self.volume_combo)
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

    def _depth(self) -> int:
        """Layers of the chosen volume (1 without a 3-D one)."""
        layer = chosen_layer(self.viewer, self.volume_combo)
        return int(layer.data.shape[0]) if layer is not None and layer.ndim == 3 else 1

    def window_start(self) -> int:
        """The start layer of the window the dock describes (what the config records)."""
        return self.window_centre.start()

    def _on_model_source_changed(self, *_: Any) -> None:
        """Enable what the chosen source uses; the starter shows its own model and window
        (1/8-width resnet10, 22 layers, tile 128): what the run will train."""
        new, from_file = self.new_radio.isChecked(), self.checkpoint_radio.isChecked()
        self.arch_combo.setEnabled(new)
        self.width_spin.setEnabled(new)
        self.checkpoint_edit.setEnabled(from_file)
        self.browse_checkpoint.setEnabled(from_file)
        if not hasattr(self, "tile_spin"):  # called while the form is being built
            return
        starter = self.starter_radio.isChecked()
        self.layers_spin.setEnabled(not starter)
        if starter:
            model = starter_model()
            self.arch_combo.setCurrentText(model.arch)
            self.fields.set_values(
                {"width": model.width, "tile": model.tile, "layers": model.layers}
            )

    def _check_starter(self) -> None:
        """Offer the bundled starter only when its file is intact (a damaged install says so
        in the tooltip and starts New models instead)."""
        self._starter_fell_back = False  # New chosen only because the volume is too shallow
        try:
            starter_path()
        except InkDetectError as exc:
            self._starter_intact = False
            self.starter_radio.setEnabled(False)
            self.starter_radio.setToolTip(f"unavailable: {exc}")
        else:
            self._starter_intact = True
        self.new_radio.clicked.connect(self._user_chose_source)
        self.checkpoint_radio.clicked.connect(self._user_chose_source)
        self.starter_radio.clicked.connect(self._user_chose_source)

    def _user_chose_source(self, *_: Any) -> None:
        self._starter_fell_back = False  # the user's choice stays, whatever the volume

    def _fit_starter(self, *_: Any) -> None:
        """The starter's window is 22 layers: on a shallower volume it is off and New is
        chosen instead; a deep enough volume brings it back (unless the user chose since)."""
        if not self._starter_intact:
            return
        volume = chosen_layer(self.viewer, self.volume_combo)
        depth = self._depth()
        layers = starter_model().layers
        fits = volume is None or depth >= layers
        self.starter_radio.setEnabled(fits)
        self.starter_radio.setToolTip(
            STARTER_TIP
            if fits
            else f"needs a volume of at least {layers} layers (this one has {depth}): "
            f"the starter was trained on {layers}-layer windows"
        )
        if not fits and self.starter_radio.isChecked():
            self.new_radio.setChecked(True)
            self._starter_fell_back = True
        elif fits and self._starter_fell_back and self.new_radio.isChecked():
            self.starter_radio.setChecked(True)
            self._starter_fell_back = False

    def _choose_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Start from checkpoint", "", CHECKPOINT_FILTER)
        if path:
            self.checkpoint_edit.setText(path)
            self.checkpoint_radio.setChecked(True)

    # ------------------------------------------------------------------ config

    def build_config(self) -> TrainConfig:
        """The run the widget describes; writes the labels layers into a new run folder.

        Raises ``InkDetectError`` (shown as a notification by ``start``) for missing layers or
        labels the engine could not read.
        """
        volume = chosen_layer(self.viewer, self.volume_combo)
        labels = chosen_layer(self.viewer, self.labels_combo)
        if volume is None or labels is None:
            raise InkDetectError("choose a volume and a labels layer to train on")
        segment = volume.metadata.get(SEGMENT_KEY)
        if not segment:
            raise InkDetectError(
                f"{volume.name} has no segment on disk: "
                "open the volume with napari-inkdetect's reader"
            )
        values = self._field_values()  # a refused text before any folder is made
        run_dir = new_run_dir(self._runs_root(), volume.metadata.get("segment_id") or volume.name)
        val = chosen_layer(self.viewer, self.val_combo)
        new_model, starter = self.new_radio.isChecked(), self.starter_radio.isChecked()
        init = None if new_model else (self.checkpoint_edit.text().strip() or None)
        if starter:  # the starter's model (checksum verified before use)
            init, values = str(starter_path()), {**values, "width": starter_model().width}
        return TrainConfig(
            segment=str(segment),
            labels=str(_save_labels(labels, run_dir / "train_labels.png")),
            out=str(run_dir),
            val_labels=str(_save_labels(val, run_dir / "validation_labels.png"))
            if val is not None
            else None,
            init=init,
            arch=starter_model().arch if starter else self.arch_combo.currentText(),
            start_layer=self.window_start(),
            train=self.train_combo.currentText(),
            device=self.device_combo.currentText(),
            save_every=self.preview_spin.value() or None,
            **values,
        )

    def _runs_root(self) -> Path:
        """The folder the run folders go in."""
        return Path(self.runs_edit.text().strip() or DEFAULT_RUNS).expanduser()

    def _check_labels(self) -> None:
        """Refuse labels with nothing painted or one class missing, named by their layers."""
        labels = chosen_layer(self.viewer, self.labels_combo)
        val = chosen_layer(self.viewer, self.val_combo)
        if labels is None:
            return  # build_config says what to choose
        check_labels(
            np.asarray(labels.data),
            f"'{labels.name}'",
            np.asarray(val.data) if val is not None else None,
            f"'{val.name}'" if val is not None else None,
        )


def _save_labels(layer: Labels, path: Path) -> Path:
    """The engine reads labels from files: save what is painted now (values checked)."""
    return write_labels(path, np.asarray(layer.data))

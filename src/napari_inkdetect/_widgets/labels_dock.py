"""Crackle labels dock: paint ink / not-ink on a 2-D layer aligned with a volume, load and save.

Thin by design: file semantics live in ``io.labels`` / ``io.segment`` and the npe2 writer; the
dock only aligns layers, binds keys, shows counts and turns our errors into notifications.
Dense boxes are a Shapes layer of rectangles tied to one labels layer (:mod:`.dense_boxes`);
filling turns the rectangles into label-pixel boxes and leaves the maths to
``io.labels.apply_dense_boxes``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels, Shapes
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_inkdetect._napari_layers import (
    MASK,
    ROLE_KEY,
    SEGMENT_KEY,
    TRAIN,
    TRUTH,
    VALIDATION,
    is_derived,
    is_trainable,
    labels_kwargs,
    labels_role_from_name,
    layer_role,
)
from napari_inkdetect._widgets._common import unwrap_viewer
from napari_inkdetect._widgets._form import spin
from napari_inkdetect._widgets._layout import make_scrollable
from napari_inkdetect._widgets._settings import DockSettings
from napari_inkdetect._widgets.dense_boxes import add_dense_boxes, dense_box_layers, dense_boxes
from napari_inkdetect._writer import write_labels_layer
from napari_inkdetect.errors import InkDetectError
from napari_inkdetect.io.labels import (
    INK,
    NOT_INK,
    VillaPaths,
    apply_dense_boxes,
    label_counts,
    read_labels,
    read_villa_labels,
)
from napari_inkdetect.io.segment import open_segment, read_segment_labels

if TYPE_CHECKING:
    import napari

COUNTS_DELAY_MS = 300  # a bincount over a 13k x 17k layer takes ~0.3 s: run it once painting stops
BRUSH_SIZE = 20  # data px: about one crackle stroke wide, small enough for letter edges
HELP = (
    "Keys on a labels layer: <b>I</b> ink (red), <b>N</b> not ink (cyan), "
    "<b>E</b> eraser, <b>[</b> / <b>]</b> brush size.<br>"
    "<b>Dense boxes</b>: draw rectangles around painted letters, then <b>Fill boxes</b>: "
    "every unpainted pixel inside (on the papyrus mask) becomes not ink; Ctrl+Z undoes.<br>"
    "Save as <i>&lt;id&gt;_inklabels.png</i> to write the villa pair "
    "(+ <i>_supervision_mask.png</i>); any other name keeps 0/1/2."
)
FILE_FILTER = "Label images (*.png *.tif *.tiff)"


def paint_ink(layer: Labels) -> None:
    """Brush with ink (1): the I key."""
    layer.selected_label = INK
    layer.mode = "paint"


def paint_not_ink(layer: Labels) -> None:
    """Brush with not ink (2): the N key."""
    layer.selected_label = NOT_INK
    layer.mode = "paint"


def erase(layer: Labels) -> None:
    """Eraser back to unlabeled: the E key (napari's own, rebound so it works on every layer)."""
    layer.mode = "erase"


SHORTCUTS = {"I": paint_ink, "N": paint_not_ink, "E": erase}


def bind_shortcuts(layer: Labels) -> None:
    """Bind I / N / E on the layer itself; none clashes with napari's Labels defaults."""
    for key, func in SHORTCUTS.items():
        layer.bind_key(key, func, overwrite=True)


class CrackleLabelsWidget(QWidget):
    """Make, paint, count, load and save ink labels for the selected volume."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = unwrap_viewer(napari_viewer)
        self._counted: Labels | None = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(COUNTS_DELAY_MS)
        self._timer.timeout.connect(self.update_counts)
        self._build()
        self.settings = DockSettings(self, "labels", {"brush": self.brush_spin})
        layers = self.viewer.layers
        layers.events.inserted.connect(self._on_layers_changed)
        layers.events.removed.connect(self._on_layers_changed)
        layers.events.moved.connect(self._on_layers_changed)
        for layer in layers:
            layer.events.name.connect(self._on_layers_changed)
        self._on_layers_changed()
        make_scrollable(self)  # last: a short dock whatever the form's height

    def _build(self) -> None:
        self.volume_combo = QComboBox()
        self.labels_combo = QComboBox()
        self.new_button = QPushButton("New crackle labels")
        self.new_button.setToolTip("labels to train on (the Finetune dock picks them)")
        self.new_val_button = QPushButton("New validation labels")
        self.new_val_button.setToolTip(
            "held-out labels the Finetune dock scores on instead of the automatic split"
        )
        self.load_button = QPushButton("Load…")
        self.load_button.setToolTip(
            "add labels from a PNG/TIFF: 0/1/2, a Kaggle binary inklabels.png (inside the "
            "segment's mask) or a villa <id>_inklabels.png pair"
        )
        self.save_button = QPushButton("Save…")
        self.save_button.setToolTip(
            "save the chosen labels: <id>_inklabels.png writes the villa pair (+ "
            "_supervision_mask.png), any other name 0 unlabelled / 1 ink / 2 not ink"
        )
        self.boxes_button = QPushButton("New dense boxes")
        self.boxes_button.setToolTip(
            "a rectangles layer over the chosen labels: draw one around each painted letter"
        )
        self.fill_button = QPushButton("Fill boxes (not ink where not painted)")
        self.fill_button.setToolTip(
            "every unpainted papyrus pixel inside the dense boxes becomes not ink (2), so the "
            "model learns where ink stops; Ctrl+Z undoes"
        )
        self.counts_label = QLabel()
        self.help_label = QLabel(HELP)
        self.help_label.setWordWrap(True)
        form = QFormLayout()
        self.brush_spin = spin(1, 500, BRUSH_SIZE)
        self.brush_spin.setSuffix(" px")
        self.brush_spin.setToolTip(
            "brush diameter of new labels layers (volume pixels; [ and ] change a layer's own)"
        )
        self.volume_combo.setToolTip("the volume new and loaded labels align with (its Y/X)")
        self.labels_combo.setToolTip(
            "the labels layer counted, saved and filled (selecting one in the layer list too)"
        )
        form.addRow("Volume", self.volume_combo)
        form.addRow("Labels", self.labels_combo)
        form.addRow("Brush", self.brush_spin)
        files = QHBoxLayout()
        files.addWidget(self.load_button)
        files.addWidget(self.save_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        new = QHBoxLayout()
        new.addWidget(self.new_button)
        new.addWidget(self.new_val_button)
        layout.addLayout(new)
        layout.addLayout(files)
        boxes = QHBoxLayout()
        boxes.addWidget(self.boxes_button)
        boxes.addWidget(self.fill_button)
        layout.addLayout(boxes)
        layout.addWidget(self.counts_label)
        layout.addWidget(self.help_label)
        layout.addStretch()
        self.new_button.clicked.connect(self.new_labels)
        self.new_val_button.clicked.connect(self.new_validation_labels)
        self.load_button.clicked.connect(self._on_load_clicked)
        self.save_button.clicked.connect(self._on_save_clicked)
        self.boxes_button.clicked.connect(self.new_dense_boxes)
        self.fill_button.clicked.connect(self.fill_dense_boxes)
        self.labels_combo.currentIndexChanged.connect(self._on_labels_changed)
        self.viewer.layers.selection.events.active.connect(self._on_active_changed)
        self._on_active_changed()

    # -- layer choices -------------------------------------------------------------------------

    @property
    def volume(self) -> Image | None:
        """The volume new and loaded labels align with."""
        return self.volume_combo.currentData()

    @property
    def labels(self) -> Labels | None:
        """The labels layer that is counted and saved."""
        return self.labels_combo.currentData()

    def _on_layers_changed(self, event: Any = None) -> None:
        if event is not None and getattr(event, "type", None) == "inserted":
            event.value.events.name.connect(self._on_layers_changed)
        volumes = [ly for ly in self.viewer.layers if isinstance(ly, Image)]
        volumes.sort(key=lambda ly: SEGMENT_KEY not in ly.metadata)  # our volumes first
        _fill(self.volume_combo, volumes)
        labels = [ly for ly in self.viewer.layers if isinstance(ly, Labels) and not is_derived(ly)]
        # paintable labels first: a mask or an answer key is rarely what the user paints
        labels.sort(key=lambda ly: layer_role(ly) in (MASK, TRUTH) or not is_trainable(ly))
        _fill(self.labels_combo, labels)
        self.new_button.setEnabled(bool(volumes))
        self.new_val_button.setEnabled(bool(volumes))

    def _on_active_changed(self, event: Any = None) -> None:
        """Follow the layer list: selecting a Labels layer makes it the one counted."""
        active = self.viewer.layers.selection.active
        if isinstance(active, Labels) and _index_of(self.labels_combo, active) >= 0:
            self.labels_combo.setCurrentIndex(_index_of(self.labels_combo, active))

    def _on_labels_changed(self, index: int = -1) -> None:
        """Count the chosen layer, recount when it is painted, and give it the shortcuts."""
        if self._counted is not None:
            for emitter in _paint_events(self._counted):
                emitter.disconnect(self._schedule_counts)
        self._counted = self.labels
        if self._counted is not None:
            bind_shortcuts(self._counted)
            for emitter in _paint_events(self._counted):
                emitter.connect(self._schedule_counts)
        self.update_counts()

    def _select(self, layer: Labels) -> None:
        self.labels_combo.setCurrentIndex(_index_of(self.labels_combo, layer))
        self.viewer.layers.selection.active = layer

    # -- counts --------------------------------------------------------------------------------

    def _schedule_counts(self, event: Any = None) -> None:
        self._timer.start()  # restarts: one bincount after the last stroke, not one per stroke

    def update_counts(self) -> None:
        """Show pixels per class of the chosen labels layer."""
        layer = self.labels
        if layer is None:
            self.counts_label.setText("No labels layer")
            return
        data = layer.data[0] if layer.multiscale else layer.data
        counts = label_counts(np.asarray(data))
        self.counts_label.setText(
            f"<span style='color:#ff2a2a'>■</span> ink: {counts['ink']:,} px &nbsp; "
            f"<span style='color:#2ad4ff'>■</span> not ink: {counts['not ink']:,} px"
        )

    # -- actions -------------------------------------------------------------------------------

    def new_labels(self) -> Labels | None:
        """An empty labels layer over the volume's Y/X, ready to paint ink; its role
        ``train`` makes it the Finetune dock's training labels."""
        return self._new_empty(TRAIN, "crackle labels")

    def new_validation_labels(self) -> Labels | None:
        """An empty labels layer for held-out validation: role ``validation`` makes it the
        Finetune dock's validation labels (instead of the automatic split)."""
        return self._new_empty(VALIDATION, "validation labels")

    def _new_empty(self, role: str, kind: str) -> Labels | None:
        volume = self._require_volume()
        if volume is None:
            return None
        data = np.zeros(_plane_shape(volume), np.uint8)
        return self._add(data, f"{volume.name} {kind}", volume, {ROLE_KEY: role})

    def load(self, path: str | Path) -> Labels | None:
        """Add labels from a file (0/1/2, Kaggle binary with the segment's mask, or villa pair)."""
        volume = self._require_volume()
        if volume is None:
            return None
        path = Path(path)
        try:
            data = _read_for(volume, path)
        except (InkDetectError, OSError) as err:
            show_error(str(err))
            return None
        meta = {"source": str(path), ROLE_KEY: labels_role_from_name(path.stem)}
        return self._add(data, path.stem, volume, meta)

    def save(self, path: str | Path) -> list[Path]:
        """Write the chosen layer: villa pair for ``*_inklabels.png``, 0/1/2 otherwise."""
        layer = self.labels
        if layer is None:
            show_error("No labels layer to save: make or load one first")
            return []
        data = layer.data[0] if layer.multiscale else layer.data
        try:
            written = [Path(p) for p in write_labels_layer(str(path), data, layer.metadata)]
        except (InkDetectError, OSError) as err:
            show_error(str(err))
            return []
        layer.metadata["source"] = str(written[0])
        show_info("Saved " + ", ".join(p.name for p in written))
        return written

    def new_dense_boxes(self) -> Shapes | None:
        """A rectangles layer over the chosen labels (the existing one if there is one)."""
        layer = self.labels
        if layer is None:
            show_error("No labels layer for dense boxes: make or load one first")
            return None
        found = dense_box_layers(self.viewer, layer)
        shapes = found[-1] if found else add_dense_boxes(self.viewer, layer)
        self.viewer.layers.selection.active = shapes
        shapes.mode = "add_rectangle"
        return shapes

    def fill_dense_boxes(self) -> int | None:
        """Unpainted pixels inside the dense boxes become not ink, as one undoable step."""
        layer = self.labels
        if layer is None or layer.multiscale:
            show_error("No paintable labels layer to fill: make or load one first")
            return None
        try:
            boxes = dense_boxes(self.viewer, layer)
            old = np.asarray(layer.data)
            new = apply_dense_boxes(old, boxes, _segment_mask(layer))
        except (InkDetectError, OSError) as err:
            show_error(str(err))
            return None
        changed = np.nonzero(new != old)
        layer.data_setitem(changed, NOT_INK)  # recorded in the layer's undo history
        self.update_counts()
        n = int(changed[0].size)
        show_info(f"Dense boxes: {n:,} px of '{layer.name}' became not ink")
        return n

    def _require_volume(self) -> Image | None:
        if self.volume is None:
            show_error("No volume layer: open a segment first (drag its folder onto napari)")
        return self.volume

    def _add(self, data: np.ndarray, name: str, volume: Image, meta: dict) -> Labels:
        metadata = {SEGMENT_KEY: volume.metadata.get(SEGMENT_KEY), "volume": volume.name, **meta}
        layer = self.viewer.add_labels(
            data,
            **labels_kwargs(name, metadata),
            scale=volume.scale[-2:],
            translate=volume.translate[-2:],
        )
        layer.brush_size = self.brush_spin.value()
        paint_ink(layer)
        self._select(layer)
        return layer

    def _on_load_clicked(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load labels", self._folder(), FILE_FILTER)
        if path:
            self.load(path)

    def _on_save_clicked(self) -> None:
        layer = self.labels
        name = layer.name.replace(" ", "_") + ".png" if layer is not None else "labels.png"
        start = str(Path(self._folder()) / name)
        path, _ = QFileDialog.getSaveFileName(self, "Save labels", start, FILE_FILTER)
        if path:
            self.save(path)

    def _folder(self) -> str:
        """The segment's folder: labels saved there open with the segment next time."""
        segment = self.volume.metadata.get(SEGMENT_KEY) if self.volume is not None else None
        if not segment:
            return ""
        folder = Path(segment)
        return str(folder if folder.is_dir() else folder.parent)


def _fill(combo: QComboBox, layers: list) -> None:
    """Refill a combo with layers, keeping the current choice when it still exists."""
    current = combo.currentData()
    combo.blockSignals(True)
    combo.clear()
    for layer in layers:
        combo.addItem(layer.name, layer)
    index = _index_of(combo, current)
    combo.setCurrentIndex(index if index >= 0 else (0 if layers else -1))
    combo.blockSignals(False)
    if combo.currentData() is not current:
        combo.currentIndexChanged.emit(combo.currentIndex())


def _index_of(combo: QComboBox, layer: Any) -> int:
    """Index by identity: Qt cannot compare Python objects stored as item data."""
    found = [i for i in range(combo.count()) if combo.itemData(i) is layer]
    return found[0] if found and layer is not None else -1


def _paint_events(layer: Labels) -> list:
    return [layer.events.paint, layer.events.data, layer.events.labels_update]


def _segment_mask(layer: Labels) -> np.ndarray | None:
    """The papyrus mask of the labels' segment, or None (then boxes fill everywhere)."""
    segment = layer.metadata.get(SEGMENT_KEY)
    return open_segment(segment).read_mask() if segment else None


def _plane_shape(volume: Image) -> tuple[int, int]:
    """Full-resolution (Y, X) of a plain or multiscale volume."""
    return tuple(int(s) for s in volume.level_shapes[0][-2:])


def _read_for(volume: Image, path: Path) -> np.ndarray:
    """Labels for this volume: the segment's mask applies to binary files; villa pairs as such."""
    segment = volume.metadata.get(SEGMENT_KEY)
    if segment:
        return read_segment_labels(open_segment(segment), path)
    villa = VillaPaths.from_inklabels(path)
    if villa.supervision_mask.exists():
        return read_villa_labels(villa, shape=_plane_shape(volume))[0]
    return read_labels(path, shape=_plane_shape(volume))

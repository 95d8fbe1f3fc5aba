"""Where to look next, in the Predict dock: the ink depth map, the uncertainty layer, the
ranked boxes where a label would teach the model most, and a comparison with a second run.

Thin on purpose: the maps are :mod:`napari_inkdetect.prediction_maps`' (lazy dask arrays over
the prediction zarr, so adding a layer reads nothing), the ranking is
:mod:`napari_inkdetect.next_labels`' (one read of the prediction, in a worker thread). This
module turns them into layers placed exactly over the prediction's overlay, a list of boxes,
and a click that takes the user there with the labels layer selected, ready to paint.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels, Shapes
from napari.qt.threading import create_worker
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QLineEdit,
    QListWidget,
    QPushButton,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from napari_inkdetect._napari_layers import (
    DERIVED_KEY,
    MASK,
    PREDICTION_KEY,
    ROLE_KEY,
    TRAIN,
    UNCERTAINTY,
    VALIDATION,
    is_trainable,
    layer_role,
    prediction_placement,
)
from napari_inkdetect._widgets._common import show_error
from napari_inkdetect._widgets._form import add_rows, browse_button, hbox, spin, text_label
from napari_inkdetect._widgets._runs import make_room_in_thread_pool
from napari_inkdetect._widgets.prediction_overlay import camera_of, canvas_size
from napari_inkdetect.errors import InkDetectError
from napari_inkdetect.io.prediction_store import open_prediction
from napari_inkdetect.next_labels import DEFAULT_COUNT, Suggestion, label_here_next
from napari_inkdetect.prediction_maps import (
    UNCERTAINTY_LEGEND,
    StoredPrediction,
    depth_map,
    depth_profile,
    uncertainty,
)
from napari_inkdetect.scoring.compare import difference, provenance_table

if TYPE_CHECKING:
    import napari

DEPTH_COLORMAP = "turbo"
UNCERTAINTY_COLORMAP = "magma"
DIFFERENCE_COLORMAP = "PiYG"
SUGGESTIONS_NAME = "label here next"
#: labels roles a suggested box must not overlap (what the user painted)
PAINTED = (TRAIN, VALIDATION)  # truth is an answer key for scoring, not painted labels


def prediction_overlays(viewer: Any) -> list[Image]:
    """The per-start-layer prediction layers in the viewer (not their max projections)."""
    return [
        layer
        for layer in viewer.layers
        if isinstance(layer, Image)
        and PREDICTION_KEY in layer.metadata
        and "projection" not in layer.metadata
        and layer_role(layer) != UNCERTAINTY
    ]


class LookNextPanel(QCollapsible):
    """A collapsible section: choose a prediction layer, then add its depth map or its
    uncertainty, or rank boxes to label next and jump to them."""

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        parent: QWidget | None = None,
        threshold: Callable[[], float | None] | None = None,
    ) -> None:
        super().__init__("Where to look next", parent)
        self.findChild(QPushButton).setToolTip(  # its toggle, the only button yet
            "the ink depth map, the uncertainty of a prediction, and boxes to label next"
        )
        self.viewer = viewer
        self.threshold = threshold or (lambda: None)  # the dock's slider, when there is one
        self.suggestions: list[Suggestion] = []
        self.worker: Any = None
        body = QWidget()
        layout = QVBoxLayout(body)
        form = QFormLayout()
        self.prediction_combo = QComboBox()
        self.prediction_combo.setToolTip("the prediction layer to read (its zarr on disk)")
        self.second_edit = QLineEdit()
        self.second_edit.setPlaceholderText("optional: another checkpoint's prediction zarr")
        self.second_edit.setToolTip(
            "a prediction of the same region by a second checkpoint: where the two models "
            "disagree counts as doubt"
        )
        self.browse_second = browse_button("choose the second prediction (a .zarr folder)")
        self.box_spin = spin(16, 4096, 256, 16)
        self.box_spin.setSuffix(" px")
        self.box_spin.setToolTip("side of a suggested box, in volume px (default one tile)")
        self.count_spin = spin(1, 50, DEFAULT_COUNT)
        self.count_spin.setToolTip("how many boxes (each Box px a side) to suggest")
        add_rows(
            form,
            (
                ("Prediction", self.prediction_combo),
                ("Second model", hbox(self.second_edit, self.browse_second)),
                ("Box / count", hbox(self.box_spin, self.count_spin)),
            ),
        )
        layout.addLayout(form)
        self.depth_button = QPushButton("Depth map")
        self.depth_button.setToolTip(
            "per pixel, the window centre where ink is most likely (masked below the threshold)"
        )
        self.uncertainty_button = QPushButton("Uncertainty")
        self.uncertainty_button.setToolTip(UNCERTAINTY_LEGEND)
        self.next_button = QPushButton("Label here next")
        self.next_button.setToolTip(
            "rank boxes where a label would teach the model most: doubtful, far from your "
            "labels, inside the papyrus, spread out"
        )
        self.compare_button = QPushButton("Compare")
        self.compare_button.setToolTip(
            "the chosen prediction minus the second model's (where both predicted), and "
            "their settings side by side"
        )
        layout.addLayout(
            hbox(self.depth_button, self.uncertainty_button, self.next_button, self.compare_button)
        )
        self.legend = text_label("")
        layout.addWidget(self.legend)
        self.list = QListWidget()
        self.list.setToolTip("click a box to go there, with the labels layer ready to paint")
        self.list.setMaximumHeight(140)
        layout.addWidget(self.list)
        self.addWidget(body)
        self.depth_button.clicked.connect(self.add_depth_map)
        self.uncertainty_button.clicked.connect(self.add_uncertainty)
        self.next_button.clicked.connect(self.suggest)
        self.compare_button.clicked.connect(self.compare)
        self.browse_second.clicked.connect(self._choose_second)
        self.list.currentRowChanged.connect(self.go_to)
        viewer.layers.events.inserted.connect(self.refresh_layers)
        viewer.layers.events.removed.connect(self.refresh_layers)
        self.refresh_layers()

    # ------------------------------------------------------------------ inputs

    def refresh_layers(self, event: Any = None) -> None:
        """Offer the prediction layers, the newest first (it is usually the one wanted)."""
        current = self.prediction_combo.currentText()
        names = [layer.name for layer in reversed(prediction_overlays(self.viewer))]
        self.prediction_combo.clear()
        self.prediction_combo.addItems(names)
        if current in names and (event is None or getattr(event, "type", "") != "inserted"):
            self.prediction_combo.setCurrentText(current)
        enabled = bool(names)
        buttons = (self.depth_button, self.uncertainty_button, self.next_button)
        for button in (*buttons, self.compare_button):
            button.setEnabled(enabled)

    def overlay(self) -> Image | None:
        name = self.prediction_combo.currentText()
        return next((x for x in prediction_overlays(self.viewer) if x.name == name), None)

    def _choose_second(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Second prediction (zarr folder)")
        if path:
            self.second_edit.setText(path)

    def _open(self) -> tuple[Image, StoredPrediction, StoredPrediction | None]:
        layer = self.overlay()
        if layer is None:
            raise InkDetectError("no prediction layer: predict first, or open a prediction zarr")
        prediction = StoredPrediction.open(layer.metadata[PREDICTION_KEY])
        second = self.second_edit.text().strip()
        other = StoredPrediction.open(Path(second).expanduser()) if second else None
        return layer, prediction, other

    def _place(self, layer: Image, depth_axis: bool) -> dict[str, Any]:
        """``scale``/``translate`` of the overlay (2-D: its y and x only)."""
        scale, translate = tuple(layer.scale), tuple(layer.translate)
        return (
            {"scale": scale, "translate": translate}
            if depth_axis
            else {"scale": scale[-2:], "translate": translate[-2:]}
        )

    def _meta(self, layer: Image, what: str) -> dict[str, Any]:
        return {
            **{k: v for k, v in layer.metadata.items() if k != ROLE_KEY},
            ROLE_KEY: UNCERTAINTY,
            DERIVED_KEY: what,
        }

    # ------------------------------------------------------------------ maps

    def add_depth_map(self) -> Image | None:
        """Add the ink depth map of the chosen prediction (lazy) and its depth profile."""
        try:
            layer, prediction, _ = self._open()
            threshold = self._threshold(layer, prediction)
            data = depth_map(prediction, threshold)
        except InkDetectError as exc:
            show_error(str(exc), self.legend)
            return None
        centres = prediction.centre_layers
        lo, hi = float(min(centres)), float(max(centres))
        added = self._replace(
            f"{layer.name} ink depth",
            data,
            {
                **self._place(layer, depth_axis=False),
                "colormap": DEPTH_COLORMAP,
                "contrast_limits": (lo, hi if hi > lo else lo + 1),
                "metadata": self._meta(layer, "ink depth map"),
            },
        )
        added.colorbar.visible = True
        _, means = depth_profile(prediction)
        peak = centres[int(np.argmax(means))]
        self.legend.setText(
            f"Ink depth: the window centre (layers {int(lo)}..{int(hi)}) of the highest ink "
            f"probability per pixel, blank below threshold {threshold:.2f}. Over the whole "
            f"prediction ink peaks at layer {peak}."
        )
        return added

    def add_uncertainty(self) -> Image | None:
        """Add the uncertainty of the chosen prediction, plane by plane like its overlay."""
        try:
            layer, prediction, other = self._open()
            data = uncertainty(prediction, other, self._threshold(layer, prediction))
        except InkDetectError as exc:
            show_error(str(exc), self.legend)
            return None
        added = self._replace(
            f"{layer.name} uncertainty",
            data,
            {
                **self._place(layer, depth_axis=True),
                "colormap": UNCERTAINTY_COLORMAP,
                "contrast_limits": (0.0, 1.0),
                "blending": "additive",
                "opacity": 0.7,
                "metadata": self._meta(layer, "uncertainty"),
            },
        )
        added.colorbar.visible = True
        models = " (with the second model)" if other is not None else ""
        self.legend.setText(UNCERTAINTY_LEGEND + models)
        return added

    def compare(self) -> Image | None:
        """Add A - B over the pixels and windows both predictions hold (green: A sees more
        ink), and list the settings that differ."""
        try:
            layer, prediction, other = self._open()
            if other is None:
                raise InkDetectError("choose the second model's prediction to compare with")
            diff = difference(prediction.path, other.path)
            _, prov_a = open_prediction(prediction.path)
            _, prov_b = open_prediction(other.path)
        except InkDetectError as exc:
            show_error(str(exc), self.legend)
            return None
        added = self._replace(
            f"{layer.name} minus {other.path.name}",
            diff.data,
            {
                **self._placement(layer, prediction, diff.start_layers, diff.box),
                "colormap": DIFFERENCE_COLORMAP,
                "contrast_limits": (-1.0, 1.0),
                "metadata": self._meta(layer, "difference"),
            },
        )
        added.colorbar.visible = True
        rows = [r for r in provenance_table(prov_a, prov_b) if r[3]]
        listed = "; ".join(f"{key}: {a} | {b}" for key, a, b, _ in rows[:8]) or "none"
        self.legend.setText(
            f"A - B on {len(diff.start_layers)} windows (green: A sees more ink). "
            f"Settings that differ (A | B): {listed}"
        )
        return added

    def _placement(
        self,
        layer: Image,
        prediction: StoredPrediction,
        starts: list[int],
        box: tuple[int, int, int, int],
    ) -> dict[str, Any]:
        """Where planes of ``starts`` over ``box`` go, from the overlay's own placement."""
        starts_a = prediction.start_layers
        step = starts_a[1] - starts_a[0] if len(starts_a) > 1 else 1
        sz, sy, sx = (float(v) for v in layer.scale)
        tz, ty, tx = (float(v) for v in layer.translate)
        sz /= step
        tz -= sz * prediction.centre_layers[0]
        ty -= sy * prediction.region[0]
        tx -= sx * prediction.region[1]
        return prediction_placement(
            starts, box, (sz, sy, sx), (tz, ty, tx), window_length=prediction.window_length
        )

    def _threshold(self, layer: Image, prediction: StoredPrediction) -> float:
        """The dock's threshold, else the prediction's calibrated one."""
        value = self.threshold()
        return float(value) if value is not None and 0 < value < 1 else prediction.threshold

    def _replace(self, name: str, data: Any, kwargs: dict[str, Any]) -> Image:
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        return self.viewer.add_image(data, name=name, **kwargs)

    # ------------------------------------------------------------------ label here next

    def painted_labels(self, shape: tuple[int, int]) -> np.ndarray | None:
        """Every label already painted on this segment (training and validation labels)."""
        found = [
            np.asarray(x.data)
            for x in self.viewer.layers
            if isinstance(x, Labels)
            and (layer_role(x) in PAINTED or (layer_role(x) is None and is_trainable(x)))
            and x.data.shape[-2:] == shape
        ]
        if not found:
            return None
        painted = np.zeros(shape, bool)
        for data in found:
            painted |= (data if data.ndim == 2 else data.max(axis=0)) != 0
        return painted

    def training_labels(self) -> Labels | None:
        """The labels a user paints to train on: role ``train``, else their own layer."""
        labels = [x for x in self.viewer.layers if isinstance(x, Labels) and is_trainable(x)]
        labels.sort(key=lambda x: layer_role(x) != TRAIN)
        return labels[0] if labels else None

    def mask(self, shape: tuple[int, int]) -> np.ndarray | None:
        """The papyrus mask of this segment, if it is open."""
        return next(
            (
                np.asarray(x.data)
                for x in self.viewer.layers
                if isinstance(x, Labels) and layer_role(x) == MASK and x.data.shape[-2:] == shape
            ),
            None,
        )

    def suggest(self) -> Any:
        """Rank boxes in a worker thread; the list and a Shapes layer show them."""
        if self.worker is not None:
            return self.worker
        try:
            layer, prediction, other = self._open()
        except InkDetectError as exc:
            show_error(str(exc), self.legend)
            return None
        shape = self._segment_shape(layer, prediction)
        self.legend.setText("ranking boxes ...")
        self.next_button.setEnabled(False)
        self.worker = create_worker(
            label_here_next,
            prediction,
            self.painted_labels(shape),
            self.mask(shape),
            self.box_spin.value(),
            self.count_spin.value(),
            0,
            other,
            _start_thread=False,
            _connect={
                "returned": lambda found: self._show_suggestions(layer, found),
                "errored": self._failed,
                "finished": self._finished,
            },
        )
        make_room_in_thread_pool()
        self.worker.start()
        return self.worker

    def _segment_shape(self, layer: Image, prediction: StoredPrediction) -> tuple[int, int]:
        """The segment's (y, x) size, from a labels layer of it if one is open."""
        for x in self.viewer.layers:
            if isinstance(x, Labels) and layer_role(x) in (*PAINTED, MASK):
                return tuple(int(s) for s in x.data.shape[-2:])  # type: ignore[return-value]
        return prediction.region[2], prediction.region[3]

    def _failed(self, exc: Exception) -> None:
        show_error(str(exc) if isinstance(exc, InkDetectError) else repr(exc), self.legend)

    def _finished(self) -> None:
        self.worker = None
        self.next_button.setEnabled(bool(prediction_overlays(self.viewer)))

    def _show_suggestions(self, layer: Image, found: list[Suggestion]) -> None:
        self.suggestions = found
        self.list.blockSignals(True)
        self.list.clear()
        self.list.addItems([s.describe() for s in found])
        self.list.setCurrentRow(-1)
        self.list.blockSignals(False)
        if SUGGESTIONS_NAME in self.viewer.layers:
            self.viewer.layers.remove(SUGGESTIONS_NAME)
        if not found:
            self.legend.setText(
                "no box fits: every box would overlap the labels or leave the papyrus; "
                "try a smaller box"
            )
            return
        sy, sx = (float(v) for v in self._segment_scale(layer))
        ty, tx = (float(v) for v in self._segment_translate(layer))
        rectangles = [
            np.array([[ty + sy * y0, tx + sx * x0], [ty + sy * y1, tx + sx * x1]])
            for y0, x0, y1, x1 in (s.box for s in found)
        ]
        shapes = Shapes(
            rectangles,
            shape_type="rectangle",
            name=SUGGESTIONS_NAME,
            edge_color="#ffe14d",
            face_color="transparent",
            edge_width=max(2.0, self.box_spin.value() / 64),
            text={"string": [str(s.rank) for s in found], "color": "#ffe14d", "size": 12},
            metadata={DERIVED_KEY: SUGGESTIONS_NAME},
        )
        selected = self.viewer.layers.selection.active
        self.viewer.add_layer(shapes)
        if selected is not None:
            self.viewer.layers.selection.active = selected
        self.legend.setText(
            f"{len(found)} boxes, best first: click one to go there and paint. "
            "Then Finetune again (it starts from the last checkpoint)."
        )

    def _segment_scale(self, layer: Image) -> tuple[float, float]:
        return tuple(layer.scale)[-2:]  # type: ignore[return-value]

    def _segment_translate(self, layer: Image) -> tuple[float, float]:
        """World position of segment pixel (0, 0): the overlay's, less its region offset."""
        sy, sx = self._segment_scale(layer)
        y0, x0 = layer.metadata["region"][:2]
        ty, tx = tuple(layer.translate)[-2:]
        return ty - sy * y0, tx - sx * x0

    def go_to(self, row: int) -> None:
        """Centre the view on suggestion ``row``, zoomed to it, with the labels selected."""
        if not 0 <= row < len(self.suggestions):
            return
        layer = self.overlay()
        if layer is None:
            return
        s = self.suggestions[row]
        sy, sx = self._segment_scale(layer)
        ty, tx = self._segment_translate(layer)
        cy, cx = s.centre
        camera_of(self.viewer).center = (ty + sy * cy, tx + sx * cx)
        side = max(s.box[2] - s.box[0], 1) * float(sy)
        camera_of(self.viewer).zoom = min(canvas_size(self.viewer)) / (2.0 * side)
        labels = self.training_labels()
        if labels is not None:
            self.viewer.layers.selection.active = labels
            labels.mode = "paint"

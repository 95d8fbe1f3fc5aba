"""Find ink depth in the docks: the score plot, and the glue that runs the estimate off the GUI
thread on the chosen layers.

The estimate itself is :func:`napari_inkdetect.ink_depth.estimate_ink_depth` (Qt-free); here
it only gets its inputs from layers and its result drawn.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from qtpy.QtCore import QPointF, QRectF
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QWidget

from napari_inkdetect._napari_layers import MASK, is_derived, layer_role
from napari_inkdetect._widgets._runs import make_room_in_thread_pool
from napari_inkdetect.ink_depth import InkDepth, estimate_ink_depth
from napari_inkdetect.windows import window_centre

if TYPE_CHECKING:
    import napari

SEGMENT_KEY = "inkdetect_segment"


class InkDepthPlot(QWidget):
    """Score of each window (labelled by its centre, as the depth slider and the docks show
    it), with the chosen window and the Predict band.

    Hidden until the first estimate; the full explanation is its tooltip."""

    CURVE = QColor("#ffa040")
    CHOSEN = QColor("#40d0ff")
    BAND = QColor(64, 208, 255, 50)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumHeight(80)
        self.estimate: InkDepth | None = None
        self.hide()

    def set_estimate(self, estimate: InkDepth | None) -> None:
        """Show an estimate (``None`` hides the plot)."""
        self.estimate = estimate
        self.setToolTip(estimate.explanation if estimate is not None else "")
        self.setVisible(estimate is not None)
        self.update()

    def paintEvent(self, event: Any) -> None:
        """Axes box, band, score polyline, chosen start line and a one-line summary."""
        estimate = self.estimate
        if estimate is None:
            return
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        font_h = painter.fontMetrics().height()
        plot = QRectF(6, font_h + 4, self.width() - 12, self.height() - 2 * font_h - 10)
        painter.setPen(QPen(QColor("#808080")))
        painter.drawRect(plot)
        scores = np.asarray(estimate.scores, float)
        top = float(scores.max()) or 1.0
        last = max(len(scores) - 1, 1)

        def x_of(start: float) -> float:
            return plot.left() + start / last * plot.width()

        lo, hi = estimate.band
        painter.fillRect(
            QRectF(x_of(lo), plot.top(), x_of(hi) - x_of(lo), plot.height()), self.BAND
        )
        line = QPolygonF(
            [
                QPointF(x_of(z), plot.bottom() - s / top * plot.height())
                for z, s in enumerate(scores)
            ]
        )
        painter.setPen(QPen(self.CURVE, 2))
        painter.drawPolyline(line)
        painter.setPen(QPen(self.CHOSEN, 2))
        x = x_of(estimate.start)
        painter.drawLine(QPointF(x, plot.top()), QPointF(x, plot.bottom()))
        painter.setPen(QPen(QColor("#d0d0d0")))
        painter.drawText(QPointF(6, font_h), self.summary())
        first, end = window_centre(0, estimate.layers), window_centre(last, estimate.layers)
        painter.drawText(
            QPointF(6, self.height() - 4), f"window centre {first} .. {end} (score per window)"
        )
        painter.end()

    def summary(self) -> str:
        """The header line: what was chosen, or that nothing stood out."""
        e = self.estimate
        if e is None:
            return ""
        if not e.found:
            return f"no clear ink depth ({e.contrast:.1f}x noise)"
        lo, hi = e.centre_band
        return f"ink near layer {e.depth}: window centre {e.centre}, predict centres {lo}-{hi}"


def find_mask_layer(viewer: napari.viewer.Viewer, volume: Image) -> Labels | None:
    """The volume's mask layer (same segment, name ending in 'mask'), if it is open."""
    segment = volume.metadata.get(SEGMENT_KEY)
    shape = tuple(volume.level_shapes[0][-2:]) if volume.multiscale else volume.data.shape[-2:]
    for layer in viewer.layers:
        role = layer_role(layer)
        if (
            isinstance(layer, Labels)
            and (role == MASK or (role is None and layer.name.endswith("mask")))
            and layer.metadata.get(SEGMENT_KEY) == segment
            and tuple(layer.data.shape) == tuple(int(s) for s in shape)
        ):
            return layer
    return None


def estimate_inputs(
    viewer: napari.viewer.Viewer, volume: Image, labels: Labels | None
) -> tuple[Any, np.ndarray | None, np.ndarray | None]:
    """(full-resolution volume data, a snapshot of the labels, the mask) for the estimate.

    The labels are copied on the GUI thread: painting may go on while the estimate runs."""
    data = volume.data[0] if volume.multiscale else volume.data
    painted = None
    if labels is not None and not is_derived(labels) and labels.data.ndim == 2:
        painted = np.array(labels.data, copy=True)
    mask = find_mask_layer(viewer, volume)
    return data, painted, (np.asarray(mask.data) if mask is not None else None)


def start_estimate(
    viewer: napari.viewer.Viewer,
    volume: Image,
    labels: Labels | None,
    layers: int,
    on_done: Callable[[InkDepth], None],
    on_error: Callable[[Exception], None],
) -> Any:
    """Run the estimate in a napari worker; ``on_done``/``on_error`` run on the GUI thread."""
    data, painted, mask = estimate_inputs(viewer, volume, labels)
    worker = create_worker(
        estimate_ink_depth,
        data,
        painted,
        mask=mask,
        layers=layers,
        _start_thread=False,
        _connect={"returned": on_done, "errored": on_error},
    )
    make_room_in_thread_pool()
    worker.start()
    return worker


def predict_docks(viewer: napari.viewer.Viewer) -> list[Any]:
    """Docked widgets that take a start-layer band (the Predict dock)."""
    docked = getattr(viewer.window, "dock_widgets", {})
    return [w for w in docked.values() if hasattr(w, "set_start_band")]

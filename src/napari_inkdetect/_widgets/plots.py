"""The docks' plots, drawn with QPainter (no plotting dependency): the training loss, the mean
ink per predicted window, and the ink-depth estimate's score per window.

Each plot holds plain values set by its dock and draws them on ``paintEvent``; windows are
labelled by their centre layers, as the depth slider shows them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QWidget

from napari_inkdetect.ink_depth import InkDepth
from napari_inkdetect.windows import window_centre

FRAME = QColor("#808080")
TEXT = QColor("#d0d0d0")


def _framed(widget: QWidget) -> tuple[QPainter, QRectF, int]:
    """A painter on ``widget``, the plot box (drawn, a text line free above and below) and
    the font height."""
    painter = QPainter(widget)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    font_h = painter.fontMetrics().height()
    plot = QRectF(6, font_h + 4, widget.width() - 12, widget.height() - 2 * font_h - 10)
    painter.setPen(QPen(FRAME))
    painter.drawRect(plot)
    return painter, plot, font_h


class LossPlot(QWidget):
    """A live loss curve (polyline) with validation F0.5 points.

    Thousands of steps are decimated to the widget's width.
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
        painter, plot, font_h = _framed(self)
        if not self.starts:
            painter.drawText(plot, Qt.AlignmentFlag.AlignCenter, "mean ink per window centre")
            painter.end()
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
        painter.setPen(QPen(TEXT))
        painter.drawText(
            QPointF(6, font_h),
            f"mean ink: peak {self.means[peak]:.2f} at window centre {self.starts[peak]}",
        )
        painter.drawText(
            QPointF(6, self.height() - 4),
            f"window centre {lo} .. {self.starts[-1]}   (scale {bottom:.2f} .. {top:.2f})",
        )
        painter.end()


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
        painter, plot, font_h = _framed(self)
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
        painter.setPen(QPen(TEXT))
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

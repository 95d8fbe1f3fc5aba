"""Greek capitals as polylines in a unit box (no fonts, so no platform drift)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Stroke = Sequence[tuple[float, float]]


def _arc(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int = 24) -> Stroke:
    """Points on an elliptic arc (angles in degrees, y down), for round glyphs."""
    angles = np.radians(np.linspace(a0, a1, n))
    return [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles]


# Greek capitals as polylines in a unit box (x right, y down); no fonts, so no platform drift.
GLYPHS: dict[str, tuple[Stroke, ...]] = {
    "Α": (((0, 1), (0.5, 0), (1, 1)), ((0.22, 0.62), (0.78, 0.62))),
    "Γ": (((1, 0), (0, 0), (0, 1)),),
    "Δ": (((0, 1), (0.5, 0), (1, 1), (0, 1)),),
    "Ε": (((1, 0), (0, 0), (0, 1), (1, 1)), ((0, 0.5), (0.75, 0.5))),
    "Η": (((0, 0), (0, 1)), ((1, 0), (1, 1)), ((0, 0.5), (1, 0.5))),
    "Θ": (_arc(0.5, 0.5, 0.5, 0.5, 0, 360, 32), ((0.25, 0.5), (0.75, 0.5))),
    "Ι": (((0.5, 0), (0.5, 1)),),
    "Κ": (((0, 0), (0, 1)), ((1, 0), (0, 0.58)), ((0.3, 0.4), (1, 1))),
    "Λ": (((0, 1), (0.5, 0), (1, 1)),),
    "Μ": (((0, 1), (0, 0), (0.5, 0.65), (1, 0), (1, 1)),),
    "Ν": (((0, 1), (0, 0), (1, 1), (1, 0)),),
    "Ο": (_arc(0.5, 0.5, 0.5, 0.5, 0, 360, 32),),
    "Π": (((0, 1), (0, 0), (1, 0), (1, 1)),),
    "Ρ": (((0, 1), (0, 0), (0.55, 0)), (*_arc(0.55, 0.27, 0.4, 0.27, -90, 90, 16), (0, 0.54))),
    "Σ": (((1, 0), (0, 0), (0.5, 0.5), (0, 1), (1, 1)),),
    "Τ": (((0, 0), (1, 0)), ((0.5, 0), (0.5, 1))),
    "Υ": (((0, 0), (0.5, 0.5), (1, 0)), ((0.5, 0.5), (0.5, 1))),
    "Χ": (((0, 0), (1, 1)), ((1, 0), (0, 1))),
}
_TEXT = "ΚΑΙΤΟΝΘΕΟΝΠΑΝΤΑΣΥΜΗΡΧΕΝΔΙΑΛΟΓΟΣΠΕΡΙΗΔΟΝΗΣ"

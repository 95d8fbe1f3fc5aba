"""Dense boxes for the Crackle labels dock: a Shapes layer of rectangles tied to one labels
layer, and the label pixels its rectangles cover.

Filling them (unpainted pixels inside become not ink) is ``io.labels.apply_dense_boxes``; here
only the layers and the coordinate change from the rectangles to the labels' pixels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Labels, Shapes

from napari_inkdetect._napari_layers import DENSE_BOXES, ROLE_KEY
from napari_inkdetect.errors import LabelsError
from napari_inkdetect.io.labels import Box

if TYPE_CHECKING:
    import napari

LABELS_KEY = "inkdetect_labels"  # Shapes metadata: the name of the labels layer it fills
BOX_EDGE_WIDTH = 4  # data px: visible over a whole segment, thin enough to aim a corner


def add_dense_boxes(viewer: napari.viewer.Viewer, layer: Labels) -> Shapes:
    """A new, empty rectangles layer over ``layer`` (same placement), tied to it by name."""
    return viewer.add_shapes(
        None,
        ndim=2,
        shape_type="rectangle",
        edge_color="cyan",
        face_color="transparent",
        edge_width=BOX_EDGE_WIDTH,
        name=f"{layer.name} dense boxes",
        scale=layer.scale,
        translate=layer.translate,
        metadata={ROLE_KEY: DENSE_BOXES, LABELS_KEY: layer.name},
    )


def dense_box_layers(viewer: napari.viewer.Viewer, labels: Labels) -> list[Shapes]:
    """The dense-boxes Shapes layers made for this labels layer."""
    return [
        ly
        for ly in viewer.layers
        if isinstance(ly, Shapes)
        and ly.metadata.get(ROLE_KEY) == DENSE_BOXES
        and ly.metadata.get(LABELS_KEY) == labels.name
    ]


def rectangle_boxes(shapes: Shapes, labels: Labels) -> list[Box]:
    """Rectangles as ``(y0, y1, x0, x1)`` label-pixel boxes: the pixels whose centres they cover.

    Vertices go shapes data -> world -> labels data, so the layers' scale and translate may
    differ; only the last two axes count (a rectangle drawn on a 3-D layer covers the plane).
    """
    boxes = []
    for i, (kind, vertices) in enumerate(zip(shapes.shape_type, shapes.data, strict=True)):
        if kind != "rectangle":
            raise LabelsError(
                f"'{shapes.name}' shape {i + 1} is a {kind}: dense boxes must be rectangles"
            )
        points = np.array([labels.world_to_data(shapes.data_to_world(v)) for v in vertices])
        lo = np.ceil(points[:, -2:].min(axis=0) - 1e-6).astype(int)
        hi = np.floor(points[:, -2:].max(axis=0) + 1e-6).astype(int) + 1
        boxes.append((int(lo[0]), int(hi[0]), int(lo[1]), int(hi[1])))
    return boxes


def dense_boxes(viewer: napari.viewer.Viewer, labels: Labels) -> list[Box]:
    """Every dense box of ``labels``, in its pixels (none drawn: an error saying how)."""
    boxes = [b for s in dense_box_layers(viewer, labels) for b in rectangle_boxes(s, labels)]
    if not boxes:
        raise LabelsError(
            f"No dense boxes for '{labels.name}': press 'New dense boxes' and draw rectangles"
        )
    return boxes

"""Find ink depth in the docks: the estimate's inputs from the chosen layers, the estimate as a
run for :class:`~napari_inkdetect._widgets._runs.RunController`, and where its band goes.

The estimate itself is :func:`napari_inkdetect.ink_depth.estimate_ink_depth` (Qt-free); its
plot is :class:`~napari_inkdetect._widgets.plots.InkDepthPlot`.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels

from napari_inkdetect._napari_layers import (
    MASK,
    SEGMENT_KEY,
    is_derived,
    layer_role,
    strict_data,
)
from napari_inkdetect.ink_depth import InkDepth, estimate_ink_depth

if TYPE_CHECKING:
    import napari


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

    The labels are copied on the GUI thread: painting may go on while the estimate runs.
    The volume is the strict one: files that went away fail the estimate instead of making
    it compute on the black the view shows for them."""
    data = strict_data(volume.data[0] if volume.multiscale else volume.data)
    painted = None
    if labels is not None and not is_derived(labels) and labels.data.ndim == 2:
        painted = np.array(labels.data, copy=True)
    mask = find_mask_layer(viewer, volume)
    return data, painted, (np.asarray(mask.data) if mask is not None else None)


def estimate_run(
    data: Any,
    painted: np.ndarray | None,
    mask: np.ndarray | None,
    layers: int,
    stop: threading.Event,
) -> Generator[None, None, InkDepth]:
    """The estimate as a worker's generator: no events, the estimate returned (it takes
    seconds and is not stopped midway: ``stop`` is not read)."""
    return estimate_ink_depth(data, painted, mask=mask, layers=layers)
    yield  # a generator function, as stoppable workers run them


def predict_docks(viewer: napari.viewer.Viewer) -> list[Any]:
    """Docked widgets that take a start-layer band (the Predict dock)."""
    docked = getattr(viewer.window, "dock_widgets", {})
    return [w for w in docked.values() if hasattr(w, "set_start_band")]

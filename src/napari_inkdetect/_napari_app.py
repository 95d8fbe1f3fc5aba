"""``napari-inkdetect view``: a viewer with a segment (or the sample) and the plugin's docks.

Kept apart from the CLI so that the command line stays importable without napari.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import napari

from napari_inkdetect._napari_layers import TRAIN, VOLUME, LayerData, layer_role, segment_layers
from napari_inkdetect._sample_data import make_sample_segment
from napari_inkdetect._widgets._layout import arrange_docks
from napari_inkdetect._widgets.find_ink_depth import estimate_inputs
from napari_inkdetect.ink_depth import InkDepth, estimate_ink_depth
from napari_inkdetect.io.segment import open_segment

DOCKS = ("Crackle labels", "Finetune", "Predict", "Export")


def run_viewer(segment: Path | None = None, reverse: bool = False) -> None:
    """Open napari ready to paint: layers, the labels layer selected, docks open."""
    if segment is None:
        viewer = napari.Viewer(title="napari-inkdetect: synthetic crackle sample")
        open_sample(viewer)
    else:
        viewer = napari.Viewer(title=f"napari-inkdetect: {segment.name}")
        add_layers(viewer, segment_layers(open_segment(segment, reverse=reverse)))
        add_docks(viewer)
    napari.run()


def open_sample(viewer: napari.Viewer) -> tuple[list[Any], InkDepth | None]:
    """The bundled sample with the docks, the depth slider at its ink depth and the Finetune
    window (and Predict band) placed around it: the first finetune sees the crackle."""
    add_layers(viewer, make_sample_segment())
    estimate = open_at_ink_depth(viewer)
    docks = add_docks(viewer)
    if estimate is not None:
        for dock in docks:
            if hasattr(dock, "apply_ink_depth"):
                dock.apply_ink_depth(estimate)
    return docks, estimate


def open_at_ink_depth(viewer: napari.Viewer) -> InkDepth | None:
    """Move the depth slider to the ink depth of the segment's volume, estimated from its
    train labels (or from the volume alone); ``None`` (slider untouched) when none is clear."""
    volume = next((ly for ly in viewer.layers if layer_role(ly) == VOLUME), None)
    if volume is None or volume.ndim != 3:
        return None
    segment = volume.metadata.get("inkdetect_segment")
    train = next(
        (
            ly
            for ly in viewer.layers
            if layer_role(ly) == TRAIN and ly.metadata.get("inkdetect_segment") == segment
        ),
        None,
    )
    data, labels, mask = estimate_inputs(viewer, volume, train)
    estimate = estimate_ink_depth(data, labels, mask=mask)
    if not estimate.found:
        return None
    viewer.dims.set_current_step(0, estimate.depth)
    return estimate


def add_docks(viewer: napari.Viewer) -> list[Any]:
    """The plugin's docks, as a user would open them from the Plugins menu, then tabbed
    beside the layer list (one column of docks, so the image keeps most of the window)."""
    widgets = [viewer.window.add_plugin_dock_widget("napari-inkdetect", name)[1] for name in DOCKS]
    qt_viewer = viewer.window._qt_viewer
    arrange_docks(viewer.window._qt_window, qt_viewer.dockLayerList, widgets)
    return widgets


def add_layers(viewer: napari.Viewer, layers: list[LayerData]) -> None:
    """Add layer tuples; the first editable labels layer is selected, ready to paint."""
    added = [getattr(viewer, f"add_{kind}")(data, **kwargs) for data, kwargs, kind in layers]
    paintable = [a for a in added if "train labels" in a.name or a.name.endswith("inklabels")]
    if paintable:
        viewer.layers.selection.active = paintable[0]

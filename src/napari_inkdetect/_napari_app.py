"""``napari-inkdetect view``: a viewer with a segment (or the sample) and the plugin's docks.

Kept apart from the CLI so that the command line stays importable without napari.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import napari

from napari_inkdetect._napari_layers import LayerData, segment_layers
from napari_inkdetect._sample_data import make_sample_segment
from napari_inkdetect.io.segment import open_segment

DOCKS = ("Crackle labels", "Finetune", "Predict", "Export")


def run_viewer(segment: Path | None = None, reverse: bool = False) -> None:
    """Open napari ready to paint: layers, the labels layer selected, docks open."""
    if segment is None:
        layers, title = make_sample_segment(), "synthetic crackle sample"
    else:
        layers, title = segment_layers(open_segment(segment, reverse=reverse)), segment.name
    viewer = napari.Viewer(title=f"napari-inkdetect: {title}")
    add_layers(viewer, layers)
    add_docks(viewer)
    napari.run()


def add_docks(viewer: napari.Viewer) -> list[Any]:
    """The plugin's docks, as a user would open them from the Plugins menu."""
    return [viewer.window.add_plugin_dock_widget("napari-inkdetect", name)[1] for name in DOCKS]


def add_layers(viewer: napari.Viewer, layers: list[LayerData]) -> None:
    """Add layer tuples; the first editable labels layer is selected, ready to paint."""
    added = [getattr(viewer, f"add_{kind}")(data, **kwargs) for data, kwargs, kind in layers]
    paintable = [a for a in added if "train labels" in a.name or a.name.endswith("inklabels")]
    if paintable:
        viewer.layers.selection.active = paintable[0]

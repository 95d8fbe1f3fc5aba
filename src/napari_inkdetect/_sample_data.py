"""npe2 sample data: the synthetic crackle segment, opened lazily from disk."""

from __future__ import annotations

from napari_inkdetect._napari_layers import LayerData, segment_layers
from napari_inkdetect.io.segment import open_segment
from napari_inkdetect.sample import sample_segment_path


def make_sample_segment() -> list[LayerData]:
    """Volume, mask, truth ink labels, and the sparse training/validation labels to start from."""
    layers = segment_layers(open_segment(sample_segment_path()))
    for _, kwargs, kind in layers:
        if kwargs["name"].endswith("inklabels"):
            kwargs["name"] = kwargs["name"].replace("inklabels", "truth")
        if kind == "labels" and not kwargs["name"].endswith("train labels"):
            kwargs["visible"] = False  # answer keys stay hidden until the user compares
    return layers

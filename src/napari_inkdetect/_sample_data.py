"""npe2 sample data: the synthetic crackle segment, opened lazily from disk."""

from __future__ import annotations

from napari_inkdetect._napari_layers import ROLE_KEY, TRAIN, TRUTH, LayerData, segment_layers
from napari_inkdetect.io.segment import open_segment
from napari_inkdetect.sample import sample_segment_path


def make_sample_segment() -> list[LayerData]:
    """Volume, mask, truth ink labels, and the sparse training/validation labels to start from.

    The dense ink labels are the answer key (role ``truth``): the docks never train on them."""
    layers = segment_layers(open_segment(sample_segment_path()))
    for _, kwargs, kind in layers:
        if kwargs["name"].endswith("inklabels"):
            kwargs["name"] = kwargs["name"].replace("inklabels", "truth")
            kwargs["metadata"] = {**kwargs["metadata"], ROLE_KEY: TRUTH}
        if kind == "labels" and kwargs["metadata"].get(ROLE_KEY) != TRAIN:
            kwargs["visible"] = False  # answer keys stay hidden until the user compares
    return layers

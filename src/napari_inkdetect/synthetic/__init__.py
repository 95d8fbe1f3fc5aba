"""A procedural crackle segment: sample data, test fixture and benchmark input in one.

Real segments are gigabytes and their ink labels are uncertain, so tests, demos and benchmarks
need a segment whose truth is known exactly and which looks like the real thing to both a
person and a 3D CNN: a papyrus sheet with a smooth depth profile and crossed fibres, and ink
that shows only as *crackle* (a fine crack network) inside letter strokes, in a thin band of
layers below the surface. The crackle has zero local mean, so no intensity threshold finds it;
only texture (what a CNN learns) separates ink from papyrus.

Everything is numpy + Pillow, deterministic for a given seed, and generated layer by layer in
float32 so large shapes such as ``(65, 2048, 2048)`` fit in memory.
The package: :mod:`.segment` (``make_segment``, ``write_segment``), :mod:`.geometry` (mask,
surface, letters), :mod:`.render` (crackle and layers), :mod:`.fields` (smooth fields and
filters), :mod:`.glyphs` and :mod:`.labels` (painted-label helpers).
"""

from napari_inkdetect.synthetic.glyphs import GLYPHS
from napari_inkdetect.synthetic.segment import (
    VOXEL_SIZE_UM,
    SyntheticSegment,
    make_segment,
    write_segment,
)

__all__ = ["GLYPHS", "VOXEL_SIZE_UM", "SyntheticSegment", "make_segment", "write_segment"]

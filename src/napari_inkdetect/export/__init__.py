"""Export a prediction: images per start layer, the max projection, and the depth sweep as an
animated GIF / MP4 with the volume underneath.

``export(config, stop)`` is the engine (:mod:`.exporter`); the pieces work alone too:
:func:`render_sweep` yields RGB frames (:mod:`.sweep`), :func:`write_gif` / :func:`write_mp4`
write any frames (:mod:`.video`), :func:`export_prediction` writes the still images
(:mod:`.images`). No torch: an export reads the prediction store only.
"""

from napari_inkdetect.export.config import (
    INK_COLOR,
    ExportConfig,
    FileWritten,
    FrameRendered,
    export_config,
)
from napari_inkdetect.export.exporter import export
from napari_inkdetect.export.images import export_prediction
from napari_inkdetect.export.sweep import render_sweep
from napari_inkdetect.export.video import MP4_HINT, write_gif, write_mp4

__all__ = [
    "INK_COLOR",
    "MP4_HINT",
    "ExportConfig",
    "FileWritten",
    "FrameRendered",
    "export",
    "export_config",
    "export_prediction",
    "render_sweep",
    "write_gif",
    "write_mp4",
]

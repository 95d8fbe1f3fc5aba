"""napari-inkdetect: find ink in Herculaneum scroll segments.

The package root is headless (no Qt, no napari): ``open_segment`` and the error types are
importable on a GPU server; the napari contributions live in private modules.
"""

from napari_inkdetect.errors import InkDetectError
from napari_inkdetect.io.segment import Segment, open_segment

try:
    from napari_inkdetect._version import version as __version__
except ImportError:  # pragma: no cover - running from a source tree without an install
    __version__ = "0.0.0"

__all__ = ["InkDetectError", "Segment", "__version__", "open_segment"]

"""The package's own error hierarchy.

Every problem a user can cause (a wrong path, a broken file, labels that do not match) raises a
subclass of :class:`InkDetectError` whose message is one line naming the file and what is wrong.
The CLI prints that line and exits non-zero; the napari docks show it as a notification. Anything
else reaching the user is a bug.
"""

from __future__ import annotations


class InkDetectError(Exception):
    """Base class: a problem with the user's input, explained in one line."""


class SegmentError(InkDetectError):
    """A surface volume that cannot be opened: missing, empty, gaps, mixed shapes or dtypes."""


class CorruptFileError(InkDetectError):
    """A file that exists but cannot be decoded (truncated or damaged)."""


class LabelsError(InkDetectError):
    """A label or mask image with the wrong shape, values or encoding."""


class CheckpointError(InkDetectError):
    """A checkpoint that cannot be loaded safely or does not fit the chosen architecture."""


class ConfigError(InkDetectError):
    """A setting that is out of range or inconsistent with the data."""


class ClusterError(InkDetectError):
    """A dask cluster that cannot be reached, has no workers, or whose workers cannot see the
    data (the segment, checkpoint and output must be on a filesystem they share)."""


class ChildCrashedError(InkDetectError):
    """A training or prediction process died (crash, killed, out of host memory)."""

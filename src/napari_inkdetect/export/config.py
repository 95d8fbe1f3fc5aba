"""``ExportConfig`` and the events an export yields."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from napari_inkdetect.errors import ConfigError
from napari_inkdetect.export.video import require_ffmpeg
from napari_inkdetect.options import ConfigData, option

__all__ = [
    "BAND_PIXELS",
    "IMAGE_FORMATS",
    "INK_COLOR",
    "UNDERLAYS",
    "ExportConfig",
    "FileWritten",
    "FrameRendered",
    "check_sweep",
    "export_config",
]

INK_COLOR = (255, 42, 42)  # the labels' ink red
IMAGE_FORMATS = ("png", "tif")
UNDERLAYS = ("middle", "start", "none")
BAND_PIXELS = 1 << 22  # volume pixels per band read (8 MB of uint16)


def parse_images(text: str) -> tuple[str, ...]:
    """``"png,tif"`` -> ``("png", "tif")``; ``"none"`` -> no images."""
    return () if text == "none" else tuple(f for f in str(text).split(",") if f)


def parse_max_side(text: str) -> int | None:
    """A frame side cap in pixels; 0 means full resolution (None)."""
    try:
        return int(text) or None
    except ValueError:
        raise ConfigError(f"--max-side {text!r}: expected pixels (0: full size)") from None


def check_sweep(
    alpha: float, threshold: float | None, max_side: int | None, underlay: str
) -> None:
    """Refuse sweep settings that cannot be drawn (before any file is touched)."""
    if not 0 <= alpha <= 1:
        raise ConfigError(f"alpha {alpha}: must lie in 0..1")
    if threshold is not None and not 0 <= threshold <= 1:
        raise ConfigError(f"threshold {threshold}: must lie in 0..1 (a probability)")
    if max_side is not None and max_side < 16:
        raise ConfigError(f"max_side {max_side}: must be at least 16 pixels (or None)")
    if underlay not in UNDERLAYS:
        raise ConfigError(f"underlay {underlay!r}: use {', '.join(UNDERLAYS)}")


@dataclass(frozen=True)
class ExportConfig(ConfigData):
    """One export, as plain data.

    ``images`` are the formats (``"png"``, ``"tif"``) of the per-start-layer images, named
    ``<name>_z<start>.<format>``; ``max_projection`` adds ``<name>_max.<format>`` in each of
    them. ``gif`` / ``mp4`` write the depth sweep ``<name>_sweep.gif`` / ``.mp4`` at ``fps``
    frames per second, at most ``max_side`` pixels a side (None: full resolution). ``segment``
    overrides the segment path recorded in the prediction (a moved segment); the other sweep
    settings are those of :func:`render_sweep`.
    """

    prediction: str = option(positional=True, help="a zarr written by `predict`")
    out_dir: str = option(
        flag="--out", help="output folder (default: <name>_export beside the prediction)"
    )
    images: tuple[str, ...] = option(
        ("png",), parse=parse_images, metavar="FORMATS", help="png, tif, png,tif or none"
    )
    max_projection: bool = option(
        True, flags={"--no-max": (False, "no max projection image")}, label="max projection",
        help="the max projection over start layers, in each image format",
    )  # fmt: skip
    gif: bool = option(True, flags={"--no-gif": (False, "no animated GIF")}, label="GIF",
                       help="the depth sweep as an animated GIF")  # fmt: skip
    mp4: bool = option(False, label="MP4", help="also an MP4 (needs imageio-ffmpeg)")
    fps: float = option(4.0, lo=0.1, hi=60.0, step=0.5, unit="fps", help="sweep frames per second")
    max_side: int | None = option(
        1024, lo=16, hi=1 << 16, step=16, unit="px", parse=parse_max_side, label="Frame size",
        help="sweep frame side cap; 0: full resolution",
    )  # fmt: skip
    alpha: float = option(
        0.6, lo=0.0, hi=1.0, step=0.05, label="Ink opacity", help="opacity of certain ink"
    )
    threshold: float | None = option(
        None, lo=0.0, hi=1.0, step=0.01, help="draw no ink below this probability"
    )
    underlay: str = option(
        "middle", choices=UNDERLAYS,
        help="volume layer under each window: its centre (middle; where napari's overlay "
        "shows it), its first layer (start), or none",
    )  # fmt: skip
    label: bool = option(True, flags={"--no-label": (False, "no 'centre (layers)' caption")},
                         label="caption",
                         help="a 'centre c (layers a-b)' caption on each frame")  # fmt: skip
    segment: str | None = option(None, help="the segment, if it moved since predict")

    settings_name: ClassVar[str] = "export settings"

    def __post_init__(self) -> None:
        set_ = functools.partial(object.__setattr__, self)
        set_("prediction", str(self.prediction))
        set_("out_dir", str(self.out_dir))
        images = (self.images,) if isinstance(self.images, str) else tuple(self.images or ())
        images = tuple(dict.fromkeys("tif" if f == "tiff" else str(f).lower() for f in images))
        bad = [f for f in images if f not in IMAGE_FORMATS]
        if bad:
            raise ConfigError(f"image format {bad[0]!r}: use png or tif")
        set_("images", images)
        if not (images or self.gif or self.mp4):
            raise ConfigError("nothing to export: choose PNG, TIFF, GIF or MP4")
        if not self.fps > 0:
            raise ConfigError(f"fps {self.fps}: must be > 0")
        check_sweep(self.alpha, self.threshold, self.max_side, self.underlay)
        if self.mp4:
            require_ffmpeg()

    @property
    def name(self) -> str:
        """The file name stem shared by all outputs (the prediction's name)."""
        return Path(self.prediction).name.split(".")[0]


@dataclass(frozen=True)
class FrameRendered:
    """A sweep frame is rendered and handed to the GIF/MP4 writers: the window at
    ``start_layer``, drawn over (and named by) its centre layer ``centre_layer``."""

    start_layer: int
    done: int
    total: int
    centre_layer: int | None = None


@dataclass(frozen=True)
class FileWritten:
    """A file is complete on disk."""

    path: Path
    done: int
    total: int


def export_config(prediction: str | Path, out_dir: str | Path, **settings: Any) -> ExportConfig:
    """An :class:`ExportConfig` from keyword settings (scripts, tests); an unknown setting is
    a ``ConfigError`` (a typo would otherwise be a bare ``TypeError``)."""
    return ExportConfig.from_dict(
        {"prediction": str(prediction), "out_dir": str(out_dir), **settings}
    )

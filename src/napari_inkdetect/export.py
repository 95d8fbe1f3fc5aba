"""Export a prediction: images per start layer, the max projection, and the depth sweep as an
animated GIF / MP4 with the volume underneath.

``export(config, stop)`` is one generator of typed events (:class:`FrameRendered` per sweep
frame, :class:`FileWritten` per file) that returns the written paths; the CLI, tests and the
Export dock drain it. The pieces work alone too: :func:`render_sweep` yields RGB frames,
:func:`write_gif` / :func:`write_mp4` write any frames.

Design
------
- *Frames*: frame ``i`` shows the prediction of start layer ``s = start_layers[i]`` (the
  window ``[s, s + layers)``) blended over one layer of the volume: by default the window's
  centre ``c = s + layers // 2``, the layer the napari overlay puts it on and the depth slider
  shows it at (:func:`napari_inkdetect.windows.window_centre`); ``underlay="start"`` shows
  layer ``s``. The volume is scaled to 0..1 with the
  segment's contrast limits (the same for every frame, so the sweep does not flicker), and
  the ink colour is mixed in with weight ``alpha x p``: papyrus stays visible, ink stands out.
- *Memory*: a 13k x 17k region is reduced to at most ``max_side`` pixels a side by block means
  while it is read: the volume one layer at a time in bands of rows, the prediction one zarr
  chunk at a time (each chunk read once). Nothing larger than a band or a chunk is held.
- *Files*: every file goes through a temporary file in the same folder and a rename, so a
  crash or a stop never leaves a half-written GIF or MP4.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from napari_inkdetect.errors import ConfigError, SegmentError
from napari_inkdetect.io.atomic import atomic_path, make_folder
from napari_inkdetect.io.segment import Segment, open_segment
from napari_inkdetect.windows import window_centre

__all__ = [
    "INK_COLOR",
    "ExportConfig",
    "FileWritten",
    "FrameRendered",
    "export",
    "export_all",
    "render_sweep",
    "run_export",
    "write_gif",
    "write_mp4",
]

INK_COLOR = (255, 42, 42)  # the labels' ink red
IMAGE_FORMATS = ("png", "tif")
UNDERLAYS = ("middle", "start", "none")
BAND_PIXELS = 1 << 22  # volume pixels per band read (8 MB of uint16)
MP4_HINT = "MP4 export needs imageio-ffmpeg: pip install imageio-ffmpeg"


# --------------------------------------------------------------------------- config + events


@dataclass(frozen=True)
class ExportConfig:
    """One export, as plain data.

    ``images`` are the formats (``"png"``, ``"tif"``) of the per-start-layer images, named
    ``<name>_z<start>.<format>``; ``max_projection`` adds ``<name>_max.<format>`` in each of
    them. ``gif`` / ``mp4`` write the depth sweep ``<name>_sweep.gif`` / ``.mp4`` at ``fps``
    frames per second, at most ``max_side`` pixels a side (None: full resolution). ``segment``
    overrides the segment path recorded in the prediction (a moved segment); the other sweep
    settings are those of :func:`render_sweep`.
    """

    prediction: str
    out_dir: str
    images: tuple[str, ...] = ("png",)
    max_projection: bool = True
    gif: bool = True
    mp4: bool = False
    fps: float = 4.0
    max_side: int | None = 1024
    alpha: float = 0.6
    threshold: float | None = None
    underlay: str = "middle"
    label: bool = True
    segment: str | None = None

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
        _check_sweep(self.alpha, self.threshold, self.max_side, self.underlay)
        if self.mp4:
            _require_ffmpeg()

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


# --------------------------------------------------------------------------- the sweep


@dataclass(frozen=True)
class _Sweep:
    """What a sweep reads, resolved and checked before the first frame."""

    prob: Any  # zarr (n_start, H, W)
    start_layers: tuple[int, ...]
    layers: int  # window length: the window at s is centred on s + layers // 2
    span: int  # source layers per window
    box: tuple[int, int, int, int]  # in prediction pixels
    offset: tuple[int, int]  # volume pixel of prediction pixel (0, 0)
    factor: int
    segment: Segment | None
    limits: tuple[float, float]


def render_sweep(
    prediction: str | Path,
    *,
    segment: str | Path | Segment | None = None,
    region: tuple[int, int, int, int] | None = None,
    threshold: float | None = None,
    alpha: float = 0.6,
    color: tuple[int, int, int] = INK_COLOR,
    max_side: int | None = 1024,
    underlay: str = "middle",
    label: bool = True,
) -> Iterator[np.ndarray]:
    """RGB ``uint8`` frames ``(h, w, 3)``, one per start layer, of a prediction over its volume.

    Parameters
    ----------
    prediction : a prediction zarr written by :func:`napari_inkdetect.inference.predict`.
    segment : the volume underneath; default the segment recorded in the prediction.
    region : ``(y0, x0, y1, x1)`` in volume pixels, inside the prediction's region
        (default: all of it).
    threshold : probabilities below it are not drawn (default: all are, weighted by ``p``).
    alpha : opacity of certain ink (``p = 1``); the colour's weight is ``alpha x p``.
    color : the ink colour.
    max_side : frames are block means at most this many pixels a side (None: full size).
    underlay : the volume layer under start layer ``s``: ``"middle"``, its window's centre
        ``s + layers // 2`` (where the overlay and the depth slider show it), ``"start"``
        (``s`` itself) or ``"none"`` (black; no segment needed).
    label : draw ``centre c (layers a-b)`` (the layers the window reads) in the top-left.

    Errors (missing prediction or segment, bad region) are raised here, before any frame.
    """
    _check_sweep(alpha, threshold, max_side, underlay)
    sweep = _plan(prediction, segment, region, max_side, underlay)
    return _frames(sweep, threshold, alpha, np.asarray(color, np.float32) / 255, underlay, label)


def _check_sweep(alpha: float, threshold: float | None, max_side: int | None, underlay: str):
    if not 0 <= alpha <= 1:
        raise ConfigError(f"alpha {alpha}: must lie in 0..1")
    if threshold is not None and not 0 <= threshold <= 1:
        raise ConfigError(f"threshold {threshold}: must lie in 0..1 (a probability)")
    if max_side is not None and max_side < 16:
        raise ConfigError(f"max_side {max_side}: must be at least 16 pixels (or None)")
    if underlay not in UNDERLAYS:
        raise ConfigError(f"underlay {underlay!r}: use {', '.join(UNDERLAYS)}")


def _plan(prediction, segment, region, max_side, underlay) -> _Sweep:
    prob, prov = _open_prediction(prediction)
    py0, px0, py1, px1 = (int(v) for v in prov["region"])
    y0, x0, y1, x1 = (py0, px0, py1, px1) if region is None else (int(v) for v in region)
    if not (py0 <= y0 < y1 <= py1 and px0 <= x0 < x1 <= px1):
        raise ConfigError(
            f"region (y0, x0, y1, x1) = {tuple(region)} is not inside the prediction's region "
            f"{(py0, px0, py1, px1)}"
        )
    longest = max(y1 - y0, x1 - x0)
    seg = None if underlay == "none" else _open_segment(prediction, prov, segment)
    return _Sweep(
        prob=prob,
        start_layers=tuple(int(s) for s in prov["start_layers"]),
        layers=int(prov["window_length"]),
        span=int(prov.get("source_layers") or prov["window_length"]),
        box=(y0 - py0, x0 - px0, y1 - py0, x1 - px0),
        offset=(py0, px0),
        factor=1 if max_side is None else max(1, math.ceil(longest / max_side)),
        segment=seg,
        limits=(0.0, 1.0) if seg is None else seg.contrast_limits(),
    )


def _open_prediction(path: str | Path) -> tuple[Any, dict[str, Any]]:
    # imported here: the inference engine imports torch, which an export does not need
    from napari_inkdetect.inference import open_prediction

    return open_prediction(path)


def _open_segment(prediction: Any, prov: dict[str, Any], segment: Any) -> Segment:
    if isinstance(segment, Segment):
        seg = segment
    else:
        path = Path(segment or prov["segment"])
        if not path.exists():
            raise SegmentError(
                f"{path}: the segment under prediction {Path(prediction).name} is not there "
                "(moved?); give its new path, or export without the volume underneath"
            )
        reverse = bool(prov.get("config", {}).get("segment_reverse", False))
        seg = open_segment(path, reverse=reverse)
    expected = prov.get("fingerprint", {}).get("segment_shape")
    if expected and tuple(expected) != seg.shape:
        raise SegmentError(
            f"{seg.path}: volume of shape {seg.shape}, but prediction {Path(prediction).name} "
            f"was made on one of shape {tuple(expected)}"
        )
    return seg


def _frames(sweep: _Sweep, threshold, alpha, color, underlay, label) -> Iterator[np.ndarray]:
    peak = 255.0 if sweep.prob.dtype == np.uint8 else 1.0
    probs = _prediction_means(sweep) / peak
    if threshold is not None:
        probs[probs < threshold] = 0
    for i, start in enumerate(sweep.start_layers):
        gray = _volume_layer(sweep, start, underlay, probs.shape[1:])
        weight = np.clip(probs[i], 0, 1)[..., None] * alpha
        rgb = gray[..., None] * (1 - weight) + color * weight
        frame = np.rint(np.clip(rgb, 0, 1) * 255).astype(np.uint8)
        if label:
            centre = window_centre(start, sweep.layers)
            first = centre - sweep.span // 2  # layers read: [s, s + layers) unless depth-scaled
            frame = _caption(frame, f"centre {centre} (layers {first}-{first + sweep.span - 1})")
        yield frame


def _prediction_means(sweep: _Sweep) -> np.ndarray:
    """Block means ``(n_start, h, w)`` of the prediction's box, reading each zarr chunk once."""
    y0, x0, y1, x1 = sweep.box
    cy, cx = sweep.prob.chunks[1:]

    def read(ys: slice, xs: slice) -> np.ndarray:
        return sweep.prob[:, y0 + ys.start : y0 + ys.stop, x0 + xs.start : x0 + xs.stop]

    rows = _edges(y0, y1, cy)
    cols = _edges(x0, x1, cx)
    return _block_means(read, (y1 - y0, x1 - x0), sweep.factor, rows, cols)


def _volume_layer(sweep: _Sweep, start: int, underlay: str, shape: tuple[int, int]) -> np.ndarray:
    """The layer under a start layer, block-averaged band by band and scaled to 0..1."""
    if sweep.segment is None:
        return np.zeros(shape, np.float32)
    nz = sweep.segment.shape[0]
    z = min(window_centre(start, sweep.layers) if underlay == "middle" else start, nz - 1)
    by0, bx0, by1, bx1 = sweep.box
    vy, vx = sweep.offset[0] + by0, sweep.offset[1] + bx0
    h, w = by1 - by0, bx1 - bx0

    def read(ys: slice, xs: slice) -> np.ndarray:
        block = sweep.segment.read_block(
            (z, z + 1), (vy + ys.start, vy + ys.stop), (vx + xs.start, vx + xs.stop)
        )
        return block[0]

    f = sweep.factor
    band = max(f, BAND_PIXELS // max(w, 1) // f * f)
    means = _block_means(read, (h, w), f, [*range(0, h, band), h], [0, w])
    low, high = sweep.limits
    return np.clip((means - low) / (high - low), 0, 1)


def _edges(c0: int, c1: int, chunk: int) -> list[int]:
    """Tile edges of ``[c0, c1)`` (relative to ``c0``) at the array's chunk boundaries."""
    inner = range((c0 // chunk + 1) * chunk, c1, chunk)
    return [0, *(c - c0 for c in inner), c1 - c0]


def _block_means(
    read: Callable[[slice, slice], np.ndarray],
    shape: tuple[int, int],
    factor: int,
    rows: list[int],
    cols: list[int],
) -> np.ndarray:
    """Means over ``factor`` x ``factor`` blocks (partial at the far edges) of an array read
    tile by tile (tiles need not align with blocks): ``(..., ceil(h/f), ceil(w/f))``."""
    h, w = shape
    out = None
    for ya, yb in itertools.pairwise(rows):
        for xa, xb in itertools.pairwise(cols):
            tile = read(slice(ya, yb), slice(xa, xb))
            sums = np.add.reduceat(tile, _starts(ya, yb, factor), axis=-2, dtype=np.float32)
            sums = np.add.reduceat(sums, _starts(xa, xb, factor), axis=-1)
            if out is None:
                out = np.zeros((*tile.shape[:-2], -(-h // factor), -(-w // factor)), np.float32)
            out[
                ..., ya // factor : (yb - 1) // factor + 1, xa // factor : (xb - 1) // factor + 1
            ] += sums
    counts = np.outer(_counts(h, factor), _counts(w, factor)).astype(np.float32)
    return out / counts


def _starts(a: int, b: int, factor: int) -> np.ndarray:
    """Offsets in ``[a, b)`` (relative to ``a``) where a new block begins."""
    first = -(-a // factor) * factor
    starts = np.arange(first, b, factor) - a
    return starts if first == a else np.concatenate([[0], starts])


def _counts(size: int, factor: int) -> np.ndarray:
    ends = np.minimum(np.arange(1, -(-size // factor) + 1) * factor, size)
    return np.diff(ends, prepend=0)


@functools.lru_cache(maxsize=8)
def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one small bitmap font
        return ImageFont.load_default()


def _caption(frame: np.ndarray, text: str) -> np.ndarray:
    """``text`` on a dark box in the top-left corner, scaled with the frame."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    size = max(10, round(max(frame.shape[:2]) / 48))
    pad = max(2, size // 4)
    left, top, right, bottom = draw.textbbox((pad * 2, pad * 2), text, font=_font(size))
    draw.rectangle((left - pad, top - pad, right + pad, bottom + pad), fill=(0, 0, 0))
    draw.text((pad * 2, pad * 2), text, fill=(255, 255, 255), font=_font(size))
    return np.asarray(image)


# --------------------------------------------------------------------------- writers


@contextlib.contextmanager
def _gif_sink(path: Path, fps: float, loop: int) -> Iterator[Callable[[np.ndarray], None]]:
    """``add(frame)`` per frame; the GIF is written when the block ends without error.

    Frames are kept as 256-colour palette images (1 byte a pixel) until then. Like every GIF
    writer, Pillow merges a frame identical to the one before into a longer frame.
    """
    from PIL import Image

    frames: list[Any] = []
    yield lambda frame: frames.append(Image.fromarray(frame).quantize(256))
    if not frames:
        raise ConfigError(f"{path}: no frames to write")
    with atomic_path(path) as tmp:
        frames[0].save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=frames[1:],
            duration=max(20, round(1000 / fps)),
            loop=loop,
        )


@contextlib.contextmanager
def _mp4_sink(path: Path, fps: float) -> Iterator[Callable[[np.ndarray], None]]:
    """``add(frame)`` streams each frame to ffmpeg (H.264, yuv420p: odd sizes are padded by
    one edge pixel); the file appears only when the block ends without error."""
    ffmpeg = _require_ffmpeg()
    writer, size = None, None
    with atomic_path(path) as tmp:

        def add(frame: np.ndarray) -> None:
            nonlocal writer, size
            h, w = frame.shape[:2]
            if size not in (None, (h, w)):
                raise ConfigError(
                    f"{path}: frame of {h} x {w} px after frames of {size[0]} x {size[1]} px"
                )
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
            if writer is None:
                size = (h, w)
                writer = ffmpeg.write_frames(
                    str(tmp), (frame.shape[1], frame.shape[0]), fps=fps, codec="libx264",
                    pix_fmt_in="rgb24", pix_fmt_out="yuv420p", macro_block_size=1, quality=8,
                )  # fmt: skip
                writer.send(None)
            writer.send(np.ascontiguousarray(frame))

        try:
            yield add
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            raise ConfigError(f"{path}: no frames to write")


def _require_ffmpeg() -> Any:
    try:
        import imageio_ffmpeg
    except ImportError:
        raise ConfigError(MP4_HINT) from None
    return imageio_ffmpeg


def write_gif(
    frames: Iterable[np.ndarray], path: str | Path, fps: float = 4, loop: int = 0
) -> Path:
    """An animated GIF of RGB ``uint8`` frames (``loop=0``: forever), written atomically."""
    path = Path(path)
    with _gif_sink(path, fps, loop) as add:
        for frame in frames:
            add(frame)
    return path


def write_mp4(frames: Iterable[np.ndarray], path: str | Path, fps: float = 4) -> Path:
    """An H.264 MP4 of RGB ``uint8`` frames (needs imageio-ffmpeg), written atomically."""
    path = Path(path)
    with _mp4_sink(path, fps) as add:
        for frame in frames:
            add(frame)
    return path


# --------------------------------------------------------------------------- the generator


class _Stopped(Exception):
    """Raised inside the writers' block so that they discard their unfinished files."""


def export(
    config: ExportConfig, stop: threading.Event | None = None
) -> Generator[FrameRendered | FileWritten, None, list[Path]]:
    """Export as ``config`` says, yielding events; returns the written paths.

    A set ``stop`` ends the export at the next frame or image format: finished files stay,
    an unfinished GIF/MP4 is discarded. Bad input is refused before anything is written.
    """
    from napari_inkdetect.inference import export_prediction

    stop = stop or threading.Event()
    _, prov = _open_prediction(config.prediction)
    frames = None
    if config.gif or config.mp4:  # its errors (a moved segment...) come before any write
        frames = render_sweep(
            config.prediction, segment=config.segment, threshold=config.threshold,
            alpha=config.alpha, max_side=config.max_side, underlay=config.underlay,
            label=config.label,
        )  # fmt: skip
    out_dir = _out_dir(Path(config.out_dir))
    n = len(prov["start_layers"])
    total = len(config.images) * (n + config.max_projection)
    total += (n + config.gif + config.mp4) if frames is not None else 0
    written: list[Path] = []
    for fmt in config.images:
        if stop.is_set():
            return written
        for path in export_prediction(config.prediction, out_dir, fmt, config.max_projection):
            written.append(path)
            yield FileWritten(path, len(written), total)
    if frames is not None and not stop.is_set():
        starts = [int(s) for s in prov["start_layers"]]
        centres = [window_centre(s, int(prov["window_length"])) for s in starts]
        written += yield from _sweep_files(
            config, out_dir, frames, list(zip(starts, centres, strict=True)), stop,
            len(written), total,
        )  # fmt: skip
    return written


def _sweep_files(
    config: ExportConfig,
    out_dir: Path,
    frames: Iterator[np.ndarray],
    windows: list[tuple[int, int]],
    stop: threading.Event,
    done: int,
    total: int,
) -> Generator[FrameRendered | FileWritten, None, list[Path]]:
    """Render the sweep once, feeding the GIF and the MP4 together; ``windows`` are the
    frames' ``(start layer, centre layer)``."""
    paths = [out_dir / f"{config.name}_sweep.{kind}" for kind in ("gif", "mp4")]
    paths = [p for p, on in zip(paths, (config.gif, config.mp4), strict=True) if on]
    try:
        with contextlib.ExitStack() as stack:
            sinks = [
                stack.enter_context(
                    _gif_sink(p, config.fps, 0) if p.suffix == ".gif" else _mp4_sink(p, config.fps)
                )
                for p in paths
            ]
            for (start, centre), frame in zip(windows, frames, strict=True):
                if stop.is_set():
                    raise _Stopped
                for add in sinks:
                    add(frame)
                done += 1
                yield FrameRendered(start, done, total, centre)
    except _Stopped:
        return []
    for path in paths:
        done += 1
        yield FileWritten(path, done, total)
    return paths


def _out_dir(path: Path) -> Path:
    return make_folder(path)


def run_export(
    config: ExportConfig,
    stop: threading.Event | None = None,
    on_event: Callable[[FrameRendered | FileWritten], None] | None = None,
) -> list[Path]:
    """Drain :func:`export`, handing each event to ``on_event`` (a progress bar); returns the
    written paths."""
    events = export(config, stop)
    while True:
        try:
            event = next(events)
        except StopIteration as finished:
            return finished.value
        if on_event is not None:
            on_event(event)


def export_all(prediction: str | Path, out_dir: str | Path, **settings: Any) -> list[Path]:
    """Export with :class:`ExportConfig` ``settings`` (scripts, tests); returns the written
    paths: images per start layer and max projection, then GIF / MP4."""
    unknown = set(settings) - {f.name for f in fields(ExportConfig)}
    if unknown:
        raise ConfigError(f"unknown export settings: {', '.join(sorted(unknown))}")
    return run_export(ExportConfig(str(prediction), str(out_dir), **settings))

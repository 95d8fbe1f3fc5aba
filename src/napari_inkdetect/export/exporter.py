"""``export(config, stop)``: the export engine.

It yields :class:`FrameRendered` per sweep frame and :class:`FileWritten` per file and returns
the written paths (the engine contract, :mod:`napari_inkdetect.engine`). Bad input is refused
before anything is written; a stop keeps finished files and discards an unfinished GIF/MP4.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Generator, Iterator
from pathlib import Path

import numpy as np

from napari_inkdetect.export.config import ExportConfig, FileWritten, FrameRendered
from napari_inkdetect.export.images import export_prediction
from napari_inkdetect.export.sweep import render_sweep
from napari_inkdetect.export.video import gif_sink, mp4_sink
from napari_inkdetect.io.atomic import make_folder
from napari_inkdetect.io.prediction_store import open_prediction
from napari_inkdetect.windows import window_centre

__all__ = ["export"]


class _Stopped(Exception):
    """Raised inside the writers' block so that they discard their unfinished files."""


def export(
    config: ExportConfig, stop: threading.Event | None = None
) -> Generator[FrameRendered | FileWritten, None, list[Path]]:
    """Export as ``config`` says, yielding events; returns the written paths.

    A set ``stop`` ends the export at the next frame or image format: finished files stay,
    an unfinished GIF/MP4 is discarded. Bad input is refused before anything is written.
    """
    stop = stop or threading.Event()
    _, prov = open_prediction(config.prediction)
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
                    gif_sink(p, config.fps, 0) if p.suffix == ".gif" else mp4_sink(p, config.fps)
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

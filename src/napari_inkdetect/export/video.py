"""Animated files from RGB frames: GIF (Pillow) and MP4 (imageio-ffmpeg, optional).

Every file goes through a temporary file in the same folder and a rename, so a crash or a stop
never leaves a half-written GIF or MP4.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from napari_inkdetect.errors import ConfigError
from napari_inkdetect.io.atomic import atomic_path

__all__ = ["MP4_HINT", "gif_sink", "mp4_sink", "require_ffmpeg", "write_gif", "write_mp4"]

MP4_HINT = "MP4 export needs imageio-ffmpeg: pip install imageio-ffmpeg"


@contextlib.contextmanager
def gif_sink(path: Path, fps: float, loop: int) -> Iterator[Callable[[np.ndarray], None]]:
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
def mp4_sink(path: Path, fps: float) -> Iterator[Callable[[np.ndarray], None]]:
    """``add(frame)`` streams each frame to ffmpeg (H.264, yuv420p: odd sizes are padded by
    one edge pixel); the file appears only when the block ends without error."""
    ffmpeg = require_ffmpeg()
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


def require_ffmpeg() -> Any:
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
    with gif_sink(path, fps, loop) as add:
        for frame in frames:
            add(frame)
    return path


def write_mp4(frames: Iterable[np.ndarray], path: str | Path, fps: float = 4) -> Path:
    """An H.264 MP4 of RGB ``uint8`` frames (needs imageio-ffmpeg), written atomically."""
    path = Path(path)
    with mp4_sink(path, fps) as add:
        for frame in frames:
            add(frame)
    return path

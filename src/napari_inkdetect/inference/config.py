"""``PredictConfig``: one prediction run as plain data, checked when it is made.

Where the run happens is part of the config (``in_child``, ``workers``, ``scheduler``), so one
:func:`~napari_inkdetect.inference.predict` serves the CLI, the docks and scripts alike.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from napari_inkdetect.errors import ConfigError
from napari_inkdetect.io.prediction_store import DTYPES
from napari_inkdetect.options import ConfigData, option

__all__ = ["PredictConfig", "parse_start_layers"]

_DIRECTIONS = ("auto", "forward", "reverse")
AUTOCAST = ("auto", "off", "bf16", "fp16")


def parse_region(text: str) -> tuple[int, int, int, int]:
    """``"Y0,X0,Y1,X1"`` -> four ints (``ConfigError`` otherwise)."""
    try:
        values = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise ConfigError(f"--region {text!r}: expected 4 comma-separated integers")
    return values  # type: ignore[return-value]


def parse_start_layers(value: Any) -> tuple[int, ...] | None:
    """``None``, an int, a list/range of ints, ``"a:b[:step]"`` or ``"a,b,c"`` -> a tuple
    (``ConfigError`` for anything else: start layers and window centres alike)."""
    if value is None:
        return None
    try:
        if isinstance(value, str):
            text = value.strip()
            if ":" in text:
                parts = [int(p) for p in text.split(":")]
                return tuple(range(*parts))
            return tuple(int(p) for p in text.split(",") if p.strip())
        if isinstance(value, int | np.integer):
            return (int(value),)
        return tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"layers {value!r}: expected A:B[:STEP], A,B,C or one layer (integers)"
        ) from None


@dataclass(frozen=True)
class PredictConfig(ConfigData):
    """One prediction run, as plain data (JSON-able through :meth:`to_dict`).

    ``region`` is ``(y0, x0, y1, x1)`` in volume pixels (default: the mask's bounding box, or
    the whole image); ``tile`` and ``stride`` are model pixels (defaults: the checkpoint's tile,
    half of it); ``chunk`` is the output chunk side in volume pixels (default: about 8 tiles,
    rounded to the stride); ``layers``/``scale`` override what the checkpoint says;
    ``depth_direction`` ``"auto"`` follows the checkpoint's ``depth_reverse``.
    ``start_layers`` or, instead, ``centre_layers`` choose the windows (the window centred on
    ``c`` starts at ``c - layers // 2``); neither: the checkpoint's window, else the centred one.
    """

    segment: str = option(positional=True, help="the segment (folder, TIFF stack or zarr)")
    checkpoint: str = option(required=True, help="the model (safetensors or a foreign checkpoint)")
    out: str = option(required=True, help="output zarr (resumed if it exists)")
    region: tuple[int, int, int, int] | None = option(
        None, parse=parse_region, metavar="Y0,X0,Y1,X1",
        help="in volume pixels (default: the mask's bounding box)",
    )  # fmt: skip
    start_layers: tuple[int, ...] | None = option(
        None, parse=parse_start_layers, metavar="LAYERS", exclusive="windows",
        help="first layers of the windows: A:B[:STEP], A,B,C or Z (default: the checkpoint's)",
    )  # fmt: skip
    centre_layers: tuple[int, ...] | None = option(
        None, parse=parse_start_layers, metavar="CENTRES", exclusive="windows",
        help="centre layers of the windows instead (the window centred on C starts at "
        "C - layers // 2; where the depth slider shows it): A:B[:STEP], A,B,C or C",
    )  # fmt: skip
    tile: int | None = option(
        None,
        lo=16,
        hi=1024,
        unit="px",
        help="model tile side in model pixels (default: the checkpoint's)",
    )
    stride: int | None = option(
        None, lo=1, hi=1024, step=16, unit="px", help="in model pixels (default: tile / 2)"
    )
    layers: int | None = option(
        None, lo=1, hi=256, help="window length in layers (default: the checkpoint's)"
    )
    scale: float | None = option(
        None,
        lo=0.05,
        hi=20.0,
        step=0.01,
        help="model px per volume px (default: the checkpoint's)",
    )
    batch_size: int = option(8, lo=1, hi=4096, unit="windows", help="windows per model call")
    device: str = option("auto", help="auto (CUDA, MPS, CPU), cpu, cuda:N, mps")
    autocast: str = option("auto", choices=AUTOCAST, help="mixed precision")
    channels_last: bool | None = option(
        None, help="channels-last memory format (default: on CUDA only; no gain on CPUs)"
    )
    tta_flips: bool = option(False, help="also average flipped windows (4x the work)")
    tta_rot90: bool = option(False, help="also average 90-degree rotations (4x the work)")
    depth_direction: str = option(
        "auto", choices=_DIRECTIONS, label="Depth order",
        flags={"--reverse": ("reverse", "flip each window's depth order"),
               "--forward": ("forward", "keep the depth order even if the checkpoint flips it")},
        help="auto follows the checkpoint; reverse flips each window's layer order",
    )  # fmt: skip
    segment_reverse: bool = option(False, help="read the segment's layers in reverse order")
    dtype: str = option(
        "uint8", choices=DTYPES, label="Stored as", help="stored as p x 255 (uint8) or float16"
    )
    chunk: int | None = option(
        None,
        lo=16,
        hi=1 << 16,
        step=16,
        unit="px",
        help="output chunk side in volume px (default: about 8 tiles)",
    )
    prefetch: int = option(
        2, lo=1, hi=64, unit="batches", help="batches read ahead while the model runs"
    )
    overwrite: bool = option(
        False, form=False, help="replace a prediction made differently",
        why="the dock names each prediction's zarr by a digest of its settings: one made "
        "differently goes to another zarr",
    )  # fmt: skip
    chunk_events: bool = option(
        True, cli=False, form=False,
        why="how a run reports, not what it computes: the CLI turns it off, a viewer on",
        help="a ChunkDone per written chunk (a viewer draws it)",
    )  # fmt: skip
    # where it runs: this process (default), a spawned child, or a dask cluster
    in_child: bool = option(
        False, cli=False, form=False,
        why="a command is its own process already; the Predict dock runs it in a thread",
        help="run in a spawned process (the GUI's interpreter stays free)",
    )  # fmt: skip
    workers: int | None = option(
        None, lo=1, hi=1024, metavar="N", exclusive="cluster",
        help="start N dask worker processes here (one per GPU on CUDA)",
    )  # fmt: skip
    scheduler: str | None = option(
        None, metavar="ADDRESS", exclusive="cluster",
        help="run on the dask cluster at ADDRESS (paths must be on shared storage)",
    )  # fmt: skip

    settings_name: ClassVar[str] = "prediction settings"

    def __post_init__(self) -> None:
        set_ = functools.partial(object.__setattr__, self)
        set_("segment", str(self.segment))
        set_("checkpoint", str(self.checkpoint))
        set_("out", str(self.out))
        set_("start_layers", parse_start_layers(self.start_layers))
        set_("centre_layers", parse_start_layers(self.centre_layers))
        if self.start_layers is not None and self.centre_layers is not None:
            raise ConfigError("give start layers or window centres, not both")
        if self.region is not None:
            if len(self.region) != 4:
                raise ConfigError(f"region {self.region}: expected (y0, x0, y1, x1)")
            set_("region", tuple(int(v) for v in self.region))
        if self.dtype not in DTYPES:
            raise ConfigError(f"output dtype {self.dtype!r}: use uint8 or float16")
        if self.depth_direction not in _DIRECTIONS:
            raise ConfigError(
                f"depth_direction {self.depth_direction!r}: use auto/forward/reverse"
            )
        if self.batch_size < 1 or self.prefetch < 1:
            raise ConfigError("batch_size and prefetch must be >= 1")
        if self.start_layers is not None and not self.start_layers:
            raise ConfigError("start_layers is empty")
        if self.centre_layers is not None and not self.centre_layers:
            raise ConfigError("centre_layers is empty")
        if self.workers is not None and self.scheduler is not None:
            raise ConfigError(
                "give either workers (start a local cluster) or a scheduler, not both"
            )
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"workers = {self.workers}: need at least 1")

    @property
    def on_cluster(self) -> bool:
        """Whether dask workers compute the chunks (``workers`` or ``scheduler`` set)."""
        return self.workers is not None or self.scheduler is not None

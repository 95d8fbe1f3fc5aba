"""``napari-inkdetect predict``: its flags are the fields of :class:`PredictConfig`
(:mod:`napari_inkdetect.options`), plus ``--tta``, ``--format`` and ``--quiet``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from napari_inkdetect.cli._common import say, span, window_length, window_summary
from napari_inkdetect.engine import drain
from napari_inkdetect.inference.config import PredictConfig
from napari_inkdetect.options import add_arguments, given

__all__ = ["add_predict"]


def add_predict(sub) -> None:
    """The ``predict`` subcommand."""
    p = sub.add_parser(
        "predict",
        help="predict ink across start layers into a zarr",
        description="Sliding-window ink prediction, one map per start layer.",
    )
    p.set_defaults(run=_predict)
    add_arguments(p, PredictConfig)
    p.add_argument("--tta", action="store_true", help="average flips and 90-degree rotations")
    p.add_argument(
        "--format",
        default="zarr",
        choices=("zarr", "tif", "png"),
        help="also export one image per start layer and a max projection",
    )
    p.add_argument("--quiet", action="store_true")


def _predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from napari_inkdetect.export import ExportConfig, export
    from napari_inkdetect.inference import (
        BatchDone,
        ClusterReady,
        PredictBatchHalved,
        PredictStarted,
        predict,
    )

    config = PredictConfig(**given(args, PredictConfig), chunk_events=False)
    if args.tta:  # --tta: both kinds of test-time augmentation
        config = config.with_(tta_flips=True, tta_rot90=True)
    bar = None

    def show(event: Any) -> None:
        nonlocal bar
        if isinstance(event, PredictStarted):
            bar = tqdm(total=event.total_tiles, unit="tile", disable=args.quiet,
                       dynamic_ncols=True)  # fmt: skip
            say(bar, args.quiet, f"{event.path}: {event.shape} on {event.device}, "
                 f"start layers {span(event.start_layers)}, "
                 f"{event.done_chunks}/{event.total_chunks} chunks already done")  # fmt: skip
            say(bar, False, window_summary(event.start_layers, window_length(event.path)))
        elif isinstance(event, ClusterReady):
            where = "local cluster" if event.local else "cluster"
            say(bar, args.quiet, f"{where} {event.address}, dashboard: "
                 f"{event.dashboard_link or '- (install bokeh)'}")  # fmt: skip
        elif isinstance(event, PredictBatchHalved):  # said even when quiet: it is slower now
            say(bar, False, f"out of device memory: {event.new_batch} windows per model call")
        elif isinstance(event, BatchDone) and bar is not None:
            bar.n = event.done
            bar.set_postfix(tiles_s=f"{event.tiles_per_s:.1f}")
            bar.refresh()

    finished = drain(predict(config), show)
    if bar is not None:
        bar.close()
    print(f"{finished.path}: {finished.tiles} tiles in {finished.seconds:.1f} s "
          f"({finished.tiles_per_s:.1f} tiles/s)")  # fmt: skip
    if args.format != "zarr":
        out = Path(config.out)
        folder = out.with_name(out.name.split(".")[0] + f"_{args.format}")
        images = ExportConfig(config.out, str(folder), images=(args.format,), gif=False)
        files = drain(export(images))
        print(f"{len(files)} images in {folder}")
    return 0

"""``napari-inkdetect train``: its flags are the fields of :class:`TrainConfig`
(:mod:`napari_inkdetect.options`), plus ``--centre-layer``, ``--gpus`` and ``--quiet``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from napari_inkdetect.cli._common import (
    EXIT_INPUT_ERROR,
    PresetHelp,
    say,
    window_summary,
)
from napari_inkdetect.engine import drain
from napari_inkdetect.errors import ConfigError, InkDetectError
from napari_inkdetect.options import add_arguments, command_line, given
from napari_inkdetect.training.config import TrainConfig

__all__ = ["add_train"]


def add_train(sub) -> None:
    """The ``train`` subcommand."""
    p = sub.add_parser(
        "train",
        help="finetune an ink model on painted labels",
        description="Finetune an ink detector on sparse labels (1 ink, 2 not ink).",
        formatter_class=PresetHelp,
    )
    p.set_defaults(run=_train, train_parser=p)
    groups = add_arguments(p, TrainConfig)
    groups["window"].add_argument(
        "--centre-layer",
        type=int,
        metavar="C",
        help="centre layer of the window instead of --start-layer: it starts at "
        "C - layers // 2 (22 layers: C - 11); the layer where the depth slider shows the "
        "crackle (default: the centre of the volume's depth)",
    )
    p.add_argument(
        "--gpus",
        type=int,
        metavar="N",
        help="train on N GPUs (DistributedDataParallel via torchrun; --batch-size is the "
        "global batch); with --device cpu: N CPU processes (gloo), for testing (default: one "
        "process)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _train(args: argparse.Namespace) -> int:
    """Train as the flags say: one process, ``--gpus N`` of them, or one rank of torchrun."""
    from tqdm import tqdm

    from napari_inkdetect.training import (
        StepDone,
        TrainConfig,
        TrainFinished,
        TrainStarted,
        Validated,
        ValidationPlanned,
        train,
    )
    from napari_inkdetect.training.distributed import Distributed, launch
    from napari_inkdetect.training.preflight import preflight

    config = TrainConfig(**given(args, TrainConfig))
    try:  # a new user's mistakes (nothing painted, window past the last layer...) at once
        if args.centre_layer is not None:
            config = _centred_on(config, args.centre_layer)
        preflight(config)
    except InkDetectError:
        if Distributed.from_env().is_main:  # under torchrun rank 0 alone reports
            raise
        return EXIT_INPUT_ERROR
    if args.gpus is not None:  # the same command, minus --gpus, in N processes
        argv = ["train", *command_line(args.train_parser, args, drop=("gpus",))]
        return launch(args.gpus, argv, _launch_batch(config, args.gpus))
    if not Distributed.from_env().is_main:  # under torchrun rank 0 alone reports (errors too)
        try:
            drain(train(config))
        except InkDetectError:
            return EXIT_INPUT_ERROR
        return 0
    bar = None

    def show(event: Any) -> None:
        nonlocal bar
        if isinstance(event, TrainStarted):
            for note in event.notes:  # what was taken from --init or a preset: even if quiet
                print(note)
            if event.config.start_layer is not None:
                print(window_summary([event.config.start_layer], event.config.layers))
        elif isinstance(event, StepDone):
            if bar is None:
                bar = tqdm(total=event.total, initial=event.step - 1, unit="step",
                           disable=args.quiet, dynamic_ncols=True)  # fmt: skip
            bar.update(1)
            bar.set_postfix(loss=f"{event.loss:.4f}", tiles_s=f"{event.tiles_per_s:.1f}")
        elif isinstance(event, ValidationPlanned):
            say(bar, args.quiet, event.summary)
        elif isinstance(event, Validated):
            say(bar, args.quiet, f"step {event.step}: F0.5 {event.f05:.3f} at 0.5, "
                 f"best {event.best_f05:.3f} at {event.best_threshold:.2f}, chance "
                 f"{event.chance_f05:.3f} ({event.n_groups} held-out groups, {event.n_ink} ink / "
                 f"{event.n_not_ink} not-ink px)")  # fmt: skip
        elif isinstance(event, TrainFinished):
            if bar is not None:
                bar.close()
            state = "stopped" if event.stopped else "finished"
            print(f"{state} after {event.steps} steps in {event.seconds:.0f} s")
            print(f"best: {event.best_path}\nlast: {event.last_path}")

    drain(train(config), show)
    return 0


def _centred_on(config, centre: int):
    """``config`` with the start layer of the window centred on ``centre``, its length
    resolved as the run resolves it (``--layers``, else the ``--init`` checkpoint's, else 22);
    a centre whose window does not fit in the volume is refused in centres."""
    from napari_inkdetect.io.segment import open_segment
    from napari_inkdetect.training.preflight import preflight
    from napari_inkdetect.windows import centre_bounds, window_start

    layers = config.layers or preflight(config, read_labels=False).layers
    depth = int(open_segment(config.segment).shape[0])  # headers only
    lo, hi = centre_bounds(depth, layers)
    start = window_start(centre, layers)
    if not lo <= centre <= hi:
        raise ConfigError(
            f"--centre-layer {centre}: the {layers}-layer window centred there is layers "
            f"{start}..{start + layers - 1}, outside the volume's {depth} layers "
            f"(0..{depth - 1}); use a centre in {lo}..{hi}, or fewer layers"
        )
    return config.with_(start_layer=start)


def _launch_batch(config, processes: int):
    """``config`` with the batch each process will resolve (a resumed run's recorded one,
    else the multi-GPU or CPU preset's), for the launcher to check that it splits."""
    if config.batch_size is not None:
        return config
    import json

    from napari_inkdetect.training.presets import pick_preset

    batch = None
    if config.resume:
        try:
            batch = json.loads((Path(config.out) / "config.json").read_text())["batch_size"]
        except (OSError, ValueError, KeyError, TypeError):
            batch = None  # the processes report what is wrong with the run folder
    if not isinstance(batch, int):
        batch = pick_preset(config.device, processes=max(1, processes))[0].batch_size
    return config.with_(batch_size=batch)

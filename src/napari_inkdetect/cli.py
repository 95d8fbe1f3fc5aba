"""The ``napari-inkdetect`` command line.

Every subcommand turns the package's own errors into one line on stderr and exit status 1;
a traceback reaching the user is a bug.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from napari_inkdetect.errors import InkDetectError

EXIT_INPUT_ERROR = 1
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of ``python -m napari_inkdetect``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 0
    try:
        return int(args.run(args) or 0)
    except InkDetectError as exc:
        print(f"napari-inkdetect: error: {exc}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except OSError as exc:  # a disk or path problem no layer put into words: still one line
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"napari-inkdetect: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        print("napari-inkdetect: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-inkdetect", description="Find ink in Herculaneum scroll segments."
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add(sub, "sample", "write the synthetic crackle segment in a real segment's layout", _sample)
    _add(sub, "info", "describe a surface volume (layout, shape, dtype, voxel size)", _info)
    _add(sub, "view", "open napari with a segment (default: the sample) and the plugin", _view)
    _add(sub, "models", "list the model architectures with parameters and FLOPs", _models)
    _add_train(sub)
    _add_predict(sub)
    _add_evaluate(sub)
    _add_export(sub)
    return parser


def _add_predict(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="predict ink across start layers into a zarr",
        description="Sliding-window ink prediction, one map per start layer.",
    )
    p.set_defaults(run=_predict)
    p.add_argument("segment", type=Path)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="output zarr (resumed if it exists)")
    windows = p.add_mutually_exclusive_group()
    windows.add_argument(
        "--start-layers",
        help="first layers of the windows: A:B[:STEP], A,B,C or Z (default: the checkpoint's)",
    )
    windows.add_argument(
        "--centre-layers",
        metavar="CENTRES",
        help="centre layers of the windows instead (the window centred on C starts at "
        "C - layers // 2; where the depth slider shows it): A:B[:STEP], A,B,C or C",
    )
    p.add_argument("--region", help="Y0,X0,Y1,X1 in volume pixels (default: mask bounding box)")
    p.add_argument("--stride", type=int, help="in model pixels (default: tile / 2)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--autocast", default="auto", choices=("auto", "off", "bf16", "fp16"))
    p.add_argument("--tta", action="store_true", help="average flips and 90-degree rotations")
    p.add_argument("--reverse", action="store_true", help="flip each window's depth order")
    p.add_argument(
        "--format",
        default="zarr",
        choices=("zarr", "tif", "png"),
        help="also export one image per start layer and a max projection",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace a prediction made differently"
    )
    cluster = p.add_mutually_exclusive_group()
    cluster.add_argument(
        "--workers", type=int, help="start N dask worker processes here (one per GPU on CUDA)"
    )
    cluster.add_argument(
        "--scheduler", help="run on the dask cluster at ADDRESS (paths must be on shared storage)"
    )
    p.add_argument("--quiet", action="store_true")


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a prediction against labels (F0.5, P, R)",
        description="F0.5, precision and recall of a prediction on sparse labels.",
    )
    p.set_defaults(run=_evaluate)
    p.add_argument("prediction", type=Path, help="a predict zarr, or a probability PNG/TIFF")
    p.add_argument("--truth", type=Path, required=True, help="labels (sparse 0/1/2 or binary)")
    p.add_argument("--region-mask", type=Path, help="only pixels inside this mask count")
    p.add_argument("--start-layer", type=int, help="score only this start layer")
    p.add_argument(
        "--threshold",
        type=float,
        help="ink from this probability (default: the threshold the prediction's checkpoint "
        "was calibrated at on its validation region, else 0.5)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")


class _PresetHelp(argparse.HelpFormatter):
    """Fills ``{preset:FIELD}`` in help texts from the device presets table, only when help
    is shown: building the parser stays free of torch (which the table's package imports)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = super()._get_help_string(action) or ""
        if "{preset:" not in text:
            return text
        from napari_inkdetect.training.presets import preset_help

        return re.sub(r"\{preset:(\w+)\}", lambda m: preset_help(m.group(1)), text)


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="finetune an ink model on painted labels",
        description="Finetune an ink detector on sparse labels (1 ink, 2 not ink).",
        formatter_class=_PresetHelp,
    )
    p.set_defaults(run=_train, train_parser=p)
    p.add_argument("segment", type=Path)
    p.add_argument("--labels", type=Path, required=True, help="sparse 0/1/2 or binary PNG/TIFF")
    p.add_argument("--out", type=Path, required=True, help="run directory")
    p.add_argument("--val-labels", type=Path, help="held-out labels (default: automatic split)")
    model = p.add_mutually_exclusive_group()
    model.add_argument(
        "--init",
        type=Path,
        help="initial checkpoint (any kind load_checkpoint reads; default: a new model)",
    )
    init = "default: from --init checkpoint, else"
    model.add_argument(
        "--arch", help=f"architecture of a new model, see `models` ({init} {{preset:arch}})"
    )
    p.add_argument("--width", type=float, help=f"width multiplier ({init} {{preset:width}})")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--start-layer",
        type=int,
        help="first layer of the window (default: the window centred in the volume's depth)",
    )
    where.add_argument(
        "--centre-layer",
        type=int,
        metavar="C",
        help="centre layer of the window instead: it starts at C - layers // 2 (22 layers: "
        "C - 11); the layer where the depth slider shows the crackle (default: the centre "
        "of the volume's depth)",
    )
    p.add_argument("--layers", type=int, help=f"window length in layers ({init} 22)")
    p.add_argument(
        "--scale",
        type=float,
        help="in-plane scale, model px per volume px (default: from --init checkpoint and the "
        "voxel sizes, e.g. 2.44 for a 3.24 um Kaggle fold on 7.91 um scroll data, else 1.0)",
    )
    depth = p.add_mutually_exclusive_group()
    depth.add_argument(
        "--reverse", action="store_true", help=f"flip each window's depth order ({init} forward)"
    )
    depth.add_argument(
        "--forward", action="store_true", help="keep the depth order even if --init was reversed"
    )
    p.add_argument("--tile", type=int, help=f"tile size in model pixels ({init} {{preset:tile}})")
    p.add_argument(
        "--normalisation",
        choices=("uint16_shift8_clip", "percentile"),
        help=f"intensity normalisation ({init} uint16_shift8_clip: >>8, clip 50..200, /255)",
    )
    p.add_argument("--steps", type=int, help="optimiser steps (default: {preset:steps})")
    p.add_argument(
        "--batch-size",
        type=int,
        help="tiles per step, over all GPUs (default: {preset:batch_size})",
    )
    p.add_argument(
        "--lr",
        type=float,
        help="learning rate (default: a preset by where training starts: 1e-3 from scratch on "
        "the CPU, 3e-4 on a GPU, 1e-4 from a Kinetics encoder, 3e-5 from a trained ink model)",
    )
    p.add_argument(
        "--train-parts", default="all", help="all | decoder | decoder+last | ... (default: all)"
    )
    bn = p.add_mutually_exclusive_group()
    bn.add_argument(
        "--freeze-batchnorm",
        action="store_true",
        help="BatchNorm in eval mode, its statistics kept (default: from a trained ink model)",
    )
    bn.add_argument(
        "--train-batchnorm",
        action="store_true",
        help="BatchNorm trains (default: from scratch or from a Kinetics encoder)",
    )
    p.add_argument(
        "--val-every", type=int, default=100, help="validate every N steps (default: 100)"
    )
    p.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA, MPS, CPU), cpu, cuda:N, mps (default: auto); it picks the size "
        "preset: cpu for the CPU, gpu for CUDA or MPS, gpus with --gpus N on CUDA",
    )
    p.add_argument(
        "--autocast",
        default="auto",
        choices=("auto", "off", "bf16", "fp16"),
        help="mixed precision (default: auto)",
    )
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing")
    p.add_argument(
        "--gpus",
        type=int,
        metavar="N",
        help="train on N GPUs (DistributedDataParallel via torchrun; --batch-size is the "
        "global batch); with --device cpu: N CPU processes (gloo), for testing (default: one "
        "process)",
    )
    p.add_argument(
        "--sync-bn", action="store_true", help="with several GPUs: BatchNorm over all GPUs"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add(sub, name: str, help_text: str, run: Callable) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.set_defaults(run=run)
    if name == "sample":
        p.add_argument("out_dir", type=Path, help="folder to write <id>/layers/NN.tif etc. into")
        p.add_argument("--id", default="synthetic", help="segment id (folder and file prefix)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--shape", default="48,512,768", help="Z,Y,X (default 48,512,768)")
    elif name in ("info", "view"):
        p.add_argument("segment", nargs="?" if name == "view" else None, type=Path)
        p.add_argument("--reverse", action="store_true", help="flip the depth order")


def _sample(args: argparse.Namespace) -> int:
    from napari_inkdetect.synthetic import make_segment, write_segment

    shape = _parse_shape(args.shape)
    folder = write_segment(make_segment(shape=shape, seed=args.seed), args.out_dir, args.id)
    print(folder)
    return 0


def _parse_shape(text: str) -> tuple[int, int, int]:
    from napari_inkdetect.errors import ConfigError

    try:
        z, y, x = (int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--shape {text!r}: expected three integers Z,Y,X") from None
    if min(z, y, x) < 1:
        raise ConfigError(f"--shape {text!r}: sizes must be positive")
    return z, y, x


def _info(args: argparse.Namespace) -> int:
    from napari_inkdetect.io.segment import open_segment

    seg = open_segment(args.segment, reverse=args.reverse)
    nz, ny, nx = seg.shape
    print(f"segment   {seg.segment_id} ({seg.layout}) at {seg.path}")
    print(
        f"volume    {nz} layers x {ny} x {nx} px, {seg.dtype}, {seg.volume.nbytes / 2**30:.2f} GiB"
    )
    voxel = f"{seg.voxel_size_um} um" if seg.voxel_size_um else "unknown"
    print(f"voxel     {voxel}{'  (depth reversed)' if seg.reversed else ''}")
    print(f"mask      {seg.mask_path or '-'}")
    print(f"labels    {seg.inklabels_path or '-'}")
    for name, path in seg.other_labels.items():
        print(f"          {name}: {path}")
    return 0


def _view(args: argparse.Namespace) -> int:
    from napari_inkdetect._napari_app import run_viewer

    run_viewer(args.segment, reverse=args.reverse)
    return 0


def _models(args: argparse.Namespace) -> int:
    from napari_inkdetect.models.registry import model_table

    print(model_table())
    return 0


def _train(args: argparse.Namespace) -> int:
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
    from napari_inkdetect.training.distributed import Distributed, command_line, launch
    from napari_inkdetect.training.preflight import preflight

    config = TrainConfig(
        segment=str(args.segment), labels=str(args.labels), out=str(args.out),
        val_labels=_str(args.val_labels), init=_str(args.init), arch=args.arch,
        width=args.width, start_layer=args.start_layer, layers=args.layers, scale=args.scale,
        depth_direction=_choice(args.reverse, "reverse", args.forward, "forward"),
        tile=args.tile, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        normalisation={"kind": args.normalisation} if args.normalisation else None,
        freeze_batchnorm=_choice(args.freeze_batchnorm, True, args.train_batchnorm, False),
        train=args.train_parts,
        val_every=args.val_every, device=args.device, autocast=args.autocast,
        activation_checkpointing=args.checkpointing, sync_batchnorm=args.sync_bn,
        seed=args.seed, resume=args.resume,
    )  # fmt: skip
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
            for _ in train(config):
                pass
        except InkDetectError:
            return EXIT_INPUT_ERROR
        return 0
    bar = None
    for event in train(config):
        if isinstance(event, TrainStarted):
            for note in event.notes:  # what was taken from --init or a preset: even if quiet
                print(note)
            if event.config.start_layer is not None:
                print(_window_summary([event.config.start_layer], event.config.layers))
        elif isinstance(event, StepDone):
            if bar is None:
                bar = tqdm(total=event.total, initial=event.step - 1, unit="step",
                           disable=args.quiet, dynamic_ncols=True)  # fmt: skip
            bar.update(1)
            bar.set_postfix(loss=f"{event.loss:.4f}", tiles_s=f"{event.tiles_per_s:.1f}")
        elif isinstance(event, ValidationPlanned):
            _say(bar, args.quiet, event.summary)
        elif isinstance(event, Validated):
            _say(bar, args.quiet, f"step {event.step}: F0.5 {event.f05:.3f} at 0.5, "
                 f"best {event.best_f05:.3f} at {event.best_threshold:.2f}, chance "
                 f"{event.chance_f05:.3f} ({event.n_groups} held-out groups, {event.n_ink} ink / "
                 f"{event.n_not_ink} not-ink px)")  # fmt: skip
        elif isinstance(event, TrainFinished):
            if bar is not None:
                bar.close()
            state = "stopped" if event.stopped else "finished"
            print(f"{state} after {event.steps} steps in {event.seconds:.0f} s")
            print(f"best: {event.best_path}\nlast: {event.last_path}")
    return 0


def _centred_on(config, centre: int):
    """``config`` with the start layer of the window centred on ``centre``, its length
    resolved as the run resolves it (``--layers``, else the ``--init`` checkpoint's, else 22);
    a centre whose window does not fit in the volume is refused in centres."""
    from napari_inkdetect.errors import ConfigError
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


def _window_summary(starts: Sequence[int], layers: int) -> str:
    """``window 9-30, centre 20`` (``windows 9-30 .. 13-34, centres 20..24``): the layers
    each window covers and the centre it is shown at (see :mod:`napari_inkdetect.windows`)."""
    from napari_inkdetect.windows import window_centre

    a, b = min(starts), max(starts)
    if a == b:
        return f"window {a}-{a + layers - 1}, centre {window_centre(a, layers)}"
    centres = f"{window_centre(a, layers)}..{window_centre(b, layers)}"
    return f"windows {a}-{a + layers - 1} .. {b}-{b + layers - 1}, centres {centres}"


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


def _predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from napari_inkdetect.inference import (
        BatchDone,
        PredictConfig,
        PredictFinished,
        PredictStarted,
        export_prediction,
        predict,
    )

    config = PredictConfig(
        segment=str(args.segment), checkpoint=str(args.checkpoint), out=str(args.out),
        region=_ints(args.region, 4, "--region") if args.region else None,
        start_layers=args.start_layers, centre_layers=args.centre_layers, stride=args.stride,
        batch_size=args.batch_size,
        device=args.device, autocast=args.autocast, tta_flips=args.tta, tta_rot90=args.tta,
        depth_direction="reverse" if args.reverse else "auto", overwrite=args.overwrite,
    )  # fmt: skip
    on_cluster = args.workers is not None or args.scheduler is not None
    if on_cluster:  # one BatchDone per finished chunk; the bar counts chunks
        from napari_inkdetect.cluster import ClusterReady, predict_on_cluster

        events = predict_on_cluster(config, args.workers, args.scheduler, read_chunks=False)
    else:
        events = predict(config)
    bar = None
    for event in events:
        if isinstance(event, PredictStarted):
            total, initial = (event.total_chunks, event.done_chunks) if on_cluster else (
                event.total_tiles, 0)  # fmt: skip
            bar = tqdm(total=total, initial=initial, unit="chunk" if on_cluster else "tile",
                       disable=args.quiet, dynamic_ncols=True)  # fmt: skip
            _say(bar, args.quiet, f"{event.path}: {event.shape} on {event.device}, "
                 f"start layers {_span(event.start_layers)}, "
                 f"{event.done_chunks}/{event.total_chunks} chunks already done")  # fmt: skip
            _say(bar, False, _window_summary(event.start_layers, _window_length(event.path)))
        elif on_cluster and isinstance(event, ClusterReady):
            where = "local cluster" if event.local else "cluster"
            _say(bar, args.quiet, f"{where} {event.address}, dashboard: "
                 f"{event.dashboard_link or '- (install bokeh)'}")  # fmt: skip
        elif isinstance(event, BatchDone) and bar is not None:
            bar.n = bar.n + 1 if on_cluster else event.done
            bar.set_postfix(tiles_s=f"{event.tiles_per_s:.1f}")
            bar.refresh()
        elif isinstance(event, PredictFinished):
            if bar is not None:
                bar.close()
            print(f"{event.path}: {event.tiles} tiles in {event.seconds:.1f} s "
                  f"({event.tiles_per_s:.1f} tiles/s)")  # fmt: skip
    if args.format != "zarr":
        folder = args.out.with_name(args.out.name.split(".")[0] + f"_{args.format}")
        files = export_prediction(args.out, folder, format=args.format)
        print(f"{len(files)} images in {folder}")
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="a prediction as images, max projection and a GIF/MP4 depth sweep",
        description="PNG/TIFF per start layer, the max projection, and an animated depth sweep "
        "with the volume underneath.",
    )
    p.set_defaults(run=_export)
    p.add_argument("prediction", type=Path, help="a zarr written by `predict`")
    p.add_argument("--out", type=Path, help="output folder (default: <name>_export beside it)")
    p.add_argument("--images", default="png", help="png, tif, png,tif or none")
    p.add_argument("--no-max", action="store_true", help="no max projection image")
    p.add_argument("--no-gif", action="store_true", help="no animated GIF")
    p.add_argument("--mp4", action="store_true", help="also an MP4 (needs imageio-ffmpeg)")
    p.add_argument("--fps", type=float, default=4.0)
    p.add_argument("--max-side", type=int, default=1024, help="sweep frame side cap; 0: full")
    p.add_argument("--alpha", type=float, default=0.6, help="opacity of certain ink")
    p.add_argument("--threshold", type=float, help="draw no ink below this probability")
    p.add_argument(
        "--underlay",
        default="middle",
        choices=("middle", "start", "none"),
        help="volume layer under each window: its centre (middle; where napari's overlay "
        "shows it), its first layer (start), or none",
    )
    p.add_argument("--no-label", action="store_true", help="no 'centre (layers)' caption")
    p.add_argument("--segment", type=Path, help="the segment, if it moved since predict")
    p.add_argument("--quiet", action="store_true")


def _export(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from napari_inkdetect.export import ExportConfig, run_export

    out = args.out or args.prediction.parent / f"{args.prediction.name.split('.')[0]}_export"
    config = ExportConfig(
        prediction=str(args.prediction), out_dir=str(out),
        images=() if args.images == "none" else tuple(args.images.split(",")),
        max_projection=not args.no_max, gif=not args.no_gif, mp4=args.mp4, fps=args.fps,
        max_side=args.max_side or None, alpha=args.alpha, threshold=args.threshold,
        underlay=args.underlay, label=not args.no_label, segment=_str(args.segment),
    )  # fmt: skip
    with tqdm(unit="step", disable=args.quiet, dynamic_ncols=True) as bar:

        def show(event) -> None:
            bar.total = event.total
            bar.update(event.done - bar.n)

        written = run_export(config, on_event=show)
    print(f"wrote {len(written)} files to {out}")
    return 0


def _window_length(prediction: Path) -> int:
    """The window length a prediction's provenance records."""
    from napari_inkdetect.inference import open_prediction

    return int(open_prediction(prediction)[1]["window_length"])


def _span(starts: Sequence[int]) -> str:
    return f"{starts[0]}..{starts[-1]}" if len(starts) > 1 else str(starts[0])


def _ints(text: str, n: int, flag: str) -> tuple[int, ...]:
    from napari_inkdetect.errors import ConfigError

    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != n:
        raise ConfigError(f"{flag} {text!r}: expected {n} comma-separated integers")
    return values


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from napari_inkdetect.evaluation import CALIBRATED, GIVEN, evaluate_prediction

    rows = evaluate_prediction(
        args.prediction, args.truth, args.region_mask, args.start_layer, args.threshold
    )
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    threshold, source = rows[0]["threshold"], rows[0]["threshold_source"]
    why = {
        GIVEN: "given with --threshold",
        CALIBRATED: "from the checkpoint's validation: its best F0.5 there",
    }.get(source, "the default: the prediction records no calibrated threshold")
    print(f"threshold {threshold:.2f} ({why})")
    at = f"F0.5@{threshold:.2f}"
    print(f"{'start':>5} {at:>9} {'prec':>6} {'recall':>6} {'best F0.5':>9} {'at':>5}")
    for row in rows:
        start = "-" if row["start_layer"] is None else row["start_layer"]
        print(f"{start:>5} {row['f05']:9.3f} {row['precision']:6.3f} {row['recall']:6.3f} "
              f"{row['best_f05']:9.3f} {row['best_threshold']:5.2f}")  # fmt: skip
    return 0


def _say(bar, quiet: bool, text: str) -> None:
    if quiet:
        return
    if bar is not None:
        bar.write(text)
    else:
        print(text)


def _choice(first: bool, first_value, second: bool, second_value):
    """The value of whichever of two exclusive flags is set; None (the default) for neither."""
    return first_value if first else second_value if second else None


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _version() -> str:
    from napari_inkdetect import __version__

    return f"napari-inkdetect {__version__}"


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

"""``napari-inkdetect export`` (its flags are the fields of :class:`ExportConfig`) and
``napari-inkdetect evaluate``."""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_inkdetect.engine import drain
from napari_inkdetect.export.config import ExportConfig
from napari_inkdetect.options import add_arguments, given

__all__ = ["add_evaluate", "add_export"]


def add_export(sub) -> None:
    """The ``export`` subcommand."""
    p = sub.add_parser(
        "export",
        help="a prediction as images, max projection and a GIF/MP4 depth sweep",
        description="PNG/TIFF per start layer, the max projection, and an animated depth sweep "
        "with the volume underneath.",
    )
    p.set_defaults(run=_export)
    add_arguments(p, ExportConfig)
    p.add_argument("--quiet", action="store_true")


def add_evaluate(sub) -> None:
    """The ``evaluate`` subcommand."""
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


def _export(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from napari_inkdetect.export import export

    settings = given(args, ExportConfig)
    prediction = Path(settings["prediction"])
    settings.setdefault(
        "out_dir", str(prediction.parent / f"{prediction.name.split('.')[0]}_export")
    )
    config = ExportConfig(**settings)
    out = config.out_dir
    with tqdm(unit="step", disable=args.quiet, dynamic_ncols=True) as bar:

        def show(event) -> None:
            bar.total = event.total
            bar.update(event.done - bar.n)

        written = drain(export(config), show)
    print(f"wrote {len(written)} files to {out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from napari_inkdetect.scoring.evaluation import CALIBRATED, GIVEN, evaluate_prediction

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

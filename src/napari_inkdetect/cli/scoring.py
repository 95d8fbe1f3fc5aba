"""``napari-inkdetect export`` (its flags are the fields of :class:`ExportConfig`) and
``napari-inkdetect evaluate`` and ``napari-inkdetect compare``."""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_inkdetect.engine import drain
from napari_inkdetect.export.config import ExportConfig
from napari_inkdetect.options import add_arguments, given

__all__ = ["add_compare", "add_evaluate", "add_export"]


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


def add_compare(sub) -> None:
    """The ``compare`` subcommand."""
    p = sub.add_parser(
        "compare",
        help="two predictions of one region side by side: difference, scores, provenance",
        description="How two predictions of the same segment differ where they overlap: their "
        "provenance side by side, mean |A - B| and where the ink decision differs, and with "
        "--truth both F0.5 on the same labelled pixels.",
    )
    p.set_defaults(run=_compare)
    p.add_argument("a", type=Path, help="prediction A (a predict zarr)")
    p.add_argument("b", type=Path, help="prediction B (a predict zarr)")
    p.add_argument("--truth", type=Path, help="labels (sparse 0/1/2 or binary) to score both")
    p.add_argument("--region-mask", type=Path, help="only pixels inside this mask count")
    p.add_argument(
        "--threshold",
        type=float,
        help="ink from this probability for both (default: each one's calibrated threshold, "
        "else 0.5)",
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


def _compare(args: argparse.Namespace) -> int:
    import json

    from napari_inkdetect.scoring.compare import compare_predictions

    result = compare_predictions(args.a, args.b, args.truth, args.region_mask, args.threshold)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    y0, x0, y1, x1 = result["overlap"]
    starts = ",".join(str(s) for s in result["start_layers"])
    print(f"A: {result['a']}")
    print(f"B: {result['b']}")
    print(f"overlap y {y0}..{y1}, x {x0}..{x1} ({y1 - y0} x {x1 - x0} px), start layers "
          f"{starts} (window {result['window_length']})")  # fmt: skip
    rows = result["provenance"]
    kw = max([len("setting")] + [len(r["key"]) for r in rows])
    aw = max([1] + [len(r["a"]) for r in rows])
    print(f"  {'setting':<{kw}}  {'A':<{aw}}  B")
    for r in rows:
        mark = "*" if r["differs"] else " "
        print(f"{mark} {r['key']:<{kw}}  {r['a']:<{aw}}  {r['b']}")
    ta, tb = (result["thresholds"][k] for k in ("a", "b"))
    print(f"threshold A {ta['threshold']:.2f} ({ta['source']}), "
          f"B {tb['threshold']:.2f} ({tb['source']})")  # fmt: skip
    diff = result["difference"]
    print(f"difference: mean |A - B| {diff['mean_abs_diff']:.3f}; the ink decision differs on "
          f"{100 * diff['decision_differs']:.1f}% of {diff['pixels']} pixels")  # fmt: skip
    if result["scores"] is None:
        return 0
    print("scores on the overlap (F0.5 at each one's threshold; best F0.5 over thresholds)")
    print(f"{'start':>5} {'F0.5 A':>7} {'F0.5 B':>7} {'best A':>7} {'best B':>7} "
          f"{'prec A':>7} {'prec B':>7} {'rec A':>6} {'rec B':>6}")  # fmt: skip
    for row in result["scores"]:
        a, b = row["a"], row["b"]
        print(f"{row['start_layer']:>5} {a['f05']:7.3f} {b['f05']:7.3f} {a['best_f05']:7.3f} "
              f"{b['best_f05']:7.3f} {a['precision']:7.3f} {b['precision']:7.3f} "
              f"{a['recall']:6.3f} {b['recall']:6.3f}")  # fmt: skip
    return 0

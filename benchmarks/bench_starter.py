"""Does finetuning from the bundled crackle starter beat training from scratch?

    python benchmarks/bench_starter.py [--quick] [--cases faint-coarse,reversed-deep]
        [--steps 100,300,600] [--starter-lr LR]

Each case is a synthetic segment the pretraining never saw (seeds 500.., fixed parameters,
where ``pretrain_starter.py`` drew random ones for seeds 100000..). Labels are what a user
paints in ``bench_quality.py``: 5 letters with dense boxes. Each start (``scratch``: a new
1/8-width resnet10 at the CPU preset's lr 1e-3; ``starter``: ``init`` = the bundled file with
the settings the trainer picks for it, as the Finetune dock does) trains one run of the largest
step count on the CPU; the model saved after 100, 300, ... steps predicts the whole segment and
is scored on the held-out letters (6.., dense truth, never trained on): best F0.5. One run per
start, scored at each count, so 100 steps means the first 100 steps of the longest schedule.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import LAYERS, painted_labels

from napari_inkdetect.engine import drain
from napari_inkdetect.inference import PredictConfig, predict
from napari_inkdetect.io.prediction_store import open_prediction
from napari_inkdetect.models.starter import starter_path
from napari_inkdetect.scoring.metrics import score
from napari_inkdetect.synthetic import make_segment, write_segment
from napari_inkdetect.training import AugmentConfig, TrainConfig, train
from napari_inkdetect.training.events import CheckpointSaved

#: Unseen segments: (seed, make_segment parameters, reversed depth).
CASES = {
    "faint-coarse": (500, {"crackle_strength": 0.6, "texture_strength": 1.6}, False),
    "reversed-deep": (501, {"ink_offset": 5, "ink_thickness": 4}, True),
    "small-letters": (502, {"letter_height": 40, "crackle_strength": 0.8}, False),
}


def prepare(case: str, tmp: Path) -> tuple[Path, Path, int, np.ndarray]:
    """The case's segment folder, painted labels, window start and held-out truth."""
    seed, options, reverse = CASES[case]
    seg = make_segment(shape=(64, 384, 640), seed=seed, **options)
    if reverse:
        seg = replace(seg, volume=seg.volume[::-1].copy())
    folder = write_segment(seg, tmp, case)
    labels_path = folder / "painted.png"
    Image.fromarray(painted_labels(seg, "dense")).save(labels_path)
    z0, z1 = seg.ink_layers
    if reverse:
        z0, z1 = seg.volume.shape[0] - z1, seg.volume.shape[0] - z0
    start = int(np.clip((z0 + z1) // 2 - LAYERS // 2, 0, seg.volume.shape[0] - LAYERS))
    return folder, labels_path, start, seg.validation_labels(5)


def run_start(case: str, start_kind: str, args: argparse.Namespace, tmp: Path) -> dict:
    """Train one run; score the checkpoint after each step count. {steps: held F0.5}."""
    folder, labels_path, start, held = prepare(case, tmp)
    counts = sorted(args.steps)
    model = (
        {"init": str(starter_path()), "lr": args.starter_lr}
        if start_kind == "starter"
        else {"arch": "resnet10", "width": 0.125, "tile": 128, "lr": 1e-3}
    )
    out = tmp / f"run-{case}-{start_kind}"
    config = TrainConfig(
        segment=str(folder), labels=str(labels_path), out=str(out), start_layer=start,
        layers=LAYERS, scale=1.0, batch_size=4, steps=counts[-1], val_every=counts[-1],
        save_every=min(counts), augment=replace(AugmentConfig.none(), flips=True, rot90=True),
        device="cpu", seed=0, **model,
    )  # fmt: skip
    kept: dict[int, Path] = {}
    t0 = time.perf_counter()
    for event in train(config):
        if isinstance(event, CheckpointSaved) and event.kind == "last" and event.step in counts:
            kept[event.step] = shutil.copy(
                event.path, tmp / f"{case}-{start_kind}-{event.step}.st"
            )
    seconds = time.perf_counter() - t0
    result: dict = {"seconds": seconds}
    for steps, ckpt in sorted(kept.items()):
        pred = drain(predict(
            PredictConfig(segment=str(folder), checkpoint=str(ckpt), start_layers=[start],
                          out=str(tmp / f"pred-{case}-{start_kind}-{steps}.zarr"),
                          device="cpu", region=(0, 0, *held.shape))
        )).path  # fmt: skip
        prob = np.asarray(open_prediction(pred)[0][0]).astype(np.float32) / 255
        result[steps] = score(prob, held).best_f05
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one case, 100 and 300 steps")
    p.add_argument("--cases", default="faint-coarse,reversed-deep")
    p.add_argument("--steps", default="100,300,600")
    p.add_argument("--starts", default="scratch,starter")
    p.add_argument(
        "--starter-lr", type=float, help="lr from the starter (default: the trainer's preset)"
    )
    args = p.parse_args(argv)
    cases = ["faint-coarse"] if args.quick else args.cases.split(",")
    args.steps = [100, 300] if args.quick else [int(s) for s in args.steps.split(",")]
    starts = args.starts.split(",")
    print(f"{'case':14s} {'start':8s} " + " ".join(f"{s:>7d}" for s in args.steps) + "  seconds")
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            for kind in starts:
                r = run_start(case, kind, args, Path(tmp))
                cells = " ".join(f"{r.get(s, float('nan')):7.3f}" for s in args.steps)
                print(f"{case:14s} {kind:8s} {cells}  {r['seconds']:7.0f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Does "label here next" help? A simulated user on a synthetic segment with known truth.

    python benchmarks/bench_active.py [--quick] [--seeds 3] [--rounds 4] [--k 2] [--steps 150]
        [--base-steps 600] [--box 128] [--init starter|scratch] [--crackle 1.0] [--out DIR]

The user starts from 3 labelled letters (a dense box around each: the truth inside it, ink
and not-ink, as :func:`label_box` paints every box). Round 0 trains on them from the CPU
default, the bundled crackle starter (``--init scratch``: a new model). Then, for each
strategy, 4 rounds: choose ``k`` boxes of ``box`` px, label them from the truth, finetune
from the previous round's last checkpoint (``TrainConfig.init``) for the same steps, predict
the segment again. Strategies:

* ``next``: :func:`~napari_inkdetect.next_labels.label_here_next` on the round's prediction;
* ``random``: boxes drawn uniformly among the allowed positions;
* ``inky``: the boxes of highest mean predicted ink (max over the start layers), greedily;
* ``none``: the control, no new boxes, the same steps (what more training alone adds).

The three that label choose from the same positions: on the ``box / 4`` grid that
label_here_next uses, every pixel of the box inside the *candidate mask*, none already
labelled, none overlapping a box chosen in the same round.

**Held out**: the last line of letters. Their boxes (grown by a quarter letter height, like
the user's boxes) with every papyrus pixel in them counted (ink and not-ink from the truth)
are the scored pixels; the candidate mask is the papyrus above that band less a gap of a
quarter box, for every strategy alike, so no strategy ever labels a held-out pixel (training
tiles may show its voxels, never its labels). F0.5 is the best over thresholds, on the plane
of the training window. No automatic validation split (``val_fraction=0``): it would take
different letters out of training for each strategy, and every round keeps its last
checkpoint anyway.

Prints the table (strategy x round: mean held-out F0.5 over seeds, each seed's, labelled
pixels), the target (issue 15: ``next`` after round 2 >= ``random`` after round 4, on the
mean over seeds) and writes ``active.json`` (every number) and ``active.png`` (F0.5 against
labelled pixels) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from napari_inkdetect.engine import drain
from napari_inkdetect.inference import PredictConfig, predict
from napari_inkdetect.models.starter import starter_path
from napari_inkdetect.next_labels import label_here_next
from napari_inkdetect.prediction_maps import StoredPrediction
from napari_inkdetect.scoring.metrics import chance_f05, score
from napari_inkdetect.synthetic import make_segment, write_segment
from napari_inkdetect.training import AugmentConfig, LossConfig, TrainConfig, train
from napari_inkdetect.training.presets import PRESETS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import LAYERS, threshold_baseline  # benchmarks/ is a folder of scripts

STRATEGIES = ("next", "random", "inky", "none")
COLOURS = {
    "next": (214, 39, 40), "random": (31, 119, 180), "inky": (44, 160, 44), "none": (127, 127, 127)
}  # fmt: skip
Box = tuple[int, int, int, int]  # y0, x0, y1, x1 (as Suggestion.box)


# --------------------------------------------------------------------------- the segment


def letter_boxes(seg) -> list[Box]:
    """Each letter's box grown by a quarter letter height, clipped: what a user draws."""
    slices = ndimage.find_objects(seg.letters)
    height = int(np.median([s[0].stop - s[0].start for s in slices if s is not None]))
    grow = max(4, height // 4)
    h, w = seg.mask.shape
    return [
        (max(0, s[0].start - grow), max(0, s[1].start - grow),
         min(h, s[0].stop + grow), min(w, s[1].stop + grow))
        for s in slices if s is not None
    ]  # fmt: skip


def label_box(labels: np.ndarray, truth: np.ndarray, box: Box) -> None:
    """Paint ``box`` from the truth, as a user paints a dense box: ink on the ink, not-ink
    on every other papyrus pixel (the truth is 0 off the mask, so those stay unlabelled)."""
    y0, x0, y1, x1 = box
    view, known = labels[y0:y1, x0:x1], truth[y0:y1, x0:x1]
    view[known > 0] = known[known > 0]


def held_out(seg, box: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scored labels (dense truth in the last line's letter boxes), the candidate mask (the
    papyrus above them less a quarter box) and the first 3 letters' labels."""
    boxes = letter_boxes(seg)
    centres = np.array([(b[0] + b[2]) / 2 for b in boxes])
    last = [b for b, c in zip(boxes, centres, strict=True) if c > centres.max() - box / 4]
    zone = np.zeros(seg.mask.shape, bool)
    for y0, x0, y1, x1 in last:
        zone[y0:y1, x0:x1] = True
    held = np.where(zone, seg.truth, 0).astype(np.uint8)
    top = min(b[0] for b in last) - box // 4
    candidates = seg.mask.copy()
    candidates[max(0, top) :] = False
    start = np.zeros(seg.mask.shape, np.uint8)
    for b in boxes[:3]:
        label_box(start, seg.truth, b)
    if (start[max(0, top) :] > 0).any():
        raise SystemExit("the first 3 letters reach the held-out line: use a taller segment")
    return held, candidates, start


# --------------------------------------------------------------------------- strategies


def allowed_corners(candidates: np.ndarray, labels: np.ndarray, box: int) -> np.ndarray:
    """``(n, 2)`` corners (y0, x0) on the ``box / 4`` grid of boxes wholly in the candidate
    mask with no labelled pixel: the positions label_here_next may choose from."""
    free = (candidates & (labels == 0)).astype(np.int64)
    total = np.zeros((free.shape[0] + 1, free.shape[1] + 1), np.int64)
    total[1:, 1:] = free.cumsum(0).cumsum(1)
    inside = total[box:, box:] - total[:-box, box:] - total[box:, :-box] + total[:-box, :-box]
    cell = max(1, box // 4)
    grid = np.zeros_like(inside, bool)
    grid[::cell, ::cell] = True
    return np.argwhere((inside == box * box) & grid)


def choose(
    strategy: str, pred_path: Path, labels: np.ndarray, candidates: np.ndarray,
    k: int, box: int, rng: np.random.Generator, seed: int,
) -> list[Box]:  # fmt: skip
    """``k`` boxes by one strategy (fewer when fewer fit; ``none``: the control, no new
    labels, the same steps: what the rounds' training alone adds)."""
    if strategy == "none":
        return []
    if strategy == "next":
        prediction = StoredPrediction.open(pred_path)
        found = label_here_next(prediction, labels, candidates, box=box, count=k, seed=seed)
        return [s.box for s in found]
    peak = None
    if strategy == "inky":
        peak = np.asarray(StoredPrediction.open(pred_path).planes().max(axis=0).compute())
        total = np.zeros((peak.shape[0] + 1, peak.shape[1] + 1))
        total[1:, 1:] = peak.cumsum(0).cumsum(1)
    taken = labels.copy()
    chosen: list[Box] = []
    for _ in range(k):
        corners = allowed_corners(candidates, taken, box)
        if not len(corners):
            break
        if peak is None:
            y, x = corners[rng.integers(len(corners))]
        else:
            ys, xs = corners[:, 0], corners[:, 1]
            sums = total[ys + box, xs + box] - total[ys, xs + box] - total[ys + box, xs]
            y, x = corners[int(np.argmax(sums + total[ys, xs]))]  # integral image
        chosen.append((int(y), int(x), int(y) + box, int(x) + box))
        taken[y : y + box, x : x + box] = 255  # the next box of the round may not overlap
    return chosen


# --------------------------------------------------------------------------- train, predict


def fit(
    folder: Path, labels: np.ndarray, init: Path | None, out: Path, start: int, seed: int,
    steps: int, args: argparse.Namespace,
) -> Path:  # fmt: skip
    """Train (from scratch, or finetune ``init``) for ``steps``; the last checkpoint."""
    path = out.with_suffix(".png")
    Image.fromarray(labels).save(path)
    if init is None and args.init == "starter":
        init = starter_path()  # the CPU default (its own model, window and tile)
    config = TrainConfig(
        segment=str(folder), labels=str(path), out=str(out), init=str(init) if init else None,
        arch=None if init else "resnet10", width=None if init else args.width,
        start_layer=start, layers=LAYERS, tile=None if init else args.tile, scale=1.0,
        batch_size=args.batch,
        steps=steps, lr=args.lr, freeze_batchnorm=False, val_fraction=0.0,
        val_every=10**6, augment=replace(AugmentConfig.none(), flips=True, rot90=True),
        loss=LossConfig(), device="cpu", seed=seed,
    )  # fmt: skip
    drain(train(config))
    return out / "last.safetensors"


def predicted(folder: Path, checkpoint: Path, out: Path, starts: list[int], shape) -> Path:
    """The whole segment predicted at each start layer (zarr path)."""
    config = PredictConfig(
        segment=str(folder), checkpoint=str(checkpoint), out=str(out),
        start_layers=starts, device="cpu", region=(0, 0, *shape),
    )  # fmt: skip
    return Path(drain(predict(config)).path)


def held_f05(pred_path: Path, plane: int, held: np.ndarray) -> float:
    prediction = StoredPrediction.open(pred_path)
    prob = np.asarray(prediction.prob[plane]).astype(np.float32) / 255
    return score(prob, held).best_f05


# --------------------------------------------------------------------------- one seed


def run_seed(seed: int, args: argparse.Namespace, tmp: Path) -> dict:
    seg = make_segment(
        shape=tuple(args.shape), seed=seed, letter_height=args.letter_height,
        crackle_strength=args.crackle,
    )  # fmt: skip
    folder = write_segment(seg, tmp, f"seg-{seed}")
    held, candidates, start_labels = held_out(seg, args.box)
    z0, z1 = seg.ink_layers
    start = int(np.clip((z0 + z1) // 2 - LAYERS // 2, 2, seg.volume.shape[0] - LAYERS - 2))
    starts, plane = [start - 2, start, start + 2], 1
    shape = seg.mask.shape
    t0 = time.perf_counter()
    ckpt0 = fit(
        folder, start_labels, None, tmp / f"s{seed}-r0", start, seed, args.base_steps, args
    )
    pred0 = predicted(folder, ckpt0, tmp / f"s{seed}-r0.zarr", starts, shape)
    f0 = held_f05(pred0, plane, held)
    print(f"seed {seed}: round 0 (3 letters, {int((start_labels > 0).sum())} px) "
          f"held-out F0.5 {f0:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
    out: dict = {
        "seed": seed,
        "held_ink_px": int((held == 1).sum()),
        "held_not_ink_px": int((held == 2).sum()),
        "chance": chance_f05(int((held == 1).sum()), int((held == 2).sum())),
        "baseline": threshold_baseline(seg.volume, start, held),
        "strategies": {},
    }
    for strategy in STRATEGIES:
        labels, ckpt, pred = start_labels.copy(), ckpt0, pred0
        rng = np.random.default_rng([seed, 15])
        rows = [{"round": 0, "f05": f0, "labelled_px": int((labels > 0).sum()), "boxes": []}]
        for r in range(1, args.rounds + 1):
            t0 = time.perf_counter()
            boxes = choose(strategy, pred, labels, candidates, args.k, args.box, rng, seed)
            for b in boxes:
                label_box(labels, seg.truth, b)
            name = f"s{seed}-{strategy}-r{r}"
            ckpt = fit(folder, labels, ckpt, tmp / name, start, seed + 1000 * r, args.steps, args)
            pred = predicted(folder, ckpt, tmp / f"{name}.zarr", starts, shape)
            f = held_f05(pred, plane, held)
            ink = int(sum((seg.truth[b[0] : b[2], b[1] : b[3]] == 1).sum() for b in boxes))
            rows.append({"round": r, "f05": f, "labelled_px": int((labels > 0).sum()),
                         "boxes": boxes, "new_ink_px": ink})  # fmt: skip
            print(f"seed {seed}: {strategy:6s} round {r}: {len(boxes)} boxes ({ink} ink px), "
                  f"{rows[-1]['labelled_px']} px labelled, held-out F0.5 {f:.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
        out["strategies"][strategy] = rows
    return out


# --------------------------------------------------------------------------- report


def table(results: list[dict], rounds: int) -> dict[str, list[float]]:
    """Print strategy x round mean F0.5 (per seed in brackets) and labelled pixels."""
    means: dict[str, list[float]] = {}
    print(f"\n{'strategy':8s} {'round':>5s} {'F0.5 mean':>9s} {'labelled px':>11s}  per seed")
    for strategy in STRATEGIES:
        means[strategy] = []
        for r in range(rounds + 1):
            f = [res["strategies"][strategy][r]["f05"] for res in results]
            px = np.mean([res["strategies"][strategy][r]["labelled_px"] for res in results])
            means[strategy].append(float(np.mean(f)))
            seeds = " ".join(f"{v:.3f}" for v in f)
            print(f"{strategy:8s} {r:5d} {np.mean(f):9.3f} {px:11.0f}  [{seeds}]")
    chance = np.mean([res["chance"] for res in results])
    baseline = np.mean([res["baseline"] for res in results])
    print(f"held-out chance F0.5 (all ink) {chance:.3f}, intensity baseline {baseline:.3f}")
    return means


def plot(results: list[dict], means: dict[str, list[float]], path: Path) -> None:
    """F0.5 against labelled pixels, one line per strategy (mean over seeds), with PIL."""
    w, h, left, bottom, top, right = 640, 420, 60, 50, 20, 130
    image = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(image)
    px = {s: [float(np.mean([r["strategies"][s][i]["labelled_px"] for r in results]))
              for i in range(len(means[s]))] for s in STRATEGIES}  # fmt: skip
    x_hi = max(max(v) for v in px.values()) * 1.05
    y_lo = max(0.0, np.floor(min(min(v) for v in means.values()) * 10) / 10 - 0.1)
    y_hi = 1.0

    def at(x: float, y: float) -> tuple[float, float]:
        fx = left + (w - left - right) * x / x_hi
        fy = h - bottom - (h - top - bottom) * (y - y_lo) / (y_hi - y_lo)
        return fx, fy

    draw.rectangle((left, top, w - right, h - bottom), outline="black")
    for y in np.arange(y_lo, y_hi + 1e-6, 0.1):
        draw.line((*at(0, y), left - 4, at(0, y)[1]), fill="black")
        draw.text((8, at(0, y)[1] - 6), f"{y:.1f}", fill="black")
    for i in range(6):
        x = x_hi * i / 5
        draw.line((at(x, y_lo)[0], h - bottom, at(x, y_lo)[0], h - bottom + 4), fill="black")
        draw.text((at(x, y_lo)[0] - 14, h - bottom + 8), f"{x / 1000:.0f}k", fill="black")
    draw.text((left + 120, h - 20), "labelled pixels (mean over seeds)", fill="black")
    draw.text((left, 4), "held-out F0.5 (mean over seeds) per round", fill="black")
    for n, s in enumerate(STRATEGIES):
        points = [at(x, y) for x, y in zip(px[s], means[s], strict=True)]
        draw.line(points, fill=COLOURS[s], width=2)
        for x, y in points:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=COLOURS[s])
        draw.line((w - right + 10, top + 20 * n + 8, w - right + 30, top + 20 * n + 8),
                  fill=COLOURS[s], width=3)  # fmt: skip
        draw.text((w - right + 36, top + 20 * n + 2), s, fill="black")
    image.save(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--quick", action="store_true", help="1 seed, 2 rounds, 300 + 75 steps, smaller"
    )
    p.add_argument("--seeds", type=int, default=3, help="segments (seeds 0..N-1)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--k", type=int, default=2, help="boxes labelled per round")
    p.add_argument("--steps", type=int, default=150, help="training steps per round")
    p.add_argument("--base-steps", type=int, default=600, help="round 0 (from --init)")
    p.add_argument("--box", type=int, default=PRESETS["cpu"].tile, help="box side (px)")
    p.add_argument("--tile", type=int, default=PRESETS["cpu"].tile, help="training tile")
    p.add_argument("--width", type=float, default=PRESETS["cpu"].width, help="model width")
    p.add_argument("--batch", type=int, default=PRESETS["cpu"].batch_size)
    p.add_argument("--lr", type=float, default=1e-3, help="every round (CPU preset: 1e-3)")
    p.add_argument(
        "--init", choices=("scratch", "starter"), default="starter",
        help="round 0 starts from a new model or the bundled crackle starter (the CPU default)",
    )  # fmt: skip
    p.add_argument("--crackle", type=float, default=1.0, help="crackle strength (faint: 0.5)")
    p.add_argument("--shape", type=int, nargs=3, default=(40, 576, 896), metavar=("Z", "Y", "X"))
    p.add_argument("--letter-height", type=int, default=56)
    p.add_argument("--out", default="bench-active", help="folder for active.json/.png")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.rounds, args.base_steps, args.steps = 1, 2, 300, 75
        args.shape, args.letter_height = (40, 448, 640), 48
    print(f"init={args.init} crackle={args.crackle} seeds={args.seeds} rounds={args.rounds} "
          f"k={args.k} steps={args.steps} "
          f"box={args.box} shape={tuple(args.shape)} letter={args.letter_height}")  # fmt: skip
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        results = [run_seed(s, args, Path(tmp)) for s in range(args.seeds)]
    seconds = time.perf_counter() - t0
    means = table(results, args.rounds)
    r2, rn = min(2, args.rounds), args.rounds
    a, b = means["next"][r2], means["random"][rn]
    verdict = "met" if a >= b else "NOT met"
    print(f"target: next after round {r2} {a:.3f} >= random after round {rn} {b:.3f}: "
          f"{verdict} ({seconds:.0f} s)")  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    (out / "active.json").write_text(json.dumps(
        {"settings": settings, "seconds": seconds, "means": means, "results": results,
         "target": {"next_round": r2, "next": a, "random_round": rn, "random": b,
                    "met": a >= b}}, indent=1) + "\n")  # fmt: skip
    plot(results, means, out / "active.png")
    print(f"wrote {out / 'active.json'} and {out / 'active.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

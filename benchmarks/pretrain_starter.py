"""Pretrain the bundled crackle starter model on varied synthetic segments, reproducibly.

A 1/8-width resnet10 (the CPU preset's model, 22 layers, 128 px tiles, scale 1) learns what
crackle looks like from full labels (the synthetic truth: ink or not ink at every pixel of the
mask, plus the 16 px band outside it as not ink, like the trainer's sampler) over many
segments whose generator parameters are drawn at random, so a finetuning on a user's few
painted letters starts from a model that already knows cracks, not from noise.

    python benchmarks/pretrain_starter.py \
        --out src/napari_inkdetect/models/crackle_starter.safetensors --steps 450 --segments 32

made the shipped file (450 steps of 8 tiles, 1237 s on 2 CPU cores shared with other jobs,
load average 4-6; final training loss 0.39 with label smoothing 0.1). It prints the file's
sha256, which ``napari_inkdetect.models.starter.STARTER_SHA256`` must then hold. Same
command, same torch version and thread count: the same weights (every draw is seeded).

Segment seeds are ``SEED_BASE + i`` (100000..): ``bench_starter.py`` scores on seeds below
1000 and ``bench_quality.py`` on 0..9, so no benchmark segment was seen in pretraining.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy import ndimage

from napari_inkdetect.models import InkDetector, save_checkpoint
from napari_inkdetect.synthetic import make_segment
from napari_inkdetect.training.augment import AugmentConfig, augment_batch
from napari_inkdetect.training.loss import sparse_loss
from napari_inkdetect.training.trainer import lr_at
from napari_inkdetect.windows import Normalisation

ARCH, WIDTH, LAYERS, TILE = "resnet10", 0.125, 22, 128  # PRESETS["cpu"] and WINDOW_DEFAULTS
SEED_BASE = 100_000
OUTSIDE_BAND_PX = 16  # training.sampling.OUTSIDE_BAND_PX
#: Generator parameter ranges (uniform unless said): what differs between real scrolls.
RANGES = {
    "depth": (40, 64),  # layers of the segment (int)
    "crackle_strength": (0.35, 1.5),  # faint .. strong ink signal
    "letter_height": (28, 96),  # px (int), at most a quarter of the smaller side
    "ink_offset": (0, 8),  # layers below the surface (int)
    "ink_thickness": (3, 8),  # layers (int)
    "texture_strength": (0.5, 2.2),  # papyrus fibres competing with the crackle
    "ragged_mask": 0.3,  # probability of a torn outline with holes
    "reverse": 0.25,  # probability of a depth-reversed volume
    "window_jitter": 3,  # the window's start off the ink's centre by up to this many layers
}


@dataclass
class Sample:
    """One segment as the pretraining reads it: normalised volume, full labels, ink centre."""

    volume: np.ndarray  # (Z, Y, X) float32 model input values
    labels: np.ndarray  # (Y, X) 0 unlabeled, 1 ink, 2 not ink
    ink_centre: int
    pools: tuple[np.ndarray, np.ndarray]  # flat indices of ink and of not-ink pixels


def draw_params(rng: np.random.Generator) -> dict:
    """One segment's generator parameters from :data:`RANGES`."""
    r = RANGES
    return {
        "depth": int(rng.integers(r["depth"][0], r["depth"][1] + 1)),
        "crackle_strength": float(rng.uniform(*r["crackle_strength"])),
        "letter_height": int(rng.integers(r["letter_height"][0], r["letter_height"][1] + 1)),
        "ink_offset": int(rng.integers(r["ink_offset"][0], r["ink_offset"][1] + 1)),
        "ink_thickness": int(rng.integers(r["ink_thickness"][0], r["ink_thickness"][1] + 1)),
        "texture_strength": float(rng.uniform(*r["texture_strength"])),
        "ragged_mask": bool(rng.random() < r["ragged_mask"]),
        "reverse": bool(rng.random() < r["reverse"]),
    }


def make_sample(index: int, rng: np.random.Generator, shape: tuple[int, int]) -> Sample:
    """Segment ``SEED_BASE + index`` with random parameters, normalised, fully labelled."""
    while True:  # big letters near a small segment's size can fail to place: draw again
        p = draw_params(rng)
        try:
            seg = make_segment(
                shape=(p["depth"], *shape), seed=SEED_BASE + index,
                letter_height=min(p["letter_height"], min(shape) // 4),
                ink_offset=p["ink_offset"], ink_thickness=p["ink_thickness"],
                crackle_strength=p["crackle_strength"], texture_strength=p["texture_strength"],
                ragged_mask=p["ragged_mask"],
            )  # fmt: skip
        except ValueError:
            continue
        if seg.n_letters:
            break
    volume = Normalisation().apply(seg.volume)
    z0, z1 = seg.ink_layers
    if p["reverse"]:
        volume = volume[::-1].copy()
        z0, z1 = seg.volume.shape[0] - z1, seg.volume.shape[0] - z0
    labels = seg.truth.copy()
    outside = ndimage.binary_dilation(seg.mask, iterations=OUTSIDE_BAND_PX) & ~seg.mask
    labels[outside] = 2
    flat = labels.ravel()
    return Sample(
        volume, labels, (z0 + z1) // 2, (np.flatnonzero(flat == 1), np.flatnonzero(flat == 2))
    )


def draw_batch(
    samples: list[Sample], rng: np.random.Generator, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` class-balanced tiles ``(n, 1, LAYERS, TILE, TILE)`` and labels ``(n, TILE, TILE)``."""
    images = np.zeros((n, 1, LAYERS, TILE, TILE), np.float32)
    labels = np.zeros((n, TILE, TILE), np.uint8)
    jitter = RANGES["window_jitter"]
    for i in range(n):
        s = samples[int(rng.integers(len(samples)))]
        depth, ny, nx = s.volume.shape
        start = s.ink_centre - LAYERS // 2 + int(rng.integers(-jitter, jitter + 1))
        start = int(np.clip(start, 0, max(0, depth - LAYERS)))
        pool = s.pools[0 if rng.random() < 0.5 and s.pools[0].size else 1]
        y, x = divmod(int(pool[rng.integers(pool.size)]), nx)
        jy, jx = rng.integers(-TILE // 4, TILE // 4 + 1, size=2)
        y0 = int(np.clip(y - TILE // 2 + jy, 0, ny - TILE))
        x0 = int(np.clip(x - TILE // 2 + jx, 0, nx - TILE))
        block = s.volume[start : start + LAYERS, y0 : y0 + TILE, x0 : x0 + TILE]
        images[i, 0, : block.shape[0]] = block
        labels[i] = s.labels[y0 : y0 + TILE, x0 : x0 + TILE]
    return torch.from_numpy(images), torch.from_numpy(labels)


def pretrain(args: argparse.Namespace) -> InkDetector:
    """Train the starter; prints progress every 100 steps."""
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    shape = (args.height, args.width_px)
    samples = [make_sample(i, rng, shape) for i in range(args.segments)]
    print(f"{len(samples)} segments of {shape} px generated")
    model = InkDetector(ARCH, WIDTH).train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-2)
    augment = replace(AugmentConfig.none(), flips=True, rot90=True)
    warmup = max(1, round(0.05 * args.steps))
    t0, running = time.perf_counter(), []
    for step in range(args.steps):
        if args.refresh and step and step % args.refresh == 0:  # new segments keep it varied
            k = int(rng.integers(len(samples)))
            samples[k] = make_sample(args.segments + step // args.refresh, rng, shape)
        images, labels = draw_batch(samples, rng, args.batch)
        images, labels = augment_batch(images, labels, augment, args.seed, step)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, warmup, 0.01)
        loss = sparse_loss(model(images), labels, smoothing=args.smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running.append(float(loss.detach()))
        if (step + 1) % 100 == 0:
            print(f"step {step + 1}/{args.steps} loss {np.mean(running):.4f} "
                  f"{time.perf_counter() - t0:.0f}s", flush=True)  # fmt: skip
            running = []
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, help="the .safetensors file to write")
    p.add_argument("--steps", type=int, default=450)
    p.add_argument("--batch", type=int, default=8, help="tiles a step")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")
    p.add_argument("--segments", type=int, default=32, help="segments in the pool")
    p.add_argument("--refresh", type=int, default=10, help="replace one segment every N steps")
    p.add_argument("--height", type=int, default=320, help="segment height (px)")
    p.add_argument("--width-px", type=int, default=448, help="segment width (px)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    model = pretrain(args)
    seconds = time.perf_counter() - t0
    provenance = {
        "source": "benchmarks/pretrain_starter.py",
        "data": "synthetic crackle (napari_inkdetect.synthetic.make_segment), full labels",
        "steps": args.steps, "batch_size": args.batch, "lr": args.lr, "seed": args.seed,
        "segments": args.segments, "refresh": args.refresh, "seed_base": SEED_BASE,
        "ranges": {k: list(v) if isinstance(v, tuple) else v for k, v in RANGES.items()},
        "voxel_size_um": 7.91,
    }  # fmt: skip
    out = save_checkpoint(args.out, model, in_layers=LAYERS, tile_size=TILE, scale=1.0,
                          provenance=provenance)  # fmt: skip
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB) in {seconds:.0f}s")
    print(f"sha256 {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

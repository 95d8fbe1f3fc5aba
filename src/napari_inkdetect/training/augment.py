"""Augmentations of whole batches as torch ops, on whichever device the batch is on.

Tiles are ``(B, 1, D, H, W)``, labels ``(B, H, W)`` (0/1/2). Geometric transforms move both
(labels with nearest sampling, padding with 0 = unlabeled); intensity, noise, blur, dropout and
the depth augmentations touch the image only. Random choices come from a generator seeded per
step, so a resumed run repeats them exactly.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from napari_inkdetect.training.config import AugmentConfig


def step_generator(seed: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator for one step's augmentation, independent of everything else."""
    g = torch.Generator(device=device)
    g.manual_seed(int(np.random.SeedSequence([seed, step, 1]).generate_state(1)[0]))
    return g


def _rand(g: torch.Generator, n: int) -> torch.Tensor:
    return torch.rand(n, generator=g)


def _uniform(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * _rand(g, n)


def flip_rot90(
    images: torch.Tensor,
    labels: torch.Tensor,
    g: torch.Generator,
    flip: bool = True,
    rot90: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random horizontal flip and multiple of 90 degrees per tile, image and labels alike."""
    flips = (_rand(g, images.shape[0]) < 0.5) & flip
    turns = torch.randint(0, 4 if rot90 else 1, (images.shape[0],), generator=g)
    out_i, out_l = [], []
    for x, y, f, k in zip(images, labels, flips.tolist(), turns.tolist(), strict=True):
        if f:
            x, y = x.flip(-1), y.flip(-1)
        out_i.append(torch.rot90(x, k, dims=(-2, -1)))
        out_l.append(torch.rot90(y, k, dims=(-2, -1)))
    return torch.stack(out_i), torch.stack(out_l)


def affine(
    images: torch.Tensor,
    labels: torch.Tensor,
    g: torch.Generator,
    degrees: float,
    scale: tuple[float, float],
    p: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Small in-plane rotation and zoom (one ``affine_grid`` for the batch); identity for the
    tiles not chosen. Labels are resampled nearest and padded with 0 (unlabeled)."""
    b = images.shape[0]
    chosen = (_rand(g, b) < p).float()
    angle = torch.deg2rad(_uniform(g, b, -degrees, degrees)) * chosen
    zoom = 1 + (_uniform(g, b, *scale) - 1) * chosen
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    zero = torch.zeros_like(cos)
    rows = [torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)]
    theta = torch.stack(rows, 1)
    theta = theta.to(images.device, images.dtype)
    planes = images[:, 0]
    grid = F.affine_grid(theta, list(planes.shape), align_corners=False)
    planes = F.grid_sample(planes, grid, mode="bilinear", align_corners=False)
    lab = labels[:, None].to(images.dtype)
    lab = F.grid_sample(lab, grid, mode="nearest", align_corners=False)
    return planes[:, None], lab[:, 0].round().to(labels.dtype)


def intensity(images: torch.Tensor, g: torch.Generator, cfg: AugmentConfig) -> torch.Tensor:
    """Brightness shift, contrast around each tile's mean, and gamma."""
    b = images.shape[0]
    chosen = (_rand(g, b) < cfg.p_intensity).float()
    shift = _uniform(g, b, -cfg.brightness, cfg.brightness) * chosen
    gain = 1 + _uniform(g, b, -cfg.contrast, cfg.contrast) * chosen
    gamma = 1 + (_uniform(g, b, *cfg.gamma) - 1) * chosen
    view = (b, 1, 1, 1, 1)
    shift, gain, gamma = (t.to(images.device, images.dtype).view(view)
                          for t in (shift, gain, gamma))  # fmt: skip
    mean = images.mean(dim=(1, 2, 3, 4), keepdim=True)
    out = (images - mean) * gain + mean + shift
    return out.clamp(0, 1) ** gamma


def noise(images: torch.Tensor, g: torch.Generator, gd: torch.Generator, std: float, p: float):
    """Gaussian noise of random strength up to ``std`` on the chosen tiles."""
    b = images.shape[0]
    sigma = (_rand(g, b) * std * (_rand(g, b) < p)).to(images.device, images.dtype)
    if not bool((sigma > 0).any()):
        return images
    field = torch.randn(images.shape, generator=gd, device=images.device, dtype=images.dtype)
    return images + field * sigma.view(b, 1, 1, 1, 1)


def blur(images: torch.Tensor, g: torch.Generator, p: float) -> torch.Tensor:
    """In-plane Gaussian blur (sigma 0.5..1.2) of the chosen tiles."""
    b = images.shape[0]
    chosen = (_rand(g, b) < p).tolist()
    sigmas = _uniform(g, b, 0.5, 1.2).tolist()
    out = images.clone()
    for i, (c, s) in enumerate(zip(chosen, sigmas, strict=True)):
        if c:
            out[i] = _gauss2d(images[i], s)
    return out


def _gauss2d(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, math.ceil(2 * sigma))
    k = torch.exp(-(torch.arange(-r, r + 1, device=x.device, dtype=x.dtype) ** 2) / (2 * sigma**2))
    k = k / k.sum()
    shape = x.shape
    planes = x.reshape(-1, 1, shape[-2], shape[-1])
    planes = F.conv2d(F.pad(planes, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    planes = F.conv2d(F.pad(planes, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    return planes.reshape(shape)


def coarse_dropout(images: torch.Tensor, g: torch.Generator, p: float) -> torch.Tensor:
    """Zero 1..4 rectangles (through all layers) of up to a quarter tile in the chosen tiles."""
    b, h, w = images.shape[0], images.shape[-2], images.shape[-1]
    keep = torch.ones((b, 1, 1, h, w), dtype=images.dtype)
    for i in range(b):
        if _rand(g, 1).item() >= p:
            continue
        for _ in range(int(torch.randint(1, 5, (1,), generator=g))):
            dh, dw = (int(torch.randint(max(1, s // 16), max(2, s // 4), (1,), generator=g))
                      for s in (h, w))  # fmt: skip
            y, x = (
                int(torch.randint(0, h - dh + 1, (1,), generator=g)),
                int(torch.randint(0, w - dw + 1, (1,), generator=g)),
            )
            keep[i, ..., y : y + dh, x : x + dw] = 0
    return images * keep.to(images.device)


def depth_crop_paste(
    images: torch.Tensor, g: torch.Generator, min_layers: int, p: float
) -> torch.Tensor:
    """4th place: ``L`` (``min_layers``..D) consecutive layers pasted at a random depth into an
    otherwise zero window, so the model does not rely on where along depth ink sits."""
    b, d = images.shape[0], images.shape[2]
    out = images.clone()
    for i in range(b):
        if _rand(g, 1).item() >= p:
            continue
        n = int(torch.randint(min(min_layers, d), d + 1, (1,), generator=g))
        src = int(torch.randint(0, d - n + 1, (1,), generator=g))
        dst = int(torch.randint(0, d - n + 1, (1,), generator=g))
        out[i].zero_()
        out[i, :, dst : dst + n] = images[i, :, src : src + n]
    return out


def layer_cutout(images: torch.Tensor, g: torch.Generator, p: float) -> torch.Tensor:
    """4th place: zero a few (1..D/4) random layers of the chosen tiles."""
    b, d = images.shape[0], images.shape[2]
    keep = torch.ones((b, 1, d, 1, 1), dtype=images.dtype)
    for i in range(b):
        if _rand(g, 1).item() < p:
            n = int(torch.randint(1, max(2, d // 4 + 1), (1,), generator=g))
            keep[i, 0, torch.randperm(d, generator=g)[:n]] = 0
    return images * keep.to(images.device)


def augment_batch(
    images: torch.Tensor, labels: torch.Tensor, cfg: AugmentConfig, seed: int, step: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """All enabled augmentations of one step's batch, on the batch's device."""
    g = step_generator(seed, step)
    gd = step_generator(seed, step, images.device) if images.device.type != "cpu" else g
    if cfg.flips or cfg.rot90:
        images, labels = flip_rot90(images, labels, g, cfg.flips, cfg.rot90)
    if cfg.affine:
        images, labels = affine(images, labels, g, cfg.affine_degrees, cfg.affine_scale,
                                cfg.p_affine)  # fmt: skip
    if cfg.depth_crop:
        images = depth_crop_paste(images, g, cfg.depth_crop_min, cfg.p_depth_crop)
    if cfg.layer_cutout:
        images = layer_cutout(images, g, cfg.p_cutout)
    if cfg.intensity:
        images = intensity(images, g, cfg)
    if cfg.blur:
        images = blur(images, g, cfg.p_blur)
    if cfg.noise:
        images = noise(images, g, gd, cfg.noise_std, cfg.p_noise)
    if cfg.coarse_dropout:
        images = coarse_dropout(images, g, cfg.p_dropout)
    return images.contiguous(), labels.contiguous()

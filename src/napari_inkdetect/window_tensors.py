"""A window as the model sees it: normalised, resampled torch tensors in, maps back out.

The torch half of :mod:`napari_inkdetect.windows` (which stays torch-free), shared by the
trainer and the predictor so that inference repeats training exactly.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from napari_inkdetect.windows import WindowSpec

__all__ = ["from_uint8", "to_model_input", "to_volume_pixels"]


def to_model_input(raw: np.ndarray, spec: WindowSpec) -> torch.Tensor:
    """Normalise and resample raw ``(depth, e, e)`` blocks to ``(layers, tile, tile)`` float32.

    Accepts a leading batch axis. Depth is only resampled with legacy ``depth_scale``.
    """
    batched = raw.ndim == 4
    x = torch.from_numpy(spec.normalisation.apply(raw if batched else raw[None]))
    if x.shape[-1] != spec.tile or (spec.depth_scale and x.shape[1] != spec.layers):
        size = (spec.layers if spec.depth_scale else x.shape[1], spec.tile, spec.tile)
        x = F.interpolate(x[:, None], size=size, mode="trilinear", align_corners=False)[:, 0]
    return x if batched else x[0]


def from_uint8(x: torch.Tensor, spec: WindowSpec) -> torch.Tensor:
    """:meth:`Normalisation.to_uint8` values (on any device) -> the float32 model input that
    :func:`to_model_input` makes from the raw block, bit for bit (no resampling: scale 1)."""
    return x.float().div_(spec.normalisation.divide)


def to_volume_pixels(prob: torch.Tensor, spec: WindowSpec) -> torch.Tensor:
    """Model-resolution maps ``(..., tile, tile)`` back to the volume's pixels ``(..., e, e)``."""
    if spec.extent == spec.tile:
        return prob
    shape = prob.shape
    flat = prob.reshape(-1, 1, shape[-2], shape[-1]).float()
    out = F.interpolate(
        flat, size=(spec.extent, spec.extent), mode="bilinear", align_corners=False, antialias=True
    )
    return out.reshape(*shape[:-2], spec.extent, spec.extent)

"""The 2D decoder of the Kaggle ink-detection 4th-place models.

The encoder's four stage outputs are averaged over depth (:func:`depth_mean`), then, from the
deepest stage up, each map is upsampled x2 (bilinear, ``align_corners=False``), concatenated
*after* the next shallower map and fused by ``convs[i]`` (3x3 conv without bias + BN + ReLU).
``logit`` (1x1 conv) gives the 2-class logits at 1/4 resolution, upsampled x4 to the input.
The names ``convs.{i}.{0,1}`` and ``logit`` are the checkpoint keys (``decoder.*``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Decoder", "depth_mean"]


def depth_mean(features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Average each ``(B, C, D, H, W)`` stage output over depth, giving ``(B, C, H, W)``."""
    return [f.mean(dim=2) for f in features]


def _upsample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    # Given as a size rather than a scale so odd sizes still line up; for the supported
    # multiples of 32 this is exactly the x2 / x4 upsampling of the original models.
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class Decoder(nn.Module):
    """U-Net-like 2D decoder over depth-pooled features.

    Parameters
    ----------
    encoder_channels
        Channels of the stage outputs, shallow to deep (e.g. 256/512/1024/2048).
    num_classes
        Output logits (2: background, ink).
    """

    def __init__(self, encoder_channels: Sequence[int], num_classes: int = 2) -> None:
        super().__init__()
        dims = list(encoder_channels)
        self.convs = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(dims[i] + dims[i + 1], dims[i], 3, padding=1, bias=False),
                nn.BatchNorm2d(dims[i]),
                nn.ReLU(inplace=True),
            )
            for i in range(len(dims) - 1)
        )
        self.logit = nn.Conv2d(dims[0], num_classes, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal 3x3 convolutions and BN weight 1 / bias 0, like the encoder."""
        if self.logit.weight.is_meta:  # shapes only: random init would just cost time
            return
        for conv_bn_relu in self.convs:
            nn.init.kaiming_normal_(conv_bn_relu[0].weight, mode="fan_out", nonlinearity="relu")
            nn.init.ones_(conv_bn_relu[1].weight)
            nn.init.zeros_(conv_bn_relu[1].bias)
        self.logit.reset_parameters()

    def forward(
        self, features: Sequence[torch.Tensor], out_size: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Fuse 2D maps (shallow to deep) into logits of size ``out_size`` (default x4)."""
        x = features[-1]
        for i in range(len(features) - 2, -1, -1):
            skip = features[i]
            x = torch.cat([skip, _upsample(x, skip.shape[-2:])], dim=1)
            x = self.convs[i](x)
        x = self.logit(x)
        if out_size is None:
            out_size = (x.shape[-2] * 4, x.shape[-1] * 4)
        return _upsample(x, out_size)

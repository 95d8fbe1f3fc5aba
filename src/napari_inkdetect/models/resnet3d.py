"""3D ResNet and ResNeXt encoders, built from one table.

The module and attribute names (``conv1``, ``bn1``, ``layer1..4``, ``downsample.0/1``, ``fc``)
follow kenshohara/3D-ResNets-PyTorch ``models/resnet.py`` on purpose: they are the keys of the
Kinetics-pretrained checkpoints and of the Kaggle ink-detection models that users already hold.
Everything else is table-driven: :data:`ENCODER_SPECS` maps a name to ``(block, stages, planes)``
and :func:`build_encoder` makes any of them at any width multiplier. :func:`canonical_name` is
the one place where a name users type (``r3d50``, ``ResNeXt-101``) is checked against the table.

Stem: ``conv1`` (7,7,7) stride (1,2,2) padding 3, BN, ReLU, then a 3x3x3 max-pool with stride 2
in all three dimensions, always applied (the ink models were trained that way). Stages
``layer1..4`` have strides 1, 2, 2, 2 and shortcut type B (1x1x1 conv + BN where the shape
changes). :meth:`ResNet3d.forward_features` returns the four stage outputs; ``fc`` is kept only
so that state dicts match the files and is never used in ``forward_features``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from napari_inkdetect.errors import ConfigError

__all__ = [
    "ENCODER_SPECS",
    "BasicBlock",
    "Bottleneck",
    "EncoderSpec",
    "ResNeXtBottleneck",
    "ResNet3d",
    "build_encoder",
    "canonical_name",
    "scaled_channels",
]


def conv3x3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1) -> nn.Conv3d:
    return nn.Conv3d(in_planes, out_planes, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv3d:
    return nn.Conv3d(in_planes, out_planes, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3x3 convolutions (ResNet-10/18/34)."""

    expansion = 1

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3x3(planes, planes)
        self.bn2 = nn.BatchNorm3d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1x1 -> 3x3x3 -> 1x1x1 with 4x expansion (ResNet-50 and deeper)."""

    expansion = 4

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.conv1 = conv1x1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = conv3x3x3(planes, planes, stride, groups=groups)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = conv1x1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm3d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNeXtBottleneck(Bottleneck):
    """Grouped bottleneck with 2x expansion; ``planes`` is the (grouped) middle width."""

    expansion = 2


@dataclass(frozen=True)
class EncoderSpec:
    """One row of the encoder table: what differs between the named architectures."""

    block: type[nn.Module]
    stages: tuple[int, int, int, int]
    planes: tuple[int, int, int, int] = (64, 128, 256, 512)
    cardinality: int = 1
    n_classes: int = 1039  # size of the (unused) ``fc`` in the files users hold

    @property
    def block_name(self) -> str:
        names = {BasicBlock: "basic", Bottleneck: "bottleneck", ResNeXtBottleneck: "resnext"}
        return names[self.block]


_RESNEXT_PLANES = (128, 256, 512, 1024)

#: The model family as a table: name -> (block, blocks per stage, planes, cardinality).
ENCODER_SPECS: dict[str, EncoderSpec] = {
    "resnet10": EncoderSpec(BasicBlock, (1, 1, 1, 1)),
    "resnet18": EncoderSpec(BasicBlock, (2, 2, 2, 2)),
    "resnet34": EncoderSpec(BasicBlock, (3, 4, 6, 3)),
    "resnet50": EncoderSpec(Bottleneck, (3, 4, 6, 3)),
    "resnet101": EncoderSpec(Bottleneck, (3, 4, 23, 3)),
    "resnet152": EncoderSpec(Bottleneck, (3, 8, 36, 3)),
    "resnet200": EncoderSpec(Bottleneck, (3, 24, 36, 3)),
    "resnext101": EncoderSpec(
        ResNeXtBottleneck, (3, 4, 23, 3), _RESNEXT_PLANES, cardinality=32, n_classes=600
    ),
}


def canonical_name(name: str) -> str:
    """Map spellings users meet (``r3d50``, ``resnet-50``, ``ResNeXt_101``) to table names.

    Raises
    ------
    ConfigError
        For a name that is no architecture of :data:`ENCODER_SPECS`, listing the valid ones.
    """
    key = re.sub(r"[-_\s]", "", str(name).lower())
    key = re.sub(r"^r3d(?=\d)", "resnet", key)
    if key not in ENCODER_SPECS:
        valid = ", ".join(ENCODER_SPECS)
        raise ConfigError(f"unknown architecture {name!r}; valid names: {valid}")
    return key


def scaled_channels(channels: int, width: float) -> int:
    """Channel count at a width multiplier, rounded down as kenshohara's ``widen_factor``."""
    return int(channels * width)


def _check_width(spec: EncoderSpec, width: float) -> int:
    """Validate ``width`` for ``spec`` and return the scaled cardinality (groups)."""
    if not isinstance(width, (int, float)) or not 0 < width <= 8:
        raise ConfigError(f"width must be a number in (0, 8], got {width!r}")
    if scaled_channels(64, width) < 1:
        raise ConfigError(f"width {width} leaves fewer than 1 channel in conv1 (64 x width)")
    groups = max(1, int(spec.cardinality * width)) if spec.cardinality > 1 else 1
    for planes in spec.planes:
        if scaled_channels(planes, width) % groups:
            raise ConfigError(
                f"width {width} gives {scaled_channels(planes, width)} middle channels, "
                f"not divisible by the {groups} groups of cardinality {spec.cardinality} x width"
            )
    return groups


@contextlib.contextmanager
def _frozen_bn_stats(module: nn.Module) -> Iterator[None]:
    """Keep BatchNorm running statistics unchanged while a checkpointed stage is recomputed.

    Without this, recomputing a stage in the backward pass would update the running mean and
    variance a second time, and activation checkpointing would change the trained model.
    """
    saved = [
        (b, b.running_mean.clone(), b.running_var.clone(), b.num_batches_tracked.clone())
        for b in module.modules()
        if isinstance(b, nn.modules.batchnorm._BatchNorm) and b.track_running_stats
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for bn, mean, var, count in saved:
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(var)
                bn.num_batches_tracked.copy_(count)


class ResNet3d(nn.Module):
    """Generic 3D ResNet / ResNeXt encoder built from ``(block, stages, planes, width)``.

    Parameters
    ----------
    spec
        The architecture row (see :data:`ENCODER_SPECS`).
    width
        Channel multiplier (1.0 = the published models; 0.125 = 1/8-width for tests and CPUs).
    in_chans
        Input channels: 1 for ink models, 3 for the Kinetics-pretrained files.
    checkpoint_stages
        Recompute each stage in the backward pass instead of storing its activations.
    """

    def __init__(
        self,
        spec: EncoderSpec,
        width: float = 1.0,
        in_chans: int = 1,
        checkpoint_stages: bool = False,
    ) -> None:
        super().__init__()
        groups = _check_width(spec, width)
        self.spec = spec
        self.width = width
        self.checkpoint_stages = checkpoint_stages
        block_planes = [scaled_channels(p, width) for p in spec.planes]
        self.in_planes = scaled_channels(64, width)
        self.conv1 = nn.Conv3d(
            in_chans, self.in_planes, (7, 7, 7), stride=(1, 2, 2), padding=(3, 3, 3), bias=False
        )
        self.bn1 = nn.BatchNorm3d(self.in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        block = partial(spec.block, groups=groups)
        expansion = spec.block.expansion
        self.layer1 = self._make_layer(block, expansion, block_planes[0], spec.stages[0], 1)
        self.layer2 = self._make_layer(block, expansion, block_planes[1], spec.stages[1], 2)
        self.layer3 = self._make_layer(block, expansion, block_planes[2], spec.stages[2], 2)
        self.layer4 = self._make_layer(block, expansion, block_planes[3], spec.stages[3], 2)
        self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
        self.fc = nn.Linear(block_planes[3] * expansion, spec.n_classes)
        #: Channels of the four stage outputs, shallow to deep (the decoder's input widths).
        self.out_channels: tuple[int, ...] = tuple(p * expansion for p in block_planes)
        self.reset_parameters()

    def _make_layer(
        self,
        block: Callable[..., nn.Module],
        expansion: int,
        planes: int,
        blocks: int,
        stride: int,
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.in_planes != planes * expansion:
            downsample = nn.Sequential(
                conv1x1x1(self.in_planes, planes * expansion, stride),
                nn.BatchNorm3d(planes * expansion),
            )
        layers = [block(self.in_planes, planes, stride=stride, downsample=downsample)]
        self.in_planes = planes * expansion
        layers += [block(self.in_planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def reset_parameters(self) -> None:
        """Kaiming-normal convolutions (fan_out, relu), BN weight 1 and bias 0, as kenshohara."""
        if self.conv1.weight.is_meta:  # shapes only: random init would just cost time
            return
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    @property
    def stages(self) -> tuple[nn.Sequential, ...]:
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def _run(
        self, fn: Callable[[torch.Tensor], torch.Tensor], owner: nn.Module, x: torch.Tensor
    ) -> torch.Tensor:
        """``fn(x)``, checkpointed when enabled: its activations are recomputed in backward."""
        if not (self.checkpoint_stages and torch.is_grad_enabled()):
            return fn(x)
        contexts = partial(lambda m: (contextlib.nullcontext(), _frozen_bn_stats(m)), owner)
        return checkpoint(fn, x, use_reentrant=False, context_fn=contexts)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four stage outputs ``(B, C_i, D_i, H_i, W_i)``, shallow to deep.

        With ``checkpoint_stages`` the stem (whose full-resolution activations are the largest)
        and each of the four stages are checkpointed separately.
        """
        x = self._run(self._stem, self.bn1, x)
        features = []
        for stage in self.stages:
            x = self._run(stage, stage, x)
            features.append(x)
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classification forward (video logits), as the pretrained files were trained."""
        x = self.avgpool(self.forward_features(x)[-1]).flatten(1)
        return self.fc(x)


def build_encoder(
    name: str, width: float = 1.0, in_chans: int = 1, checkpoint_stages: bool = False
) -> ResNet3d:
    """Build the encoder called ``name`` (any spelling :func:`canonical_name` accepts)."""
    spec = ENCODER_SPECS[canonical_name(name)]
    return ResNet3d(spec, width, in_chans=in_chans, checkpoint_stages=checkpoint_stages)

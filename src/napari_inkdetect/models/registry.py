"""The model registry: names, builders, parameter counts and FLOPs (computed, never typed in).

``list_models()`` gives the names, ``get_model(name, width)`` builds an :class:`InkDetector`
and ``get_model_info(name, width)`` counts its parameters (built on the ``meta`` device, so no
memory) and the convolution FLOPs of one ``1 x 22 x 256 x 256`` tile from the layer shapes
(:func:`conv_flops`, checked against ``FlopCounterMode`` in the tests).
``model_table()`` is what ``napari-inkdetect models`` prints. Like torchvision's
``list_models``/``get_model``, the table of architectures lives in one dict
(:data:`napari_inkdetect.models.resnet3d.ENCODER_SPECS`), and names are checked in one place
(:func:`~napari_inkdetect.models.resnet3d.canonical_name`, re-exported here), which
:class:`InkDetector` itself calls. The registry sits on top of the package: it imports the
detector and the encoder table, and nothing in the package imports it but ``__init__``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from napari_inkdetect.models.detector import InkDetector
from napari_inkdetect.models.resnet3d import ENCODER_SPECS, canonical_name

__all__ = [
    "TILE_SHAPE",
    "ModelInfo",
    "canonical_name",
    "conv_flops",
    "count_flops",
    "get_model",
    "get_model_info",
    "list_models",
    "model_table",
]

#: The tile the FLOPs are counted for: (channels, depth, height, width).
TILE_SHAPE = (1, 22, 256, 256)

#: The pretrained files users hold for each architecture (for messages and docs).
PRETRAINED_FILES = {
    "resnet10": "r3d10_KM_200ep.pth",
    "resnet18": "r3d18_KM_200ep.pth",
    "resnet34": "r3d34_KM_200ep.pth",
    "resnet50": "r3d50_KM_200ep.pth",
    "resnet101": "r3d101_KM_200ep.pth",
    "resnet152": "r3d152_KM_200ep.pth, resnet152_fold.pth",
    "resnet200": "r3d200_KM_200ep.pth, resnet200_fold.pth",
    "resnext101": "kinetics_resnext_101_RGB_16_best.pth, resnext101_fold.pth",
}


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one architecture at one width."""

    name: str
    block: str
    stages: tuple[int, int, int, int]
    width: float
    params: int
    encoder_params: int
    decoder_params: int
    unused_fc_params: int
    gflops_per_tile: float
    pretrained_files: str


def list_models() -> list[str]:
    """The architecture names, shallow to deep."""
    return list(ENCODER_SPECS)


def get_model(name: str, width: float = 1.0, **kwargs: object) -> InkDetector:
    """Build the model ``name`` at ``width`` (keyword arguments go to :class:`InkDetector`).

    The same as ``InkDetector(name, width, **kwargs)``, which accepts the same spellings.
    """
    return InkDetector(name, width, **kwargs)


def count_flops(model: torch.nn.Module, tile_shape: tuple[int, ...] = TILE_SHAPE) -> int:
    """FLOPs (2 per multiply-add of convolutions) of one forward pass of one tile, measured.

    Runs the model under :class:`torch.utils.flop_counter.FlopCounterMode` (use the ``meta``
    device to count without memory). Slower than :func:`conv_flops`, which tests compare it to.
    """
    device = next(model.parameters()).device
    x = torch.zeros((1, *tile_shape), device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def _conv_out(size: tuple[int, ...], conv: nn.Conv2d | nn.Conv3d) -> tuple[int, ...]:
    return tuple(
        (n + 2 * p - d * (k - 1) - 1) // s + 1
        for n, k, s, p, d in zip(
            size, conv.kernel_size, conv.stride, conv.padding, conv.dilation, strict=True
        )
    )


def _conv_cost(size: tuple[int, ...], conv: nn.Conv2d | nn.Conv3d) -> tuple[int, tuple]:
    """FLOPs of ``conv`` on an input of spatial ``size``, and its output size."""
    out = _conv_out(size, conv)
    per_voxel = conv.out_channels * (conv.in_channels // conv.groups) * math.prod(conv.kernel_size)
    return 2 * per_voxel * math.prod(out), out


def conv_flops(model: InkDetector, tile_shape: tuple[int, ...] = TILE_SHAPE) -> int:
    """FLOPs (2 per multiply-add) of the convolutions of one forward pass, from shapes alone.

    Walks the encoder blocks and the decoder with the output-size formula of each convolution,
    so it costs nothing even for full-width ResNet-200.
    """
    enc = model.encoder
    flops, size = _conv_cost(tuple(tile_shape[1:]), enc.conv1)
    size = tuple((n + 2 - 3) // 2 + 1 for n in size)  # the 3x3x3 stride-2 max-pool
    stage_sizes = []
    for stage in enc.stages:
        for block in stage:
            convs = [getattr(block, n) for n in ("conv1", "conv2", "conv3") if hasattr(block, n)]
            block_in = size
            for conv in convs:
                cost, size = _conv_cost(size, conv)
                flops += cost
            if block.downsample is not None:
                flops += _conv_cost(block_in, block.downsample[0])[0]
        stage_sizes.append(size[1:])  # depth is averaged away before the decoder
    for i, fuse in enumerate(model.decoder.convs):
        flops += _conv_cost(stage_sizes[i], fuse[0])[0]
    flops += _conv_cost(stage_sizes[0], model.decoder.logit)[0]
    return flops


def _numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@functools.lru_cache(maxsize=64)
def get_model_info(name: str, width: float = 1.0) -> ModelInfo:
    """Parameters and GFLOPs per ``1x22x256x256`` tile of ``name`` at ``width``, counted."""
    name = canonical_name(name)
    with torch.device("meta"):
        model = InkDetector(name, width).eval()
    spec = ENCODER_SPECS[name]
    decoder = _numel(model.decoder)
    encoder = _numel(model.encoder) - _numel(model.encoder.fc)
    return ModelInfo(
        name=name,
        block=spec.block_name,
        stages=spec.stages,
        width=width,
        params=encoder + decoder,
        encoder_params=encoder,
        decoder_params=decoder,
        unused_fc_params=_numel(model.encoder.fc),
        gflops_per_tile=conv_flops(model) / 1e9,
        pretrained_files=PRETRAINED_FILES.get(name, ""),
    )


def model_table(width: float = 1.0) -> str:
    """A printable table of every architecture: block, stages, parameters and GFLOPs per tile.

    ``params`` counts the encoder and decoder, not the unused Kinetics ``fc`` classifier
    that is kept only for checkpoint-key compatibility; FLOPs count convolutions and matmuls.
    """
    header = (
        f"{'name':<11} {'block':<10} {'stages':<10} {'params (M)':>10} {'encoder':>8} "
        f"{'decoder':>8} {'GFLOPs/tile':>11}  pretrained files"
    )
    lines = [header, "-" * len(header)]
    for name in list_models():
        info = get_model_info(name, width)
        lines.append(
            f"{info.name:<11} {info.block:<10} {'-'.join(map(str, info.stages)):<10} "
            f"{info.params / 1e6:>10.1f} {info.encoder_params / 1e6:>8.1f} "
            f"{info.decoder_params / 1e6:>8.1f} {info.gflops_per_tile:>11.1f}  "
            f"{info.pretrained_files}"
        )
    tile = "x".join(map(str, TILE_SHAPE[1:]))
    lines.append(
        f"width {width}; GFLOPs per 1x{tile} tile (conv + matmul, 2 per multiply-add); "
        "params exclude the unused Kinetics fc kept in the files"
    )
    return "\n".join(lines)

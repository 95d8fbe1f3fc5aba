"""``InkDetector``: 3D encoder + depth-mean pooling + 2D decoder, and its speed options.

``InkDetector(arch, width)`` maps ``(B, in_chans, D, H, W)`` to 2-class logits ``(B, 2, H, W)``
(any D >= 4 and H, W multiples of 32). Its state-dict names are ``encoder.*`` / ``decoder.*``,
exactly those of the Kaggle ink-detection 4th-place files, so those load without conversion.

Speed and memory options, each a flag tested against the plain fp32 path:

- :func:`autocast_context` -- bf16/fp16 autocast (``"auto"``: bf16 on CPUs with bf16 support
  and on CUDA where supported, else fp16 on CUDA).
- :func:`to_channels_last_3d` -- channels-last weights (5D: ``channels_last_3d``, 4D decoder
  weights: ``channels_last``) and :func:`channels_last_input` for the input batch.
- :meth:`InkDetector.set_activation_checkpointing` -- recompute each encoder stage in backward.
- :func:`maybe_compile` -- ``torch.compile`` when asked and available.

:class:`SpeedOptions` groups them; :meth:`SpeedOptions.apply` prepares a model and
:meth:`SpeedOptions.autocast` gives the matching context for the forward pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from napari_inkdetect.errors import ConfigError
from napari_inkdetect.models.checkpoint_info import CheckpointInfo
from napari_inkdetect.models.checkpoint_loading import load_model
from napari_inkdetect.models.decoder import Decoder, depth_mean
from napari_inkdetect.models.resnet3d import ResNet3d, build_encoder, canonical_name

__all__ = [
    "InkDetector",
    "SpeedOptions",
    "autocast_context",
    "channels_last_input",
    "cpu_supports_bf16",
    "maybe_compile",
    "resolve_autocast_dtype",
    "to_channels_last_3d",
    "unwrap_model",
]


class InkDetector(nn.Module):
    """3D ResNet encoder, depth-mean pooling per stage and 2D decoder to ink logits.

    Parameters
    ----------
    arch
        A registry name: ``resnet10``, ``resnet18``, ... ``resnet200``, ``resnext101``, in any
        spelling :func:`~napari_inkdetect.models.resnet3d.canonical_name` accepts (``r3d50``);
        ``self.arch`` is the registry name.
    width
        Channel multiplier; 1.0 loads the published checkpoints, 0.125 runs fast on a CPU.
    in_chans
        Input channels (1 for surface volumes).
    num_classes
        Output logits (2: background, ink; ink probability is ``softmax(...)[:, 1]``).
    checkpoint_stages
        Activation (gradient) checkpointing per encoder stage, to finetune big models in
        little memory.
    """

    def __init__(
        self,
        arch: str,
        width: float = 1.0,
        *,
        in_chans: int = 1,
        num_classes: int = 2,
        checkpoint_stages: bool = False,
    ) -> None:
        super().__init__()
        self.arch = canonical_name(arch)
        self.width = width
        self.in_chans = in_chans
        self.encoder: ResNet3d = build_encoder(self.arch, width, in_chans, checkpoint_stages)
        self.decoder = Decoder(self.encoder.out_channels, num_classes)
        #: What the model was trained with (tile size, normalisation, ...), when known.
        self.info: CheckpointInfo | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, D, H, W)`` volume tiles to ``(B, num_classes, H, W)`` logits."""
        if x.ndim != 5:
            raise ValueError(f"expected a (B, C, D, H, W) tensor, got shape {tuple(x.shape)}")
        features = depth_mean(self.encoder.forward_features(x))
        return self.decoder(features, out_size=x.shape[-2:])

    def set_activation_checkpointing(self, enabled: bool = True) -> InkDetector:
        """Recompute each encoder stage during backward (saves memory, costs ~30% time)."""
        self.encoder.checkpoint_stages = bool(enabled)
        return self

    @property
    def activation_checkpointing(self) -> bool:
        return self.encoder.checkpoint_stages

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> InkDetector:
        """Rebuild a complete, ready-to-predict model from a checkpoint file alone.

        Accepts our own ``.safetensors`` format and the Kaggle ink-model files; refuses a
        file that holds only a pretrained encoder (its decoder would be random).
        """
        model, _ = load_model(cls, path, device=device, require_complete=True)
        return model

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, width={self.width}"

    @contextlib.contextmanager
    def calibration_folded(self, slope: float, offset: float) -> Iterator[InkDetector]:
        """The model predicting ``sigmoid(slope * logit(p) + offset)`` instead of ``p``,
        for as long as the block lasts (e.g. to save a calibrated checkpoint).

        The ink probability is ``sigmoid(l1 - l0)`` of the last 1x1 convolution's logits;
        scaling its weights and biases by ``slope`` and adding ``offset`` to the ink bias is
        exactly that map (the x4 bilinear upsampling after it is linear and keeps constants).
        The original tensors are put back bit for bit afterwards.
        """
        layer = self.decoder.logit
        if layer.out_channels != 2:
            raise ValueError("calibration needs the 2-class (background, ink) output")
        weight, bias = layer.weight.detach().clone(), layer.bias.detach().clone()
        with torch.no_grad():
            layer.weight.mul_(slope)
            layer.bias.mul_(slope)
            layer.bias[1] += offset
        try:
            yield self
        finally:
            with torch.no_grad():
                layer.weight.copy_(weight)
                layer.bias.copy_(bias)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a ``torch.compile`` wrapper (or the model itself)."""
    return getattr(model, "_orig_mod", model)


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (AVX512-BF16 / AMX), where bf16 is faster."""
    try:
        return bool(
            torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    except (AttributeError, RuntimeError):  # pragma: no cover - old or unusual builds
        return False


_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
           "float16": torch.float16}  # fmt: skip


def resolve_autocast_dtype(
    device: str | torch.device, dtype: str | torch.dtype | None = "auto"
) -> torch.dtype | None:
    """The autocast dtype for ``device`` (``None``: run in fp32).

    ``"auto"`` picks bf16 on CUDA when supported (fp16 otherwise) and bf16 on CPUs with native
    bf16 (else fp32, because emulated bf16 is slower than fp32 there).
    """
    device_type = torch.device(device).type
    if dtype is None or dtype in ("off", "none", "fp32", "float32", False, torch.float32):
        return None
    if dtype == "auto":
        if device_type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if device_type == "cpu" and cpu_supports_bf16() else None
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ConfigError(f"unknown autocast dtype {dtype!r}; use auto, bf16, fp16 or off")
        dtype = _DTYPES[dtype]
    if dtype == torch.float16 and device_type == "cpu":
        raise ConfigError("fp16 autocast is for CUDA; use bf16 on a CPU")
    return dtype


def autocast_context(
    device: str | torch.device, dtype: str | torch.dtype | None = "auto"
) -> contextlib.AbstractContextManager[Any]:
    """A context manager running the forward pass in mixed precision, or a no-op.

    Parameters
    ----------
    device
        Where the model runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device``).
    dtype
        ``"auto"``, ``"bf16"``, ``"fp16"``, a ``torch.dtype``, or ``None``/``"off"``.
    """
    resolved = resolve_autocast_dtype(device, dtype)
    if resolved is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=resolved)


def to_channels_last_3d(model: nn.Module) -> nn.Module:
    """Store 5D weights as ``channels_last_3d`` and 4D ones as ``channels_last``, in place.

    ``Module.to(memory_format=...)`` cannot do this for a model mixing 3D and 2D convolutions.
    """
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 5:
                p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
            elif p.ndim == 4:
                p.data = p.data.contiguous(memory_format=torch.channels_last)
    return model


def channels_last_input(x: torch.Tensor) -> torch.Tensor:
    """The input batch in ``channels_last_3d`` layout, to pair with :func:`to_channels_last_3d`."""
    return x.contiguous(memory_format=torch.channels_last_3d) if x.ndim == 5 else x


def maybe_compile(model: nn.Module, enabled: bool = True, **kwargs: Any) -> nn.Module:
    """``torch.compile(model)`` when ``enabled`` (the first call then compiles, slowly)."""
    if not enabled:
        return model
    if not hasattr(torch, "compile"):  # pragma: no cover - torch < 2.0
        raise ConfigError("torch.compile needs torch >= 2.0")
    return torch.compile(model, **kwargs)


@dataclass(frozen=True)
class SpeedOptions:
    """The speed/memory flags used by training and inference.

    Attributes
    ----------
    autocast
        ``"off"``, ``"auto"``, ``"bf16"`` or ``"fp16"`` (see :func:`autocast_context`).
    channels_last
        Use ``channels_last_3d`` weights and inputs.
    activation_checkpointing
        Recompute encoder stages in backward (training only).
    compile
        Wrap the model in ``torch.compile``.
    """

    autocast: str = "off"
    channels_last: bool = False
    activation_checkpointing: bool = False
    compile: bool = False

    def apply(self, model: InkDetector) -> nn.Module:
        """Prepare ``model`` (in place where possible); returns the module to call."""
        unwrap_model(model).set_activation_checkpointing(self.activation_checkpointing)
        if self.channels_last:
            to_channels_last_3d(model)
        return maybe_compile(model, self.compile)

    def autocast_context(self, device: str | torch.device) -> contextlib.AbstractContextManager:
        return autocast_context(device, self.autocast)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        return channels_last_input(x) if self.channels_last else x

"""Each speed/memory option against the plain fp32 path, with a stated tolerance."""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn.functional as F

from napari_inkdetect.errors import ConfigError
from napari_inkdetect.models import (
    InkDetector,
    SpeedOptions,
    autocast_context,
    channels_last_input,
    maybe_compile,
    to_channels_last_3d,
)
from napari_inkdetect.models.detector import cpu_supports_bf16, resolve_autocast_dtype


@pytest.fixture
def model() -> InkDetector:
    torch.manual_seed(0)
    model = InkDetector("resnet10", width=0.125)
    with torch.no_grad():  # realistic BN statistics
        model.train()(torch.randn(4, 1, 8, 64, 64))
    return model.eval()


@pytest.fixture
def batch() -> torch.Tensor:
    return torch.rand(2, 1, 8, 64, 64, generator=torch.Generator().manual_seed(1))


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().mean() / b.float().abs().mean()).item()


def test_bf16_autocast_close_to_fp32(model, batch):
    with torch.no_grad():
        ref = model(batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(batch)
    assert low.dtype == torch.bfloat16  # it really ran in bf16
    assert _rel_err(low, ref) < 0.03
    agree = (low.argmax(1) == ref.argmax(1)).float().mean().item()
    assert agree > 0.95


def test_autocast_context_choices():
    assert isinstance(autocast_context("cpu", "off"), type(autocast_context("cpu", None)))
    assert resolve_autocast_dtype("cpu", "off") is None
    assert resolve_autocast_dtype("cpu", "bf16") == torch.bfloat16
    expected = torch.bfloat16 if cpu_supports_bf16() else None
    assert resolve_autocast_dtype("cpu", "auto") == expected
    with pytest.raises(ConfigError, match="fp16 autocast is for CUDA"):
        autocast_context("cpu", "fp16")
    with pytest.raises(ConfigError, match="unknown autocast dtype"):
        autocast_context("cpu", "int8")
    with autocast_context("cpu", "bf16"):
        assert torch.is_autocast_enabled("cpu")


def test_channels_last_3d_matches(model, batch):
    with torch.no_grad():
        ref = model(batch)
        fast = to_channels_last_3d(copy.deepcopy(model))
        assert fast.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)
        assert fast.decoder.convs[0][0].weight.is_contiguous(memory_format=torch.channels_last)
        out = fast(channels_last_input(batch))
    assert (out - ref).abs().max().item() < 1e-4 * ref.abs().max().item() + 1e-5


def _train_step(model: InkDetector, batch: torch.Tensor) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad()
    target = (batch[:, 0, 0] > 0.5).long()
    F.cross_entropy(model(batch), target, label_smoothing=0.3).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_activation_checkpointing_same_gradients_and_bn_stats(model, batch):
    plain = copy.deepcopy(model)
    ckpt = copy.deepcopy(model).set_activation_checkpointing(True)
    assert ckpt.activation_checkpointing
    grads, grads_ckpt = _train_step(plain, batch), _train_step(ckpt, batch)
    assert grads.keys() == grads_ckpt.keys() and len(grads) > 40
    for name, g in grads.items():
        assert torch.allclose(grads_ckpt[name], g, atol=1e-5, rtol=1e-4), name
    # Recomputation must not update BatchNorm running statistics a second time.
    for (name, a), b in zip(plain.named_buffers(), ckpt.buffers(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name


def test_activation_checkpointing_is_used(model, batch, monkeypatch):
    import napari_inkdetect.models.resnet3d as resnet3d

    calls = []
    real = resnet3d.checkpoint
    monkeypatch.setattr(resnet3d, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    model.set_activation_checkpointing(True)
    _train_step(model, batch)
    assert len(calls) == 5  # the stem and each of the four stages
    with torch.no_grad():
        model.eval()(batch)
    assert len(calls) == 5  # inference does not checkpoint


def test_speed_options_apply(model, batch):
    with torch.no_grad():
        ref = model(batch)
    options = SpeedOptions(autocast="bf16", channels_last=True, activation_checkpointing=True)
    fast = options.apply(copy.deepcopy(model))
    assert fast.activation_checkpointing
    with torch.no_grad(), options.autocast_context("cpu"):
        out = fast(options.prepare_input(batch))
    assert _rel_err(out, ref) < 0.03


@pytest.mark.skipif(
    not os.environ.get("NAPARI_INKDETECT_TEST_COMPILE"),
    reason="torch.compile takes ~40 s on a 2-core CPU; set NAPARI_INKDETECT_TEST_COMPILE=1",
)
def test_torch_compile_matches(model, batch):
    compiled = maybe_compile(copy.deepcopy(model))
    with torch.no_grad():
        out, ref = compiled(batch), model(batch)
    assert (out - ref).abs().max().item() < 1e-4 * ref.abs().max().item() + 1e-5


def test_maybe_compile_disabled_is_identity(model):
    assert maybe_compile(model, enabled=False) is model

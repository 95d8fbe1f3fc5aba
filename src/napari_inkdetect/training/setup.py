"""Setting a training run up: settings resolved, labels split, model, sampler, optimiser.

Every input is checked here, before the first step, so a bad run fails at once.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_inkdetect.errors import ConfigError, LabelsError
from napari_inkdetect.io.digest import file_sha256
from napari_inkdetect.io.labels import INK, NOT_INK, value_counts
from napari_inkdetect.io.segment import open_segment, read_segment_labels
from napari_inkdetect.models import (
    InkDetector,
    load_checkpoint,
    to_channels_last_3d,
)
from napari_inkdetect.models.detector import (
    resolve_autocast_dtype,
)
from napari_inkdetect.training.config import TrainConfig, trained_parts
from napari_inkdetect.training.distributed import Distributed
from napari_inkdetect.training.init_settings import (
    resolve_init_settings,
    window_spec,
)
from napari_inkdetect.training.loss import class_weights
from napari_inkdetect.training.run import Run
from napari_inkdetect.training.run_files import (
    load_state,
    prepare_dir,
)
from napari_inkdetect.training.sampling import TileSampler
from napari_inkdetect.training.validation import (
    ValidationPlan,
    auto_split,
    given_plan,
)
from napari_inkdetect.windows import (
    WindowSpec,
)


def _read_labels(segment: Any, path: str) -> np.ndarray:
    labels = read_segment_labels(segment, Path(path))
    counts = value_counts(labels)
    for cls, name in ((INK, "ink (1)"), (NOT_INK, "not-ink (2)")):
        if counts[cls] == 0:
            raise LabelsError(
                f"{path}: no {name} pixels; paint both ink and not ink to train and validate"
            )
    return labels


def _window(config: TrainConfig, nz: int) -> tuple[WindowSpec, int]:
    """The window of a resolved ``config`` (see :mod:`.init_settings`) and its start layer."""
    spec = window_spec(config)
    start = spec.centred_start(nz) if config.start_layer is None else config.start_layer
    lo, hi = spec.start_bounds(nz)
    if not lo <= start <= hi:
        first, end = spec.source_range(start)
        raise ConfigError(
            f"start layer {start} reads layers {first}..{end - 1}, outside the volume's {nz} "
            f"layers (use a start layer in {lo}..{max(lo, hi)})"
        )
    return spec, start


def _plan_validation(
    config: TrainConfig, segment: Any, labels: np.ndarray, mask: np.ndarray | None, extent: int
) -> tuple[np.ndarray, ValidationPlan]:
    """Training labels and the validation plan: given labels, the automatic split of whole
    ink groups into dense boxes, or none (with the reason; the run says so)."""
    if config.val_labels:
        val = _read_labels(segment, config.val_labels)
        train = np.where(val > 0, 0, labels).astype(np.uint8)
        return train, given_plan(val, train, extent)
    return auto_split(labels, extent, config.val_fraction, config.seed, mask=mask)


def _build_model(config: TrainConfig) -> InkDetector:
    torch.manual_seed(config.seed)
    if config.init:
        model, _ = load_checkpoint(config.init)
        return model
    return InkDetector(config.arch, config.width)


def _freeze(model: InkDetector, spec: str) -> list[nn.Module]:
    """Freeze the parts not trained; returns the frozen modules (kept in eval mode)."""
    parts = trained_parts(spec)
    enc = model.encoder
    modules = {
        "stem": [enc.conv1, enc.bn1],
        **{f"layer{i}": [getattr(enc, f"layer{i}")] for i in range(1, 5)},
        "decoder": [model.decoder],
    }
    frozen = [m for name, mods in modules.items() if name not in parts for m in mods]
    for module in frozen:
        module.requires_grad_(False)
    return frozen


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def setup(config: TrainConfig) -> Run:
    dist = Distributed.from_env()
    segment = open_segment(config.segment)
    config, notes = resolve_init_settings(  # before prepare_dir: sizes may come from presets
        config, segment.voxel_size_um, n_layers=segment.shape[0], processes=dist.world_size
    )
    micro_batch = dist.local_batch(config.batch_size)
    spec, start = _window(config, segment.shape[0])
    labels = _read_labels(segment, config.labels)
    mask = segment.read_mask()
    train_labels, plan = _plan_validation(config, segment, labels, mask, spec.extent)
    if not (train_labels == INK).any() or not (train_labels == NOT_INK).any():
        raise LabelsError(
            f"{config.labels}: no ink or no not-ink left to train on once validation is "
            "held out; paint more, or give validation labels of their own"
        )
    model = _build_model(config)
    config = prepare_dir(config, write=dist.is_main)
    device = dist.resolve_device(config.device)
    if config.sync_batchnorm:
        model = dist.sync_batchnorm(model, device)
    sampler = TileSampler(
        segment,
        train_labels,
        spec,
        start,
        config.seed,
        config.depth_direction == "reverse",
        mask=mask,
        plan=plan,
    )
    total = config.steps
    if config.epochs is not None:
        total = max(1, math.ceil(config.epochs * sampler.n_label_tiles() / config.batch_size))
    frozen = _freeze(model, config.train)
    model.set_activation_checkpointing(config.activation_checkpointing)
    model.to(device)
    if config.channels_last:
        to_channels_last_3d(model)
    dist.start(device)
    autocast = training_autocast(device, config.autocast)
    dtype = resolve_autocast_dtype(device, autocast)
    provenance = {
        "labels": Path(config.labels).name,
        "labels_sha256": file_sha256(config.labels),
        "val_labels_sha256": file_sha256(config.val_labels) if config.val_labels else None,
        "segment": str(config.segment),
        "init": config.init,
        "seed": config.seed,
        **({"processes": dist.world_size} if dist.active else {}),
    }
    run = Run(
        config=config,
        run_dir=Path(config.out),
        segment=segment,
        spec=spec,
        start_layer=start,
        train_labels=train_labels,
        plan=plan,
        mask=mask,
        sampler=sampler,
        total_steps=total,
        device=device,
        model=model,
        wrapped=dist.wrap(model),
        dist=dist,
        optimizer=_optimizer(model, config),
        scaler=torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
        weights=class_weights(train_labels) if config.loss.class_weights else None,
        provenance=provenance,
        micro_batch=micro_batch,
        frozen=frozen,
        autocast=autocast,
        notes=tuple(notes),
    )
    if config.resume:
        load_state(run)
    return run


def training_autocast(device: torch.device, requested: str) -> str:
    """``auto`` trains in fp32 on the CPU: with torch 2.13's CPU bf16 ``conv3d`` backward a
    1/8-width resnet10 got NaN gradients (``layer4.0.conv2``) within 5 steps, while fp32
    trained cleanly. On CUDA ``auto`` keeps bf16 (fp16 with loss scaling where bf16 is
    missing); an explicit ``bf16`` is honoured everywhere, guarded by the NaN check."""
    if requested == "auto" and device.type == "cpu":
        return "off"
    return requested

"""The training loop: one generator of typed events, drained by the CLI, tests and the dock.

``train(config, stop)`` sets up (validating every input first), then yields
:class:`TrainStarted`, a :class:`StepDone` per step, :class:`Validated` and
:class:`CheckpointSaved` every ``val_every`` steps, and :class:`TrainFinished`. Problems raise
:class:`~napari_inkdetect.errors.InkDetectError` (no failure event). A set ``stop`` event ends
the run after the current step, with the last checkpoint saved.

Run directory: ``config.json``, ``metrics.jsonl``, ``last.safetensors`` + ``last.state.pt``
(optimiser, scaler and bookkeeping, for ``resume``) and ``best.safetensors``.

Under ``torchrun`` the same generator trains with DistributedDataParallel; what changes is
all in :mod:`.distributed` (``run.dist``), which is the identity in a single process.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import hashlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_inkdetect.calibration import fit_platt
from napari_inkdetect.errors import ConfigError, InkDetectError, LabelsError
from napari_inkdetect.io.atomic import atomic_path, make_folder, unwritable
from napari_inkdetect.io.labels import INK, NOT_INK
from napari_inkdetect.io.locks import OutputLock
from napari_inkdetect.io.segment import open_segment, read_segment_labels
from napari_inkdetect.metrics import chance_f05, score
from napari_inkdetect.models import (
    InkDetector,
    autocast_context,
    load_checkpoint,
    save_checkpoint,
    to_channels_last_3d,
)
from napari_inkdetect.models.detector import (
    channels_last_input,
    resolve_autocast_dtype,
    unwrap_model,
)
from napari_inkdetect.training.augment import augment_batch
from napari_inkdetect.training.config import TrainConfig, trained_parts
from napari_inkdetect.training.distributed import Distributed
from napari_inkdetect.training.events import (
    BatchHalved,
    CheckpointSaved,
    StepDone,
    TrainFinished,
    TrainStarted,
    Validated,
    ValidationPlanned,
)
from napari_inkdetect.training.init_settings import (
    batchnorm_layers,
    batchnorm_should_freeze,
    resolve_init_settings,
    window_spec,
)
from napari_inkdetect.training.loss import class_weights, sparse_loss
from napari_inkdetect.training.sampling import Batch, Prefetcher, TileSampler
from napari_inkdetect.training.validation import (
    ValidationPlan,
    auto_split,
    border_band,
    given_plan,
)
from napari_inkdetect.windows import (
    WindowSpec,
    blend_weight,
    read_raw,
    to_model_input,
    to_volume_pixels,
    window_centre,
)

CONFIG_FILE, METRICS_FILE = "config.json", "metrics.jsonl"
LAST, BEST, STATE = "last.safetensors", "best.safetensors", "last.state.pt"
PENDING_LAST = ".last.pending.safetensors"  # renamed to LAST once the state is written


# --------------------------------------------------------------------------- setup


@dataclass
class _Run:
    """Everything one run holds; built by :func:`_setup`, released by :meth:`close`."""

    config: TrainConfig
    run_dir: Path
    segment: Any
    spec: WindowSpec
    start_layer: int
    train_labels: np.ndarray
    plan: ValidationPlan
    mask: np.ndarray | None
    sampler: TileSampler
    total_steps: int
    device: torch.device
    model: InkDetector
    wrapped: nn.Module  # the model as trained: DistributedDataParallel(model) under torchrun
    dist: Distributed
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    weights: torch.Tensor | None
    provenance: dict[str, Any]
    step: int = 0
    best_f05: float = -1.0
    best_metrics: dict[str, Any] | None = None
    micro_batch: int = 0
    prefetcher: Prefetcher | None = None
    frozen: list[nn.Module] = field(default_factory=list)
    autocast: str = "off"
    notes: tuple[str, ...] = ()  # what resolve_init_settings picked, for TrainStarted

    def close(self) -> None:
        """Stop the prefetch thread and give GPU memory back."""
        if self.prefetcher is not None:
            self.prefetcher.close()
        self.model = self.wrapped = self.optimizer = None  # type: ignore[assignment]
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_labels(segment: Any, path: str) -> np.ndarray:
    labels = read_segment_labels(segment, Path(path))
    counts = np.bincount(labels.ravel(), minlength=3)
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


def _prepare_dir(config: TrainConfig, write: bool = True) -> TrainConfig:
    """Create the run dir, or (resume) read its config and refuse changes that matter;
    ``write=False`` (ranks other than 0) only checks."""
    run_dir = Path(config.out)
    saved = run_dir / CONFIG_FILE
    if config.resume:
        if not (run_dir / STATE).exists() or not saved.exists():
            raise ConfigError(f"{run_dir}: nothing to resume (no {STATE} / {CONFIG_FILE})")
        stored = _stored_config(saved)
        changed = stored.differences(config)
        if changed:
            raise ConfigError(
                f"{run_dir}: cannot resume with different settings: {', '.join(changed)}"
            )
        return config
    if (run_dir / STATE).exists():
        raise ConfigError(
            f"{run_dir}: already holds a run; resume it (resume=True) or choose another out"
        )
    if not write:
        return config
    make_folder(run_dir, "run folder")
    _write_text(saved, json.dumps(config.to_dict(), indent=2) + "\n")
    _write_text(run_dir / METRICS_FILE, "")
    return config


def _stored_config(path: Path) -> TrainConfig:
    """The settings a run was started with, or one line saying why they cannot be read."""
    try:
        return TrainConfig.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, AttributeError, ConfigError) as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"{path}: unreadable run settings ({reason}); this run cannot be resumed: start a "
            "new one in another folder"
        ) from None


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _setup(config: TrainConfig) -> _Run:
    dist = Distributed.from_env()
    segment = open_segment(config.segment)
    config, notes = resolve_init_settings(  # before _prepare_dir: sizes may come from presets
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
    config = _prepare_dir(config, write=dist.is_main)
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
        "labels_sha256": _sha256(config.labels),
        "val_labels_sha256": _sha256(config.val_labels) if config.val_labels else None,
        "segment": str(config.segment),
        "init": config.init,
        "seed": config.seed,
        **({"processes": dist.world_size} if dist.active else {}),
    }
    run = _Run(
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
        _load_state(run)
    return run


# --------------------------------------------------------------------------- checkpoints


def _save_model(run: _Run, name: str, metrics: dict[str, Any] | None) -> Path:
    """``best`` is saved with the validation's calibration folded into its last layer;
    ``last`` (the weights training goes on from) is saved raw, with the raw threshold."""
    calibration = (metrics or {}).get("calibration")
    if name == BEST and calibration:
        model = unwrap_model(run.model)
        with model.calibration_folded(calibration["slope"], calibration["offset"]):
            return _write_model(run, name, {**metrics, "calibrated": True})
    if calibration:
        metrics = {**metrics, "best_threshold": metrics["raw_best_threshold"]}
        metrics.update(calibration=None, calibrated=False)
    return _write_model(run, name, metrics)


def _write_model(run: _Run, name: str, metrics: dict[str, Any] | None) -> Path:
    cfg = run.config
    provenance = {
        **run.provenance,
        "steps": run.step,
        "metrics": metrics,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "train_config": cfg.to_dict(),
    }
    return save_checkpoint(
        run.run_dir / name,
        run.model,
        in_layers=cfg.layers,
        tile_size=cfg.tile,
        scale=cfg.scale,
        depth_scale=cfg.depth_scale,
        depth_reverse=cfg.depth_direction == "reverse",
        start_layer=run.start_layer,
        centre_layer=window_centre(run.start_layer, cfg.layers),  # always: never inherited
        normalisation=run.spec.normalisation.to_dict(),
        provenance=provenance,
    )


def _save_last(run: _Run) -> Path:
    """Weights, then the resume state (optimiser etc.), both atomically. The weights go to a
    pending file renamed only once the state is written: a write that fails (a full disk)
    leaves the previous pair, which agree, so the run still resumes."""
    pending = _save_model(run, PENDING_LAST, run.best_metrics)
    state = {
        "step": run.step,
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(),
        "best_f05": float(run.best_f05),
        "best_metrics": json.dumps(run.best_metrics),
        "micro_batch": run.micro_batch,
    }
    try:
        with atomic_path(run.run_dir / STATE) as tmp:
            torch.save(state, tmp)
    except BaseException:
        pending.unlink(missing_ok=True)
        raise
    return pending.replace(run.run_dir / LAST)


def _load_state(run: _Run) -> None:
    state = _read_state(run.run_dir / STATE)
    model, _ = load_checkpoint(run.run_dir / LAST, device="cpu")
    saved_steps = (model.info.provenance or {}).get("steps") if model.info else None
    if saved_steps != state["step"]:
        raise ConfigError(
            f"{run.run_dir}: {LAST} (step {saved_steps}) and {STATE} (step {state['step']}) "
            "disagree; the run was killed while saving; start a new run"
        )
    run.model.load_state_dict(model.state_dict())
    try:
        run.optimizer.load_state_dict(state["optimizer"])
        run.scaler.load_state_dict(state["scaler"])
        run.best_metrics = json.loads(state["best_metrics"])
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as exc:
        raise _damaged_state(run.run_dir / STATE, exc) from None
    run.step, run.best_f05 = int(state["step"]), float(state["best_f05"])
    if not run.dist.active:  # under DDP: one micro-batch per rank, always
        run.micro_batch = int(state["micro_batch"])
    if run.dist.is_main:
        _truncate_metrics(run.run_dir / METRICS_FILE, run.step)


def _read_state(path: Path) -> dict[str, Any]:
    """The resume state (optimiser etc.), checked to hold what :func:`_save_last` writes."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or damaged: torch raises many types
        raise _damaged_state(path, exc) from None
    if not isinstance(state, dict):
        raise _damaged_state(path, f"holds a {type(state).__name__}, not the state of a run")
    kinds = {"step": int, "optimizer": dict, "scaler": dict, "best_f05": float | int,
             "best_metrics": str, "micro_batch": int}  # fmt: skip
    for key, kind in kinds.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            raise _damaged_state(path, f"{key} missing or of the wrong type")
    return state


def _damaged_state(path: Path, reason: Any) -> ConfigError:
    reason = str(reason).splitlines()[0][:120] if str(reason) else type(reason).__name__
    return ConfigError(
        f"{path}: damaged resume state ({reason}); this run cannot be resumed: start a new one "
        "(its checkpoints can be the --init of it)"
    )


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop the log lines written after the checkpoint a resumed run restarts from, and any
    that is not a record (a run killed mid-write leaves a torn last line)."""
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    kept = [line for line in lines if (s := _logged_step(line)) is not None and s <= step]
    _write_text(path, "".join(line + "\n" for line in kept))


def _logged_step(line: str) -> float | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    step = record.get("step", 0) if isinstance(record, dict) else None
    usable = isinstance(step, int | float) and not isinstance(step, bool) and math.isfinite(step)
    return step if usable else None


def _log(run: _Run, record: dict[str, Any]) -> None:
    with (run.run_dir / METRICS_FILE).open("a") as f:
        f.write(json.dumps(record) + "\n")


# --------------------------------------------------------------------------- steps


def lr_at(step: int, total: int, base: float, warmup: int, min_ratio: float) -> float:
    """Learning rate of step ``step`` (0-based): linear warm-up, then cosine to
    ``base * min_ratio``. A pure function of the step, so resuming needs no scheduler state."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _is_oom(exc: BaseException) -> bool:
    oom = getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(exc, oom) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc))


def _set_train_mode(run: _Run) -> None:
    run.model.train()
    for module in run.frozen:  # frozen parts keep their BatchNorm statistics
        module.eval()
    # Out of memory split this rank's share; under DDP a share under 4 tiles is the user's
    # choice (batch over processes), not a halving, and BatchNorm keeps training on it.
    halved = run.micro_batch < run.dist.local_batch(run.config.batch_size)
    if run.config.freeze_batchnorm or (
        halved and batchnorm_should_freeze(run.micro_batch, False, processes=_bn_processes(run))
    ):  # a trained model keeps its statistics; 1-2 tiles after a halving are noise
        for module in batchnorm_layers(run.model):
            module.eval()


def _bn_processes(run: _Run) -> int:
    """Processes whose tiles make up one BatchNorm statistic: all ranks under SyncBatchNorm."""
    return run.dist.world_size if run.config.sync_batchnorm else 1


def _make_batch(run: _Run, step: int) -> Batch:
    """The (maybe augmented) batch of ``step``, this rank's share under DDP: runs in the
    prefetch thread."""
    corners = run.dist.shard(run.sampler.positions(step, run.config.batch_size))
    batch = Batch(step, *run.sampler.read(corners))
    if _augment_in_worker(run):
        seed = run.dist.rank_seed(run.config.seed)
        batch.images, batch.labels = augment_batch(
            batch.images, batch.labels, run.config.augment, seed, step
        )
    return batch


def _augment_in_worker(run: _Run) -> bool:
    choice = run.config.augment_in_worker
    return run.device.type == "cpu" if choice is None else bool(choice)


def training_autocast(device: torch.device, requested: str) -> str:
    """``auto`` trains in fp32 on the CPU: with torch 2.13's CPU bf16 ``conv3d`` backward a
    1/8-width resnet10 got NaN gradients (``layer4.0.conv2``) within 5 steps, while fp32
    trained cleanly. On CUDA ``auto`` keeps bf16 (fp16 with loss scaling where bf16 is
    missing); an explicit ``bf16`` is honoured everywhere, guarded by the NaN check."""
    if requested == "auto" and device.type == "cpu":
        return "off"
    return requested


def _forward_backward(run: _Run, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Gradients of one step in micro-batches of ``run.micro_batch``; returns the loss."""
    cfg, n = run.config, images.shape[0]
    total = 0.0
    for i in range(0, n, run.micro_batch):
        x, y = images[i : i + run.micro_batch], labels[i : i + run.micro_batch]
        if cfg.channels_last:
            x = channels_last_input(x)
        with autocast_context(run.device, run.autocast):
            logits = run.wrapped(x)
        loss = sparse_loss(
            logits, y, cfg.loss.label_smoothing, cfg.loss.dice_weight, run.weights
        ) * (x.shape[0] / n)
        run.scaler.scale(loss).backward()
        total += float(loss.detach())
    return total


def _train_step(run: _Run, batch: Batch) -> Iterator[Any]:
    """One optimiser step (halving the micro-batch on OOM); yields BatchHalved, returns loss."""
    cfg = run.config
    images = batch.images.to(run.device, non_blocking=True)
    labels = batch.labels.to(run.device, non_blocking=True)
    if not _augment_in_worker(run):
        seed = run.dist.rank_seed(cfg.seed)
        images, labels = augment_batch(images, labels, cfg.augment, seed, batch.step)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else round(0.05 * run.total_steps)
    lr = lr_at(batch.step, run.total_steps, cfg.lr, max(1, warmup), cfg.min_lr_ratio)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    while True:
        run.optimizer.zero_grad(set_to_none=True)
        try:
            loss = _forward_backward(run, images, labels)
            break
        except (RuntimeError, MemoryError) as exc:
            if not _is_oom(exc):
                raise
            run.optimizer.zero_grad(set_to_none=True)
            if run.device.type == "cuda":
                torch.cuda.empty_cache()
            if run.dist.active:  # no halving: the ranks would disagree on the micro-batch
                raise InkDetectError(
                    f"out of memory at {run.micro_batch} tiles per process (tile {cfg.tile}, "
                    f"{cfg.arch}); use a smaller batch_size, tile or width, more GPUs, or "
                    "activation_checkpointing"
                ) from None
            if run.micro_batch == 1:
                raise InkDetectError(
                    f"out of memory at batch 1 (tile {cfg.tile}, {cfg.arch}); use a smaller "
                    "tile, width or train='decoder', or activation_checkpointing"
                ) from None
            run.micro_batch = max(1, run.micro_batch // 2)
            _set_train_mode(run)  # BatchNorm may stop training on the smaller batch
            yield BatchHalved(run.micro_batch, math.ceil(cfg.batch_size / run.micro_batch))
    loss = run.dist.mean(loss)  # the same on all ranks: a NaN stops them all
    if not math.isfinite(loss):
        raise InkDetectError(
            f"training diverged: loss is {loss} at step {batch.step + 1}; the last good "
            f"checkpoint is kept in {run.run_dir / LAST}; lower the learning rate "
            f"(lr={cfg.lr}) or turn off autocast"
        )
    run.scaler.step(run.optimizer)
    run.scaler.update()
    return (loss, lr)


# --------------------------------------------------------------------------- validation


def _starts(lo: int, hi: int, extent: int, stride: int) -> list[int]:
    """Tile corners covering ``lo..hi`` (the last one flush with ``hi``)."""
    if hi - lo <= extent:
        return [lo]
    starts = list(range(lo, hi - extent, stride))
    return [*starts, hi - extent]


@torch.no_grad()
def predict_box(
    model: nn.Module,
    segment: Any,
    spec: WindowSpec,
    start: int,
    box: tuple[int, int, int, int],
    device: torch.device,
    batch: int = 8,
    reverse: bool = False,
    autocast: str = "off",
) -> np.ndarray:
    """Ink probability over ``box`` (y0, y1, x0, x1): overlapping tiles at half-tile stride
    blended with the predictor's Hann weight, so validation scores the map Predict shows.
    Small on purpose; whole segments go through ``inference``."""
    y0, y1, x0, x1 = box
    e = spec.extent
    corners = [
        (y, x)
        for y in _starts(y0, y1, e, max(1, e // 2))
        for x in _starts(x0, x1, e, max(1, e // 2))
    ]
    acc = np.zeros((max(y1 - y0, e), max(x1 - x0, e)), np.float32)
    hits = np.zeros_like(acc)
    weight = blend_weight(e)
    model.eval()
    for i in range(0, len(corners), batch):
        chunk = corners[i : i + batch]
        raw = np.stack([read_raw(segment, start, y, x, spec) for y, x in chunk])
        x = to_model_input(raw, spec)
        x = (x.flip(1) if reverse else x)[:, None].to(device)
        with autocast_context(device, autocast):
            logits = model(x)
        prob = to_volume_pixels(torch.softmax(logits.float(), 1)[:, 1], spec).cpu().numpy()
        for (y, xx), p in zip(chunk, prob, strict=True):
            acc[y - y0 : y - y0 + e, xx - x0 : xx - x0 + e] += p * weight
            hits[y - y0 : y - y0 + e, xx - x0 : xx - x0 + e] += weight
    return (acc / np.maximum(hits, 1e-12))[: y1 - y0, : x1 - x0]


def _validate(run: _Run) -> dict[str, Any]:
    """Scores over the plan's boxes only (the labelled pixels' tiles, never the bounding box
    of all validation labels), plus the false-ink rate in the mask's border band."""
    plan, probs, labels, band = run.plan, [], [], []
    for box in plan.boxes:
        prob = predict_box(
            run.model,
            run.segment,
            run.spec,
            run.start_layer,
            box,
            run.device,
            batch=2 * run.config.batch_size,
            reverse=run.config.depth_direction == "reverse",
            autocast=run.autocast,
        )
        y0, y1, x0, x1 = box
        truth = plan.labels[y0:y1, x0:x1]
        keep = truth > 0
        probs.append(prob[keep])
        labels.append(truth[keep])
        if run.mask is not None:
            band.append(border_band(run.mask[y0:y1, x0:x1])[keep])
    raw, truth = np.concatenate(probs), np.concatenate(labels)
    calibration = fit_platt(raw, truth)  # folded into best.safetensors (calibration.py)
    prob = calibration.apply(raw)
    scores = score(prob, truth).to_dict()
    scores["calibration"] = calibration.to_dict()
    scores["raw_best_threshold"] = score(raw, truth).best_threshold
    scores["chance_f05"] = chance_f05(scores["n_ink"], scores["n_not_ink"])
    in_band = np.concatenate(band) if band else np.zeros(truth.shape, bool)
    paper_band = in_band & (truth == NOT_INK)
    scores["border_fp"] = float(np.mean(prob[paper_band] >= 0.5)) if paper_band.any() else None
    scores.update(n_groups=plan.n_groups, dense=plan.dense, source=plan.source)
    _set_train_mode(run)
    return scores


# --------------------------------------------------------------------------- the loop


def _after_step(run: _Run) -> Iterator[Any]:
    """Validation and checkpoints due after ``run.step`` steps."""
    cfg = run.config
    done = run.step == run.total_steps
    if run.plan.labels is not None and (run.step % cfg.val_every == 0 or done):
        metrics = _validate(run)
        _log(run, {"kind": "val", "step": run.step, **metrics})
        yield Validated(
            run.step,
            metrics["f05"],
            metrics["best_f05"],
            metrics["best_threshold"],
            metrics["precision"],
            metrics["recall"],
            n_groups=metrics["n_groups"],
            n_ink=metrics["n_ink"],
            n_not_ink=metrics["n_not_ink"],
            dense=metrics["dense"],
            border_fp=metrics["border_fp"],
            chance_f05=metrics["chance_f05"],
        )
        if metrics["best_f05"] > run.best_f05:
            run.best_f05, run.best_metrics = metrics["best_f05"], metrics
            yield CheckpointSaved(_save_model(run, BEST, metrics), run.step, "best")
    save_every = cfg.save_every or cfg.val_every
    if run.step % save_every == 0 and not done:
        yield CheckpointSaved(_save_last(run), run.step, "last")


def _finish(run: _Run, started: float, stopped: bool) -> Iterator[Any]:
    if run.dist.is_main:
        yield CheckpointSaved(_save_last(run), run.step, "last")
        if run.plan.labels is None:  # no validation: the best is the last
            yield CheckpointSaved(_save_model(run, BEST, None), run.step, "best")
    run.dist.barrier()  # the other ranks finish once rank 0's files exist
    best = run.run_dir / BEST
    yield TrainFinished(
        run_dir=run.run_dir,
        best_path=best if best.exists() else None,
        last_path=run.run_dir / LAST,
        steps=run.step,
        seconds=time.perf_counter() - started,
        stopped=stopped,
    )


def _loop(run: _Run, stop: Any) -> Iterator[Any]:
    cfg, started = run.config, time.perf_counter()
    run.prefetcher = Prefetcher(
        lambda s: _make_batch(run, s), run.step, run.total_steps, cfg.prefetch
    )
    _set_train_mode(run)
    first, step_time, eta = run.step, 0.0, math.inf
    batches = iter(run.prefetcher)
    while run.step < run.total_steps:
        if run.dist.any(stop is not None and stop.is_set()):
            break
        t0 = time.perf_counter()
        batch = next(batches)
        loss, lr = yield from _train_step(run, batch)
        run.step += 1
        if not run.dist.is_main:  # rank 0 alone logs, reports, validates and saves; the
            continue  # others wait for it at the next step's stop all-reduce
        step_time += time.perf_counter() - t0
        rate = (run.step - first) / step_time
        eta = min(eta, (run.total_steps - run.step) / rate)
        if run.step % cfg.log_every == 0 or run.step == run.total_steps:
            record = {"kind": "step", "step": run.step, "loss": loss, "lr": lr}
            _log(run, {**record, "tiles_per_s": rate * cfg.batch_size})
        yield StepDone(run.step, run.total_steps, loss, lr, rate * cfg.batch_size, eta)
        yield from _after_step(run)
    yield from _finish(run, started, stopped=run.step < run.total_steps)


def train(config: TrainConfig, stop: Any = None) -> Iterator[Any]:
    """Train as ``config`` says, yielding events; ``stop`` (a ``threading.Event``) ends the
    run cleanly after the current step. Raises ``InkDetectError`` subclasses on bad input,
    divergence (NaN loss) or out of memory at batch 1.

    Under torchrun (see :mod:`.distributed`) every rank trains; ranks other than 0 yield
    only :class:`TrainFinished`. Rank 0 holds the run folder's lock (:mod:`..io.locks`): a
    second run into the same folder is refused."""
    with _run_lock(config) as lock:
        yield from _locked(config, stop, lock)


@contextlib.contextmanager
def _run_lock(config: TrainConfig) -> Iterator[OutputLock | None]:
    if not Distributed.from_env().is_main:
        yield None
        return
    with OutputLock(config.out, "run folder") as lock:
        yield lock


def _locked(config: TrainConfig, stop: Any, lock: OutputLock | None) -> Iterator[Any]:
    run = _setup(config)
    try:
        params = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
        if run.dist.is_main:
            yield TrainStarted(
                run.config, run.total_steps, str(run.device), params, run.step, notes=run.notes
            )
            plan = run.plan
            yield ValidationPlanned(
                plan.source, plan.n_groups, plan.n_ink, plan.n_not_ink, plan.dense, plan.summary()
            )
        with contextlib.closing(_loop(run, stop)) as events:
            for event in events:
                _check_run_dir(run, lock)
                yield event
    except OSError as exc:  # a full disk, the run folder removed, a network drive gone
        raise _run_failed(run.run_dir, exc) from None
    finally:
        run.close()


def _check_run_dir(run: _Run, lock: OutputLock | None) -> None:
    """Stop when the run folder was removed (checkpoints would land in a recreated folder
    without its settings) or the lock was taken over."""
    if lock is not None and not run.run_dir.is_dir():
        raise ConfigError(f"{run.run_dir}: the run folder was removed during the run; stopping")
    if lock is not None:
        lock.verify()


def _run_failed(run_dir: Path, exc: OSError) -> ConfigError:
    if not run_dir.is_dir():
        return ConfigError(f"{run_dir}: the run folder was removed during the run; stopping")
    where = Path(exc.filename) if exc.filename else run_dir
    error = unwritable(where, exc, "cannot be written" if run_dir in where.parents else "failed")
    return ConfigError(f"{error}; what was saved so far is kept: resume the run to go on")


def run_training(config: TrainConfig, stop: Any = None) -> Path:
    """Drain :func:`train`; returns the run directory."""
    finished = None
    for event in train(config, stop):
        if isinstance(event, TrainFinished):
            finished = event
    if finished is None:  # pragma: no cover - train always ends with TrainFinished or raises
        raise InkDetectError("training ended without finishing")
    return finished.run_dir

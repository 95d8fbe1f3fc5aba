"""The training loop: one generator of typed events, drained by the CLI, tests and the dock.

``train(config, stop)`` sets up (validating every input first), then yields
:class:`TrainStarted`, a :class:`StepDone` per step, :class:`Validated` and
:class:`CheckpointSaved` every ``val_every`` steps, and :class:`TrainFinished`. Problems raise
:class:`~napari_inkdetect.errors.InkDetectError` (no failure event). A set ``stop`` event ends
the run after the current step, with the last checkpoint saved.

The run folder is :mod:`.run_files`, set-up :mod:`.setup`, validation :mod:`.run_scoring`.

Under ``torchrun`` the same generator trains with DistributedDataParallel; what changes is
all in :mod:`.distributed` (``run.dist``), which is the identity in a single process.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import torch

from napari_inkdetect.devices import is_out_of_memory
from napari_inkdetect.errors import ConfigError, InkDetectError
from napari_inkdetect.io.atomic import unwritable
from napari_inkdetect.io.locks import OutputLock
from napari_inkdetect.models import (
    autocast_context,
)
from napari_inkdetect.models.detector import (
    channels_last_input,
)
from napari_inkdetect.training.augment import augment_batch
from napari_inkdetect.training.config import TrainConfig
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
from napari_inkdetect.training.loss import sparse_loss
from napari_inkdetect.training.run import Run, set_train_mode
from napari_inkdetect.training.run_files import (
    BEST,
    CONFIG_FILE,
    LAST,
    append_log,
    save_last,
    save_model,
)
from napari_inkdetect.training.run_scoring import validate
from napari_inkdetect.training.sampling import Batch, Prefetcher
from napari_inkdetect.training.setup import setup

CHILD_TARGET = "napari_inkdetect.training:train"
__all__ = ["BEST", "CONFIG_FILE", "LAST", "lr_at", "train"]


def lr_at(step: int, total: int, base: float, warmup: int, min_ratio: float) -> float:
    """Learning rate of step ``step`` (0-based): linear warm-up, then cosine to
    ``base * min_ratio``. A pure function of the step, so resuming needs no scheduler state."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _make_batch(run: Run, step: int) -> Batch:
    """The (maybe augmented) batch of ``step``, this rank's share under DDP: runs in the
    prefetch thread."""
    corners = run.dist.shard(run.sampler.positions(step, run.config.batch_size))
    batch = Batch(step, *run.sampler.read_stacks(corners))
    if run.device.type == "cuda":  # pinned: the copy to the device runs asynchronously
        batch.images, batch.labels = batch.images.pin_memory(), batch.labels.pin_memory()
    if _augment_in_worker(run):
        batch.images = run.sampler.model_input(batch.images)
        seed = run.dist.rank_seed(run.config.seed)
        batch.images, batch.labels = augment_batch(
            batch.images, batch.labels, run.config.augment, seed, step
        )
    return batch


def _augment_in_worker(run: Run) -> bool:
    choice = run.config.augment_in_worker
    return run.device.type == "cpu" if choice is None else bool(choice)


def _forward_backward(run: Run, images: torch.Tensor, labels: torch.Tensor) -> float:
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


def _train_step(run: Run, batch: Batch) -> Iterator[Any]:
    """One optimiser step (halving the micro-batch on OOM); yields BatchHalved, returns loss."""
    cfg = run.config
    images = batch.images.to(run.device, non_blocking=True)
    labels = batch.labels.to(run.device, non_blocking=True)
    if images.dtype == torch.uint8:  # the host shipped clipped uint8: finish on the device
        images = run.sampler.model_input(images)
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
            if not is_out_of_memory(exc):
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
            set_train_mode(run)  # BatchNorm may stop training on the smaller batch
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


def _after_step(run: Run) -> Iterator[Any]:
    """Validation and checkpoints due after ``run.step`` steps."""
    cfg = run.config
    done = run.step == run.total_steps
    if run.plan.labels is not None and (run.step % cfg.val_every == 0 or done):
        metrics = validate(run)
        append_log(run, {"kind": "val", "step": run.step, **metrics})
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
            yield CheckpointSaved(save_model(run, BEST, metrics), run.step, "best")
    save_every = cfg.save_every or cfg.val_every
    if run.step % save_every == 0 and not done:
        yield CheckpointSaved(save_last(run), run.step, "last")


def _finish(run: Run, started: float, stopped: bool) -> Generator[Any, None, TrainFinished]:
    if run.dist.is_main:
        yield CheckpointSaved(save_last(run), run.step, "last")
        if run.plan.labels is None:  # no validation: the best is the last
            yield CheckpointSaved(save_model(run, BEST, None), run.step, "best")
    run.dist.barrier()  # the other ranks finish once rank 0's files exist
    best = run.run_dir / BEST
    finished = TrainFinished(
        run_dir=run.run_dir,
        best_path=best if best.exists() else None,
        last_path=run.run_dir / LAST,
        steps=run.step,
        seconds=time.perf_counter() - started,
        stopped=stopped,
    )
    yield finished
    return finished


def _loop(run: Run, stop: Any) -> Generator[Any, None, TrainFinished]:
    cfg, started = run.config, time.perf_counter()
    run.prefetcher = Prefetcher(
        lambda s: _make_batch(run, s), run.step, run.total_steps, cfg.prefetch
    )
    set_train_mode(run)
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
            append_log(run, {**record, "tiles_per_s": rate * cfg.batch_size})
        yield StepDone(run.step, run.total_steps, loss, lr, rate * cfg.batch_size, eta)
        yield from _after_step(run)
    return (yield from _finish(run, started, stopped=run.step < run.total_steps))


def train(config: TrainConfig, stop: Any = None) -> Generator[Any, None, TrainFinished]:
    """Train as ``config`` says, yielding events and returning the :class:`TrainFinished` it
    yields last (the engine contract, :mod:`napari_inkdetect.engine`); ``stop`` (a
    ``threading.Event``) ends the run cleanly after the current step. Raises
    ``InkDetectError`` subclasses on bad input, divergence (NaN loss) or out of memory at
    batch 1. ``config.in_child`` runs it in a spawned process.

    Under torchrun (see :mod:`.distributed`) every rank trains; ranks other than 0 yield
    only :class:`TrainFinished`. Rank 0 holds the run folder's lock (:mod:`..io.locks`): a
    second run into the same folder is refused."""
    if config.in_child:
        from napari_inkdetect.processes import run_in_child

        return (yield from run_in_child(CHILD_TARGET, config.with_(in_child=False), stop))
    with _run_lock(config) as lock:
        return (yield from _locked(config, stop, lock))


@contextlib.contextmanager
def _run_lock(config: TrainConfig) -> Iterator[OutputLock | None]:
    if not Distributed.from_env().is_main:
        yield None
        return
    with OutputLock(config.out, "run folder") as lock:
        yield lock


def _locked(
    config: TrainConfig, stop: Any, lock: OutputLock | None
) -> Generator[Any, None, TrainFinished]:
    run = setup(config)
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
        finished = None
        with contextlib.closing(_loop(run, stop)) as events:
            for event in events:
                _check_run_dir(run, lock)
                yield event
                if isinstance(event, TrainFinished):
                    finished = event
        return finished
    except OSError as exc:  # a full disk, the run folder removed, a network drive gone
        raise _run_failed(run.run_dir, exc) from None
    finally:
        run.close()


def _check_run_dir(run: Run, lock: OutputLock | None) -> None:
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

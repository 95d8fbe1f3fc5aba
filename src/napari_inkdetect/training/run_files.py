"""The run folder: settings, the metrics log, checkpoints and the resume state.

``config.json``, ``metrics.jsonl``, ``last.safetensors`` + ``last.state.pt`` (optimiser,
scaler and bookkeeping, for ``resume``) and ``best.safetensors``; every file is written
atomically, and ``last`` and its state are replaced as a pair.
"""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path
from typing import Any

import torch

from napari_inkdetect.errors import ConfigError
from napari_inkdetect.io.atomic import atomic_path, make_folder
from napari_inkdetect.models import (
    load_checkpoint,
    save_checkpoint,
)
from napari_inkdetect.models.detector import (
    unwrap_model,
)
from napari_inkdetect.training.config import TrainConfig
from napari_inkdetect.training.run import Run
from napari_inkdetect.windows import (
    window_centre,
)

CONFIG_FILE, METRICS_FILE = "config.json", "metrics.jsonl"
LAST, BEST, STATE = "last.safetensors", "best.safetensors", "last.state.pt"
PENDING_LAST = ".last.pending.safetensors"  # renamed to LAST once the state is written


def prepare_dir(config: TrainConfig, write: bool = True) -> TrainConfig:
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
    write_text(saved, json.dumps(config.to_dict(), indent=2) + "\n")
    write_text(run_dir / METRICS_FILE, "")
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


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_model(run: Run, name: str, metrics: dict[str, Any] | None) -> Path:
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


def _write_model(run: Run, name: str, metrics: dict[str, Any] | None) -> Path:
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


def save_last(run: Run) -> Path:
    """Weights, then the resume state (optimiser etc.), both atomically. The weights go to a
    pending file renamed only once the state is written: a write that fails (a full disk)
    leaves the previous pair, which agree, so the run still resumes."""
    pending = save_model(run, PENDING_LAST, run.best_metrics)
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


def load_state(run: Run) -> None:
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
    """The resume state (optimiser etc.), checked to hold what :func:`save_last` writes."""
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
    write_text(path, "".join(line + "\n" for line in kept))


def _logged_step(line: str) -> float | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    step = record.get("step", 0) if isinstance(record, dict) else None
    usable = isinstance(step, int | float) and not isinstance(step, bool) and math.isfinite(step)
    return step if usable else None


def append_log(run: Run, record: dict[str, Any]) -> None:
    with (run.run_dir / METRICS_FILE).open("a") as f:
        f.write(json.dumps(record) + "\n")

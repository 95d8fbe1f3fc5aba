"""``Run``: everything one training run holds while it runs, and its train/eval mode.

Built by :func:`~napari_inkdetect.training.setup.setup`, used by the loop
(:mod:`.trainer`), the run folder (:mod:`.run_files`) and validation (:mod:`.run_scoring`).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_inkdetect.models import (
    InkDetector,
)
from napari_inkdetect.training.config import TrainConfig
from napari_inkdetect.training.distributed import Distributed
from napari_inkdetect.training.init_settings import (
    batchnorm_layers,
    batchnorm_should_freeze,
)
from napari_inkdetect.training.sampling import Prefetcher, TileSampler
from napari_inkdetect.training.validation import (
    ValidationPlan,
)
from napari_inkdetect.windows import (
    WindowSpec,
)


@dataclass
class Run:
    """Everything one run holds; built by :func:`setup`, released by :meth:`close`."""

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


def set_train_mode(run: Run) -> None:
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


def _bn_processes(run: Run) -> int:
    """Processes whose tiles make up one BatchNorm statistic: all ranks under SyncBatchNorm."""
    return run.dist.world_size if run.config.sync_batchnorm else 1

"""Training engine: class-balanced lazy sampling, torch-batch augmentation, sparse-label loss
and a trainer that is one generator of typed events (see :mod:`.trainer`).

::

    from napari_inkdetect.training import TrainConfig, train, run_training

    config = TrainConfig(segment="seg", labels="seg_train_labels.png", out="runs/a",
                         arch="resnet10", width=0.25, tile=128, steps=500)
    for event in train(config, stop=threading.Event()):
        print(event)
"""

from napari_inkdetect.training.augment import augment_batch
from napari_inkdetect.training.config import AugmentConfig, LossConfig, TrainConfig
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
from napari_inkdetect.training.sampling import TileSampler
from napari_inkdetect.training.trainer import lr_at, predict_box, run_training, train
from napari_inkdetect.training.validation import ValidationPlan, auto_split, given_plan

__all__ = [
    "AugmentConfig",
    "BatchHalved",
    "CheckpointSaved",
    "LossConfig",
    "StepDone",
    "TileSampler",
    "TrainConfig",
    "TrainFinished",
    "TrainStarted",
    "Validated",
    "ValidationPlan",
    "ValidationPlanned",
    "augment_batch",
    "auto_split",
    "given_plan",
    "lr_at",
    "predict_box",
    "run_training",
    "sparse_loss",
    "train",
]

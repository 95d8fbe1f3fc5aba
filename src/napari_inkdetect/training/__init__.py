"""Training engine: class-balanced lazy sampling, torch-batch augmentation, sparse-label loss
and a trainer that is one generator of typed events (see :mod:`.trainer`).

::

    from napari_inkdetect.engine import drain
    from napari_inkdetect.training import TrainConfig, train

    config = TrainConfig(segment="seg", labels="seg_train_labels.png", out="runs/a",
                         arch="resnet10", width=0.25, tile=128, steps=500)
    finished = drain(train(config), on_event=print)  # TrainFinished: run_dir, best_path
"""

from napari_inkdetect._lazy import lazy_exports

#: public name -> the module that defines it, imported on first use (napari_inkdetect._lazy)
_EXPORTS = {
    "AugmentConfig": "napari_inkdetect.training.config",
    "BatchHalved": "napari_inkdetect.training.events",
    "CheckpointSaved": "napari_inkdetect.training.events",
    "LossConfig": "napari_inkdetect.training.config",
    "StepDone": "napari_inkdetect.training.events",
    "TileSampler": "napari_inkdetect.training.sampling",
    "TrainConfig": "napari_inkdetect.training.config",
    "TrainFinished": "napari_inkdetect.training.events",
    "TrainStarted": "napari_inkdetect.training.events",
    "Validated": "napari_inkdetect.training.events",
    "ValidationPlan": "napari_inkdetect.training.validation",
    "ValidationPlanned": "napari_inkdetect.training.events",
    "augment_batch": "napari_inkdetect.training.augment",
    "auto_split": "napari_inkdetect.training.validation",
    "given_plan": "napari_inkdetect.training.validation",
    "lr_at": "napari_inkdetect.training.trainer",
    "predict_box": "napari_inkdetect.inference.boxes",
    "sparse_loss": "napari_inkdetect.training.loss",
    "train": "napari_inkdetect.training.trainer",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

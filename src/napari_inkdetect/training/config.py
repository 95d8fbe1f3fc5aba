"""``TrainConfig``: everything a run needs, JSON-able, so a run directory can be resumed."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

from napari_inkdetect.errors import ConfigError
from napari_inkdetect.options import ConfigData, option

INIT = "default: from --init checkpoint, else"
NORMALISATIONS = ("uint16_shift8_clip", "percentile")


def parse_pair(text: str) -> tuple[float, float]:
    """``"a,b"`` -> two floats (``ConfigError`` otherwise)."""
    try:
        lo, hi = (float(v) for v in str(text).split(","))
    except ValueError:
        raise ConfigError(f"{text!r}: expected two numbers LO,HI") from None
    return lo, hi


def parse_normalisation(text: str) -> dict[str, Any]:
    """A normalisation kind -> its settings dict (``ConfigError`` for an unknown kind)."""
    if text not in NORMALISATIONS:
        raise ConfigError(f"--normalisation {text!r}: use {' or '.join(NORMALISATIONS)}")
    return {"kind": text}


#: Parts of the model that can be trained; others are frozen (their BatchNorm kept in eval).
TRAIN_PARTS = ("stem", "layer1", "layer2", "layer3", "layer4", "decoder")
_PART_ALIASES = {
    "all": TRAIN_PARTS,
    "encoder": TRAIN_PARTS[:-1],
    "last": ("layer4",),
}
#: Fields that may differ when resuming: they do not change what is computed.
RESUME_FREE = ("resume", "device", "log_every", "prefetch", "augment_in_worker", "in_child")
#: Window settings that default to None: the ``init`` checkpoint's, else these values
#: (``tile`` None: the device preset's, :mod:`~napari_inkdetect.training.presets`).
WINDOW_DEFAULTS: dict[str, Any] = {
    "layers": 22,
    "tile": None,
    "scale": 1.0,
    "depth_direction": "forward",
}
#: Settings that default to None: the preset for where training starts
#: (:func:`~napari_inkdetect.training.init_settings.default_optimisation`).
PRESET_FIELDS = ("lr", "freeze_batchnorm")
#: Sizes that default to None: the device preset's (:mod:`~napari_inkdetect.training.presets`;
#: ``arch`` and ``width`` the ``init`` checkpoint's model when there is one).
SIZE_FIELDS = ("arch", "width", "batch_size", "steps")
#: Every setting :func:`~napari_inkdetect.training.init_settings.resolve_init_settings` fills.
RESOLVED_FIELDS = (*WINDOW_DEFAULTS, "normalisation", *PRESET_FIELDS, *SIZE_FIELDS)


@dataclass(frozen=True)
class AugmentConfig(ConfigData):
    """Augmentation switches and strengths (each applied per tile with probability ``p_*``).

    On by default: flips and 90-degree rotations only. With every augmentation on, a 1/8-width
    resnet10 did not learn the synthetic crackle in 600 steps (validation F0.5 0.19 vs 0.595
    with flips/rotations): noise (std 0.03) is as strong as the crackle itself and blur erases
    1-2 px cracks. The rest (affine, intensity, noise, blur, dropout and the 4th place's depth
    crop-paste and layer cutout) are opt-in until measured on real segments.
    """

    flips: bool = option(True, help="random flips of each tile")
    rot90: bool = option(
        True, label="90-degree rotations", help="random 90-degree rotations of each tile"
    )
    affine: bool = option(False, help="random rotation and scaling")
    affine_degrees: float = option(15.0, lo=0, hi=180, unit="deg", help="largest rotation")
    affine_scale: tuple[float, float] = option(
        (0.9, 1.1), parse=parse_pair, metavar="LO,HI", help="scaling range"
    )
    intensity: bool = option(False, help="random brightness, contrast and gamma")
    brightness: float = option(0.1, lo=0, hi=1, step=0.01, help="largest brightness shift")
    contrast: float = option(0.2, lo=0, hi=1, step=0.01, help="largest contrast change")
    gamma: tuple[float, float] = option(
        (0.8, 1.25), parse=parse_pair, metavar="LO,HI", help="gamma range"
    )
    noise: bool = option(False, help="Gaussian noise")
    noise_std: float = option(0.03, lo=0, hi=1, step=0.01, help="noise standard deviation")
    blur: bool = option(False, help="Gaussian blur")
    coarse_dropout: bool = option(False, help="blank random boxes")
    depth_crop: bool = option(
        False, help="4th place: 12..22 consecutive layers pasted at a random depth"
    )
    depth_crop_min: int = option(12, lo=1, hi=256, help="fewest layers a depth crop keeps")
    layer_cutout: bool = option(False, help="4th place: zero a few random layers")
    p_affine: float = option(
        0.5, lo=0, hi=1, step=0.05, label="Affine probability", help="probability of the affine"
    )
    p_intensity: float = option(
        0.5, lo=0, hi=1, step=0.05, label="Intensity probability", help="probability of intensity"
    )
    p_noise: float = option(
        0.3, lo=0, hi=1, step=0.05, label="Noise probability", help="probability of noise"
    )
    p_blur: float = option(
        0.2, lo=0, hi=1, step=0.05, label="Blur probability", help="probability of blur"
    )
    p_dropout: float = option(
        0.3, lo=0, hi=1, step=0.05, label="Dropout probability", help="probability of dropout"
    )
    p_depth_crop: float = option(
        0.4,
        lo=0,
        hi=1,
        step=0.05,
        label="Depth crop probability",
        help="probability of a depth crop",
    )
    p_cutout: float = option(
        0.3,
        lo=0,
        hi=1,
        step=0.05,
        label="Cutout probability",
        help="probability of a layer cutout",
    )

    @classmethod
    def all(cls) -> AugmentConfig:
        """Every augmentation on (the 4th place's full recipe)."""
        return cls(**{f.name: True for f in fields(cls) if f.type in ("bool", bool)})

    @classmethod
    def none(cls) -> AugmentConfig:
        """Every augmentation off."""
        return cls(**{f.name: False for f in fields(cls) if f.type in ("bool", bool)})


@dataclass(frozen=True)
class LossConfig(ConfigData):
    """Label-smoothed cross-entropy on labelled pixels, optional dice and class weights."""

    label_smoothing: float = option(0.3, lo=0, hi=0.99, step=0.05, help="label smoothing")
    dice_weight: float = option(0.0, lo=0, hi=10, step=0.1, help="weight of a dice term")
    class_weights: bool = option(False, help="weigh ink and not-ink by their inverse counts")


@dataclass(frozen=True)
class TrainConfig(ConfigData):
    """One training run. ``arch``/``width`` build a fresh model unless ``init`` names a
    checkpoint (Kinetics encoder, Kaggle ink model or our own file).

    ``layers``, ``tile``, ``scale``, ``depth_direction`` and ``normalisation`` left None are
    taken from the ``init`` checkpoint (else :data:`WINDOW_DEFAULTS` and the 4th place's
    normalisation); ``lr`` and ``freeze_batchnorm`` left None follow the preset for where
    training starts; ``arch``, ``width``, ``tile``, ``batch_size`` and ``steps`` left None the
    preset for the device (:mod:`.presets`: a 1/8-width model on 128 px tiles on a CPU);
    ``start_layer`` None is the window centred in the volume's depth. The trainer resolves
    them before anything else and records the resolved values in the run's ``config.json``
    (see :mod:`.init_settings`).
    """

    segment: str = option(positional=True, help="the segment (folder, TIFF stack or zarr)")
    labels: str = option(required=True, help="sparse 0/1/2 or binary PNG/TIFF")
    out: str = option(required=True, help="run directory")
    val_labels: str | None = option(None, help="held-out labels (default: automatic split)")
    init: str | None = option(
        None,
        exclusive="model",
        help="initial checkpoint (any kind load_checkpoint reads), or 'starter' for the "
        "bundled crackle starter (default: a new model)",
    )
    arch: str | None = option(  # None: the init checkpoint's, else the device preset's
        None,
        exclusive="model",
        help=f"architecture of a new model, see `models` ({INIT} {{preset:arch}})",
    )
    width: float | None = option(  # None: the init checkpoint's, else the device preset's
        None, lo=0.01, hi=4.0, step=0.0625, help=f"width multiplier ({INIT} {{preset:width}})"
    )
    start_layer: int | None = option(  # None: the window centred in the volume's depth
        None, lo=0, hi=4096, exclusive="window",
        help="first layer of the window (default: the window centred in the volume's depth)",
    )  # fmt: skip
    layers: int | None = option(  # None: the init checkpoint's, else 22
        None, lo=1, hi=256, help=f"window length in layers ({INIT} 22)"
    )
    scale: float | None = option(  # None: from the init checkpoint and voxel sizes, else 1.0
        None, lo=0.05, hi=20.0, step=0.01,
        help="in-plane scale, model px per volume px (default: from --init checkpoint and the "
        "voxel sizes, e.g. 2.44 for a 3.24 um Kaggle fold on 7.91 um scroll data, else 1.0)",
    )  # fmt: skip
    depth_scale: bool = option(False, help="legacy: resample depth with the in-plane scale")
    depth_direction: str | None = option(  # "reverse" flips each window's layer order
        None, choices=("forward", "reverse"), label="Depth order",
        flags={"--reverse": ("reverse", f"flip each window's depth order ({INIT} forward)"),
               "--forward": ("forward", "keep the depth order even if --init was reversed")},
        help="depth order of each window (default: the init checkpoint's, else forward)",
    )  # fmt: skip
    normalisation: dict[str, Any] | None = option(  # windows.Normalisation.to_dict()
        None, parse=parse_normalisation, metavar="{uint16_shift8_clip,percentile}",
        help=f"intensity normalisation ({INIT} uint16_shift8_clip: >>8, clip 50..200, /255)",
    )  # fmt: skip
    tile: int | None = option(  # None: the init checkpoint's, else the device preset's
        None, lo=16, hi=1024, step=16, unit="px",
        help=f"tile size in model pixels ({INIT} {{preset:tile}})",
    )  # fmt: skip
    steps: int | None = option(  # None: the device preset's
        None, lo=1, hi=10_000_000, help="optimiser steps (default: {preset:steps})"
    )
    epochs: float | None = option(  # when set: steps = epochs x labelled tiles / batch
        None,
        lo=0.01,
        hi=10_000,
        help="instead of steps: passes over the labelled tiles (default: none, use steps)",
    )
    batch_size: int | None = option(  # None: the device preset's (the global batch under DDP)
        None, lo=1, hi=4096, help="tiles per step, over all GPUs (default: {preset:batch_size})"
    )
    lr: float | None = option(  # None: the preset for where training starts (init_settings)
        None, lo=1e-7, hi=1.0, step=1e-5, label="Learning rate",
        help="learning rate (default: a preset by where training starts: 1e-3 from scratch on "
        "the CPU, 3e-4 on a GPU, 1e-4 from a Kinetics encoder, 3e-5 from a trained ink model)",
    )  # fmt: skip
    weight_decay: float = option(1e-2, lo=0, hi=1, step=1e-3, help="AdamW weight decay")
    warmup_steps: int | None = option(
        None, lo=0, hi=1_000_000, help="linear warm-up steps (default: 5% of the steps)"
    )
    min_lr_ratio: float = option(0.01, lo=0, hi=1, step=0.01, help="final lr / lr (cosine)")
    train: str = option(  # "all", "decoder", "decoder+last", "encoder", "layer3+layer4+decoder"
        "all", flag="--train-parts", help="all | decoder | decoder+last | ... (default: all)"
    )
    freeze_batchnorm: bool | None = option(  # BatchNorm in eval mode; None: True from ink models
        None, label="Freeze BatchNorm",
        flags={"--freeze-batchnorm": (True, "BatchNorm in eval mode, its statistics kept "
                                            "(default: from a trained ink model)"),
               "--train-batchnorm": (False, "BatchNorm trains (default: from scratch or from "
                                            "a Kinetics encoder)")},
        help="BatchNorm in eval mode (default: from a trained ink model)",
    )  # fmt: skip
    device: str = option(
        "auto",
        help="auto (CUDA, MPS, CPU), cpu, cuda:N, mps (default: auto); it picks the size "
        "preset: cpu for the CPU, gpu for CUDA or MPS, gpus with --gpus N on CUDA",
    )  # fmt: skip
    autocast: str = option(
        "auto", choices=("auto", "off", "bf16", "fp16"), help="mixed precision (default: auto)"
    )
    activation_checkpointing: bool = option(
        False, flag="--checkpointing", help="activation checkpointing"
    )
    channels_last: bool = option(False, help="channels-last memory format (CUDA)")
    sync_batchnorm: bool = option(  # under torchrun: BatchNorm statistics over all GPUs' tiles
        False, flag="--sync-bn", help="with several GPUs: BatchNorm over all GPUs",
        form=False, why="the dock trains in one process (several GPUs: the command's --gpus)",
    )  # fmt: skip
    seed: int = option(0, lo=0, hi=2**31 - 1, help="random seed (default: 0)")
    val_every: int = option(
        100,
        lo=1,
        hi=1_000_000,
        label="Validate every",
        help="validate every N steps (default: 100)",
    )
    val_fraction: float = option(  # automatic split when no val_labels: held-out components
        0.2,
        lo=0.05,
        hi=0.9,
        step=0.05,
        label="Held-out share",
        help="automatic split: share of components held out",
    )
    log_every: int = option(1, lo=1, hi=1_000_000, help="log a step record every N steps")
    save_every: int | None = option(  # None: at each validation (and at the end)
        None, lo=1, hi=1_000_000, help="save last every N steps (default: at each validation)"
    )
    augment: AugmentConfig = option(default_factory=AugmentConfig, help="augmentation")
    loss: LossConfig = option(default_factory=LossConfig, help="loss")
    prefetch: int = option(
        4, lo=1, hi=64, unit="batches", help="batches prepared ahead of the model"
    )
    augment_in_worker: bool | None = option(  # None: in the worker on CPU, on the device on GPU
        None, help="augment in the prefetch thread (default: on the CPU yes, on a GPU no)"
    )
    resume: bool = option(
        False, form=False, help="continue the run in --out",
        why="the dock starts each run in a new folder; Continue starts one from the last "
        "run's checkpoint",
    )  # fmt: skip
    in_child: bool = option(
        False, cli=False, form=False,
        why="a command is its own process already; the dock always trains in a child",
        help="run in a spawned process (the GUI's interpreter stays free)",
    )  # fmt: skip

    settings_name: ClassVar[str] = "training settings"

    def __post_init__(self) -> None:
        if self.depth_direction not in (None, "forward", "reverse"):
            raise ConfigError(f"depth_direction {self.depth_direction!r}: use forward/reverse")
        if self.steps is not None and self.steps < 1 and self.epochs is None:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.width is not None and not self.width > 0:
            raise ConfigError(f"width must be > 0, got {self.width}")
        if self.tile is not None and self.tile < 1:
            raise ConfigError(f"tile must be >= 1, got {self.tile}")
        if not 0 <= self.loss.label_smoothing < 1:
            raise ConfigError(f"label_smoothing {self.loss.label_smoothing} outside 0..1")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        trained_parts(self.train)

    def unresolved(self) -> list[str]:
        """The settings still None that the trainer resolves (empty once resolved)."""
        return [name for name in RESOLVED_FIELDS if getattr(self, name) is None]

    def differences(self, other: TrainConfig) -> list[str]:
        """Settings that differ and change the result (ignores ``RESUME_FREE``)."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [k for k in mine if k not in RESUME_FREE and mine[k] != theirs.get(k)]


def trained_parts(spec: str) -> tuple[str, ...]:
    """``"decoder+last"`` -> ``("layer4", "decoder")``; refuses unknown part names."""
    parts: list[str] = []
    for name in (p.strip().lower() for p in spec.split("+")):
        group = _PART_ALIASES.get(name, (name,))
        for part in group:
            if part not in TRAIN_PARTS:
                raise ConfigError(
                    f"unknown model part {name!r} in train={spec!r}; use all, encoder, last or "
                    f"{', '.join(TRAIN_PARTS)} joined by '+'"
                )
            parts.append(part)
    return tuple(p for p in TRAIN_PARTS if p in parts)

"""``TrainConfig``: everything a run needs, JSON-able, so a run directory can be resumed."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from napari_inkdetect.errors import ConfigError

#: Parts of the model that can be trained; others are frozen (their BatchNorm kept in eval).
TRAIN_PARTS = ("stem", "layer1", "layer2", "layer3", "layer4", "decoder")
_PART_ALIASES = {
    "all": TRAIN_PARTS,
    "encoder": TRAIN_PARTS[:-1],
    "last": ("layer4",),
}
#: Fields that may differ when resuming: they do not change what is computed.
RESUME_FREE = ("resume", "device", "log_every", "prefetch", "augment_in_worker")
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
class AugmentConfig:
    """Augmentation switches and strengths (each applied per tile with probability ``p_*``).

    On by default: flips and 90-degree rotations only. With every augmentation on, a 1/8-width
    resnet10 did not learn the synthetic crackle in 600 steps (validation F0.5 0.19 vs 0.595
    with flips/rotations): noise (std 0.03) is as strong as the crackle itself and blur erases
    1-2 px cracks. The rest (affine, intensity, noise, blur, dropout and the 4th place's depth
    crop-paste and layer cutout) are opt-in until measured on real segments.
    """

    flips: bool = True
    rot90: bool = True
    affine: bool = False
    affine_degrees: float = 15.0
    affine_scale: tuple[float, float] = (0.9, 1.1)
    intensity: bool = False  # brightness / contrast / gamma
    brightness: float = 0.1
    contrast: float = 0.2
    gamma: tuple[float, float] = (0.8, 1.25)
    noise: bool = False
    noise_std: float = 0.03
    blur: bool = False
    coarse_dropout: bool = False
    depth_crop: bool = False  # 4th place: 12..22 consecutive layers pasted at a random depth
    depth_crop_min: int = 12
    layer_cutout: bool = False  # 4th place: zero a few random layers
    p_affine: float = 0.5
    p_intensity: float = 0.5
    p_noise: float = 0.3
    p_blur: float = 0.2
    p_dropout: float = 0.3
    p_depth_crop: float = 0.4
    p_cutout: float = 0.3

    @classmethod
    def all(cls) -> AugmentConfig:
        """Every augmentation on (the 4th place's full recipe)."""
        return cls(**{f.name: True for f in fields(cls) if f.type in ("bool", bool)})

    @classmethod
    def none(cls) -> AugmentConfig:
        """Every augmentation off."""
        return cls(**{f.name: False for f in fields(cls) if f.type in ("bool", bool)})


@dataclass(frozen=True)
class LossConfig:
    """Label-smoothed cross-entropy on labelled pixels, optional dice and class weights."""

    label_smoothing: float = 0.3
    dice_weight: float = 0.0
    class_weights: bool = False


@dataclass(frozen=True)
class TrainConfig:
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

    segment: str
    labels: str
    out: str
    val_labels: str | None = None
    init: str | None = None
    arch: str | None = None  # None: the init checkpoint's, else the device preset's
    width: float | None = None  # None: the init checkpoint's, else the device preset's
    start_layer: int | None = None  # None: the window centred in the volume's depth
    layers: int | None = None  # None: the init checkpoint's, else 22
    scale: float | None = None  # None: from the init checkpoint and voxel sizes, else 1.0
    depth_scale: bool = False
    depth_direction: str | None = None  # "reverse" flips each window's layer order; None: init's
    normalisation: dict[str, Any] | None = None  # windows.Normalisation.to_dict(); None: init's
    tile: int | None = None  # None: the init checkpoint's, else the device preset's
    steps: int | None = None  # None: the device preset's
    epochs: float | None = None  # when set: steps = epochs x labelled tiles / batch
    batch_size: int | None = None  # None: the device preset's (the global batch under DDP)
    lr: float | None = None  # None: the preset for where training starts (init_settings)
    weight_decay: float = 1e-2
    warmup_steps: int | None = None  # None: 5% of the steps
    min_lr_ratio: float = 0.01
    train: str = "all"  # "all", "decoder", "decoder+last", "encoder", "layer3+layer4+decoder"
    freeze_batchnorm: bool | None = None  # BatchNorm in eval mode; None: True from an ink model
    device: str = "auto"
    autocast: str = "auto"
    activation_checkpointing: bool = False
    channels_last: bool = False
    sync_batchnorm: bool = False  # under torchrun: BatchNorm statistics over all GPUs' tiles
    seed: int = 0
    val_every: int = 100
    val_fraction: float = 0.2  # automatic split when no val_labels: held-out components
    log_every: int = 1
    save_every: int | None = None  # None: at each validation (and at the end)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    prefetch: int = 4
    augment_in_worker: bool | None = None  # None: in the worker on CPU, on the device on GPU
    resume: bool = False

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

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (tuples as lists)."""
        return _jsonable(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are refused (a typo would be silent)."""
        data = dict(data)
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown training settings: {', '.join(sorted(unknown))}")
        data["augment"] = _sub(AugmentConfig, data.get("augment"))
        data["loss"] = _sub(LossConfig, data.get("loss"))
        return cls(**data)

    def with_(self, **changes: Any) -> TrainConfig:
        """A copy with some settings changed."""
        return replace(self, **changes)

    def unresolved(self) -> list[str]:
        """The settings still None that the trainer resolves (empty once resolved)."""
        return [name for name in RESOLVED_FIELDS if getattr(self, name) is None]

    def differences(self, other: TrainConfig) -> list[str]:
        """Settings that differ and change the result (ignores ``RESUME_FREE``)."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [k for k in mine if k not in RESUME_FREE and mine[k] != theirs.get(k)]


def _sub(cls: type, data: Any) -> Any:
    if data is None:
        return cls()
    if isinstance(data, cls):
        return data
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} settings: {', '.join(sorted(unknown))}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


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

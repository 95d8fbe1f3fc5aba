"""Where training starts: what an initial checkpoint says about how it was trained, and the
optimisation preset (learning rate, BatchNorm mode) for that kind of start.

Read by :mod:`.init_settings`, which fills a config's unset settings from these facts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from napari_inkdetect.errors import CheckpointError, ConfigError
from napari_inkdetect.io.segment import FRAGMENT_VOXEL_UM
from napari_inkdetect.models.checkpoints import (
    KIND_INK_MODEL,
    KIND_NAPARI_INKDETECT,
    KIND_PRETRAINED_ENCODER,
    CheckpointInfo,
    load_checkpoint,
    read_checkpoint_metadata,
)
from napari_inkdetect.models.starter import starter_path
from napari_inkdetect.windows import Normalisation

#: What the 4th-place Kaggle ink models were trained on (they record none of it).
KAGGLE_LAYERS, KAGGLE_TILE, KAGGLE_VOXEL_UM = 22, 256, FRAGMENT_VOXEL_UM
#: Where one of our checkpoints may record the voxel size (um) of its training segment.
VOXEL_KEYS = ("voxel_size_um", "segment_voxel_size_um")
#: What ``init`` (``--init``) takes for the bundled crackle starter.
STARTER_INIT = "starter"
#: BatchNorm trains only on at least this many tiles per forward pass (else: eval mode).
MIN_BATCHNORM_TILES = 4


@dataclass(frozen=True)
class InitFacts:
    """What an initial checkpoint says about how it was trained; None: it does not say."""

    path: Path
    kind: str
    layers: int | None = None
    tile: int | None = None
    scale: float | None = None  # model pixels per volume pixel it was trained at
    voxel_um: float | None = None  # voxel size of the data it was trained on
    depth_reverse: bool | None = None
    depth_scale: bool | None = None
    normalisation: dict[str, Any] | None = None
    assumed: bool = False  # facts known about a file kind, not read from the file
    arch: str | None = None  # the model it holds (read or inferred from its tensors)
    width: float | None = None

    @property
    def label(self) -> str:
        """How the notes name the file."""
        what = {
            KIND_NAPARI_INKDETECT: "",
            KIND_INK_MODEL: " (foreign ink model: assumed a Kaggle 4th-place fold)",
            KIND_PRETRAINED_ENCODER: " (Kinetics-pretrained encoder: records no window)",
        }.get(self.kind, f" ({self.kind})")
        return f"{self.path.name}{what}"


@dataclass(frozen=True)
class OptimisationPreset:
    """Learning rate, trained parts and BatchNorm mode for where training starts."""

    lr: float
    train: str
    freeze_batchnorm: bool
    reason: str


#: Finetuning the bundled crackle starter: a small generalist that must still move a long way
#: on a new segment, so it trains like a new model (lr 1e-3, BatchNorm adapting), only from a
#: better point. ``benchmarks/bench_quality.py --init starter``, default and faint variants,
#: seeds 0 and 1, 1000 steps: lr 3e-5 with BatchNorm frozen (the trained-ink-model preset)
#: held-out F0.5 0.81 on default; lr 3e-4 0.84 / 0.69 (faint); lr 1e-3 0.90 / 0.77.
STARTER_PRESET = OptimisationPreset(1e-3, "all", False, "finetuning the crackle starter")


def default_optimisation(
    init_kind: str | None, device_type: str = "cpu", *, starter: bool = False
) -> OptimisationPreset:
    """The preset for a start: ``init_kind`` None (from scratch), ``KIND_PRETRAINED_ENCODER``
    (a Kinetics-pretrained encoder, random decoder) or a trained ink model (any other kind).

    From scratch: lr 1e-3 on the CPU (small models, few steps), 3e-4 on a GPU; BatchNorm trains.
    From a Kinetics encoder: lr 1e-4, BatchNorm trains (its statistics are of video frames).
    From a trained ink model: lr 3e-5, BatchNorm frozen (eval mode: the statistics it learned
    on many fragments are kept; a few painted tiles would overwrite them). All parts train.
    From the bundled crackle starter (``starter``): :data:`STARTER_PRESET`.
    """
    if init_kind is None:
        on_cpu = device_type == "cpu"
        where = "the CPU" if on_cpu else "a GPU"
        return OptimisationPreset(
            1e-3 if on_cpu else 3e-4, "all", False, f"training from scratch on {where}"
        )
    if init_kind == KIND_PRETRAINED_ENCODER:
        reason = "starting from a Kinetics-pretrained encoder"
        return OptimisationPreset(1e-4, "all", False, reason)
    if starter:
        return STARTER_PRESET
    return OptimisationPreset(3e-5, "all", True, "finetuning a trained ink model")


def batchnorm_should_freeze(
    micro_batch: int, freeze_batchnorm: bool | None, *, processes: int = 1
) -> bool:
    """Whether BatchNorm layers go in eval mode for a forward pass of ``micro_batch`` tiles.

    True when asked (``freeze_batchnorm``), and whenever fewer than
    :data:`MIN_BATCHNORM_TILES` tiles would make up the batch statistics (e.g. after out of
    memory halved the micro-batch to 1-2 tiles): statistics of one or two tiles are noise, and
    the running averages would drift towards them. ``processes``: the world size when
    SyncBatchNorm pools the statistics over processes, else 1.
    """
    return bool(freeze_batchnorm) or micro_batch * max(1, processes) < MIN_BATCHNORM_TILES


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    """Every BatchNorm layer of ``model`` (SyncBatchNorm included)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


# --------------------------------------------------------------------------- the checkpoint


def init_file(init: str | Path) -> Path:
    """The file an ``init`` names: :data:`STARTER_INIT` is the bundled crackle starter
    (checksum verified), anything else a path."""
    return starter_path() if str(init) == STARTER_INIT else Path(init)


def is_starter(path: str | Path) -> bool:
    """Whether ``path`` is the bundled crackle starter (its own optimisation preset)."""
    try:
        return Path(path).resolve() == starter_path().resolve()
    except CheckpointError:  # a damaged install: not the starter we measured
        return False


def read_init_facts(path: str | Path) -> InitFacts:
    """The training settings an initial checkpoint records (ours: header only, no weights;
    ``.pth`` files: loaded onto the meta device to learn their kind)."""
    path = init_file(path)
    try:
        info = CheckpointInfo.from_dict(read_checkpoint_metadata(path))
    except (CheckpointError, ConfigError):
        _, report = load_checkpoint(path, device="meta")  # its own error when unreadable
        info = report.info if report.kind == KIND_NAPARI_INKDETECT else None
        kind, model = report.kind, {"arch": report.arch, "width": float(report.width)}
    else:
        kind, model = KIND_NAPARI_INKDETECT, {"arch": info.arch, "width": float(info.width)}
    if kind == KIND_NAPARI_INKDETECT and info is not None:
        return InitFacts(
            path,
            kind,
            **model,
            layers=int(info.in_layers),
            tile=int(info.tile_size),
            scale=float(info.scale),
            voxel_um=_recorded_voxel(info),
            depth_reverse=bool(info.depth_reverse),
            depth_scale=bool(info.depth_scale),
            normalisation=Normalisation.from_dict(info.normalisation).to_dict(),
        )
    if kind == KIND_INK_MODEL:
        return InitFacts(
            path,
            kind,
            layers=KAGGLE_LAYERS,
            tile=KAGGLE_TILE,
            scale=1.0,
            voxel_um=KAGGLE_VOXEL_UM,
            depth_reverse=False,
            depth_scale=False,
            normalisation=Normalisation().to_dict(),
            assumed=True,
            **model,
        )
    return InitFacts(path, kind, **model)


def _recorded_voxel(info: CheckpointInfo) -> float | None:
    for source in (info.provenance or {}, info.extra or {}):
        for key in VOXEL_KEYS:
            value = source.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
                return float(value)
    return None


def _checkpoint_scale(facts: InitFacts, segment_um: float | None) -> tuple[float | None, str]:
    """The scale the checkpoint asks for on this segment, and why."""
    if facts.scale is None:
        return None, ""
    if facts.voxel_um is not None and segment_um:
        scale = round(facts.scale * segment_um / facts.voxel_um, 4)
        trained = f"{facts.voxel_um:g} um training data"
        if facts.scale != 1.0:
            trained += f" at scale {facts.scale:g}"
        return scale, f"{segment_um:g} um segment voxels vs {trained}"
    if facts.voxel_um is not None:
        return facts.scale, (
            f"this segment's voxel size is unknown: assumed {facts.voxel_um:g} um like the "
            "checkpoint's training data"
        )
    return facts.scale, (
        "the checkpoint's own scale; it records no voxel size, so this assumes the segment "
        "has the voxel size of its training data"
    )

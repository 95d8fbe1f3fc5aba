"""Training starts from the initial checkpoint's own settings.

A model is trained for one window (layers, tile, in-plane scale, depth order, intensity
normalisation); finetuning it in another silently wastes what it learned. So the settings a
:class:`~napari_inkdetect.training.config.TrainConfig` leaves ``None`` are filled here from the
``init`` checkpoint, before the run directory is written:

- our ``.safetensors`` files: their recorded ``in_layers``, ``tile_size``, ``depth_reverse``,
  ``normalisation`` and ``scale`` (rescaled by the voxel sizes when the file records the voxel
  size of its training data under ``provenance["voxel_size_um"]``);
- foreign ink models (the Kaggle 4th-place folds, which record nothing): 22 layers, tile 256,
  forward depth, trained on 3.24 um fragments, so ``scale = segment um / 3.24`` (2.44 on
  7.91 um scroll data);
- Kinetics-pretrained encoders and runs from scratch: the defaults (22, 256, 1.0, forward).

``scale`` is model pixels per volume pixel: a model trained at 3.24 um applied to 7.91 um data
needs the volume upscaled by 7.91 / 3.24. An explicit setting always wins; where it contradicts
the checkpoint a note says so. ``lr`` and ``freeze_batchnorm`` left ``None`` follow
:func:`default_optimisation`; the sizes (``arch``, ``width``, ``tile``, ``batch_size``,
``steps``) left ``None`` the device preset (:mod:`.presets`), where the checkpoint does not
fix them (its model, its tile); ``start_layer`` ``None`` becomes the centred window's. A
resumed run takes the values its ``config.json`` recorded.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from napari_inkdetect.errors import ConfigError, InkDetectError
from napari_inkdetect.io.segment import open_segment
from napari_inkdetect.models.checkpoints import (
    KIND_INK_MODEL,
)
from napari_inkdetect.training.config import (
    PRESET_FIELDS,
    RESOLVED_FIELDS,
    SIZE_FIELDS,
    WINDOW_DEFAULTS,
    TrainConfig,
)
from napari_inkdetect.training.presets import DevicePreset, pick_preset
from napari_inkdetect.training.starting_point import (
    KAGGLE_LAYERS,
    KAGGLE_TILE,
    KAGGLE_VOXEL_UM,
    MIN_BATCHNORM_TILES,
    STARTER_INIT,
    InitFacts,
    OptimisationPreset,
    _checkpoint_scale,
    batchnorm_layers,
    batchnorm_should_freeze,
    default_optimisation,
    init_file,
    is_starter,
    read_init_facts,
)
from napari_inkdetect.windows import Normalisation, WindowSpec, window_centre

__all__ = [
    "KAGGLE_LAYERS",
    "KAGGLE_TILE",
    "KAGGLE_VOXEL_UM",
    "MIN_BATCHNORM_TILES",
    "InitFacts",
    "OptimisationPreset",
    "batchnorm_layers",
    "batchnorm_should_freeze",
    "default_optimisation",
    "read_init_facts",
    "resolve_init_settings",
    "window_spec",
]

_CONFIG_FILE = "config.json"  # trainer.CONFIG_FILE (not imported: the trainer imports us)
_FLAGS = {
    "layers": "--layers",
    "tile": "--tile",
    "scale": "--scale",
    "depth_direction": "--forward/--reverse",
    "normalisation": "normalisation",
    "lr": "--lr",
    "freeze_batchnorm": "--freeze-batchnorm/--train-batchnorm",
    "arch": "--arch",
    "width": "--width",
    "batch_size": "--batch-size",
    "steps": "--steps",
}
#: The sizes a device preset fills, in the order its note lists them.
_PRESET_SIZES = ("arch", "width", "tile", "batch_size", "steps")


# --------------------------------------------------------------------------- resolving


def resolve_init_settings(
    config: TrainConfig,
    segment_voxel_um: float | None,
    device_type: str | None = None,
    *,
    n_layers: int | None = None,
    processes: int | None = None,
) -> tuple[TrainConfig, list[str]]:
    """``config`` with every setting left None filled (see the module docstring), and the
    human-readable notes on what was picked and what contradicts the checkpoint.

    ``device_type`` ("cpu", "cuda", "mps") chooses the device preset and the from-scratch
    learning rate; None: resolved from ``config.device``. ``processes``: training processes
    (None: torchrun's world size, else 1). ``n_layers``: the volume's depth, for the centred
    start layer (None: read from ``config.segment``'s headers; left None when unreadable).
    Raises ``CheckpointError`` for an unreadable ``init``.
    """
    notes: list[str] = []
    explicit = {name for name in RESOLVED_FIELDS if getattr(config, name) is not None}
    config, centre_later = _from_resumed_run(config, notes)
    if config.init == STARTER_INIT:  # the keyword becomes the verified bundled file
        config = replace(config, init=str(init_file(STARTER_INIT)))
        notes.append(f"init: the bundled crackle starter ({Path(config.init).name})")
    facts = read_init_facts(config.init) if config.init else None
    kind = facts.kind if facts is not None else None
    window = _checkpoint_window(facts, segment_voxel_um)
    if device_type is None and _needs_device(config, kind, window):
        device_type = _device_type(config.device)
    sizes, why = pick_preset(torch.device(device_type or "cpu"), _processes(processes))
    filled: dict[str, Any] = {}
    defaults = {**WINDOW_DEFAULTS, "tile": sizes.tile, "normalisation": _default_norm()}
    for name, default in defaults.items():
        if getattr(config, name) is None:
            value = window.get(name)
            filled[name] = default if value is None else value
    filled["normalisation"] = Normalisation.from_dict(
        filled.get("normalisation", config.normalisation)
    ).to_dict()  # validated, in one canonical form (an explicit one too: not noted as filled)
    if config.normalisation is not None:
        config = replace(config, normalisation=filled.pop("normalisation"))
    model = {"arch": getattr(facts, "arch", None), "width": getattr(facts, "width", None)}
    for name in SIZE_FIELDS:
        if getattr(config, name) is None:
            value = model.get(name)
            filled[name] = getattr(sizes, name) if value is None else value
    preset = None
    if any(getattr(config, name) is None for name in PRESET_FIELDS):
        starter = facts is not None and is_starter(facts.path)
        preset = default_optimisation(kind, device_type or "cpu", starter=starter)
        if config.lr is None:
            filled["lr"] = preset.lr
        if config.freeze_batchnorm is None:
            filled["freeze_batchnorm"] = preset.freeze_batchnorm
    resolved = replace(config, **filled)
    if facts is not None:
        notes += _window_notes(facts, window, resolved, filled, explicit, segment_voxel_um)
    notes += _size_notes(sizes, why, resolved, filled, window, model)
    if preset is not None:
        notes += _preset_notes(preset, resolved, filled)
    if resolved.start_layer is None and not centre_later:
        resolved, note = _default_start(resolved, n_layers)
        notes += note
    missing = resolved.unresolved()
    if missing:  # pragma: no cover - every field has a default above
        raise ConfigError(f"could not resolve {', '.join(missing)}")
    return resolved, notes


def _needs_device(config: TrainConfig, kind: str | None, window: dict[str, Any]) -> bool:
    """Whether a setting left None depends on the device (a preset's size, or the lr from
    scratch)."""
    sizes = [n for n in SIZE_FIELDS if getattr(config, n) is None]
    if kind is not None:
        sizes = [n for n in sizes if n not in ("arch", "width")]  # the checkpoint's model
    tile = config.tile is None and window.get("tile") is None
    return bool(sizes) or tile or (kind is None and config.lr is None)


def _processes(processes: int | None) -> int:
    if processes is not None:
        return processes
    from napari_inkdetect.training.distributed import Distributed

    return Distributed.from_env().world_size


def _default_start(config: TrainConfig, n_layers: int | None) -> tuple[TrainConfig, list[str]]:
    """``start_layer`` where the painted ink is (:func:`~napari_inkdetect.ink_depth.
    estimate_ink_depth` on the labelled pixels: the depth where ink and not-ink differ most in
    texture), else the window centred in the volume's depth; recorded in ``config.json`` so
    everyone can tell the window trained on. Unchanged when the segment cannot be read (the
    trainer reports that itself)."""
    try:
        segment = open_segment(config.segment)  # headers; the estimate reads labelled blocks
    except (InkDetectError, OSError):
        if n_layers is None:
            return config, []
        segment = None
    n_layers = int(segment.shape[0]) if n_layers is None else n_layers
    spec = window_spec(config)
    lo, hi = spec.start_bounds(n_layers)
    found = None if segment is None else _ink_depth_start(config, segment, spec)
    if found is not None and lo <= hi:
        start, centre = min(max(found[0], lo), hi), found[1]
        note = (
            f"start layer {start} (window centre {window_centre(start, spec.layers)}): the "
            f"painted ink shows at layer {centre}, {found[2]} (override with --start-layer or "
            "--centre-layer)"
        )
        return replace(config, start_layer=start), [note]
    start = spec.centred_start(n_layers)
    note = (
        f"start layer {start}: the {spec.source_layers}-layer window centred in the volume's "
        f"{n_layers} layers, as no ink depth stood out in the labels (override with "
        "--start-layer or --centre-layer)"
    )
    return replace(config, start_layer=start), [note] if start >= 0 else []


def _ink_depth_start(config: TrainConfig, segment: Any, spec: WindowSpec) -> tuple | None:
    """``(start, ink layer, why)`` from the painted labels, or None when they do not tell."""
    from napari_inkdetect.ink_depth import estimate_ink_depth  # scipy: only when needed
    from napari_inkdetect.io.segment import read_segment_labels

    try:
        labels = read_segment_labels(segment, Path(config.labels))
        estimate = estimate_ink_depth(
            segment.volume, labels, mask=segment.read_mask(), layers=spec.layers
        )
    except (InkDetectError, OSError, ValueError):
        return None  # unreadable or unusable labels: the trainer says why
    if not estimate.found:
        return None
    return estimate.start, estimate.depth, f"{estimate.contrast:.0f}x the noise"


def _from_resumed_run(config: TrainConfig, notes: list[str]) -> tuple[TrainConfig, bool]:
    """Unset settings from the ``config.json`` of the run being resumed (resolved when it
    began), so that ``resume`` compares like with like even where a preset would differ now
    (e.g. resumed on a GPU). A missing or unreadable file is left to the trainer to report.

    Also whether ``start_layer`` stays None: a run recorded before start layers were
    resolved holds null there (the centred window, which the trainer computes again)."""
    if not config.resume:
        return config, False
    try:
        stored = TrainConfig.from_dict(json.loads((Path(config.out) / _CONFIG_FILE).read_text()))
    except (OSError, ValueError, TypeError, ConfigError):
        return config, False
    fill = {
        name: getattr(stored, name)
        for name in (*RESOLVED_FIELDS, "start_layer")
        if getattr(config, name) is None and getattr(stored, name) is not None
    }
    if fill:
        notes.append(f"resuming: {', '.join(fill)} as recorded in {config.out}/{_CONFIG_FILE}")
    config = replace(config, **fill)
    return config, config.start_layer is None


def _checkpoint_window(facts: InitFacts | None, segment_um: float | None) -> dict[str, Any]:
    if facts is None:
        return {}
    scale, _ = _checkpoint_scale(facts, segment_um)
    direction = None
    if facts.depth_reverse is not None:
        direction = "reverse" if facts.depth_reverse else "forward"
    return {
        "layers": facts.layers,
        "tile": facts.tile,
        "scale": scale,
        "depth_direction": direction,
        "normalisation": facts.normalisation,
    }


def _window_notes(
    facts: InitFacts,
    window: dict[str, Any],
    config: TrainConfig,
    filled: dict[str, Any],
    explicit: set[str],
    segment_um: float | None,
) -> list[str]:
    notes: list[str] = []
    taken = [n for n in WINDOW_DEFAULTS if n in filled and window.get(n) is not None]
    if "normalisation" in filled and window.get("normalisation") not in (None, _default_norm()):
        taken.append("normalisation")
    defaulted = [  # a tile from the device preset: said by the preset's note
        n for n in WINDOW_DEFAULTS if n in filled and window.get(n) is None and n != "tile"
    ]
    if taken:
        flags = ", ".join(_FLAGS[n] for n in taken if n != "normalisation")
        notes.append(
            f"window {_describe(config, taken)} taken from init checkpoint {facts.label}"
            + (f" (override with {flags})" if flags else "")
        )
    if defaulted:
        notes.append(
            f"init checkpoint {facts.label}: window {_describe(config, defaulted)} (the defaults)"
        )
    _, why = _checkpoint_scale(facts, segment_um)
    if "scale" in taken and why:
        notes.append(f"scale {config.scale:.4g}: {why}")
    if (
        facts.kind == KIND_INK_MODEL
        and "scale" in taken
        and segment_um is None
        and facts.voxel_um is not None
    ):
        notes.append(
            f"for 7.91 um scroll data use --scale {7.91 / facts.voxel_um:.2f} with this model"
        )
    for name in [n for n in RESOLVED_FIELDS if n in explicit and n not in filled]:
        note = _contradiction(name, getattr(config, name), window.get(name), facts, why)
        if note:
            notes.append(note)
    if facts.depth_scale is not None and facts.depth_scale != config.depth_scale:
        notes.append(
            f"depth_scale {config.depth_scale}: {facts.path.name} was trained with depth_scale "
            f"{facts.depth_scale}; set depth_scale={facts.depth_scale} to keep its window"
        )
    return notes


def _default_norm() -> dict[str, Any]:
    return Normalisation().to_dict()


def _describe(config: TrainConfig, names: list[str]) -> str:
    reverse = config.depth_direction == "reverse"
    parts = {
        "layers": f"{config.layers} layers",
        "tile": f"tile {config.tile}",
        "scale": f"scale {config.scale:.3g}",
        "depth_direction": f"depth {'reversed' if reverse else 'forward'}",
        "normalisation": f"{(config.normalisation or {}).get('kind')} normalisation",
    }
    items = [parts[n] for n in names]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _contradiction(name: str, given: Any, wanted: Any, facts: InitFacts, why: str) -> str | None:
    """A note when an explicit setting differs from what the checkpoint was trained with."""
    if wanted is None:
        return None
    who = facts.path.name + (" (assumed a Kaggle fold)" if facts.assumed else "")
    if name == "layers" and given != wanted:
        return (
            f"layers {given} given; {who} was trained on {wanted}-layer windows (its 3D "
            "convolutions take any depth, but what it learned about depth may not carry over)"
        )
    if name == "tile" and given != wanted:
        return (
            f"tile {given} given; {who} was trained on tile {wanted} (fine for a convolutional "
            "model, though each tile sees a different context)"
        )
    if name == "scale" and not math.isclose(given, wanted, rel_tol=1e-3):
        return (
            f"scale {given:g} given; {who} expects {wanted:.4g} here ({why}): ink strokes will "
            f"look {given / wanted:.2g}x the size it was trained on"
        )
    if name == "depth_direction" and given != wanted:
        trained = "reversed" if wanted == "reverse" else wanted
        return f"depth {given} given; {who} was trained with depth {trained}"
    if name == "normalisation":
        mine = Normalisation.from_dict(given).to_dict()
        if mine != Normalisation.from_dict(wanted).to_dict():
            return (
                f"normalisation {mine['kind']} given; {who} was trained with {wanted['kind']} "
                f"({json.dumps(wanted)})"
            )
    return None


def _preset_notes(
    preset: OptimisationPreset, config: TrainConfig, filled: dict[str, Any]
) -> list[str]:
    picked = []
    if "lr" in filled:
        picked.append(f"lr {config.lr:g}")
    if "freeze_batchnorm" in filled:
        picked.append(
            "BatchNorm frozen (eval mode, statistics kept)"
            if config.freeze_batchnorm
            else "BatchNorm trains"
        )
    if not picked:
        return []
    flags = ", ".join(_FLAGS[n] for n in PRESET_FIELDS if n in filled)
    return [f"{' and '.join(picked)}: the preset for {preset.reason} (override with {flags})"]


def _size_notes(
    sizes: DevicePreset,
    why: str,
    config: TrainConfig,
    filled: dict[str, Any],
    window: dict[str, Any],
    model: dict[str, Any],
) -> list[str]:
    """``"CPU preset: resnet10 x0.125, tile 128, batch 4, 600 steps (...)"``: the sizes
    taken from the device preset (not those from the init checkpoint)."""
    unsaid = {n for n in ("arch", "width") if model.get(n) is not None}  # the checkpoint's
    if window.get("tile") is not None:
        unsaid.add("tile")
    if config.epochs is not None:
        unsaid.add("steps")  # epochs decide the steps
    names = [n for n in _PRESET_SIZES if n in filled and n not in unsaid]
    if not names:
        return []
    parts = {
        "arch": config.arch,
        "width": f"x{config.width:g}",
        "tile": f"tile {config.tile}",
        "batch_size": f"batch {config.batch_size}",
        "steps": f"{config.steps} steps",
    }
    items = [parts[n] for n in names]
    if "arch" in names and "width" in names:  # "resnet10 x0.125"
        items[:2] = [" ".join(items[:2])]
    flags = "/".join(_FLAGS[n] for n in names)
    return [f"{sizes.label} preset: {', '.join(items)} ({why}; override with {flags})"]


def _device_type(device: str) -> str:
    from napari_inkdetect.training.distributed import Distributed

    try:
        return Distributed.from_env().resolve_device(device).type
    except ConfigError:  # the trainer reports a bad device itself
        return "cpu"


def window_spec(config: TrainConfig) -> WindowSpec:
    """The window of a resolved ``config`` (its normalisation included)."""
    return WindowSpec(
        layers=config.layers,
        tile=config.tile,
        scale=config.scale,
        depth_scale=config.depth_scale,
        normalisation=Normalisation.from_dict(config.normalisation),
    )

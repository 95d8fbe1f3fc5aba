"""What a checkpoint says about its weights: :class:`CheckpointInfo` and its JSON form.

A leaf of :mod:`napari_inkdetect.models`: it knows no model, no file layout and no tensor, so
anything (the detector, the loaders, the docks) can read metadata without building a model.
Our ``.safetensors`` files keep :meth:`CheckpointInfo.to_dict` as JSON under
:data:`METADATA_KEY`; :func:`info_from_metadata` reads it back and refuses damaged values,
:func:`info_for_saving` / :func:`info_to_json` write it.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from napari_inkdetect.errors import CheckpointError, ConfigError
from napari_inkdetect.io.prediction_store import calibrated_threshold

__all__ = [
    "DEFAULT_NORMALISATION",
    "FORMAT_VERSION",
    "KIND_INK_MODEL",
    "KIND_NAPARI_INKDETECT",
    "KIND_PRETRAINED_ENCODER",
    "METADATA_KEY",
    "CheckpointInfo",
    "info_for_saving",
    "info_from_metadata",
    "info_to_json",
    "recommended_threshold",
]

FORMAT_VERSION = 1
#: The safetensors metadata key holding our JSON (:meth:`CheckpointInfo.to_dict`).
METADATA_KEY = "napari_inkdetect"
KIND_PRETRAINED_ENCODER = "pretrained_encoder"
KIND_INK_MODEL = "ink_model"
KIND_NAPARI_INKDETECT = "napari_inkdetect"

DEFAULT_NORMALISATION: dict[str, Any] = {
    "kind": "uint16_shift8_clip",
    "shift": 8,
    "clip": [50, 200],
    "divide": 255.0,
}


def _default_normalisation() -> dict[str, Any]:
    return json.loads(json.dumps(DEFAULT_NORMALISATION))


@dataclass
class CheckpointInfo:
    """Everything needed to use a model's weights again, stored next to them.

    Unknown keys read from a file are kept in ``extra`` and written back unchanged, so files
    from newer versions survive a load/save round trip.
    """

    arch: str
    width: float = 1.0
    in_chans: int = 1
    in_layers: int = 22
    tile_size: int = 256
    scale: float = 1.0
    depth_scale: bool = False
    depth_reverse: bool = False
    start_layer: int | None = None
    normalisation: dict[str, Any] = field(default_factory=_default_normalisation)
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data; ``extra`` keys appear at the top level."""
        data = {k: v for k, v in asdict(self).items() if k != "extra"}
        return {**self.extra, **data}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckpointInfo:
        """Build from :meth:`to_dict` output; unknown keys go to ``extra``."""
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        if "arch" not in known:
            raise ConfigError("checkpoint metadata has no 'arch'")
        return cls(**known, extra=extra)


# --------------------------------------------------------------------------- reading


def info_from_metadata(path: Path, text: str) -> CheckpointInfo:
    """The :class:`CheckpointInfo` in the JSON ``text`` of the file ``path``, checked.

    Raises
    ------
    CheckpointError
        For unreadable JSON, values of the wrong type or range, or a newer format version.
    """
    try:
        data = json.loads(text)
        if not isinstance(data, Mapping):
            raise TypeError(f"a JSON {type(data).__name__}, not an object")
        info = CheckpointInfo.from_dict(data)
    except (ValueError, TypeError, ConfigError) as exc:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{path}: unreadable {METADATA_KEY} metadata ({exc})") from None
    problem = _metadata_problem(info)
    if problem:
        raise CheckpointError(f"{path}: damaged {METADATA_KEY} metadata: {problem}")
    if info.format_version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: written in checkpoint format {info.format_version} by a newer "
            f"napari-inkdetect (this one reads up to {FORMAT_VERSION}); please upgrade"
        )
    return info


def _metadata_problem(info: CheckpointInfo) -> str | None:
    """What makes metadata unusable (a value of the wrong type or out of range), or None."""

    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

    def count(v: Any, least: int = 1) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= least

    checks = {
        "format_version": count(info.format_version, 0),
        "arch": isinstance(info.arch, str),
        "width": number(info.width) and info.width > 0,
        "in_chans": count(info.in_chans),
        "in_layers": count(info.in_layers),
        "tile_size": count(info.tile_size),
        "scale": number(info.scale) and info.scale > 0,
        "depth_scale": isinstance(info.depth_scale, bool),
        "depth_reverse": isinstance(info.depth_reverse, bool),
        "start_layer": info.start_layer is None or count(info.start_layer, 0),
        "head": isinstance(getattr(info, "head", ""), str),
        "normalisation": isinstance(info.normalisation, dict),
        "provenance": isinstance(info.provenance, dict),
    }
    bad = next((name for name, ok in checks.items() if not ok), None)
    return None if bad is None else f"{bad} = {getattr(info, bad)!r}"[:120]


def recommended_threshold(info: CheckpointInfo | Mapping[str, Any] | None) -> float | None:
    """The ink threshold a checkpoint was calibrated at: the best-F0.5 threshold on its
    training run's held-out validation region (``provenance["metrics"]["best_threshold"]``).

    ``info`` is a :class:`CheckpointInfo` or its :meth:`~CheckpointInfo.to_dict` (e.g. a
    prediction's ``checkpoint_metadata``). ``None`` when the checkpoint was not validated
    (foreign files, runs without validation labels) or the value is not in ``(0, 1)``.
    """
    if isinstance(info, CheckpointInfo):
        return calibrated_threshold({"provenance": info.provenance})
    return calibrated_threshold(info)  # the metadata as stored (io.prediction_store reads it)


# --------------------------------------------------------------------------- writing


def _software_version() -> str:
    # Deferred on purpose: the package root sits above every subpackage, so reading its version
    # at call time keeps this leaf importable whatever the root itself imports.
    try:
        from napari_inkdetect import __version__
    except ImportError:  # pragma: no cover
        return "unknown"
    return __version__


def info_for_saving(base: CheckpointInfo, fields_to_set: Mapping[str, Any]) -> CheckpointInfo:
    """``base`` with ``fields_to_set`` applied, the current format version and a provenance
    stamped with when and by which version it was written (kept if already there).
    """
    data = {**base.to_dict(), **fields_to_set}
    data["format_version"] = FORMAT_VERSION
    final = CheckpointInfo.from_dict(data)
    final.provenance = dict(final.provenance)
    final.provenance.setdefault(
        "created", datetime.datetime.now(datetime.timezone.utc).isoformat()
    )
    final.provenance.setdefault("software", f"napari-inkdetect {_software_version()}")
    return final


def info_to_json(info: CheckpointInfo) -> str:
    """The text stored under :data:`METADATA_KEY`; refuses values that are not plain data."""
    try:
        return json.dumps(info.to_dict(), allow_nan=True)
    except TypeError as exc:
        raise ConfigError(f"checkpoint metadata must be plain data (JSON): {exc}") from None

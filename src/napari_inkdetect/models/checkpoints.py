"""Loading the checkpoints users already hold, and our own safe checkpoint format.

:func:`load_checkpoint` recognises, from the file's content alone:

- ``pretrained_encoder``: Kinetics-pretrained 3D ResNets / ResNeXt
  (``torch.load(f)["state_dict"]``, keys ``conv1.*``, ``layer1..4.*``, ``fc.*``, maybe
  ``module.``-prefixed). The 3-channel ``conv1`` is summed to one channel, ``fc`` is
  dropped and the decoder is freshly initialised.
- ``ink_model``: trained ink models (``torch.load(f)["model"]``, keys ``encoder.*`` and
  ``decoder.*``), e.g. the Kaggle ink-detection 4th-place folds.
- ``napari_inkdetect``: our own ``.safetensors`` files written by :func:`save_checkpoint`,
  whose metadata (:class:`CheckpointInfo`) says how to use the weights again.

Architecture and width are inferred from the tensor shapes when not given (or read from our
metadata). Torch files are only ever opened with ``torch.load(weights_only=True)``, so a pickle
that would run code is refused, never executed. Every problem raises
:class:`~napari_inkdetect.errors.CheckpointError` with a one-line message naming the file.
"""

from __future__ import annotations

import datetime
import json
import math
import pickle
import re
import struct
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from napari_inkdetect.errors import CheckpointError, ConfigError
from napari_inkdetect.io.atomic import atomic_path
from napari_inkdetect.models.detector import InkDetector, unwrap_model
from napari_inkdetect.models.registry import canonical_name
from napari_inkdetect.models.resnet3d import ENCODER_SPECS

__all__ = [
    "DEFAULT_NORMALISATION",
    "FORMAT_VERSION",
    "KIND_INK_MODEL",
    "KIND_NAPARI_INKDETECT",
    "KIND_PRETRAINED_ENCODER",
    "METADATA_KEY",
    "CheckpointInfo",
    "LoadReport",
    "infer_architecture",
    "load_checkpoint",
    "read_checkpoint_info",
    "read_checkpoint_metadata",
    "recommended_threshold",
    "save_checkpoint",
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

# Containers seen in the wild, in the order they are tried.
_CONTAINER_KEYS = ("model", "state_dict", "model_state_dict", "module", "net")
# Prefixes added by nn.DataParallel / DistributedDataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_STAGE_KEY = re.compile(r"^encoder\.layer([1-4])\.(\d+)\.")


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


@dataclass
class LoadReport:
    """What :func:`load_checkpoint` did with a file: loaded, initialised, ignored, adapted."""

    path: Path
    kind: str
    container: str | None
    arch: str
    width: float
    loaded: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    stripped_prefix: str | None = None
    info: CheckpointInfo | None = None

    @property
    def complete(self) -> bool:
        """Whether every tensor the model uses came from the file."""
        return not [k for k in self.initialised if not _optional_key(k)]

    def summary(self) -> str:
        """A few human-readable lines for logs and the CLI."""
        container = f"['{self.container}']" if self.container else ""
        lines = [
            f"{self.path.name}{container}: {self.kind}, {self.arch} width {self.width}",
            f"  loaded {len(self.loaded)} tensors",
            f"  initialised {len(self.initialised)}: {_abbrev(self.initialised)}",
            f"  ignored {len(self.ignored)}: {_abbrev(self.ignored)}",
        ]
        if self.stripped_prefix:
            lines.append(f"  stripped key prefix {self.stripped_prefix!r}")
        lines += [f"  {note}" for note in self.adapted]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _abbrev(keys: list[str], n: int = 4) -> str:
    if not keys:
        return "-"
    groups = sorted({".".join(k.split(".")[:2]) + ".*" for k in keys})
    shown = ", ".join(groups[:n])
    return shown + (f", ... ({len(groups)} groups)" if len(groups) > n else "")


def _optional_key(key: str) -> bool:
    """Tensors that may be absent without changing predictions."""
    return key.endswith("num_batches_tracked") or key.startswith("encoder.fc.")


# --------------------------------------------------------------------------- reading files


def _is_safetensors(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < n <= path.stat().st_size - 8


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: is not a file")


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``, with the package's errors."""
    try:
        return torch.load(
            path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)
        )
    except pickle.UnpicklingError as exc:
        found = re.findall(r"GLOBAL (\S+)", str(exc))
        if not found:  # not a forbidden import: the pickle itself is broken
            raise CheckpointError(
                f"{path}: corrupt or not a checkpoint (unreadable pickle)"
            ) from None
        raise CheckpointError(
            f"{path}: refused: unpickling it needs code execution ({found[0]}), which could run "
            "arbitrary code; if you trust its source, re-save it as weights only "
            "(torch.save(state_dict) of plain tensors) and load that"
        ) from None
    except (
        RuntimeError, EOFError, KeyError, ValueError, OSError, SafetensorError, IndexError,
        TypeError, AttributeError,
    ) as exc:  # fmt: skip
        # torch >= 2.13 hands some files to safetensors itself, whose errors come through too;
        # a damaged pickle stream makes the unpickler itself fail in many ways
        reason = str(exc).split(". ")[0] or type(exc).__name__
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({reason})") from None


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        return load_file(str(path), device="cpu"), metadata
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({exc})") from None


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _extract_state_dict(path: Path, obj: Any) -> tuple[dict[str, torch.Tensor], str | None]:
    if _is_state_dict(obj):
        return dict(obj), None
    if isinstance(obj, Mapping):
        for key in _CONTAINER_KEYS:
            if key in obj and _is_state_dict(obj[key]):
                return dict(obj[key]), key
        found = ", ".join(map(str, list(obj)[:8]))
        raise CheckpointError(f"{path}: unrecognised layout: no state dict among keys {found}")
    raise CheckpointError(f"{path}: unrecognised layout: holds a {type(obj).__name__}")


def _strip_prefixes(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Remove wrapper prefixes (``module.``, ``_orig_mod.``) shared by every key."""
    stripped = ""
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                stripped += prefix
                changed = True
    return state, stripped


def _classify(path: Path, state: dict[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
    """The file kind, and its state dict with ``encoder.``/``decoder.`` key names."""
    if any(k.startswith("encoder.layer") for k in state):
        return KIND_INK_MODEL, state
    if "conv1.weight" in state and any(k.startswith("layer1.") for k in state):
        return KIND_PRETRAINED_ENCODER, {f"encoder.{k}": v for k, v in state.items()}
    sample = ", ".join(list(state)[:3])
    raise CheckpointError(
        f"{path}: unrecognised layout: expected 3D ResNet keys (conv1, layer1..4) or "
        f"encoder/decoder keys, found {sample}, ..."
    )


# --------------------------------------------------------------------------- architecture


def infer_architecture(state: Mapping[str, torch.Tensor]) -> tuple[str, float]:
    """``(arch, width)`` of an ``encoder.*`` state dict, from its block counts and shapes.

    Raises
    ------
    CheckpointError
        When no registry architecture has these stages and block type.
    """
    stages = [0, 0, 0, 0]
    for key in state:
        m = _STAGE_KEY.match(key)
        if m:
            stage = int(m.group(1)) - 1
            stages[stage] = max(stages[stage], int(m.group(2)) + 1)
    conv1 = state.get("encoder.conv1.weight")
    if conv1 is None or not all(stages):
        raise CheckpointError(f"encoder with stages {stages} and no complete stem")
    conv3 = state.get("encoder.layer1.0.conv3.weight")
    if conv1.dim() < 2 or (conv3 is not None and conv3.dim() < 2):
        raise CheckpointError(f"convolution weights of shape {tuple(conv1.shape)}")
    if conv3 is None:
        block = "basic"
    else:
        block = "resnext" if conv3.shape[0] == 2 * conv3.shape[1] else "bottleneck"
    width = conv1.shape[0] / 64
    for name, spec in ENCODER_SPECS.items():
        if spec.block_name == block and list(spec.stages) == stages:
            return name, width
    raise CheckpointError(f"no architecture has {block} blocks with stages {stages}")


def _resolve_arch(
    path: Path, state: dict[str, torch.Tensor], arch: str | None, width: float | None
) -> tuple[str, float]:
    try:
        if arch is not None and width is not None:
            return canonical_name(arch), width
        try:
            inferred_arch, inferred_width = infer_architecture(state)
        except CheckpointError as exc:
            if arch is None:
                raise CheckpointError(f"{path}: unrecognised layout: {exc}") from None
            inferred_arch, inferred_width = arch, 1.0
        width = width if width is not None else inferred_width
        return canonical_name(arch or inferred_arch), width
    except ConfigError as exc:  # an unknown architecture name in the file's metadata
        raise CheckpointError(f"{path}: {exc}") from None


def _match_state(
    path: Path,
    model: InkDetector,
    source: dict[str, torch.Tensor],
    report: LoadReport,
) -> dict[str, torch.Tensor]:
    """The tensors to load into ``model``, filling ``report``; refuses mismatching files."""
    target = model.state_dict()
    where = f"{model.arch} at width {model.width}"
    drop_fc = report.kind == KIND_PRETRAINED_ENCODER
    chosen: dict[str, torch.Tensor] = {}
    for key, want in target.items():
        tensor = source.get(key)
        if drop_fc and key.startswith("encoder.fc."):  # the Kinetics classifier
            report.ignored += [key] if tensor is not None else []
            tensor = None
        if tensor is None:
            report.initialised.append(key)
            continue
        if want.is_floating_point() and not tensor.is_floating_point():
            kind = str(tensor.dtype).removeprefix("torch.")
            raise CheckpointError(f"{path}: {key} holds {kind} values, not floating-point weights")
        if key == "encoder.conv1.weight" and tensor.shape[1] != want.shape[1] == 1:
            report.adapted.append(
                f"{key}: summed {tensor.shape[1]} input channels to 1 (RGB-pretrained stem)"
            )
            tensor = tensor.float().sum(dim=1, keepdim=True)
        if tensor.shape != want.shape:
            if key.startswith("encoder.fc."):  # unused classifier of another dataset
                report.initialised.append(key)
                report.ignored.append(key)
                continue
            raise CheckpointError(
                f"{path}: shape mismatch at {key}: {tuple(tensor.shape)} in the file, "
                f"{tuple(want.shape)} in {where}"
            )
        chosen[key] = tensor
        report.loaded.append(key)
    report.ignored += [k for k in source if k not in target]
    for key in report.ignored:
        if key.startswith(("encoder.layer", "decoder.")):
            raise CheckpointError(f"{path}: {key} is in the file but not in {where}")
    required = [k for k in report.initialised if not _optional_key(k)]
    if drop_fc:
        required = [k for k in required if not k.startswith("decoder.")]
    if required:
        raise CheckpointError(
            f"{path}: {required[0]} is missing from the file ({len(required)} tensors of "
            f"{where} missing)"
        )
    return chosen


def load_checkpoint(
    path: str | Path,
    arch: str | None = None,
    width: float | None = None,
    *,
    device: str | torch.device = "cpu",
    require_complete: bool = False,
) -> tuple[InkDetector, LoadReport]:
    """Build the model a checkpoint file describes and load its weights.

    Parameters
    ----------
    path
        A Kinetics-pretrained encoder, a trained ink model (``.pth``) or our ``.safetensors``.
    arch, width
        The architecture; inferred from the file (metadata or tensor shapes) when omitted.
    device
        Where to build the model (``"meta"`` checks a file without allocating the model).
    require_complete
        Refuse files that leave part of the model (e.g. the decoder) randomly initialised.

    Returns
    -------
    model, report
        The model in eval mode (``model.info`` set) and what was loaded, initialised, ignored.
    """
    path = Path(path)
    _check_exists(path)
    info = None
    if _is_safetensors(path):
        raw, metadata = _read_safetensors(path)
        container = None
        if METADATA_KEY in metadata:
            info = _info_from_metadata(path, metadata[METADATA_KEY])
            arch = arch or info.arch
            width = width if width is not None else info.width
    else:
        raw, container = _extract_state_dict(path, _torch_load(path))
    state, prefix = _strip_prefixes(raw)
    kind, state = _classify(path, state)
    if info is not None:
        kind = KIND_NAPARI_INKDETECT
    arch, width = _resolve_arch(path, state, arch, width)
    try:
        with torch.device(device):
            model = InkDetector(arch, width)
    except ConfigError as exc:  # e.g. a width out of range in the file's metadata
        raise CheckpointError(f"{path}: {exc}") from None
    report = LoadReport(path, kind, container, arch, width, stripped_prefix=prefix or None)
    chosen = _match_state(path, model, state, report)
    if require_complete and not report.complete:
        raise CheckpointError(
            f"{path}: holds only a pretrained encoder ({report.initialised[0]} and others "
            "would be random); use it to start a finetuning, not to predict"
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter.*")
        model.load_state_dict(chosen, strict=False)
    if info is None:
        info = CheckpointInfo(
            arch=arch, width=width, provenance={"source": path.name, "kind": kind}
        )
    report.info = model.info = info
    return model.eval(), report


# --------------------------------------------------------------------------- our own format


def _info_from_metadata(path: Path, text: str) -> CheckpointInfo:
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


def _header_metadata(path: Path) -> dict[str, str]:
    """The metadata of a safetensors header (no tensor is read)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt safetensors file ({exc})") from None


def read_checkpoint_metadata(path: str | Path) -> dict[str, Any]:
    """The :class:`CheckpointInfo` of one of our files, as a dict, without reading weights."""
    path = Path(path)
    _check_exists(path)
    if not _is_safetensors(path):
        raise CheckpointError(
            f"{path}: not a napari-inkdetect checkpoint (no safetensors header); "
            "use load_checkpoint for .pth files"
        )
    metadata = _header_metadata(path)
    if METADATA_KEY not in metadata:
        raise CheckpointError(f"{path}: safetensors file without {METADATA_KEY} metadata")
    return _info_from_metadata(path, metadata[METADATA_KEY]).to_dict()


def read_checkpoint_info(path: str | Path) -> CheckpointInfo | None:
    """The :class:`CheckpointInfo` of one of our files from its header alone (cheap: no
    weights, no model); ``None`` for any other checkpoint (``.pth`` files are never opened
    beyond their first bytes, so nothing is unpickled).

    Raises
    ------
    CheckpointError
        For a missing file, a corrupt safetensors header or unreadable metadata of ours.
    """
    path = Path(path)
    _check_exists(path)
    if not _is_safetensors(path):
        return None
    metadata = _header_metadata(path)
    if METADATA_KEY not in metadata:
        return None
    return _info_from_metadata(path, metadata[METADATA_KEY])


def recommended_threshold(info: CheckpointInfo | Mapping[str, Any] | None) -> float | None:
    """The ink threshold a checkpoint was calibrated at: the best-F0.5 threshold on its
    training run's held-out validation region (``provenance["metrics"]["best_threshold"]``).

    ``info`` is a :class:`CheckpointInfo` or its :meth:`~CheckpointInfo.to_dict` (e.g. a
    prediction's ``checkpoint_metadata``). ``None`` when the checkpoint was not validated
    (foreign files, runs without validation labels) or the value is not in ``(0, 1)``.
    """
    if isinstance(info, CheckpointInfo):
        provenance: Any = info.provenance
    elif isinstance(info, Mapping):
        provenance = info.get("provenance")
    else:
        return None
    metrics = provenance.get("metrics") if isinstance(provenance, Mapping) else None
    value = metrics.get("best_threshold") if isinstance(metrics, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) and 0.0 < value < 1.0 else None


def _software_version() -> str:
    try:
        from napari_inkdetect import __version__
    except ImportError:  # pragma: no cover
        return "unknown"
    return __version__


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    info: CheckpointInfo | None = None,
    **metadata: Any,
) -> Path:
    """Write ``model`` and its metadata atomically as a ``.safetensors`` file.

    Parameters
    ----------
    path
        Destination; a crash never leaves a partial file there.
    model
        An :class:`InkDetector` (also inside ``torch.compile``).
    info
        Base metadata; defaults to ``model.info`` (set when the model was loaded).
    **metadata
        :class:`CheckpointInfo` fields to set (``in_layers``, ``tile_size``, ``scale``,
        ``normalisation``, ``provenance``, ...); unknown keys are stored too.
    """
    module = unwrap_model(model)
    if not isinstance(module, InkDetector):
        raise ConfigError(f"can only save an InkDetector, not a {type(module).__name__}")
    base = info or module.info or CheckpointInfo(arch=module.arch)
    data = {**base.to_dict(), "arch": module.arch, "width": module.width}
    data["in_chans"] = module.in_chans
    data.update(metadata)
    data["format_version"] = FORMAT_VERSION
    final = CheckpointInfo.from_dict(data)
    final.provenance = dict(final.provenance)
    final.provenance.setdefault(
        "created", datetime.datetime.now(datetime.timezone.utc).isoformat()
    )
    final.provenance.setdefault("software", f"napari-inkdetect {_software_version()}")
    try:
        text = json.dumps(final.to_dict(), allow_nan=True)
    except TypeError as exc:
        raise ConfigError(f"checkpoint metadata must be plain data (JSON): {exc}") from None
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: text, "format": "pt"})
    return path

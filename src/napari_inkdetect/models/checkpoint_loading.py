"""Building a model for a checkpoint file and loading its tensors into it, with a report.

:func:`load_model` takes the model class as an argument, so that this module sits below
:mod:`~napari_inkdetect.models.detector`: ``InkDetector.from_checkpoint`` calls it with its own
class, and :func:`napari_inkdetect.models.checkpoints.load_checkpoint` with ``InkDetector``.
Architecture and width come from the caller, else from our metadata, else from the tensor
shapes. A file whose tensors do not fit the model is refused with a one-line
:class:`~napari_inkdetect.errors.CheckpointError` naming the file and the first culprit.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from napari_inkdetect.errors import CheckpointError, ConfigError
from napari_inkdetect.models.checkpoint_files import infer_architecture, read_contents
from napari_inkdetect.models.checkpoint_info import KIND_PRETRAINED_ENCODER, CheckpointInfo
from napari_inkdetect.models.resnet3d import canonical_name

__all__ = ["LoadReport", "load_model"]

ModelT = TypeVar("ModelT", bound=nn.Module)


@dataclass
class LoadReport:
    """What :func:`load_model` did with a file: loaded, initialised, ignored, adapted."""

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
    model: nn.Module,
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


def load_model(
    model_class: type[ModelT],
    path: str | Path,
    arch: str | None = None,
    width: float | None = None,
    *,
    device: str | torch.device = "cpu",
    require_complete: bool = False,
) -> tuple[ModelT, LoadReport]:
    """``model_class(arch, width)`` built on ``device`` with the file's tensors loaded.

    Parameters are those of :func:`napari_inkdetect.models.checkpoints.load_checkpoint`;
    ``model_class`` is an ``InkDetector`` (sub)class: its instances have ``arch``, ``width``,
    ``info`` and the ``encoder.*``/``decoder.*`` state-dict names.
    """
    path = Path(path)
    contents = read_contents(path)
    info = contents.info
    if info is not None:
        arch = arch or info.arch
        width = width if width is not None else info.width
    arch, width = _resolve_arch(path, contents.state, arch, width)
    try:
        with torch.device(device):
            model = model_class(arch, width)
    except ConfigError as exc:  # e.g. a width out of range in the file's metadata
        raise CheckpointError(f"{path}: {exc}") from None
    report = LoadReport(
        path,
        contents.kind,
        contents.container,
        arch,
        width,
        stripped_prefix=contents.stripped_prefix or None,
    )
    chosen = _match_state(path, model, contents.state, report)
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
            arch=arch, width=width, provenance={"source": path.name, "kind": contents.kind}
        )
    report.info = model.info = info
    return model.eval(), report

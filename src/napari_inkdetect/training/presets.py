"""Run sizes per device: what finishes in minutes on a CPU, on one GPU and on several.

A full-width resnet10 on 256 px tiles, 8 a batch, takes about two minutes for its first step
on two CPU cores; a 1/8-width one on 128 px tiles, 4 a batch, trains 1000 steps in about
three and a half minutes (600 steps reach held-out F0.5 0.88 on the synthetic benchmark,
1000 steps 0.92: ``benchmarks/bench_quality.py``). One table serves the command line, the
Finetune dock and the Python API, so the three pick the same numbers: :func:`pick_preset`
chooses the row from the device training runs on.

The learning rate is not in the table: it depends on where training starts (from scratch,
a Kinetics encoder or a trained ink model) and comes from
:func:`~napari_inkdetect.training.init_settings.default_optimisation`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported only to resolve a device: ``--help`` stays fast
    import torch

__all__ = ["PRESETS", "DevicePreset", "pick_preset", "preset_help"]


@dataclass(frozen=True)
class DevicePreset:
    """The sizes of a run on one kind of device (``batch_size`` is the global batch)."""

    name: str  # "cpu", "gpu" or "gpus"
    label: str  # how notes name it: "CPU", "GPU", "2-GPU"
    arch: str
    width: float
    tile: int
    batch_size: int
    steps: int
    preview_every: int  # the dock's "Preview every" (steps)
    preview_side: int  # the dock's "Preview size" (largest side of the previewed view, px)


#: One row per kind of device. ``gpus``: ``batch_size`` tiles per GPU (the global batch is
#: that times the number of processes).
PRESETS: dict[str, DevicePreset] = {
    "cpu": DevicePreset("cpu", "CPU", "resnet10", 0.125, 128, 4, 1000, 250, 384),
    "gpu": DevicePreset("gpu", "GPU", "resnet10", 1.0, 256, 8, 1000, 100, 2048),
    "gpus": DevicePreset("gpus", "multi-GPU", "resnet10", 1.0, 256, 8, 1000, 100, 2048),
}


def pick_preset(
    device: str | torch.device = "auto", processes: int = 1
) -> tuple[DevicePreset, str]:
    """The row for ``device`` (a name as ``--device`` takes it, resolved like
    :func:`~napari_inkdetect.devices.resolve_device`) with ``processes`` training processes,
    and why it was picked.

    CUDA and Apple MPS get the GPU row, several CUDA processes the multi-GPU row (its batch
    times the processes), the CPU the CPU row (its batch rounded up to split over several
    gloo processes). Raises ``ConfigError`` for a device that is not available here.
    """
    processes = max(1, int(processes))
    kind = _device_type(device, processes)
    if kind == "cpu":
        preset = PRESETS["cpu"]
        batch = math.ceil(preset.batch_size / processes) * processes
        why = "training on the CPU" + (f" in {processes} processes" if processes > 1 else "")
        return replace(preset, batch_size=batch), why
    if processes > 1:
        preset = PRESETS["gpus"]
        label = f"{processes}-GPU"
        batch = preset.batch_size * processes
        why = f"training on {processes} GPUs, {preset.batch_size} tiles each"
        return replace(preset, label=label, batch_size=batch), why
    return PRESETS["gpu"], f"training on {'Apple MPS' if kind == 'mps' else 'a GPU'}"


def _device_type(device: str | torch.device, processes: int) -> str:
    """``cpu``, ``cuda`` or ``mps``; several processes resolve as torchrun's ranks do."""
    if not isinstance(device, str):  # a torch.device
        return device.type
    import torch

    from napari_inkdetect.devices import resolve_device

    if processes == 1:
        return resolve_device(device).type
    name = (device or "auto").strip().lower()
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return "cpu"
    return "cuda"


def preset_help(field: str) -> str:
    """``"preset: cpu 4 / gpu 8 / gpus 8 per GPU"``: the table's values of ``field`` (a
    :class:`DevicePreset` attribute), for the command line's ``--help``."""
    cpu, gpu, gpus = (_text(getattr(PRESETS[n], field)) for n in ("cpu", "gpu", "gpus"))
    if cpu == gpu == gpus:
        return f"preset: {cpu} on every device"
    per_gpu = " per GPU" if field == "batch_size" else ""
    return f"preset: cpu {cpu} / gpu {gpu} / gpus {gpus}{per_gpu}"


def _text(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)

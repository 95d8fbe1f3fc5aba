"""Which device to run on: ``auto`` picks CUDA, then Apple MPS, then the CPU."""

from __future__ import annotations

import torch

from napari_inkdetect.errors import ConfigError


def available_devices() -> list[str]:
    """Devices usable here, best first (``cuda:0`` ..., ``mps``, ``cpu``)."""
    devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return [*devices, "cpu"]


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """Turn a user's device choice into a usable ``torch.device``, with a clear error if not."""
    if isinstance(name, torch.device):
        name = str(name)
    name = (name or "auto").strip().lower()
    available = available_devices()
    if name == "auto":
        return torch.device(available[0])
    if name == "cuda":
        name = "cuda:0"
    if name not in available:
        raise ConfigError(
            f"device {name!r} is not available here (available: {', '.join(available)})"
        )
    return torch.device(name)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a device running out of memory (CUDA's own error, or the
    RuntimeError other backends raise), which a smaller batch may avoid."""
    oom = getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(exc, oom) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc))

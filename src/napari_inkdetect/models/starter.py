"""The bundled crackle starter: a 1/8-width resnet10 pretrained on varied synthetic crackle.

It ships inside the package (1.3 MB, nothing is downloaded at run time) as a better
first point for a CPU finetuning than random weights: it already knows cracks at many
amplitudes, depths, textures, letter sizes and both depth orders. ``benchmarks/
pretrain_starter.py`` trains it reproducibly; ``benchmarks/bench_starter.py`` measures it
against a start from scratch. Its sha256 is checked before each use, so a damaged install
fails with one clear line instead of finetuning from garbage.

    from napari_inkdetect.models.starter import load_starter, starter_path

    model = load_starter()                      # verified, ready to predict
    TrainConfig(..., init=str(starter_path()))  # verified path, to finetune from
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import torch

from napari_inkdetect.errors import CheckpointError
from napari_inkdetect.models.checkpoints import read_checkpoint_metadata
from napari_inkdetect.models.detector import InkDetector

__all__ = [
    "STARTER_FILE",
    "STARTER_SHA256",
    "StarterModel",
    "load_starter",
    "starter_model",
    "starter_path",
    "verify_starter",
]

STARTER_FILE = "crackle_starter.safetensors"
#: sha256 of the shipped file, as ``benchmarks/pretrain_starter.py`` printed it.
STARTER_SHA256 = "452a01c164f59d0a422d60420b79f563e538b86081780873d324303779ce09a2"


def _bundled() -> Path:
    return Path(__file__).resolve().parent / STARTER_FILE


@lru_cache(maxsize=8)
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    """The file's digest; cached per (path, size, mtime) so the dock may ask often."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_starter(path: str | Path | None = None, expected: str = STARTER_SHA256) -> Path:
    """``path`` (default: the bundled file) once its sha256 is ``expected``.

    Raises :class:`~napari_inkdetect.errors.CheckpointError` with a one-line message when the
    file is missing or its content differs (damaged download, truncated copy, edited file).
    """
    path = Path(path) if path is not None else _bundled()
    try:
        stat = path.stat()
        actual = _sha256(path, stat.st_size, stat.st_mtime_ns)
    except OSError as exc:
        raise CheckpointError(
            f"{path}: the bundled crackle starter cannot be read ({exc.strerror or exc}); "
            "reinstall napari-inkdetect"
        ) from None
    if actual != expected:
        raise CheckpointError(
            f"{path}: checksum mismatch (sha256 {actual[:16]}..., expected "
            f"{expected[:16]}...): the crackle starter is damaged; reinstall napari-inkdetect"
        )
    return path


def starter_path() -> Path:
    """The bundled starter's file, verified: what a ``TrainConfig``'s ``init`` takes."""
    return verify_starter()


def load_starter(device: str | torch.device = "cpu") -> InkDetector:
    """The bundled starter as a ready-to-predict model (checksum verified first)."""
    return InkDetector.from_checkpoint(starter_path(), device=device)


class StarterModel(NamedTuple):
    """The starter's model and window, as its header records them."""

    arch: str
    width: float
    layers: int
    tile: int


@lru_cache(maxsize=1)
def starter_model() -> StarterModel:
    """What the bundled starter is (read from its verified header, no weights): the dock
    shows it and needs a volume of at least ``layers``."""
    meta = read_checkpoint_metadata(starter_path())
    return StarterModel(
        str(meta["arch"]), float(meta["width"]), int(meta["in_layers"]), int(meta["tile_size"])
    )

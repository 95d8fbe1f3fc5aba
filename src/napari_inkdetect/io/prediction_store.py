"""The prediction store: the one module that knows how a prediction zarr is laid out.

A prediction is a zarr group with

- ``prob``: ``(n_start, H, W)`` over the predicted region, uint8 = p x 255 or float16; index
  ``i`` is the window ``[start_layers[i], start_layers[i] + layers)``, centred on (and shown
  at) layer ``start_layers[i] + layers // 2`` (see :mod:`napari_inkdetect.windows`);
- ``prob_<f>`` (f = 2, 4, ...): overview levels, ``f`` x ``f`` block means, so a viewer never
  reads a whole full-resolution plane to zoom out;
- ``done``: one flag per output chunk, each its own uncompressed zarr chunk (resume);
- provenance attributes under :data:`ATTRS_KEY` on the group and on ``prob``.

Writers (the prediction engine, cluster workers) and readers (the napari reader, export,
evaluation) all go through here. No torch: reading a prediction must stay light.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from napari_inkdetect.errors import ConfigError
from napari_inkdetect.io.atomic import unwritable
from napari_inkdetect.io.blocks import block_mean

__all__ = [
    "ATTRS_KEY",
    "DONE",
    "LEVELS_ABOVE",
    "PROB",
    "calibrated_threshold",
    "create_store",
    "decode",
    "done_flags",
    "encode",
    "is_prediction",
    "open_overviews",
    "open_prediction",
    "open_store",
    "overview_factors",
    "prediction_threshold",
    "read_chunk",
    "remove_store",
    "reopen_store",
    "write_chunk",
]

ATTRS_KEY = "napari_inkdetect"
PROB, DONE = "prob", "done"
#: overview levels ``prob_<f>`` (f = 2, 4, ...) are written while the coarsest level's larger
#: side is above this, so a viewer never reads a whole full-resolution plane to zoom out
LEVELS_ABOVE = 2048
DTYPES = ("uint8", "float16")


# --------------------------------------------------------------------------- layout


def overview_factors(shape: tuple[int, int], chunk: int) -> list[int]:
    """Downsampling factors 2, 4, ... of the overview levels of an output of ``shape``
    (until the larger side is at most ``LEVELS_ABOVE``; each factor divides ``chunk``)."""
    factors, f = [], 2
    while max(shape) / (f // 2) > LEVELS_ABOVE and chunk % f == 0:
        factors.append(f)
        f *= 2
    return factors


def encode(prob: np.ndarray, dtype: str) -> np.ndarray:
    """Probabilities in ``[0, 1]`` as stored: uint8 = p x 255 (rounded), or float16."""
    if dtype == "uint8":
        return np.clip(np.rint(prob * 255.0), 0, 255).astype(np.uint8)
    return prob.astype(np.float16)


def decode(stored: np.ndarray) -> np.ndarray:
    """Stored probabilities (uint8 = p x 255, or float16; numpy or dask) as float32 in 0..1:
    the inverse of :func:`encode`, for readers that compute on them."""
    if stored.dtype == np.uint8:
        return stored.astype(np.float32) / np.float32(255.0)
    return stored.astype(np.float32)


def as_uint8(plane: np.ndarray) -> np.ndarray:
    """A stored plane as uint8 (p x 255), whatever its stored dtype."""
    return plane if plane.dtype == np.uint8 else encode(plane.astype(np.float32), "uint8")


# --------------------------------------------------------------------------- writing


def create_store(
    path: Path, shape: tuple[int, int, int], chunk: int, dtype: str, provenance: dict[str, Any]
) -> Any:
    """A new, empty prediction group (no chunk done); ``provenance`` must be JSON data."""
    import zarr

    n, h, w = shape
    root = zarr.open_group(str(path), mode="w")
    prob = root.create_array(
        PROB, shape=(n, h, w), chunks=(n, min(chunk, h), min(chunk, w)), dtype=dtype,
        fill_value=0,
    )  # fmt: skip
    grid = (math.ceil(h / chunk), math.ceil(w / chunk))
    root.create_array(
        DONE, shape=grid, chunks=(1, 1), dtype="uint8", fill_value=0, compressors=None
    )
    for f in overview_factors((h, w), chunk):
        root.create_array(
            f"{PROB}_{f}", shape=(n, -(-h // f), -(-w // f)), chunks=(n, chunk // f, chunk // f),
            dtype=dtype, fill_value=0,
        )  # fmt: skip
    prob.attrs[ATTRS_KEY] = provenance
    root.attrs[ATTRS_KEY] = provenance
    return root


def open_store(path: Path, mode: str = "r") -> tuple[Any, dict[str, Any]]:
    """A prediction group and its provenance, or a clear error for anything else."""
    import zarr

    try:
        root = zarr.open_group(str(path), mode=mode)
        return root, dict(root.attrs[ATTRS_KEY])
    except Exception:  # any failure here means "not one of our predictions"
        raise ConfigError(
            f"{path} exists and is not a napari-inkdetect prediction; choose another output"
        ) from None


def remove_store(path: Path) -> None:
    """Delete an earlier prediction (``overwrite``); refuses a folder that is not one."""
    open_store(path)
    shutil.rmtree(path)


def reopen_store(path: Path, fingerprint: dict[str, Any]) -> Any:
    """Reopen a prediction for a resume; refused when it was made with other settings."""
    root, prov = open_store(path, "r+")
    if not isinstance(prov.get("fingerprint"), dict):
        raise ConfigError(
            f"{path}: its provenance has no usable fingerprint (damaged?), so it cannot be "
            "resumed: set overwrite to replace it, or choose another output"
        )
    old = prov["fingerprint"]
    changed = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
    if changed:
        raise ConfigError(
            f"{path} holds a prediction made with different settings ({', '.join(changed)}); "
            "it cannot be resumed: set overwrite to replace it, or choose another output"
        )
    return root


def done_flags(root: Any) -> np.ndarray:
    """``(chunks_y, chunks_x)`` bool: which output chunks are on disk."""
    return np.asarray(root[DONE][...], bool)


def write_chunk(
    root: Any,
    out: Path,
    index: tuple[int, int],
    box: tuple[int, int, int, int],
    data: np.ndarray,
    chunk: int,
) -> None:
    """Write a chunk's pixels and its overview levels, then (only then) its done flag.

    ``chunk`` is the output's chunk side as :func:`create_store` was given it (the stored
    chunk shape is clipped to a narrow output, and the overview factors follow the side).
    Each level's part of a chunk is exactly one chunk of that level (the chunk side is a
    multiple of every factor), so concurrent writers never share a stored chunk.
    """
    if not (out / "zarr.json").is_file():  # zarr would recreate the folder chunk by chunk
        raise ConfigError(f"{out}: the prediction was removed during the run; stopping")
    y0, x0, y1, x1 = box
    prob = root[PROB]
    try:
        prob[:, y0:y1, x0:x1] = data
        for f in overview_factors(prob.shape[1:], chunk):
            level = root[f"{PROB}_{f}"]
            level[:, y0 // f : -(-y1 // f), x0 // f : -(-x1 // f)] = block_mean(data, f)
        root[DONE][index] = 1
    except OSError as exc:  # each stored chunk is written atomically; this one is not flagged
        error = unwritable(out, exc, f"cannot write chunk {index}")
        raise ConfigError(f"{error}; the finished chunks are kept: run again to resume") from None


def read_chunk(root: Any, box: tuple[int, int, int, int]) -> np.ndarray:
    """The stored pixels ``(n_start, h, w)`` of a box in region coordinates."""
    y0, x0, y1, x1 = box
    return np.asarray(root[PROB][:, y0:y1, x0:x1])


# --------------------------------------------------------------------------- reading


def is_prediction(path: str | Path) -> bool:
    """Whether ``path`` is a zarr written by our predictor (its provenance names us); cheap:
    reads the group's metadata file only, so a reader can ask about any dropped folder."""
    meta = Path(path) / "zarr.json"
    if not meta.is_file():
        return False
    try:
        return ATTRS_KEY in json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError, AttributeError):
        return False


def open_prediction(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """The ``prob`` zarr array of a prediction and its provenance (clear errors for a missing
    path or a folder that is not one of ours)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such prediction")
    try:
        root, prov = open_store(path)
    except ConfigError:
        raise ConfigError(
            f"{path}: not a napari-inkdetect prediction (expected the zarr that predict writes)"
        ) from None
    return _checked(path, root, prov), prov


def open_overviews(path: str | Path) -> list[Any]:
    """``prob`` then its overview levels (2x, 4x, ... smaller), as zarr arrays."""
    prob, prov = open_prediction(path)
    root, _ = open_store(Path(path))
    return [prob] + [root[f"{PROB}_{f}"] for f in prov.get("overview_factors", [])]


def _checked(path: Path, root: Any, prov: dict[str, Any]) -> Any:
    """The ``prob`` array, once the provenance that readers rely on is known to describe it
    (a damaged one is refused here, in one line, instead of failing later in a reader)."""
    try:
        prob = root[PROB]
        n, h, w = (int(s) for s in prob.shape)
    except Exception:  # missing, a group, or not 3-D
        raise ConfigError(f"{path}: damaged prediction: no 3-D {PROB} array") from None
    problem = _provenance_problem(prov, (n, h, w), lambda name: name in root)
    if problem:
        raise ConfigError(f"{path}: damaged prediction provenance ({problem}); predict again")
    return prob


def _provenance_problem(prov: dict[str, Any], shape: tuple[int, int, int], has: Any) -> str | None:
    def ints(v: Any, n: int | None = None, least: int = 0) -> bool:
        return (
            isinstance(v, list)
            and (n is None or len(v) == n)
            and all(isinstance(i, int) and not isinstance(i, bool) and i >= least for i in v)
        )

    n, h, w = shape
    region, factors = prov.get("region"), prov.get("overview_factors", [])
    fingerprint, source = prov.get("fingerprint", {}), prov.get("source_layers")
    checks = {
        "start_layers": ints(prov.get("start_layers"), n),
        "region": ints(region, 4) and region[2] - region[0] == h and region[3] - region[1] == w,
        "window_length": ints([prov.get("window_length")], least=1),
        "source_layers": source is None or ints([source], least=1),
        "overview_factors": ints(factors, least=2) and all(has(f"{PROB}_{f}") for f in factors),
        "segment": isinstance(prov.get("segment"), str),
        "segment_id": isinstance(prov.get("segment_id"), str),
        "config": isinstance(prov.get("config", {}), dict),
        "fingerprint": isinstance(fingerprint, dict)
        and (fingerprint.get("segment_shape") is None or ints(fingerprint["segment_shape"], 3)),
    }
    bad = next((key for key, ok in checks.items() if not ok), None)
    return None if bad is None else f"{bad} = {prov.get(bad)!r}"[:100]


def calibrated_threshold(metadata: Mapping[str, Any] | None) -> float | None:
    """The best-F0.5 threshold recorded in checkpoint metadata (``provenance.metrics``), or
    None when the checkpoint was not validated or the value is not in ``(0, 1)``."""
    provenance = metadata.get("provenance") if isinstance(metadata, Mapping) else None
    metrics = provenance.get("metrics") if isinstance(provenance, Mapping) else None
    value = metrics.get("best_threshold") if isinstance(metrics, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) and 0.0 < value < 1.0 else None


def prediction_threshold(provenance: dict[str, Any]) -> float | None:
    """The calibrated ink threshold of a prediction (its checkpoint's best-F0.5 threshold on
    the training run's validation region), from its provenance; None when there is none.

    Outputs written before ``threshold`` was recorded still answer from the checkpoint
    metadata they carry.
    """
    if "threshold" not in provenance:
        return calibrated_threshold(provenance.get("checkpoint_metadata"))
    value = provenance["threshold"]
    usable = isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1
    return float(value) if usable else None

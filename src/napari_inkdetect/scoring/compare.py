"""Compare two predictions of the same segment: where they differ, how each scores, and how
each was made.

A researcher trying a new checkpoint or setting (TTA, stride, ...) wants the two runs side by
side on the pixels both cover: a lazy difference map to look at, both F0.5 on the same labelled
pixels (scores on different crops are not comparable), and the provenance rows that differ.
numpy and dask only: no torch, no Qt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_inkdetect.errors import ConfigError, LabelsError
from napari_inkdetect.io.labels import check_shape, read_labels, read_mask
from napari_inkdetect.io.prediction_store import decode, open_prediction, prediction_threshold
from napari_inkdetect.scoring.evaluation import CALIBRATED, DEFAULT, DEFAULT_THRESHOLD, GIVEN
from napari_inkdetect.scoring.metrics import score

__all__ = [
    "RunDifference",
    "compare_predictions",
    "difference",
    "overlap",
    "provenance_table",
]

Box = tuple[int, int, int, int]  # (y0, x0, y1, x1) in segment pixels, as provenance "region"

#: provenance keys shown first, in this order (then the flattened ``config.*`` keys)
TABLE_KEYS = (
    "checkpoint",
    "checkpoint_sha256",
    "checkpoint_metadata.arch",
    "checkpoint_metadata.width",
    "segment_id",
    "segment",
    "region",
    "start_layers",
    "window_length",
    "threshold",
    "tile",
    "stride",
    "scale",
    "depth_direction",
    "tta",
    "dtype",
    "software_version",
    "created",
)
#: config keys that say how a run was carried out, not what it computed: left out of the table
NOT_SHOWN = frozenset({"overwrite", "in_child", "chunk_events", "prefetch"})
WIDTH = 48  # longest value shown in the table; longer ones keep their end (a path's file name)


@dataclass(frozen=True)
class RunDifference:
    """``data`` = p_a - p_b in [-1, 1], ``(len(start_layers), h, w)`` float32 (lazy), over
    ``box`` (segment pixels; place it at ``box[:2]``) and the start layers both predicted."""

    data: Any  # dask.array.Array
    box: Box
    start_layers: list[int]
    window_length: int
    segment_id: str
    a: Any  # p_a on the same box and start layers (dask, float32 in 0..1)
    b: Any

    @property
    def translate(self) -> tuple[int, int]:
        return self.box[0], self.box[1]


def overlap(prov_a: dict[str, Any], prov_b: dict[str, Any]) -> Box | None:
    """The region both predictions cover, in segment pixels; None when they are disjoint."""
    ay0, ax0, ay1, ax1 = (int(v) for v in prov_a["region"])
    by0, bx0, by1, bx1 = (int(v) for v in prov_b["region"])
    box = (max(ay0, by0), max(ax0, bx0), min(ay1, by1), min(ax1, bx1))
    return box if box[0] < box[2] and box[1] < box[3] else None


def difference(path_a: str | Path, path_b: str | Path) -> RunDifference:
    """``p_a - p_b`` on the pixels and start layers both predictions have, lazily (nothing is
    read until computed), with where it lies; a one-line ConfigError when the two cannot be
    compared (other segment, window length, no shared pixels or start layer)."""
    prob_a, prov_a = open_prediction(path_a)
    prob_b, prov_b = open_prediction(path_b)
    names = f"{Path(path_a).name} and {Path(path_b).name}"
    if prov_a["segment_id"] != prov_b["segment_id"]:
        raise ConfigError(
            f"{names} are of different segments ({prov_a['segment_id']!r} and "
            f"{prov_b['segment_id']!r}): nothing to compare"
        )
    la, lb = int(prov_a["window_length"]), int(prov_b["window_length"])
    if la != lb:
        raise ConfigError(
            f"{names} use different window lengths ({la} and {lb} layers): the same start "
            "layer is not the same window"
        )
    box = overlap(prov_a, prov_b)
    if box is None:
        raise ConfigError(
            f"{names} do not overlap (regions {_region(prov_a)} and {_region(prov_b)})"
        )
    starts_a, starts_b = list(prov_a["start_layers"]), list(prov_b["start_layers"])
    common = [s for s in starts_a if s in starts_b]
    if not common:
        raise ConfigError(
            f"{names} share no start layer (start layers {_short(starts_a)} and "
            f"{_short(starts_b)})"
        )
    a = _planes(prob_a, prov_a, box, [starts_a.index(s) for s in common])
    b = _planes(prob_b, prov_b, box, [starts_b.index(s) for s in common])
    return RunDifference(
        data=a - b,
        box=box,
        start_layers=common,
        window_length=la,
        segment_id=str(prov_a["segment_id"]),
        a=a,
        b=b,
    )


def provenance_table(
    prov_a: dict[str, Any], prov_b: dict[str, Any]
) -> list[tuple[str, str, str, bool]]:
    """``(key, value A, value B, differs)`` rows of what says how each run was made, values
    shortened for a table ("-" where a run does not record the key); differing rows first."""
    flat_a, flat_b = _flatten_for_table(prov_a), _flatten_for_table(prov_b)
    keys = [k for k in TABLE_KEYS if k in flat_a or k in flat_b]
    config = sorted((set(flat_a) | set(flat_b)) - set(TABLE_KEYS))
    rows = []
    for key in keys + config:
        va, vb = flat_a.get(key, _MISSING), flat_b.get(key, _MISSING)
        rows.append((key, _show(key, va), _show(key, vb), va != vb))
    return sorted(rows, key=lambda row: not row[3])  # stable: the order above within each


def compare_predictions(
    path_a: str | Path,
    path_b: str | Path,
    truth: Path | None = None,
    region_mask: Path | None = None,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Everything :command:`napari-inkdetect compare` prints, as plain (JSON) data.

    ``threshold`` (default: each prediction's calibrated one, else 0.5) decides ink for both
    the decision-difference summary and the F0.5; the scores are on the overlap only, with the
    same labels for both (``region_mask`` restricts the labels and the summary).
    """
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold {threshold}: must lie in 0..1 (a probability)")
    _, prov_a = open_prediction(path_a)
    _, prov_b = open_prediction(path_b)
    diff = difference(path_a, path_b)
    thresholds = {"a": _threshold(prov_a, threshold), "b": _threshold(prov_b, threshold)}
    ta, tb = thresholds["a"]["threshold"], thresholds["b"]["threshold"]
    y0, x0, y1, x1 = diff.box
    mask = None
    if region_mask is not None:
        mask = read_mask(region_mask)[y0:y1, x0:x1]
        check_shape(mask, (y1 - y0, x1 - x0), region_mask)
    result: dict[str, Any] = {
        "a": str(path_a),
        "b": str(path_b),
        "overlap": list(diff.box),
        "start_layers": diff.start_layers,
        "window_length": diff.window_length,
        "thresholds": thresholds,
        "provenance": [
            {"key": k, "a": va, "b": vb, "differs": d}
            for k, va, vb, d in provenance_table(prov_a, prov_b)
        ],
        "difference": _summary(diff, ta, tb, mask),
        "scores": None,
    }
    if truth is not None:
        labels = _labels(Path(truth), region_mask, diff.box)
        result["scores"] = [
            {
                "start_layer": s,
                "a": score(np.asarray(diff.a[i]), labels, ta).to_dict(),
                "b": score(np.asarray(diff.b[i]), labels, tb).to_dict(),
            }
            for i, s in enumerate(diff.start_layers)
        ]
    return result


# --------------------------------------------------------------------------- helpers


def _planes(prob: Any, prov: dict[str, Any], box: Box, index: list[int]) -> Any:
    """The stored planes ``index`` over ``box`` (segment pixels) as lazy float32 in 0..1."""
    import dask.array as da

    y0, x0, y1, x1 = box
    ry, rx = int(prov["region"][0]), int(prov["region"][1])
    planes = da.from_zarr(prob)[:, y0 - ry : y1 - ry, x0 - rx : x1 - rx]
    if index != list(range(prob.shape[0])):
        planes = planes[index]
    return decode(planes)


def _threshold(prov: dict[str, Any], given: float | None) -> dict[str, Any]:
    """The ink threshold of one prediction and where it came from (as evaluate does)."""
    if given is not None:
        return {"threshold": float(given), "source": GIVEN}
    calibrated = prediction_threshold(prov)
    if calibrated is not None:
        return {"threshold": calibrated, "source": CALIBRATED}
    return {"threshold": DEFAULT_THRESHOLD, "source": DEFAULT}


def _summary(diff: RunDifference, ta: float, tb: float, mask: np.ndarray | None) -> dict:
    """Mean |A - B| and the fraction of pixels whose ink decision differs, per start layer
    and over all (computed chunk by chunk: a large overlap never sits whole in memory)."""
    import dask
    import dask.array as da

    decision = (diff.a >= ta) != (diff.b >= tb)
    absdiff = da.abs(diff.data)
    if mask is not None:
        weight = da.from_array(mask.astype(np.float32), chunks=diff.data.chunksize[1:])
        n = float(mask.sum())
        absdiff, decision = absdiff * weight, decision * weight
    else:
        n = float(diff.data.shape[1] * diff.data.shape[2])
    sums, flips = dask.compute(absdiff.sum(axis=(1, 2)), decision.sum(axis=(1, 2)))
    per = [
        {
            "start_layer": s,
            "mean_abs_diff": float(sums[i]) / n if n else 0.0,
            "decision_differs": float(flips[i]) / n if n else 0.0,
        }
        for i, s in enumerate(diff.start_layers)
    ]
    return {
        "pixels": int(n),
        "mean_abs_diff": float(np.mean([r["mean_abs_diff"] for r in per])),
        "decision_differs": float(np.mean([r["decision_differs"] for r in per])),
        "per_start_layer": per,
    }


def _labels(truth: Path, region_mask: Path | None, box: Box) -> np.ndarray:
    """The labels (segment coordinates) cropped to ``box``, outside the mask unlabelled."""
    mask = read_mask(region_mask) if region_mask is not None else None
    labels = read_labels(truth, mask=mask)
    if mask is not None:
        check_shape(mask, labels.shape, region_mask)
        labels = np.where(mask, labels, 0).astype(np.uint8)
    y0, x0, y1, x1 = box
    labels = labels[y0:y1, x0:x1]
    check_shape(labels, (y1 - y0, x1 - x0), truth)
    if not (labels == 1).any() or not (labels == 2).any():
        raise LabelsError(
            f"{truth}: needs both ink (1) and not-ink (2) pixels where the predictions overlap "
            f"(y {y0}..{y1}, x {x0}..{x1})"
        )
    return labels


_MISSING = object()


def _flatten_for_table(prov: dict[str, Any]) -> dict[str, Any]:
    flat = {k: prov[k] for k in TABLE_KEYS if k in prov}
    meta = prov.get("checkpoint_metadata")
    if isinstance(meta, dict):
        for k in ("arch", "width"):
            if k in meta:
                flat[f"checkpoint_metadata.{k}"] = meta[k]
    config = prov.get("config")
    if isinstance(config, dict):
        flat.update(_flatten(config, "config"))
    return flat


def _flatten(data: dict[str, Any], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        if k in NOT_SHOWN:
            continue
        key = f"{prefix}.{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def _show(key: str, value: Any) -> str:
    if value is _MISSING:
        return "-"
    if value is None:
        return "none"
    if key.endswith("sha256") and isinstance(value, str):
        return value[:12]
    if isinstance(value, list | tuple):
        text = ",".join(str(v) for v in value) if len(value) <= 8 else _short(list(value))
    elif isinstance(value, dict):
        text = json.dumps(value, separators=(",", ":"), sort_keys=True)
    elif isinstance(value, float):
        text = f"{value:.4g}"
    else:
        text = str(value)
    return text if len(text) <= WIDTH else "..." + text[-(WIDTH - 3) :]


def _short(values: list) -> str:
    """``[10, 12, 14, 16]`` as ``10,12,14,16``; a long run as ``10..40 (16 values)``."""
    if len(values) <= 8:
        return ",".join(str(v) for v in values)
    return f"{values[0]}..{values[-1]} ({len(values)} values)"


def _region(prov: dict[str, Any]) -> str:
    y0, x0, y1, x1 = prov["region"]
    return f"y {y0}..{y1} x {x0}..{x1}"

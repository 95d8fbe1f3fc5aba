"""Comparing two predictions: the difference on their overlap, both scores on the same labelled
pixels, provenance side by side, and one-line errors when the two cannot be compared."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pytest
from PIL import Image

from napari_inkdetect.cli import main
from napari_inkdetect.errors import ConfigError
from napari_inkdetect.io.prediction_store import create_store, encode, write_chunk
from napari_inkdetect.scoring.compare import (
    compare_predictions,
    difference,
    overlap,
    provenance_table,
)
from napari_inkdetect.scoring.evaluation import evaluate_prediction

SEGMENT = (64, 96)  # (Y, X) of the segment the labels cover


def write_prediction(
    path: Path,
    prob: np.ndarray,
    region: tuple[int, int, int, int],
    starts: list[int],
    dtype: str = "uint8",
    **provenance: Any,
) -> Path:
    """A real prediction zarr holding exactly ``prob`` (n_start, h, w) in 0..1."""
    n, h, w = prob.shape
    assert (region[2] - region[0], region[3] - region[1]) == (h, w)
    prov = {
        "start_layers": starts,
        "window_length": 8,
        "region": list(region),
        "segment": "/data/seg",
        "segment_id": "seg",
        "checkpoint": "/runs/a/best.safetensors",
        "fingerprint": {},
        "config": {"tta_flips": False, "stride": 32, "batch_size": 8, "in_child": False},
        "dtype": dtype,
        **provenance,
    }
    chunk = max(h, w)
    root = create_store(path, (n, h, w), chunk, dtype, prov)
    write_chunk(root, path, (0, 0), (0, 0, h, w), encode(prob, dtype), chunk)
    return path


def decoded(prob: np.ndarray, dtype: str) -> np.ndarray:
    """What a reader gets back from a stored ``prob``."""
    stored = encode(prob, dtype)
    if dtype == "uint8":
        return stored.astype(np.float32) / np.float32(255.0)
    return stored.astype(np.float32)


@pytest.fixture
def labels(tmp_path) -> Path:
    rng = np.random.default_rng(1)
    path = tmp_path / "labels.png"
    Image.fromarray(rng.integers(0, 3, SEGMENT).astype(np.uint8)).save(path)
    return path


@pytest.fixture
def pair(tmp_path):
    """A (uint8) and B (float16) overlapping on y 10..40, x 20..60 and start layers 12, 14."""
    rng = np.random.default_rng(0)
    pa = rng.random((3, 40, 60))
    pb = rng.integers(0, 9, (3, 40, 60)) / 8.0  # exact in float16
    a = write_prediction(tmp_path / "a.zarr", pa, (0, 0, 40, 60), [10, 12, 14], threshold=0.37)
    b = write_prediction(
        tmp_path / "b.zarr", pb, (10, 20, 50, 80), [12, 14, 16], "float16",
        checkpoint="/runs/b/best.safetensors",
        config={"tta_flips": True, "stride": 32, "batch_size": 4, "in_child": True},
    )  # fmt: skip
    return a, b, decoded(pa, "uint8"), decoded(pb, "float16")


def test_difference_is_a_minus_b_on_the_overlap(pair):
    a, b, pa, pb = pair
    diff = difference(a, b)
    assert isinstance(diff.data, da.Array)  # lazy: read when shown or computed
    assert diff.box == (10, 20, 40, 60) and diff.translate == (10, 20)
    assert diff.start_layers == [12, 14] and diff.window_length == 8
    expected = pa[1:3, 10:40, 20:60] - pb[0:2, 0:30, 0:40]
    got = diff.data.compute()
    assert got.dtype == np.float32 and got.shape == (2, 30, 40)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert got.min() >= -1 and got.max() <= 1


def test_overlap_box():
    def prov(*region):
        return {"region": list(region)}

    assert overlap(prov(0, 0, 40, 60), prov(10, 20, 50, 80)) == (10, 20, 40, 60)
    assert overlap(prov(0, 0, 40, 60), prov(5, 5, 10, 10)) == (5, 5, 10, 10)  # inside
    assert overlap(prov(0, 0, 40, 60), prov(40, 0, 64, 60)) is None  # touching edges only
    assert overlap(prov(0, 0, 40, 60), prov(0, 70, 40, 90)) is None


@pytest.mark.parametrize(
    ("b_kwargs", "message"),
    [
        (
            {"region": (0, 60, 40, 96)},
            "do not overlap (regions y 0..40 x 0..36 and y 0..40 x 60..96)",
        ),
        ({"window_length": 12}, "different window lengths (8 and 12 layers)"),
        ({"segment_id": "other"}, "different segments ('seg' and 'other')"),
        ({"starts": [11, 13]}, "share no start layer (start layers 10,12 and 11,13)"),
    ],
)
def test_runs_that_cannot_be_compared(tmp_path, b_kwargs, message):
    prob, b_kwargs = np.full((2, 40, 36), 0.5), dict(b_kwargs)
    a = write_prediction(tmp_path / "a.zarr", prob, (0, 0, 40, 36), [10, 12])
    region = b_kwargs.pop("region", (0, 0, 40, 36))
    starts = b_kwargs.pop("starts", [10, 12])
    b = write_prediction(tmp_path / "b.zarr", prob, region, starts, **b_kwargs)
    with pytest.raises(ConfigError) as info:
        difference(a, b)
    text = str(info.value)
    assert message in text and "\n" not in text and "a.zarr and b.zarr" in text


def test_provenance_table_marks_what_differs():
    base = {
        "checkpoint": "/runs/a/best.safetensors",
        "checkpoint_sha256": "ab" * 32,
        "segment_id": "seg",
        "region": [0, 0, 40, 60],
        "start_layers": [10, 12],
        "window_length": 8,
        "created": "2026-01-01T00:00:00+00:00",
        "config": {"tta_flips": False, "stride": 32, "batch_size": 8, "overwrite": True},
    }
    other = {
        **base,
        "checkpoint": "/runs/b/" + "x" * 60 + "/best.safetensors",
        "threshold": 0.37,
        "config": {"tta_flips": True, "stride": 32, "batch_size": 8},
    }
    rows = provenance_table(base, other)
    by_key = {key: (va, vb, d) for key, va, vb, d in rows}
    differing = [key for key, *_, d in rows if d]
    assert set(differing) == {"checkpoint", "threshold", "config.tta_flips"}
    assert [d for *_, d in rows] == sorted((d for *_, d in rows), reverse=True)  # first
    assert by_key["threshold"] == ("-", "0.37", True)  # A records none
    assert by_key["config.tta_flips"] == ("False", "True", True)
    assert by_key["region"] == ("0,0,40,60", "0,0,40,60", False)
    assert by_key["checkpoint_sha256"][0] == "ab" * 6  # shortened
    long = by_key["checkpoint"][1]
    assert len(long) <= 48 and long.endswith("/best.safetensors")  # keeps the file name
    assert "config.overwrite" not in by_key  # how it ran, not what it computed
    assert {"config.stride", "config.batch_size", "segment_id", "created"} <= set(by_key)


def test_scores_match_evaluate_on_the_overlap(pair, labels, tmp_path):
    a, b, _, _ = pair
    result = compare_predictions(a, b, truth=labels)
    assert result["overlap"] == [10, 20, 40, 60] and result["start_layers"] == [12, 14]
    assert result["thresholds"]["a"] == {"threshold": 0.37, "source": "checkpoint validation"}
    assert result["thresholds"]["b"] == {"threshold": 0.5, "source": "default"}
    # the same crop scored by evaluate: labels masked to the overlap box
    box = np.zeros(SEGMENT, np.uint8)
    box[10:40, 20:60] = 255
    Image.fromarray(box).save(tmp_path / "box.png")
    for side, path in (("a", a), ("b", b)):
        rows = {
            r["start_layer"]: r for r in evaluate_prediction(path, labels, tmp_path / "box.png")
        }
        for row in result["scores"]:
            expected = {k: v for k, v in rows[row["start_layer"]].items() if k in row[side]}
            assert row[side] == expected
    assert result["scores"][0]["a"] != result["scores"][0]["b"]
    json.dumps(result)  # plain data


def test_difference_summary_counts_decisions(tmp_path):
    pa = np.full((1, 10, 20), 0.6)
    pb = np.full((1, 10, 20), 0.25)
    pb[:, :, :5] = 0.75  # a quarter of the pixels: both ink
    a = write_prediction(tmp_path / "a.zarr", pa, (0, 0, 10, 20), [10], "float16")
    b = write_prediction(tmp_path / "b.zarr", pb, (0, 0, 10, 20), [10], "float16")
    summary = compare_predictions(a, b)["difference"]
    assert summary["pixels"] == 200 and summary["decision_differs"] == pytest.approx(0.75)
    expected = abs(np.float16(0.6) - np.float16(0.25)) * 0.75 + abs(0.15) * 0.25
    assert summary["mean_abs_diff"] == pytest.approx(float(expected), abs=1e-3)
    # a threshold above both: no decision differs
    assert compare_predictions(a, b, threshold=0.8)["difference"]["decision_differs"] == 0.0


def test_cli_compare_prints_both_scores(pair, labels, capsys):
    a, b, _, _ = pair
    assert main(["compare", str(a), str(b), "--truth", str(labels)]) == 0
    out = capsys.readouterr().out
    result = compare_predictions(a, b, truth=labels)
    assert "overlap y 10..40, x 20..60 (30 x 40 px), start layers 12,14 (window 8)" in out
    assert "* config.tta_flips" in out and "* checkpoint " in out
    assert "threshold A 0.37 (checkpoint validation), B 0.50 (default)" in out
    for row in result["scores"]:
        line = next(s for s in out.splitlines() if s.split()[:1] == [str(row["start_layer"])])
        values = [float(v) for v in line.split()[1:5]]
        assert values == pytest.approx(
            [row["a"]["f05"], row["b"]["f05"], row["a"]["best_f05"], row["b"]["best_f05"]],
            abs=5e-4,
        )
    assert main(["compare", str(a), str(b), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["scores"] is None and data["overlap"] == [10, 20, 40, 60]


def test_cli_compare_bad_input_is_one_line(pair, tmp_path, capsys):
    a, _, _, _ = pair
    assert main(["compare", str(a), str(tmp_path / "missing.zarr")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("napari-inkdetect: error: ") and err.count("\n") == 1
    assert "missing.zarr: no such prediction" in err
    far = write_prediction(tmp_path / "far.zarr", np.zeros((1, 4, 4)), (60, 90, 64, 94), [10])
    assert main(["compare", str(a), str(far)]) == 1
    err = capsys.readouterr().err
    assert "do not overlap" in err and err.count("\n") == 1


def test_region_mask_restricts_scores_and_summary(pair, labels, tmp_path):
    a, b, pa, pb = pair
    mask = np.zeros(SEGMENT, np.uint8)
    mask[10:40, 20:40] = 255  # the left half of the overlap
    Image.fromarray(mask).save(tmp_path / "half.png")
    result = compare_predictions(a, b, truth=labels, region_mask=tmp_path / "half.png")
    evaluated = evaluate_prediction(a, labels, tmp_path / "half.png", start_layer=12)[0]
    assert result["scores"][0]["a"] == {
        k: v for k, v in evaluated.items() if k not in ("threshold_source", "start_layer")
    }
    summary = result["difference"]
    assert summary["pixels"] == 30 * 20
    left = np.abs(pa[1, 10:40, 20:40] - pb[0, 0:30, 0:20]).mean()
    assert summary["per_start_layer"][0]["mean_abs_diff"] == pytest.approx(float(left), rel=1e-5)

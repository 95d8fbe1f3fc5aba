"""Fuzzed provenance of our prediction zarrs (what ``predict`` records about how it was made):
keys missing, values of the wrong type, lists of the wrong length, a region or start layers that
contradict the stored array. Opening (napari reader, evaluate, export, resume) either works or
gives one of our one-line errors naming the zarr, and writes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from records import FUZZ, check_input, scratch

from napari_inkdetect._napari_layers import prediction_layers
from napari_inkdetect.engine import drain
from napari_inkdetect.export import export
from napari_inkdetect.export.config import export_config
from napari_inkdetect.inference import PredictConfig, predict
from napari_inkdetect.io.prediction_store import (
    ATTRS_KEY,
    open_overviews,
    open_prediction,
    prediction_threshold,
)
from napari_inkdetect.scoring.evaluation import evaluate_prediction

KEYS = ["start_layers", "region", "window_length", "source_layers", "overview_factors",
        "segment", "segment_id", "fingerprint", "threshold", "checkpoint_metadata", "config",
        "dtype", "translate"]  # fmt: skip
JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.floats(allow_nan=True),
    st.text(max_size=6), st.lists(st.integers(-3, 200), max_size=6),
    st.lists(st.text(max_size=2), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(),
                                                               max_size=2),
)  # fmt: skip


def _provenance(store: Path) -> tuple[dict[str, Any], Path]:
    meta = store / "zarr.json"
    return json.loads(meta.read_text()), meta


def _use(store: Path, truth: Path, out: Path) -> None:
    _prob, prov = open_prediction(store)
    prediction_threshold(prov)
    open_overviews(store)
    prediction_layers(store)
    evaluate_prediction(store, truth)
    drain(export(export_config(store, out, images=("png",), gif=False)))


@pytest.mark.parametrize("action", ["removed", "replaced by junk", "one list item replaced"])
@settings(max_examples=14, **FUZZ)
@given(key=st.sampled_from(KEYS), value=JUNK, index=st.integers(0, 5))
def test_provenance_value(artefacts, action, key, value, index):
    with scratch() as root:
        store = root / "pred.zarr"
        shutil.copytree(artefacts["prediction"], store)
        meta, path = _provenance(store)
        prov = meta["attributes"][ATTRS_KEY]
        if action == "removed":
            prov.pop(key, None)
        elif action == "replaced by junk":
            prov[key] = value
        elif isinstance(prov.get(key), list) and prov[key]:
            prov[key][index % len(prov[key])] = value
        else:
            prov[key] = [value]
        path.write_text(json.dumps(meta))
        check_input(
            lambda: _use(
                store, artefacts["segment"] / "synthetic_validation_labels.png", root / "export"
            ),
            "pred.zarr",
            f"prediction provenance: {key} {action}",
            "open_prediction, napari reader, evaluate, export",
            [root],
            writes=True,
        )


@pytest.mark.parametrize(
    "case",
    [
        "start layers longer than the stored planes",
        "region larger than the stored array",
        "region with y1 < y0",
        "overview factor without its array",
        "provenance is a list",
        "provenance key missing",
        "prob array removed",
        "prob array of the wrong dimensionality",
    ],
)
def test_provenance_contradicting_the_array(artefacts, case, tmp_path):
    import zarr

    store = tmp_path / "pred.zarr"
    shutil.copytree(artefacts["prediction"], store)
    meta, path = _provenance(store)
    prov = meta["attributes"][ATTRS_KEY]
    if case.startswith("start layers"):
        prov["start_layers"] = [*prov["start_layers"], 9]
    elif case.startswith("region larger"):
        prov["region"] = [0, 0, 96, 128]
    elif case.startswith("region with"):
        prov["region"] = [64, 0, 0, 96]
    elif case.startswith("overview"):
        prov["overview_factors"] = [2]
    elif case == "provenance is a list":
        meta["attributes"][ATTRS_KEY] = [1, 2]
    elif case == "provenance key missing":
        del meta["attributes"][ATTRS_KEY]
    path.write_text(json.dumps(meta))
    if case == "prob array removed":
        shutil.rmtree(store / "prob")
    elif case.startswith("prob array of"):
        shutil.rmtree(store / "prob")
        zarr.open_group(store, mode="r+").create_array("prob", shape=(64, 96), dtype="uint8")
    truth = artefacts["segment"] / "synthetic_validation_labels.png"
    check_input(
        lambda: _use(store, truth, tmp_path / "export"),
        "pred.zarr",
        f"prediction: {case}",
        "open_prediction, napari reader, evaluate, export",
        [tmp_path],
        writes=True,
    )


@settings(max_examples=5, **FUZZ)
@given(
    fingerprint=st.one_of(JUNK, st.fixed_dictionaries({}, optional={"segment_shape": JUNK,
                                                                    "tile": JUNK}))
)  # fmt: skip
def test_resume_with_a_damaged_fingerprint(artefacts, fingerprint):
    """``predict`` into an existing output compares its recorded fingerprint to resume."""
    with scratch() as root:
        store = root / "pred.zarr"
        shutil.copytree(artefacts["prediction"], store)
        meta, path = _provenance(store)
        meta["attributes"][ATTRS_KEY]["fingerprint"] = fingerprint
        path.write_text(json.dumps(meta))
        prov = json.loads(json.dumps(meta["attributes"][ATTRS_KEY]["config"]))
        config = PredictConfig.from_dict({**prov, "out": str(store)})
        before = np.asarray(open_prediction(artefacts["prediction"])[0])
        check_input(
            lambda: list(predict(config)),
            "pred.zarr",
            "prediction resumed with a damaged fingerprint",
            "predict into an existing output (resume)",
            [root],
        )
        assert before.shape == open_prediction(artefacts["prediction"])[0].shape

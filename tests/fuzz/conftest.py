"""Real artefacts the fuzz tests damage: a small segment, a tiny checkpoint, a prediction zarr
and a training run folder, each made once per session."""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis.configuration import set_hypothesis_home_dir

from napari_inkdetect.engine import drain
from napari_inkdetect.inference import predict
from napari_inkdetect.training import train

# tifffile logs every damaged header it meets; the fuzz tests make thousands
logging.getLogger("tifffile").setLevel(logging.ERROR)
# hypothesis caches what it learns in .hypothesis/; keep the checkout clean (the examples are
# derandomised, so nothing there is needed to reproduce a run)
_HOME = tempfile.mkdtemp(prefix="inkdetect-hypothesis-")
set_hypothesis_home_dir(_HOME)
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)

SEGMENT_SHAPE = (16, 96, 128)


@pytest.fixture(scope="session")
def artefacts(tmp_path_factory) -> dict[str, Path]:
    import torch

    from napari_inkdetect.inference import PredictConfig
    from napari_inkdetect.models import InkDetector, save_checkpoint
    from napari_inkdetect.synthetic import make_segment, write_segment

    root = tmp_path_factory.mktemp("fuzz-artefacts")
    segment = write_segment(make_segment(shape=SEGMENT_SHAPE, seed=3), root)
    torch.manual_seed(0)
    model = InkDetector("resnet10", width=0.125)
    checkpoint = save_checkpoint(root / "tiny.safetensors", model, tile_size=64, in_layers=8)
    prediction = root / "pred.zarr"
    config = PredictConfig(
        segment=str(segment), checkpoint=str(checkpoint), out=str(prediction), tile=64,
        chunk=64, device="cpu", autocast="off", start_layers=(2, 4), region=(0, 0, 64, 96),
    )  # fmt: skip
    drain(predict(config))
    return {"root": root, "segment": segment, "checkpoint": checkpoint, "prediction": prediction}


@pytest.fixture(scope="session")
def run_folder(artefacts) -> tuple[Path, object]:
    """A finished 2-step run (``config.json``, ``metrics.jsonl``, ``last.*``) and its config."""
    from napari_inkdetect.training import TrainConfig

    segment = artefacts["segment"]
    config = TrainConfig(
        segment=str(segment), labels=str(segment / "synthetic_train_labels.png"),
        out=str(artefacts["root"] / "run"), arch="resnet10", width=0.125, start_layer=4,
        layers=8, tile=64, steps=2, batch_size=2, lr=1e-3, val_every=100, device="cpu",
        autocast="off", val_labels=str(segment / "synthetic_validation_labels.png"),
    )  # fmt: skip
    drain(train(config))
    return Path(config.out), config

"""The regression corpus: each file in ``corpus/`` is an input the fuzz tests found mishandled
(a traceback, a hang, a wrong result) before issue 14's fixes. Each is fed to the reader of its
folder and must be refused (or, for a damaged log, read) under the fuzz property."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image
from records import REFUSE, check_input, restored

from napari_inkdetect.engine import drain
from napari_inkdetect.io.labels import read_labels
from napari_inkdetect.io.prediction_store import ATTRS_KEY, open_prediction
from napari_inkdetect.io.segment import open_segment, read_segment_labels
from napari_inkdetect.models import load_checkpoint
from napari_inkdetect.models.checkpoints import read_checkpoint_info
from napari_inkdetect.training import train

CORPUS = Path(__file__).parent / "corpus"
SHAPE = (3, 24, 40)
SEG_ID = "20240101"


def corpus(family: str) -> list[Path]:
    return sorted((CORPUS / family).iterdir())


def _ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def _segment(root: Path) -> Path:
    folder = root / SEG_ID
    (folder / "layers").mkdir(parents=True)
    for z in range(SHAPE[0]):
        tifffile.imwrite(folder / "layers" / f"{z:02d}.tif", np.ones(SHAPE[1:], np.uint16))
    return folder


def _read(seg_path: Path) -> None:
    seg = open_segment(seg_path)
    nz, ny, nx = seg.shape
    seg.read_block((0, nz), (0, min(ny, 32)), (0, min(nx, 32)))
    seg.read_mask()
    if seg.inklabels_path is not None:
        read_segment_labels(seg, seg.inklabels_path)


@pytest.mark.parametrize("path", corpus("tiff"), ids=_ids(corpus("tiff")))
def test_tiff(path, tmp_path):
    folder = _segment(tmp_path)
    shutil.copy(path, folder / "layers" / "01.tif")
    check_input(lambda: _read(folder), "01.tif", f"corpus: TIFF layer {path.stem}",
                "open_segment + read_block", [tmp_path], REFUSE, may_read=False)  # fmt: skip


@pytest.mark.parametrize("path", corpus("labels"), ids=_ids(corpus("labels")))
def test_labels(path, tmp_path):
    folder = _segment(tmp_path)
    role = path.stem.split("-")[0]
    if role == "labels":  # given by path: evaluate --truth, train --labels
        target = tmp_path / path.name

        def use() -> None:
            read_labels(target)
            read_segment_labels(open_segment(folder), target)

    else:
        target = folder / f"{SEG_ID}_{role}{path.suffix}"
        good = np.zeros(SHAPE[1:], np.uint8)
        Image.fromarray(good).save(folder / f"{SEG_ID}_inklabels.png")

        def use() -> None:
            _read(folder)

    shutil.copy(path, target)
    check_input(use, target.name, f"corpus: {path.stem}", "open_segment, masks and labels",
                [tmp_path], REFUSE, may_read=False)  # fmt: skip


@pytest.mark.parametrize("path", corpus("checkpoints"), ids=_ids(corpus("checkpoints")))
def test_checkpoint(path, tmp_path):
    target = tmp_path / path.name
    shutil.copy(path, target)

    def use() -> None:
        read_checkpoint_info(target)
        load_checkpoint(target)

    check_input(use, target.name, f"corpus: checkpoint {path.stem}", "load_checkpoint",
                [tmp_path], REFUSE, may_read=False)  # fmt: skip


@pytest.mark.parametrize("path", corpus("runs"), ids=_ids(corpus("runs")))
def test_run_file(run_folder, path):
    source, config = run_folder
    name = {"config": "config.json", "metrics": "metrics.jsonl", "state": "last.state.pt"}
    target_name = name[path.stem.split("-")[0]]
    log = target_name == "metrics.jsonl"  # a damaged log does not stop a resume
    with restored(source) as run:
        shutil.copy(path, run / target_name)
        check_input(
            lambda: drain(train(config.with_(resume=True))).run_dir,
            [target_name, str(run)],
            f"corpus: run {path.stem}",
            "train --resume",
            [run],
            "resumed, junk log lines dropped" if log else REFUSE,
            may_read=log,
            writes=log,
        )
        if log:
            lines = (run / "metrics.jsonl").read_text().splitlines()
            assert all(isinstance(json.loads(line), dict) for line in lines)


@pytest.mark.parametrize("path", corpus("zarr"), ids=_ids(corpus("zarr")))
def test_zarr(path, tmp_path):
    store = tmp_path / "vol.zarr"
    patch = json.loads(path.read_text())
    if path.stem.startswith("shape"):
        zarr.open_array(store, mode="w", shape=SHAPE, chunks=(1, 16, 16), dtype="uint16")
        meta = json.loads((store / "zarr.json").read_text())
        (store / "zarr.json").write_text(json.dumps({**meta, **patch}))
    else:
        group = zarr.open_group(store, mode="w")
        group.create_array("0", shape=SHAPE, chunks=(1, 16, 16), dtype="uint16")
        group.attrs.put(patch)

    def use() -> None:
        seg = open_segment(store)
        seg.read_block((0, 1), (0, 8), (0, 8))
        assert seg.voxel_size_um is None or seg.voxel_size_um > 0

    readable = path.stem.startswith("ome-transforms")  # the scale is unusable, not the data
    expected = "read, voxel size unknown" if readable else REFUSE
    check_input(use, "vol.zarr", f"corpus: zarr {path.stem}", "open_segment (zarr)",
                [tmp_path], expected, may_read=readable)  # fmt: skip


@pytest.mark.parametrize("path", corpus("predictions"), ids=_ids(corpus("predictions")))
def test_prediction(artefacts, path, tmp_path):
    store = tmp_path / "pred.zarr"
    shutil.copytree(artefacts["prediction"], store)
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"][ATTRS_KEY].update(json.loads(path.read_text()))
    (store / "zarr.json").write_text(json.dumps(meta))
    check_input(lambda: open_prediction(store), "pred.zarr", f"corpus: prediction {path.stem}",
                "open_prediction", [tmp_path], REFUSE, may_read=False)  # fmt: skip

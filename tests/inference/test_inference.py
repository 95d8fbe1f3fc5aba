"""Prediction: blending, several start layers, resume, scale, TTA, provenance, errors, export."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from model_files import save_tiny_checkpoint
from PIL import Image

from napari_inkdetect import __version__
from napari_inkdetect.engine import drain
from napari_inkdetect.errors import CheckpointError, ConfigError, InkDetectError
from napari_inkdetect.export import export_prediction
from napari_inkdetect.inference import (
    BatchDone,
    ChunkDone,
    PredictBatchHalved,
    PredictConfig,
    PredictFinished,
    PredictStarted,
    pending_chunks,
    predict,
    predict_chunk,
    prepare_output,
)
from napari_inkdetect.inference import job as inference_job
from napari_inkdetect.io import prediction_store
from napari_inkdetect.io.blocks import block_mean
from napari_inkdetect.io.prediction_store import (
    open_overviews,
    open_prediction,
    prediction_threshold,
)
from napari_inkdetect.io.sources import ReadCounter
from napari_inkdetect.models import InkDetector, load_checkpoint, save_checkpoint
from napari_inkdetect.synthetic import make_segment, write_segment
from napari_inkdetect.windows import blend_weight

CONSTANT_LOGIT = 1.0
CONSTANT_U8 = round(255 / (1 + np.exp(-CONSTANT_LOGIT)))  # softmax([0, 1])[1] x 255


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """A small synthetic segment (with and without mask), a random and a constant model."""
    root = tmp_path_factory.mktemp("inference")
    segment = write_segment(make_segment(shape=(30, 160, 224), seed=1), root)
    unmasked = write_segment(make_segment(shape=(30, 160, 224), seed=1), root / "nomask")
    (unmasked / "synthetic_mask.png").unlink()
    torch.manual_seed(0)
    model = InkDetector("resnet10", width=0.125)
    random_ckpt = save_checkpoint(root / "random.safetensors", model, tile_size=64)
    with torch.no_grad():
        model.decoder.logit.weight.zero_()
        model.decoder.logit.bias.copy_(torch.tensor([0.0, CONSTANT_LOGIT]))
    constant_ckpt = save_checkpoint(root / "constant.safetensors", model, tile_size=64)
    return {
        "segment": segment,
        "unmasked": unmasked,
        "random": random_ckpt,
        "constant": constant_ckpt,
        "root": root,
    }


def _config(data, out: Path, **kw) -> PredictConfig:
    base = dict(
        segment=str(data["segment"]),
        checkpoint=str(data["random"]),
        out=str(out),
        tile=64,
        chunk=64,
        device="cpu",
        autocast="off",
        batch_size=8,
    )
    return PredictConfig(**{**base, **kw})


def _prob(path: Path) -> np.ndarray:
    return zarr.open_group(str(path), mode="r")["prob"][...]


def _events(config: PredictConfig, stop: threading.Event | None = None) -> list:
    return list(predict(config, stop))


# --------------------------------------------------------------------------- blending


def test_constant_model_is_seam_free_over_the_whole_image(data, tmp_path):
    cfg = _config(data, tmp_path / "c.zarr", segment=str(data["unmasked"]),
                  checkpoint=str(data["constant"]))  # fmt: skip
    events = _events(cfg)
    prob = _prob(tmp_path / "c.zarr")
    assert prob.shape == (1, 160, 224)
    assert int(prob.max()) - int(prob.min()) <= 1
    assert abs(int(prob[0, 80, 100]) - CONSTANT_U8) <= 1
    kinds = [type(e) for e in events]
    assert kinds[0] is PredictStarted and kinds[-1] is PredictFinished
    assert BatchDone in kinds and ChunkDone in kinds
    assert events[-1].tiles == events[0].total_tiles and not events[-1].stopped


@pytest.mark.parametrize("region", [(10, 20, 40, 50), (130, 180, 160, 224)])
def test_small_and_edge_regions(data, tmp_path, region):
    cfg = _config(data, tmp_path / "r.zarr", segment=str(data["unmasked"]),
                  checkpoint=str(data["constant"]), region=region)  # fmt: skip
    drain(predict(cfg))
    prob = _prob(tmp_path / "r.zarr")
    assert prob.shape == (1, region[2] - region[0], region[3] - region[1])
    assert int(prob.max()) - int(prob.min()) <= 1


def test_blend_weight_never_zero_and_partition_of_unity():
    w = blend_weight(64)
    assert w.min() > 0
    ramp = np.sqrt(np.diag(w))
    assert np.allclose(ramp[:32] + ramp[32:], 1.0, atol=1e-6)


# --------------------------------------------------------------------------- start layers


def test_several_start_layers_read_each_position_once(data, tmp_path):
    before = ReadCounter.bytes_read
    drain(predict(_config(data, tmp_path / "one.zarr", start_layers=[3])))
    one = ReadCounter.bytes_read - before
    before = ReadCounter.bytes_read
    drain(predict(_config(data, tmp_path / "three.zarr", start_layers=range(2, 5))))
    three = ReadCounter.bytes_read - before
    assert three < 1.5 * one  # 24 layers per position instead of 3 x 22
    single, multi = _prob(tmp_path / "one.zarr"), _prob(tmp_path / "three.zarr")
    assert multi.shape == (3, *single.shape[1:])
    assert np.abs(multi[1].astype(int) - single[0]).max() <= 1
    assert not np.array_equal(multi[0], multi[2])


# --------------------------------------------------------------------------- overview levels


@pytest.mark.parametrize("region", [None, (0, 0, 40, 224)])  # 40 px: narrower than a chunk
def test_large_outputs_get_overview_levels_equal_to_block_means(
    data, tmp_path, monkeypatch, region
):
    limit = 64 if region is None else 16  # as if 224 px were 13k px
    monkeypatch.setattr(prediction_store, "LEVELS_ABOVE", limit)
    cfg = _config(data, tmp_path / "o.zarr", start_layers=(2, 5), region=region)
    drain(predict(cfg))
    if region is not None:  # every level the store made is filled, not left at zero
        levels = open_overviews(cfg.out)
        assert len(levels) == 5  # factors 2, 4, 8, 16 of a 64 px chunk
        full = np.asarray(levels[0])
        for f, level in zip((2, 4, 8, 16), levels[1:], strict=True):
            np.testing.assert_array_equal(np.asarray(level), block_mean(full, f), err_msg=str(f))
        return
    levels = open_overviews(cfg.out)
    prob = np.asarray(levels[0]).astype(np.float64)
    n, h, w = prob.shape
    assert [lv.shape for lv in levels[1:]] == [
        (n, -(-h // 2), -(-w // 2)),
        (n, -(-h // 4), -(-w // 4)),
    ]
    for level, f in zip(levels[1:], (2, 4), strict=True):
        padded = np.full((n, -(-h // f) * f, -(-w // f) * f), np.nan)
        padded[:, :h, :w] = prob
        blocks = padded.reshape(n, -(-h // f), f, -(-w // f), f)
        np.testing.assert_array_equal(np.asarray(level), np.rint(np.nanmean(blocks, axis=(2, 4))))
    # napari shows them as one multiscale layer (so zooming out reads the small level)
    from napari_inkdetect._napari_layers import prediction_layers

    (data_, kwargs, _), (peak, peak_kwargs, _) = prediction_layers(cfg.out)
    assert kwargs["multiscale"] and [d.shape for d in data_] == [lv.shape for lv in levels]
    assert peak_kwargs["multiscale"] and peak[2].shape == levels[2].shape[1:]


# --------------------------------------------------------------------------- resume


def test_stop_then_resume_equals_an_uninterrupted_run(data, tmp_path):
    cfg = _config(data, tmp_path / "full.zarr", start_layers=[3, 5])
    drain(predict(cfg))
    cut = cfg.with_(out=str(tmp_path / "cut.zarr"))
    stop = threading.Event()
    events = []
    for event in predict(cut, stop):
        events.append(event)
        if isinstance(event, ChunkDone):
            stop.set()
    assert events[-1].stopped
    done = zarr.open_group(str(tmp_path / "cut.zarr"), mode="r")["done"][...]
    assert 1 <= done.sum() < done.size
    resumed = _events(cut.with_(batch_size=5))
    assert resumed[0].done_chunks == done.sum()
    assert sum(isinstance(e, ChunkDone) for e in resumed) == done.size - done.sum()
    np.testing.assert_array_equal(_prob(tmp_path / "cut.zarr"), _prob(tmp_path / "full.zarr"))


def test_changed_config_refuses_to_resume_unless_overwrite(data, tmp_path):
    cfg = _config(data, tmp_path / "p.zarr", region=(0, 0, 64, 64))
    drain(predict(cfg))
    with pytest.raises(ConfigError, match="different settings.*stride"):
        drain(predict(cfg.with_(stride=64)))
    drain(predict(cfg.with_(stride=64, overwrite=True)))
    prov = zarr.open_group(str(tmp_path / "p.zarr"), mode="r").attrs["napari_inkdetect"]
    assert prov["stride"] == 64


def test_chunk_tasks_alone_match_the_generator(data, tmp_path):
    cfg = _config(data, tmp_path / "gen.zarr", region=(0, 0, 128, 160), start_layers=[3, 4])
    drain(predict(cfg))
    tasks = cfg.with_(out=str(tmp_path / "tasks.zarr"))
    prepare_output(tasks)
    chunks = pending_chunks(tasks)
    assert len(chunks) == 6
    for index in chunks:  # what a distributed scheduler would run, in any order
        predict_chunk(tasks.to_dict(), index)
    assert pending_chunks(tasks) == []
    np.testing.assert_array_equal(_prob(tmp_path / "tasks.zarr"), _prob(tmp_path / "gen.zarr"))
    assert _events(tasks)[0].done_chunks == 6


@pytest.mark.parametrize("window", [{"normalisation": {"kind": "percentile"}},
                                    {"depth_scale": True, "scale": 2.0}])  # fmt: skip
def test_per_window_preparation_paths(data, tmp_path, window):
    ckpt = save_tiny_checkpoint(tmp_path / "m.safetensors", **window)
    cfg = _config(data, tmp_path / "p.zarr", checkpoint=str(ckpt), start_layers=[2, 3],
                  region=(0, 0, 96, 96))  # fmt: skip
    drain(predict(cfg))
    prob = _prob(tmp_path / "p.zarr")
    assert prob.shape == (2, 96, 96) and prob.std() > 0


# --------------------------------------------------------------------------- scale, TTA, depth


@pytest.mark.parametrize("scale", [0.5, 2.44])
def test_scaled_prediction_is_aligned_with_the_volume(data, tmp_path, scale):
    cfg = _config(data, tmp_path / "s.zarr", segment=str(data["unmasked"]),
                  checkpoint=str(data["constant"]), scale=scale, chunk=None)  # fmt: skip
    drain(predict(cfg))
    prob = _prob(tmp_path / "s.zarr")
    assert prob.shape == (1, 160, 224)
    assert int(prob.max()) - int(prob.min()) <= 1


class _Pointwise(InkDetector):
    """Ink logit = depth-weighted sum of the input at each pixel: exactly equivariant to
    flips and rotations, and negated when the window's depth order is reversed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[2]
        ramp = torch.linspace(-1, 1, d, dtype=x.dtype)[None, :, None, None]
        logit = 10 * (x[:, 0] * ramp).sum(1) / d
        return torch.stack([torch.zeros_like(logit), logit], 1)


@pytest.fixture
def pointwise(data, monkeypatch):
    from napari_inkdetect.models import CheckpointInfo

    model = _Pointwise("resnet10", width=0.125)
    model.info = CheckpointInfo(arch="resnet10", width=0.125, tile_size=64)
    monkeypatch.setattr(inference_job, "load_checkpoint", lambda *a, **k: (model, None))
    return model


def test_tta_undoes_its_transforms(data, tmp_path, pointwise):
    drain(predict(_config(data, tmp_path / "a.zarr")))
    drain(predict(_config(data, tmp_path / "b.zarr", tta_flips=True, tta_rot90=True)))
    a, b = _prob(tmp_path / "a.zarr"), _prob(tmp_path / "b.zarr")
    assert a.std() > 5  # the model does see the data
    assert np.abs(a.astype(int) - b).max() <= 1


def test_tta_on_a_constant_model_changes_nothing(data, tmp_path):
    cfg = _config(data, tmp_path / "t.zarr", checkpoint=str(data["constant"]), tta_flips=True)
    drain(predict(cfg))
    prob = _prob(tmp_path / "t.zarr")
    assert set(np.unique(prob)) <= {0, CONSTANT_U8 - 1, CONSTANT_U8, CONSTANT_U8 + 1}


def test_depth_reversal_and_checkpoint_direction(data, tmp_path, pointwise):
    seg = str(data["unmasked"])  # every pixel predicted
    drain(predict(_config(data, tmp_path / "f.zarr", region=(0, 0, 96, 96), segment=seg)))
    drain(predict(_config(data, tmp_path / "r.zarr", region=(0, 0, 96, 96),
                           depth_direction="reverse", segment=seg)))  # fmt: skip
    f, r = _prob(tmp_path / "f.zarr").astype(int), _prob(tmp_path / "r.zarr").astype(int)
    assert np.abs(f + r - 255).max() <= 1
    pointwise.info.depth_reverse = True
    drain(predict(_config(data, tmp_path / "auto.zarr", region=(0, 0, 96, 96), segment=seg)))
    np.testing.assert_array_equal(_prob(tmp_path / "auto.zarr"), r)


# --------------------------------------------------------------------------- provenance


def test_provenance_says_how_it_was_made(data, tmp_path):
    cfg = _config(data, tmp_path / "p.zarr", start_layers=[4, 6], region=(16, 32, 80, 96),
                  dtype="float16")  # fmt: skip
    drain(predict(cfg))
    root = zarr.open_group(str(tmp_path / "p.zarr"), mode="r")
    assert root["prob"].dtype == np.float16
    prov = root["prob"].attrs["napari_inkdetect"]
    assert prov["start_layers"] == [4, 6] and prov["window_length"] == 22
    assert prov["region_offset"] == [16, 32] and prov["scale"] == 1.0
    assert prov["depth_direction"] == "forward" and prov["tta"] == {"flips": False, "rot90": False}
    assert prov["stride"] == 32 and prov["software_version"] == __version__
    assert len(prov["checkpoint_sha256"]) == 64
    assert prov["checkpoint_metadata"]["tile_size"] == 64
    assert prov["normalisation"]["kind"] == "uint16_shift8_clip"
    assert PredictConfig.from_dict(json.loads(json.dumps(prov["config"]))) == cfg


def test_provenance_records_the_checkpoint_calibrated_threshold(data, tmp_path):
    model, _ = load_checkpoint(data["random"])
    metrics = {"best_threshold": 0.37, "best_f05": 0.6, "f05": 0.5, "threshold": 0.5}
    calibrated = save_checkpoint(
        tmp_path / "best.safetensors", model, provenance={"metrics": metrics}
    )
    cfg = _config(data, tmp_path / "p.zarr", checkpoint=str(calibrated), region=(0, 0, 64, 96))
    drain(predict(cfg))
    root = zarr.open_group(str(tmp_path / "p.zarr"), mode="r+")
    for attrs in (root.attrs, root["prob"].attrs):
        assert attrs["napari_inkdetect"]["threshold"] == 0.37
        assert prediction_threshold(dict(attrs["napari_inkdetect"])) == 0.37
    plain = _config(data, tmp_path / "plain.zarr", region=(0, 0, 64, 96))
    drain(predict(plain))
    prov = zarr.open_group(str(tmp_path / "plain.zarr"), mode="r").attrs["napari_inkdetect"]
    assert "threshold" in prov and prov["threshold"] is None
    assert prediction_threshold(dict(prov)) is None

    # an output written before the threshold was recorded: it still resumes, and its
    # checkpoint metadata still answers
    old = {k: v for k, v in dict(root.attrs["napari_inkdetect"]).items() if k != "threshold"}
    root.attrs["napari_inkdetect"] = root["prob"].attrs["napari_inkdetect"] = old
    root["done"][0, 0] = 0  # one chunk left to do
    started = next(e for e in _events(cfg) if isinstance(e, PredictStarted))
    assert started.total_chunks - started.done_chunks == 1
    assert prediction_threshold(old) == 0.37


def test_config_round_trip_and_unknown_keys():
    cfg = PredictConfig("s", "c", "o", start_layers="2:5", region=[0, 0, 10, 10])
    assert cfg.start_layers == (2, 3, 4) and cfg.region == (0, 0, 10, 10)
    assert PredictConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown prediction settings: bogus"):
        PredictConfig.from_dict({**cfg.to_dict(), "bogus": 1})


# --------------------------------------------------------------------------- errors


def test_start_layers_outside_the_volume(data, tmp_path):
    with pytest.raises(ConfigError, match=r"start layers 5\.\.10 .*30 layers.*0\.\.8"):
        drain(predict(_config(data, tmp_path / "p.zarr", start_layers=range(5, 11))))


def test_region_outside_the_volume(data, tmp_path):
    with pytest.raises(ConfigError, match="outside the volume"):
        drain(predict(_config(data, tmp_path / "p.zarr", region=(0, 0, 200, 100))))


def test_checkpoint_that_does_not_load(data, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        drain(predict(_config(data, tmp_path / "p.zarr", checkpoint=str(bad))))


def test_region_without_tiles_in_the_mask(data, tmp_path):
    folder = tmp_path / "seg"
    segment = write_segment(make_segment(shape=(30, 160, 224), seed=1), folder)
    mask = np.zeros((160, 224), np.uint8)
    mask[100:, 120:] = 255
    Image.fromarray(mask).save(segment / "synthetic_mask.png")
    cfg = _config(data, tmp_path / "p.zarr", segment=str(segment), region=(0, 0, 30, 30))
    with pytest.raises(ConfigError, match="no tile touching the papyrus mask"):
        drain(predict(cfg))


def test_existing_folder_that_is_not_a_prediction(data, tmp_path):
    (tmp_path / "p.zarr").mkdir()
    (tmp_path / "p.zarr" / "notes.txt").write_text("mine")
    cfg = _config(data, tmp_path / "p.zarr", region=(0, 0, 64, 64))
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="not a napari-inkdetect prediction"):
            drain(predict(cfg.with_(overwrite=overwrite)))
    assert (tmp_path / "p.zarr" / "notes.txt").exists()


# --------------------------------------------------------------------------- export


@pytest.mark.parametrize("fmt", ["png", "tif"])
def test_export_per_start_layer_and_max_projection(data, tmp_path, fmt):
    cfg = _config(data, tmp_path / "pred.zarr", start_layers=[3, 5], region=(0, 0, 64, 96),
                  dtype="uint8" if fmt == "png" else "float16")  # fmt: skip
    drain(predict(cfg))
    files = export_prediction(tmp_path / "pred.zarr", tmp_path / "out", format=fmt)
    assert [f.name for f in files] == [f"pred_z03.{fmt}", f"pred_z05.{fmt}", f"pred_max.{fmt}"]
    prob = _prob(tmp_path / "pred.zarr")
    images = [np.asarray(Image.open(f)) if fmt == "png" else _read_tif(f) for f in files]
    assert all(im.shape == (64, 96) for im in images)
    if fmt == "png":
        np.testing.assert_array_equal(images[0], prob[0])
        np.testing.assert_array_equal(images[2], prob.max(0))


def _read_tif(path: Path) -> np.ndarray:
    import tifffile

    return tifffile.imread(path)


def test_output_is_zero_off_the_papyrus_mask(data, tmp_path):
    from napari_inkdetect.io.segment import open_segment

    cfg = _config(data, tmp_path / "m.zarr", checkpoint=str(data["constant"]))
    drain(predict(cfg))
    prob, prov = open_prediction(tmp_path / "m.zarr")
    y0, x0, y1, x1 = prov["region"]
    mask = open_segment(cfg.segment).read_mask()[y0:y1, x0:x1]
    planes = np.asarray(prob)
    assert (planes[:, ~mask] == 0).all()
    assert (np.abs(planes[:, mask].astype(int) - CONSTANT_U8) <= 1).all()


# --------------------------------------------------------------------------- out of memory


def test_out_of_memory_halves_the_batch_and_keeps_the_result(data, tmp_path, monkeypatch):
    """Issue 14: a device out of memory during prediction halves the windows per model call
    (as training does) instead of ending the run; the map is the same, and a model that does
    not fit even one window ends in one clear line."""
    cfg = _config(data, tmp_path / "ref.zarr", start_layers=[3, 4], batch_size=8)
    drain(predict(cfg))
    forward = InkDetector.forward
    calls: list[int] = []

    def fits_two(self, x):
        calls.append(x.shape[0])
        if x.shape[0] > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB (test)")
        return forward(self, x)

    monkeypatch.setattr(InkDetector, "forward", fits_two)
    events = _events(cfg.with_(out=str(tmp_path / "oom.zarr")))
    halved = [e.new_batch for e in events if isinstance(e, PredictBatchHalved)]
    assert halved == [2]  # one report: 8 and 4 did not fit, 2 did
    assert calls[:2] == [8, 4] and max(calls[2:]) == 2  # every later batch goes in twos
    np.testing.assert_array_equal(_prob(tmp_path / "oom.zarr"), _prob(tmp_path / "ref.zarr"))

    def fits_none(self, x):
        raise RuntimeError("CUDA out of memory (test)")

    monkeypatch.setattr(InkDetector, "forward", fits_none)
    with pytest.raises(InkDetectError, match="out of memory on cpu even with one window") as err:
        drain(predict(cfg.with_(out=str(tmp_path / "none.zarr"))))
    assert "\n" not in str(err.value)

"""One depth convention: a window ``[s, s + L)`` is shown at and named by its centre
``c = s + L // 2``, by the CLI, the provenance, the overlay placement and Export (Qt-free)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr
from scipy import ndimage

from napari_inkdetect._napari_layers import prediction_layers, prediction_placement
from napari_inkdetect.cli import main
from napari_inkdetect.engine import drain
from napari_inkdetect.errors import ConfigError
from napari_inkdetect.export import render_sweep
from napari_inkdetect.inference import PredictConfig, open_job, predict
from napari_inkdetect.inference.pipeline import windows
from napari_inkdetect.io.segment import open_segment
from napari_inkdetect.models import InkDetector, save_checkpoint
from napari_inkdetect.models.checkpoints import read_checkpoint_metadata
from napari_inkdetect.synthetic import make_segment, write_segment
from napari_inkdetect.window_tensors import to_model_input
from napari_inkdetect.windows import (
    WindowSpec,
    centre_bounds,
    read_raw,
    window_centre,
    window_start,
)

LAYERS = 22
REGION = "64,64,192,192"


@pytest.fixture(scope="module")
def inked(tmp_path_factory) -> tuple[Path, tuple[int, int], int]:
    """The synthetic segment with a known ink band on disk, and the layer at its middle: where
    a person puts the depth slider to see the crackle."""
    seg = make_segment(shape=(48, 256, 384))
    folder = write_segment(seg, tmp_path_factory.mktemp("depth"), "s")
    z0, z1 = seg.ink_layers
    return folder, (z0, z1), (z0 + z1) // 2


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A tiny untrained model for 22-layer windows (no window recorded: the CLI picks it)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "m.safetensors"
    return save_checkpoint(path, InkDetector("resnet10", width=0.125), tile_size=64)


def test_centre_and_start_convert_both_ways():
    for start in range(0, 30):
        for layers in (4, 7, 8, 22):
            centre = window_centre(start, layers)
            assert centre == start + layers // 2 and window_start(centre, layers) == start
    assert window_centre(9, 22) == 20
    assert window_start(47, 22, depth=48) == 26 and window_start(0, 22, depth=48) == 0
    assert centre_bounds(48, 22) == (11, 37)  # windows [0, 22) .. [26, 48)
    assert centre_bounds(12, 22) == (11, 11)  # too shallow: the one clamped window


def _linear_depth_folder(folder: Path, depth: int = 40) -> Path:
    """A folder of NN.tif whose layer z holds ``(55 + 3 z) << 8`` everywhere, so the
    normalised value of a model layer tells which volume depth it came from."""
    folder.mkdir()
    for z in range(depth):
        tifffile.imwrite(folder / f"{z:02d}.tif", np.full((64, 64), (55 + 3 * z) << 8, np.uint16))
    return folder


def _mean_depth(values: np.ndarray) -> float:
    """The mean source depth of normalised values (``uint16 >> 8 / 255``, see above)."""
    return float(((np.asarray(values) * 255 - 55) / 3).mean())


@pytest.mark.parametrize("start", [0, 5, 17])
def test_depth_scaled_windows_are_centred_where_unscaled_ones_are(tmp_path, start):
    seg = open_segment(_linear_depth_folder(tmp_path / "lin"))
    plain = WindowSpec(layers=LAYERS, tile=64, scale=2.0)
    scaled = WindowSpec(layers=LAYERS, tile=64, scale=2.0, depth_scale=True)
    centre = window_centre(start, LAYERS)
    # reads: [s, s + 22) and the 11 layers centred on the same centre, [s + 6, s + 17)
    assert plain.source_range(start) == (start, start + 22)
    assert scaled.source_range(start) == (start + 6, start + 17)
    assert window_centre(scaled.source_range(start)[0], scaled.source_layers) == centre
    raw = read_raw(seg, start, 0, 0, scaled)
    assert (raw[:, 0, 0] >> 8).tolist() == [55 + 3 * z for z in range(start + 6, start + 17)]
    # what the model sees sits at the same depth as the seed's zoom(block, 2)[11:33] ...
    x = to_model_input(raw, scaled).numpy()[:, 0, 0]
    block = plain.normalisation.apply(read_raw(seg, start, 0, 0, plain))[:, 0, 0]
    seed = ndimage.zoom(block, 2, order=1)[11:33]
    assert x.shape == seed.shape == (22,)
    assert abs(_mean_depth(x) - _mean_depth(seed)) <= 1
    assert abs(_mean_depth(x) - centre) <= 0.5  # ... and the unscaled window's centre
    # the predictor prepares the same input as the trainer (read_raw + to_model_input)
    torch.manual_seed(0)
    ckpt = save_checkpoint(
        tmp_path / "legacy.safetensors", InkDetector("resnet10", width=0.125), tile_size=64,
        scale=2.0, depth_scale=True,
    )  # fmt: skip
    job = open_job(PredictConfig(str(seg.path), str(ckpt), str(tmp_path / "p.zarr"),
                                 start_layers=[start], device="cpu"))  # fmt: skip
    _, _, predicted = next(windows(job, 0, 0))
    y0, x0 = job.region[:2]
    expected = to_model_input(read_raw(job.segment, start, y0, x0, job.spec), job.spec)
    torch.testing.assert_close(predicted, expected)


def test_the_depth_scaled_read_past_the_volume_is_refused_in_centres(tmp_path):
    seg = open_segment(_linear_depth_folder(tmp_path / "lin", depth=24))
    torch.manual_seed(0)
    ckpt = save_checkpoint(
        tmp_path / "legacy.safetensors", InkDetector("resnet10", width=0.125), tile_size=64,
        scale=2.0, depth_scale=True,
    )  # fmt: skip
    config = PredictConfig(str(seg.path), str(ckpt), str(tmp_path / "p.zarr"), device="cpu")
    # 24 layers: the reads [c - 5, c + 6) fit for centres 5..18
    job = open_job(config.with_(centre_layers=[11, 18]))
    assert job.start_layers == (0, 7)
    with pytest.raises(ConfigError, match=r"window centres 19\.\.19 .*must lie in 5\.\.18"):
        open_job(config.with_(centre_layers=[19]))


def test_placement_puts_each_window_at_its_centre():
    place = prediction_placement(
        [8, 10, 12], [5, 7], (2.0, 1.0, 1.0), (1.0, 0.0, 0.0), window_length=LAYERS
    )
    assert place["translate"] == (1.0 + 2.0 * 19, 5.0, 7.0)  # plane 0: window [8, 30) at 19
    assert place["scale"] == (4.0, 1.0, 1.0)  # planes 2 start layers apart = 2 centres apart


def test_cli_centre_flags_are_exclusive_and_checked(inked, model, tmp_path, capsys):
    folder, _, _ = inked
    labels = str(folder / "s_train_labels.png")
    argv = ["train", str(folder), "--labels", labels, "--out", str(tmp_path / "r"),
            "--start-layer", "3", "--centre-layer", "14"]  # fmt: skip
    with pytest.raises(SystemExit):
        main(argv)
    assert "not allowed with argument" in capsys.readouterr().err
    argv = ["train", str(folder), "--labels", labels, "--out", str(tmp_path / "r"),
            "--centre-layer", "40"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--centre-layer 40" in err and "centre in 11..37" in err
    argv = ["predict", str(folder), "--checkpoint", str(model), "--out", str(tmp_path / "p.zarr"),
            "--centre-layers", "5:9"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "window centres must lie in 11..37" in err
    assert main([*argv[:-1], "19:x"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "layers '19:x': expected A:B[:STEP]" in err


def test_cli_overlay_and_export_agree_on_the_slider_layer(inked, model, tmp_path, capsys):
    """The slider at the ink's middle c: the CLI trains and predicts the window centred on c,
    records and prints c, napari places that window's plane at c, and Export draws it over
    volume layer c."""
    folder, (z0, z1), c = inked
    run = tmp_path / "run"
    train = ["train", str(folder), "--labels", str(folder / "s_train_labels.png"),
             "--out", str(run), "--arch", "resnet10", "--width", "0.125", "--tile", "64",
             "--layers", str(LAYERS), "--centre-layer", str(c), "--steps", "1",
             "--batch-size", "1", "--device", "cpu", "--quiet"]  # fmt: skip
    assert main(train) == 0
    start = c - LAYERS // 2
    assert start <= z0 and z1 <= start + LAYERS  # the window holds the ink band ...
    assert abs((z0 + z1 - 1) / 2 - c) <= 1  # ... centred on the slider
    assert f"window {start}-{start + LAYERS - 1}, centre {c}" in capsys.readouterr().out
    recorded = json.loads((run / "config.json").read_text())
    assert recorded["start_layer"] + recorded["layers"] // 2 == c
    meta = read_checkpoint_metadata(run / "last.safetensors")
    assert window_centre(meta["start_layer"], meta["in_layers"]) == c

    out = tmp_path / "pred.zarr"  # the checkpoint's own window, then a band by centre
    predict = ["predict", str(folder), "--checkpoint", str(run / "last.safetensors"),
               "--out", str(out), "--region", REGION, "--device", "cpu", "--quiet"]  # fmt: skip
    assert main(predict) == 0
    assert f"window {start}-{start + LAYERS - 1}, centre {c}" in capsys.readouterr().out
    band = tmp_path / "band.zarr"
    argv = [*predict[:5], str(band), *predict[6:], "--centre-layers", f"{c - 2}:{c + 3}:2"]
    assert main(argv) == 0
    assert f"centres {c - 2}..{c + 2}" in capsys.readouterr().out
    prov = zarr.open_group(str(band), mode="r").attrs["napari_inkdetect"]
    assert prov["centre_layers"] == [c - 2, c, c + 2]
    assert prov["start_layers"] == [start - 2, start, start + 2]

    for path, plane in ((out, 0), (band, 1)):
        (_, kwargs, _), *_ = prediction_layers(path)
        assert kwargs["translate"][0] + plane * kwargs["scale"][0] == c  # napari's layer c
        assert kwargs["metadata"]["centre_layers"][plane] == c
        # Export draws that window over volume layer c (alpha 0: the underlay alone)
        frame = list(render_sweep(path, alpha=0.0, label=False))[plane]
        seg = open_segment(folder)
        y0, x0, y1, x1 = (int(v) for v in REGION.split(","))
        low, high = seg.contrast_limits()
        layer = seg.read_block((c, c + 1), (y0, y1), (x0, x1))[0].astype(float)
        expected = np.clip((layer - low) / (high - low), 0, 1) * 255
        assert np.abs(frame[..., 0] - expected).max() <= 1
        above = seg.read_block((c - 1, c), (y0, y1), (x0, x1))[0].astype(float)
        assert np.abs(frame[..., 0] - np.clip((above - low) / (high - low), 0, 1) * 255).max() > 1


def test_run_prediction_records_centres_beside_starts(inked, model, tmp_path):
    folder, _, c = inked
    config = PredictConfig(str(folder), str(model), str(tmp_path / "p.zarr"), device="cpu",
                           region=(64, 64, 128, 128), centre_layers=[c])  # fmt: skip
    with pytest.raises(ConfigError, match="not both"):
        config.with_(start_layers=[3])
    drain(predict(config))
    prov = zarr.open_group(str(config.out), mode="r").attrs["napari_inkdetect"]
    assert prov["start_layers"] == [c - 11] and prov["centre_layers"] == [c]
    assert "centre_layers[i] = start_layers[i] + layers // 2" in prov["convention"]

"""Export: sweep frames over the volume, GIF/MP4 writers, images, stop, atomic files, errors."""

from __future__ import annotations

import shutil
import sys
import threading
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import zarr
from model_files import save_tiny_checkpoint
from PIL import Image

from napari_inkdetect.engine import drain
from napari_inkdetect.errors import ConfigError, SegmentError
from napari_inkdetect.export import (
    ExportConfig,
    FileWritten,
    FrameRendered,
    export,
    render_sweep,
    write_gif,
    write_mp4,
)
from napari_inkdetect.export.config import export_config
from napari_inkdetect.inference import PredictConfig, predict
from napari_inkdetect.io.images import read_gray
from napari_inkdetect.io.segment import open_segment
from napari_inkdetect.io.sources import ReadCounter
from napari_inkdetect.synthetic import make_segment, write_segment

STARTS = (0, 1, 2, 3, 4)
LAYERS = 8
INK = (slice(20, 50), slice(30, 80))  # prediction pixels set to p = 1
FAINT = (slice(60, 80), slice(30, 80))  # p = 0.2 + 0.1 x start layer index


@pytest.fixture(scope="module")
def prediction(tmp_path_factory) -> Path:
    """A prediction made by the real engine on a small segment, then given a known pattern
    (p = 1 in INK, rising with depth in FAINT, 0 elsewhere) so what frames show can be checked."""
    root = tmp_path_factory.mktemp("export")
    segment = write_segment(make_segment(shape=(12, 96, 128), seed=1), root, "seg")
    ckpt = save_tiny_checkpoint(root / "m.safetensors")
    out = drain(predict(
        PredictConfig(
            segment=str(segment), checkpoint=str(ckpt), out=str(root / "pred.zarr"), tile=64,
            chunk=64, layers=LAYERS, start_layers=STARTS, device="cpu", autocast="off",
        )
    )).path  # fmt: skip
    prob = zarr.open_group(str(out), mode="r+")["prob"]
    pattern = np.zeros(prob.shape, np.uint8)
    pattern[(slice(None), *INK)] = 255
    for i in range(len(STARTS)):
        pattern[(i, *FAINT)] = round((0.2 + 0.1 * i) * 255)
    prob[...] = pattern
    return out


@pytest.fixture
def region(prediction) -> tuple[int, int, int, int]:
    return tuple(zarr.open_group(str(prediction), mode="r").attrs["napari_inkdetect"]["region"])


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.startswith(".") or ".tmp" in p.name]


def _redness(rgb: np.ndarray) -> float:
    rgb = rgb.astype(float)
    return float((rgb[..., 0] - (rgb[..., 1] + rgb[..., 2]) / 2).mean())


# --------------------------------------------------------------------------- frames


def test_one_rgb_frame_per_start_layer_at_full_size(prediction, region):
    frames = list(render_sweep(prediction))
    h, w = region[2] - region[0], region[3] - region[1]
    assert len(frames) == len(STARTS)
    assert all(f.shape == (h, w, 3) and f.dtype == np.uint8 for f in frames)


def test_ink_is_red_over_visible_papyrus_elsewhere_gray(prediction):
    frame = next(render_sweep(prediction, label=False))
    plain = next(render_sweep(prediction, label=False, alpha=0.0))
    assert (plain[..., 0] == plain[..., 1]).all() and (plain[..., 1] == plain[..., 2]).all()
    assert _redness(frame[INK]) > 100
    assert abs(_redness(frame[40:, 90:])) < 1  # p = 0: the volume alone
    np.testing.assert_array_equal(frame[40:, 90:], plain[40:, 90:])
    # papyrus stays visible under ink: its texture still varies there
    assert frame[INK][..., 1].std() > 0.3 * plain[INK][..., 1].std() > 0
    assert _redness(frame[FAINT]) < _redness(frame[INK])


def test_underlay_is_the_windows_middle_layer_scaled_by_contrast_limits(prediction, region):
    middle = list(render_sweep(prediction, label=False, alpha=0.0))
    start = list(render_sweep(prediction, label=False, alpha=0.0, underlay="start"))
    np.testing.assert_array_equal(middle[0], start[LAYERS // 2])  # layer 0 + 8 // 2 = layer 4
    segment = open_segment(zarr.open_group(str(prediction)).attrs["napari_inkdetect"]["segment"])
    low, high = segment.contrast_limits()
    y0, x0, y1, x1 = region
    layer = segment.read_block((5, 6), (y0, y1), (x0, x1))[0].astype(float)
    expected = np.clip((layer - low) / (high - low), 0, 1) * 255
    assert np.abs(middle[1][..., 0] - expected).max() <= 1  # start 1: layer 1 + 4


def test_caption_names_start_layer_and_window(prediction):
    with_label, without = (next(render_sweep(prediction, label=on)) for on in (True, False))
    changed = np.argwhere((with_label != without).any(-1))
    assert changed.size and changed[:, 0].max() < 20 and changed[:, 1].min() < 10  # top left
    assert not np.array_equal(*(list(render_sweep(prediction))[i][:20] for i in (0, 1)))


def test_threshold_hides_low_probabilities(prediction):
    plain = next(render_sweep(prediction, label=False, alpha=0.0))
    frame = next(render_sweep(prediction, label=False, threshold=0.5))
    np.testing.assert_array_equal(frame[FAINT], plain[FAINT])
    assert _redness(frame[INK]) > 100


def test_downsampling_bounds_the_frame_size(prediction, region):
    frames = list(render_sweep(prediction, max_side=32, label=False))
    h, w = region[2] - region[0], region[3] - region[1]
    factor = -(-max(h, w) // 32)
    assert frames[0].shape == (-(-h // factor), -(-w // factor), 3)
    assert max(frames[0].shape[:2]) <= 32
    ink = frames[0][INK[0].start // factor + 1 : INK[0].stop // factor - 1,
                    INK[1].start // factor + 1 : INK[1].stop // factor - 1]  # fmt: skip
    assert _redness(ink) > 100


def test_region_reads_only_that_block_of_each_layer(prediction, region):
    y0, x0 = region[:2]
    box = (y0 + 20, x0 + 30, y0 + 50, x0 + 80)  # the INK rectangle, in volume pixels
    segment = open_segment(zarr.open_group(str(prediction)).attrs["napari_inkdetect"]["segment"])
    before = ReadCounter.bytes_read
    segment.contrast_limits()
    limits_bytes = ReadCounter.bytes_read - before
    before = ReadCounter.bytes_read
    frames = list(render_sweep(prediction, segment=segment, region=box, label=False))
    assert frames[0].shape == (30, 50, 3)
    assert _redness(frames[0]) > 100  # all ink
    assert ReadCounter.bytes_read - before <= limits_bytes + len(STARTS) * 30 * 50 * 2


# --------------------------------------------------------------------------- writers


def test_gif_has_one_frame_per_start_layer(prediction, tmp_path):
    path = write_gif(render_sweep(prediction), tmp_path / "sweep.gif", fps=5)
    with Image.open(path) as gif:
        assert gif.n_frames == len(STARTS)
        assert gif.info["duration"] == 200 and gif.info["loop"] == 0
        gif.seek(2)
        frame = np.asarray(gif.convert("RGB"))
    assert _redness(frame[INK]) > 80
    assert _no_temp_files(tmp_path)


def test_mp4_of_odd_sized_frames_is_readable_with_right_frame_count(prediction, tmp_path):
    frames = [f[:-1, :-1] if f.shape[0] % 2 == 0 else f for f in render_sweep(prediction)]
    assert frames[0].shape[0] % 2 == 1
    path = write_mp4(frames, tmp_path / "sweep.mp4", fps=4)
    n, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    assert n == len(STARTS)
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    assert (h, w) == (frames[0].shape[0] + 1, frames[0].shape[1] + (frames[0].shape[1] % 2))
    first = np.frombuffer(next(reader), np.uint8).reshape(h, w, 3)
    reader.close()
    assert _redness(first[INK]) > 80
    assert _no_temp_files(tmp_path)


def test_failed_write_leaves_nothing_behind(tmp_path):
    def frames():
        yield np.zeros((32, 32, 3), np.uint8)
        raise RuntimeError("renderer died")

    for write, name in ((write_gif, "a.gif"), (write_mp4, "a.mp4")):
        with pytest.raises(RuntimeError, match="renderer died"):
            write(frames(), tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_mp4_without_imageio_ffmpeg_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    with pytest.raises(ConfigError, match="pip install imageio-ffmpeg"):
        write_mp4([np.zeros((8, 8, 3), np.uint8)], tmp_path / "a.mp4")
    with pytest.raises(ConfigError, match="pip install imageio-ffmpeg"):
        ExportConfig("p.zarr", str(tmp_path), mp4=True)


# --------------------------------------------------------------------------- export


def test_export_writes_images_max_projection_gif_and_mp4(prediction, tmp_path):
    config = ExportConfig(str(prediction), str(tmp_path / "out"), images=("png", "tif"), mp4=True)
    events = []
    written = drain(export(config), events.append)
    names = [p.name for p in written]
    per_format = [f"pred_z{s:02d}" for s in STARTS] + ["pred_max"]
    assert names == [f"{n}.png" for n in per_format] + [f"{n}.tif" for n in per_format] + [
        "pred_sweep.gif",
        "pred_sweep.mp4",
    ]
    assert all(p.is_file() for p in written)
    assert read_gray(tmp_path / "out" / "pred_max.png")[INK].min() == 255
    assert [e.start_layer for e in events if isinstance(e, FrameRendered)] == list(STARTS)
    assert [e.path for e in events if isinstance(e, FileWritten)] == written
    assert [e.done for e in events] == list(range(1, len(events) + 1))
    assert events[-1].done == events[-1].total
    assert _no_temp_files(tmp_path)


def test_export_all_gif_only_without_volume(prediction, tmp_path):
    moved = tmp_path / "moved.zarr"
    shutil.copytree(prediction, moved)
    written = drain(
        export(export_config(moved, tmp_path, images=(), underlay="none", max_side=40))
    )
    assert [p.name for p in written] == ["moved_sweep.gif"]
    with Image.open(written[0]) as gif:
        assert gif.n_frames == len(STARTS) and max(gif.size) <= 40


def test_stop_keeps_finished_images_and_discards_the_sweep(prediction, tmp_path):
    stop = threading.Event()
    gen = export(ExportConfig(str(prediction), str(tmp_path), mp4=True), stop)
    for event in gen:
        if isinstance(event, FrameRendered):
            stop.set()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([f"pred_z{s:02d}.png" for s in STARTS] + ["pred_max.png"])


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("missing", "no such prediction"),
        ("not-ours", "not a napari-inkdetect prediction"),
        ("out-is-a-file", "is not a folder"),
        ("nothing", "nothing to export"),
        ("format", "use png or tif"),
        ("setting", "unknown export settings: colour"),
    ],
)
def test_bad_input_is_refused_before_writing(prediction, tmp_path, kind, match):
    target, out, settings = prediction, tmp_path / "out", {}
    if kind == "missing":
        target = tmp_path / "nope.zarr"
    elif kind == "not-ours":
        target = tmp_path / "plain"
        target.mkdir()
    elif kind == "out-is-a-file":
        out.write_text("")
    else:
        settings = {
            "nothing": {"images": (), "gif": False},
            "format": {"images": ("jpg",)},
            "setting": {"colour": "red"},
        }[kind]
    with pytest.raises(ConfigError, match=match):
        drain(export(export_config(target, out, **settings)))
    assert not out.is_dir() or not list(out.iterdir())


def test_region_outside_and_moved_segment_are_clear_errors(prediction, region, tmp_path):
    with pytest.raises(ConfigError, match="not inside the prediction's region"):
        render_sweep(prediction, region=(0, 0, region[2] + 1, 10))
    with pytest.raises(SegmentError, match="is not there"):
        render_sweep(prediction, segment=tmp_path / "gone")
    other = write_segment(make_segment(shape=(12, 96, 160)), tmp_path, "wider")
    with pytest.raises(SegmentError, match="was made on one of shape"):
        render_sweep(prediction, segment=other)

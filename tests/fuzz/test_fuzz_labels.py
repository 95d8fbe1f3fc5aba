"""Fuzzed label and mask images (PNG/TIFF): wrong modes, 16-bit, palettes, values outside
0/1/2/255, NaN, sizes that do not match the segment, headers that claim huge sizes. Opening the
segment, reading its mask and labels, and reading labels for training or evaluation either work
or give one of our one-line errors naming the image, and write nothing."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from records import FUZZ, check_input, scratch

from napari_inkdetect.errors import LabelsError
from napari_inkdetect.io import labels as labels_io
from napari_inkdetect.io.segment import open_segment, read_segment_labels

SHAPE = (3, 24, 40)
SEG_ID = "20240101"
MODES = ["1", "L", "P", "I;16", "I", "F", "LA", "RGB", "RGBA", "CMYK"]
VALUES = [0, 1, 2, 3, 7, 128, 254, 255, 256, 1000, 65535]


def write_segment(root: Path) -> Path:
    folder = root / SEG_ID
    (folder / "layers").mkdir(parents=True)
    for z in range(SHAPE[0]):
        tifffile.imwrite(folder / "layers" / f"{z:02d}.tif", np.ones(SHAPE[1:], np.uint16))
    return folder


def image_bytes(array: np.ndarray, mode: str, fmt: str) -> bytes:
    """``array`` (2-D values) encoded as a ``mode`` image in ``fmt`` (png or tif)."""
    buf = io.BytesIO()
    if fmt == "tif":
        dtype = {"1": np.bool_, "L": np.uint8, "I;16": np.uint16, "I": np.int32,
                 "F": np.float32}.get(mode, np.uint8)  # fmt: skip
        data = array.astype(dtype)
        if mode in ("LA", "RGB", "RGBA", "CMYK"):
            data = np.stack([data] * len(mode), -1)
        tifffile.imwrite(buf, data)
        return buf.getvalue()
    clipped = np.clip(array, 0, 255).astype(np.uint8)
    if mode == "I;16" or mode in ("I", "F"):
        im = Image.fromarray(np.clip(array, 0, 65535).astype(np.uint16))
    elif mode == "1":
        im = Image.fromarray(clipped > 0)
    elif mode == "P":
        im = Image.fromarray(clipped).convert("P")
    else:
        im = Image.fromarray(clipped).convert(mode)
    im.save(buf, format="PNG" if mode != "CMYK" else "TIFF")
    return buf.getvalue()


def png_with_size(data: bytes, height: int, width: int) -> bytes:
    """A PNG whose IHDR claims ``height`` x ``width`` (CRC fixed, pixels left as they are)."""
    out = bytearray(data)
    struct.pack_into(">II", out, 16, width, height)
    struct.pack_into(">I", out, 29, zlib.crc32(bytes(out[12:29])))
    return bytes(out)


sizes = st.sampled_from(["same", "one row more", "one column less", "transposed", "half"])


def _shape(kind: str) -> tuple[int, int]:
    h, w = SHAPE[1:]
    return {"same": (h, w), "one row more": (h + 1, w), "one column less": (h, w - 1),
            "transposed": (w, h), "half": (h // 2, w // 2)}[kind]  # fmt: skip


def _array(draw, shape: tuple[int, int]) -> np.ndarray:
    values = draw(st.lists(st.sampled_from(VALUES), min_size=1, max_size=4, unique=True))
    rng = np.random.default_rng(len(values))
    return rng.choice(np.array(values), size=shape)


ROLES = ["mask", "inklabels"]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("fmt", ["png", "tif"])
@settings(max_examples=12, **FUZZ)
@given(mode=st.sampled_from(MODES), size=sizes, data=st.data())
def test_companion_image(role, fmt, mode, size, data):
    array = _array(data.draw, _shape(size))
    with scratch() as root:
        folder = write_segment(root)
        name = f"{SEG_ID}_{role}.{fmt}"
        (folder / name).write_bytes(image_bytes(array, mode, fmt))

        def use() -> None:
            seg = open_segment(folder)
            seg.read_mask()
            if seg.inklabels is not None:
                np.asarray(seg.inklabels)

        check_input(
            use,
            name,
            f"{role} {fmt.upper()} of mode {mode}",
            "open_segment, read_mask, inklabels; sizes same, +-1 px, transposed, half",
            [root],
        )


@pytest.mark.parametrize("fmt", ["png", "tif"])
@settings(max_examples=15, **FUZZ)
@given(mode=st.sampled_from(MODES), size=sizes, data=st.data())
def test_training_labels(fmt, mode, size, data):
    """Labels given by path (train --labels): read against the segment's shape."""
    array = _array(data.draw, _shape(size))
    with scratch() as root:
        folder = write_segment(root)
        path = root / f"painted.{fmt}"
        path.write_bytes(image_bytes(array, mode, fmt))
        seg = open_segment(folder)
        check_input(
            lambda: read_segment_labels(seg, path),
            path.name,
            f"training labels {fmt.upper()} of mode {mode}",
            "read_segment_labels (train --labels); sizes same, +-1 px, transposed, half",
            [root],
        )


@pytest.mark.parametrize("kind", ["float labels with NaN", "negative int16 labels"])
def test_labels_with_values_outside_the_encodings(kind, tmp_path):
    array = np.zeros(SHAPE[1:], np.float32 if "float" in kind else np.int16)
    array[:4] = np.nan if "float" in kind else -1
    array[4:8] = 1
    tifffile.imwrite(tmp_path / "l.tif", array)
    check_input(
        lambda: labels_io.read_labels(tmp_path / "l.tif"),
        "l.tif",
        f"labels TIFF: {kind}",
        "read_labels (evaluate --truth)",
        [tmp_path],
        may_read=False,
    )


@pytest.mark.parametrize("role", ["mask", "inklabels", "supervision_mask"])
@settings(max_examples=6, **FUZZ)
@given(
    claim=st.sampled_from([(24, 41), (25, 40), (100000, 100000), (2**31 - 1, 1), (1, 2**31 - 1)])
)
def test_png_header_claiming_another_size(role, claim):
    """A header size that differs from the segment is refused before any pixel is decoded
    (the pixel data here would not even fill the claimed size)."""
    ink = np.zeros(SHAPE[1:], np.uint8)
    ink[2:6, 2:9] = 255
    with scratch() as root:
        folder = write_segment(root)
        for other in ("inklabels", "supervision_mask"):
            if other != role:
                Image.fromarray(ink).save(folder / f"{SEG_ID}_{other}.png")
        name = f"{SEG_ID}_{role}.png"
        (folder / name).write_bytes(png_with_size(image_bytes(ink, "L", "png"), *claim))

        def use() -> None:
            seg = open_segment(folder)
            seg.read_mask()
            read_segment_labels(seg, folder / f"{SEG_ID}_inklabels.png")

        error = check_input(
            use,
            name,
            f"{role} PNG whose header claims {claim[0]} x {claim[1]} px",
            "open_segment, read_mask, villa labels",
            [root],
            may_read=False,
        )
    # refused from the header: decoding first would have failed on the truncated pixel data
    assert isinstance(error, LabelsError) and ("does not match" in str(error)), error


@pytest.mark.parametrize("fmt", ["png", "tif"])
def test_training_labels_header_of_another_size_refused_before_decoding(fmt, tmp_path):
    """``train --labels`` with a header that disagrees with the segment: refused unread (the
    pixel data is garbage, so a decode would raise CorruptFileError instead)."""
    folder = write_segment(tmp_path)
    path = tmp_path / f"painted.{fmt}"
    data = image_bytes(np.ones(SHAPE[1:]), "L", fmt)
    if fmt == "png":
        data = png_with_size(data, 30000, 30000)
    else:
        from test_fuzz_tiff import patch_tag

        data = patch_tag(patch_tag(data, "ImageLength", 30000), "ImageWidth", 30000)
    path.write_bytes(data)
    seg = open_segment(folder)
    error = check_input(
        lambda: read_segment_labels(seg, path), path.name,
        f"training labels {fmt.upper()} whose header claims 30000 x 30000 px",
        "read_segment_labels (train --labels)", [tmp_path], may_read=False,
    )  # fmt: skip
    assert isinstance(error, LabelsError) and "does not match" in str(error), error


def test_villa_supervision_of_another_size(tmp_path):
    folder = write_segment(tmp_path)
    Image.fromarray(np.zeros(SHAPE[1:], np.uint8)).save(folder / f"{SEG_ID}_inklabels.png")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(folder / f"{SEG_ID}_supervision_mask.png")
    seg = open_segment(folder)
    check_input(
        lambda: read_segment_labels(seg, folder / f"{SEG_ID}_inklabels.png"),
        f"{SEG_ID}_supervision_mask.png",
        "villa supervision mask of another size than its inklabels",
        "read_segment_labels (villa pair)",
        [tmp_path],
        may_read=False,
    )


@pytest.mark.parametrize(
    "kind", ["zero-length PNG", "truncated PNG", "PNG with a bad CRC", "text file named .png"]
)
def test_broken_png_mask(kind, tmp_path):
    folder = write_segment(tmp_path)
    good = image_bytes(np.full(SHAPE[1:], 255), "L", "png")
    content = {
        "zero-length PNG": b"",
        "truncated PNG": good[: len(good) // 2],
        "PNG with a bad CRC": good[:30] + bytes([good[30] ^ 0xFF]) + good[31:],
        "text file named .png": b"not an image\n",
    }[kind]
    (folder / f"{SEG_ID}_mask.png").write_bytes(content)
    check_input(
        lambda: open_segment(folder).read_mask(),
        f"{SEG_ID}_mask.png",
        f"mask: {kind}",
        "open_segment, read_mask",
        [tmp_path],
    )

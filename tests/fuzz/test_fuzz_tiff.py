"""Fuzzed TIFF layers: truncated, wrong or huge sizes in the header, odd bit depths, tiled and
compressed variants, zero-length files. Opening and reading the segment either works or gives
one of our one-line errors naming the layer file, and writes nothing."""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import example, given, settings
from hypothesis import strategies as st
from records import FUZZ, check_input, scratch

from napari_inkdetect.io.segment import open_segment

SHAPE = (3, 24, 40)
WHERE = "open_segment + read_block (layer folder)"
COMPRESSIONS = (None, "zlib", "lzw", "packbits", "zstd")


def tiff_bytes(plane: np.ndarray, compression: str | None, tiled: bool) -> bytes:
    buf = io.BytesIO()
    kwargs = {"tile": (16, 16)} if tiled else {"rowsperstrip": 8}
    tifffile.imwrite(buf, plane, compression=compression, **kwargs)
    return buf.getvalue()


def patch_tag(data: bytes, name: str, value: int, index: int = 0) -> bytes:
    """Overwrite value ``index`` of tag ``name`` of the first page (no other change)."""
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        tag = tif.pages[0].tags[name]
        fmt = {3: "H", 4: "I", 16: "Q"}[int(tag.dtype)]
        index = min(index, tag.count - 1)
        order, offset = tif.byteorder, tag.valueoffset + index * struct.calcsize(fmt)
    out = bytearray(data)
    struct.pack_into(order + fmt, out, offset, value % (1 << (8 * struct.calcsize(fmt))))
    return bytes(out)


def data_offset(data: bytes) -> int:
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        return int(min(o for o in tif.pages[0].dataoffsets))


def write_folder(root: Path, damaged: int, content: bytes, base: list[bytes]) -> Path:
    folder = root / "seg"
    folder.mkdir()
    for z, data in enumerate(base):
        (folder / f"{z:02d}.tif").write_bytes(content if z == damaged else data)
    return folder


def open_and_read(folder: Path) -> None:
    seg = open_segment(folder)
    nz, ny, nx = seg.shape
    seg.read_block((0, nz), (0, min(ny, 32)), (0, min(nx, 32)))
    np.asarray(seg.volume[:, : min(ny, 8), : min(nx, 8)])
    seg.contrast_limits(n_blocks=2, block=16)


def _mutate(kind: str, data: bytes, draw) -> bytes:
    if kind == "zero-length layer file":
        return b""
    if kind == "truncated at a random byte":
        return data[: draw(st.integers(0, len(data) - 1))]
    if kind == "bytes flipped in the header":
        out = bytearray(data)
        for pos in draw(st.lists(st.integers(0, min(len(data), 200) - 1), min_size=1, max_size=6)):
            out[pos] ^= draw(st.integers(1, 255))
        return bytes(out)
    if kind == "bytes flipped in the pixel data":
        out, start = bytearray(data), data_offset(data)
        for pos in draw(st.lists(st.integers(start, len(data) - 1), min_size=1, max_size=8)):
            out[pos] ^= draw(st.integers(1, 255))
        return bytes(out)
    if kind == "huge width or height in the header":
        name = draw(st.sampled_from(["ImageWidth", "ImageLength"]))
        return patch_tag(data, name, draw(st.sampled_from([65535, 2**31 - 1, 2**32 - 1, 10**6])))
    if kind == "width or height off by a few pixels":
        name = draw(st.sampled_from(["ImageWidth", "ImageLength"]))
        size = SHAPE[2] if name == "ImageWidth" else SHAPE[1]
        return patch_tag(data, name, size + draw(st.sampled_from([-3, -1, 1, 5])))
    if kind == "zero width or height in the header":
        return patch_tag(data, draw(st.sampled_from(["ImageWidth", "ImageLength"])), 0)
    if kind == "odd bit depth in the header":
        return patch_tag(data, "BitsPerSample", draw(st.sampled_from([0, 1, 4, 12, 24, 64, 255])))
    if kind == "strip offsets past the end of the file":
        name = "TileOffsets" if _tiled(data) else "StripOffsets"
        return patch_tag(data, name, len(data) + draw(st.integers(0, 10**6)))
    if kind == "strip byte counts claiming gigabytes":
        name = "TileByteCounts" if _tiled(data) else "StripByteCounts"
        return patch_tag(data, name, draw(st.sampled_from([2**31, 2**32 - 1, 10**9])))
    raise AssertionError(kind)


def _tiled(data: bytes) -> bool:
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        return tif.pages[0].is_tiled


KINDS = [
    "zero-length layer file",
    "truncated at a random byte",
    "bytes flipped in the header",
    "bytes flipped in the pixel data",
    "huge width or height in the header",
    "width or height off by a few pixels",
    "zero width or height in the header",
    "odd bit depth in the header",
    "strip offsets past the end of the file",
    "strip byte counts claiming gigabytes",
]


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=6, **FUZZ)
@given(
    layout=st.tuples(st.sampled_from(COMPRESSIONS), st.booleans()),
    damaged=st.integers(0, SHAPE[0] - 1),
    data=st.data(),
)
def test_damaged_layer(kind, layout, damaged, data):
    compression, tiled = layout
    volume = np.random.default_rng(damaged).integers(0, 65535, SHAPE, dtype=np.uint16)
    base = [tiff_bytes(p, compression, tiled) for p in volume]
    content = _mutate(kind, base[damaged], data.draw)
    with scratch() as root:
        folder = write_folder(root, damaged, content, base)
        check_input(
            lambda: open_and_read(folder),
            f"{damaged:02d}.tif",
            f"TIFF layer: {kind}",
            f"{WHERE}; raw/zlib/lzw/packbits/zstd, strips or tiles",
            [root, Path(os.environ["NAPARI_INKDETECT_CACHE"])],
        )


ODD_DTYPES = [np.int16, np.float32, np.float64, np.uint32, np.int8, np.bool_, np.complex64]


@settings(max_examples=10, **FUZZ)
@given(dtype=st.sampled_from(ODD_DTYPES), compression=st.sampled_from(COMPRESSIONS[:3]))
@example(dtype=np.float32, compression=None)
def test_every_layer_of_an_unsupported_dtype(dtype, compression):
    plane = np.ones(SHAPE[1:], dtype)
    with scratch() as root:
        folder = write_folder(root, -1, b"", [tiff_bytes(plane, compression, False)] * 2)
        error = check_input(
            lambda: open_and_read(folder),
            "seg",
            "TIFF layers of an unsupported dtype (int16, float, bool, complex...)",
            WHERE,
            [root],
            may_read=False,
        )
    assert "uint8 or uint16" in str(error)


@pytest.mark.parametrize(
    "kind",
    ["RGB layer (3 samples per pixel)", "multi-page file as one layer", "PNG renamed to .tif"],
)
def test_layer_of_the_wrong_kind(kind, tmp_path):
    plane = np.ones(SHAPE[1:], np.uint16)
    good = tiff_bytes(plane, None, False)
    buf = io.BytesIO()
    if kind.startswith("RGB"):
        tifffile.imwrite(buf, np.ones((*SHAPE[1:], 3), np.uint8), photometric="rgb")
    elif kind.startswith("multi-page"):
        tifffile.imwrite(buf, np.ones((2, *SHAPE[1:]), np.uint16))
    else:
        from PIL import Image

        Image.fromarray(np.ones(SHAPE[1:], np.uint8)).save(buf, format="PNG")
    folder = write_folder(tmp_path, 1, buf.getvalue(), [good] * 3)
    check_input(lambda: open_and_read(folder), "01.tif", f"TIFF layer: {kind}", WHERE, [tmp_path])


@pytest.mark.parametrize(
    "kind", ["truncated at a random byte", "huge width or height in the header"]
)
@settings(max_examples=6, **FUZZ)
@given(data=st.data())
def test_damaged_multipage_volume(kind, data):
    volume = np.random.default_rng(0).integers(0, 65535, SHAPE, dtype=np.uint16)
    buf = io.BytesIO()
    compression = data.draw(st.sampled_from([None, "zlib"]))
    tifffile.imwrite(buf, volume, compression=compression, photometric="minisblack")
    content = _mutate(kind, buf.getvalue(), data.draw)
    with scratch() as root:
        (root / "vol.tif").write_bytes(content)
        check_input(
            lambda: open_and_read(root / "vol.tif"),
            "vol.tif",
            f"multi-page TIFF volume: {kind}",
            "open_segment + read_block (multi-page TIFF)",
            [root],
        )

"""Write the regression corpus: one small file per input the fuzz tests found mishandled
before issue 14's fixes (each fails on the code before them: a traceback, or the hang of
``zarr/shape-of-2-pow-40-rows``). Run once; the files are committed. ``test_fuzz_corpus.py``
feeds each file to the reader of its folder. Cases that need a full-size model (metadata
values that only break a loadable checkpoint) are explicit tests in the fuzz files instead."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import tifffile
import torch
from PIL import Image
from safetensors.torch import save

HERE = Path(__file__).parent
SHAPE = (24, 40)  # (Y, X) of the segments the corpus test builds


def _tiff_without_pages() -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.ones(SHAPE, np.uint16))
    data = bytearray(buf.getvalue())
    struct.pack_into("<I", data, 4, len(data) + 4096)  # first IFD past the end: no page
    return bytes(data)


def _png_claiming(height: int, width: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros(SHAPE, np.uint8)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _nan_labels() -> bytes:
    labels = np.zeros(SHAPE, np.float32)
    labels[:4], labels[4:8], labels[8:12] = np.nan, 1, 2
    buf = io.BytesIO()
    tifffile.imwrite(buf, labels)
    return buf.getvalue()


def _safetensors(metadata: str) -> bytes:
    return save({"encoder.conv1.weight": torch.zeros(1)}, {"napari_inkdetect": metadata})


def _info(**changes) -> str:
    info = {
        "arch": "resnet10",
        "width": 0.125,
        "in_layers": 8,
        "tile_size": 64,
        "format_version": 1,
    }
    return json.dumps({**info, **changes})


def _pth(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _zero_dim_encoder() -> bytes:
    keys = ["encoder.conv1.weight"] + [f"encoder.layer{i}.0.conv1.weight" for i in range(1, 5)]
    return _pth({"model": {k: torch.tensor(1.0) for k in keys}})


FILES = {
    "tiff/first-page-offset-past-the-end.tif": _tiff_without_pages(),
    "labels/supervision_mask-claims-2147483647-rows.png": _png_claiming(2**31 - 1, 1),
    "labels/labels-float-with-nan.tif": _nan_labels(),
    "checkpoints/metadata-is-a-list.safetensors": _safetensors("[1, 2]"),
    "checkpoints/metadata-is-null.safetensors": _safetensors("null"),
    "checkpoints/metadata-format-version-a-string.safetensors": _safetensors(
        _info(format_version="1")
    ),
    "checkpoints/a-text-file.pth": b"this is not a model\n",
    "checkpoints/zero-dim-weights.pth": _zero_dim_encoder(),
    "runs/config-a-list.json": b"[1, 2]",
    "runs/config-torn.json": b'{"segment": "/data/seg", "labels": ',
    "runs/config-null.json": b"null",
    "runs/metrics-torn-last-line.jsonl": b'{"kind": "step", "step": 1, "loss": 0.5}\n{"kind": "st',
    "runs/metrics-not-records.jsonl": b'[1, 2]\nnull\n{"step": "two"}\n',
    "runs/state-a-list.pt": _pth([1, 2]),
    "runs/state-without-optimizer.pt": _pth({"step": 2}),
    "zarr/shape-of-2-pow-40-rows.json": json.dumps({"shape": [3, 2**40, 40]}).encode(),
    "zarr/ome-transforms-a-string.json": json.dumps(
        {
            "multiscales": [
                {"datasets": [{"path": "0", "coordinateTransformations": "0"}], "axes": None}
            ]
        }
    ).encode(),
    "zarr/ome-datasets-not-a-list.json": json.dumps({"multiscales": [{"datasets": 3}]}).encode(),
    "zarr/ome-multiscales-a-string.json": json.dumps({"multiscales": "0"}).encode(),
    "predictions/region-a-string.json": json.dumps({"region": "0,0,64,96"}).encode(),
    "predictions/start-layers-one-too-many.json": json.dumps({"start_layers": [2, 4, 9]}).encode(),
    "predictions/overview-factor-without-array.json": json.dumps(
        {"overview_factors": [2]}
    ).encode(),
    "predictions/fingerprint-a-list.json": json.dumps({"fingerprint": [1]}).encode(),
    "predictions/segment-id-missing.json": json.dumps({"segment_id": None}).encode(),
}

if __name__ == "__main__":
    for name, data in FILES.items():
        (HERE / name).parent.mkdir(parents=True, exist_ok=True)
        (HERE / name).write_bytes(data)
    print(f"{len(FILES)} files, {sum(map(len, FILES.values()))} bytes")

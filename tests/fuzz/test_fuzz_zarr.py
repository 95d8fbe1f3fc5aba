"""Fuzzed zarr and OME-Zarr volumes: metadata that is missing, contradictory or of the wrong
type, wrong axes, nonsense ``coordinateTransformations``, damaged chunks. Opening and reading
either works (with a voxel size that is None or a positive number) or gives one of our one-line
errors naming the store, and writes nothing."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from records import FUZZ, check_input, scratch

from napari_inkdetect.io.segment import open_segment

SHAPE = (3, 24, 40)
WHERE = "open_segment + read_block (zarr)"


def ome_attrs(**dataset: Any) -> dict[str, Any]:
    axes = [{"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"]
    ds = {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [7.91] * 3}]}
    return {"multiscales": [{"version": "0.4", "axes": axes, "datasets": [{**ds, **dataset}]}]}


def make_store(root: Path, kind: str) -> Path:
    path = root / "vol.zarr"
    data = np.arange(np.prod(SHAPE), dtype=np.uint16).reshape(SHAPE)
    if kind == "array v2":
        zarr.open_array(path, mode="w", shape=SHAPE, chunks=(1, 16, 16), dtype="uint16",
                        zarr_format=2)[:] = data  # fmt: skip
        return path
    if kind == "array v3":
        zarr.open_array(path, mode="w", shape=SHAPE, chunks=(1, 16, 16), dtype="uint16")[:] = data
        return path
    group = zarr.open_group(path, mode="w")
    group.create_array("0", shape=SHAPE, chunks=(1, 16, 16), dtype="uint16")[:] = data
    attrs = ome_attrs()
    group.attrs.update({"ome": attrs} if kind == "OME-Zarr 0.5" else attrs)
    return path


def metadata_files(store: Path) -> list[Path]:
    names = ("zarr.json", ".zarray", ".zattrs", ".zgroup")
    return sorted(p for p in store.rglob("*") if p.name in names)


JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=True),
    st.text(max_size=8), st.lists(st.integers(-5, 10**7), max_size=5),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)  # fmt: skip


def _walk(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys / indices) into a JSON value."""
    paths = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            paths += _walk(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            paths += _walk(v, (*prefix, i))
    return paths


def _set(obj: Any, path: tuple, value: Any, delete: bool) -> Any:
    if not path:
        return value
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return obj


KINDS = ["array v2", "array v3", "OME-Zarr 0.4", "OME-Zarr 0.5"]


def open_and_read(store: Path) -> None:
    seg = open_segment(store)
    nz, ny, nx = seg.shape
    seg.read_block((0, nz), (0, min(ny, 32)), (0, min(nx, 32)))
    voxel = seg.voxel_size_um
    assert voxel is None or (math.isfinite(voxel) and voxel > 0), f"voxel size {voxel!r}"


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=15, **FUZZ)
@given(data=st.data())
def test_metadata_value_replaced_or_removed(kind, data):
    with scratch() as root:
        store = make_store(root, kind)
        files = [f for f in metadata_files(store) if _walk(json.loads(f.read_text()))[1:]]
        target = data.draw(st.sampled_from(files))
        meta = json.loads(target.read_text())
        path = data.draw(st.sampled_from(_walk(meta)[1:]))
        delete = data.draw(st.booleans())
        value = None if delete else data.draw(JUNK)
        target.write_text(json.dumps(_set(meta, path, value, delete)))
        what = "removed" if delete else "replaced by junk"
        check_input(
            lambda: open_and_read(store),
            "vol.zarr",
            f"{kind}: a metadata value {what} ({target.name})",
            WHERE,
            [root],
        )


TRANSFORMS = st.lists(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["scale", "translation", "identity", "affine", 3, None])},
        optional={
            "scale": st.one_of(
                st.lists(
                    st.one_of(
                        st.floats(allow_nan=True, allow_infinity=True),
                        st.text(max_size=3),
                        st.none(),
                    ),
                    max_size=5,
                ),
                st.floats(),
                st.text(max_size=3),
            ),
            "translation": st.lists(st.floats(), max_size=4),
        },
    ),
    max_size=3,
)
AXES = st.one_of(
    st.lists(
        st.one_of(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["z", "y", "x", "t", "c", ""])},
                optional={
                    "unit": st.sampled_from(["micrometer", "nanometer", "parsec", 7, None]),
                    "type": st.sampled_from(["space", "time", "channel"]),
                },
            ),
            st.text(max_size=2),
            st.integers(),
        ),
        max_size=5,
    ),
    st.text(max_size=3),
    st.none(),
)


@settings(max_examples=20, **FUZZ)
@given(
    transforms=st.one_of(TRANSFORMS, st.text(max_size=3), st.none()),
    axes=AXES,
    nested=st.booleans(),
)
def test_ome_transforms_and_axes(transforms, axes, nested):
    with scratch() as root:
        store = make_store(root, "OME-Zarr 0.5" if nested else "OME-Zarr 0.4")
        attrs = ome_attrs(coordinateTransformations=transforms)
        attrs["multiscales"][0]["axes"] = axes
        zarr.open_group(store, mode="r+").attrs.put({"ome": attrs} if nested else attrs)
        check_input(
            lambda: open_and_read(store),
            "vol.zarr",
            "OME-Zarr: nonsense coordinateTransformations and axes",
            WHERE,
            [root],
        )


DATASET = st.fixed_dictionaries(
    {}, optional={"path": st.one_of(st.sampled_from(["0", "1", "../..", "/etc", "", "0/c"]), JUNK)}
)
MULTISCALE = st.fixed_dictionaries(
    {}, optional={"datasets": st.one_of(JUNK, st.lists(DATASET, max_size=2))}
)


@settings(max_examples=15, **FUZZ)
@given(
    multiscales=st.one_of(
        st.none(),
        st.text(max_size=3),
        st.integers(),
        st.just([]),
        st.lists(JUNK, max_size=2),
        st.lists(MULTISCALE, max_size=2),
    )
)
def test_ome_multiscales_structure(multiscales):
    with scratch() as root:
        store = make_store(root, "OME-Zarr 0.4")
        zarr.open_group(store, mode="r+").attrs.put({"multiscales": multiscales})
        check_input(
            lambda: open_and_read(store),
            "vol.zarr",
            "OME-Zarr: multiscales / datasets / path missing, empty or of the wrong type",
            WHERE,
            [root],
        )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "damage", ["metadata not JSON", "metadata truncated", "metadata empty", "chunk bytes garbage"]
)
def test_damaged_files(kind, damage, tmp_path):
    store = make_store(tmp_path, kind)
    if damage == "chunk bytes garbage":
        chunk = next(p for p in sorted(store.rglob("*")) if p.is_file() and "json" not in p.name
                     and not p.name.startswith(".z"))  # fmt: skip
        chunk.write_bytes(b"\x00garbage" * 7)
    else:
        target = metadata_files(store)[-1]
        text = target.read_text()
        target.write_text({"metadata not JSON": "{not json", "metadata empty": "",
                           "metadata truncated": text[: len(text) // 2]}[damage])  # fmt: skip
    check_input(
        lambda: open_and_read(store),
        "vol.zarr",
        f"{kind}: {damage}",
        WHERE,
        [tmp_path],
    )


@pytest.mark.parametrize(
    ("shape", "case"),
    [
        ((24, 40), "2-D array"),
        ((2, 3, 24, 40), "4-D array with a leading axis > 1"),
        ((1, 3, 24, 40), "4-D array with a leading axis of 1"),
        ((3, 0, 40), "array with an empty axis"),
    ],
)
def test_arrays_of_the_wrong_dimensionality(shape, case, tmp_path):
    zarr.open_array(tmp_path / "vol.zarr", mode="w", shape=shape, dtype="uint16")
    check_input(
        lambda: open_and_read(tmp_path / "vol.zarr"), "vol.zarr", f"zarr: {case}", WHERE,
        [tmp_path],
    )  # fmt: skip


@pytest.mark.parametrize("dtype", ["float32", "int64", "bool", "uint32", "complex64"])
def test_arrays_of_an_unsupported_dtype(dtype, tmp_path):
    zarr.open_array(tmp_path / "vol.zarr", mode="w", shape=SHAPE, dtype=dtype)
    check_input(
        lambda: open_and_read(tmp_path / "vol.zarr"), "vol.zarr", f"zarr array of dtype {dtype}",
        WHERE, [tmp_path], may_read=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    "shape", [(3, 2**40, 40), (3, 24, 2**31), (2**20, 24, 40)], ids=["Y 2^40", "X 2^31", "Z 2^20"]
)
def test_metadata_claiming_an_enormous_volume(shape, tmp_path):
    """Found by the fuzzer: before, open_segment built a dask index of every chunk of the
    claimed size (minutes and gigabytes of memory) before reading a byte."""
    store = make_store(tmp_path, "array v3")
    meta = json.loads((store / "zarr.json").read_text())
    meta["shape"] = list(shape)
    (store / "zarr.json").write_text(json.dumps(meta))
    error = check_input(
        lambda: open_and_read(store), "vol.zarr", "zarr metadata claiming an enormous volume",
        WHERE, [tmp_path], may_read=False,
    )  # fmt: skip
    assert "probably damaged" in str(error)

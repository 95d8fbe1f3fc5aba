"""Fuzzed checkpoint files: truncated safetensors, a header that claims gigabytes, damaged
header JSON and metadata, pickles holding unexpected objects or code. Loading either works or
gives our one-line CheckpointError naming the file, runs no code and writes nothing."""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from records import FUZZ, check_input, scratch

from napari_inkdetect.models import load_checkpoint
from napari_inkdetect.models.checkpoints import METADATA_KEY, read_checkpoint_info

WHERE = "load_checkpoint, read_checkpoint_info"
JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64), st.floats(allow_nan=True),
    st.text(max_size=6), st.lists(st.integers(-3, 2**40), max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)  # fmt: skip


def load_all(path: Path) -> None:
    read_checkpoint_info(path)
    model, _ = load_checkpoint(path)
    load_checkpoint(path, require_complete=True)
    del model


def split_safetensors(data: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join_safetensors(header: dict[str, Any], body: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


@pytest.fixture(scope="module")
def ours(artefacts) -> bytes:
    return artefacts["checkpoint"].read_bytes()


@pytest.mark.parametrize("kind", ["safetensors", "torch zip (.pth)"])
@settings(max_examples=10, **FUZZ)
@given(cut=st.floats(0, 0.999))
def test_truncated(ours, kind, cut):
    data = ours if kind == "safetensors" else _pth({"model": _state(ours)})
    with scratch() as root:
        path = root / ("m.safetensors" if kind == "safetensors" else "m.pth")
        path.write_bytes(data[: int(len(data) * cut)])
        check_input(lambda: load_all(path), path.name, f"{kind} truncated", WHERE, [root],
                    may_read=False)  # fmt: skip


@settings(max_examples=10, **FUZZ)
@given(claim=st.sampled_from([2**30, 2**33, 2**40, 2**63, 2**64 - 1]), delta=st.integers(-8, 8))
def test_header_length_claiming_gigabytes(ours, claim, delta):
    with scratch() as root:
        path = root / "m.safetensors"
        path.write_bytes(struct.pack("<Q", max(0, claim + delta) % 2**64) + ours[8:])
        check_input(lambda: load_all(path), path.name,
                    "safetensors header length claiming gigabytes", WHERE, [root],
                    may_read=False)  # fmt: skip


@settings(max_examples=10, **FUZZ)
@given(delta=st.integers(-40, 40).filter(lambda d: d != 0))
def test_header_length_slightly_off(ours, delta):
    (n,) = struct.unpack("<Q", ours[:8])
    with scratch() as root:
        path = root / "m.safetensors"
        path.write_bytes(struct.pack("<Q", n + delta) + ours[8:])
        check_input(lambda: load_all(path), path.name, "safetensors header length off by a few",
                    WHERE, [root])  # fmt: skip


TENSOR_FIELDS = ["dtype", "shape", "data_offsets"]


@settings(max_examples=25, **FUZZ)
@given(data=st.data(), value=JUNK)
def test_tensor_entry_in_the_header(ours, data, value):
    header, body = split_safetensors(ours)
    name = data.draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
    field = data.draw(st.sampled_from([*TENSOR_FIELDS, "(entry removed)"]))
    if field == "(entry removed)":
        del header[name]
    else:
        header[name][field] = value
    with scratch() as root:
        path = root / "m.safetensors"
        path.write_bytes(join_safetensors(header, body))
        check_input(lambda: load_all(path), path.name,
                    f"safetensors header: a tensor's {field} junk", WHERE, [root])  # fmt: skip


INFO_FIELDS = ["arch", "width", "in_chans", "in_layers", "tile_size", "scale", "depth_scale",
               "depth_reverse", "start_layer", "head", "normalisation", "provenance",
               "format_version"]  # fmt: skip


@pytest.mark.parametrize("field", INFO_FIELDS)
@settings(max_examples=8, **FUZZ)
@given(value=JUNK)
def test_metadata_field(ours, field, value):
    """Our metadata JSON with one field replaced: either harmless or refused."""
    header, body = split_safetensors(ours)
    info = json.loads(header["__metadata__"][METADATA_KEY])
    info[field] = value
    header["__metadata__"][METADATA_KEY] = json.dumps(info)
    with scratch() as root:
        path = root / "m.safetensors"
        path.write_bytes(join_safetensors(header, body))

        def use() -> None:
            load_all(path)
            model, _ = load_checkpoint(path)
            _check_usable(model.info)

        check_input(use, path.name, f"checkpoint metadata: {field} junk", WHERE, [root])


def _check_usable(info) -> None:
    """What a loaded checkpoint promises: the values predict and train use are sane."""
    assert isinstance(info.in_layers, int) and info.in_layers >= 1, info.in_layers
    assert isinstance(info.tile_size, int) and info.tile_size >= 1, info.tile_size
    assert isinstance(info.scale, float | int) and info.scale > 0, info.scale
    assert isinstance(info.normalisation, dict), info.normalisation
    assert isinstance(info.provenance, dict), info.provenance


@pytest.mark.parametrize(
    "metadata",
    ["{not json", "[1, 2]", "null", '"arch"', "{}", json.dumps({"arch": "resnet9000"})],
    ids=["not JSON", "a list", "null", "a string", "no arch", "unknown arch"],
)
def test_metadata_unreadable(ours, metadata, tmp_path):
    header, body = split_safetensors(ours)
    header["__metadata__"][METADATA_KEY] = metadata
    path = tmp_path / "m.safetensors"
    path.write_bytes(join_safetensors(header, body))
    check_input(lambda: load_all(path), path.name, f"checkpoint metadata: {metadata[:12]!r}",
                WHERE, [tmp_path], may_read=False)  # fmt: skip


def _state(ours: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(ours)


def _pth(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


def _raw_pickle(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=2)


def _pickles(ours: bytes) -> dict[str, bytes]:
    state = _state(ours)
    first = next(k for k, v in state.items() if v.dim() >= 2)
    zero_d = {k: torch.tensor(1.0) for k in state}
    empty = {k: torch.zeros(0) for k in state}
    return {
        "a list": _pth([1, 2, 3]),
        "an int": _pth(7),
        "None": _pth(None),
        "a string": _pth("model"),
        "a bare tensor": _pth(torch.zeros(3)),
        "a dict of ints": _pth({"model": {"a": 1}}),
        "a dict with int keys": _pth({1: torch.zeros(1)}),
        "0-d tensors for every weight": _pth({"model": zero_d}),
        "empty tensors for every weight": _pth({"model": empty}),
        "complex weights": _pth({"model": {k: v.to(torch.complex64) for k, v in state.items()}}),
        "bool weights": _pth({"model": {k: v.bool() for k, v in state.items()}}),
        "a weight of the wrong rank": _pth({"model": {**state, first: state[first][0]}}),
        "a Kinetics encoder with a 2-D conv1": _pth(
            {
                "state_dict": {
                    "conv1.weight": torch.zeros(8, 3),
                    "layer1.0.conv1.weight": torch.zeros(1),
                }
            }
        ),
        "code to run (os.system), raw pickle": _raw_pickle(_Evil()),
        "code to run (os.system), torch zip": _pth(_Evil()),
        "a numpy array": _pth({"model": {"w": __import__("numpy").zeros(3)}}),
        "a set": _raw_pickle({1, 2}),
        "a zip that is not a torch archive": _zip(),
        "random bytes": bytes(range(256)) * 4,
        "a text file": b"this is not a model\n",
        "zero-length": b"",
    }


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("data.pkl", b"garbage")
    return buf.getvalue()


PICKLE_CASES = [
    "a list", "an int", "None", "a string", "a bare tensor", "a dict of ints",
    "a dict with int keys", "0-d tensors for every weight", "empty tensors for every weight",
    "complex weights", "bool weights", "a weight of the wrong rank",
    "a Kinetics encoder with a 2-D conv1", "code to run (os.system), raw pickle",
    "code to run (os.system), torch zip", "a numpy array", "a set",
    "a zip that is not a torch archive", "random bytes", "a text file", "zero-length",
]  # fmt: skip


@pytest.mark.parametrize("case", PICKLE_CASES)
def test_pickle_of_unexpected_objects(ours, case, tmp_path):
    path = tmp_path / "m.pth"
    path.write_bytes(_pickles(ours)[case])
    error = check_input(lambda: load_all(path), path.name, f"torch file holding {case}", WHERE,
                        [tmp_path], may_read=False)  # fmt: skip
    if "code to run" in case:
        assert "refused" in str(error) and "os.system" in str(error).replace("posix", "os")

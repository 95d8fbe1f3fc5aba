"""Checkpoint loading: every known file kind, refusals, and our own safetensors format."""

# ruff: noqa: F811  (pytest fixtures imported from model_fixtures are redefined as arguments)
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

# The fixtures `golden` and `layouts` are imported from the helper module (no conftest here,
# so that `import conftest` in other test folders keeps meaning tests/conftest.py).
from model_fixtures import arch_of_entry, golden, golden_state, layouts, load_layouts  # noqa: F401
from safetensors.torch import save_file

from napari_inkdetect.errors import CheckpointError, ConfigError
from napari_inkdetect.models import (
    CheckpointInfo,
    InkDetector,
    load_checkpoint,
    read_checkpoint_metadata,
    save_checkpoint,
)
from napari_inkdetect.models import checkpoints as ckpt_module
from napari_inkdetect.models.checkpoints import read_checkpoint_info, recommended_threshold

LAYOUT_ENTRIES = list(load_layouts()) or ["(layouts missing)"]
SMALL = {"resnet10"}  # built for real on the CPU; the others on the meta device


def _synthetic_state(keys: dict[str, list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Tensors of the layout's shapes; big ones are stride-0 views of one value (tiny files)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in keys.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("conv1.weight") and len(shape) == 5 and "layer" not in key:
            state[key] = torch.randn(shape, generator=gen)  # the stem: real values, to sum
        else:
            state[key] = torch.rand((), generator=gen).expand(shape)
    return state


@pytest.mark.parametrize("entry", LAYOUT_ENTRIES)
def test_synthetic_file_of_every_layout_loads(entry, layouts, tmp_path):
    layout = layouts[entry]
    arch, container = arch_of_entry(entry), layout["container_key"]
    state = _synthetic_state(layout["keys"])
    path = tmp_path / entry.split("/")[-1]
    torch.save({container: state, "epoch": 200, "arch": "whatever"}, path)
    assert path.stat().st_size < 5e6  # the stride-0 trick keeps even ResNet-200 small

    device = "cpu" if arch in SMALL else "meta"
    model, report = load_checkpoint(path, device=device)

    assert (report.arch, report.width, model.arch, model.width) == (arch, 1.0, arch, 1.0)
    assert report.container == container
    model_keys = set(model.state_dict())
    if container == "state_dict":  # Kinetics-pretrained encoder
        assert report.kind == "pretrained_encoder"
        assert report.stripped_prefix == ("module." if "resnext" in entry else None)
        assert set(report.ignored) == {"encoder.fc.weight", "encoder.fc.bias"}
        decoder = {k for k in model_keys if k.startswith("decoder.")}
        assert set(report.initialised) == decoder | {"encoder.fc.weight", "encoder.fc.bias"}
        assert len(report.loaded) == len(layout["keys"]) - 2
        assert any("summed 3 input channels" in note for note in report.adapted)
        assert not report.complete
    else:  # trained ink model
        assert report.kind == "ink_model"
        assert (report.initialised, report.ignored, report.adapted) == ([], [], [])
        assert set(report.loaded) == model_keys == set(layout["keys"])
        assert report.complete
    if device == "cpu":
        prefix = "module." if "resnext" in entry else ""
        stem = state[f"{prefix}conv1.weight"]
        loaded = model.state_dict()
        assert torch.allclose(loaded["encoder.conv1.weight"], stem.sum(1, keepdim=True), atol=1e-6)
        key = "layer4.0.conv2.weight"
        assert torch.equal(loaded[f"encoder.{key}"], state[prefix + key])
        assert loaded["encoder.bn1.num_batches_tracked"].item() == 7


def _golden_file(golden, tmp_path, container="model", **edits):
    state = golden_state(golden)
    state.update(edits)
    path = tmp_path / "ink.pth"
    torch.save({container: {f"module.{k}": v for k, v in state.items()}}, path)
    return path


def test_golden_through_loader_infers_arch_and_width(golden, tmp_path):
    model, report = load_checkpoint(_golden_file(golden, tmp_path))
    assert (report.arch, report.width, report.kind) == (golden["arch"], 0.125, "ink_model")
    assert not model.training
    with torch.no_grad():
        out = model(torch.from_numpy(golden["input"])).numpy()
    assert np.abs(out - golden["output"]).max() < 1e-4


def test_wrong_width_names_first_mismatching_tensor(golden, tmp_path):
    path = _golden_file(golden, tmp_path)
    with pytest.raises(
        CheckpointError,
        match=r"encoder\.conv1\.weight: \(8, 1, 7, 7, 7\) in the file, \(16, 1, 7, 7, 7\)",
    ):
        load_checkpoint(path, width=0.25)


def test_mismatch_deep_in_the_file_is_named(golden, tmp_path):
    path = _golden_file(
        golden,
        tmp_path,
        **{
            "decoder.logit.weight": torch.zeros(3, 8 if golden["arch"] == "resnet10" else 32, 1, 1)
        },
    )
    with pytest.raises(
        CheckpointError, match=r"ink\.pth: shape mismatch at decoder\.logit\.weight: \(3,"
    ):
        load_checkpoint(path)


def test_wrong_depth_is_refused(golden, tmp_path):
    path = _golden_file(golden, tmp_path)
    deeper = "resnet18" if golden["arch"] == "resnet10" else "resnet101"
    with pytest.raises(
        CheckpointError, match=rf"layer\d\.\d.* is missing from the file.*{deeper}"
    ):
        load_checkpoint(path, arch=deeper)


def test_file_deeper_than_chosen_arch_is_refused(tmp_path):
    torch.save({"model": InkDetector("resnet18", 0.125).state_dict()}, tmp_path / "r18.pth")
    with pytest.raises(CheckpointError, match=r"layer1\.1\..* is in the file but not in resnet10"):
        load_checkpoint(tmp_path / "r18.pth", arch="resnet10")


def test_malicious_pickle_is_refused_and_not_run(tmp_path):
    class Payload:
        def __init__(self, marker):
            self.marker = marker

        def __reduce__(self):
            return (os.mkdir, (str(self.marker),))

    marker = tmp_path / "code-was-run"
    for legacy in (False, True):
        path = tmp_path / f"evil{legacy}.pth"
        torch.save(
            {"state_dict": Payload(marker)}, path, _use_new_zipfile_serialization=not legacy
        )
        with pytest.raises(
            CheckpointError, match=r"evil.*needs code execution.*re-save it as weights only"
        ):
            load_checkpoint(path)
        assert not marker.exists()
    # The payload is real: an unrestricted load would have run it.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_missing_corrupt_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "absent.pth")
    good = tmp_path / "good.pth"
    torch.save({"model": InkDetector("resnet10", 0.125).state_dict()}, good)
    cases = {
        "truncated.pth": good.read_bytes()[: good.stat().st_size // 2],
        "empty.pth": b"",
        "junk.pth": b"not a checkpoint at all",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=rf"{name}: corrupt"):
            load_checkpoint(tmp_path / name)
    torch.save({"weights": [1, 2, 3]}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="unrecognised layout"):
        load_checkpoint(tmp_path / "other.pth")
    torch.save({"state_dict": {"backbone.stem.weight": torch.zeros(2)}}, tmp_path / "vit.pth")
    with pytest.raises(CheckpointError, match="vit.pth: unrecognised layout"):
        load_checkpoint(tmp_path / "vit.pth")


@pytest.fixture
def small_model():
    torch.manual_seed(0)
    model = InkDetector("resnet10", width=0.125)
    model.train()
    with torch.no_grad():  # non-trivial BN statistics
        model(torch.randn(2, 1, 8, 64, 64))
    return model.eval()


def test_own_format_round_trip(small_model, tmp_path):
    path = tmp_path / "run" / "best.safetensors"
    provenance = {"labels_sha256": "ab" * 32, "steps": 1200, "metrics": {"f05": 0.61}}
    save_checkpoint(
        path,
        small_model,
        in_layers=16,
        scale=0.5,
        start_layer=20,
        provenance=provenance,
        future_key={"x": 1},
    )
    assert [p.name for p in path.parent.iterdir()] == ["best.safetensors"]  # no temp files left

    meta = read_checkpoint_metadata(path)
    assert (meta["arch"], meta["width"], meta["in_layers"], meta["tile_size"]) == (
        "resnet10",
        0.125,
        16,
        256,
    )
    assert (meta["scale"], meta["start_layer"], meta["depth_reverse"]) == (0.5, 20, False)
    assert meta["normalisation"] == {
        "kind": "uint16_shift8_clip",
        "shift": 8,
        "clip": [50, 200],
        "divide": 255.0,
    }
    assert meta["provenance"]["steps"] == 1200 and "created" in meta["provenance"]
    assert meta["future_key"] == {"x": 1}  # unknown keys survive

    model = InkDetector.from_checkpoint(path)
    assert (model.arch, model.width, model.info.in_layers) == ("resnet10", 0.125, 16)
    x = torch.randn(1, 1, 16, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), small_model(x))
    same, report = load_checkpoint(path)
    assert report.kind == "napari_inkdetect" and report.complete
    # Saving again keeps the metadata of the loaded file.
    save_checkpoint(tmp_path / "again.safetensors", same)
    assert read_checkpoint_metadata(tmp_path / "again.safetensors")["future_key"] == {"x": 1}


def test_info_dict_round_trip():
    info = CheckpointInfo(arch="resnet50", width=0.25, provenance={"steps": 3}, extra={"new": 1})
    data = info.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert CheckpointInfo.from_dict(data) == info


def test_save_is_atomic(small_model, tmp_path, monkeypatch):
    path = tmp_path / "best.safetensors"
    save_checkpoint(path, small_model, provenance={"steps": 1})
    before = path.read_bytes()

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_module, "save_file", crash)
    with pytest.raises(ConfigError, match="disk full"):  # one line for the user (issue 14)
        save_checkpoint(path, small_model, provenance={"steps": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["best.safetensors"]


def test_save_refuses_non_json_metadata(small_model, tmp_path):
    with pytest.raises(ConfigError, match="plain data"):
        save_checkpoint(tmp_path / "x.safetensors", small_model, provenance={"when": object()})
    assert not (tmp_path / "x.safetensors").exists()


def test_own_format_errors(small_model, tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, small_model)
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.safetensors: corrupt"):
        load_checkpoint(tmp_path / "cut.safetensors")
    newer = {"napari_inkdetect": json.dumps({"arch": "resnet10", "format_version": 99})}
    tensors = {k: v.contiguous() for k, v in small_model.state_dict().items()}
    save_file(tensors, str(tmp_path / "new.safetensors"), metadata=newer)
    with pytest.raises(CheckpointError, match="newer napari-inkdetect"):
        load_checkpoint(tmp_path / "new.safetensors")
    with pytest.raises(CheckpointError, match="not a napari-inkdetect checkpoint"):
        torch.save({"model": small_model.state_dict()}, tmp_path / "m.pth")
        read_checkpoint_metadata(tmp_path / "m.pth")


def test_from_checkpoint_refuses_encoder_only(tmp_path):
    encoder = InkDetector("resnet10", 0.125).encoder.state_dict()
    torch.save({"state_dict": encoder}, tmp_path / "pretrained.pth")
    _, report = load_checkpoint(tmp_path / "pretrained.pth")  # fine for finetuning
    assert report.kind == "pretrained_encoder" and not report.complete
    with pytest.raises(CheckpointError, match="only a pretrained encoder"):
        InkDetector.from_checkpoint(tmp_path / "pretrained.pth")
    assert "initialised" in report.summary()


# --------------------------------------------------------------------------- calibrated threshold

VALIDATION = {"f05": 0.41, "best_f05": 0.52, "best_threshold": 0.37, "precision": 0.5,
              "recall": 0.3, "threshold": 0.5, "n_ink": 120, "n_not_ink": 900}  # fmt: skip


def test_recommended_threshold_is_the_validation_best(small_model, tmp_path):
    path = save_checkpoint(
        tmp_path / "best.safetensors", small_model, provenance={"steps": 8, "metrics": VALIDATION}
    )
    info = read_checkpoint_info(path)  # from the header alone
    assert isinstance(info, CheckpointInfo) and info.provenance["metrics"] == VALIDATION
    assert recommended_threshold(info) == 0.37
    assert recommended_threshold(info.to_dict()) == 0.37  # e.g. a prediction's copy of it
    model, _ = load_checkpoint(path)
    assert recommended_threshold(model.info) == 0.37

    plain = save_checkpoint(tmp_path / "plain.safetensors", small_model)
    assert recommended_threshold(read_checkpoint_info(plain)) is None
    no_val = save_checkpoint(  # a run without validation labels: last.safetensors, metrics None
        tmp_path / "last.safetensors", small_model, provenance={"steps": 8, "metrics": None}
    )
    assert recommended_threshold(read_checkpoint_info(no_val)) is None
    assert recommended_threshold(None) is None


@pytest.mark.parametrize("value", [0.0, 1.0, -0.2, 1.5, float("nan"), float("inf"), True, "0.4"])
def test_recommended_threshold_refuses_unusable_values(value):
    info = CheckpointInfo(arch="resnet10", provenance={"metrics": {"best_threshold": value}})
    assert recommended_threshold(info) is None


def test_read_checkpoint_info_of_foreign_files_unpickles_nothing(small_model, tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(tmp_path / "code-was-run"),))

    torch.save({"model": small_model.state_dict(), "extra": Payload()}, tmp_path / "evil.pth")
    assert read_checkpoint_info(tmp_path / "evil.pth") is None
    assert not (tmp_path / "code-was-run").exists()
    tensors = {k: v.contiguous() for k, v in small_model.state_dict().items()}
    save_file(tensors, str(tmp_path / "foreign.safetensors"), metadata={"format": "pt"})
    assert read_checkpoint_info(tmp_path / "foreign.safetensors") is None
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        read_checkpoint_info(tmp_path / "absent.safetensors")

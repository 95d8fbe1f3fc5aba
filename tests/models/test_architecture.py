"""The architectures: exact checkpoint layouts, golden outputs, shapes, registry, FLOPs."""

# ruff: noqa: F811  (pytest fixtures imported from model_fixtures are redefined as arguments)
from __future__ import annotations

import numpy as np
import pytest
import torch

# The fixtures `golden` and `layouts` are imported from the helper module (no conftest here,
# so that `import conftest` in other test folders keeps meaning tests/conftest.py).
from model_fixtures import arch_of_entry, golden, golden_state, layouts, load_layouts  # noqa: F401

from napari_inkdetect.errors import ConfigError
from napari_inkdetect.models import InkDetector, get_model, get_model_info, list_models
from napari_inkdetect.models.registry import canonical_name, conv_flops, count_flops, model_table
from napari_inkdetect.models.resnet3d import build_encoder

LAYOUT_ENTRIES = list(load_layouts()) or ["(layouts missing)"]


def _shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("entry", LAYOUT_ENTRIES)
def test_state_dict_equals_layout(entry, layouts):
    layout = layouts[entry]
    arch = arch_of_entry(entry)
    expected = {k.removeprefix("module."): v for k, v in layout["keys"].items()}
    with torch.device("meta"):
        if layout["container_key"] == "model":  # a trained ink model: the whole detector
            built = InkDetector(arch)
        else:  # a Kinetics-pretrained RGB encoder
            built = build_encoder(arch, in_chans=3)
    shapes = _shapes(built)
    assert list(shapes) == list(expected), "key names or order differ"
    assert shapes == expected


def test_golden_output(golden):
    model = InkDetector(golden["arch"], width=0.125)
    model.load_state_dict(golden_state(golden))
    with torch.no_grad():
        out = model.eval()(torch.from_numpy(golden["input"])).numpy()
    assert out.shape == golden["output"].shape == (2, 2, 64, 64)
    assert np.abs(out - golden["output"]).max() < 1e-4


@pytest.mark.parametrize(
    ("arch", "shape"),
    [
        ("resnet10", (1, 1, 4, 32, 32)),
        ("resnet18", (2, 1, 22, 64, 96)),
        ("resnext101", (1, 1, 5, 64, 32)),
    ],
)
def test_output_shape_any_depth(arch, shape):
    model = InkDetector(arch, width=0.125).eval()
    with torch.no_grad():
        out = model(torch.randn(shape))
    assert out.shape == (shape[0], 2, *shape[-2:])
    assert torch.isfinite(out).all()


def test_width_scales_channels():
    assert InkDetector("resnet50", 0.25).encoder.out_channels == (64, 128, 256, 512)
    assert InkDetector("resnext101", 0.125).encoder.layer1[0].conv2.groups == 4


def test_fresh_init_follows_kenshohara():
    model = InkDetector("resnet10", 0.25)
    w = model.encoder.layer2[0].conv1.weight
    fan_out = w.shape[0] * w[0, 0].numel()
    assert abs(w.std().item() - (2 / fan_out) ** 0.5) < 0.2 * (2 / fan_out) ** 0.5
    assert torch.all(model.encoder.bn1.weight == 1) and torch.all(model.encoder.bn1.bias == 0)


def test_unknown_arch_and_bad_width():
    with pytest.raises(ConfigError, match="valid names: resnet10"):
        InkDetector("resnet11")
    with pytest.raises(ConfigError, match="width"):
        InkDetector("resnet10", width=0)
    with pytest.raises(ConfigError, match="groups"):
        InkDetector("resnext101", width=0.1)


def test_registry_names_and_aliases():
    assert list_models() == [
        "resnet10", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet200",
        "resnext101",
    ]  # fmt: skip
    assert canonical_name("r3d50") == canonical_name("ResNet-50") == "resnet50"
    assert get_model("resnext-101", width=0.125).arch == "resnext101"


@pytest.mark.parametrize("name", ["r3d50", "R3D10", "ResNet-50", "resnext_101", "resnet 18"])
def test_detector_takes_every_spelling_get_model_takes(name):
    with torch.device("meta"):
        direct, zoo = InkDetector(name, width=0.125), get_model(name, width=0.125)
        encoder = build_encoder(name, 0.125)
    assert direct.arch == zoo.arch == canonical_name(name)
    assert _shapes(direct) == _shapes(zoo)
    assert _shapes(direct.encoder) == _shapes(encoder)
    assert repr(direct) == repr(zoo)


def test_detector_and_get_model_refuse_a_name_alike():
    messages = []
    for build in (InkDetector, get_model, canonical_name):
        with pytest.raises(ConfigError, match="valid names: resnet10") as caught:
            build("r3d11")
        messages.append(str(caught.value))
    assert len(set(messages)) == 1


@pytest.mark.parametrize("arch", ["resnet10", "resnet50", "resnext101"])
def test_analytic_flops_match_flop_counter(arch):
    with torch.device("meta"):
        model = InkDetector(arch).eval()
    for tile in [(1, 22, 256, 256), (1, 7, 96, 64)]:
        assert conv_flops(model, tile) == count_flops(model, tile)


def test_model_info_is_counted():
    info = get_model_info("resnet50")
    with torch.device("meta"):
        model = InkDetector("resnet50")
    total = sum(p.numel() for p in model.parameters())
    assert info.params + info.unused_fc_params == total
    assert 150 < info.gflops_per_tile < 175  # 161.7 GFLOPs (2 per multiply-add)
    assert get_model_info("resnet152").gflops_per_tile > info.gflops_per_tile


def test_model_table_lists_every_model():
    table = model_table()
    for name in list_models():
        assert name in table
    assert "GFLOPs" in table

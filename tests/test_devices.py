"""Device choice."""

from __future__ import annotations

import pytest
import torch

from napari_inkdetect.devices import available_devices, resolve_device
from napari_inkdetect.errors import ConfigError


def test_auto_prefers_accelerators_and_cpu_always_listed():
    devices = available_devices()
    assert devices[-1] == "cpu"
    expected = "cuda:0" if torch.cuda.is_available() else devices[0]
    assert str(resolve_device("auto")) == expected
    assert resolve_device("CPU") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_device_is_a_clear_error():
    with pytest.raises(ConfigError, match="device 'cuda:0' is not available here"):
        resolve_device("cuda")

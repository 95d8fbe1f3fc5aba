"""Shared helpers and fixtures for the model tests: checkpoint layouts and golden outputs.

They live in ``../shared/fixtures`` next to the repository; tests that need them are skipped
with a clear reason when that folder is absent (e.g. in an sdist).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURES = Path(__file__).parents[2].parent / "shared" / "fixtures"
LAYOUTS_FILE = FIXTURES / "checkpoint_layouts.json"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared fixture {path} not found (needs ../shared/fixtures next to the repo)")
    return path


def load_layouts() -> dict:
    """The layouts, or ``{}`` when absent (parametrised tests then skip via ``layouts``)."""
    return json.loads(LAYOUTS_FILE.read_text()) if LAYOUTS_FILE.exists() else {}


def arch_of_entry(entry: str) -> str:
    """``kinetics_pretrained/r3d50_KM_200ep.pth`` -> ``resnet50``, etc."""
    name = entry.split("/")[-1]
    if "resnext" in name:
        return "resnext101"
    return "resnet" + re.search(r"(?:r3d|resnet)(\d+)", name).group(1)


@pytest.fixture(scope="session")
def layouts() -> dict:
    return json.loads(_need(LAYOUTS_FILE).read_text())


@pytest.fixture(scope="session", params=["10", "50"])
def golden(request) -> dict[str, np.ndarray]:
    path = _need(FIXTURES / f"golden_segmodel_r3d{request.param}_w0.125.npz")
    with np.load(path) as z:
        data = {k: z[k] for k in z.files}
    data["arch"] = f"resnet{request.param}"
    return data


def golden_state(golden: dict) -> dict[str, torch.Tensor]:
    return {
        k[len("state/") :]: torch.from_numpy(v)
        for k, v in golden.items()
        if k.startswith("state/")
    }

"""The import-linter contracts in pyproject.toml hold, and would catch what they are for: a Qt
import in the core, torch where a stored prediction is only read, and an import circle.

Each breach is made in a copy of the package (one line appended to one module) and checked
with the project's own configuration."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"


def _lint(src: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run([LINT, "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("contracts")
    shutil.copytree(ROOT / "src" / "napari_inkdetect", root / "src" / "napari_inkdetect",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


def test_the_contracts_hold():
    result = _lint(ROOT / "src", ROOT)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "4 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("io/atomic.py", "import qtpy", "The core imports no Qt"),
        ("export/images.py", "import torch", "imports no torch"),
        ("inference/job.py", "import napari_inkdetect.inference.local", "No import circles"),
        ("models/resnet3d.py", "import napari_inkdetect.training", "Layers"),
    ],
)
def test_a_breach_breaks_its_contract(package_copy, module, line, broken):
    path = package_copy / "src" / "napari_inkdetect" / module
    original = path.read_text()
    path.write_text(original + f"\n{line}  # noqa\n")
    try:
        result = _lint(package_copy / "src", package_copy)
    finally:
        path.write_text(original)
    assert result.returncode != 0
    assert f"{broken}" in result.stdout.split("Broken contracts")[-1], result.stdout[-2000:]

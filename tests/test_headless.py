"""The core stays headless: importing it (and running the CLI) pulls in no Qt and no napari."""

from __future__ import annotations

import subprocess
import sys

CORE_MODULES = [
    "napari_inkdetect",
    "napari_inkdetect.io.segment",
    "napari_inkdetect.io.labels",
    "napari_inkdetect.io.pyramid",
    "napari_inkdetect.synthetic",
    "napari_inkdetect.sample",
    "napari_inkdetect.cli",
    "napari_inkdetect.models",
    "napari_inkdetect.training",
    "napari_inkdetect.inference",
    "napari_inkdetect.export",
    "napari_inkdetect.evaluation",
    "napari_inkdetect.processes",
    "napari_inkdetect.metrics",
]
GUI_MODULES = (
    "qtpy",
    "PyQt5",
    "PyQt6",
    "PySide2",
    "PySide6",
    "napari",
    "magicgui",
    "superqt",
    "vispy",
)


def test_core_imports_no_gui_modules():
    code = (
        "import importlib, sys\n"
        f"for m in {CORE_MODULES!r}: importlib.import_module(m)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {GUI_MODULES!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout

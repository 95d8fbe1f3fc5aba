"""The core stays headless: importing any of it (and running the CLI) pulls in no Qt and no
napari, and reading a prediction pulls in no torch. The modules are found by walking the
package, so a new core module is checked without being listed here."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import napari_inkdetect

#: napari's side of the package: the docks, the reader/sample hooks and the app launcher
GUI_SIDE = ("napari_inkdetect._widgets", "napari_inkdetect._napari", "napari_inkdetect._reader")
GUI_MODULES = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "superqt",
               "vispy")  # fmt: skip
#: what reading, exporting and scoring a stored prediction needs: no torch (io, export, scoring)
TORCH_FREE = ("napari_inkdetect.io", "napari_inkdetect.export", "napari_inkdetect.scoring")


def core_modules() -> list[str]:
    """Every module of the package outside napari's side (``__main__`` runs the CLI)."""
    names = [napari_inkdetect.__name__]
    for info in pkgutil.walk_packages(napari_inkdetect.__path__, "napari_inkdetect."):
        if not info.name.startswith(GUI_SIDE) and not info.name.endswith("__main__"):
            names.append(info.name)
    return names


def _imported_after(modules: list[str], roots: tuple[str, ...]) -> list[str]:
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "tops = {m.split('.')[0] for m in sys.modules}\n"
        f"print(json.dumps(sorted(tops & set({roots!r}))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_walk_finds_the_engines():
    found = core_modules()
    for name in ("napari_inkdetect.cli", "napari_inkdetect.inference.predictor",
                 "napari_inkdetect.training.trainer", "napari_inkdetect.export.exporter",
                 "napari_inkdetect.io.prediction_store"):  # fmt: skip
        assert name in found
    assert not any(name.startswith("napari_inkdetect._widgets") for name in found)


def test_core_imports_no_gui_modules():
    assert _imported_after(core_modules(), GUI_MODULES) == []


def test_reading_a_prediction_imports_no_torch():
    readers = [m for m in core_modules() if m.startswith(TORCH_FREE)]
    assert "napari_inkdetect.io.prediction_store" in readers
    assert _imported_after(readers, ("torch",)) == []

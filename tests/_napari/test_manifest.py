"""The npe2 manifest is valid and every contribution it names imports."""

from __future__ import annotations

from npe2 import PluginManifest


def test_manifest_validates_and_imports():
    manifest = PluginManifest.from_distribution("napari-inkdetect")
    manifest.validate_imports()  # raises if a python_name does not resolve
    contributions = manifest.contributions
    assert [r.command for r in contributions.readers] == ["napari-inkdetect.get_reader"]
    assert contributions.writers[0].layer_types == ["labels"]
    assert contributions.sample_data[0].key == "synthetic_crackle"
    assert [w.display_name for w in contributions.widgets] == [
        "Crackle labels",
        "Finetune",
        "Predict",
        "Export",
    ]

"""The GPU suite's CPU parts: every row is a number or says why it did not run, and a check
that fails makes the suite fail (it must never skip silently on a GPU machine)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_suite.py"


@pytest.fixture(scope="module")
def suite():
    sys.path.insert(0, str(SUITE.parent))
    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_cpu_run_prints_every_number_or_why_not(suite, tmp_path, capsys):
    out = tmp_path / "suite.json"
    assert suite.main(["--device", "cpu", "--quick", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    row = results["models"]["resnet10"]
    for mode in ("fp32", "bf16"):
        assert row[mode]["forward_windows_s"] > 0 and row[mode]["train_samples_s"] > 0
    assert row["peak_memory"]["not_run"] == "peak GPU memory needs CUDA"
    assert results["conv3d_bf16_vs_fp32"]["ok"] and results["conv3d_bf16_vs_fp32"]["worst"] > 0
    e2e = results["end_to_end"]
    assert e2e["predict_windows_s"] > 0 and e2e["predict_ratio"] > 0
    assert e2e["train_samples_s"] > 0 and e2e["train_ceiling"] > 0
    assert "DDP needs two or more" in results["ddp"]["not_run"]
    assert results["pinning"]["not_run"] and results["failures"] == []
    printed = capsys.readouterr().out
    assert "fwd win/s" in printed and "conv3d bf16 vs fp32" in printed and "0 failures" in printed


def test_a_check_that_fails_fails_the_suite(suite, tmp_path):
    out = tmp_path / "suite.json"
    code = suite.main(["--device", "cpu", "--quick", "--models", "resnet7", "--json", str(out)])
    assert code == 1
    failures = json.loads(out.read_text())["failures"]
    assert any(f["check"].startswith("resnet7") for f in failures)


def test_cuda_without_cuda_is_refused(suite, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert suite.main(["--device", "cuda", "--quick"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err

"""The prediction engine fixes glibc's heap thresholds (benchmarks/bench_memory.py measures
why); on this Linux machine the call must take effect, and a second call changes nothing."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_bound_heap_takes_effect_once():
    code = (
        "from napari_inkdetect.host_memory import bound_heap\n"
        "print(bound_heap(), bound_heap(), bound_heap.cache_info().misses)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "1"]

"""The bundled sample segment: the synthetic crackle segment, written once to the user cache.

Generating it takes seconds, so it is made on first use and then opened lazily from disk like
any real segment (the sample exercises the real reader, not an in-memory shortcut).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from napari_inkdetect.io.pyramid import default_cache_root

SAMPLE_ID = "synthetic"
SAMPLE_VERSION = 1


def sample_segment_path(seed: int = 0) -> Path:
    """Folder of the sample segment (``<cache>/sample-v1-seed0/synthetic``), made if missing."""
    from napari_inkdetect.synthetic import make_segment, write_segment

    root = default_cache_root() / f"sample-v{SAMPLE_VERSION}-seed{seed}"
    folder = root / SAMPLE_ID
    if folder.is_dir():
        return folder
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".sample-", dir=root.parent))
    try:
        write_segment(make_segment(seed=seed), staging, SAMPLE_ID)
        try:
            staging.rename(root)  # atomic: another process may have won the race, that's fine
        except OSError:
            if not folder.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder

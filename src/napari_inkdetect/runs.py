"""Training run folders on disk, and a run's remaining time in words.

Each finetune writes into its own ``<segment>-<time>`` folder under a root (``DEFAULT_RUNS``
unless the user picks another); "Continue" looks for the newest one of a segment. No Qt: the
Finetune dock and scripts share it.
"""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path

from napari_inkdetect.training.run_files import BEST, CONFIG_FILE, LAST

DEFAULT_RUNS = Path.home() / "inkdetect-runs"
LABEL_FILES = ("train_labels.png", "validation_labels.png")  # what a dock writes into a run


def new_run_dir(root: Path, name: str) -> Path:
    """A new, empty ``<name>-<time>`` folder in ``root`` (``-2``, ``-3``... within a second)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir, n = root / f"{name}-{stamp}", 1
    while run_dir.exists():
        n += 1
        run_dir = root / f"{name}-{stamp}-{n}"
    run_dir.mkdir(parents=True)
    return run_dir


def discard_run_dir(run_dir: Path) -> None:
    """A refused run leaves nothing behind: the label files written for it, then the folder."""
    for name in LABEL_FILES:
        (run_dir / name).unlink(missing_ok=True)
    if run_dir.is_dir() and not any(run_dir.iterdir()):  # anything else in it: leave it
        run_dir.rmdir()


def newest_run_checkpoint(root: Path, name: str, segment: str | None = None) -> Path | None:
    """The checkpoint of the newest run folder ``<name>-<time>`` in ``root`` (of ``segment``
    when its config.json says so): its best.safetensors, else last.safetensors."""
    try:
        runs = [d for d in root.iterdir() if d.name.startswith(f"{name}-") and d.is_dir()]
    except OSError:
        return None
    found = []
    for run in runs:
        path = next((run / f for f in (BEST, LAST) if (run / f).is_file()), None)
        if path is not None and _trained_on(run, segment):
            found.append(path)
    return max(found, key=lambda p: p.stat().st_mtime, default=None)


def _trained_on(run: Path, segment: str | None) -> bool:
    """Whether run folder ``run`` trained on ``segment`` (unreadable config: its name says)."""
    try:
        recorded = json.loads((run / CONFIG_FILE).read_text()).get("segment")
    except (OSError, ValueError, AttributeError):
        return True
    if not recorded or not segment:
        return True
    return Path(recorded).expanduser().resolve() == Path(segment).expanduser().resolve()


def format_eta(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss``; ``--:--`` while the rate is not known yet."""
    if not math.isfinite(seconds):
        return "--:--"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"

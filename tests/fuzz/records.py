"""What the robustness tests tried, and what happened, for ``docs/robustness.md``.

Each check appends one JSON line ``{case, where, expected, observed}`` to a file per test
process in ``$INKDETECT_ROBUSTNESS_RECORDS`` (nothing is written when it is unset). The
observed outcome is recorded *before* the test asserts on it, so a failing check shows up in the
report as what it did ("traceback (ValueError)"), not only as a red test.
``tests/fuzz/report.py`` runs the tests with the variable set and renders the table.

The helpers here also hold the property every fuzz test checks: only the package's own errors
escape, each a single line naming the file, and nothing is written.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from napari_inkdetect.errors import InkDetectError

ENV = "INKDETECT_ROBUSTNESS_RECORDS"
READ_OR_REFUSE = "read, or refused in one line naming the file; nothing written"
REFUSE = "refused in one line naming the file; nothing written"


def record(case: str, where: str, expected: str, observed: str) -> None:
    """Append one tried case to this process's records file (no-op unless ``ENV`` is set)."""
    folder = os.environ.get(ENV)
    if not folder:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    test = os.environ.get("PYTEST_CURRENT_TEST", "").split("::")[0]
    line = {"case": case, "where": where, "expected": expected, "observed": observed, "test": test}
    with (Path(folder) / f"records-{os.getpid()}.jsonl").open("a") as f:
        f.write(json.dumps(line) + "\n")


def describe(exc: BaseException | None) -> str:
    """The observed outcome of a call, in the report's words."""
    if exc is None:
        return "read"
    if isinstance(exc, InkDetectError):
        return f"refused ({type(exc).__name__})"
    if isinstance(exc, AssertionError):
        return f"accepted a wrong result ({str(exc).splitlines()[0][:60] if str(exc) else ''})"
    return f"traceback ({type(exc).__name__})"


def snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folders``, with each file's size and mtime: 'nothing
    written' (a file that came and went, like a run's lock file, leaves no trace)."""
    found: dict[str, tuple[int, int]] = {}
    for folder in folders:
        folder = Path(folder)
        if not folder.exists():
            continue
        for p in [folder, *folder.rglob("*")]:
            st = p.stat()
            found[str(p)] = (st.st_size, st.st_mtime_ns) if p.is_file() else (0, 0)
    return found


def check_input(
    call: Callable[[], Any],
    names: str | list[str],
    case: str,
    where: str,
    watch: list[Path],
    expected: str = READ_OR_REFUSE,
    may_read: bool = True,
    writes: bool = False,
) -> BaseException | None:
    """Run ``call`` on a damaged input and check the fuzz property; returns its error.

    ``names``: the file name(s) the message must mention (any one of them); ``watch``: the
    folders in which nothing may appear or change (not even on success, since reading never
    writes, unless ``writes``: a call that succeeds may write its outputs, one that fails not).
    """
    before = snapshot(*watch)
    error: BaseException | None = None
    try:
        call()
    except Exception as exc:  # what escapes is exactly what is under test
        error = exc
    observed = describe(error)
    names = [names] if isinstance(names, str) else names
    if isinstance(error, InkDetectError):
        text = str(error)
        if "\n" in text:
            observed = f"refused, but in {text.count(chr(10)) + 1} lines"
        elif not any(n in text for n in names):
            observed = f"refused, but the message names none of {names}"
    if error is None and not may_read:
        observed = "accepted (should be refused)"
    if snapshot(*watch) != before and not (writes and error is None):
        observed += ", wrote files"
    record(case, where, expected, observed)
    if error is not None and not isinstance(error, InkDetectError):
        raise error
    assert observed in ("read", f"refused ({type(error).__name__})"), (observed, error)
    return error


@contextlib.contextmanager
def recorded(case: str, where: str, expected: str) -> Iterator[dict[str, str]]:
    """Record a hand-written check: set ``outcome["observed"]`` inside the block; an exception
    escaping the block is recorded as a traceback (or as data lost for a failed assert)."""
    outcome = {"observed": ""}
    try:
        yield outcome
    except AssertionError:
        record(case, where, expected, outcome["observed"] or "data lost (assertion failed)")
        raise
    except InkDetectError as exc:
        record(case, where, expected, outcome["observed"] or f"refused ({type(exc).__name__})")
        raise
    except Exception as exc:
        record(case, where, expected, f"traceback ({type(exc).__name__})")
        raise
    record(case, where, expected, outcome["observed"] or "as expected")


#: settings shared by every fuzz test: derandomised (the same examples every run, on every
#: machine), no example database written, no deadline (CI machines are slow and shared)
FUZZ = {"derandomize": True, "deadline": None, "database": None, "print_blob": False}


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A fresh folder per hypothesis example (``tmp_path`` is shared by all examples)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="inkdetect-fuzz-") as folder:
        yield Path(folder)


@contextlib.contextmanager
def restored(folder: Path) -> Iterator[Path]:
    """``folder`` (flat, e.g. a run folder) to damage in place, restored afterwards to exactly
    what it held (a run resumes only from where it was made: ``out`` is part of its settings)."""
    import shutil

    saved = {p: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    try:
        yield folder
    finally:
        shutil.rmtree(folder)
        folder.mkdir()
        for p, data in saved.items():
            p.write_bytes(data)

"""Atomic file writes: a crash or a killed process never leaves a half-written file behind.

A write that fails because of where it goes (a full disk, a read-only folder, a path under a
regular file, the process's file size limit) raises :class:`~napari_inkdetect.errors.ConfigError`
in one line naming the file, and leaves the previous file (if any) untouched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from napari_inkdetect.errors import ConfigError

#: below this many free bytes a failed write is put down to a full disk
FULL_DISK_BYTES = 1 << 20


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    The temporary file lives in the same folder, so the final ``os.replace`` is a rename within
    one filesystem (atomic on POSIX and Windows). On error the temporary file is removed and the
    previous ``path`` (if any) is untouched.
    """
    path = Path(path)
    make_folder(path.parent)
    try:
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent
        )
    except OSError as exc:
        raise unwritable(path, exc) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():  # mkstemp makes 0600 files: give the usual umask permissions
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except Exception as exc:
        reason = write_failure(exc, tmp)
        if reason is None:
            raise
        raise unwritable(path, reason) from None
    finally:
        if tmp.exists():
            tmp.unlink()


def make_folder(folder: str | os.PathLike, what: str = "folder") -> Path:
    """Create ``folder`` (and its parents) or say in one line why it cannot be."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder}: exists and is not a folder; choose another output {what}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise unwritable(folder, exc, f"cannot create the output {what}") from None
    return folder


def unwritable(
    path: Path, reason: OSError | str, action: str = "cannot be written"
) -> ConfigError:
    """The one-line error for an output that cannot be written, with what to do about it."""
    if isinstance(reason, OSError):
        culprit = _blocking_file(path) if reason.errno in (errno.ENOTDIR, errno.EEXIST) else None
        text = reason.strerror or str(reason) or type(reason).__name__
        if culprit is not None:
            text = f"{culprit} is a file, not a folder"
    else:
        text = reason
    hint = {
        "No space left on device": "free some space or choose another disk",
        "File too large": "the file size limit of this process (ulimit -f) is too small",
        "Read-only file system": "choose an output on a writable disk",
        "Permission denied": "choose a folder you may write to",
    }.get(text, "choose another output")
    return ConfigError(f"{path}: {action} ({text}); {hint}")


def _blocking_file(path: Path) -> Path | None:
    for parent in [path, *path.parents]:
        if parent.exists():
            return parent if not parent.is_dir() else None
    return None


def write_failure(exc: BaseException, tmp: Path) -> str | OSError | None:
    """What went wrong with the disk when a write into ``tmp`` failed, or None when the
    failure is not the disk's (then the original error is re-raised).

    Writers report disk errors differently: Python raises ``OSError``, safetensors a
    ``SafetensorError`` quoting "os error N", torch's zip writer a bare ``RuntimeError``
    ("unexpected pos"); for the latter the disk itself is asked.
    """
    if isinstance(exc, OSError):
        return exc
    found = re.search(r"os error (\d+)", str(exc))
    if found:
        return os.strerror(int(found.group(1)))
    torch_writer = isinstance(exc, RuntimeError) and any(
        text in str(exc) for text in ("unexpected pos", "failed writing")
    )
    return _disk_diagnosis(tmp) if torch_writer else None


def _disk_diagnosis(tmp: Path) -> str | None:
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY and tmp.stat().st_size >= limit:
            return os.strerror(errno.EFBIG)
    except (ImportError, OSError, ValueError):
        pass
    try:
        if shutil.disk_usage(tmp.parent).free < FULL_DISK_BYTES:
            return os.strerror(errno.ENOSPC)
    except OSError:
        return None
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

"""One writer per output: a lock file beside a prediction zarr or a training run folder.

Two runs writing one output corrupt each other silently (two trainings overwrite each other's
checkpoints; two predictions race on done flags), and on a shared GPU server that happens by
accident at 2 am. So a run takes ``.<name>.lock`` next to its output first: created atomically
(``O_CREAT | O_EXCL``, so exactly one of two racing processes gets it), holding the owner's pid,
host, process start time and command as JSON. A second run is refused with a message naming
them. A lock whose owner is gone is *stale* and is taken over: on the same host that is a pid
that no longer runs (or now belongs to another process: the start time differs); a lock of
another host is never guessed at, the message says how to remove it. The file lives beside
the output, not inside it, so replacing an output (``overwrite``) keeps the lock.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from napari_inkdetect.errors import ConfigError
from napari_inkdetect.io.atomic import unwritable

#: a lock file without readable content (its writer died between creating and filling it)
#: is stale once it is this old
UNREADABLE_GRACE_S = 10.0
_HELD: dict[str, str] = {}  # lock path -> token, for the locks this process holds


@dataclass(frozen=True)
class LockOwner:
    """Who holds a lock, as written in the lock file."""

    pid: int
    host: str
    started: str  # when the lock was taken (ISO 8601, UTC)
    command: str
    token: str
    process_start: int | None = None  # /proc/<pid>/stat start time, to notice a reused pid

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, since {self.started[:19]}: {self.command}"


def lock_path(target: str | os.PathLike) -> Path:
    """Where the lock of ``target`` lives: ``.<name>.lock`` in the same folder."""
    target = Path(target)
    return target.parent / f".{target.name}.lock"


def read_owner(lock: Path) -> LockOwner | None:
    """The owner written in ``lock``, or None when it is missing or unreadable."""
    try:
        data = json.loads(Path(lock).read_text())
        return LockOwner(**{k: data[k] for k in LockOwner.__dataclass_fields__ if k in data})
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def owner_alive(owner: LockOwner) -> bool | None:
    """Whether the owner still runs: True/False on this host, None for another host."""
    if owner.host != socket.gethostname():
        return None
    if not isinstance(owner.pid, int) or owner.pid <= 0:
        return False
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    except OSError:
        return False
    state, start = _proc_stat(owner.pid)
    if state == "Z":  # killed, not yet reaped by its parent
        return False
    reused = owner.process_start is not None and start is not None
    return not (reused and start != owner.process_start)


def _proc_stat(pid: int) -> tuple[str | None, int | None]:
    """(state, start time in clock ticks) of a Linux process; (None, None) elsewhere."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None, None
    fields = text[text.rfind(")") + 2 :].split()
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None, None


def check_unlocked(target: str | os.PathLike, what: str = "output") -> None:
    """Refuse ``target`` when another live process holds its lock (a lock held by this
    process, or a stale one, is fine). For writers that do not take the lock themselves."""
    lock = lock_path(target)
    if not lock.exists() or _HELD.get(str(lock)) is not None:
        return
    owner = read_owner(lock)
    if owner is None and _age(lock) >= UNREADABLE_GRACE_S:
        return
    if owner is not None and owner_alive(owner) is False:
        return
    raise _busy(Path(target), lock, owner, what)


class OutputLock:
    """The lock of one output; use as a context manager (``with OutputLock(path):``).

    ``what`` names the output in messages ("prediction", "run folder").
    """

    def __init__(self, target: str | os.PathLike, what: str = "output") -> None:
        self.target = Path(target)
        self.path = lock_path(self.target)
        self.what = what
        self.owner: LockOwner | None = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def acquire(self) -> OutputLock:
        """Take the lock, taking over a stale one; refuse (``ConfigError``) when it is held."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._cannot(exc) from None
        for _ in range(5):
            if self._create():
                return self
            owner = read_owner(self.path)
            if not self._stale(owner):
                raise _busy(self.target, self.path, owner, self.what)
            self._take_over(owner)
        raise ConfigError(
            f"{self.target}: could not take the lock {self.path} (other runs keep taking it); "
            "try again"
        )

    def _create(self) -> bool:
        owner = _me()
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise self._cannot(exc) from None
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(asdict(owner)) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            with contextlib.suppress(OSError):
                self.path.unlink()
            raise self._cannot(exc) from None
        self.owner = owner
        _HELD[str(self.path)] = owner.token
        return True

    def _stale(self, owner: LockOwner | None) -> bool:
        if owner is None:  # being written this instant, or its writer died while writing it
            return _age(self.path) >= UNREADABLE_GRACE_S
        return owner_alive(owner) is False

    def _take_over(self, owner: LockOwner | None) -> None:
        """Remove a stale lock, unless it changed since it was judged stale (another process
        took it over first: then its fresh lock is put back)."""
        aside = self.path.with_name(f"{self.path.name}.stale-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # someone else removed it first
        except OSError as exc:
            raise self._cannot(exc) from None
        if read_owner(aside) != owner:
            with contextlib.suppress(OSError):
                os.link(aside, self.path)
        with contextlib.suppress(OSError):
            aside.unlink()

    def verify(self) -> None:
        """Refuse to go on when the lock is no longer ours (removed with its folder, or taken
        over by a run that judged it stale)."""
        owner = read_owner(self.path)
        if self.owner is not None and (owner is None or owner.token != self.owner.token):
            raise ConfigError(
                f"{self.target}: the lock {self.path} is gone or belongs to another run now "
                f"(was the folder removed?); stopping this run; what it finished is kept"
            )

    def release(self) -> None:
        """Remove the lock file if it is still ours."""
        if self.owner is None:
            return
        token, self.owner = self.owner.token, None
        _HELD.pop(str(self.path), None)
        owner = read_owner(self.path)
        if owner is not None and owner.token == token:
            with contextlib.suppress(OSError):
                self.path.unlink()

    def _cannot(self, exc: OSError) -> ConfigError:
        return unwritable(self.target, exc, f"cannot create the lock file {self.path.name}")


def _busy(target: Path, lock: Path, owner: LockOwner | None, what: str) -> ConfigError:
    if owner is None:
        return ConfigError(
            f"{target}: this {what} is being taken by another run that is just starting; "
            f"wait for it or choose another output (if no run is starting, delete {lock})"
        )
    elsewhere = owner_alive(owner) is None
    return ConfigError(
        f"{target}: this {what} is being written by another run ({owner.describe()}); wait "
        "for it to finish or choose another output"
        + (f"; if that run is no longer going, delete {lock}" if elsewhere else "")
    )


def _me() -> LockOwner:
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "python"
    return LockOwner(
        pid=os.getpid(),
        host=socket.gethostname(),
        started=datetime.datetime.now(datetime.timezone.utc).isoformat(),
        command=command[:200],
        token=uuid.uuid4().hex,
        process_start=_proc_stat(os.getpid())[1],
    )


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0

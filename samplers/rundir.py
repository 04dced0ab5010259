"""Run directories: one writer at a time, and every file in them written atomically.

A run directory (a streamed trace, a training run's checkpoints) is written by one process and
read by any number. Two rules keep it consistent whatever happens to the writer:

- `atomic_write` is the only way a file gets there: the bytes go to a temporary file in the same
  directory, are fsync'd, renamed over the destination in one step, and the directory is fsync'd
  so the rename itself survives a power loss. A reader, or a run killed at any instant, sees the
  previous version or the new one, never half of one. A full disk or an I/O error raises an
  `OSError` naming the file and saying that its previous version is intact.
- `RunLock` (``fcntl.flock`` on ``.lock`` in the directory) admits one writer. The kernel drops
  the lock when its holder dies, so a SIGKILLed run never leaves a stale lock; a second writer
  gets `RunDirectoryLocked` at once, naming the directory and the holder's pid, having touched
  nothing.

`set_fault_hook` lets tests stop a write between its steps (``"open"``, ``"write"``, ``"fsync"``,
``"rename"``, ``"dirsync"``), e.g. to SIGKILL the process there.

Example:
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> with RunLock(d):
    ...     _ = atomic_write(d / "a.json", b'{"n": 1}')
    >>> (d / "a.json").read_text()
    '{"n": 1}'
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["LOCK_NAME", "RunDirectoryLocked", "RunLock", "atomic_write", "fsync_directory",
           "set_fault_hook", "sweep_leftovers"]

#: The lock file of a run directory (never deleted: a lock on a deleted file would lock nothing).
LOCK_NAME = ".lock"
_TMP_SUFFIX = ".tmp"
_fault_hook: Callable[[str, Path], None] | None = None


def set_fault_hook(hook: Callable[[str, Path], None] | None) -> Callable[[str, Path], None] | None:
    """Call ``hook(point, path)`` at each step of every `atomic_write` (tests only); returns the
    previous hook. ``point`` is ``"open"`` (the temporary file created, empty), ``"write"``
    (bytes written, not yet fsync'd), ``"fsync"`` (on disk under the temporary name),
    ``"rename"`` (renamed, directory not yet fsync'd) or ``"dirsync"`` (done)."""
    global _fault_hook
    previous, _fault_hook = _fault_hook, hook
    return previous


def _fault(point: str, path: Path) -> None:
    if _fault_hook is not None:
        _fault_hook(point, path)


def fsync_directory(directory: str | os.PathLike) -> None:
    """Make a rename in ``directory`` durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - file systems that refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _match_mode(fd: int, path: Path) -> None:
    """Give the temporary file the mode a plain ``open(path, "wb")`` would leave.

    ``mkstemp`` creates files readable by their owner only (0600); replacing a file with it would
    silently make a user's results private. A file being replaced keeps its mode; a new one gets
    0666 less the umask, as ``open`` does.
    """
    if not hasattr(os, "fchmod"):  # pragma: no cover - Windows: no POSIX modes to keep
        return
    try:
        mode = path.stat().st_mode & 0o7777
    except OSError:
        mode = 0o666 & ~_current_umask()
    os.fchmod(fd, mode)


def atomic_write(path: str | os.PathLike, data: bytes | Callable[[IO[bytes]], None]) -> Path:
    """Write ``data`` (bytes, or a function writing to a binary file) to ``path`` atomically.

    Raises:
        OSError: the write failed (a full disk, an I/O error, no permission); same ``errno``, a
            message naming ``path`` and saying its previous version (if any) is intact. The
            temporary file is removed.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_SUFFIX)
    try:
        _match_mode(fd, path)
        with os.fdopen(fd, "wb") as f:
            _fault("open", path)
            if isinstance(data, (bytes, bytearray, memoryview)):
                f.write(data)
            else:
                data(f)
            f.flush()
            _fault("write", path)
            os.fsync(f.fileno())
        _fault("fsync", path)
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        before = ("its previous version is intact" if path.exists()
                  else "no previous version existed; nothing was left behind")
        reason = err.strerror or str(err) or type(err).__name__
        message = f"cannot write {path}: {reason}; {before}"
        # The errno's subclass (PermissionError, ...) and .errno kept, without the "[Errno N]"
        # prefix that OSError(errno, message) would print before the message.
        cls = OSError if err.errno is None else type(OSError(err.errno, ""))
        failure = cls(message)
        failure.errno = err.errno
        raise failure from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fault("rename", path)
    fsync_directory(path.parent)
    _fault("dirsync", path)
    return path


def sweep_leftovers(directory: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of writes that never finished (a writer killed mid-write).

    Call it only while holding the directory's `RunLock`: then no write is in flight."""
    removed = []
    for p in Path(directory).iterdir():
        if p.name.startswith(".") and p.name.endswith(_TMP_SUFFIX) and p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


class RunDirectoryLocked(BlockingIOError):
    """Another process is writing this run directory. An `OSError`, so command lines that report
    ``OSError`` in one line report this one too."""

    def __init__(self, message: str):
        super().__init__(errno.EWOULDBLOCK, message)

    def __str__(self) -> str:
        return self.strerror


# Locks this process holds, by resolved directory: re-entrant within a process (a command that
# locks its run directory and then calls a library function that locks it again).
_held: dict[str, list] = {}


class RunLock:
    """Exclusive, non-blocking lock on a run directory (created if missing), as a context manager.

    Args:
        directory: the run directory.

    Raises:
        RunDirectoryLocked: on `acquire`, another process holds it.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self._key: str | None = None

    def acquire(self) -> RunLock:
        self.directory.mkdir(parents=True, exist_ok=True)
        key = str(self.directory.resolve())
        if key in _held:
            _held[key][1] += 1
            self._key = key
            return self
        lock_path = self.directory / LOCK_NAME
        if lock_path.is_symlink():
            raise OSError(errno.ELOOP, f"{lock_path} is a symbolic link; a run directory's lock "
                                       "must be a regular file")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder(fd)
            os.close(fd)
            raise RunDirectoryLocked(
                f"run directory {self.directory} is being written by another process "
                f"(pid {pid}); one writer at a time: wait for it to end or stop it") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _held[key] = [fd, 1]
        self._key = key
        return self

    def release(self) -> None:
        key, self._key = self._key, None
        if key is None or key not in _held:
            return
        _held[key][1] -= 1
        if _held[key][1] == 0:
            fd = _held.pop(key)[0]
            os.close(fd)  # closing the last descriptor drops the flock

    @property
    def held(self) -> bool:
        return self._key is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(fd: int) -> str:
    """The pid the lock's holder wrote in the lock file (it writes it just after locking, so a
    moment's wait covers a holder that started a split second earlier)."""
    for _ in range(20):
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text.isdigit():
            return text
        time.sleep(0.01)
    return "unknown"

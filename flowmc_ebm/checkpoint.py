"""Checkpoints: plain state dicts written atomically and read back with ``weights_only=True``.

A checkpoint is a ``dict`` of tensors, numbers, strings, lists and dicts (no pickled objects),
tagged with a ``format`` string so a file from something else is recognized as foreign rather
than half-read. Writing goes to a temporary file in the destination's directory, is flushed to
disk, then renamed over the destination in one step: a run killed at any instant leaves either
the previous checkpoint or the new one, never a truncated file.

Example:
    >>> import tempfile, torch
    >>> path = Path(tempfile.mkdtemp()) / "state.pt"
    >>> _ = save_checkpoint({"w": torch.ones(2)}, path, kind="example")
    >>> load_checkpoint(path, kind="example")["w"]
    tensor([1., 1.])
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from flowmc_ebm._checks import check_positive_int
from samplers.rundir import atomic_write, fsync_directory
from samplers.trace import read_limit

__all__ = ["FORMAT", "LATEST", "checkpoint_path", "latest_checkpoint", "list_checkpoints",
           "load_checkpoint", "point_latest", "save_checkpoint", "write_numbered_checkpoint"]

#: Tag stored in every checkpoint; its ``kind`` says what wrote it (e.g. ``"trainer"``).
FORMAT = "flowmc-ebm-checkpoint-v1"
#: Name of the newest checkpoint in a checkpoint directory (a hard link to the newest numbered one).
LATEST = "last.pt"
_NUMBERED = re.compile(r"iter-(\d+)\.pt")


def save_checkpoint(state: dict[str, Any], path: str | Path, kind: str) -> Path:
    """Write ``state`` to ``path`` atomically.

    Args:
        state: plain data (tensors, numbers, strings, lists, dicts); the keys ``format`` and
            ``kind`` are added.
        path: destination file; its directory is created if needed.
        kind: what the checkpoint holds, checked again by `load_checkpoint`.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**state, "format": FORMAT, "kind": kind}
    return atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | Path, kind: str, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`, refusing anything else.

    Args:
        path: the file.
        kind: the kind it must hold.
        map_location: passed to `torch.load` (default: everything on the CPU).

    Returns:
        The saved dict, with ``format`` and ``kind``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is truncated or corrupt, holds pickled objects, is not a flowmc-ebm
            checkpoint, or holds another kind; the message names the file, expected and received.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (or is not a file)")
    if path.is_symlink():
        raise ValueError(f"{path} is a symbolic link; a checkpoint must be a regular file (a link "
                         "could point anywhere)")
    _check_declared_size(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except MemoryError:
        raise ValueError(f"{path}: not enough memory to load this checkpoint") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError,
            KeyError, AttributeError, IndexError, UnicodeDecodeError, OSError) as err:
        # OSError too: a truncated zip archive can make the reader seek outside the file.
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path} is not a readable flowmc-ebm checkpoint (truncated, corrupt "
                         f"or holding pickled objects): {first}") from None
    received = state.get("format") if isinstance(state, dict) else None
    if received != FORMAT:
        what = (f"format {received!r}" if received is not None
                else f"a {type(state).__name__} without a format tag")
        raise ValueError(f"{path} is not a flowmc-ebm checkpoint: expected format {FORMAT!r}, "
                         f"received {what}")
    if state.get("kind") != kind:
        raise ValueError(f"{path} holds a {state.get('kind')!r} checkpoint; expected {kind!r}")
    return state


def _check_declared_size(path: Path) -> None:
    """Refuse a checkpoint whose archive declares more bytes, decompressed, than the read limit
    (`samplers.trace.read_limit`: half the available memory unless set), before reading any."""
    limit = read_limit()
    try:
        with zipfile.ZipFile(path) as zf:
            declared = sum(info.file_size for info in zf.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        declared = path.stat().st_size  # not a zip (legacy format or junk): torch.load decides
    if declared > limit:
        raise ValueError(f"{path} declares {declared} bytes once decompressed, above the read "
                         f"limit of {limit} bytes (samplers.trace.set_read_limit raises it)")


def checkpoint_path(directory: str | Path, iteration: int) -> Path:
    """The numbered checkpoint of ``iteration`` in ``directory``: ``iter-000400.pt``."""
    return Path(directory) / f"iter-{iteration:06d}.pt"


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """The numbered checkpoints in ``directory`` as ``(iteration, path)``, newest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _NUMBERED.fullmatch(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def write_numbered_checkpoint(state: dict[str, Any], directory: str | Path, iteration: int,
                              kind: str, keep: int, newer_than: int | None = None) -> Path:
    """Write ``iter-NNNNNN.pt`` atomically, point ``last.pt`` at it, then prune older files.

    Only after the new file is safely on disk are the numbered files beyond the ``keep`` newest
    deleted, and so are numbered files of iterations after ``newer_than`` (default
    ``iteration``): they belong to a future this run abandoned (e.g. a corrupt file skipped on
    resume: a run resumed at iteration 400 passes ``newer_than=400`` at its first write).
    ``last.pt`` is a hard link to the new file where the file system allows it, a copy otherwise.
    One run writes to a directory at a time: temporary files found there (``.iter-*.tmp``,
    ``.last.pt.*.link``) are leftovers of a writer that was killed, and are removed.

    Returns:
        The numbered file written.
    """
    check_positive_int(keep, "keep")
    directory = Path(directory)
    path = save_checkpoint(state, checkpoint_path(directory, iteration), kind)
    _point_latest(path, directory / LATEST, state, kind)
    newer_than = iteration if newer_than is None else min(newer_than, iteration)
    newer = [p for i, p in list_checkpoints(directory) if i > newer_than and p != path]
    older = [p for i, p in list_checkpoints(directory) if i <= newer_than and p != path]
    for stale in newer + older[keep - 1:]:
        stale.unlink(missing_ok=True)
    for leftover in [*directory.glob(".iter-*.pt.*.tmp"), *directory.glob(f".{LATEST}.*.link")]:
        leftover.unlink(missing_ok=True)
    return path


def point_latest(path: str | Path) -> None:
    """Make ``last.pt`` of ``path``'s directory the same file as ``path`` (a resumed run whose
    predecessor was killed between writing ``path`` and pointing ``last.pt`` at it). Hold the
    directory's `samplers.rundir.RunLock`."""
    path = Path(path)
    latest = path.parent / LATEST
    if latest.exists() and os.path.samefile(path, latest):
        return
    _point_latest(path, latest, None, "")


def _point_latest(path: Path, latest: Path, state: dict[str, Any] | None, kind: str) -> None:
    """Make ``latest`` the same file as ``path`` in one atomic rename."""
    tmp = latest.parent / f".{latest.name}.{os.getpid()}.link"
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:  # pragma: no cover - file systems without hard links
        if state is None:
            atomic_write(latest, path.read_bytes())
        else:
            save_checkpoint(state, latest, kind)
        return
    try:
        os.replace(tmp, latest)
    except BaseException:  # pragma: no cover - e.g. latest is a directory
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(latest.parent)


def latest_checkpoint(directory: str | Path, kind: str = "joint-trainer") -> Path:
    """The newest checkpoint in ``directory`` that loads, skipping truncated or corrupt ones.

    Numbered files (``iter-NNNNNN.pt``) are tried newest first, then ``last.pt`` (the only file
    of runs written before numbered checkpoints). Each newer file skipped is named in a
    `UserWarning` with the reason.

    Args:
        directory: a checkpoint directory (e.g. ``OUT/checkpoints``).
        kind: the kind of checkpoint wanted (default: a `JointTrainer`'s).

    Returns:
        The path of the newest good checkpoint.

    Raises:
        FileNotFoundError: the directory holds no checkpoint at all.
        ValueError: it holds checkpoints but none loads (each is named with its fault).

    Example:
        >>> import tempfile, torch
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = write_numbered_checkpoint({"w": torch.ones(1)}, d, 4, kind="x", keep=3)
        >>> latest_checkpoint(d, kind="x").name
        'iter-000004.pt'
    """
    directory = Path(directory)
    candidates = [p for _, p in list_checkpoints(directory)]
    if (directory / LATEST).is_file():
        candidates.append(directory / LATEST)
    if not candidates:
        raise FileNotFoundError(f"no checkpoint in {directory} (expected iter-NNNNNN.pt or "
                                f"{LATEST})")
    faults = []
    for path in candidates:
        try:
            load_checkpoint(path, kind)
        except (ValueError, OSError) as err:
            faults.append(str(err))
            continue
        for fault in faults:
            warnings.warn(f"skipped a newer checkpoint: {fault}", UserWarning, stacklevel=2)
        return path
    raise ValueError(f"no readable checkpoint in {directory}: " + "; ".join(faults))

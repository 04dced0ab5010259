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
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["FORMAT", "load_checkpoint", "save_checkpoint"]

#: Tag stored in every checkpoint; its ``kind`` says what wrote it (e.g. ``"trainer"``).
FORMAT = "flowmc-ebm-checkpoint-v1"


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
    # Same directory as the destination, so the rename below never crosses file systems.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
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
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError,
            KeyError, AttributeError, IndexError, UnicodeDecodeError) as err:
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

"""The ``flowmc-ebm`` subcommands, one module each, and the checks of output paths they share."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["check_output_file", "make_output_directory"]


def _file_in_the_way(path: Path) -> Path | None:
    """The first existing non-directory among ``path`` and its parents, if any."""
    for part in [path, *path.parents]:
        if part.exists():
            return None if part.is_dir() else part
    return None


def make_output_directory(path: str | Path, flag: str = "--out") -> Path:
    """Create output directory ``path`` (and its parents), or raise a one-line `OSError`.

    Raises:
        NotADirectoryError: ``path`` or one of its parents is a regular file.
        PermissionError: it cannot be created or written.
    """
    path = Path(path)
    blocker = _file_in_the_way(path)
    if blocker is not None:
        raise NotADirectoryError(f"{flag} {path}: {blocker} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise type(err)(f"{flag} {path}: cannot create the directory: "
                        f"{err.strerror or err}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"{flag} {path}: the directory is not writable")
    return path


def check_output_file(path: str | Path, flag: str = "--out") -> Path:
    """Check that file ``path`` can be written: its directory exists and is writable.

    Raises:
        FileNotFoundError, NotADirectoryError, PermissionError, IsADirectoryError: naming the path.
    """
    path = Path(path)
    parent = path.parent
    blocker = _file_in_the_way(parent)
    if blocker is not None:
        raise NotADirectoryError(f"{flag} {path}: {blocker} is a file, not a directory")
    if not parent.is_dir():
        raise FileNotFoundError(f"{flag} {path}: output directory {parent} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"{flag} {path}: is a directory; expected a file path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"{flag} {path}: directory {parent} is not writable")
    return path

"""A user's data file as training points, and the standardization a run keeps in its checkpoint.

`read_points` reads ``.npy``, ``.npz`` and ``.csv`` files with the discipline of
`samplers.trace` for files from elsewhere: a size cap (`samplers.trace.read_limit`, half the
available memory, checked on the file's size or on the ``.npy``/``.npz`` headers *before* any data
is read), never a pickle (object arrays are refused, ``allow_pickle=False``), symbolic links
followed only for the file the user named, and one error naming the file and what was wrong.

`Standardization` is the affine map ``z = (x − mean) / scale`` that ``flowmc-ebm train --data``
fits on the data. It is passed to `JointTrainer.fit` as a callback that does nothing but carry
state, so its ``state_dict`` goes into every checkpoint (see `flowmc_ebm.training.run`); `sample
--model` reads it back with `Standardization.from_checkpoint` and maps draws back to data units.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "points.csv"
    >>> _ = path.write_text("a,b,c\\n1,2,10\\n3,4,20\\n5,0,30\\n")
    >>> x, names = read_points(path, columns="c,a")
    >>> names, x.tolist()
    (['c', 'a'], [[10.0, 1.0], [20.0, 3.0], [30.0, 5.0]])
    >>> std = Standardization.fit(x)
    >>> bool(np.allclose(std.inverse_transform(std.transform(x)), x))
    True
"""

from __future__ import annotations

import csv
import io
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from samplers.trace import _read_arrays, read_limit

__all__ = ["SUFFIXES", "DataRun", "Standardization", "read_data", "read_points"]

#: File kinds `read_points` reads.
SUFFIXES = (".npy", ".npz", ".csv")


def read_points(path: str | os.PathLike, columns: str | list | None = None, *,
                key: str | None = None, max_bytes: int | None = None
                ) -> tuple[np.ndarray, list[str]]:
    """Points ``(n, d)`` float64 from a ``.npy``, ``.npz`` or ``.csv`` file, and column names.

    Args:
        path: the file. A ``.csv`` may start with a header row (any field that is not a
            number makes the first row a header); ``.npy`` holds one 2-D numeric array;
            ``.npz`` one such array, or several and ``key`` naming one.
        columns: which columns to keep, in this order: a comma-separated string or a list of
            header names or 0-based indices (``"x,y"``, ``"0,2"``, ``[1, 3]``); None keeps all.
        key: the array of an ``.npz`` holding several.
        max_bytes: cap on the bytes read (default `samplers.trace.read_limit`).

    Returns:
        ``(points, names)``: finite float64 points ``(n, d)`` with ``n >= 2`` and ``d >= 2``,
        and the kept columns' names (header names, or ``"0"``, ``"1"``, ... without one).

    Raises:
        FileNotFoundError: no such file.
        ValueError: anything else, in one line naming the file: an unknown suffix, a file over
            the cap, a pickle or object array, non-numeric or ragged rows, NaN/inf values (the
            first bad row named), an unknown column, fewer than 2 rows or 2 columns.
    """
    path = Path(path)
    limit = read_limit() if max_bytes is None else int(max_bytes)
    try:
        x, names = _read(path, key, limit)
        x, names = _select(x, names, columns)
        return _checked(x), names
    except (ValueError, TypeError, OSError, EOFError) as err:
        if isinstance(err, FileNotFoundError):
            raise FileNotFoundError(f"{path}: no such file") from None
        message = " ".join(str(err).split()) or type(err).__name__
        raise ValueError(f"{path}: {message}") from None


def _read(path: Path, key: str | None, limit: int) -> tuple[np.ndarray, list[str] | None]:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"unknown file kind {path.suffix or '(no suffix)'!r}; expected one of "
                         f"{', '.join(SUFFIXES)}")
    st = path.resolve().lstat()
    if not stat.S_ISREG(st.st_mode):
        raise ValueError("not a regular file")
    if suffix == ".csv":
        if st.st_size > limit:
            raise ValueError(f"is {st.st_size} bytes, above the read limit of {limit} bytes")
        return _read_csv(path)
    if suffix == ".npy":
        return _read_npy(path, limit), None
    arrays = _read_arrays(path, max_bytes=limit, follow=True)
    if key is not None:
        if key not in arrays:
            raise ValueError(f"has no array {key!r}; it holds {', '.join(sorted(arrays))}")
        return arrays[key], None
    if len(arrays) != 1:
        raise ValueError(f"holds {len(arrays)} arrays ({', '.join(sorted(arrays))}); name one "
                         "(--data-key)")
    return next(iter(arrays.values())), None


def _read_npy(path: Path, limit: int) -> np.ndarray:
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
        except ValueError:
            raise ValueError("not an .npy array (bad magic bytes)") from None
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f".npy version {version} is not supported")
        if dtype.hasobject:
            raise ValueError("holds Python objects; data files hold numbers only (objects are "
                             "never unpickled)")
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > limit:
            raise ValueError(f"declares {nbytes} bytes of data, above the read limit of {limit} "
                             "bytes")
    return np.load(path, allow_pickle=False)


def _read_csv(path: Path) -> tuple[np.ndarray, list[str] | None]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError("not a text (UTF-8) CSV file") from None
    rows = [row for row in csv.reader(io.StringIO(text)) if row and any(f.strip() for f in row)]
    if not rows:
        raise ValueError("holds no rows")
    header = None
    if not all(_is_number(f) for f in rows[0]):
        header, rows = [f.strip() for f in rows[0]], rows[1:]
    width = len(header) if header is not None else len(rows[0]) if rows else 0
    values = np.empty((len(rows), width))
    for i, row in enumerate(rows):
        line = i + (2 if header is not None else 1)
        if len(row) != width:
            raise ValueError(f"line {line} has {len(row)} fields; expected {width}")
        for j, field in enumerate(row):
            try:
                values[i, j] = float(field)
            except ValueError:
                raise ValueError(f"line {line}, column {j + 1}: {field.strip()!r} is not a "
                                 "number") from None
    return values, header


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _select(x: np.ndarray, names: list[str] | None, columns: Any
            ) -> tuple[np.ndarray, list[str]]:
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise ValueError(f"holds dtype {x.dtype}; expected real numbers")
    if x.ndim != 2:
        raise ValueError(f"holds an array of shape {x.shape}; expected points (n, d), one row "
                         "per point")
    names = names if names is not None else [str(j) for j in range(x.shape[1])]
    if columns is None:
        return x.astype(np.float64), names
    wanted = [c.strip() for c in columns.split(",")] if isinstance(columns, str) else list(columns)
    index = []
    for c in wanted:
        if isinstance(c, (int, np.integer)) or (isinstance(c, str) and c.isdigit()
                                                 and c not in names):
            j = int(c)
            if not 0 <= j < x.shape[1]:
                raise ValueError(f"has {x.shape[1]} columns; column index {j} is out of range")
        elif c in names:
            j = names.index(c)
        else:
            raise ValueError(f"has no column {c!r}; its columns are {', '.join(names)}")
        index.append(j)
    if len(set(index)) != len(index):
        raise ValueError(f"columns {columns!r} name a column twice")
    return x[:, index].astype(np.float64), [names[j] for j in index]


def _checked(x: np.ndarray) -> np.ndarray:
    if x.shape[0] < 2 or x.shape[1] < 2:
        raise ValueError(f"holds {x.shape[0]} points of {x.shape[1]} coordinates; training needs "
                         "at least 2 points of at least 2 coordinates")
    bad = ~np.isfinite(x).all(1)
    if bad.any():
        raise ValueError(f"has NaN or infinite values in {int(bad.sum())} of {x.shape[0]} rows "
                         f"(first at row {int(np.flatnonzero(bad)[0])}, counting from 0)")
    return x


class Standardization:
    """``z = (x − mean) / scale`` per coordinate, kept in a run's checkpoints.

    Used as a `JointTrainer.fit` callback only to ride along in checkpoints: calling it does
    nothing. A coordinate with zero spread keeps scale 1.

    Args:
        mean, scale: ``(d,)``.
        names: column names (for figures and messages).
        source: where the data came from.
    """

    def __init__(self, mean: Any, scale: Any, names: list[str] | None = None,
                 source: str = "") -> None:
        self.mean = np.asarray(mean, dtype=np.float64).reshape(-1)
        self.scale = np.asarray(scale, dtype=np.float64).reshape(-1)
        if self.mean.shape != self.scale.shape or not (self.scale > 0).all():
            raise ValueError(f"a standardization needs mean and positive scale of one shape; "
                             f"received {self.mean.shape} and {self.scale.shape}")
        self.names = list(names) if names is not None else [str(j) for j in range(self.dim)]
        self.source = source

    @classmethod
    def fit(cls, x: Any, names: list[str] | None = None, source: str = "") -> Standardization:
        """The standardization of points ``x`` ``(n, d)``: their mean and standard deviation."""
        x = np.asarray(x, dtype=np.float64)
        scale = x.std(0)
        return cls(x.mean(0), np.where(scale > 0, scale, 1.0), names, source)

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def transform(self, x: Any) -> Any:
        """``(x − mean) / scale``, for an array or a tensor (same kind, dtype and device)."""
        mean, scale = self._like(x)
        return (x - mean) / scale

    def inverse_transform(self, z: Any) -> Any:
        """``z · scale + mean``: back to data units."""
        mean, scale = self._like(z)
        return z * scale + mean

    def log_det(self) -> float:
        """``Σ log scale``: a density in data units is ``log p_z(z) − log_det()``."""
        return float(np.log(self.scale).sum())

    def _like(self, x: Any) -> tuple[Any, Any]:
        if isinstance(x, torch.Tensor):
            return (torch.as_tensor(self.mean, dtype=x.dtype, device=x.device),
                    torch.as_tensor(self.scale, dtype=x.dtype, device=x.device))
        return self.mean, self.scale

    def __call__(self, trainer: Any) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist(), "names": self.names,
                "source": self.source}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        other = Standardization(state["mean"], state["scale"], state.get("names"),
                                state.get("source", ""))
        self.__dict__.update(other.__dict__)

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> Standardization | None:
        """The standardization stored in a loaded checkpoint's callbacks, or None if none is."""
        for saved in state.get("callbacks") or []:
            if isinstance(saved, dict) and saved.get("type") == cls.__qualname__:
                out = cls([0.0], [1.0])
                out.load_state_dict(saved["state"])
                return out
        return None

    def __repr__(self) -> str:
        return f"Standardization(dim={self.dim}, columns={self.names}, source={self.source!r})"


@dataclass
class DataRun:
    """``--data``: the standardized rows (float32) and their `Standardization`."""

    points: torch.Tensor
    standardization: Any


def read_data(args: Any) -> DataRun | None:
    """``flowmc-ebm train``'s ``--data``, ``--columns``, ``--data-key`` (``args``) as a
    `DataRun`, or None without ``--data``."""
    if args.data is None:
        if args.columns is not None or args.data_key is not None:
            raise ValueError(f"{'--columns' if args.columns else '--data-key'} applies to "
                             "--data FILE")
        return None
    try:
        x, names = read_points(args.data, args.columns, key=args.data_key)
    except (ValueError, FileNotFoundError) as err:
        raise type(err)(f"--data {err}") from None
    std = Standardization.fit(x, names, str(args.data))
    return DataRun(torch.as_tensor(std.transform(x), dtype=torch.float32), std)

"""`Trace`: the draws of a run, in ArviZ's ``(chains, draws, *event)`` order, with per-step stats.

A run too long to hold in memory streams its draws to a directory instead (`samplers.sample` with
``out=``): a `TraceWriter` writes each full chunk of draws as its own ``.npz`` file, atomically,
beside a small ``manifest.json``; `open_trace` reads the directory back as a `StreamedTrace`, one
chunk at a time or all at once.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import Tensor

_FORMAT = "flowmc-ebm-trace-v1"
_DIR_FORMAT = "flowmc-ebm-trace-dir-v1"
_MANIFEST = "manifest.json"
_CHUNK = "chunk-{:06d}.npz"
_CHUNK_RE = re.compile(r"chunk-(\d{6})\.npz")


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` through a temp file in the same directory, fsync'd then renamed over it, so
    a crash leaves either the old file or the whole new one, never half of one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


@dataclass
class Trace:
    """Draws from ``samplers.sample``.

    Attributes:
        samples: ``(chains, draws, *event)``, on the CPU.
        log_prob: ``(chains, draws)``: the target's unnormalized log-density at each draw.
        stats: per-step per-chain figures, each ``(chains, draws)`` (``accept_prob``, ``accepted``,
            ``step_size``, ``invalid`` and the kernel's extras).
        wall_time: seconds spent on the post-warm-up steps, or ``None``.
        warmup: warm-up steps run before the first draw.
        thin: steps between two stored draws.
        kernel: a description of the kernel.
        state: the kernel's final state (not saved), to continue a run.
    """

    samples: Tensor
    log_prob: Tensor
    stats: dict[str, Tensor] = field(default_factory=dict)
    wall_time: float | None = None
    warmup: int = 0
    thin: int = 1
    kernel: str = ""
    state: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.samples.ndim < 3:
            raise ValueError("Trace.samples must have shape (chains, draws, *event); "
                             f"got {tuple(self.samples.shape)}")
        if self.log_prob.shape != self.samples.shape[:2]:
            raise ValueError(f"Trace.log_prob must have shape {tuple(self.samples.shape[:2])}; "
                             f"got {tuple(self.log_prob.shape)}")
        for name, value in self.stats.items():
            if value.shape != self.samples.shape[:2]:
                raise ValueError(f"Trace.stats[{name!r}] must have shape "
                                 f"{tuple(self.samples.shape[:2])}; got {tuple(value.shape)}")

    @property
    def n_chains(self) -> int:
        return self.samples.shape[0]

    @property
    def n_draws(self) -> int:
        return self.samples.shape[1]

    @property
    def event_shape(self) -> torch.Size:
        return self.samples.shape[2:]

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {"samples": self.samples.numpy(), "log_prob": self.log_prob.numpy(),
                  "format": np.array(_FORMAT), "kernel": np.array(self.kernel),
                  "wall_time": np.array(np.nan if self.wall_time is None else self.wall_time),
                  "warmup": np.array(self.warmup), "thin": np.array(self.thin)}
        arrays.update({f"stats/{k}": v.numpy() for k, v in self.stats.items()})
        return arrays

    def save(self, path: str | os.PathLike) -> Path:
        """Write to ``path`` (``.npz``, no pickle) atomically: a temp file renamed over the target,
        so an interrupted save never leaves a half-written file in place of a good one."""
        arrays = self._arrays()
        return _atomic_write(Path(path), lambda f: np.savez(f, **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Trace:
        """Read a trace written by `save`, or a whole directory streamed by ``sample(out=...)``
        (all its completed chunks, concatenated; see `open_trace` to read one chunk at a time).
        Refuses pickled content; names the file on any fault."""
        path = Path(path)
        if path.is_dir():
            return open_trace(path).load()
        return _read_npz(path)[0]

    def to_arviz(self, var_name: str = "x"):
        """An ArviZ `InferenceData` (arviz < 1) or `DataTree` (arviz >= 1) with the draws in
        ``posterior[var_name]`` and ``lp`` plus every stat in ``sample_stats``."""
        import arviz as az

        sample_stats = {"lp": self.log_prob.numpy()}
        sample_stats.update({k: v.numpy() for k, v in self.stats.items()})
        return az.from_dict(posterior={var_name: self.samples.numpy()}, sample_stats=sample_stats)

    def __repr__(self) -> str:
        return (f"Trace(chains={self.n_chains}, draws={self.n_draws}, event={tuple(self.event_shape)},"
                f" kernel={self.kernel!r}, stats={sorted(self.stats)})")


def _read_npz(path: Path) -> tuple[Trace, int | None]:
    """A trace file and, for a chunk of a streamed run, the index of its first draw."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a bare .npy array
            raise ValueError(f"not a flowmc-ebm trace (an .npz archive); received a "
                             f"{type(loaded).__name__}")
        with loaded as data:
            if "format" not in data.files or str(data["format"]) != _FORMAT:
                raise ValueError("not a flowmc-ebm trace (no or unknown 'format' entry)")
            stats = {k.split("/", 1)[1]: torch.from_numpy(data[k])
                     for k in data.files if k.startswith("stats/")}
            wall = float(data["wall_time"])
            start = int(data["chunk_start"]) if "chunk_start" in data.files else None
            trace = Trace(torch.from_numpy(data["samples"]), torch.from_numpy(data["log_prob"]),
                          stats, None if np.isnan(wall) else wall, int(data["warmup"]),
                          int(data["thin"]), str(data["kernel"]))
            return trace, start
    except FileNotFoundError:
        raise
    except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"cannot read trace {path}: {err}") from err


class TraceWriter:
    """Writes a run's draws to a directory, one chunk of draws per ``.npz`` file.

    Each chunk is a complete `Trace` file (``chunk-000000.npz``, ``chunk-000001.npz``, ...) written
    atomically (temp file, fsync, rename), so a run killed at any moment leaves every chunk it
    finished readable and no half-written one. ``manifest.json`` holds the run's settings, the
    chunks written so far and, once `close` is called, ``"complete": true`` and the wall time.
    `samplers.sample` drives it when given ``out=``; use it directly only to write your own chunks.

    Args:
        path: a directory that does not exist yet or is empty.
        warmup, thin, kernel: the run's settings, recorded in the manifest and every chunk.

    Example:
        >>> import tempfile
        >>> chunk = Trace(torch.zeros(2, 3, 1), torch.zeros(2, 3))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     writer = TraceWriter(d)
        ...     _ = writer.write(chunk)
        ...     _ = writer.write(chunk)
        ...     writer.close().load().samples.shape
        torch.Size([2, 6, 1])
    """

    def __init__(self, path: str | os.PathLike, *, warmup: int = 0, thin: int = 1, kernel: str = ""):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"out must be a directory to stream draws into; {self.path} is a file")
        if self.path.is_dir() and any(self.path.iterdir()):
            raise ValueError(f"out directory {self.path} is not empty; a streamed trace needs a "
                             "new or empty directory, so chunks of two runs never mix")
        self.path.mkdir(parents=True, exist_ok=True)
        self.warmup, self.thin, self.kernel = warmup, thin, kernel
        self.n_chunks = 0
        self.n_draws = 0
        self._layout: dict[str, Any] | None = None
        self._write_manifest(complete=False, wall_time=None)

    def write(self, chunk: Trace) -> Path:
        """Append ``chunk`` (its draws follow those already written) as the next chunk file."""
        layout = {"n_chains": chunk.n_chains, "event_shape": list(chunk.event_shape),
                  "dtype": str(chunk.samples.dtype).removeprefix("torch."),
                  "stats": sorted(chunk.stats)}
        if self._layout is None:
            self._layout = layout
        elif layout != self._layout:
            raise ValueError(f"chunk {self.n_chunks} must match the earlier chunks' layout "
                             f"{self._layout}; got {layout}")
        arrays = chunk._arrays()
        arrays.update(warmup=np.array(self.warmup), thin=np.array(self.thin),
                      kernel=np.array(self.kernel), chunk_start=np.array(self.n_draws))
        file = _atomic_write(self.path / _CHUNK.format(self.n_chunks),
                             lambda f: np.savez(f, **arrays))
        self.n_chunks += 1
        self.n_draws += chunk.n_draws
        self._write_manifest(complete=False, wall_time=None)
        return file

    def close(self, wall_time: float | None = None) -> StreamedTrace:
        """Mark the run complete and return a reader over it."""
        self._write_manifest(complete=True, wall_time=wall_time)
        return open_trace(self.path)

    def _write_manifest(self, complete: bool, wall_time: float | None) -> None:
        manifest = {"format": _DIR_FORMAT, "complete": complete, "n_chunks": self.n_chunks,
                    "n_draws": self.n_draws, "warmup": self.warmup, "thin": self.thin,
                    "kernel": self.kernel, "wall_time": wall_time, "layout": self._layout}
        data = json.dumps(manifest, indent=1).encode()
        _atomic_write(self.path / _MANIFEST, lambda f: f.write(data))


class StreamedTrace:
    """A trace on disk, written chunk by chunk by ``samplers.sample(..., out=path)``.

    Nothing is read until asked: `chunks` yields one `Trace` per chunk file (memory bounded by one
    chunk), `load` concatenates them all. A run that was killed is readable up to its last
    completed chunk (``complete`` is then False). A chunk that is corrupt, truncated, missing or
    out of order raises a ValueError that names its file.

    Attributes:
        path: the directory.
        complete: whether the run finished.
        n_draws: draws in the completed chunks.
        files: the chunk files, in draw order.
        warmup, thin, kernel, wall_time: as in `Trace` (``wall_time`` is None for an unfinished run).
        state: the kernel's final state when returned by `samplers.sample` (not saved), or None.

    Example:
        >>> import tempfile
        >>> from samplers import MALA, sample
        >>> kernel = MALA(lambda x: -0.5 * x.pow(2).sum(-1), step_size=0.5)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     run = sample(kernel, torch.zeros(4, 2), 100, out=d, chunk_size=30, progress=False)
        ...     [c.n_draws for c in run.chunks()], open_trace(d).load().samples.shape
        ([30, 30, 30, 10], torch.Size([4, 100, 2]))
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        manifest_path = self.path / _MANIFEST
        if not self.path.is_dir():
            raise FileNotFoundError(f"no streamed trace directory at {self.path}")
        try:
            manifest = json.loads(manifest_path.read_text())
            if manifest.get("format") != _DIR_FORMAT:
                raise ValueError(f"unknown 'format' {manifest.get('format')!r}, expected {_DIR_FORMAT!r}")
            self.complete = bool(manifest["complete"])
            self.warmup, self.thin = int(manifest["warmup"]), int(manifest["thin"])
            self.kernel = str(manifest["kernel"])
            self.wall_time = manifest["wall_time"]
            listed = int(manifest["n_chunks"])
            self._layout = manifest["layout"]
        except FileNotFoundError as err:
            raise ValueError(f"cannot read streamed trace {self.path}: no {_MANIFEST}") from err
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"cannot read streamed trace {manifest_path}: {err}") from err
        found = sorted(int(m.group(1)) for p in self.path.iterdir()
                       if (m := _CHUNK_RE.fullmatch(p.name)))
        for i, index in enumerate(found):
            if index != i:
                raise ValueError(f"streamed trace {self.path} is missing chunk file "
                                 f"{self.path / _CHUNK.format(i)} (found {len(found)} chunks)")
        # The manifest is rewritten after each chunk, so a run killed between the two writes has
        # one chunk more than it lists; fewer than listed means chunk files were lost.
        if len(found) < listed or (self.complete and len(found) != listed):
            missing = self.path / _CHUNK.format(len(found) if len(found) < listed else listed)
            raise ValueError(f"streamed trace {self.path} lists {listed} chunks but holds "
                             f"{len(found)}; check {missing}")
        self.files = [self.path / _CHUNK.format(i) for i in found]
        self.state: Any = None
        self._n_draws: int | None = int(manifest["n_draws"]) if len(found) == listed else None

    @property
    def n_draws(self) -> int:
        if self._n_draws is None:  # one chunk beyond the manifest: count it
            self._n_draws = sum(c.n_draws for c in self.chunks())
        return self._n_draws

    def chunks(self) -> Iterator[Trace]:
        """Yield the chunks in draw order, one `Trace` at a time."""
        start = 0
        for file in self.files:
            chunk, chunk_start = _read_npz(file)
            if chunk_start != start:
                raise ValueError(f"cannot read trace {file}: its first draw is {chunk_start}, "
                                 f"expected {start} after the previous chunks")
            layout = {"n_chains": chunk.n_chains, "event_shape": list(chunk.event_shape),
                      "dtype": str(chunk.samples.dtype).removeprefix("torch."),
                      "stats": sorted(chunk.stats)}
            if self._layout is not None and layout != self._layout:
                raise ValueError(f"cannot read trace {file}: layout {layout} differs from the "
                                 f"manifest's {self._layout}")
            start += chunk.n_draws
            yield chunk

    def load(self) -> Trace:
        """All completed chunks as one in-memory `Trace`."""
        parts = list(self.chunks())
        if not parts:
            raise ValueError(f"streamed trace {self.path} holds no completed chunk yet")
        stats = {k: torch.cat([p.stats[k] for p in parts], 1) for k in parts[0].stats}
        return Trace(torch.cat([p.samples for p in parts], 1),
                     torch.cat([p.log_prob for p in parts], 1), stats, self.wall_time,
                     self.warmup, self.thin, self.kernel, self.state)

    def to_arviz(self, var_name: str = "x"):
        """`Trace.to_arviz` of the loaded trace."""
        return self.load().to_arviz(var_name)

    def __repr__(self) -> str:
        return (f"StreamedTrace({str(self.path)!r}, chunks={len(self.files)}, "
                f"complete={self.complete}, kernel={self.kernel!r})")


def open_trace(path: str | os.PathLike) -> StreamedTrace:
    """Open a directory written by ``samplers.sample(..., out=path)``; see `StreamedTrace`."""
    return StreamedTrace(path)

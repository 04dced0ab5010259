"""`Trace`: the draws of a run, in ArviZ's ``(chains, draws, *event)`` order, with per-step stats.

A run too long to hold in memory streams its draws to a directory instead (`samplers.sample` with
``out=``): a `TraceWriter` writes each full chunk of draws as its own ``.npz`` file, atomically,
beside a small ``manifest.json``; `open_trace` reads the directory back as a `StreamedTrace`, one
chunk at a time or all at once.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .rundir import LOCK_NAME, RunLock, atomic_write, sweep_leftovers

_FORMAT = "flowmc-ebm-trace-v1"
_DIR_FORMAT = "flowmc-ebm-trace-dir-v1"
_STATE_FORMAT = "samplers-run-state-v1"
_MANIFEST = "manifest.json"
_CHUNK = "chunk-{:06d}.npz"
_CHUNK_RE = re.compile(r"chunk-(\d{6})\.npz")
_STATE = "state-{:06d}.pt"
_STATE_RE = re.compile(r"state-(\d{6})\.pt")
_MAX_MANIFEST_BYTES = 1 << 20
_MAX_MEMBERS = 256
# A member this large that compresses this well is a zip bomb, not a trace: `np.savez` (which
# `Trace.save` and the chunks use) stores arrays uncompressed.
_BOMB_BYTES, _BOMB_RATIO = 64 << 20, 100
_read_limit: int | None = None


def set_read_limit(max_bytes: int | None) -> int | None:
    """Cap the bytes one trace, chunk or run-state file may hold once decompressed (checked from
    the file's headers before any data is read); ``None`` restores the default, half the memory
    available when the file is opened. Returns the previous setting."""
    global _read_limit
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int)
                                  or max_bytes < 1):
        raise ValueError(f"max_bytes must be a positive int or None; got {max_bytes!r}")
    previous, _read_limit = _read_limit, max_bytes
    return previous


def read_limit() -> int:
    """The current cap of `set_read_limit`, in bytes."""
    if _read_limit is not None:
        return _read_limit
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f
                             if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):  # pragma: no cover - not Linux
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return max(available // 2, 1 << 26)


def _regular_file(path: Path, what: str) -> os.stat_result:
    """``lstat`` of ``path``, refusing symbolic links and anything but a regular file."""
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        raise ValueError(f"{what} {path} is a symbolic link; files of a run directory must be "
                         "regular files inside it (a link could point anywhere)")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{what} {path} is not a regular file")
    return st


def _read_arrays(path: Path, max_bytes: int | None = None,
                 follow: bool = False) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` archive, each ``.npy`` header checked before its data is read:
    no objects, a size that matches the member and fits ``max_bytes`` in all (decompressed).
    ``follow``: a symbolic link is read (a file the user named), else refused (a run's chunk)."""
    limit = read_limit() if max_bytes is None else max_bytes
    st = _regular_file(path.resolve() if follow else path, "trace file")
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic.startswith(b"\x93NUMPY"):
        raise ValueError("not a flowmc-ebm trace (an .npz archive); received a bare .npy array")
    if not magic.startswith(b"PK\x03\x04"):
        what = "the file is empty" if st.st_size == 0 else f"it starts with {magic!r}"
        raise ValueError(f"not a flowmc-ebm trace (an .npz archive): {what}")
    arrays: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        if len(infos) > _MAX_MEMBERS:
            raise ValueError(f"holds {len(infos)} arrays; a trace holds at most {_MAX_MEMBERS}")
        names = [i.filename for i in infos]
        if len(set(names)) != len(names):
            raise ValueError("holds two arrays of the same name")
        total = sum(i.file_size for i in infos)
        if total > limit:
            raise ValueError(f"declares {total} bytes once decompressed, above the read limit of "
                             f"{limit} bytes (samplers.trace.set_read_limit raises it)")
        for info in infos:
            if not info.filename.endswith(".npy"):
                raise ValueError(f"holds {info.filename!r}, not an .npy array")
            if (info.file_size > _BOMB_BYTES
                    and info.file_size > _BOMB_RATIO * max(info.compress_size, 1)):
                raise ValueError(f"array {info.filename!r} would decompress from "
                                 f"{info.compress_size} to {info.file_size} bytes: refused as a "
                                 "zip bomb (traces are written uncompressed)")
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise ValueError(f"array {info.filename!r} has .npy version {version}")
                if dtype.hasobject:
                    raise ValueError(f"array {info.filename!r} holds Python objects; a trace "
                                     "holds numbers only (objects are never unpickled)")
                nbytes = math.prod(shape) * dtype.itemsize
                if nbytes != info.file_size - f.tell():
                    raise ValueError(f"array {info.filename!r} declares shape {shape} of "
                                     f"{dtype} ({nbytes} bytes) but holds "
                                     f"{info.file_size - f.tell()} bytes")
                buf = bytearray(nbytes)
                if f.readinto(memoryview(buf)) != nbytes or f.read(1):
                    raise ValueError(f"array {info.filename!r} is truncated")
            arr = np.frombuffer(buf, dtype=dtype)
            arrays[info.filename[:-4]] = (arr.reshape(shape[::-1]).T if fortran
                                          else arr.reshape(shape))
    return arrays


@dataclass
class Trace:
    """Draws from ``samplers.sample``.

    Attributes:
        samples: ``(chains, draws, *event)``, on the CPU.
        log_prob: ``(chains, draws)``: the target's unnormalized log-density at each draw.
        stats: per-step per-chain figures, each ``(chains, draws)`` (``accept_prob``, ``accepted``,
            ``step_size``, ``invalid`` and the kernel's extras), or ``(chains, draws, *extra)`` for
            an extra with several values per chain (parallel tempering's per-pair swap acceptance).
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
            if value.shape[:2] != self.samples.shape[:2]:
                raise ValueError(f"Trace.stats[{name!r}] must have shape "
                                 f"{tuple(self.samples.shape[:2])} (or that followed by extra "
                                 f"dimensions); got {tuple(value.shape)}")

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
        return atomic_write(Path(path), lambda f: np.savez(f, **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike, max_bytes: int | None = None) -> Trace:
        """Read a trace written by `save`, or a whole directory streamed by ``sample(out=...)``
        (all its completed chunks, concatenated; see `open_trace` to read one chunk at a time).
        Refuses pickled content, symbolic links and files whose headers declare more than
        ``max_bytes`` (default `read_limit`); names the file on any fault."""
        path = Path(path)
        if path.is_dir():
            return open_trace(path, max_bytes).load()
        return _read_npz(path, max_bytes, follow=True)[0]

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


def _read_npz(path: Path, max_bytes: int | None = None,
              follow: bool = False) -> tuple[Trace, int | None]:
    """A trace file and, for a chunk of a streamed run, the index of its first draw."""
    try:
        data = _read_arrays(path, max_bytes, follow)
        if "format" not in data or data["format"].shape != () or str(data["format"]) != _FORMAT:
            raise ValueError("not a flowmc-ebm trace (no or unknown 'format' entry)")
        stats = {k.split("/", 1)[1]: torch.from_numpy(data[k])
                 for k in data if k.startswith("stats/")}
        wall = float(data["wall_time"])
        start = int(data["chunk_start"]) if "chunk_start" in data else None
        trace = Trace(torch.from_numpy(data["samples"]), torch.from_numpy(data["log_prob"]),
                      stats, None if np.isnan(wall) else wall, int(data["warmup"]),
                      int(data["thin"]), str(data["kernel"]))
        return trace, start
    except FileNotFoundError:
        raise
    except MemoryError:
        raise ValueError(f"cannot read trace {path}: not enough memory to hold it (a smaller "
                         "read limit, samplers.trace.set_read_limit, refuses such files "
                         "before reading)") from None
    except (ValueError, OSError, KeyError, EOFError, TypeError, zipfile.BadZipFile,
            zipfile.LargeZipFile, NotImplementedError, RuntimeError) as err:
        raise ValueError(f"cannot read trace {path}: {_one_line(err)}") from None


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _layout(chunk: Trace) -> dict[str, Any]:
    return {"n_chains": chunk.n_chains, "event_shape": list(chunk.event_shape),
            "dtype": str(chunk.samples.dtype).removeprefix("torch."), "stats": sorted(chunk.stats)}


class TraceWriter:
    """Writes a run's draws to a directory, one chunk of draws per ``.npz`` file.

    Each chunk is a complete `Trace` file (``chunk-000000.npz``, ``chunk-000001.npz``, ...) written
    atomically (`samplers.rundir.atomic_write`), so a run killed at any moment leaves every chunk
    it finished readable and no half-written one. ``manifest.json`` holds the run's settings, the
    chunks committed so far, the run-state file saved with the last commit (``state-NNNNNN.pt``:
    what `samplers.sample` needs to continue) and, once `close` is called, ``"complete": true`` and
    the wall time. Rewriting the manifest is the commit: a chunk or state file it does not list
    yet belongs to a commit that never happened. The writer holds the directory's
    `samplers.rundir.RunLock` from construction to `close`.
    `samplers.sample` drives it when given ``out=``; use it directly only to write your own chunks.

    Args:
        path: a directory that does not exist yet or is empty, or with ``resume`` one holding a
            run started with the same ``settings``.
        warmup: the run's warm-up steps, recorded in the manifest and every chunk.
        thin: the run's thinning, recorded likewise.
        kernel: the run's kernel name, recorded likewise.
        settings: what a resumed run must match (JSON values; `samplers.sample` records the
            kernel, chains, event shape, dtype, steps, warm-up, thinning, chunk size, generator).
        resume: continue the run in ``path``: its committed chunks are kept, and `checkpoint` is
            the run state saved with its last commit (None when nothing was committed yet).

    Raises:
        samplers.rundir.RunDirectoryLocked: another process is writing ``path``.
        ValueError: ``path`` is a file, holds something else, or (``resume``) a run with other
            settings; the message names the first setting that differs and both values.

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

    def __init__(self, path: str | os.PathLike, *, warmup: int = 0, thin: int = 1, kernel: str = "",
                 settings: dict[str, Any] | None = None, resume: bool = False):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"out must be a directory to stream draws into; {self.path} is a file")
        self.warmup, self.thin, self.kernel = warmup, thin, kernel
        self.settings = None if settings is None else json.loads(json.dumps(settings))
        self.n_chunks = 0
        self.n_draws = 0
        self.complete = False
        self.resumes = 0
        self.checkpoint: dict[str, Any] | None = None
        self._layout: dict[str, Any] | None = None
        self._commit = 0
        self._state_file: str | None = None
        self._lock = RunLock(self.path).acquire()
        try:
            if resume and (self.path / _MANIFEST).exists():
                self._resume()
            else:
                if any(p.name != LOCK_NAME for p in self.path.iterdir()):
                    hint = ("; pass resume=True to continue the run it holds"
                            if (self.path / _MANIFEST).exists() else "")
                    raise ValueError(f"out directory {self.path} is not empty; a streamed trace "
                                     f"needs a new or empty directory, so chunks of two runs "
                                     f"never mix{hint}")
                self._write_manifest(wall_time=None)
        except BaseException:
            self._lock.release()
            raise

    def _resume(self) -> None:
        sweep_leftovers(self.path)
        run = StreamedTrace(self.path)
        if run.settings is None or self.settings is None:
            raise ValueError(f"cannot resume {self.path}: its manifest holds no run settings to "
                             "check against (written by TraceWriter without settings)")
        differ = [k for k in sorted(set(run.settings) | set(self.settings))
                  if run.settings.get(k) != self.settings.get(k)]
        if differ:
            k = differ[0]
            more = f" (also {', '.join(differ[1:])})" if differ[1:] else ""
            raise ValueError(f"cannot resume {self.path} with different settings: {k} was "
                             f"{run.settings.get(k)!r} when the run started, now "
                             f"{self.settings.get(k)!r}{more}")
        self.n_chunks, self.n_draws = run._listed, run._listed_draws
        self._layout, self.complete = run._layout, run.complete
        self.resumes = run.resumes + (0 if run.complete else 1)
        self._state_file = run.state_file
        if run.state_file is not None:
            self._commit = int(_STATE_RE.fullmatch(run.state_file).group(1))
            self.checkpoint = load_run_state(self.path / run.state_file)
        for p in self.path.iterdir():  # state files of commits that never happened
            if _STATE_RE.fullmatch(p.name) and p.name != self._state_file:
                p.unlink(missing_ok=True)

    def write(self, chunk: Trace, checkpoint: dict[str, Any] | None = None) -> Path:
        """Append ``chunk`` (its draws follow those already written) as the next chunk file and
        commit it, with ``checkpoint`` (a run state, plain tensors and numbers) if given."""
        layout = _layout(chunk)
        if self._layout is None:
            self._layout = layout
        elif layout != self._layout:
            raise ValueError(f"chunk {self.n_chunks} must match the earlier chunks' layout "
                             f"{self._layout}; got {layout}")
        arrays = chunk._arrays()
        arrays.update(warmup=np.array(self.warmup), thin=np.array(self.thin),
                      kernel=np.array(self.kernel), chunk_start=np.array(self.n_draws))
        file = atomic_write(self.path / _CHUNK.format(self.n_chunks),
                            lambda f: np.savez(f, **arrays))
        self.n_chunks += 1
        self.n_draws += chunk.n_draws
        self.commit(checkpoint)
        return file

    def commit(self, checkpoint: dict[str, Any] | None) -> None:
        """Save ``checkpoint`` as the run state (if given) and rewrite the manifest: the commit."""
        previous = self._state_file
        if checkpoint is not None:
            self._commit += 1
            name = _STATE.format(self._commit)
            payload = {**checkpoint, "format": _STATE_FORMAT}
            atomic_write(self.path / name, lambda f: torch.save(payload, f))
            self._state_file = name
        self._write_manifest(wall_time=None)
        if previous is not None and previous != self._state_file:
            (self.path / previous).unlink(missing_ok=True)

    def close(self, wall_time: float | None = None) -> StreamedTrace:
        """Mark the run complete, release the directory, and return a reader over it."""
        self.complete = True
        self._write_manifest(wall_time=wall_time)
        self.release()
        return open_trace(self.path)

    def release(self) -> None:
        """Release the directory's lock (idempotent); `close` does it."""
        self._lock.release()

    def _write_manifest(self, wall_time: float | None) -> None:
        manifest = {"format": _DIR_FORMAT, "complete": self.complete, "n_chunks": self.n_chunks,
                    "n_draws": self.n_draws, "warmup": self.warmup, "thin": self.thin,
                    "kernel": self.kernel, "wall_time": wall_time, "layout": self._layout,
                    "settings": self.settings, "state": self._state_file,
                    "resumes": self.resumes}
        data = json.dumps(manifest, indent=1).encode()
        atomic_write(self.path / _MANIFEST, data)


def load_run_state(path: str | os.PathLike, max_bytes: int | None = None) -> dict[str, Any]:
    """Read a run-state file (``state-NNNNNN.pt``) of a streamed run: ``torch.load`` with
    ``weights_only=True`` after its archive's declared sizes are checked against the read limit.

    Raises:
        ValueError: the file is a link, too large, truncated, pickled or foreign; names it.
    """
    path = Path(path)
    limit = read_limit() if max_bytes is None else max_bytes
    try:
        _regular_file(path, "run-state file")
        with zipfile.ZipFile(path) as zf:
            total = sum(i.file_size for i in zf.infolist())
        if total > limit:
            raise ValueError(f"declares {total} bytes once decompressed, above the read limit "
                             f"of {limit} bytes")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise ValueError(f"cannot read run state {path}: not enough memory") from None
    except Exception as err:  # torch.load raises many types for one corrupt file
        raise ValueError(f"cannot read run state {path}: {_one_line(err)}") from None
    if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
        raise ValueError(f"cannot read run state {path}: not a samplers run state "
                         f"(expected format {_STATE_FORMAT!r})")
    return state


_DTYPES = {"float16", "bfloat16", "float32", "float64", "complex64", "complex128", "int8",
           "int16", "int32", "int64", "uint8", "bool"}


def _is_int(v: Any, minimum: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _check_manifest(m: Any) -> None:
    """Refuse a manifest whose entries are missing or of the wrong kind (hand-edited, foreign or
    hostile), naming the first bad entry."""
    if not isinstance(m, dict):
        raise ValueError(f"expected a JSON object, found {type(m).__name__}")
    if m.get("format") != _DIR_FORMAT:
        raise ValueError(f"unknown 'format' {m.get('format')!r}, expected {_DIR_FORMAT!r}")
    checks = {"complete": (lambda v: isinstance(v, bool), "true or false"),
              "n_chunks": (_is_int, "an int >= 0"), "n_draws": (_is_int, "an int >= 0"),
              "warmup": (_is_int, "an int >= 0"), "thin": (lambda v: _is_int(v, 1), "an int >= 1"),
              "kernel": (lambda v: isinstance(v, str), "a string"),
              "wall_time": (lambda v: v is None or (isinstance(v, (int, float))
                                                    and not isinstance(v, bool)),
                            "a number or null")}
    for key, (ok, expected) in checks.items():
        if key not in m:
            raise ValueError(f"no {key!r} entry")
        if not ok(m[key]):
            raise ValueError(f"{key!r} is {str(m[key])[:60]!r}, expected {expected}")
    layout = m.get("layout")
    if layout is None:
        if m["n_chunks"] > 0:
            raise ValueError(f"lists {m['n_chunks']} chunks but no 'layout'")
    elif not (isinstance(layout, dict) and _is_int(layout.get("n_chains"), 1)
              and isinstance(layout.get("event_shape"), list)
              and all(_is_int(n) for n in layout["event_shape"])
              and layout.get("dtype") in _DTYPES and isinstance(layout.get("stats"), list)
              and all(isinstance(k, str) for k in layout["stats"])):
        raise ValueError(f"'layout' is {str(layout)[:80]!r}, expected n_chains, event_shape, "
                         "dtype and stats")
    if m.get("settings") is not None and not isinstance(m["settings"], dict):
        raise ValueError("'settings' is not an object")
    state = m.get("state")
    if state is not None and not (isinstance(state, str) and _STATE_RE.fullmatch(state)):
        raise ValueError(f"'state' is {str(state)[:60]!r}, expected a file name state-NNNNNN.pt "
                         "in the directory")
    if not _is_int(m.get("resumes", 0)):
        raise ValueError(f"'resumes' is {m.get('resumes')!r}, expected an int >= 0")


class StreamedTrace:
    """A trace on disk, written chunk by chunk by ``samplers.sample(..., out=path)``.

    Nothing is read until asked: `chunks` yields one `Trace` per chunk file (memory bounded by one
    chunk), `load` concatenates them all. A run that was killed is readable up to its last
    completed chunk (``complete`` is then False). A chunk that is corrupt, truncated, missing, out
    of order, a symbolic link, larger than the read limit or at odds with the manifest raises a
    ValueError that names its file. Reading takes no lock: a run being written is seen as of its
    last commit.

    Attributes:
        path: the directory.
        complete: whether the run finished.
        n_draws: draws in the completed chunks.
        files: the chunk files, in draw order.
        warmup, thin, kernel, wall_time: as in `Trace` (``wall_time`` is None for an unfinished run;
            for a resumed run, the sum over its processes).
        settings: the settings a resume must match, or None.
        resumes: how many times the run was resumed.
        state: the kernel's final state when returned by `samplers.sample`, or None.

    Example:
        >>> import tempfile
        >>> from samplers import MALA, sample
        >>> kernel = MALA(lambda x: -0.5 * x.pow(2).sum(-1), step_size=0.5)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     run = sample(kernel, torch.zeros(4, 2), 100, out=d, chunk_size=30, progress=False)
        ...     [c.n_draws for c in run.chunks()], open_trace(d).load().samples.shape
        ([30, 30, 30, 10], torch.Size([4, 100, 2]))
    """

    def __init__(self, path: str | os.PathLike, max_bytes: int | None = None):
        self.path = Path(path)
        self.max_bytes = max_bytes
        manifest_path = self.path / _MANIFEST
        if not self.path.is_dir():
            raise FileNotFoundError(f"no streamed trace directory at {self.path}")
        try:
            size = _regular_file(manifest_path, "manifest").st_size
            if size > _MAX_MANIFEST_BYTES:
                raise ValueError(f"{size} bytes, more than a manifest's {_MAX_MANIFEST_BYTES}")
            manifest = json.loads(manifest_path.read_bytes().decode("utf-8"))
            _check_manifest(manifest)
        except FileNotFoundError as err:
            raise ValueError(f"cannot read streamed trace {self.path}: no {_MANIFEST}") from err
        except UnicodeDecodeError:
            raise ValueError(f"cannot read streamed trace {manifest_path}: not UTF-8 "
                             "text") from None
        except RecursionError:
            raise ValueError(f"cannot read streamed trace {manifest_path}: JSON nested too "
                             "deeply") from None
        except (ValueError, KeyError, TypeError, OSError) as err:
            raise ValueError(f"cannot read streamed trace {manifest_path}: "
                             f"{_one_line(err)}") from None
        self.complete = manifest["complete"]
        self.warmup, self.thin = manifest["warmup"], manifest["thin"]
        self.kernel = manifest["kernel"]
        self.wall_time = manifest["wall_time"]
        self.settings = manifest.get("settings")
        self.state_file = manifest.get("state")
        self.resumes = manifest.get("resumes", 0)
        self._layout = manifest["layout"]
        self._listed, self._listed_draws = manifest["n_chunks"], manifest["n_draws"]
        listed = self._listed
        found = []
        for p in self.path.iterdir():
            if (m := _CHUNK_RE.fullmatch(p.name)):
                try:
                    _regular_file(p, "chunk file")
                except ValueError as err:
                    raise ValueError(f"cannot read streamed trace {self.path}: {err}") from None
                found.append(int(m.group(1)))
        found.sort()
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
        self._n_draws: int | None = self._listed_draws if len(found) == listed else None

    @property
    def n_draws(self) -> int:
        if self._n_draws is None:  # one chunk beyond the manifest: count it
            self._n_draws = sum(c.n_draws for c in self.chunks())
        return self._n_draws

    def chunks(self) -> Iterator[Trace]:
        """Yield the chunks in draw order, one `Trace` at a time, each checked against the
        manifest (layout, settings, first draw, chunk size) and the total against its count."""
        start = 0
        size = (self.settings or {}).get("chunk_size")
        for k, file in enumerate(self.files):
            chunk, chunk_start = _read_npz(file, self.max_bytes)
            if chunk_start != start:
                raise ValueError(f"cannot read trace {file}: its first draw is {chunk_start}, "
                                 f"expected {start} after the previous chunks")
            layout = _layout(chunk)
            if self._layout is not None and layout != self._layout:
                raise ValueError(f"cannot read trace {file}: layout {layout} differs from the "
                                 f"manifest's {self._layout}")
            if (chunk.warmup, chunk.thin, chunk.kernel) != (self.warmup, self.thin, self.kernel):
                raise ValueError(f"cannot read trace {file}: written by another run (warmup, "
                                 f"thin, kernel {(chunk.warmup, chunk.thin, chunk.kernel)} vs "
                                 f"the manifest's {(self.warmup, self.thin, self.kernel)})")
            last = k == len(self.files) - 1
            if isinstance(size, int) and (chunk.n_draws > size or (not last and chunk.n_draws != size)):
                raise ValueError(f"cannot read trace {file}: holds {chunk.n_draws} draws; this "
                                 f"run's chunks hold {size}")
            start += chunk.n_draws
            yield chunk
        if len(self.files) == self._listed and start != self._listed_draws:
            raise ValueError(f"streamed trace {self.path}: the manifest lists "
                             f"{self._listed_draws} draws but its chunks hold {start}")

    def load(self, max_draws: int | None = None) -> Trace:
        """All completed chunks as one in-memory `Trace`; with ``max_draws``, every k-th draw
        only (k the smallest that keeps at most ``max_draws``; ``thin`` is multiplied by k),
        read chunk by chunk, so memory holds one chunk plus the draws kept."""
        if max_draws is not None and (isinstance(max_draws, bool) or not isinstance(max_draws, int)
                                      or max_draws < 1):
            raise ValueError(f"max_draws must be a positive int or None; got {max_draws!r}")
        step = 1 if max_draws is None else max(1, -(-self.n_draws // max_draws))
        parts, seen = [], 0
        for chunk in self.chunks():
            first = (-seen) % step
            seen += chunk.n_draws
            if step > 1:
                chunk = Trace(chunk.samples[:, first::step].clone(),
                              chunk.log_prob[:, first::step].clone(),
                              {k: v[:, first::step].clone() for k, v in chunk.stats.items()})
            if chunk.n_draws:
                parts.append(chunk)
        if not parts:
            raise ValueError(f"streamed trace {self.path} holds no completed chunk yet")
        stats = {k: torch.cat([p.stats[k] for p in parts], 1) for k in parts[0].stats}
        return Trace(torch.cat([p.samples for p in parts], 1),
                     torch.cat([p.log_prob for p in parts], 1), stats, self.wall_time,
                     self.warmup, self.thin * step, self.kernel, self.state)

    def to_arviz(self, var_name: str = "x"):
        """`Trace.to_arviz` of the loaded trace."""
        return self.load().to_arviz(var_name)

    def __repr__(self) -> str:
        return (f"StreamedTrace({str(self.path)!r}, chunks={len(self.files)}, "
                f"complete={self.complete}, kernel={self.kernel!r})")


def open_trace(path: str | os.PathLike, max_bytes: int | None = None) -> StreamedTrace:
    """Open a directory written by ``samplers.sample(..., out=path)``; see `StreamedTrace`.
    ``max_bytes`` caps each chunk file's decompressed size (default `read_limit`). A directory
    written across processes by `samplers.distributed.sample(..., out=path)` (it holds
    ``shards.json``) opens as one `samplers.distributed.ShardedTrace` of every rank's chains."""
    if (Path(path) / "shards.json").exists() and not (Path(path) / _MANIFEST).exists():
        from .distributed import ShardedTrace

        return ShardedTrace(path, max_bytes)
    return StreamedTrace(path, max_bytes)

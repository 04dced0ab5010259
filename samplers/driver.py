"""`sample`: run a kernel on a batch of chains, warm it up, and collect a `Trace` (in memory, or
streamed to disk chunk by chunk)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import _compile
from ._checks import check_generator, check_positions, check_positive_int
from .base import Info, Kernel, State
from .trace import StreamedTrace, Trace, TraceWriter, open_trace

DEFAULT_CHUNK_SIZE = 1000
PROGRESS_EVERY = 50  # steps between progress-bar updates
# compile="auto" on CPU: batches this large (chains x event size), runs this long (see docs/performance.md)
AUTO_COMPILE_SIZE = 65536
AUTO_COMPILE_STEPS = 2000


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    disable = not enabled or bool(os.environ.get("CI")) or total < 200
    return tqdm(total=total, desc=desc, disable=disable, mininterval=0.5, leave=False)


class _Draws:
    """Preallocated device buffers for ``size`` draws (positions, log-densities, stats), allocated
    once and overwritten in place, so a run allocates nothing per step.

    Draws are staged a few at a time and written with one ``torch.stack(out=...)`` per buffer, so
    a kept step costs a list append, not one copy kernel per statistic (on small batches each
    launch costs as much as the arithmetic). A statistic that is the same tensor at every staged
    step (a frozen step size) is written with one broadcast copy. The stage holds at most
    `STAGE_BYTES` of draws (and at most `STAGE_STEPS` steps); a larger step is written at once."""

    STAGE_STEPS = 64
    STAGE_BYTES = 8 << 20

    def __init__(self, size: int, x0: Tensor):
        self.size = size
        self.samples = x0.new_empty((size, *x0.shape))
        self.log_prob = x0.new_empty((size, x0.shape[0]))
        self.stats: dict[str, Tensor] = {}
        per_step = (x0.numel() + 8 * x0.shape[0]) * x0.element_size()
        self.stage_steps = max(1, min(self.STAGE_STEPS, self.STAGE_BYTES // per_step))
        self._start = 0
        self._x: list[Tensor] = []
        self._lp: list[Tensor] = []
        self._stats: list[dict[str, Tensor]] = []

    def put(self, row: int, state: State, info: Info) -> None:
        """Stage draw ``row`` (rows come in order: 0, 1, ... within a buffer)."""
        if not self._x:
            self._start = row
        self._x.append(state.x)
        self._lp.append(state.log_prob)
        self._stats.append(info.stats())
        if len(self._x) >= self.stage_steps or row + 1 == self.size:
            self.flush()

    def flush(self) -> None:
        n = len(self._x)
        if not n:
            return
        rows = slice(self._start, self._start + n)
        _write(self.samples[rows], self._x)
        _write(self.log_prob[rows], self._lp)
        for name, value in self._stats[0].items():
            if name not in self.stats:
                self.stats[name] = value.new_empty((self.size, *value.shape))
            _write(self.stats[name][rows], [s[name] for s in self._stats])
        self._x, self._lp, self._stats = [], [], []

    def trace(self, rows: int, **meta) -> Trace:
        """The first ``rows`` draws as a CPU `Trace` in ``(chains, draws, ...)`` order (one copy)."""
        self.flush()
        return Trace(self.samples[:rows].transpose(0, 1).cpu(),
                     self.log_prob[:rows].transpose(0, 1).cpu(),
                     {k: v[:rows].transpose(0, 1).cpu() for k, v in self.stats.items()}, **meta)


def _write(out: Tensor, values: list[Tensor]) -> None:
    """``out[i] = values[i]`` in one kernel (one broadcast copy if every value is one tensor)."""
    first = values[0]
    if len(values) == 1:
        out[0] = first
    elif all(v is first for v in values):
        out.copy_(first.expand(out.shape))
    else:
        torch.stack(values, out=out)


class SamplingInterrupted(KeyboardInterrupt):
    """A streamed run stopped by SIGINT or SIGTERM after committing its current chunk (or, in
    warm-up, its current step). A `KeyboardInterrupt`, so code that does not catch it stops as on
    Ctrl-C. ``signal`` is the signal's number, ``path`` the run directory."""

    def __init__(self, signum: int, path: Path):
        self.signal, self.path = signum, path
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name}; {path} holds everything up to the last commit: "
                         "run the same call with resume=True to continue")


class _GracefulStop:
    """While streaming in the main thread, the first SIGINT/SIGTERM only asks the run to stop at
    its next commit; a second one interrupts at once."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> _GracefulStop:
        if self.enabled:
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _rng_state(generator: torch.Generator | None, device: torch.device) -> dict[str, Any]:
    if generator is not None:
        return {"generator": generator.get_state()}
    out = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def _set_rng_state(generator: torch.Generator | None, device: torch.device,
                   saved: dict[str, Any]) -> None:
    if generator is not None:
        generator.set_state(saved["generator"])
        return
    torch.set_rng_state(saved["cpu"])
    if "cuda" in saved:
        torch.cuda.set_rng_state(saved["cuda"], device)


def sample(kernel: Kernel, x0: Tensor, n_steps: int, warmup: int = 0, thin: int = 1,
           progress: bool = True, generator: torch.Generator | None = None,
           out: str | os.PathLike | None = None, chunk_size: int | None = None,
           resume: bool = False, compile: bool | str = False) -> Trace | StreamedTrace:
    """Run ``warmup`` tuning steps, then ``n_steps`` steps keeping every ``thin``-th state.

    Everything stays on ``x0``'s device: draws and stats are written into preallocated buffers
    with no host sync per step, and moved to the CPU once at the end, or once per chunk when
    streaming.

    With ``out``, the draws go to disk instead of memory, for runs larger than memory: the buffers
    hold one chunk of ``chunk_size`` draws, and each full chunk is written atomically to its own
    file in the directory ``out`` (see `TraceWriter`), which the run holds locked (one writer per
    directory). A run killed midway leaves every completed chunk readable with `open_trace`. The
    draws are the same as in memory for the same generator; ``wall_time`` then includes the chunk
    writes (one CPU copy and one fsync per chunk).

    Each commit (at the start, every chunk, every ``chunk_size * thin`` warm-up steps) saves the run
    state: the kernel's (`Kernel.state_dict`: positions, step sizes, a flow's parameters; in
    warm-up, dual averaging and the flow's optimizer and replay window) and the generator's.
    ``resume=True`` continues the run in ``out`` from its last commit, and gives the draws the
    uninterrupted run would have given, bit for bit on the same device; call it exactly as the
    first time (same kernel construction, ``x0`` shape, ``n_steps``, ``warmup``, ``thin``,
    ``chunk_size``, and a generator of the same kind: its state is restored, so its seed does not
    matter); a setting that differs is refused by name. On a new or empty ``out`` it starts afresh,
    so a job scheduler can always pass it. While streaming in the main thread, SIGINT or SIGTERM
    stops the run at its next commit with `SamplingInterrupted` (a second signal stops at once).

    Args:
        kernel: any samplers kernel.
        x0: initial positions ``(chains, *event)``.
        n_steps: post-warm-up steps.
        warmup: tuning steps (step sizes, FlowMC's flow); their states are not kept.
        thin: keep one state in ``thin``.
        progress: show a progress bar on long runs (never in CI).
        generator: the source of randomness (on ``x0``'s device); the global one when ``None``.
        out: a new or empty directory to stream the draws into; ``None`` keeps them in memory.
        chunk_size: draws (after thinning) per chunk file when streaming; default 1000.
        resume: with ``out``, continue the run it holds.
        compile: ``True`` runs the kernel's step through `torch.compile` (its random draws
            stay eager, from ``generator``, so the chain is the eager chain to float rounding):
            MALA, HMC and ULA, and FlowMC's local steps (its flow move stays eager). Where the
            compiler is missing or cannot compile ``log_prob`` as one graph, a warning says so
            once and the step runs eagerly. The first step of each new shape compiles (seconds to
            a minute on a CPU), which ``wall_time`` includes when it falls in production.
            ``"auto"`` compiles only where it was measured to pay back its compile time (see
            docs/performance.md): ``chains * event size >= 65536`` and ``warmup + n_steps >=
            2000``; elsewhere, and on GPUs (not measured yet), it runs eagerly. Default
            ``False``.

    Returns:
        a `Trace` with ``n_steps // thin`` draws; with ``out``, a `StreamedTrace` reading them from
        disk (its ``state`` is the kernel's final state, to continue the run).

    Raises:
        samplers.rundir.RunDirectoryLocked: another process is writing ``out``.
        SamplingInterrupted: SIGINT/SIGTERM while streaming, after the run state was committed.

    Example:
        >>> from samplers import MALA
        >>> kernel = MALA(lambda x: -0.5 * x.pow(2).sum(-1), step_size=0.5)
        >>> trace = sample(kernel, torch.zeros(4, 2), n_steps=100, warmup=50, progress=False)
        >>> trace.samples.shape
        torch.Size([4, 100, 2])

        Streaming to disk, 25 draws in memory at a time:

        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     run = sample(kernel, torch.zeros(4, 2), 1000, thin=10, out=d, chunk_size=25,
        ...                  progress=False)
        ...     len(run.files), run.load().samples.shape
        (4, torch.Size([4, 100, 2]))
    """
    if not isinstance(kernel, Kernel):
        raise TypeError(f"kernel must be a samplers Kernel (with init and step); "
                        f"got {type(kernel).__name__}")
    x0 = check_positions(x0)
    check_generator(generator, x0)
    check_positive_int(n_steps, "n_steps")
    check_positive_int(warmup, "warmup", minimum=0)
    check_positive_int(thin, "thin")
    if n_steps < thin:
        raise ValueError(f"n_steps must be at least thin to keep a draw; got n_steps={n_steps}, "
                         f"thin={thin}")
    if out is None and chunk_size is not None:
        raise ValueError("chunk_size applies to streaming only; pass out=<directory> with it "
                         f"(got chunk_size={chunk_size}, out=None)")
    if out is None and resume:
        raise ValueError("resume=True continues a streamed run; pass out=<its directory>")
    if out is not None and not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out must be a directory path (str or os.PathLike); got {type(out).__name__}")
    on = _compile_choice(compile, kernel, x0, warmup + n_steps)
    with _compile.compiling(kernel, on):
        return _sample(kernel, x0, n_steps, warmup, thin, progress, generator, out, chunk_size,
                       resume)


def _compile_choice(compile: bool | str, kernel: Kernel, x0: Tensor, steps: int) -> bool:
    """Whether to take the compiled path: ``compile`` as given, or "auto"'s rule."""
    if compile == "auto":
        big = x0.shape[0] * x0[0].numel() >= AUTO_COMPILE_SIZE and steps >= AUTO_COMPILE_STEPS
        return bool(_compile.compiled_kernels(kernel)) and x0.device.type == "cpu" and big
    if not isinstance(compile, bool):
        raise TypeError(f"compile must be True, False or 'auto'; got {compile!r}")
    if compile and not _compile.compiled_kernels(kernel):
        _compile.warn_once((type(kernel).__name__, "no-path"),
                           f"compile=True: {type(kernel).__name__} has no compiled step path "
                           "(MALA, HMC, ULA and FlowMC's local steps have one); running eagerly")
    return compile


def _sample(kernel: Kernel, x0: Tensor, n_steps: int, warmup: int, thin: int, progress: bool,
            generator: torch.Generator | None, out: str | os.PathLike | None,
            chunk_size: int | None, resume: bool) -> Trace | StreamedTrace:
    n_draws = n_steps // thin
    if out is None:
        return _run(kernel, x0, n_draws, warmup, thin, progress, generator, None, n_draws)
    chunk_size = check_positive_int(DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size,
                                    "chunk_size")
    settings = {"kernel": repr(kernel), "kernel_type": type(kernel).__qualname__,
                "n_chains": x0.shape[0], "event_shape": list(x0.shape[1:]),
                "dtype": str(x0.dtype).removeprefix("torch."), "n_steps": n_steps,
                "warmup": warmup, "thin": thin, "chunk_size": chunk_size,
                "generator": "global" if generator is None else f"torch.Generator({generator.device})"}
    # Before any step, so a bad directory fails fast instead of after a long warm-up.
    writer = TraceWriter(out, warmup=warmup, thin=thin, kernel=repr(kernel), settings=settings,
                         resume=resume)
    try:
        return _run(kernel, x0, n_draws, warmup, thin, progress, generator, writer, chunk_size)
    finally:
        writer.release()


def _run(kernel: Kernel, x0: Tensor, n_draws: int, warmup: int, thin: int, progress: bool,
         generator: torch.Generator | None, writer: TraceWriter | None,
         chunk_size: int) -> Trace | StreamedTrace:
    state = kernel.init(x0)
    wstate = None
    warm_done, draws_done, wall_before = 0, 0, 0.0
    saved = writer.checkpoint if writer is not None else None
    if saved is not None:
        state = kernel.load_state_dict(saved["kernel"], state)
        _set_rng_state(generator, x0.device, saved["rng"])
        warm_done, draws_done = saved["warmup_done"], saved["draws_done"]
        wall_before = saved["wall_time"]
        if saved["warmup_state"] is not None:
            wstate = kernel.load_warmup_state_dict(saved["warmup_state"], state)
    if writer is not None and writer.complete:
        run = open_trace(writer.path)
        run.state = state
        return run

    def checkpoint(warmup_done: int, draws: int, wall: float, warm: Any = None) -> dict[str, Any]:
        return {"kernel": kernel.state_dict(state), "rng": _rng_state(generator, x0.device),
                "warmup_done": warmup_done, "draws_done": draws, "wall_time": wall,
                "warmup_state": None if warm is None else kernel.warmup_state_dict(warm)}

    every = chunk_size * thin
    bar = _progress(warmup + n_draws * thin, progress, type(kernel).__name__)
    bar.update(warm_done + draws_done * thin)
    with _GracefulStop(writer is not None) as stop:
        if warm_done < warmup and wstate is None:
            wstate = kernel.warmup_init(state)
        if writer is not None and saved is None:
            # The starting point too, so a resumed run never depends on how the kernel it is
            # given was initialized (a flow's initial weights), only on this directory.
            writer.commit(checkpoint(0, 0, 0.0, wstate))
        if warm_done < warmup:
            for t in range(warm_done, warmup):
                state, info = kernel.step(state, generator)
                wstate, state = kernel.warmup_update(wstate, state, info, generator)
                if (t + 1) % PROGRESS_EVERY == 0:
                    bar.update(t + 1 - bar.n)
                if writer is not None and t + 1 < warmup and ((t + 1) % every == 0
                                                               or stop.signum is not None):
                    writer.commit(checkpoint(t + 1, 0, 0.0, wstate))
                    if stop.signum is not None:
                        raise SamplingInterrupted(stop.signum, writer.path)
            bar.update(warmup - bar.n)
            state = kernel.warmup_final(wstate, state)
            if writer is not None:
                writer.commit(checkpoint(warmup, 0, 0.0))

        draws = _Draws(n_draws if writer is None else min(chunk_size, n_draws), x0)
        start = time.perf_counter()
        for i in range(draws_done * thin, n_draws * thin):
            state, info = kernel.step(state, generator)
            if (i + 1) % PROGRESS_EVERY == 0:
                bar.update(warmup + i + 1 - bar.n)
            if (i + 1) % thin:
                continue
            d = i // thin
            row = d % draws.size
            draws.put(row, state, info)
            if writer is not None and (row + 1 == draws.size or d + 1 == n_draws):
                writer.write(draws.trace(row + 1),
                             checkpoint(warmup, d + 1, wall_before + time.perf_counter() - start))
                if stop.signum is not None and d + 1 < n_draws:
                    raise SamplingInterrupted(stop.signum, writer.path)
    if x0.device.type == "cuda":
        torch.cuda.synchronize(x0.device)
    wall = wall_before + time.perf_counter() - start
    bar.update(bar.total - bar.n)
    bar.close()
    if writer is not None:
        run = writer.close(wall)
        run.state = state
        return run
    return draws.trace(n_draws, wall_time=wall, warmup=warmup, thin=thin, kernel=repr(kernel),
                       state=state)

"""`sample`: run a kernel on a batch of chains, warm it up, and collect a `Trace` (in memory, or
streamed to disk chunk by chunk)."""

from __future__ import annotations

import os
import time

import torch
from torch import Tensor

from ._checks import check_positions, check_positive_int
from .base import Info, Kernel, State
from .trace import StreamedTrace, Trace, TraceWriter

DEFAULT_CHUNK_SIZE = 1000


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    disable = not enabled or bool(os.environ.get("CI")) or total < 200
    return tqdm(total=total, desc=desc, disable=disable, mininterval=0.5, leave=False)


class _Draws:
    """Preallocated device buffers for ``size`` draws (positions, log-densities, stats), allocated
    once and overwritten in place, so a run allocates nothing per step."""

    def __init__(self, size: int, x0: Tensor):
        self.size = size
        self.samples = x0.new_empty((size, *x0.shape))
        self.log_prob = x0.new_empty((size, x0.shape[0]))
        self.stats: dict[str, Tensor] = {}

    def put(self, row: int, state: State, info: Info) -> None:
        self.samples[row] = state.x
        self.log_prob[row] = state.log_prob
        for name, value in info.stats().items():
            if name not in self.stats:
                self.stats[name] = value.new_empty((self.size, *value.shape))
            self.stats[name][row] = value

    def trace(self, rows: int, **meta) -> Trace:
        """The first ``rows`` draws as a CPU `Trace` in ``(chains, draws, ...)`` order (one copy)."""
        return Trace(self.samples[:rows].transpose(0, 1).cpu(),
                     self.log_prob[:rows].transpose(0, 1).cpu(),
                     {k: v[:rows].transpose(0, 1).cpu() for k, v in self.stats.items()}, **meta)


def sample(kernel: Kernel, x0: Tensor, n_steps: int, warmup: int = 0, thin: int = 1,
           progress: bool = True, generator: torch.Generator | None = None,
           out: str | os.PathLike | None = None, chunk_size: int | None = None
           ) -> Trace | StreamedTrace:
    """Run ``warmup`` tuning steps, then ``n_steps`` steps keeping every ``thin``-th state.

    Everything stays on ``x0``'s device: draws and stats are written into preallocated buffers
    with no host sync per step, and moved to the CPU once at the end, or once per chunk when
    streaming.

    With ``out``, the draws go to disk instead of memory, for runs larger than memory: the buffers
    hold one chunk of ``chunk_size`` draws, and each full chunk is written atomically to its own
    file in the directory ``out`` (see `TraceWriter`). A run killed midway leaves every completed
    chunk readable with `open_trace`. The draws are the same as in memory for the same generator;
    ``wall_time`` then includes the chunk writes (one CPU copy and one fsync per chunk).

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

    Returns:
        a `Trace` with ``n_steps // thin`` draws; with ``out``, a `StreamedTrace` reading them from
        disk (its ``state`` is the kernel's final state, to continue the run).

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
    check_positive_int(n_steps, "n_steps")
    check_positive_int(warmup, "warmup", minimum=0)
    check_positive_int(thin, "thin")
    if n_steps < thin:
        raise ValueError(f"n_steps must be at least thin to keep a draw; got n_steps={n_steps}, "
                         f"thin={thin}")
    if out is None and chunk_size is not None:
        raise ValueError("chunk_size applies to streaming only; pass out=<directory> with it "
                         f"(got chunk_size={chunk_size}, out=None)")
    if out is not None and not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out must be a directory path (str or os.PathLike); got {type(out).__name__}")
    n_draws = n_steps // thin
    writer = None
    if out is not None:
        chunk_size = check_positive_int(DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size,
                                        "chunk_size")
        # Before any step, so a bad directory fails fast instead of after a long warm-up.
        writer = TraceWriter(out, warmup=warmup, thin=thin, kernel=repr(kernel))
    state = kernel.init(x0)
    bar = _progress(warmup + n_steps, progress, type(kernel).__name__)
    if warmup > 0:
        wstate = kernel.warmup_init(state)
        for _ in range(warmup):
            state, info = kernel.step(state, generator)
            wstate, state = kernel.warmup_update(wstate, state, info, generator)
            bar.update()
        state = kernel.warmup_final(wstate, state)

    draws = _Draws(n_draws if writer is None else min(chunk_size, n_draws), x0)
    start = time.perf_counter()
    for i in range(n_draws * thin):
        state, info = kernel.step(state, generator)
        bar.update()
        if (i + 1) % thin:
            continue
        d = i // thin
        row = d % draws.size
        draws.put(row, state, info)
        if writer is not None and (row + 1 == draws.size or d + 1 == n_draws):
            writer.write(draws.trace(row + 1))
    if x0.device.type == "cuda":
        torch.cuda.synchronize(x0.device)
    wall = time.perf_counter() - start
    bar.close()
    if writer is not None:
        run = writer.close(wall)
        run.state = state
        return run
    return draws.trace(n_draws, wall_time=wall, warmup=warmup, thin=thin, kernel=repr(kernel),
                       state=state)

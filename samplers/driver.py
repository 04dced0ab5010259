"""`sample`: run a kernel on a batch of chains, warm it up, and collect a `Trace`."""

from __future__ import annotations

import os
import time

import torch
from torch import Tensor

from ._checks import check_positions, check_positive_int
from .base import Kernel
from .trace import Trace


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    disable = not enabled or bool(os.environ.get("CI")) or total < 200
    return tqdm(total=total, desc=desc, disable=disable, mininterval=0.5, leave=False)


def sample(kernel: Kernel, x0: Tensor, n_steps: int, warmup: int = 0, thin: int = 1,
           progress: bool = True, generator: torch.Generator | None = None) -> Trace:
    """Run ``warmup`` tuning steps, then ``n_steps`` steps keeping every ``thin``-th state.

    Everything stays on ``x0``'s device: draws and stats are written into preallocated buffers
    with no host sync per step, and moved to the CPU once at the end.

    Args:
        kernel: any samplers kernel.
        x0: initial positions ``(chains, *event)``.
        n_steps: post-warm-up steps.
        warmup: tuning steps (step sizes, FlowMC's flow); their states are not kept.
        thin: keep one state in ``thin``.
        progress: show a progress bar on long runs (never in CI).
        generator: the source of randomness (on ``x0``'s device); the global one when ``None``.

    Returns:
        a `Trace` with ``n_steps // thin`` draws.

    Example:
        >>> from samplers import MALA
        >>> kernel = MALA(lambda x: -0.5 * x.pow(2).sum(-1), step_size=0.5)
        >>> trace = sample(kernel, torch.zeros(4, 2), n_steps=100, warmup=50, progress=False)
        >>> trace.samples.shape
        torch.Size([4, 100, 2])
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
    state = kernel.init(x0)
    bar = _progress(warmup + n_steps, progress, type(kernel).__name__)
    if warmup > 0:
        wstate = kernel.warmup_init(state)
        for _ in range(warmup):
            state, info = kernel.step(state, generator)
            wstate, state = kernel.warmup_update(wstate, state, info, generator)
            bar.update()
        state = kernel.warmup_final(wstate, state)

    n_draws = n_steps // thin
    samples = x0.new_empty((n_draws, *x0.shape))
    log_prob = x0.new_empty((n_draws, x0.shape[0]))
    stats: dict[str, Tensor] = {}
    start = time.perf_counter()
    for i in range(n_draws * thin):
        state, info = kernel.step(state, generator)
        bar.update()
        if (i + 1) % thin:
            continue
        d = i // thin
        samples[d] = state.x
        log_prob[d] = state.log_prob
        for name, value in info.stats().items():
            if name not in stats:
                stats[name] = value.new_empty((n_draws, *value.shape))
            stats[name][d] = value
    if x0.device.type == "cuda":
        torch.cuda.synchronize(x0.device)
    wall = time.perf_counter() - start
    bar.close()
    return Trace(samples.transpose(0, 1).cpu(), log_prob.transpose(0, 1).cpu(),
                 {k: v.transpose(0, 1).cpu() for k, v in stats.items()}, wall, warmup, thin,
                 repr(kernel), state)

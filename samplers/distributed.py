"""`sample` across processes with `torch.distributed` (e.g. under ``torchrun``): chains sharded.

Each rank runs the chains of its shard (contiguous blocks of the global chain index, sizes that
differ by at most one) through an ordinary `samplers.sample`, on its own device and with its own
random stream; the draws are gathered into one `Trace` on rank 0 in global chain order. What is
shared across ranks:

- FlowMC's flow: its parameters are broadcast from rank 0 before the run, and during warm-up
  every gradient of the flow's maximum-likelihood step is averaged over ranks (an all-reduce
  hook on each parameter), so each optimizer step equals one on the union of the ranks'
  minibatches and the flow stays identical on every rank (tested bit for bit). Each rank's
  minibatch comes from its own chains' replay window.
- Nothing else: step sizes are tuned per chain, so they need no communication.

What is *not* the same as one process: the random numbers. A rank's stream is derived from the
generator it is given (every rank should pass one seeded alike: rank r seeds its stream with the
r-th of a sequence drawn from it), so N processes give draws from the same chains' distribution
but not the same draws as one process with that generator; results are reproducible for a fixed
seed and process count. Exact invariance to the process count would need a random stream per
chain, which the kernels do not have. Kernels whose warm-up pools statistics over chains
(parallel tempering's schedule, reference and mode search) are refused until that pooling is
made collective; parallel tempering with a fixed schedule and reference runs.

Example (2 processes on CPU; run with ``torchrun --nproc_per_node 2 script.py``)::

    import torch, torch.distributed as dist, samplers
    from samplers.distributed import sample

    dist.init_process_group("gloo")
    kernel = samplers.MALA(lambda x: -0.5 * x.pow(2).sum(-1), 0.5)
    trace = sample(kernel, torch.zeros(1024, 2), 1000, warmup=200,
                   generator=torch.Generator().manual_seed(0))
    if dist.get_rank() == 0:
        print(trace.samples.shape)          # (1024, 1000, 2): every rank's chains
    dist.destroy_process_group()
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .base import Kernel
from .driver import sample as _sample
from .flowmc import FlowMC
from .trace import Trace

__all__ = ["local_rank", "rank_generator", "sample", "shard_bounds"]


def shard_bounds(n: int, world: int, rank: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s block of ``n`` chains over ``world`` ranks.

    Example:
        >>> [shard_bounds(10, 3, r) for r in range(3)]
        [(0, 4), (4, 7), (7, 10)]
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank must be in 0..{world - 1} for world size {world}; got {rank}")
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def rank_generator(generator: torch.Generator | None, rank: int,
                   device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for ``rank``, derived from ``generator`` (seeded alike on every rank): its
    seed is the ``rank``-th of a sequence of 63-bit integers drawn from a copy of ``generator``,
    which is left untouched. With ``None``, from the global generator's seed."""
    source = torch.Generator()
    if generator is None:
        source.manual_seed(torch.initial_seed())
    else:
        source.set_state(generator.get_state().clone() if generator.device.type == "cpu"
                         else torch.Generator().manual_seed(generator.initial_seed()).get_state())
    seeds = torch.randint(0, 2**63 - 1, (rank + 1,), generator=source, dtype=torch.int64)
    return torch.Generator(device=device).manual_seed(int(seeds[rank]))


def _flow_module(kernel: Kernel) -> nn.Module | None:
    if isinstance(kernel, FlowMC) and kernel.train and isinstance(kernel.flow, nn.Module):
        return kernel.flow
    return None


def _refuse_pooled_warmup(kernel: Kernel) -> None:
    from .tempering import ParallelTempering

    if isinstance(kernel, ParallelTempering):
        pooled = [name for name in ("tune_schedule", "adapt_reference") if getattr(kernel, name, False)]
        if getattr(kernel, "mode_search", 0):
            pooled.append("mode_search")
        if pooled:
            raise NotImplementedError(
                f"distributed sample: ParallelTempering's warm-up pools statistics over chains "
                f"({', '.join(pooled)}), which is not collective yet; pass fixed betas with "
                f"tune_schedule=False, adapt_reference=False, mode_search=0, or run it in one process")


def _average_gradients(module: nn.Module, world: int) -> list[Any]:
    """An all-reduce hook on each parameter: its gradient becomes the mean over ranks."""
    def hook(grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad / world

    return [p.register_hook(hook) for p in module.parameters() if p.requires_grad]


def sample(kernel: Kernel, x0: Tensor, n_steps: int, warmup: int = 0, thin: int = 1,
           progress: bool = False, generator: torch.Generator | None = None,
           gather: bool = True) -> Trace | None:
    """`samplers.sample` across the ranks of the default process group, chains sharded.

    Every rank calls it with the same arguments: the global ``x0`` ``(chains, *event)`` (each
    rank keeps its block, see `shard_bounds`) and a generator seeded alike (each rank derives
    its own stream, see `rank_generator`). Without a process group it is `samplers.sample`.

    Args:
        kernel, n_steps, warmup, thin, progress: as in `samplers.sample`.
        x0: the global initial positions; at least one chain per rank.
        generator: seeded alike on every rank; its device is where the rank's chains run.
        gather: gather the draws to rank 0 (one `Trace` of every chain, in global order; the
            other ranks get None); ``False``: every rank returns its own shard's `Trace`.

    Returns:
        The gathered `Trace` on rank 0 (``wall_time`` the slowest rank's), None elsewhere; or
        each rank's own with ``gather=False``.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return _sample(kernel, x0, n_steps, warmup, thin, progress, generator)
    if not isinstance(x0, Tensor) or x0.ndim < 2:
        raise ValueError(f"x0 must be a tensor (chains, *event); got "
                         f"{tuple(x0.shape) if isinstance(x0, Tensor) else type(x0).__name__}")
    world, rank = dist.get_world_size(), dist.get_rank()
    if x0.shape[0] < world:
        raise ValueError(f"x0 holds {x0.shape[0]} chains for {world} ranks: at least one chain "
                         f"per rank is needed")
    _refuse_pooled_warmup(kernel)
    start, stop = shard_bounds(x0.shape[0], world, rank)
    device = generator.device if generator is not None else x0.device
    local_x0 = x0[start:stop].to(device)
    local_gen = rank_generator(generator, rank, device)
    hooks: list[Any] = []
    flow = _flow_module(kernel) if warmup > 0 else None
    if flow is not None:
        with torch.no_grad():
            for p in flow.parameters():
                dist.broadcast(p.data, src=0)
        hooks = _average_gradients(flow, world)
    try:
        trace = _sample(kernel, local_x0, n_steps, warmup, thin, progress and rank == 0, local_gen)
    finally:
        for h in hooks:
            h.remove()
    if not gather:
        return trace
    shard = {"samples": trace.samples, "log_prob": trace.log_prob, "stats": trace.stats,
             "wall_time": trace.wall_time}
    shards: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(shard, shards, dst=0)
    if rank != 0:
        return None
    walls = [s["wall_time"] for s in shards if s["wall_time"] is not None]
    return Trace(torch.cat([s["samples"] for s in shards]),
                 torch.cat([s["log_prob"] for s in shards]),
                 {k: torch.cat([s["stats"][k] for s in shards]) for k in trace.stats},
                 max(walls) if walls else None, trace.warmup, trace.thin,
                 f"{trace.kernel} on {world} ranks", trace.state if world == 1 else None)


def local_rank() -> int:
    """``LOCAL_RANK`` set by torchrun (0 without it): the index of this process's device."""
    return int(os.environ.get("LOCAL_RANK", "0"))

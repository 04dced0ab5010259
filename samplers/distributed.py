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

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .base import Kernel
from .driver import sample as _sample
from .flowmc import FlowMC
from .rundir import atomic_write
from .trace import StreamedTrace, Trace, _regular_file, load_run_state

__all__ = ["ShardedTrace", "local_rank", "rank_generator", "sample", "shard_bounds"]

SHARDS = "shards.json"
_SHARD_FORMAT = "samplers-shards/1"
_SHARD_RE = re.compile(r"rank-(\d{5})")
_MAX_SHARDS_BYTES = 1 << 20


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
           gather: bool = True, out: str | os.PathLike | None = None,
           chunk_size: int | None = None, resume: bool = False) -> Trace | ShardedTrace | None:
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
        out: stream instead of gathering: rank r writes its chains into ``out/rank-RRRRR`` (a
            streamed run of its own, locked, resumable) and rank 0 writes ``out/shards.json``;
            `samplers.open_trace(out)` then reads every rank's chains as one run (`ShardedTrace`).
        chunk_size, resume: as in `samplers.sample`, per rank. A resume must use the same
            process count. While FlowMC's flow trains across ranks (warm-up) every rank must
            resume from the same step; a run killed then whose ranks committed different steps
            is refused by name (sampling steps need no agreement).

    Returns:
        The gathered `Trace` on rank 0 (``wall_time`` the slowest rank's), None elsewhere; or
        each rank's own with ``gather=False``; with ``out``, a `ShardedTrace` on every rank.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return _sample(kernel, x0, n_steps, warmup, thin, progress, generator, out=out,
                       chunk_size=chunk_size, resume=resume)
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
    shard_dir = None
    if out is not None:
        shard_dir = _prepare_shards(Path(out), x0.shape[0], world, rank, resume,
                                    training_flow=flow is not None)
    try:
        trace = _sample(kernel, local_x0, n_steps, warmup, thin, progress and rank == 0, local_gen,
                        out=shard_dir, chunk_size=chunk_size, resume=resume)
    finally:
        for h in hooks:
            h.remove()
    if out is not None:
        dist.barrier()
        return ShardedTrace(out)
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


def _prepare_shards(out: Path, n_chains: int, world: int, rank: int, resume: bool,
                    training_flow: bool) -> Path:
    """Rank 0 writes (or on resume checks) ``shards.json``; returns this rank's directory."""
    manifest = {"format": _SHARD_FORMAT, "world": world, "n_chains": n_chains,
                "bounds": [list(shard_bounds(n_chains, world, r)) for r in range(world)],
                "dirs": [f"rank-{r:05d}" for r in range(world)]}
    problem = ""
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if resume and (out / SHARDS).exists():
            try:
                saved = _read_shards(out)
            except ValueError as err:
                problem = str(err)
            else:
                if saved != manifest:
                    problem = (f"cannot resume {out} with {world} processes and {n_chains} chains: "
                               f"it was started with {saved['world']} processes and "
                               f"{saved['n_chains']} chains")
        elif any(out.iterdir()):
            problem = (f"out directory {out} is not empty; a sharded run needs a new or empty "
                       f"directory" + ("; pass resume=True to continue the run it holds"
                                       if (out / SHARDS).exists() else ""))
        else:
            atomic_write(out / SHARDS, json.dumps(manifest, indent=1).encode())
    flag = [problem]
    dist.broadcast_object_list(flag, src=0)
    if flag[0]:
        raise ValueError(flag[0])
    mine = out / manifest["dirs"][rank]
    mine.mkdir(exist_ok=True)
    if resume and training_flow:
        steps = [None] * world
        dist.all_gather_object(steps, _committed_steps(mine))
        if len(set(steps)) > 1 and any(s is not None and s[1] == 0 for s in steps):
            raise ValueError(
                f"cannot resume {out}: the ranks committed different steps (warm-up, draws per "
                f"rank: {steps}) while FlowMC's flow was training across ranks, so their "
                f"gradient averaging cannot line up again; start the run afresh")
    return mine


def _committed_steps(directory: Path) -> tuple[int, int] | None:
    if not (directory / "manifest.json").exists():
        return None
    run = StreamedTrace(directory)
    if run.state_file is None:
        return None
    saved = load_run_state(directory / run.state_file)
    return int(saved["warmup_done"]), int(saved["draws_done"])


def _read_shards(path: Path) -> dict[str, Any]:
    file = path / SHARDS
    try:
        size = _regular_file(file, "shard manifest").st_size
        if size > _MAX_SHARDS_BYTES:
            raise ValueError(f"{size} bytes, more than a shard manifest's {_MAX_SHARDS_BYTES}")
        m = json.loads(file.read_bytes().decode("utf-8"))
        if not isinstance(m, dict) or m.get("format") != _SHARD_FORMAT:
            raise ValueError(f"not a samplers shard manifest (format {_SHARD_FORMAT!r})")
        world, n = m.get("world"), m.get("n_chains")
        if not (isinstance(world, int) and isinstance(n, int) and 1 <= world <= n):
            raise ValueError(f"world {world!r} and n_chains {n!r} must be ints, 1 <= world <= n_chains")
        if m.get("bounds") != [list(shard_bounds(n, world, r)) for r in range(world)]:
            raise ValueError("its chain bounds are not the contiguous blocks of its chains")
        if m.get("dirs") != [f"rank-{r:05d}" for r in range(world)]:
            raise ValueError("its shard directories are not rank-00000 ... in order")
    except (UnicodeDecodeError, RecursionError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read sharded run {file}: not a JSON manifest "
                         f"({type(err).__name__})") from None
    except (ValueError, OSError) as err:
        raise ValueError(f"cannot read sharded run {file}: {err}") from None
    return m


class ShardedTrace:
    """A run streamed by `sample(..., out=dir)` across ranks: every rank's `StreamedTrace`
    (``dir/rank-RRRRR``) read as one run, chains concatenated in global order.

    A killed run is readable up to the draws every rank has completed (``n_draws`` is the
    least over ranks; ``complete`` whether every rank finished). Reading takes no lock.

    Attributes:
        path, complete, n_draws, warmup, thin, kernel, wall_time (the slowest rank's, None
        until every rank finished), shards (the ranks' `StreamedTrace`), n_chains.
    """

    def __init__(self, path: str | os.PathLike, max_bytes: int | None = None):
        self.path = Path(path)
        m = _read_shards(self.path)
        self.shards = []
        for name, (start, stop) in zip(m["dirs"], m["bounds"], strict=True):
            sub = self.path / name
            if sub.is_symlink() or not sub.is_dir():
                raise ValueError(f"cannot read sharded run {self.path}: {sub} is missing or a link")
            shard = StreamedTrace(sub, max_bytes)
            chains = (shard.settings or {}).get("n_chains")
            if chains != stop - start:
                raise ValueError(f"cannot read sharded run {self.path}: {sub} holds {chains} "
                                 f"chains, the manifest gives it {stop - start}")
            self.shards.append(shard)
        first = self.shards[0]
        for shard in self.shards[1:]:
            if (shard.warmup, shard.thin, shard.kernel) != (first.warmup, first.thin, first.kernel):
                raise ValueError(f"cannot read sharded run {self.path}: {shard.path} was written "
                                 f"with other settings than {first.path}")
        self.n_chains = m["n_chains"]
        self.warmup, self.thin = first.warmup, first.thin
        self.kernel = f"{first.kernel} on {m['world']} ranks"
        self.complete = all(s.complete for s in self.shards)
        walls = [s.wall_time for s in self.shards]
        self.wall_time = max(walls) if self.complete and None not in walls else None
        self.state: Any = None

    @property
    def n_draws(self) -> int:
        return min(s.n_draws for s in self.shards)

    @property
    def files(self) -> list[Path]:
        return [f for s in self.shards for f in s.files]

    def chunks(self) -> Iterator[Trace]:
        """Yield chunk by chunk (the ranks' chunks side by side), up to the draws every rank
        holds; memory bounded by one chunk of every rank."""
        limit = self.n_draws
        seen = 0
        for parts in zip(*(s.chunks() for s in self.shards), strict=False):
            n = min(p.n_draws for p in parts)
            if n != max(p.n_draws for p in parts) or seen >= limit:
                break
            seen += n
            yield Trace(torch.cat([p.samples for p in parts]), torch.cat([p.log_prob for p in parts]),
                        {k: torch.cat([p.stats[k] for p in parts]) for k in parts[0].stats},
                        None, self.warmup, self.thin, self.kernel)

    def load(self, max_draws: int | None = None) -> Trace:
        """Every rank's draws up to `n_draws` as one in-memory `Trace`; with ``max_draws``, every
        k-th draw (k the smallest that keeps at most ``max_draws``; ``thin`` multiplied by k)."""
        if max_draws is not None and (isinstance(max_draws, bool) or not isinstance(max_draws, int)
                                      or max_draws < 1):
            raise ValueError(f"max_draws must be a positive int or None; got {max_draws!r}")
        n = self.n_draws
        step = 1 if max_draws is None else max(1, -(-n // max_draws))
        parts = [s.load() for s in self.shards]
        cut = slice(0, n, step)
        return Trace(torch.cat([p.samples[:, cut] for p in parts]),
                     torch.cat([p.log_prob[:, cut] for p in parts]),
                     {k: torch.cat([p.stats[k][:, cut] for p in parts]) for k in parts[0].stats},
                     self.wall_time, self.warmup, self.thin * step, self.kernel)

    def to_arviz(self, var_name: str = "x"):
        return self.load().to_arviz(var_name)

    def __repr__(self) -> str:
        return (f"ShardedTrace({str(self.path)!r}, ranks={len(self.shards)}, "
                f"complete={self.complete}, kernel={self.kernel!r})")

"""`JointTrainer.fit` across the processes of a `torch.distributed` group (e.g. under
``torchrun``): data-parallel flowMC-EBM training.

`flowmc_ebm.training.run.fit_loop` calls `attach` when a process group is initialized; nothing
changes without one. Under ``torchrun --nproc_per_node N`` every rank runs the same script:

- **pool**: rank r owns the block ``shard_bounds(pool_size, N, r)`` of the persistent chains
  (``trainer.pool_`` is that block) and takes ``n_negatives / N`` of them per iteration, advanced
  by the trainer's kernel with the rank's own generator (`samplers.distributed.rank_generator` of
  ``Generator().manual_seed(config.seed)``). Global moves (flowMC's i-SIR/IMH) are local to the
  rank: the flow, identical everywhere, proposes for the rank's chains only.
- **data**: the data order of epoch k is a permutation drawn from a generator seeded by
  `epoch_seed` ``(seed, k)``, the same on every rank and for every process count; iteration i uses
  batch ``i mod (n // batch_size)`` of it, and rank r the block ``shard_bounds(batch_size, N, r)``
  of that batch. The order is a function of the iteration, so it needs no state.
- **gradients**: the energy's and the flow's parameters are broadcast from rank 0 at the start;
  during `fit` every gradient is averaged over ranks (an all-reduce hook per parameter,
  `samplers.distributed._average_gradients`). Shards are equal (``batch_size``,
  ``n_negatives`` and ``pool_size`` must be multiples of N), so the averaged gradient is the
  gradient of the loss on the concatenated batch and negatives, and every rank takes the same
  Adam step: the networks stay identical.
- **history**: each iteration's record (losses, acceptance, negatives' mode weights, the
  divergence guard's columns) is averaged over ranks in one all-reduce on the device (no host
  sync), so every rank holds the same history and takes the same restart decisions.
- **checkpoints**: all ranks call the save (a collective); rank 0 gathers every rank's pool block
  and generator state and writes one checkpoint through `flowmc_ebm.checkpoint`
  (atomic, numbered, ``last.pt``) with the global config, the whole pool in global chain order
  and ``state["parallel"]`` (process count, generator states). Only rank 0 takes the run lock.
- **stopping**: a callback's stop or a signal is agreed on at log points (``log_every``) and at
  checkpoints, so every rank stops at the same iteration.

What is invariant: for a seed and a process count a run is reproducible, and it equals a
single-process emulation that runs each block of chains with its rank's generator and steps on the
concatenated batch (tested). It is **not** invariant to the process count: the chains' random
streams are per rank, not per chain. So a checkpoint resumes exactly only with the process count
that wrote it; `attach` refuses another count (and a one-process checkpoint under torchrun, or a
torchrun checkpoint in one process) with a message saying so. A kernel error on one rank (e.g.
non-finite chains) stops the job instead of restarting from the last good state: the other ranks
are already inside the gradient all-reduce and cannot restart in step.

The command line uses the same path: ``torchrun --nproc_per_node 2 -m flowmc_ebm.cli train ...``
makes its group with `group_from_env`, stops every rank on an error one meets before training
(`agreement`), and draws its figures from `gather_pool`; rank 0 alone writes its files.

Example (``torchrun --nproc_per_node 2 train.py``)::

    import torch, torch.distributed as dist
    from flowmc_ebm import JointTrainer
    dist.init_process_group("gloo")          # "nccl" with one GPU per local rank
    trainer = JointTrainer.from_config(2, "flowmc")
    trainer.fit(data, n_iterations=1000, checkpoint_dir="run/checkpoints")
    dist.destroy_process_group()
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from flowmc_ebm.checkpoint import load_checkpoint, write_numbered_checkpoint
from flowmc_ebm.training import guard
from samplers.distributed import _average_gradients, local_rank, rank_generator, shard_bounds

__all__ = ["FORMAT", "Parallel", "active", "agreement", "attach", "device_for", "epoch_seed",
           "gather_pool", "group_from_env", "init_from_env", "is_writer", "launched", "load",
           "rank"]

#: Tag of ``state["parallel"]`` in a checkpoint written by several processes.
FORMAT = "flowmc-ebm-parallel/1"


def active() -> bool:
    """A `torch.distributed` process group is initialized."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if active() else 0


def is_writer() -> bool:
    """Whether this process writes run files: rank 0, or the only process."""
    return rank() == 0


def init_from_env(device: torch.device | str = "cpu") -> bool:
    """Under torchrun (``WORLD_SIZE`` set) initialize the default process group if nobody did:
    NCCL for a CUDA device (and ``cuda:LOCAL_RANK`` made current), gloo otherwise. Returns
    whether a group is active."""
    if active():
        return True
    if "WORLD_SIZE" not in os.environ:
        return False
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if cuda else "gloo")
    return True


def launched() -> bool:
    """Started by torchrun (or a launcher setting the same variables) with more than one
    process: ``WORLD_SIZE`` > 1."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextmanager
def group_from_env(device: str) -> Iterator[str]:
    """Under a launcher with several processes (`launched`) and no group yet: the default
    process group, initialized for ``device`` (NCCL for ``cuda``, gloo otherwise), for the
    block; destroyed when it ends, by an error or not. Yields the name of this rank's device
    (``cuda`` becomes ``cuda:LOCAL_RANK``); without a launcher, ``device`` as it came."""
    if not launched() or active():
        yield device
        return
    cuda = str(device).split(":")[0] == "cuda"
    init_from_env("cuda" if cuda else "cpu")
    try:
        yield f"cuda:{local_rank()}" if str(device) == "cuda" else device
    finally:
        dist.destroy_process_group()


@contextmanager
def agreement() -> Iterator[None]:
    """A block that every rank completes or every rank leaves by an exception (nothing without
    a group): at its end the ranks tell each other whether it raised; a rank where it did not
    raises a ValueError naming the first rank where it did and that rank's error. So an error
    one rank meets before the collectives of `fit` (e.g. rank 0's output directory is taken)
    stops every rank with its message instead of leaving the others waiting."""
    if not active():
        yield
        return
    try:
        yield
    except BaseException as err:
        _exchange(f"{type(err).__name__}: {err}")
        raise
    failed = [(r, m) for r, m in enumerate(_exchange(None)) if m is not None]
    if failed:
        r, message = failed[0]
        raise ValueError(f"rank {r} of {dist.get_world_size()} stopped: {message}")


def _exchange(message: str | None) -> list[str | None]:
    found: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(found, message)
    return found


def gather_pool(trainer) -> Tensor:
    """The whole persistent pool in global chain order: under a group (a collective) every
    rank's block gathered, else ``trainer.pool_``."""
    if getattr(trainer, "_parallel", None) is None or not active():
        return trainer.pool_
    blocks = [torch.empty_like(trainer.pool_) for _ in range(dist.get_world_size())]
    dist.all_gather(blocks, trainer.pool_.contiguous())
    return torch.cat(blocks)


def device_for(device: torch.device | str) -> torch.device:
    """This rank's device: ``cuda`` becomes ``cuda:LOCAL_RANK`` under a process group."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and active():
        return torch.device("cuda", local_rank())
    return device


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s data order (the same for every rank and process count)."""
    return int(np.random.SeedSequence([int(seed), 0x5EED, int(epoch)]).generate_state(
        1, np.uint64)[0] >> np.uint64(1))


@dataclass
class Parallel:
    """A trainer's place in the process group (``trainer._parallel`` once attached)."""

    world: int
    rank: int
    global_config: Any
    local_config: Any
    hooks: list = field(default_factory=list)
    _epoch: int = -1
    _order: Tensor | None = None

    # ------------------------------------------------------------------------------- data
    def next_batch(self, trainer, data: Tensor) -> Tensor:
        """This rank's block of iteration ``trainer.iteration_``'s batch."""
        b = self.global_config.batch_size
        epoch, pos = divmod(trainer.iteration_, data.shape[0] // b)
        if epoch != self._epoch:
            g = torch.Generator(device=trainer.device).manual_seed(
                epoch_seed(self.global_config.seed, epoch))
            self._order = torch.randperm(data.shape[0], generator=g, device=trainer.device)
            self._epoch = epoch
        lo, hi = shard_bounds(b, self.world, self.rank)
        return data[self._order[pos * b + lo:pos * b + hi]]

    # ------------------------------------------------------------------------ collectives
    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank if ``flag`` is true on any (a host sync: call at log points)."""
        t = torch.tensor([float(bool(flag))], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def reduce_record(self, record: dict[str, Any]) -> dict[str, Any]:
        """The iteration's record averaged over ranks, in one all-reduce on the device; the
        guard's ``|mean E|`` recomputed from the averaged means, its finite flags true only if
        true on every rank."""
        keys = [k for k in record if k not in ("guard", "eval")]
        parts = [record[k].reshape(-1).to(torch.float64) for k in keys] + [record["guard"]]
        flat = torch.cat(parts)
        dist.all_reduce(flat)
        flat = flat / self.world
        out, i = dict(record), 0
        for k, p in zip(keys, parts[:-1], strict=True):  # the last part is the guard
            out[k] = flat[i:i + p.numel()].reshape(record[k].shape).to(record[k].dtype)
            i += p.numel()
        g = flat[i:].clone()
        cols = guard.COLUMNS
        g[cols.index("abs_mean_energy")] = torch.maximum(out["energy_pos"].abs(),
                                                         out["energy_neg"].abs()).to(g.dtype)
        for name in ("energies_finite", "negatives_finite"):
            g[cols.index(name)] = (g[cols.index(name)] == 1).to(g.dtype)
        out["guard"] = g
        return out

    def first_bad(self, trainer) -> tuple[int, str] | None:
        """`guard.first_bad` agreed on by every rank: the earliest any rank finds."""
        found: list[Any] = [None] * self.world
        dist.all_gather_object(found, guard.first_bad(trainer))
        bad = [f for f in found if f is not None]
        return min(bad) if bad else None

    # --------------------------------------------------------------------------- fit scope
    def enter(self, trainer) -> None:
        """At the start of `fit`: local sizes, the two replaced methods, gradient hooks."""
        trainer.config = self.local_config
        trainer._next_batch = lambda data: self.next_batch(trainer, data)
        trainer._first_bad = lambda: self.first_bad(trainer)
        for module in (trainer.energy, trainer.flow):
            self.hooks += _average_gradients(module, self.world)

    def exit(self, trainer) -> None:
        trainer.config = self.global_config
        for name in ("_next_batch", "_first_bad"):
            trainer.__dict__.pop(name, None)
        for h in self.hooks:
            h.remove()
        self.hooks = []

    # -------------------------------------------------------------------------- checkpoints
    def save(self, trainer, directory: str | Path, newer_than: int | None) -> Path:
        """Collective: rank 0 writes one checkpoint holding every rank's pool block and
        generator state (see the module docstring). Returns the path on every rank."""
        shard = {"pool": trainer.pool_.detach().cpu(), "generator": trainer.generator.get_state()}
        shards: list[Any] | None = [None] * self.world if self.rank == 0 else None
        dist.gather_object(shard, shards, dst=0)
        answer: list[Any] = [None]
        if self.rank == 0:
            try:
                state = trainer.state_dict()
                state["config"] = asdict(self.global_config)
                pool = torch.cat([s["pool"] for s in shards]).to(trainer.pool_)
                if not bool(torch.isfinite(pool).all()):
                    raise ValueError("the persistent chains hold NaN or inf values")
                state["pool"] = pool
                state["parallel"] = {"format": FORMAT, "world": self.world,
                                     "generators": [s["generator"] for s in shards]}
                answer[0] = write_numbered_checkpoint(
                    state, directory, trainer.iteration_, "joint-trainer",
                    self.global_config.keep_checkpoints, newer_than=newer_than)
            except (ValueError, OSError) as err:
                answer[0] = err
        dist.broadcast_object_list(answer, src=0)
        if isinstance(answer[0], BaseException):
            raise answer[0]
        return Path(answer[0])


def _refuse(saved: dict[str, Any] | None, world: int) -> None:
    if saved is None:
        raise ValueError(
            f"cannot continue this trainer across {world} processes exactly: it was trained (or "
            f"checkpointed) in one process without torch.distributed, whose random stream drives "
            f"the whole pool; continue it in one process, or start a new run under torchrun (a "
            f"checkpoint written under torchrun is read by flowmc_ebm.training.parallel.load)")
    if saved.get("format") != FORMAT:
        raise ValueError(f"its checkpoint's parallel state is not {FORMAT!r}")
    if saved["world"] != world:
        raise ValueError(
            f"cannot resume exactly with {world} processes: the checkpoint was written by "
            f"{saved['world']} processes, each driving its block of the pool with its own random "
            f"stream; resume with torchrun --nproc_per_node {saved['world']}")


def attach(trainer) -> Parallel | None:
    """Called by `fit` at its start: put ``trainer`` in its place in the process group (once),
    or refuse to continue a run that cannot continue exactly here. None without a group."""
    saved = getattr(trainer, "_parallel_state", None)
    if not active():
        if saved is not None and trainer._loaded:
            raise ValueError(
                f"cannot resume exactly in one process: the checkpoint was written by "
                f"{saved['world']} processes under torch.distributed, each driving its block of "
                f"the pool with its own random stream; resume with torchrun --nproc_per_node "
                f"{saved['world']}")
        return None
    ctx = getattr(trainer, "_parallel", None)
    world, me = dist.get_world_size(), dist.get_rank()
    if ctx is not None:
        if (ctx.world, ctx.rank) != (world, me):
            raise ValueError(f"this trainer was attached to rank {ctx.rank} of {ctx.world} "
                             f"processes; this group is rank {me} of {world}")
        return ctx
    c = trainer.config
    for name in ("batch_size", "n_negatives", "pool_size"):
        if getattr(c, name) % world:
            raise ValueError(f"trainer.{name} = {getattr(c, name)} is not a multiple of the "
                             f"{world} processes: every rank needs an equal share")
    if trainer.pool_ is not None or trainer.iteration_ > 0:
        _refuse(saved if trainer._loaded else None, world)
    local = replace(c, batch_size=c.batch_size // world, n_negatives=c.n_negatives // world,
                    pool_size=c.pool_size // world)
    ctx = Parallel(world, me, c, local)
    with torch.no_grad():
        tilt = trainer.tilt if isinstance(trainer.tilt, nn.Module) else None
        for module in (trainer.energy, trainer.flow, tilt):
            for p in (module.parameters() if module is not None else ()):
                dist.broadcast(p.data, src=0)
    gen = rank_generator(torch.Generator().manual_seed(c.seed), me, trainer.device)
    if trainer.pool_ is not None:  # a torchrun checkpoint of this process count
        lo, hi = shard_bounds(c.pool_size, world, me)
        trainer.pool_ = trainer.pool_[lo:hi].clone()
        gen.set_state(saved["generators"][me].cpu())
    trainer.generator = gen
    trainer._parallel = ctx
    return ctx


def load(path: str | Path, **kwargs: Any):
    """`JointTrainer.load` keeping the checkpoint's parallel state (``state["parallel"]``), so
    that `fit` under torchrun continues it exactly (with the process count that wrote it)."""
    from flowmc_ebm.training.joint import JointTrainer

    trainer = JointTrainer.load(path, **kwargs)
    if getattr(trainer, "_parallel_state", None) is None:
        trainer._parallel_state = load_checkpoint(path, "joint-trainer").get("parallel")
    return trainer

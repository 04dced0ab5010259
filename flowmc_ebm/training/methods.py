"""The training methods as records: what each one tilts, samples with, starts from and fits.

A `Method` says everything `JointTrainer` needs to know about a way of drawing negatives; the
trainer's loop never asks which method it runs. Adding a sampler-backed method is one record
here (or one `register` call from outside) and one test.

- ``"flowmc"`` (flowMC-EBM, Grenioux et al. 2023): MALA steps and flow-proposed i-SIR/IMH moves
  on persistent chains; the flow fits the negatives.
- ``"ula"`` (ULA-PCD, the paper's ULA-EBM) and ``"mala"`` (MALA-PCD): Langevin steps on
  persistent chains; the flow is trained beside them on the negatives but proposes nothing.
- ``"nt"`` (NT-EBM, Nijkamp et al. 2022): short-run MALA in the flow's latent space from fresh
  flow draws, the energy tilting the full flow density; the flow fits the data.

Example:
    >>> sorted(METHODS)
    ['flowmc', 'mala', 'nt', 'ula']
    >>> METHODS["nt"].flow_fits, METHODS["nt"].fresh_chains
    ('data', True)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

import samplers
from flowmc_ebm.energies import FlowTiltedEnergy, TiltedEnergy

__all__ = ["METHODS", "Method", "advance", "custom_method", "get_method", "register"]

Acceptance = Callable[[samplers.Kernel, samplers.Info], tuple[Any, Any]]


def _mh_acceptance(kernel: samplers.Kernel, info: samplers.Info) -> tuple[Any, Any]:
    """A kernel with one kind of move: its acceptance is the local one, there is no global one."""
    return info.accept_prob, None


def _flowmc_acceptance(kernel: samplers.FlowMC, info: samplers.Info) -> tuple[Any, Any]:
    local = info.extras["local_accept_prob"] if kernel.n_local > 0 else None
    return local, info.extras["global_accept_prob"]


def _one_move(config) -> int:
    return 1


@dataclass(frozen=True)
class Method:
    """One way of drawing the negatives and training the flow beside the EBM.

    Attributes:
        name: the name configs and checkpoints use.
        tilt: ``(energy, flow) -> model`` whose ``log_prob`` the chains sample
            (`TiltedEnergy`: ``−E + log λ``; `FlowTiltedEnergy`: ``−E + log q``).
        kernel: ``(log_prob, flow, config) -> samplers.Kernel``.
        moves_per_step: ``config -> MCMC moves one kernel step makes per chain`` (1 for a
            Langevin step; ``n_local + n_global`` for a flowMC cycle). ``config.mcmc_steps``
            counts moves for every method, so an iteration runs `steps` kernel steps.
        acceptance: ``(kernel, info) -> (local, global)`` acceptance of one step, each a
            per-chain tensor or None where the kernel has no such move (recorded as NaN).
        fresh_chains: start every iteration's chains from new flow draws (short-run) instead of
            the persistent pool.
        flow_fits: what the flow's NLL step fits: ``"negatives"`` or ``"data"``.
    """

    name: str
    kernel: Callable[..., samplers.Kernel]
    tilt: Callable[..., Any] = TiltedEnergy
    moves_per_step: Callable[[Any], int] = _one_move
    acceptance: Acceptance = _mh_acceptance
    fresh_chains: bool = False
    flow_fits: str = "negatives"

    def __post_init__(self) -> None:
        if self.flow_fits not in ("negatives", "data"):
            raise ValueError(f"Method.flow_fits must be 'negatives' or 'data'; received "
                             f"{self.flow_fits!r}")

    def steps(self, config) -> int:
        """Kernel steps per iteration: ``config.mcmc_steps`` moves in whole kernel steps."""
        per_step = self.moves_per_step(config)
        if config.mcmc_steps % per_step:
            raise ValueError(f"trainer.mcmc_steps ({config.mcmc_steps}) must be a multiple of "
                             f"{per_step}, the moves one {self.name!r} kernel step makes per "
                             f"chain")
        return config.mcmc_steps // per_step


def _flowmc_kernel(log_prob, flow, c) -> samplers.Kernel:
    return samplers.FlowMC(log_prob, flow, local=samplers.MALA(log_prob, c.step_size),
                           n_local=c.n_local, global_move=c.global_move, n_global=c.n_global,
                           n_particles=c.n_particles, train=False)


def _nt_kernel(log_prob, flow, c) -> samplers.Kernel:
    step = c.step_size
    return samplers.Latent(log_prob, flow, lambda f: samplers.MALA(f, step))


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to `METHODS` (the registry configs, the CLI and `JointTrainer` read)."""
    if not isinstance(method, Method):
        raise TypeError(f"register takes a Method; received {type(method).__name__}")
    METHODS[method.name] = method
    return method


register(Method("flowmc", _flowmc_kernel, moves_per_step=lambda c: c.n_local + c.n_global,
                acceptance=_flowmc_acceptance))
register(Method("ula", lambda log_prob, flow, c: samplers.ULA(log_prob, c.step_size)))
register(Method("mala", lambda log_prob, flow, c: samplers.MALA(log_prob, c.step_size)))
register(Method("nt", _nt_kernel, tilt=FlowTiltedEnergy, fresh_chains=True, flow_fits="data"))


def custom_method(factory: Callable[[Callable], samplers.Kernel]) -> Method:
    """A method around a user's kernel factory ``log_prob -> samplers.Kernel``, run
    ``mcmc_steps`` times per iteration on ``−E + log λ`` from the pool (one step, one move)."""
    def kernel(log_prob, flow, config) -> samplers.Kernel:
        k = factory(log_prob)
        if not isinstance(k, samplers.Kernel):
            raise TypeError(f"the sampler factory must return a samplers.Kernel; received "
                            f"{type(k).__name__}")
        return k
    return Method("custom", kernel)


def get_method(sampler: str | Callable | Method) -> Method:
    """The record for a name of `METHODS`, a `Method`, or a kernel factory."""
    if isinstance(sampler, Method):
        return sampler
    if isinstance(sampler, str):
        if sampler not in METHODS:
            raise ValueError(f"unknown sampler {sampler!r}; expected one of "
                             f"{', '.join(METHODS)} or a kernel factory")
        return METHODS[sampler]
    if not callable(sampler):
        raise TypeError(f"sampler must be a name ({', '.join(METHODS)}) or a callable "
                        f"log_prob -> samplers.Kernel; received {type(sampler).__name__}")
    return custom_method(sampler)


def advance(method: Method, kernel: samplers.Kernel, x0: Tensor, steps: int,
            generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Run ``kernel`` ``steps`` steps on chains ``x0`` ``(n, dim)``: the final positions
    (detached) and the mean local and global acceptance as device scalars (NaN where the kernel
    has no such move, as ``method.acceptance`` says)."""
    # The model changed since these chains last moved, so whatever a kernel cached about them
    # is stale: a fresh init costs one evaluation and keeps MH ratios exact.
    state = kernel.init(x0)
    device = x0.device
    total = [torch.zeros((), device=device), torch.zeros((), device=device)]
    seen = [False, False]
    for _ in range(steps):
        state, info = kernel.step(state, generator)
        for i, rate in enumerate(method.acceptance(kernel, info)):
            if rate is not None:
                total[i], seen[i] = total[i] + rate.mean(), True
    nan = torch.full((), math.nan, device=device)
    local, globl = (t / steps if s else nan for t, s in zip(total, seen, strict=True))
    return state.x.detach(), local, globl

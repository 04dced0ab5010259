"""Hamiltonian Monte Carlo with an identity mass matrix and per-chain step sizes."""

from __future__ import annotations

import torch
from torch import Tensor

from . import _compile
from ._checks import (
    check_log_prob_fn,
    check_positive_int,
    check_step_size,
    initial_state,
    value_and_grad,
)
from .adaptation import DualAveraging, StepSizeTuned
from .base import Info, LogProb, State
from .proposal import event_view, mh_decide


class HMC(StepSizeTuned):
    """HMC: ``n_leapfrog`` leapfrog steps of size ``ε`` under ``H = −log p(x) + |p|²/2``, then MH.

    Per-chain ``ε`` is tuned by dual averaging during warm-up (toward ``target_accept``) and frozen
    after. A trajectory that meets a non-finite log-density or gradient is rejected and counted.

    Args:
        log_prob: batched unnormalized log-density, ``(n, *event) -> (n,)``.
        step_size: initial leapfrog step ``ε``.
        n_leapfrog: leapfrog steps per proposal.
        target_accept: the acceptance rate the warm-up aims for.

    Example:
        >>> kernel = HMC(lambda x: -0.5 * x.pow(2).sum(-1), step_size=0.3, n_leapfrog=5)
        >>> state, info = kernel.step(kernel.init(torch.zeros(4, 2)))
        >>> info.accepted.dtype
        torch.bool
    """

    def __init__(self, log_prob: LogProb, step_size: float | Tensor, n_leapfrog: int = 10,
                 target_accept: float = 0.7):
        check_log_prob_fn(log_prob)
        check_step_size(step_size)
        check_positive_int(n_leapfrog, "n_leapfrog")
        if not 0.0 < target_accept < 1.0:
            raise ValueError(f"target_accept must lie in (0, 1); got {target_accept}")
        self.log_prob = log_prob
        self.step_size = step_size
        self.n_leapfrog = n_leapfrog
        self.adaptation = DualAveraging(target_accept)

    def init(self, x: Tensor) -> State:
        return initial_state(self.log_prob, x, self.step_size)

    _compiled_path = True

    def step(self, state: State, generator: torch.Generator | None = None) -> tuple[State, Info]:
        x = state.x
        # The draws first (momenta, then the MH uniforms), shared by the eager and compiled step.
        p0 = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        u = torch.rand(x.shape[:1], generator=generator, device=x.device, dtype=x.dtype)
        advance = _compile.core(self, "advance", self._advance)
        x, lp, g, accept_prob, accepted, invalid = advance(x, state.log_prob, state.grad,
                                                          state.step_size, p0, u)
        h = state.step_size
        return State(x, lp, g, h), Info(accept_prob, accepted, h, invalid)

    def _advance(self, x0: Tensor, lp0: Tensor, g0: Tensor, step_size: Tensor, p0: Tensor,
                 u: Tensor, functional: bool = False) -> tuple[Tensor, ...]:
        """The trajectory and MH decision as a pure tensor function (what is compiled)."""
        eps = event_view(step_size, x0)
        x, g = x0, g0
        p = p0 + 0.5 * eps * g
        for i in range(self.n_leapfrog):
            x = x + eps * p
            lp, g = value_and_grad(self.log_prob, x, functional)
            if i < self.n_leapfrog - 1:
                p = p + eps * g
        p = p + 0.5 * eps * g
        kinetic0 = 0.5 * p0.flatten(1).square().sum(1)
        kinetic1 = 0.5 * p.flatten(1).square().sum(1)
        log_ratio = lp - kinetic1 - lp0 + kinetic0
        accepted, accept_prob, invalid = mh_decide(log_ratio, u)
        a = event_view(accepted, x0)
        return (torch.where(a, x, x0), torch.where(accepted, lp, lp0), torch.where(a, g, g0),
                accept_prob, accepted, invalid)

    def __repr__(self) -> str:
        return f"HMC(step_size={self.step_size}, n_leapfrog={self.n_leapfrog})"

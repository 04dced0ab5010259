"""Metropolis-adjusted Langevin algorithm with per-chain step sizes tuned during warm-up."""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import (
    check_log_prob_fn,
    check_step_size,
    evaluate,
    initial_state,
)
from .adaptation import DualAveraging, StepSizeTuned
from .base import Info, LogProb, State
from .diffusions import langevin_log_density, langevin_proposal
from .proposal import mh_accept, select


class MALA(StepSizeTuned):
    """MALA: a Langevin proposal ``y = x + h ∇log p(x) + sqrt(2h) ξ`` corrected by Metropolis–Hastings.

    During warm-up (`samplers.sample` with ``warmup > 0``) each chain's ``h`` is tuned by dual
    averaging toward ``target_accept``; then it is frozen, and the kernel leaves the target exactly
    invariant. The state caches log-density and gradient, so each step costs one evaluation.

    Args:
        log_prob: batched unnormalized log-density, ``(n, *event) -> (n,)``.
        step_size: initial ``h``, a positive float or per-chain tensor ``(n,)``.
        target_accept: the acceptance rate the warm-up aims for (0.574 is optimal in high dimension).

    Example:
        >>> kernel = MALA(lambda x: -0.5 * x.pow(2).sum(-1), step_size=0.5)
        >>> state = kernel.init(torch.zeros(8, 3))
        >>> state, info = kernel.step(state)
        >>> info.accept_prob.shape
        torch.Size([8])
    """

    def __init__(self, log_prob: LogProb, step_size: float | Tensor, target_accept: float = 0.574):
        check_log_prob_fn(log_prob)
        check_step_size(step_size)
        if not 0.0 < target_accept < 1.0:
            raise ValueError(f"target_accept must lie in (0, 1); got {target_accept}")
        self.log_prob = log_prob
        self.step_size = step_size
        self.adaptation = DualAveraging(target_accept)

    def init(self, x: Tensor) -> State:
        return initial_state(self.log_prob, x, self.step_size)

    def step(self, state: State, generator: torch.Generator | None = None) -> tuple[State, Info]:
        h = state.step_size
        y = langevin_proposal(state.x, state.grad, h, generator)
        lp, g = evaluate(self.log_prob, y, grad=True)
        log_ratio = (lp - state.log_prob + langevin_log_density(state.x, y, g, h)
                     - langevin_log_density(y, state.x, state.grad, h))
        accepted, accept_prob, invalid = mh_accept(log_ratio, generator)
        return select(accepted, State(y, lp, g, h), state), Info(accept_prob, accepted, h, invalid)

    def __repr__(self) -> str:
        return f"MALA(step_size={self.step_size}, target_accept={self.adaptation.target_accept})"

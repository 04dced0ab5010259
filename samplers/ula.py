"""Unadjusted Langevin algorithm: the Langevin step with no correction (biased for h > 0)."""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import (
    check_log_prob_fn,
    check_step_size,
    evaluate,
    initial_state,
)
from .base import Info, Kernel, LogProb, State
from .diffusions import langevin_proposal
from .proposal import event_view, finite_rows


class ULA(Kernel):
    """Unadjusted Langevin: ``x ← x + h ∇log p(x) + sqrt(2h) ξ``, every move taken.

    It does not leave the target invariant; its stationary law is biased by O(h). A move to a point
    where the log-density or its gradient is not finite is refused (the chain stays) and counted.

    Args:
        log_prob: batched unnormalized log-density, ``(n, *event) -> (n,)``.
        step_size: ``h``, a positive float or per-chain tensor ``(n,)``.

    Example:
        >>> kernel = ULA(lambda x: -0.5 * x.pow(2).sum(-1), step_size=0.1)
        >>> state = kernel.init(torch.zeros(4, 2))
        >>> state, info = kernel.step(state)
        >>> state.x.shape
        torch.Size([4, 2])
    """

    def __init__(self, log_prob: LogProb, step_size: float | Tensor):
        check_log_prob_fn(log_prob)
        check_step_size(step_size)
        self.log_prob = log_prob
        self.step_size = step_size

    def init(self, x: Tensor) -> State:
        return initial_state(self.log_prob, x, self.step_size)

    def step(self, state: State, generator: torch.Generator | None = None) -> tuple[State, Info]:
        y = langevin_proposal(state.x, state.grad, state.step_size, generator)
        lp, g = evaluate(self.log_prob, y, grad=True)
        valid = torch.isfinite(lp) & finite_rows(g)
        v = event_view(valid, y)
        new = state.replace(x=torch.where(v, y, state.x), log_prob=torch.where(valid, lp, state.log_prob),
                            grad=torch.where(v, g, state.grad))
        info = Info(valid.to(lp.dtype), valid, state.step_size, (~valid).to(torch.int32))
        return new, info

    def __repr__(self) -> str:
        return f"ULA(step_size={self.step_size})"

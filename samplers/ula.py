"""Unadjusted Langevin algorithm: the Langevin step with no correction (biased for h > 0)."""

from __future__ import annotations

import torch
from torch import Tensor

from . import _compile
from ._checks import (
    check_log_prob_fn,
    check_step_size,
    initial_state,
    value_and_grad,
)
from .base import Info, Kernel, LogProb, State
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

    _compiled_path = True

    def step(self, state: State, generator: torch.Generator | None = None) -> tuple[State, Info]:
        x = state.x
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        advance = _compile.core(self, "advance", self._advance)
        x, lp, g, valid = advance(x, state.log_prob, state.grad, state.step_size, noise)
        h = state.step_size
        return State(x, lp, g, h), Info(valid.to(lp.dtype), valid, h, (~valid).to(torch.int32))

    def _advance(self, x: Tensor, lp: Tensor, g: Tensor, h: Tensor,
                 noise: Tensor, functional: bool = False) -> tuple[Tensor, ...]:
        """The move as a pure tensor function of the state and its noise (what is compiled)."""
        he = event_view(h, x)
        y = torch.addcmul(torch.addcmul(x, he, g), (2 * he).sqrt(), noise)
        lp_y, g_y = value_and_grad(self.log_prob, y, functional)
        valid = (lp_y.abs() < torch.inf) & finite_rows(g_y)
        v = event_view(valid, y)
        return torch.where(v, y, x), torch.where(valid, lp_y, lp), torch.where(v, g_y, g), valid

    def __repr__(self) -> str:
        return f"ULA(step_size={self.step_size})"

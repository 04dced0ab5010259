"""Metropolis-adjusted Langevin algorithm with per-chain step sizes tuned during warm-up."""

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
from .adaptation import DualAveraging, StepSizeTuned
from .base import Info, LogProb, State
from .proposal import event_view, mh_decide


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

    _compiled_path = True

    def step(self, state: State, generator: torch.Generator | None = None) -> tuple[State, Info]:
        x = state.x
        # The draws first, in this order (the Langevin noise, then the MH uniforms), so the eager
        # and the compiled step (`samplers.sample(compile=True)`) make the same ones.
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        u = torch.rand(x.shape[:1], generator=generator, device=x.device, dtype=x.dtype)
        advance = _compile.core(self, "advance", self._advance)
        x, lp, g, accept_prob, accepted, invalid = advance(x, state.log_prob, state.grad,
                                                          state.step_size, noise, u)
        h = state.step_size
        return State(x, lp, g, h), Info(accept_prob, accepted, h, invalid)

    def _advance(self, x: Tensor, lp: Tensor, g: Tensor, h: Tensor, noise: Tensor,
                 u: Tensor, functional: bool = False) -> tuple[Tensor, ...]:
        """The step as a pure tensor function of the state and its draws (what is compiled)."""
        he = event_view(h, x)
        y = torch.addcmul(torch.addcmul(x, he, g), (2 * he).sqrt(), noise)
        lp_y, g_y = value_and_grad(self.log_prob, y, functional)
        # log q(x | y) - log q(y | x), q(y | x) = N(x + h g(x), 2h): the forward residual
        # y - x - h g(x) is sqrt(2h) noise, so log q(y | x) = -|noise|^2 / 2 (+ a constant that
        # cancels); the backward residual is computed.
        back = (x - torch.addcmul(y, he, g_y)).flatten(1)
        log_ratio = (lp_y - lp + 0.5 * noise.flatten(1).square().sum(1)
                     - back.square().sum(1) / (4 * h))
        accepted, accept_prob, invalid = mh_decide(log_ratio, u)
        a = event_view(accepted, x)
        return (torch.where(a, y, x), torch.where(accepted, lp_y, lp), torch.where(a, g_y, g),
                accept_prob, accepted, invalid)

    def __repr__(self) -> str:
        return f"MALA(step_size={self.step_size}, target_accept={self.adaptation.target_accept})"

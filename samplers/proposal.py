"""The one Metropolis–Hastings accept/reject path shared by every MH kernel.

A NaN or infinite log-density (or gradient) at a proposal makes that proposal a rejection; it never
crashes and is never accepted. Such rejections are counted in ``Info.invalid``. (A proposal at
log-density −inf, outside the support, is counted there too.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import State


def event_view(t: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-chain ``(n,)`` tensor to broadcast against ``like`` of shape ``(n, *event)``."""
    return t.view(t.shape[0], *([1] * (like.ndim - 1)))


def finite_rows(t: Tensor) -> Tensor:
    """Per-chain flag ``(n,)``: every entry of the chain's slice of ``t`` is finite."""
    return torch.isfinite(t).flatten(1).all(1) if t.ndim > 1 else torch.isfinite(t)


def mh_accept(log_ratio: Tensor, generator: torch.Generator | None = None
              ) -> tuple[Tensor, Tensor, Tensor]:
    """Accept each chain's proposal with probability ``min(1, exp(log_ratio))``.

    A non-finite ratio means the proposal (or its gradient, which enters the ratio of every
    gradient-based kernel) was NaN or infinite: it is rejected and flagged. One ``isfinite`` on
    ``(n,)`` covers them all, which keeps the hot path lean.

    Args:
        log_ratio: log acceptance ratio ``(n,)``.
        generator: source of the uniform draws.

    Returns:
        ``(accepted, accept_prob, invalid)``, each ``(n,)``; ``invalid`` is int32 (0 or 1), the
        count `Info.invalid` carries.
    """
    u = torch.rand(log_ratio.shape, generator=generator, device=log_ratio.device,
                   dtype=log_ratio.dtype)
    return mh_decide(log_ratio, u)


def mh_decide(log_ratio: Tensor, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """`mh_accept` with its uniforms ``u`` ``(n,)`` drawn by the caller: a pure tensor function
    (no RNG, no host sync), which a compiled step runs inside its graph."""
    valid = log_ratio.abs() < torch.inf  # False for NaN and ±inf; half the ops of isfinite
    accept_prob = torch.where(valid, log_ratio.clamp(max=0.0).exp(), 0.0)
    return u < accept_prob, accept_prob, (~valid).to(torch.int32)


def select(accepted: Tensor, new: State, old: State) -> State:
    """Per-chain choice between two states: ``new`` where accepted, ``old`` elsewhere."""
    a = event_view(accepted, old.x)
    return old.replace(
        x=torch.where(a, new.x, old.x),
        log_prob=torch.where(accepted, new.log_prob, old.log_prob),
        grad=None if old.grad is None else torch.where(a, new.grad, old.grad),
    )

"""The Langevin integrator, separate from any Metropolis–Hastings correction.

With step size ``h`` the Euler–Maruyama step of the overdamped Langevin diffusion is
``y = x + h ∇log p(x) + sqrt(2h) ξ``; ULA uses it as is, MALA corrects it with `proposal.mh_accept`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .proposal import event_view


def langevin_proposal(x: Tensor, grad: Tensor, step_size: Tensor,
                      generator: torch.Generator | None = None) -> Tensor:
    """One Euler–Maruyama step; ``step_size`` is per chain ``(n,)``."""
    h = event_view(step_size, x)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + h * grad + (2 * h).sqrt() * noise


def langevin_log_density(y: Tensor, x: Tensor, grad_x: Tensor, step_size: Tensor) -> Tensor:
    """``log q(y | x)`` of the Langevin proposal, up to a constant that cancels in MH ratios."""
    h = event_view(step_size, x)
    diff = (y - x - h * grad_x).flatten(1)
    return -diff.square().sum(1) / (4 * step_size)

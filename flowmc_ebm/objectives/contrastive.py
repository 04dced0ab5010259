"""Contrastive maximum likelihood for an EBM, and maximum likelihood for the flow that samples it.

For ``p_θ(x) ∝ exp(−E_θ(x)) λ(x)`` the gradient of the data log-likelihood is
``−E_data[∇E_θ] + E_{p_θ}[∇E_θ]``: minimizing ``mean E(x⁺) − mean E(x⁻)`` over data points ``x⁺``
and model samples ``x⁻`` (detached, so no gradient flows through the sampler) follows it. The
optional ``α (mean E(x⁺)² + mean E(x⁻)²)`` keeps energies near 0 (Du & Mordatch 2019), which the
tilt makes a sensible reference: ``E ≡ 0`` is the model ``λ``.

The flow is fitted by maximum likelihood (forward KL) on samples: on the negatives in flowMC-EBM,
where it follows the model it proposes for, and on the data in NT-EBM.

Example:
    >>> import torch
    >>> e_pos, e_neg = torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])
    >>> terms = contrastive_loss(e_pos, e_neg, energy_l2=0.1)
    >>> terms.gap, terms.loss
    (tensor(-2.), tensor(-1.3000))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor
from torch.distributions import Distribution

__all__ = ["ContrastiveTerms", "contrastive_loss", "flow_nll"]


class ContrastiveTerms(NamedTuple):
    """The EBM objective and its parts, all scalars.

    Attributes:
        loss: what to minimize, ``gap + α · l2``.
        gap: ``mean E(x⁺) − mean E(x⁻)``, the contrastive-divergence estimate of the negative
            log-likelihood gradient's potential; it goes to 0 when model and data agree.
        l2: ``mean E(x⁺)² + mean E(x⁻)²``.
    """

    loss: Tensor
    gap: Tensor
    l2: Tensor


def contrastive_loss(energy_pos: Tensor, energy_neg: Tensor, energy_l2: float = 0.0
                     ) -> ContrastiveTerms:
    """Contrastive maximum-likelihood loss with an L2 penalty on the energies.

    Args:
        energy_pos: energies of data points ``E(x⁺)``, shape ``(n_pos,)``.
        energy_neg: energies of model samples ``E(x⁻)``, shape ``(n_neg,)``; the samples must be
            detached from whatever produced them.
        energy_l2: ``α >= 0``.

    Returns:
        `ContrastiveTerms` ``(loss, gap, l2)``.
    """
    if energy_pos.ndim != 1 or energy_neg.ndim != 1:
        raise ValueError(f"energies must be 1-D, one per point; received shapes "
                         f"{tuple(energy_pos.shape)} and {tuple(energy_neg.shape)}")
    gap = energy_pos.mean() - energy_neg.mean()
    l2 = energy_pos.square().mean() + energy_neg.square().mean()
    return ContrastiveTerms(gap + energy_l2 * l2, gap, l2)


def flow_nll(flow: Callable[[], Distribution], *samples: Tensor) -> tuple[Tensor, ...]:
    """Mean negative log-likelihood of each set of samples under the flow (the forward-KL loss,
    up to a constant), from one pass of the flow over all of them.

    Args:
        flow: a zuko flow (its call returns the distribution).
        samples: one or more sets, shapes ``(n_i, dim)``; detached, so only the flow learns
            from them.

    Returns:
        One scalar per set, in their order.

    Example:
        >>> import torch
        >>> from flowmc_ebm.flows import make_flow
        >>> data, negatives = torch.zeros(3, 2), torch.ones(5, 2)
        >>> nll_data, nll_neg = flow_nll(make_flow(2), data, negatives)
        >>> round(nll_data.item(), 4), round(nll_neg.item(), 4)  # N(0, I) at 0 and at (1, 1)
        (1.8379, 2.8379)
    """
    if not samples:
        raise ValueError("flow_nll needs at least one set of samples; received none")
    log_q = flow().log_prob(torch.cat([x.detach() for x in samples]))
    return tuple(-part.mean() for part in log_q.split([x.shape[0] for x in samples]))

"""The energy-score losses of the energy flows: Si et al.'s semi-autoregressive one (each block
scored given the data's earlier blocks, all in one pass) and the joint one (ancestral draws)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from flowmc_ebm.objectives.energy_score import energy_score
from flowmc_ebm.sa_flow.models import AutoregressiveEnergyFlow, SemiAutoregressiveFlow

__all__ = ["joint_energy_loss", "semi_autoregressive_energy_loss"]


def _blockwise_scores(samples: Tensor, y: Tensor, starts: Sequence[int], sizes: Sequence[int],
                      beta: float) -> Tensor:
    """``Σ_k ES(samples[..., B_k], y[..., B_k])`` per point; vectorized when all blocks are 1-D."""
    if max(sizes) == 1:
        m = samples.shape[0]
        tiny = torch.finfo(samples.dtype).tiny
        fit = (samples - y).square().clamp_min(tiny).pow(beta / 2).mean(0)
        j, k = torch.triu_indices(m, m, offset=1, device=samples.device)
        spread = (samples[j] - samples[k]).square().clamp_min(tiny).pow(beta / 2).mean(0)
        return (fit - 0.5 * spread).sum(-1)
    scores = y.new_zeros(y.shape[0])
    for start, size in zip(starts, sizes, strict=True):
        block = slice(start, start + size)
        scores = scores + energy_score(samples[..., block], y[..., block], beta)
    return scores


def semi_autoregressive_energy_loss(
    flow: SemiAutoregressiveFlow | AutoregressiveEnergyFlow,
    y: Tensor,
    m: int = 2,
    beta: float = 1.0,
    generator: torch.Generator | None = None,
    per_point: bool = False,
) -> Tensor:
    """``Σ_k ES(p(x_{B_k} | y_{B_<k}), y_{B_k})``, averaged over the batch.

    Each block is sampled ``m`` times given the data's earlier blocks, by reparameterization; the
    blocks are scored in their own coordinates and the scores summed. ``K = 1``: the plain energy
    score; ``K = D``: the sum of the ``D`` conditional CRPS (for ``β = 1``).

    Args:
        flow: The model.
        y: Data, shape ``[n, D]``.
        m: Samples per point and block, ``>= 2``.
        beta: Exponent ``β ∈ (0, 2]``.
        generator: Source of the noise.
        per_point: Return the ``[n]`` per-point scores instead of their mean.

    Returns:
        A scalar (or ``[n]``), differentiable in the flow's parameters through the samples.
    """
    y = y.detach()
    if not 0 < beta <= 2:
        raise ValueError(f"beta must lie in (0, 2]; received {beta!r}")
    if m < 2:
        raise ValueError(f"the energy score needs m >= 2 samples per point; received m = {m}")
    samples = flow.conditional_transform(flow.noise((m, y.shape[0]), generator), y)
    scores = _blockwise_scores(samples, y, flow.starts, flow.sizes, beta)
    return scores if per_point else scores.mean()


def joint_energy_loss(
    flow: SemiAutoregressiveFlow | AutoregressiveEnergyFlow,
    y: Tensor,
    m: int = 2,
    beta: float = 1.0,
    generator: torch.Generator | None = None,
    per_point: bool = False,
) -> Tensor:
    """The energy score of ``m`` joint (ancestral) draws per point, in all ``D`` dimensions.

    Same arguments as :func:`semi_autoregressive_energy_loss`; gradients flow through the whole
    ancestral chain (block ``k``'s sample depends on the *sampled* earlier blocks).
    """
    y = y.detach()
    scores = energy_score(flow.rsample((m, y.shape[0]), generator), y, beta)
    return scores if per_point else scores.mean()

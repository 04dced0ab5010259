"""The energy score: training a flow from its samples alone, with no determinant and no inverse.

For a model ``P`` and an observation ``y`` the energy score (Gneiting & Raftery 2007) is

    ES(P, y) = E‖X − y‖^β − ½ E‖X − X′‖^β,   X, X′ ~ P independent,  β ∈ (0, 2),

strictly proper: its expectation over ``y ~ Q`` is minimized only by ``P = Q`` (and it exceeds
its minimum by half the energy distance between ``P`` and ``Q``). Energy flows (Si et al. 2023)
minimize it with ``m >= 2`` reparameterized samples per data point, so gradients reach the flow
through its samples, ``x = T(u)``: sampling the flow is all that is needed.

With samples ``X_1..X_m`` the estimator

    (1/m) Σ_j ‖X_j − y‖^β − 1/(m(m−1)) Σ_{j<k} ‖X_j − X_k‖^β

is unbiased (the second sum is a U-statistic). :func:`energy_distance` is the matching two-sample
statistic, used to judge sample quality.

Example:
    >>> samples = torch.tensor([[[0.0]], [[2.0]]])          # m = 2 samples for n = 1 point
    >>> energy_score(samples, torch.tensor([[1.0]]))        # (1 + 1)/2 − ½·2
    tensor([0.])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Distribution

__all__ = ["energy_distance", "energy_score", "energy_score_loss"]


def _check_beta(beta: float) -> None:
    if not 0 < beta <= 2:
        raise ValueError(f"beta must lie in (0, 2] (strictly proper below 2); received {beta!r}")


def _distance_pow(diff: Tensor, beta: float) -> Tensor:
    # ‖·‖^β has an infinite gradient at 0 for β <= 1; the clamp makes it 0 there instead, which
    # only matters for coincident points (probability 0 under a continuous flow).
    return diff.square().sum(-1).clamp_min(torch.finfo(diff.dtype).tiny).pow(beta / 2)


def energy_score(samples: Tensor, y: Tensor, beta: float = 1.0) -> Tensor:
    """Unbiased energy score of each observation from ``m`` model samples drawn for it.

    Args:
        samples: ``X_j`` for each observation, shape ``[m, n, D]``, ``m >= 2``; differentiable
            (e.g. from ``rsample``) for training.
        y: Observations, shape ``[n, D]``.
        beta: Exponent ``β ∈ (0, 2]``.

    Returns:
        Per-observation scores, shape ``[n]``.

    Raises:
        ValueError: On mismatched shapes, ``m < 2`` or ``β`` outside ``(0, 2]``.

    Example:
        >>> x = torch.randn(4, 10, 3)
        >>> energy_score(x, torch.zeros(10, 3)).shape
        torch.Size([10])
    """
    _check_beta(beta)
    if samples.ndim != 3 or y.ndim != 2 or samples.shape[1:] != y.shape:
        raise ValueError(f"expected samples of shape (m, n, D) and y of shape (n, D); received "
                         f"{tuple(samples.shape)} and {tuple(y.shape)}")
    m = samples.shape[0]
    if m < 2:
        raise ValueError(f"the energy score needs m >= 2 samples per point; received m = {m}")
    fit = _distance_pow(samples - y, beta).mean(0)
    j, k = torch.triu_indices(m, m, offset=1, device=samples.device)
    spread = _distance_pow(samples[j] - samples[k], beta).mean(0)
    return fit - 0.5 * spread


def energy_score_loss(
    model: Distribution | Callable[[], Distribution],
    y: Tensor,
    m: int = 2,
    beta: float = 1.0,
) -> Tensor:
    """Mean energy score of a batch under a model sampled by reparameterization.

    Args:
        model: A ``Distribution`` with ``rsample``, or a callable returning one (a zuko flow).
        y: Data, shape ``[n, D]``.
        m: Model samples per data point, ``>= 2``.
        beta: Exponent ``β ∈ (0, 2]``.

    Returns:
        A scalar whose gradient reaches the model's parameters through its samples.

    Example:
        >>> from flowmc_ebm.flows import make_flow
        >>> flow = make_flow(2)
        >>> loss = energy_score_loss(flow, torch.randn(8, 2), m=3)
        >>> loss.backward()
        >>> all(p.grad is not None for p in flow.parameters())
        True
    """
    distribution = model if isinstance(model, Distribution) else model()
    samples = distribution.rsample((m, y.shape[0]))
    return energy_score(samples, y.detach(), beta).mean()


def _mean_pairwise(a: Tensor, b: Tensor, beta: float, chunk: int = 2048) -> Tensor:
    # Chunked so that 10⁴ × 10⁴ pairs need not sit in memory at once.
    total = a.new_zeros(())
    for start in range(0, a.shape[0], chunk):
        # The matrix-product shortcut loses the small distances to cancellation.
        distances = torch.cdist(a[start:start + chunk], b,
                                compute_mode="donot_use_mm_for_euclid_dist")
        total = total + distances.pow(beta).sum()
    return total / (a.shape[0] * b.shape[0])


def energy_distance(x: Tensor, y: Tensor, beta: float = 1.0) -> Tensor:
    """Unbiased estimate of the energy distance ``2E‖X−Y‖^β − E‖X−X′‖^β − E‖Y−Y′‖^β``.

    Zero exactly when the two distributions agree (for ``β < 2``); within-sample terms are
    U-statistics, so the estimate is unbiased and can fall slightly below zero.

    Args:
        x: Samples of the first distribution, shape ``[n_x, D]``, ``n_x >= 2``.
        y: Samples of the second, shape ``[n_y, D]``, ``n_y >= 2``.
        beta: Exponent ``β ∈ (0, 2]``.

    Returns:
        A scalar.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> a, b = torch.randn(500, 2, generator=g), torch.randn(500, 2, generator=g) + 3
        >>> energy_distance(a, b) > 1
        tensor(True)
    """
    _check_beta(beta)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or min(len(x), len(y)) < 2:
        raise ValueError(f"expected x of shape (n_x, D) and y of shape (n_y, D), n >= 2; received "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    x, y = x.detach(), y.detach()

    def within(a: Tensor) -> Tensor:
        n = a.shape[0]
        # The diagonal contributes 0, so the V-statistic rescales to the U-statistic.
        return _mean_pairwise(a, a, beta) * n / (n - 1)

    return 2 * _mean_pairwise(x, y, beta) - within(x) - within(y)

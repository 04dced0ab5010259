"""The tempering schedule from swap rejection rates: the communication barrier and its inverse.

Syed, Bouchard-Côté, Deligiannidis & Doucet (2022): with rejection rate ``r_k`` between the
neighbouring inverse temperatures ``β_k`` and ``β_{k+1}``, the cumulative barrier
``Λ(β_k) = Σ_{j<k} r_j`` estimates how hard it is to communicate from the reference to ``β_k``;
``Λ = Λ(1)`` is the global barrier. Non-reversible parallel tempering does best when every gap
carries the same rejection, so the new schedule puts ``β_k`` where the (monotonically
interpolated) cumulative barrier equals ``Λ·k/(K−1)`` — the update Pigeons.jl makes between rounds.
These functions run once per warm-up round on a handful of numbers, so they use NumPy on the host.
"""

from __future__ import annotations

import math

import numpy as np


def cumulative_barrier(betas: np.ndarray, rejection: np.ndarray) -> np.ndarray:
    """``Λ(β_k)`` at every ``β_k``: ``(K,)``, starting at 0, from rejection rates ``(K−1,)``."""
    return np.concatenate([[0.0], np.cumsum(np.clip(rejection, 0.0, 1.0))])


def _pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Fritsch–Carlson slopes: a cubic Hermite interpolant that is monotone wherever the data are,
    so the interpolated barrier never decreases and can be inverted."""
    h = np.diff(x)
    delta = np.diff(y) / h
    m = np.zeros_like(y)
    if len(x) == 2:
        return np.full_like(y, delta[0])
    w1, w2 = 2 * h[1:] + h[:-1], h[1:] + 2 * h[:-1]
    same = delta[:-1] * delta[1:] > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        harmonic = (w1 + w2) / (w1 / delta[:-1] + w2 / delta[1:])
    m[1:-1] = np.where(same, harmonic, 0.0)
    m[0], m[-1] = delta[0], delta[-1]
    return m


def interpolate_barrier(betas: np.ndarray, barrier: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The cumulative barrier at ``grid`` by monotone cubic interpolation through ``(β_k, Λ(β_k))``."""
    m = _pchip_slopes(betas, barrier)
    i = np.clip(np.searchsorted(betas, grid, side="right") - 1, 0, len(betas) - 2)
    h = betas[i + 1] - betas[i]
    t = (grid - betas[i]) / h
    h00, h10 = 2 * t**3 - 3 * t**2 + 1, t**3 - 2 * t**2 + t
    h01, h11 = -2 * t**3 + 3 * t**2, t**3 - t**2
    return h00 * barrier[i] + h10 * h * m[i] + h01 * barrier[i + 1] + h11 * h * m[i + 1]


def optimal_schedule(betas: np.ndarray, rejection: np.ndarray, n_replicas: int) -> np.ndarray:
    """``n_replicas`` inverse temperatures from 0 to 1 with equal barrier in every gap.

    Args:
        betas: the current schedule ``(K,)``, increasing from 0 to 1.
        rejection: swap rejection rate of each neighbouring pair ``(K−1,)``.
        n_replicas: size of the new schedule (may differ from ``K``).

    Returns:
        the new schedule ``(n_replicas,)``, strictly increasing, ``0`` first and ``1`` last.
    """
    barrier = cumulative_barrier(betas, rejection)
    total = barrier[-1]
    if total <= 0.0:  # every swap accepted: any schedule is as good; keep the spacing uniform
        return np.linspace(0.0, 1.0, n_replicas)
    grid = np.linspace(0.0, 1.0, 4097)
    curve = np.maximum.accumulate(interpolate_barrier(betas, barrier, grid))
    levels = total * np.arange(1, n_replicas - 1) / (n_replicas - 1)
    inner = np.interp(levels, curve, grid)  # the inverse of a monotone curve, on a fine grid
    new = np.concatenate([[0.0], inner, [1.0]])
    # Flat stretches of the barrier (gaps with no rejection) can make two β's coincide.
    eps = 1e-9
    for k in range(1, n_replicas - 1):
        new[k] = max(new[k], new[k - 1] + eps)
    return new


def replicas_for_barrier(barrier: float, minimum: int = 4, maximum: int = 64) -> int:
    """How many replicas a ladder with global barrier ``Λ`` needs.

    With ``N`` gaps of equal rejection ``Λ/N`` a replica's round-trip rate is
    ``1 / (2 + 2 Σ r/(1−r)) = 1 / (2 + 2Λ/(1 − Λ/N))`` (Syed et al. 2022, Thm 3), within 25 % of its
    ``N → ∞`` limit once ``N ≥ 4Λ``; cost grows linearly in ``N``, so ``N = ⌈4Λ⌉`` gaps, clipped.
    """
    return int(min(max(math.ceil(4.0 * barrier) + 1, minimum), maximum))

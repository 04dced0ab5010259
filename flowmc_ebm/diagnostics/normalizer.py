"""``log Z`` of an unnormalized density by importance sampling, with its SE and Pareto k̂.

The draws and weights are those of `importance_mode_weights` (the same code, in `weights`), so a
model's normalizing constant and its mode weights come from one set of proposals when asked with
one seed. `flowmc_ebm.FlowMCEBM` uses it for ``log_normalizer_``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from flowmc_ebm.diagnostics import _arviz
from flowmc_ebm.diagnostics.weights import _defensive_propose_and_weigh, _propose_and_weigh

__all__ = ["LogNormalizer", "importance_log_normalizer"]


class LogNormalizer(NamedTuple):
    """An importance-sampling estimate of ``log Z = log ∫ p̃``.

    Attributes:
        log_z: ``log((1/n) Σ w_i)``.
        se: its delta-method standard error, ``sd(w) / (mean(w) √n)``.
        pareto_k: Pareto k̂ of the log-weights (ArviZ ``psislw``); above 0.7 neither ``log_z``
            nor ``se`` can be trusted.
        ess: Kish effective sample size of the weights, ``(Σ w)² / Σ w²``.
        n: proposals drawn.
    """

    log_z: float
    se: float
    pareto_k: float
    ess: float
    n: int


def importance_log_normalizer(log_prob: Callable[[Tensor], Tensor], proposal: Any, n: int, *,
                              reference: Any = None, defensive: float = 0.1,
                              seed: int | None = None, batch_size: int = 8192) -> LogNormalizer:
    """``log Z`` of an unnormalized density by importance sampling, with its SE and Pareto k̂.

    The draws and weights are those of `flowmc_ebm.diagnostics.importance_mode_weights` (the same
    code): ``x_i ~ q`` (or the defensive mixture ``(1 − defensive) q + defensive · reference``),
    ``w_i = p̃(x_i) / q(x_i)``. Draws whose weight is not finite count as weight 0.

    Args:
        log_prob: unnormalized log-density ``x[n, dim] -> [n]``.
        proposal: a torch ``Distribution`` or a module returning one (a zuko flow).
        n: proposals, >= 2.
        reference: a broad distribution for defensive importance sampling, or None.
        defensive: share of the draws from ``reference``.
        seed: draws under this torch seed without touching the global random state.
        batch_size: draws scored per batch.

    Example:
        >>> from torch.distributions import Independent, Normal
        >>> q = Independent(Normal(torch.zeros(3), 2 * torch.ones(3)), 1)
        >>> est = importance_log_normalizer(lambda x: -0.5 * x.square().sum(1), q, 20_000, seed=0)
        >>> exact = 1.5 * math.log(2 * math.pi)
        >>> bool(abs(est.log_z - exact) < 4 * est.se), est.pareto_k < 0.7
        (True, True)
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2 (importance proposals); received {n!r}")
    devices = []
    if torch.cuda.is_available():
        devices = list(range(torch.cuda.device_count()))
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        if seed is not None:
            torch.manual_seed(seed)
        if reference is None:
            _, log_w = _propose_and_weigh(log_prob, proposal, n, batch_size)
        else:
            if not 0.0 < defensive < 1.0:
                raise ValueError(f"defensive must be a share in (0, 1); received {defensive!r}")
            n_ref = max(1, round(defensive * n))
            _, log_w = _defensive_propose_and_weigh(log_prob, proposal, reference, n - n_ref,
                                                    n_ref, batch_size)
    finite = np.isfinite(log_w)
    if not finite.any():
        raise ValueError("all importance log-weights are NaN or infinite: the proposal and the "
                         "model share no support (or the model's log-density is NaN)")
    top = log_w[finite].max()
    w = np.where(finite, np.exp(np.where(finite, log_w, top) - top), 0.0)
    mean = w.mean()
    se = float(w.std(ddof=1) / (mean * math.sqrt(n)))
    return LogNormalizer(float(top + math.log(mean)), se, _arviz.pareto_khat(log_w[finite]),
                         float(w.sum() ** 2 / np.square(w).sum()), n)

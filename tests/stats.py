"""Statistical checks shared by the sampler tests: tolerances come from Monte-Carlo standard errors."""

from __future__ import annotations

import arviz as az
import numpy as np
import torch
from scipy import stats


def moment_zscores(samples: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> np.ndarray:
    """z-scores of every mean and covariance entry: (estimate − truth) / MCSE.

    ``samples`` is ``(chains, draws, d)``. Each MCSE is ``sd / sqrt(ESS)`` with the bulk ESS of the
    very quantity averaged (a coordinate, or a centred product for a covariance entry), so
    autocorrelation widens the tolerance exactly as much as it should.
    """
    x = samples.double().numpy()
    m, c = mean.double().numpy(), cov.double().numpy()
    d = x.shape[-1]
    quantities, truths = [], []
    for i in range(d):
        quantities.append(x[..., i])
        truths.append(m[i])
    for i in range(d):
        for j in range(i, d):
            quantities.append((x[..., i] - m[i]) * (x[..., j] - m[j]))
            truths.append(c[i, j])
    z = []
    for q, truth in zip(quantities, truths, strict=True):
        ess = float(az.ess(q, method="bulk"))
        mcse = q.std() / np.sqrt(ess)
        z.append((q.mean() - truth) / mcse)
    return np.asarray(z)


def two_sample_pvalues(x: torch.Tensor, y: torch.Tensor, n_directions: int = 8,
                       seed: int = 0) -> np.ndarray:
    """KS p-values comparing ``x`` and ``y`` (both ``(n, d)``, independent rows) along random unit
    directions and along the squared norm."""
    rng = np.random.default_rng(seed)
    xs, ys = x.double().numpy(), y.double().numpy()
    dirs = rng.standard_normal((n_directions, xs.shape[1]))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    p = [stats.ks_2samp(xs @ u, ys @ u).pvalue for u in dirs]
    p.append(stats.ks_2samp((xs**2).sum(1), (ys**2).sum(1)).pvalue)
    return np.asarray(p)

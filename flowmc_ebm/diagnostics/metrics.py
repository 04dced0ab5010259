"""The metrics of Grenioux, Moulines & Gabrié (2023): mode-weight error, log-density error, R-hat.

- `mode_weight_mse`: mean over modes of the squared error of the empirical weights of a
  space partition (`assign`) against the true weights.
- `grid_mode_weights` and `log_density_error`: for 2-D models, the one grid quadrature of
  `diagnostics.grid`: both the model's and the true log-density are normalized on the grid
  (`log p - logsumexp(log p) - log(cell area)`), so mass outside the box is ignored for both
  alike; the error is the median, over the grid points
  of the true density's highest-density region holding `mass` (default 99%) of the true grid
  mass, of the squared difference of the two normalized log-densities. The median over that
  region ignores the far tails, where an EBM is unconstrained by data.
- `max_rhat` (in `mixing`) is the paper's mixing metric, re-exported by the package.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from flowmc_ebm.diagnostics._chains import points_tensor
from flowmc_ebm.diagnostics.grid import GridDensity, grid_log_density, grid_mode_weights
from flowmc_ebm.diagnostics.modes import mode_labels

# The grid quadrature lives in `grid`; its names stay importable from here.
__all__ = ["GridDensity", "grid_log_density", "grid_mode_weights", "log_density_error", "mode_weight_mse"]


def mode_weight_mse(samples: Any, assign: Any, true_weights: Any) -> float:
    """Mean over modes of `(empirical weight - true weight)**2`.

    Args:
        samples: points `(n, dim)`, or chains `(chains, draws, *event)` / a Trace, pooled.
        assign: callable, centers `(K, dim)` or `FittedModes`; K = `len(true_weights)`.
        true_weights: `(K,)` true mode weights.

    Example:
        >>> import numpy as np
        >>> x = np.array([[-1.0], [-1.0], [-1.0], [1.0]])
        >>> mode_weight_mse(x, np.array([[-1.0], [1.0]]), [0.5, 0.5])
        0.0625
    """
    truth = np.asarray(torch.as_tensor(true_weights).cpu(), dtype=np.float64)
    labels = mode_labels(points_tensor(samples), assign, n_modes=len(truth))
    empirical = np.bincount(labels, minlength=len(truth)) / labels.size
    return float(np.mean((empirical - truth) ** 2))


def log_density_error(
    log_prob: Any, true_log_prob: Any, bounds: Any, n_grid: int = 200, *, mass: float = 0.99
) -> float:
    """Median squared error of a 2-D model's normalized log-density where the truth has mass.

    Both densities are normalized on the grid; the median is over the grid points of the true
    density's highest-density region holding `mass` of its grid mass (see module doc).

    Args:
        log_prob: the model (e.g. `-energy`), callable or object with `.log_prob`.
        true_log_prob: the target's log-density, callable or object with `.log_prob`.
        bounds: `((xmin, xmax), (ymin, ymax))` or `L` for `[-L, L]**2`.
        n_grid: cells per axis.
        mass: mass of the true density's region where errors are counted.

    Example:
        >>> import torch
        >>> from torch.distributions import Independent, Normal
        >>> normal = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)
        >>> log_density_error(lambda x: normal.log_prob(x) + 7.0, normal, 6.0) < 1e-10
        True
    """
    model = grid_log_density(log_prob, bounds, n_grid).log_density.ravel()
    truth = grid_log_density(true_log_prob, bounds, n_grid).log_density.ravel()
    order = np.argsort(-truth)
    p = np.exp(truth[order])
    inside = order[np.cumsum(p) / p.sum() <= mass]
    # Always keep the mode itself, so a very peaked truth still gives a number.
    inside = inside if inside.size else order[:1]
    return float(np.median((model[inside] - truth[inside]) ** 2))

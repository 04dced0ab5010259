"""The metrics of Grenioux, Moulines & Gabrié (2023): mode-weight error, log-density error, R-hat.

- `mode_weight_mse`: mean over modes of the squared error of the empirical weights of a
  space partition (`assign`) against the true weights.
- `grid_mode_weights` and `log_density_error`: for 2-D models, quadrature on a regular grid of
  cell centers. Exact choices, so numbers are comparable between runs: both the model's and the
  true log-density are normalized on the grid (`log p - logsumexp(log p) - log(cell area)`), so
  mass outside the box is ignored for both alike; the error is the median, over the grid points
  of the true density's highest-density region holding `mass` (default 99%) of the true grid
  mass, of the squared difference of the two normalized log-densities. The median over that
  region ignores the far tails, where an EBM is unconstrained by data.
- `max_rhat` (in `mixing`) is the paper's mixing metric, re-exported by the package.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from flowmc_ebm.diagnostics._chains import points_tensor
from flowmc_ebm.diagnostics.modes import infer_n_modes, mode_labels


@dataclass(frozen=True)
class GridDensity:
    """A log-density normalized on a regular 2-D grid.

    Attributes:
        x, y: `(n_grid,)` cell-center coordinates along each axis.
        log_density: `(n_grid, n_grid)` normalized log-density, indexed `[iy, ix]` (the layout
            of `matplotlib`'s `contour(x, y, z)`).
    """

    x: np.ndarray
    y: np.ndarray
    log_density: np.ndarray

    @property
    def cell_area(self) -> float:
        return float((self.x[1] - self.x[0]) * (self.y[1] - self.y[0]))

    @property
    def points(self) -> np.ndarray:
        """`(n_grid**2, 2)` cell centers in the row-major order of `log_density.ravel()`."""
        xx, yy = np.meshgrid(self.x, self.y)
        return np.stack([xx.ravel(), yy.ravel()], axis=1)


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


def grid_log_density(log_prob: Any, bounds: Any, n_grid: int = 200) -> GridDensity:
    """Evaluate a 2-D log-density on a grid and normalize it there by quadrature.

    Args:
        log_prob: callable `x[n, 2] -> Tensor[n]`, or an object with `.log_prob`; may be
            unnormalized.
        bounds: `((xmin, xmax), (ymin, ymax))`, or a number `L` for `[-L, L]**2`.
        n_grid: cells per axis.

    Example:
        >>> import torch
        >>> from torch.distributions import Independent, Normal
        >>> normal = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)
        >>> grid = grid_log_density(normal, 6.0, 100)
        >>> round(float(np.exp(grid.log_density).sum() * grid.cell_area), 6)
        1.0
    """
    (x0, x1), (y0, y1) = _bounds(bounds)
    x = x0 + (np.arange(n_grid) + 0.5) * (x1 - x0) / n_grid
    y = y0 + (np.arange(n_grid) + 0.5) * (y1 - y0) / n_grid
    grid = GridDensity(x, y, np.zeros((n_grid, n_grid)))
    fn = getattr(log_prob, "log_prob", log_prob)
    points = torch.as_tensor(grid.points, dtype=torch.get_default_dtype())
    with torch.no_grad():
        values = torch.cat([fn(chunk).reshape(-1).double() for chunk in points.split(65_536)])
    log_p = values.numpy().reshape(n_grid, n_grid)
    if np.isnan(log_p).any():
        raise ValueError(f"log_prob returned NaN at {int(np.isnan(log_p).sum())} grid points.")
    log_p = log_p - _logsumexp(log_p) - np.log(grid.cell_area)
    return GridDensity(x, y, log_p)


def grid_mode_weights(
    log_prob: Any, assign: Any, bounds: Any, n_grid: int = 200, *, n_modes: int | None = None
) -> np.ndarray:
    """Mode weights of a 2-D density by quadrature: grid mass falling in each mode's cell.

    Args:
        log_prob: callable or object with `.log_prob`, possibly unnormalized.
        assign: callable, centers `(K, 2)` or `FittedModes`.
        bounds: `((xmin, xmax), (ymin, ymax))` or `L` for `[-L, L]**2`.
        n_grid: cells per axis.
        n_modes: K; inferred from `assign` when it knows it, else the largest label + 1.

    Returns:
        `(K,)` weights summing to 1.

    Example:
        >>> import torch
        >>> from torch.distributions import Independent, Normal
        >>> normal = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)
        >>> grid_mode_weights(normal, np.array([[-1.0, 0.0], [1.0, 0.0]]), 6.0).round(3).tolist()
        [0.5, 0.5]
    """
    grid = grid_log_density(log_prob, bounds, n_grid)
    labels = mode_labels(grid.points, assign, n_modes)
    k = infer_n_modes(assign, labels, n_modes)
    mass = np.exp(grid.log_density.ravel()) * grid.cell_area
    weights = np.bincount(labels, weights=mass, minlength=k)
    return weights / weights.sum()


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


def _bounds(bounds: Any) -> tuple[tuple[float, float], tuple[float, float]]:
    if np.isscalar(bounds):
        half = float(bounds)
        return (-half, half), (-half, half)
    b = np.asarray(bounds, dtype=float)
    if b.shape != (2, 2) or not np.all(b[:, 1] > b[:, 0]):
        raise ValueError(
            "bounds must be ((xmin, xmax), (ymin, ymax)) with min < max, or a number L for "
            f"[-L, L]^2; received {bounds!r}."
        )
    return (b[0, 0], b[0, 1]), (b[1, 0], b[1, 1])


def _logsumexp(a: np.ndarray) -> float:
    m = np.max(a)
    return float(m + np.log(np.sum(np.exp(a - m))))

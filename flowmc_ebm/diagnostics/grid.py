"""The package's one grid quadrature: a 2-D log-density normalized on a regular grid.

Everything that needs a 2-D model's mass by quadrature goes through here: the mode weights
(`grid_quadrature`, `grid_mode_weights`), the log-density error of the paper's metrics, the
density plots. It speaks log-densities; whoever holds an energy passes `lambda x: -energy(x)`.

Exact choices, so numbers are comparable between runs: the grid is `n_grid` cell centers per
axis on the box; the log-density is normalized on the grid (`log p - logsumexp(log p) -
log(cell area)`), so mass outside the box is ignored, and `GridWeights.edge_mass` (the share of
the grid mass in the outermost ring of cells) says when the box cuts off mass that matters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from flowmc_ebm.diagnostics.modes import infer_n_modes, mode_labels

#: Points per call of the user's log-density.
CHUNK = 65_536


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

    @property
    def edge_mass(self) -> float:
        """Share of the grid mass in the outermost ring of cells (well above 0: box too small)."""
        mass = np.exp(self.log_density)
        return float((mass.sum() - mass[1:-1, 1:-1].sum()) / mass.sum())


@dataclass(frozen=True)
class GridWeights:
    """Mode weights by grid quadrature.

    Attributes:
        weights: `(K,)` float64 mass of each mode's region, summing to 1.
        edge_mass: share of the grid mass in the outermost ring of cells; well above 0 means
            the box cuts off mass and the weights are not to be trusted.
    """

    weights: np.ndarray
    edge_mass: float


def grid_log_density(
    log_prob: Any,
    bounds: Any,
    n_grid: int = 200,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    nan: str = "raise",
) -> GridDensity:
    """Evaluate a 2-D log-density on a grid and normalize it there by quadrature.

    Args:
        log_prob: callable `x[n, 2] -> Tensor[n]`, or an object with `.log_prob`; may be
            unnormalized.
        bounds: `((xmin, xmax), (ymin, ymax))`, or a number `L` for `[-L, L]**2`.
        n_grid: cells per axis.
        dtype: dtype of the points handed to `log_prob` (default: torch's default dtype).
        device: where `log_prob` wants its input (default CPU); values come back to the CPU.
        nan: `"raise"` (a NaN anywhere is an error) or `"zero"` (a NaN cell carries no mass,
            e.g. for an EBM in the middle of training).

    Raises:
        ValueError: on NaN values (with `nan="raise"`), +inf values, or a log-density that is
            -inf everywhere on the grid.

    Example:
        >>> import torch
        >>> from torch.distributions import Independent, Normal
        >>> normal = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)
        >>> grid = grid_log_density(normal, 6.0, 100)
        >>> round(float(np.exp(grid.log_density).sum() * grid.cell_area), 6)
        1.0
    """
    x, y, values = _grid_values(log_prob, bounds, n_grid, dtype, device, nan)
    cell_area = float((x[1] - x[0]) * (y[1] - y[0]))
    log_p = torch.log_softmax(values, 0) - np.log(cell_area)
    return GridDensity(x, y, log_p.numpy().reshape(len(y), len(x)))


def _grid_values(log_prob: Any, bounds: Any, n_grid: int, dtype: torch.dtype | None,
                 device: torch.device | str | None, nan: str) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """Cell centers and the unnormalized float64 log-density at them (row-major ``[iy, ix]``,
    NaN cells at ``-inf`` under ``nan="zero"``), checked as `grid_log_density` documents."""
    if nan not in ("raise", "zero"):
        raise ValueError(f"nan must be 'raise' or 'zero'; received {nan!r}.")
    if int(n_grid) < 3:
        raise ValueError(f"n_grid must be at least 3 cells per axis; received {n_grid}.")
    (x0, x1), (y0, y1) = _bounds(bounds)
    x = x0 + (np.arange(n_grid) + 0.5) * (x1 - x0) / n_grid
    y = y0 + (np.arange(n_grid) + 0.5) * (y1 - y0) / n_grid
    grid = GridDensity(x, y, np.zeros((n_grid, n_grid)))
    fn = getattr(log_prob, "log_prob", log_prob)
    points = torch.as_tensor(grid.points, dtype=dtype or torch.get_default_dtype())
    with torch.no_grad():
        values = torch.cat(
            [
                fn(chunk if device is None else chunk.to(device)).reshape(-1).double().cpu()
                for chunk in points.split(CHUNK)
            ]
        )
    n_nan = int(values.isnan().sum())
    if n_nan and nan == "raise":
        raise ValueError(f"log_prob returned NaN at {n_nan} grid points.")
    if n_nan:
        values = values.nan_to_num(nan=-np.inf, posinf=np.inf, neginf=-np.inf)
    if values.isposinf().any():
        raise ValueError(f"log_prob returned +inf at {int(values.isposinf().sum())} grid points.")
    if not values.isfinite().any():
        raise ValueError("log_prob is not finite anywhere on the grid: no mass to normalize.")
    return x, y, values


def grid_quadrature(
    log_prob: Any,
    assign: Any,
    bounds: Any,
    n_grid: int = 200,
    *,
    n_modes: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    nan: str = "raise",
) -> GridWeights:
    """Mode weights of a 2-D density by quadrature, with the share of mass on the box's edge.

    Each cell's mass goes to the mode `assign` gives its center.

    Args:
        log_prob: callable or object with `.log_prob`, possibly unnormalized (for an energy,
            `lambda x: -energy(x)`).
        assign: callable, centers `(K, 2)` or `FittedModes`.
        bounds: `((xmin, xmax), (ymin, ymax))` or `L` for `[-L, L]**2`.
        n_grid: cells per axis.
        n_modes: K; inferred from `assign` when it knows it, else the largest label + 1.
        dtype: dtype of the points handed to `log_prob` and a callable `assign` (default:
            torch's default dtype for `log_prob`, float64 for `assign`).
        device: where `log_prob` wants its input.
        nan: see `grid_log_density`.

    Returns:
        `GridWeights`: `(K,)` float64 weights summing to 1 and the edge mass.

    Example:
        >>> import torch
        >>> from torch.distributions import Independent, Normal
        >>> normal = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)
        >>> result = grid_quadrature(normal, np.array([[-1.0, 0.0], [1.0, 0.0]]), 6.0)
        >>> result.weights.round(3).tolist(), result.edge_mass < 1e-6
        ([0.5, 0.5], True)
    """
    x, y, values = _grid_values(log_prob, bounds, n_grid, dtype, device, nan)
    grid = GridDensity(x, y, np.zeros((len(y), len(x))))
    points = grid.points if dtype is None else torch.as_tensor(grid.points, dtype=dtype)
    labels = mode_labels(points, assign, n_modes)
    k = infer_n_modes(assign, labels, n_modes)
    # Normalized by one softmax, summed in grid order: the trainer's recorded weights are these bits.
    mass = torch.softmax(values, 0)
    weights = torch.bincount(torch.as_tensor(labels), weights=mass, minlength=k)
    ring = mass.reshape(len(y), len(x))
    edge = max(0.0, float((ring.sum() - ring[1:-1, 1:-1].sum()) / ring.sum()))
    return GridWeights(weights.numpy(), edge)


def grid_mode_weights(
    log_prob: Any, assign: Any, bounds: Any, n_grid: int = 200, *, n_modes: int | None = None
) -> np.ndarray:
    """Mode weights of a 2-D density by quadrature: `grid_quadrature(...).weights`.

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
    return grid_quadrature(log_prob, assign, bounds, n_grid, n_modes=n_modes).weights


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

"""Score-matching EBMs: the baseline that learns every mode's shape and misses their weights.

An :class:`~flowmc_ebm.energies.MLPEnergy` trained by DSM, SSM or FD-SSM needs no sampler
during training, which is its appeal. Its weakness is as well known (Wenliang et al. 2019;
Song & Ermon 2019): the objective depends on the data only through ``∇ log p``, and where two
modes are separated by a region the data never visit, nothing ties the energy level of one mode to
the other's. The relative mode weights are left to the network's interpolation.
:func:`grid_mode_weights` measures them by quadrature of ``exp(−E)`` on a 2-D grid, the
estimator that needs no mixing chain (a chain started in one mode would stay there and report the
weights it started with).

Example:
    >>> from flowmc_ebm.targets import TwoModes
    >>> target = TwoModes()
    >>> ebm = ScoreMatchingEBM("dsm", steps=5).fit(target.sample, dim=2)
    >>> grid_mode_weights(ebm.energy_, target.assign, n_modes=2).weights.shape
    torch.Size([2])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

import samplers

from .energies import MLPEnergy, log_density_from_energy
from .objectives.score_matching import score_matching_loss

__all__ = ["GridWeights", "ScoreMatchingEBM", "grid_mode_weights"]

SM_OBJECTIVES = ("dsm", "ssm", "fdssm", "exact")


class ScoreMatchingEBM:
    """An MLP energy fitted by score matching; scikit-learn style (``fit`` returns ``self``).

    Args:
        objective: ``"dsm"``, ``"ssm"``, ``"fdssm"`` or ``"exact"``.
        hidden: Hidden widths of the :class:`~flowmc_ebm.energies.MLPEnergy`.
        sigma: DSM noise scale.
        xi: FD-SSM step.
        n_projections: SSM directions per point.
        energy_reg: ``λ`` of the ``λ · mean E`` regularizer.
        lr: Adam learning rate.
        steps: Optimizer steps.
        batch_size: Points per step.

    Attributes:
        energy_: The trained energy network, ``[n, D] -> [n]``.
        history_: Loss per step.

    Example:
        >>> ebm = ScoreMatchingEBM("ssm", steps=3, batch_size=8).fit(torch.randn(32, 2))
        >>> ebm.score_samples(torch.zeros(4, 2)).shape
        torch.Size([4])
    """

    def __init__(
        self,
        objective: str = "dsm",
        *,
        hidden: Sequence[int] = (128, 128),
        sigma: float = 0.1,
        xi: float = 1e-2,
        n_projections: int = 1,
        energy_reg: float = 0.0,
        lr: float = 1e-3,
        steps: int = 2000,
        batch_size: int = 256,
    ) -> None:
        self.objective = objective
        self.hidden = hidden
        self.sigma, self.xi, self.n_projections = sigma, xi, n_projections
        self.energy_reg = energy_reg
        self.lr, self.steps, self.batch_size = lr, steps, batch_size

    def fit(
        self,
        data: Tensor | Callable[[int, torch.Generator | None], Tensor],
        dim: int | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> ScoreMatchingEBM:
        """Trains a fresh energy network.

        Args:
            data: A tensor ``[N, D]`` (batches drawn with replacement) or a sampler
                ``(n, generator) -> [n, D]`` such as a target's ``sample`` (fresh data each step).
            dim: ``D``; needed only when ``data`` is a sampler.
            generator: Source of batches, noise and directions; seeds the network too, so the
                same generator state gives the same fit.
            progress: Show a progress bar.

        Returns:
            ``self``.
        """
        if self.objective not in SM_OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; known: {', '.join(SM_OBJECTIVES)}")
        if callable(data):
            if dim is None:
                raise ValueError("pass dim= when data is a sampler")
        else:
            if data.ndim != 2:
                raise ValueError(f"data must have shape (N, D); received {tuple(data.shape)}")
            dim = data.shape[1]
        if generator is not None:
            # Initialize the network from the generator's stream so a seeded fit is reproducible.
            torch.manual_seed(int(torch.randint(0, 2**62, (), generator=generator)))
        self.energy_ = MLPEnergy(dim, self.hidden)
        optimizer = torch.optim.Adam(self.energy_.parameters(), lr=self.lr)
        self.history_: list[float] = []
        for _ in tqdm(range(self.steps), disable=not progress, desc=f"SM-EBM {self.objective}"):
            if callable(data):
                batch = data(self.batch_size, generator)
            else:
                index = torch.randint(0, data.shape[0], (self.batch_size,), generator=generator)
                batch = data[index]
            loss = score_matching_loss(self.energy_, batch, self.objective, sigma=self.sigma,
                                       xi=self.xi, n_projections=self.n_projections,
                                       energy_reg=self.energy_reg, generator=generator).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            self.history_.append(loss.item())
        return self

    def score_samples(self, x: Tensor) -> Tensor:
        """Unnormalized log-density ``−E(x)``, shape ``[n]`` for ``x`` of shape ``[n, D]``."""
        with torch.no_grad():
            return log_density_from_energy(self.energy_(x))

    def sample(
        self,
        x0: Tensor,
        n_steps: int,
        step_size: float = 0.01,
        warmup: int = 200,
        generator: torch.Generator | None = None,
    ) -> samplers.Trace:
        """MALA chains on the learned density, for evaluation.

        Local chains do not cross between well-separated modes: their occupancy reflects where
        they started, not the model's mode weights (use :func:`grid_mode_weights` for those).

        Args:
            x0: Initial positions, shape ``[chains, D]``.
            n_steps: Kept steps per chain.
            step_size: Initial MALA step size (adapted during warm-up).
            warmup: Adaptation steps.
            generator: Source of randomness.

        Returns:
            A :class:`samplers.Trace`, samples ``[chains, n_steps, D]``.
        """
        energy = self.energy_

        def log_prob(x: Tensor) -> Tensor:
            return log_density_from_energy(energy(x))

        kernel = samplers.MALA(log_prob, step_size)
        return samplers.sample(kernel, x0, n_steps, warmup=warmup, progress=False,
                               generator=generator)


class GridWeights(NamedTuple):
    """Mode weights by grid quadrature.

    Attributes:
        weights: Mass of each mode's region, shape ``[K]``, summing to 1.
        edge_mass: Share of the mass in the grid's outermost ring of cells: well above 0 means
            the box cuts off mass and the weights are not to be trusted.
    """

    weights: Tensor
    edge_mass: float


def grid_mode_weights(
    energy: Callable[[Tensor], Tensor],
    assign: Callable[[Tensor], Tensor],
    n_modes: int,
    low: float = -4.0,
    high: float = 4.0,
    n_grid: int = 400,
    dtype: torch.dtype = torch.float32,
) -> GridWeights:
    """Mode weights of ``p ∝ exp(−E)`` on ``R²`` by quadrature on a square grid.

    Each cell centre is given to the mode ``assign`` names (e.g. a target's ``assign``, which
    splits the plane between its components) and carries mass ``exp(−E)`` times the cell area;
    the weights are the normalized sums. Exact up to the box's cut-off (see ``edge_mass``) and a
    discretization error that shrinks with the cell size.

    Args:
        energy: ``[n, 2] -> [n]``.
        assign: ``[n, 2] -> [n]`` mode indices in ``[0, n_modes)``.
        n_modes: ``K``.
        low: Lower bound of the box in both coordinates.
        high: Upper bound.
        n_grid: Cells per side.
        dtype: Dtype of the grid points handed to ``energy`` (the energy's own).

    Returns:
        :class:`GridWeights`.

    Example:
        >>> from flowmc_ebm.targets import TwoModes
        >>> target = TwoModes()
        >>> result = grid_mode_weights(lambda x: -target.log_prob(x), target.assign, 2)
        >>> [round(w, 3) for w in result.weights.tolist()], result.edge_mass < 1e-6
        ([0.333, 0.667], True)
    """
    edges = torch.linspace(low, high, n_grid + 1, dtype=torch.float64)
    centers = 0.5 * (edges[1:] + edges[:-1])
    grid = torch.cartesian_prod(centers, centers)
    points = grid.to(dtype)
    with torch.no_grad():
        log_mass = torch.cat([log_density_from_energy(energy(chunk)).double()
                              for chunk in points.split(65536)])
        modes = torch.cat([assign(chunk) for chunk in points.split(65536)])
    mass = torch.exp(log_mass - log_mass.max())
    total = mass.sum()
    weights = torch.zeros(n_modes, dtype=torch.float64).index_add_(0, modes.cpu(), mass.cpu())
    on_edge = mass.reshape(n_grid, n_grid)
    edge = on_edge.sum() - on_edge[1:-1, 1:-1].sum()
    return GridWeights((weights / total).float(), float(edge / total))

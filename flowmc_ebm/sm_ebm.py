"""Score-matching EBMs: the baseline that learns every mode's shape and misses their weights.

An :class:`~flowmc_ebm.energies.MLPEnergy` trained by DSM, SSM or FD-SSM needs no sampler
during training, which is its appeal. Its weakness is as well known (Wenliang et al. 2019;
Song & Ermon 2019): the objective depends on the data only through ``∇ log p``, and where two
modes are separated by a region the data never visit, nothing ties the energy level of one mode to
the other's. The relative mode weights are left to the network's interpolation.
The package's one grid quadrature (:func:`flowmc_ebm.diagnostics.grid.grid_quadrature`, on
``score_samples`` = ``−E``) measures them on a 2-D grid, the estimator that needs no mixing chain
(a chain started in one mode would stay there and report the weights it started with).

Example:
    >>> from flowmc_ebm.diagnostics import grid_quadrature
    >>> from flowmc_ebm.targets import TwoModes
    >>> target = TwoModes()
    >>> ebm = ScoreMatchingEBM("dsm", steps=5).fit(target.sample, dim=2)
    >>> grid_quadrature(ebm.score_samples, target.assign, 4.0, n_modes=2).weights.shape
    (2,)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

import samplers

from .energies import MLPEnergy, log_density_from_energy
from .objectives.score_matching import OBJECTIVES
from .preprocessing import DataSource
from .training.flow_fitting import ScoreMatchingFitter

__all__ = ["ScoreMatchingEBM"]


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
        data: DataSource,
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
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; known: {', '.join(OBJECTIVES)}")
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
        fit = ScoreMatchingFitter(
            self.energy_, self.objective, sigma=self.sigma, xi=self.xi,
            n_projections=self.n_projections, energy_reg=self.energy_reg, lr=self.lr,
            desc=f"SM-EBM {self.objective}",
        ).fit(data, self.steps, self.batch_size, generator, progress)
        self.history_: list[float] = fit.history_
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
        they started, not the model's mode weights (use
        :func:`flowmc_ebm.diagnostics.grid_quadrature` for those).

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

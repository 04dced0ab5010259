"""Fitting an :class:`~flowmc_ebm.ebflow.model.EBFlow` by score matching or maximum likelihood, on
the one minibatch loop of :mod:`flowmc_ebm.training.flow_fitting` (its score-matching form)."""

from __future__ import annotations

import torch
from torch import Tensor

from flowmc_ebm.ebflow.model import EBFlow
from flowmc_ebm.objectives.score_matching import OBJECTIVES
from flowmc_ebm.training.flow_fitting import ScoreMatchingFitter

__all__ = ["TRAINING_OBJECTIVES", "EBFlowTrainer"]

TRAINING_OBJECTIVES = ("ml", *OBJECTIVES)


class EBFlowTrainer(ScoreMatchingFitter):
    """Trains an :class:`EBFlow` by score matching or maximum likelihood, keeping an EMA.

    Args:
        model: The flow to train (updated in place).
        objective: ``"ml"`` (exact NLL, slogdet of every dense layer each step) or a
            score-matching objective on ``model.energy``: ``"ssm"``, ``"dsm"``, ``"fdssm"``,
            ``"exact"`` (low dimension only).
        lr: Adam learning rate.
        sigma: DSM noise scale.
        xi: FD-SSM step.
        n_projections: SSM directions per point.
        energy_reg: ``λ`` of the ``λ · mean E`` regularizer (score matching only).
        ema_decay: Decay of the weight average used for evaluation.
        grad_clip: Maximum gradient norm (``None``: no clipping).

    Attributes:
        model: The model being trained.
        ema: Its :class:`~flowmc_ebm.training.flow_fitting.ExponentialMovingAverage`; evaluate
            ``ema.average``.
        history_: Training loss per step.

    Example:
        >>> from flowmc_ebm.ebflow import fully_connected_ebflow
        >>> trainer = EBFlowTrainer(fully_connected_ebflow(2), "dsm", sigma=0.1)
        >>> len(trainer.fit(torch.randn(64, 2), steps=5, batch_size=16).history_)
        5
    """

    def __init__(
        self,
        model: EBFlow,
        objective: str = "ssm",
        *,
        lr: float = 1e-3,
        sigma: float = 0.05,
        xi: float = 1e-2,
        n_projections: int = 1,
        energy_reg: float = 0.0,
        ema_decay: float = 0.999,
        grad_clip: float | None = None,
    ) -> None:
        if objective not in TRAINING_OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; known: {', '.join(TRAINING_OBJECTIVES)}")
        super().__init__(model, objective, energy=model.energy, sigma=sigma, xi=xi,
                         n_projections=n_projections, energy_reg=energy_reg, lr=lr,
                         grad_clip=grad_clip, ema_decay=ema_decay, desc=f"EBFlow {objective}")

    def loss(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The objective on one batch ``x`` of shape ``[n, D]``, a scalar."""
        if self.objective == "ml":
            return -self.model.log_prob(x).mean()
        return super().loss(x, generator)

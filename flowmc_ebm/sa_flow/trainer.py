"""Fitting an energy flow by its energy score (or, as a reference, by maximum likelihood) on the
one minibatch loop of :mod:`flowmc_ebm.training.flow_fitting`."""

from __future__ import annotations

import torch
from torch import Tensor

from flowmc_ebm.preprocessing import DataSource
from flowmc_ebm.sa_flow.losses import joint_energy_loss, semi_autoregressive_energy_loss
from flowmc_ebm.sa_flow.models import AutoregressiveEnergyFlow, SemiAutoregressiveFlow
from flowmc_ebm.training.flow_fitting import MinibatchFitter

__all__ = ["ENERGY_LOSSES", "EnergyFlowTrainer"]

ENERGY_LOSSES = ("autoregressive", "joint", "ml")


class EnergyFlowTrainer(MinibatchFitter):
    """Adam on the energy score of a :class:`SemiAutoregressiveFlow` (or on its NLL, as reference),
    on the one minibatch loop of :mod:`flowmc_ebm.training.flow_fitting`.

    Args:
        flow: The model (updated in place).
        loss: ``"autoregressive"`` (Si et al.), ``"joint"``, or ``"ml"`` (maximum likelihood with
            the tractable density, a reference only).
        m: Samples per data point (energy losses).
        beta: Energy-score exponent.
        lr: Adam learning rate.
        ema_decay: Decay of the parameter average used for evaluation (``None``: none).
        grad_clip: Maximum gradient norm (``None``: no clipping).

    Attributes:
        flow: The model (also ``model``).
        ema: The :class:`~flowmc_ebm.training.flow_fitting.ExponentialMovingAverage` (``None``
            without one); evaluate ``ema.average``, or ``evaluation_model`` in either case.
        history_: Loss per step.

    Example:
        >>> trainer = EnergyFlowTrainer(SemiAutoregressiveFlow(2, blocks=2, hidden=(8,)))
        >>> len(trainer.fit(torch.randn(64, 2), steps=3, batch_size=16).history_)
        3
    """

    def __init__(self, flow: SemiAutoregressiveFlow | AutoregressiveEnergyFlow,
                 loss: str = "autoregressive", *, m: int = 2,
                 beta: float = 1.0, lr: float = 1e-3, ema_decay: float | None = 0.999,
                 grad_clip: float | None = 10.0) -> None:
        if loss not in ENERGY_LOSSES:
            raise ValueError(f"unknown loss {loss!r}; known: {', '.join(ENERGY_LOSSES)}")
        super().__init__(flow, lr=lr, grad_clip=grad_clip, ema_decay=ema_decay,
                         desc=f"energy flow {loss}")
        self.flow, self.loss_name, self.m, self.beta = flow, loss, m, beta

    def loss(self, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The training loss on batch ``y`` (``[n, D]``), a scalar."""
        if self.loss_name == "ml":
            return -self.flow.log_prob(y).mean()
        function = semi_autoregressive_energy_loss if self.loss_name == "autoregressive" \
            else joint_energy_loss
        return function(self.flow, y, self.m, self.beta, generator)

    def fit(self, data: DataSource, steps: int, batch_size: int = 256,
            generator: torch.Generator | None = None, progress: bool = False) -> EnergyFlowTrainer:
        """``steps`` steps on minibatches drawn from a tensor (with replacement) or a callable
        ``(n, generator) -> [n, D]``; returns ``self``."""
        return super().fit(data, steps, batch_size, generator, progress)

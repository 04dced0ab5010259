"""The one loop that fits a model to data by a minibatch loss: Adam, gradient clipping, a
weight average (EMA) for evaluation, and no host synchronization per step.

EBFlow (:class:`~flowmc_ebm.ebflow.EBFlowTrainer`), the energy flows
(:class:`~flowmc_ebm.sa_flow.EnergyFlowTrainer`) and the score-matching EBM
(:class:`~flowmc_ebm.sm_ebm.ScoreMatchingEBM`) differ only in their loss: each is a
:class:`MinibatchFitter` that defines :meth:`MinibatchFitter.loss`. In all of them ``ema`` is the
:class:`ExponentialMovingAverage` (``None`` when no average is kept) and ``ema.average`` the
averaged model; ``evaluation_model`` is that model, or the trained one when there is no average.

The losses of a fit stay on the device until ``history_`` is read (one transfer then), so a GPU
fit is never stalled by a ``.item()`` per step.

Example:
    >>> class LeastSquares(MinibatchFitter):
    ...     def loss(self, batch, generator=None):
    ...         return (self.model(batch[:, :1]) - batch[:, 1:]).square().mean()
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> x = torch.randn(256, 1)
    >>> fit = LeastSquares(nn.Linear(1, 1), lr=0.05, ema_decay=0.9).fit(torch.cat([x, 3 * x], 1), 300, 64)
    >>> len(fit.history_), round(fit.evaluation_model.weight.item(), 1)
    (300, 3.0)
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from flowmc_ebm.objectives.score_matching import score_matching_loss
from flowmc_ebm.preprocessing import DataSource, minibatches

__all__ = ["ExponentialMovingAverage", "MinibatchFitter", "ScoreMatchingFitter"]


class ExponentialMovingAverage:
    """An exponential moving average of a model's parameters, with warm-up, for evaluation.

    The decay at update ``t`` is ``min(decay, (1 + t)/(10 + t))``: early averages forget the
    random initialization quickly, later ones settle to ``decay``.

    Attributes:
        average: The frozen copy holding the average: the model to evaluate.
        updates: Updates so far.

    Args:
        model: The model being trained; a frozen copy of it holds the average.
        decay: Long-run decay, e.g. 0.999.
        warmup: Use the warm-up schedule above (else ``decay`` from the start).

    Example:
        >>> net = nn.Linear(2, 1)
        >>> ema = ExponentialMovingAverage(net, decay=0.999)
        >>> ema.update(net)
        >>> ema.decay_now()  # after one update: min(0.999, 2/11)
        0.18181818181818182
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"decay must lie in [0, 1); received {decay!r}")
        self.decay = float(decay)
        self.warmup = warmup
        self.updates = 0
        self.average = copy.deepcopy(model).requires_grad_(False)

    def decay_now(self) -> float:
        """The decay the next update will use."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Moves the average toward ``model``'s current parameters (buffers are copied)."""
        decay = self.decay_now()
        averages, currents = list(self.average.parameters()), list(model.parameters())
        if len(averages) != len(currents):
            raise ValueError(f"the model has {len(currents)} parameter tensors, its average "
                             f"{len(averages)}: not the model this average was made from")
        # One fused update for all parameters (as torch.optim.swa_utils' EMA does), not a launch
        # per tensor.
        torch._foreach_lerp_(averages, currents, 1 - decay)
        for average, current in zip(self.average.buffers(), model.buffers(), strict=True):
            average.copy_(current)
        self.updates += 1

    def state_dict(self) -> dict[str, Tensor]:
        """The averaged model's state dict: what to save, or to load into a model of the same
        class to evaluate with the averaged weights."""
        return self.average.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Loads averaged weights (e.g. saved by :meth:`state_dict`) into :attr:`average`."""
        self.average.load_state_dict(state)


class MinibatchFitter:
    """Adam on a minibatch loss, with optional gradient clipping and weight average.

    Subclasses define :meth:`loss`. Same seed, same batches, same fit: randomness comes from the
    ``generator`` passed to :meth:`fit` (batches, and whatever the loss draws).

    Args:
        model: The module whose parameters are fitted (updated in place).
        lr: Adam learning rate.
        grad_clip: Maximum gradient norm (``None``: no clipping).
        ema_decay: Decay of the :class:`ExponentialMovingAverage` kept for evaluation
            (``None``: none).
        desc: Label of the progress bar.

    Attributes:
        model: The model being fitted.
        optimizer: Its Adam optimizer.
        ema: The :class:`ExponentialMovingAverage`, or ``None``; evaluate ``ema.average``.
        history_: Loss per step, as floats (read: one transfer of the losses not yet read).
    """

    def __init__(self, model: nn.Module, *, lr: float = 1e-3, grad_clip: float | None = None,
                 ema_decay: float | None = None, desc: str = "fit") -> None:
        self.model = model
        self.grad_clip = grad_clip
        self.desc = desc
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        self.ema = ExponentialMovingAverage(model, ema_decay) if ema_decay is not None else None
        self._history: list[float] = []
        self._pending: list[Tensor] = []

    def loss(self, batch: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The objective on one batch of shape ``[n, D]``: a scalar, differentiable in the
        model's parameters."""
        raise NotImplementedError(f"{type(self).__name__} must define loss(batch, generator)")

    @property
    def evaluation_model(self) -> nn.Module:
        """The averaged model when an average is kept, else the model itself."""
        return self.ema.average if self.ema is not None else self.model

    @property
    def history_(self) -> list[float]:
        if self._pending:
            self._history.extend(torch.stack(self._pending).tolist())
            self._pending.clear()
        return self._history

    def step(self, batch: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One optimizer step on ``batch`` (then the average's update); returns the loss, a
        detached scalar tensor left on the device."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(batch, generator)
        loss.backward()
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        loss = loss.detach()
        self._pending.append(loss)
        return loss

    def fit(self, data: DataSource, steps: int, batch_size: int = 100,
            generator: torch.Generator | None = None, progress: bool = False):
        """Runs ``steps`` steps on minibatches.

        Args:
            data: A tensor ``[N, D]`` (batches drawn with replacement) or a callable
                ``(n, generator) -> [n, D]`` (e.g. a target's ``sample``, or a function that
                dequantizes and preprocesses fresh each call).
            steps: Number of optimizer steps.
            batch_size: Points per step.
            generator: Source of batches and of the loss's randomness.
            progress: Show a progress bar.

        Returns:
            ``self``.
        """
        for batch in minibatches(data, steps, batch_size, generator, progress, self.desc):
            self.step(batch, generator)
        return self


class ScoreMatchingFitter(MinibatchFitter):
    """The loop on a score-matching objective of an energy: what the score-matching EBM and
    EBFlow's score-matching objectives share.

    Args:
        model: The module fitted.
        objective: ``"ssm"``, ``"dsm"``, ``"fdssm"`` or ``"exact"``
            (`flowmc_ebm.objectives.score_matching.OBJECTIVES`).
        energy: ``[n, D] -> [n]`` energies differentiable in ``model``'s parameters (default:
            ``model`` itself).
        sigma: DSM noise scale.
        xi: FD-SSM step.
        n_projections: SSM directions per point.
        energy_reg: ``λ`` of the ``λ · mean E`` regularizer.
        lr, grad_clip, ema_decay, desc: as in :class:`MinibatchFitter`.
    """

    def __init__(self, model: nn.Module, objective: str, *, energy=None, sigma: float = 0.05,
                 xi: float = 1e-2, n_projections: int = 1, energy_reg: float = 0.0,
                 lr: float = 1e-3, grad_clip: float | None = None,
                 ema_decay: float | None = None, desc: str = "score matching") -> None:
        super().__init__(model, lr=lr, grad_clip=grad_clip, ema_decay=ema_decay, desc=desc)
        self.objective = objective
        self.energy = energy if energy is not None else model
        self.sigma, self.xi, self.n_projections = sigma, xi, n_projections
        self.energy_reg = energy_reg

    def loss(self, batch: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The score-matching objective on one batch ``[n, D]``, a scalar."""
        return score_matching_loss(
            self.energy, batch, self.objective, sigma=self.sigma, xi=self.xi,
            n_projections=self.n_projections, energy_reg=self.energy_reg, generator=generator,
        ).loss

"""Learning-rate decay: the factor at an iteration, and the rates a trainer's optimizers use.

The rates at iteration ``t`` after ``r`` divergence restarts are the initial rates times
``lr_factor(t) × restart_lr_factor ** r``; with ``lr_decay = "none"`` the factor is 1 and a
restart simply multiplies the current rates (see `flowmc_ebm.training.guard`).

Example:
    >>> [round(lr_factor("cosine", i, 100, 0.1), 3) for i in (0, 50, 100, 200)]
    [1.0, 0.55, 0.1, 0.1]
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

__all__ = ["lr_factor", "scheduled_rates", "set_rate"]


def lr_factor(decay: str, iteration: int, length: int, final: float) -> float:
    """The learning rates' multiplier at ``iteration`` (before that iteration's step).

    Args:
        decay: ``"none"`` (always 1), ``"cosine"`` or ``"linear"``.
        iteration: iterations done so far.
        length: iterations over which the factor goes from 1 to ``final`` (then stays).
        final: the last factor, in (0, 1].

    Raises:
        ValueError: a decay without a length (``length < 1``).
    """
    if decay == "none":
        return 1.0
    if length < 1:
        raise ValueError(f"trainer.lr_decay = {decay!r} needs trainer.lr_decay_iterations >= 1 "
                         f"(the decay's length); received {length}")
    t = min(iteration / length, 1.0)
    shape = 0.5 * (1.0 + math.cos(math.pi * t)) if decay == "cosine" else 1.0 - t
    return final + (1.0 - final) * shape


def scheduled_rates(config, iteration: int, restarts: int) -> tuple[float, float]:
    """``(lr_energy, lr_flow)`` at ``iteration``: initial × decay × restart factor per restart."""
    scale = config.lr_factor(iteration) * config.restart_lr_factor ** restarts
    return config.lr_energy * scale, config.lr_flow * scale


def set_rate(optimizers: Iterable[torch.optim.Optimizer], rates: Iterable[float]) -> None:
    """Give every parameter group of each optimizer its rate."""
    for opt, lr in zip(optimizers, rates, strict=True):
        for group in opt.param_groups:
            group["lr"] = lr

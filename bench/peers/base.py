"""What every adapter takes (`Problem`) and gives back (`Run`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor

from flowmc_ebm.targets import GaussianMixture


@dataclass(frozen=True)
class Problem:
    """One sampling task, the same for every method.

    Attributes:
        name: short label, e.g. ``"mixture_d16"``.
        target: the density (exact log-density, known mode weights, ``assign``).
        x0: starting points ``(chains, dim)``, float32; every method starts from these.
        budget: target-gradient evaluations per chain, warm-up included.
        warmup_fraction: share of the budget each method may spend on warm-up / training.
        seed: seed of every method's own random stream.
    """

    name: str
    target: GaussianMixture
    x0: Tensor
    budget: int
    warmup_fraction: float = 0.5
    seed: int = 0

    @property
    def chains(self) -> int:
        return self.x0.shape[0]

    @property
    def dim(self) -> int:
        return self.x0.shape[1]


@dataclass
class Run:
    """What a method produced on a `Problem`.

    Attributes:
        method: the row label.
        samples: post-warm-up draws ``(chains, draws, dim)``.
        grad_evals: target evaluations with a gradient, per chain (mean over chains), warm-up
            included.
        logprob_evals: target evaluations without a gradient, per chain (mean over chains).
        wall_s: seconds from the call to the last draw: warm-up, flow training and JIT
            compilation included, as a user waits for them.
        sample_s: seconds of the post-warm-up phase alone, where the method can tell.
        config: the settings used, for the JSON.
        notes: what a reader must know to interpret the numbers.
    """

    method: str
    samples: np.ndarray
    grad_evals: float
    logprob_evals: float
    wall_s: float
    sample_s: float | None = None
    config: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

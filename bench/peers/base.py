"""What every adapter takes (`Problem`) and gives back (`Run`)."""

from __future__ import annotations

import math
import platform
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
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


def json_safe(x: Any) -> Any:
    """NaN and infinities as null/strings and numpy scalars as Python ones: strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.generic):
        return json_safe(x.item())
    return x


def versions(packages: Iterable[str]) -> dict[str, str]:
    """Python's version and each package's installed version ("not installed" when absent)."""
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out

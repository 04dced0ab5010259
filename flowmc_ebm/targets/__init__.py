"""Multimodal target densities whose mode weights are known exactly.

Every target here is a finite mixture ``p(x) = sum_k w_k p_k(x)`` with normalized components, so
``log_prob`` is exact (not merely up to a constant), samples come with their component labels, and
any estimate of "how much mass sits in mode k" can be checked against ``weights[k]``.

Parameters are kept in float64 on the CPU and copied, once per (device, dtype), to wherever the
input lives; ``log_prob`` therefore follows the input's device and dtype without moving anything
in a hot loop.

Example:
    >>> target = get_target("two_modes")
    >>> x = target.sample(1000, generator=torch.Generator().manual_seed(0))
    >>> x.shape, target.log_prob(x).shape
    (torch.Size([1000, 2]), torch.Size([1000]))
    >>> round((target.assign(x) == target.top_right).float().mean().item(), 1)
    0.7

Files: `base` (`MixtureTarget`), `gaussian` (the Gaussian mixtures), `rings`; here the one
registry, `TARGETS`, and `get_target`.
"""

import torch  # noqa: F401  (the doctest above uses it)

from flowmc_ebm.targets.base import MixtureTarget
from flowmc_ebm.targets.gaussian import (
    EightGaussians,
    FourModes,
    GaussianMixture,
    HighDimMixture,
    TwoModes,
)
from flowmc_ebm.targets.rings import Rings

__all__ = [
    "TARGETS",
    "EightGaussians",
    "FourModes",
    "GaussianMixture",
    "HighDimMixture",
    "MixtureTarget",
    "Rings",
    "TwoModes",
    "get_target",
]


#: The package's one target registry: name -> class. Configs, the CLI (``--target``) and
#: `get_target` read it; a target added here is known everywhere.
TARGETS: dict[str, type[MixtureTarget]] = {
    "two_modes": TwoModes,
    "four_modes": FourModes,
    "eight_gaussians": EightGaussians,
    "rings": Rings,
    "high_dim": HighDimMixture,
    "gaussian_mixture": GaussianMixture,
}


def get_target(name: str, **kwargs) -> MixtureTarget:
    """Builds a target by name.

    Names are matched ignoring case, ``_`` and ``-``, so ``"eight_gaussians"``,
    ``"eightgaussians"`` and ``"Eight-Gaussians"`` are the same target.

    Args:
        name: One of ``"two_modes"``, ``"four_modes"``, ``"eight_gaussians"``, ``"rings"``,
            ``"high_dim"``, ``"gaussian_mixture"``.
        **kwargs: Passed to the target's constructor (e.g. ``dim`` for ``"high_dim"``).

    Raises:
        ValueError: If the name is unknown; the message lists the known names.

    Example:
        >>> get_target("high_dim", dim=8).dim
        8
    """
    key = str(name).lower().replace("-", "").replace("_", "")
    for known, cls in TARGETS.items():
        if known.replace("_", "") == key:
            return cls(**kwargs)
    raise ValueError(f"unknown target {name!r}; known targets: {', '.join(TARGETS)}")

"""`torch.distributions` targets on a constrained support, sampled on the unconstrained space.

A Gamma, Beta or Dirichlet log-density handed to a kernel directly fails the way a new user meets
it: a MALA proposal outside the support makes ``log_prob`` raise (torch validates arguments by
default) or return NaN, and the chain stalls at the boundary. The remedy every probabilistic
programming language uses is to sample ``u`` on ``R^k`` with ``x = T(u)``, ``T = biject_to(support)``,
and to target ``log p(T(u)) + log |det J_T(u)|``. `UnconstrainedTarget` does that for one
distribution or a dict of independent ones (named sites), with `constrain` mapping draws back.

Example:
    >>> import torch
    >>> from torch.distributions import Beta, Dirichlet, Gamma
    >>> target = UnconstrainedTarget({"rate": Gamma(2.0, 1.0),
    ...                               "p": Beta(torch.tensor([2.0, 5.0]), 3.0),
    ...                               "w": Dirichlet(torch.ones(3))})
    >>> target.dim  # 1 + 2 + (3 - 1): the simplex loses one coordinate
    5
    >>> target(torch.zeros(4, 5)).shape
    torch.Size([4])
    >>> sorted(target.constrain(torch.zeros(4, 5)))
    ['p', 'rate', 'w']
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Distribution, biject_to

__all__ = ["UnconstrainedTarget", "support_log_prob"]


def support_log_prob(distribution: Distribution):
    """``distribution.log_prob`` made safe to hand to a kernel on the constrained space: a point
    outside the support has log-density ``-inf`` (a rejected proposal) instead of raising."""

    def log_prob(x: Tensor) -> Tensor:
        inside = distribution.support.check(x)
        event_dims = len(distribution.event_shape)
        while inside.ndim > x.ndim - event_dims:  # a support check may be per element
            inside = inside.all(-1)
        safe = torch.where(_expand(inside, x), x, distribution.mean.expand_as(x))
        lp = distribution.log_prob(safe)
        lp = torch.where(inside, lp, torch.full_like(lp, -math.inf))
        return lp.flatten(1).sum(1) if lp.ndim > 1 else lp

    return log_prob


def _expand(mask: Tensor, like: Tensor) -> Tensor:
    while mask.ndim < like.ndim:
        mask = mask.unsqueeze(-1)
    return mask.expand_as(like)


class _Site:
    def __init__(self, name: str, distribution: Distribution):
        if not isinstance(distribution, Distribution):
            raise TypeError(f"site {name!r} must be a torch.distributions.Distribution; "
                            f"got {type(distribution).__name__}")
        if distribution.support.is_discrete:
            raise ValueError(f"site {name!r} is discrete ({type(distribution).__name__}); only "
                             "continuous distributions can be sampled on an unconstrained space")
        self.name = name
        self.distribution = distribution
        self.transform = biject_to(distribution.support)
        self.shape = tuple(distribution.batch_shape + distribution.event_shape)
        self.unconstrained_shape = tuple(self.transform.inverse_shape(torch.Size(self.shape)))
        self.size = math.prod(self.unconstrained_shape)


class UnconstrainedTarget:
    """Independent constrained sites as one batched log-density on ``R^dim``.

    Args:
        distributions: a `torch.distributions.Distribution` or ``{name: Distribution}``; each
            site's shape is its ``batch_shape + event_shape``.

    Attributes:
        dim: length of the flat unconstrained vector (the sites raveled in the dict's order).
        sites: ``{name: constrained shape}``.

    Calling it on ``u: (n, dim)`` returns ``sum over sites of log p(T(u)) + log |det J_T(u)|``
    ``(n,)``: the density of ``u`` when ``T(u)`` has the target's law.
    """

    def __init__(self, distributions: Distribution | dict[str, Distribution]):
        if isinstance(distributions, Distribution):
            distributions = {"x": distributions}
        if not isinstance(distributions, dict) or not distributions:
            raise TypeError("distributions must be a torch.distributions.Distribution or a "
                            f"non-empty dict of them; got {type(distributions).__name__}")
        self._sites = [_Site(str(k), d) for k, d in distributions.items()]
        self.sites = {s.name: s.shape for s in self._sites}
        self.dim = sum(s.size for s in self._sites)

    def _split(self, u: Tensor):
        if not isinstance(u, Tensor) or u.ndim != 2 or u.shape[1] != self.dim:
            got = tuple(u.shape) if isinstance(u, Tensor) else type(u).__name__
            raise ValueError(f"u must be a tensor of shape (n, {self.dim}) (the unconstrained "
                             f"coordinates of {self.sites}); got {got}")
        start = 0
        for site in self._sites:
            yield site, u[:, start:start + site.size].reshape(u.shape[0], *site.unconstrained_shape)
            start += site.size

    def __call__(self, u: Tensor) -> Tensor:
        total = u.new_zeros(u.shape[0]) if isinstance(u, Tensor) else None
        for site, part in self._split(u):
            x = site.transform(part)
            lp = site.distribution.log_prob(x)
            jac = site.transform.log_abs_det_jacobian(part, x)
            total = total + _sum_batch(lp) + _sum_batch(jac)
        return total

    log_prob = __call__

    def constrain(self, u: Tensor) -> dict[str, Tensor]:
        """Unconstrained points ``(..., dim)`` as ``{site: (..., *shape)}`` on the supports."""
        lead = u.shape[:-1]
        flat = u.reshape(-1, u.shape[-1])
        return {site.name: site.transform(part).reshape(*lead, *site.shape)
                for site, part in self._split(flat)}

    def unconstrain(self, values: dict[str, Tensor] | Tensor) -> Tensor:
        """Points on the supports ``{site: (n, *shape)}`` (or a tensor for a single site) as flat
        unconstrained points ``(n, dim)``, e.g. to start chains at chosen values."""
        if isinstance(values, Tensor):
            values = {self._sites[0].name: values}
        parts = []
        for site in self._sites:
            if site.name not in values:
                raise KeyError(f"no value for site {site.name!r}; expected {list(self.sites)}")
            v = values[site.name]
            parts.append(site.transform.inv(v).reshape(v.shape[0], -1))
        return torch.cat(parts, 1)

    def __repr__(self) -> str:
        return f"UnconstrainedTarget({self.sites}; dim={self.dim})"


def _sum_batch(t: Tensor) -> Tensor:
    return t.flatten(1).sum(1) if t.ndim > 1 else t

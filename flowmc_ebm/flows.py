"""Normalizing flows for flow-assisted MCMC: a thin factory over zuko.

A flow here is a zuko :class:`~zuko.lazy.Flow`: an ``nn.Module`` whose call ``flow()`` returns a
``torch.distributions.Distribution`` with ``sample``, ``rsample``, ``log_prob`` and
``rsample_and_log_prob``. What the factory adds to zuko's defaults:

- a configurable base ``N(0, base_scale^2 I)``, a buffer (not trained), so that a tilt by the
  base density (flowMC-EBM) stays fixed while the flow learns;
- coupling neural spline and MAF flows. zuko's ``NSF``/``MAF`` are fully autoregressive by
  default, so sampling costs ``D`` sequential passes; a proposal needs fast sampling *and* fast
  density evaluation, which coupling gives. For splines we use our own coupling flow
  (`flowmc_ebm.spline`): at d = 32 and 1024 points on CPU zuko's ``NSF(passes=2)`` costs
  ~30x RealNVP per sample + log-density; ours, eager, ~2.5x, and ~3-3.7x per training step;
  with ``compiled=True`` (``torch.compile``, tens of seconds of compilation first) ~2x both
  (docs/results_flows.md has the measurements and the load they were made under);
- near-identity initialization, so the untrained flow *is* its base and early global moves are
  harmless.

Example:
    >>> flow = make_flow(2, kind="nsf")
    >>> x, log_q = flow().rsample_and_log_prob((5,))
    >>> x.shape, log_q.shape
    (torch.Size([5, 2]), torch.Size([5]))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import zuko
from torch import nn
from torch.distributions import Distribution

from flowmc_ebm._checks import check_positive_int
from flowmc_ebm.spline import SplineCouplingFlow

__all__ = ["FLOW_KINDS", "base_distribution", "make_flow"]

_CONSTRUCTORS = {
    "realnvp": zuko.flows.RealNVP,
    "nsf": SplineCouplingFlow,
    "maf": zuko.flows.MAF,
}
# The coupling version of MAF; RealNVP and our spline flow are coupling flows already.
_EXTRA_KWARGS = {"realnvp": {}, "nsf": {}, "maf": {"passes": 2}}

FLOW_KINDS = tuple(_CONSTRUCTORS)


def make_flow(
    dim: int,
    kind: str = "realnvp",
    transforms: int = 4,
    hidden: Sequence[int] = (64, 64),
    base_scale: float = 1.0,
    identity_init: bool = True,
    **kwargs,
) -> zuko.flows.Flow:
    """Builds an unconditional normalizing flow on ``R^dim``.

    Args:
        dim: Event dimension ``D``.
        kind: ``"realnvp"`` (affine coupling), ``"nsf"`` (rational-quadratic spline coupling,
            `flowmc_ebm.spline.SplineCouplingFlow`) or ``"maf"`` (affine, masked, two passes).
        transforms: Number of coupling transformations.
        hidden: Hidden widths of each conditioner network.
        base_scale: Standard deviation of the isotropic Gaussian base.
        identity_init: Zero the last layer of every conditioner so the flow starts as the
            identity map (its density equals the base's).
        **kwargs: Passed to the flow's constructor (e.g. ``bins``, ``bound``, ``slope``,
            ``compiled`` for ``"nsf"``, ``activation``, ``randmask`` for the coupling flows, ``randperm`` for
            ``"maf"``).

    Returns:
        A zuko ``Flow``; ``flow()`` is a ``Distribution`` with event shape ``[D]``.

    Raises:
        ValueError: On an unknown ``kind`` (the message lists the known ones), ``dim`` or
            ``transforms`` below 1, or a non-positive ``base_scale``.

    Note:
        Spline transforms act on ``[-bound, bound]`` (default ``[-5, 5]``) and are the identity
        outside it, with slope 1 at the boundary knots, so the map is continuously
        differentiable there and its tails are the linear extension of slope 1: mass that
        the base puts beyond ``bound`` is left where it is. Keep the data standardized (or
        ``base_scale`` small enough) for ``"nsf"``.

    Example:
        >>> flow = make_flow(3, kind="maf", base_scale=2.0)
        >>> flow().sample((4,)).shape
        torch.Size([4, 3])
    """
    if kind not in _CONSTRUCTORS:
        raise ValueError(f"unknown flow kind {kind!r}; known kinds: {', '.join(FLOW_KINDS)}")
    check_positive_int(dim, "dim")
    check_positive_int(transforms, "transforms")
    if not base_scale > 0:
        raise ValueError(f"base_scale must be positive; received {base_scale!r}")

    options = {**_EXTRA_KWARGS[kind], "hidden_features": tuple(hidden), **kwargs}
    flow = _CONSTRUCTORS[kind](dim, transforms=transforms, **options)
    flow.base = zuko.lazy.UnconditionalDistribution(
        zuko.distributions.DiagNormal,
        loc=torch.zeros(dim),
        scale=torch.full((dim,), float(base_scale)),
        buffer=True,
    )
    if identity_init:
        _zero_conditioners(flow)
    return flow


def _zero_conditioners(flow: zuko.flows.Flow) -> None:
    """Makes every transformation of ``flow`` the identity.

    zuko's univariate transforms (monotonic affine, rational-quadratic spline) are the identity
    when all their raw parameters are 0. Those parameters come out of the last layer of each
    conditioner (``hyper``), which zuko builds from ``zuko.nn.Linear`` or ``MaskedLinear`` (only
    the latter subclasses ``torch.nn.Linear``), or, for a 1-D flow, are free tensors (``phi``).
    Zeroing the last layer, not the whole network, keeps the gradients of the earlier layers
    alive once training moves it.
    """
    zeroed = 0
    with torch.no_grad():
        for module in flow.transform.modules():
            hyper = getattr(module, "hyper", None)
            if isinstance(hyper, nn.Sequential):
                last = hyper[-1]
                last.weight.zero_()
                if last.bias is not None:
                    last.bias.zero_()
                zeroed += 1
            elif isinstance(getattr(module, "phi", None), nn.ParameterList):
                for parameter in module.phi:
                    parameter.zero_()
                zeroed += 1
    if zeroed == 0:
        raise RuntimeError(
            f"found no conditioner to zero in {type(flow).__name__}; this zuko version builds "
            "flows differently from the ones make_flow knows"
        )


def base_distribution(flow: zuko.flows.Flow) -> Distribution:
    """The base distribution ``lambda`` of a flow, as it is now.

    Call it each time it is needed rather than keeping the result: a flow's base may hold
    parameters or be replaced.

    Args:
        flow: A zuko ``Flow`` (e.g. from :func:`make_flow`).

    Returns:
        A ``Distribution`` with event shape ``[D]`` whose ``log_prob`` maps ``[n, D]`` to ``[n]``.

    Example:
        >>> lam = base_distribution(make_flow(2, base_scale=3.0))
        >>> lam.log_prob(torch.zeros(1, 2)).shape
        torch.Size([1])
    """
    if not isinstance(flow, zuko.lazy.Flow):
        raise TypeError(f"flow must be a zuko Flow; received {type(flow).__name__}")
    return flow.base()

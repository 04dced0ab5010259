"""Latent-space (NeuTra) sampling: any kernel run on ``z`` with ``x = T(z)``.

A flow ``T`` that roughly maps a standard Gaussian onto the target makes the pulled-back density
``log p(T(z)) + log|det ∂T/∂z|`` nearly Gaussian, where simple local kernels mix well
(Hoffman et al. 2019, "NeuTra-lizing bad geometry in HMC").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.distributions import ComposeTransform, Distribution, TransformedDistribution

from ._checks import check_initial, check_log_prob_fn, check_positions
from .base import Info, Kernel, LogProb, State
from .independent import Proposal, check_proposal, check_proposal_matches, resolve
from .mala import MALA


def _sum_event(ladj: Tensor, n_batch: int) -> Tensor:
    return ladj.reshape(ladj.shape[:n_batch] + (-1,)).sum(-1) if ladj.ndim > n_batch else ladj


def pushforward(dist: Distribution) -> tuple[Callable, Callable]:
    """``(forward, inverse)`` of a flow distribution, as functions of batches:
    ``forward(z) -> (x, log|det ∂x/∂z|)`` and ``inverse(x) -> z``.

    Works for zuko's `NormalizingFlow` (whose ``transform`` maps x to z) and for torch's
    `TransformedDistribution` (whose ``transforms`` map base to x).
    """
    if isinstance(dist, TransformedDistribution):
        t = ComposeTransform(dist.transforms)

        def forward(z: Tensor) -> tuple[Tensor, Tensor]:
            x = t(z)
            return x, _sum_event(t.log_abs_det_jacobian(z, x), 1)

        return forward, t.inv
    transform = getattr(dist, "transform", None)
    if transform is None or not hasattr(transform, "inv"):
        raise TypeError("latent sampling needs a flow distribution with a bijection: a zuko "
                        "NormalizingFlow or a torch TransformedDistribution; "
                        f"got {type(dist).__name__}")
    inverse_t = transform.inv

    def forward(z: Tensor) -> tuple[Tensor, Tensor]:
        if hasattr(inverse_t, "call_and_ladj"):
            x, ladj = inverse_t.call_and_ladj(z)
        else:
            x = inverse_t(z)
            ladj = inverse_t.log_abs_det_jacobian(z, x)
        return x, _sum_event(ladj, 1)

    return forward, transform


@dataclass
class LatentState(State):
    """`State` in target space (``x = T(z)`` and the target's log-density there) plus the inner
    kernel's state in latent space."""

    inner: State | None = None


class Latent(Kernel):
    """Run ``kernel_factory(latent_log_prob)`` on ``z`` where ``x = T(z)`` for the flow ``T``.

    Positions, log-densities and traces are reported in target space; the inner kernel's state
    (and its step-size adaptation) lives in latent space. The flow is read at every step.

    Args:
        log_prob: the target's batched unnormalized log-density in x-space.
        flow: a zuko flow module (its call returns a `NormalizingFlow`) or a flow distribution.
        kernel_factory: builds the inner kernel from the latent log-density; default MALA with
            step 0.1 (tuned during warm-up).

    Example:
        >>> import zuko
        >>> kernel = Latent(lambda x: -0.5 * x.pow(2).sum(-1), zuko.flows.RealNVP(2, transforms=2))
        >>> state, info = kernel.step(kernel.init(torch.randn(4, 2)))
        >>> state.x.shape, state.inner.x.shape
        (torch.Size([4, 2]), torch.Size([4, 2]))
    """

    def __init__(self, log_prob: LogProb, flow: Proposal,
                 kernel_factory: Callable[[LogProb], Kernel] | None = None):
        check_log_prob_fn(log_prob)
        check_proposal(flow)
        self.log_prob = log_prob
        self.flow = flow
        self._matched: tuple | None = None
        factory = kernel_factory if kernel_factory is not None else (lambda lp: MALA(lp, 0.1))
        self.inner = factory(self.latent_log_prob)
        if not isinstance(self.inner, Kernel):
            raise TypeError(f"kernel_factory must return a samplers Kernel; "
                            f"got {type(self.inner).__name__}")

    def latent_log_prob(self, z: Tensor) -> Tensor:
        """``log p(T(z)) + log|det ∂T/∂z|``, shape ``(n,)``."""
        forward, _ = pushforward(resolve(self.flow))
        x, ladj = forward(z)
        return self.log_prob(x) + ladj

    def _outer(self, inner: State) -> LatentState:
        with torch.no_grad():
            forward, _ = pushforward(resolve(self.flow))
            x, ladj = forward(inner.x)
        return LatentState(x, inner.log_prob - ladj, None, inner.step_size, inner)

    def init(self, x: Tensor) -> LatentState:
        x = check_positions(x)
        self._matched = check_proposal_matches(self.flow, x, self._matched)
        with torch.no_grad():
            _, inverse = pushforward(resolve(self.flow))
            z = inverse(x)
        inner = self.inner.init(z)
        outer = self._outer(inner)
        check_initial(outer.log_prob)
        return outer

    def step(self, state: LatentState,
             generator: torch.Generator | None = None) -> tuple[LatentState, Info]:
        inner, info = self.inner.step(state.inner, generator)
        return self._outer(inner), info

    def warmup_init(self, state: LatentState) -> Any:
        return self.inner.warmup_init(state.inner)

    def warmup_update(self, wstate: Any, state: LatentState, info: Info,
                      generator: torch.Generator | None = None) -> tuple[Any, LatentState]:
        wstate, inner = self.inner.warmup_update(wstate, state.inner, info, generator)
        return wstate, state.replace(inner=inner, step_size=inner.step_size)

    def warmup_final(self, wstate: Any, state: LatentState) -> LatentState:
        inner = self.inner.warmup_final(wstate, state.inner)
        return state.replace(inner=inner, step_size=inner.step_size)

    def __repr__(self) -> str:
        return f"Latent(inner={self.inner!r})"

"""Per-chain step-size adaptation by dual averaging (Hoffman & Gelman 2014, as in Stan).

It is its own small ``init / update / final`` piece fed with the kernel's acceptance
probabilities; kernels do not know they are being tuned. Each chain has its own step size, so
chains sitting in modes of different widths each get a step that suits them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Info, Kernel, State


@dataclass
class DualAveragingState:
    log_step: Tensor  # (n,) step used next
    log_step_avg: Tensor  # (n,) the averaged iterate, returned by `final`
    error_sum: Tensor  # (n,) running mean of (target - accept_prob)
    mu: Tensor  # (n,) shrinkage point, log(10 * initial step)
    count: int


@dataclass(frozen=True)
class DualAveraging:
    """Dual-averaging step-size tuner toward ``target_accept``.

    Args:
        target_accept: acceptance probability to aim for (MALA: 0.574; HMC: 0.65–0.8).
        gamma: Nesterov dual-averaging constant (shrinkage toward the initial step), Stan's default.
        t0: Nesterov dual-averaging constant (early-iteration damping), Stan's default.
        kappa: Nesterov dual-averaging constant (decay of the averaging weights), Stan's default.

    Example:
        >>> da = DualAveraging(0.574)
        >>> s = da.init(torch.full((3,), 0.1))
        >>> s = da.update(s, torch.tensor([0.9, 0.5, 0.1]))
        >>> da.step_size(s).shape
        torch.Size([3])
    """

    target_accept: float = 0.574
    gamma: float = 0.05
    t0: float = 10.0
    kappa: float = 0.75

    def init(self, step_size: Tensor) -> DualAveragingState:
        log_step = step_size.log()
        return DualAveragingState(log_step, log_step.clone(), torch.zeros_like(log_step),
                                  log_step + math.log(10.0), 0)

    def update(self, s: DualAveragingState, accept_prob: Tensor) -> DualAveragingState:
        t = s.count + 1
        # A NaN acceptance (a broken proposal) should shrink the step, like a rejection.
        a = torch.nan_to_num(accept_prob, nan=0.0).to(s.log_step.dtype)
        eta = 1.0 / (t + self.t0)
        error_sum = (1 - eta) * s.error_sum + eta * (self.target_accept - a)
        log_step = s.mu - math.sqrt(t) / self.gamma * error_sum
        w = t ** (-self.kappa)
        log_step_avg = w * log_step + (1 - w) * s.log_step_avg
        return DualAveragingState(log_step, log_step_avg, error_sum, s.mu, t)

    def step_size(self, s: DualAveragingState) -> Tensor:
        return s.log_step.exp()

    def final(self, s: DualAveragingState) -> Tensor:
        return s.log_step_avg.exp()


class StepSizeTuned(Kernel):
    """Warm-up hooks for a kernel whose `State.step_size` is tuned by ``self.adaptation``."""

    adaptation: DualAveraging

    def warmup_init(self, state: State) -> DualAveragingState:
        return self.adaptation.init(state.step_size)

    def warmup_update(self, wstate: DualAveragingState, state: State, info: Info,
                      generator: torch.Generator | None = None,
                      ) -> tuple[DualAveragingState, State]:
        wstate = self.adaptation.update(wstate, info.accept_prob)
        return wstate, state.replace(step_size=self.adaptation.step_size(wstate))

    def warmup_final(self, wstate: DualAveragingState, state: State) -> State:
        return state.replace(step_size=self.adaptation.final(wstate))

"""The records every kernel speaks: `State`, `Info`, and the `Kernel` protocol.

A kernel is an object with ``init(x) -> State`` and ``step(state, generator) -> (State, Info)``.
Chains are the batch dimension of ``x``; nothing loops over chains in Python.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

LogProb = Callable[[Tensor], Tensor]


class NonFiniteError(ValueError):
    """Chains or a log-density that are NaN or infinite where a kernel cannot reject a move (the
    starting positions, the log-density or its gradient there). A `ValueError`, so existing
    ``except ValueError`` keeps working; callers that recover from it (a trainer's divergence
    guard) catch this type instead of reading messages."""


@dataclass
class State:
    """Where the chains are and what is already known there.

    Attributes:
        x: positions, ``(n, *event)``.
        log_prob: unnormalized log-density at ``x``, ``(n,)``.
        grad: its gradient ``(n, *event)``, or ``None`` for kernels that need none.
        step_size: per-chain step size ``(n,)``, or ``None`` for kernels without one.
    """

    x: Tensor
    log_prob: Tensor
    grad: Tensor | None = None
    step_size: Tensor | None = None

    def replace(self, **changes: Any) -> State:
        return replace(self, **changes)


@dataclass
class Info:
    """What one step did, per chain.

    Attributes:
        accept_prob: Metropolis–Hastings acceptance probability ``(n,)`` (1 for ULA; for i-SIR the
            probability that a new particle was selected).
        accepted: whether the chain moved, bool ``(n,)``.
        step_size: the step size used ``(n,)`` or ``None``.
        invalid: number of proposals rejected because the log-density or its gradient was NaN or
            infinite there ``(n,)``, int.
        extras: kernel-specific per-chain figures, each ``(n,)`` (e.g. ``isir_ess``).
    """

    accept_prob: Tensor
    accepted: Tensor
    step_size: Tensor | None
    invalid: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)

    def stats(self) -> dict[str, Tensor]:
        """All per-chain figures as one flat dict, the form a `Trace` stores."""
        out = {"accept_prob": self.accept_prob, "accepted": self.accepted, "invalid": self.invalid}
        if self.step_size is not None:
            out["step_size"] = self.step_size
        out.update(self.extras)
        return out


class Kernel:
    """Base class: a Markov kernel on a batch of chains.

    Subclasses implement `init` and `step`. Those that tune themselves during warm-up (step sizes,
    a flow) override the three ``warmup_*`` hooks, which `samplers.sample` calls; after
    `warmup_final` the kernel is a fixed, exact Markov kernel.
    """

    log_prob: LogProb

    def init(self, x: Tensor) -> State:  # pragma: no cover - interface
        raise NotImplementedError

    def step(
        self, state: State, generator: torch.Generator | None = None
    ) -> tuple[State, Info]:  # pragma: no cover - interface
        raise NotImplementedError

    def warmup_init(self, state: State) -> Any:
        return None

    def warmup_update(self, wstate: Any, state: State, info: Info,
                      generator: torch.Generator | None = None) -> tuple[Any, State]:
        return wstate, state

    def warmup_final(self, wstate: Any, state: State) -> State:
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

"""The records every kernel speaks: `State`, `Info`, and the `Kernel` protocol.

A kernel is an object with ``init(x) -> State`` and ``step(state, generator) -> (State, Info)``.
Chains are the batch dimension of ``x``; nothing loops over chains in Python.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

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

    # Saving and restoring a run (`samplers.sample(..., out=dir, resume=True)`). Everything is
    # plain tensors, numbers, lists and dicts, so it loads with ``torch.load(weights_only=True)``.

    def state_dict(self, state: State) -> dict[str, Any]:
        """What continuing from ``state`` needs: the chains' state and the kernel's own learned
        parameters (`params_state_dict`)."""
        return {"chains": to_plain(state), "params": self.params_state_dict()}

    def load_state_dict(self, saved: dict[str, Any], like: State) -> State:
        """Restore the kernel's parameters and return the saved chains' state, shaped and placed
        like ``like`` (a state from `init` on the run's starting positions)."""
        if self.load_params_state_dict(saved["params"]):
            like = self.init(like.x)  # a restored schedule may change the state's shape
        return from_plain(saved["chains"], like, "chains")

    def params_state_dict(self) -> dict[str, Any]:
        """The state dicts of the modules the kernel holds (a flow), its tensor attributes (a
        tuned schedule) and its inner kernels'."""
        out: dict[str, Any] = {}
        for name, value in vars(self).items():
            if name == "log_prob":  # the target is the caller's, not the kernel's to restore
                continue
            if isinstance(value, nn.Module):
                out[name] = value.state_dict()
            elif isinstance(value, Tensor):
                out[name] = value.detach().clone()
            elif isinstance(value, Kernel):
                out[name] = value.params_state_dict()
        return out

    def load_params_state_dict(self, saved: dict[str, Any]) -> bool:
        """Restore what `params_state_dict` saved; True if a tensor attribute was restored."""
        tensors = False
        for name, value in list(vars(self).items()):
            if name == "log_prob" or name not in saved:
                continue
            if isinstance(value, nn.Module):
                value.load_state_dict(saved[name])
            elif isinstance(value, Tensor) and isinstance(saved[name], Tensor):
                setattr(self, name, saved[name].to(value.device))
                tensors = True
            elif isinstance(value, Kernel):
                tensors = value.load_params_state_dict(saved[name]) or tensors
        return tensors

    def warmup_state_dict(self, wstate: Any) -> Any:
        """The warm-up state (`warmup_init`'s record: dual averaging, a flow's optimizer and
        replay window) as plain data."""
        return to_plain(wstate)

    def load_warmup_state_dict(self, saved: Any, state: State) -> Any:
        """The warm-up state saved by `warmup_state_dict`, for chains at ``state``; call after
        `load_state_dict`, so an optimizer is rebuilt over the restored parameters."""
        return from_plain(saved, self.warmup_init(state), "warmup")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def to_plain(obj: Any) -> Any:
    """``obj`` (records, tensors, numbers, lists, an optimizer) as plain data for ``torch.save``."""
    if obj is None or isinstance(obj, (bool, int, float, str, Tensor)):
        return obj
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, torch.optim.Optimizer):
        return obj.state_dict()
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    raise TypeError(f"cannot save a {type(obj).__name__} in a kernel's state; give the kernel "
                    "its own state_dict / warmup_state_dict")


def from_plain(saved: Any, like: Any, where: str) -> Any:
    """Rebuild a value shaped like ``like`` from `to_plain`'s ``saved``; a tensor of another
    shape is a ValueError naming where it sits."""
    if isinstance(like, Tensor):
        if not isinstance(saved, Tensor) or saved.shape != like.shape:
            got = tuple(saved.shape) if isinstance(saved, Tensor) else type(saved).__name__
            raise ValueError(f"saved {where} has shape {got}; this run's is {tuple(like.shape)}")
        return saved.to(device=like.device, dtype=like.dtype)
    if is_dataclass(like) and not isinstance(like, type):
        if not isinstance(saved, dict):
            raise ValueError(f"saved {where} is a {type(saved).__name__}, expected a record")
        return replace(like, **{f.name: from_plain(saved.get(f.name), getattr(like, f.name),
                                                   f"{where}.{f.name}")
                                for f in fields(like) if f.init})
    if isinstance(like, torch.optim.Optimizer):
        like.load_state_dict(saved)
        return like
    if isinstance(like, bool):
        return bool(saved)
    if isinstance(like, (int, float)):
        return type(like)(saved)
    return saved

"""Validation at the public boundary, and evaluation of a user's log-density.

Every message names what was expected and what came.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import LogProb, NonFiniteError, State


def check_log_prob_fn(log_prob: object) -> None:
    if not callable(log_prob):
        raise TypeError(
            f"log_prob must be a callable mapping x of shape (n, *event) to a Tensor of shape (n,); "
            f"got {type(log_prob).__name__}"
        )


def check_positions(x: object, name: str = "x0") -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (chains, *event); "
                        f"got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(
            f"{name} must have shape (chains, *event) with at least 2 dimensions, e.g. (n, dim); "
            f"got shape {tuple(x.shape)}. For a single chain use x.unsqueeze(0)."
        )
    if x.shape[0] < 1:
        raise ValueError(f"{name} must hold at least one chain; got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor; got dtype {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteError(f"{name} contains NaN or infinite values")
    return x


def check_step_size(step_size: float | Tensor, name: str = "step_size") -> None:
    if isinstance(step_size, Tensor):
        bad = not bool(torch.isfinite(step_size).all() and (step_size > 0).all())
    elif isinstance(step_size, (int, float)) and not isinstance(step_size, bool):
        bad = not (math.isfinite(step_size) and step_size > 0)
    else:
        raise TypeError(f"{name} must be a positive float or Tensor; got {type(step_size).__name__}")
    if bad:
        raise ValueError(f"{name} must be positive and finite; got {step_size}")


def check_positive_int(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}; got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value}")
    return value


def per_chain(value: float | Tensor, x: Tensor) -> Tensor:
    """A per-chain tensor ``(n,)`` on ``x``'s device and dtype from a scalar or ``(n,)`` tensor."""
    n = x.shape[0]
    t = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        return t.expand(n).clone()
    if t.shape != (n,):
        raise ValueError(f"a per-chain step size must be a scalar or of shape ({n},); "
                         f"got shape {tuple(t.shape)}")
    return t.clone()


def _check_output(lp: object, x: Tensor) -> Tensor:
    if not isinstance(lp, Tensor):
        raise TypeError(f"log_prob must return a Tensor of shape ({x.shape[0]},); "
                        f"got {type(lp).__name__}")
    if lp.shape != x.shape[:1]:
        raise ValueError(
            f"log_prob must return one value per chain, shape ({x.shape[0]},), for x of shape "
            f"{tuple(x.shape)}; got shape {tuple(lp.shape)}"
        )
    return lp


def check_float_log_prob(lp: Tensor) -> None:
    """A log-density must be floating point: an integer one rounds every MH ratio."""
    if not lp.is_floating_point():
        raise TypeError(f"log_prob must return a floating-point Tensor; got dtype {lp.dtype}. "
                        "Compute it in float (an integer log-density rounds every acceptance ratio)")


def check_gradient_path(lp: Tensor) -> None:
    """Before autograd's own error: say why a kernel that needs gradients cannot get them.
    (Attribute checks only: no host sync.)"""
    if not lp.is_floating_point():
        raise TypeError(f"log_prob must return a floating-point Tensor for a gradient-based kernel; "
                        f"got dtype {lp.dtype}, which has no gradient")
    if not lp.requires_grad:
        raise TypeError(
            "log_prob's output has no gradient path to x (it does not require grad): it was "
            "computed through numpy, detached, under torch.no_grad, or does not depend on x. "
            "A gradient-based kernel (MALA, HMC, ULA, FlowMC) needs a torch-differentiable "
            "log-density; use IndependentMH/ISIR for one without gradients"
        )


def check_generator(generator: object, x: Tensor) -> None:
    """``generator`` must be None or a torch.Generator on ``x``'s device type."""
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator (or None for the global one); got "
                        f"{type(generator).__name__}. Make one with "
                        "torch.Generator(device=x0.device).manual_seed(seed)")
    if generator.device.type != x.device.type:
        raise ValueError(f"generator must live on the chains' device ({x.device.type}); it is on "
                         f"{generator.device.type}. Use torch.Generator(device=x0.device)")


def evaluate(log_prob: LogProb, x: Tensor, grad: bool) -> tuple[Tensor, Tensor | None]:
    """Log-density (and gradient) at ``x``, detached from any graph.

    Gradients are taken with respect to ``x`` only, so parameters of the user's model (an EBM being
    trained) accumulate nothing.
    """
    if not grad:
        with torch.no_grad():
            return _check_output(log_prob(x), x).detach(), None
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        lp = _check_output(log_prob(xg), x)
        check_gradient_path(lp)
        (g,) = torch.autograd.grad(lp.sum(), xg)
    return lp.detach(), g


def value_and_grad(log_prob: LogProb, x: Tensor, functional: bool = False) -> tuple[Tensor, Tensor]:
    """`evaluate` with the gradient; ``functional=True`` takes it with `torch.func.grad` instead
    of `torch.autograd.grad`, the form `torch.compile` keeps inside one graph (in eager mode it is
    slower, so the eager step does not use it)."""
    if not functional:
        return evaluate(log_prob, x, grad=True)

    def total(z: Tensor) -> tuple[Tensor, Tensor]:
        lp = _check_output(log_prob(z), z)
        return lp.sum(), lp

    g, lp = torch.func.grad(total, has_aux=True)(x.detach())
    return lp.detach(), g


def check_initial(lp: Tensor, name: str = "x0", grad: Tensor | None = None) -> None:
    """Chains must start where the density is positive and finite, and so is its gradient when the
    kernel uses one: from a NaN gradient every proposal is NaN, so the chain could never move.
    (One host sync, at init only.)"""
    bad = ~torch.isfinite(lp)
    if bool(bad.any()):
        raise NonFiniteError(
            f"log_prob({name}) is not finite for {int(bad.sum())} of {lp.shape[0]} chains "
            f"(first at chain {int(bad.nonzero()[0, 0])}); start chains where the density is positive"
        )
    if grad is not None:
        bad = ~torch.isfinite(grad).flatten(1).all(1)
        if bool(bad.any()):
            raise NonFiniteError(
                f"the gradient of log_prob at {name} is not finite for {int(bad.sum())} of "
                f"{lp.shape[0]} chains (first at chain {int(bad.nonzero()[0, 0])}); start chains "
                "where the log-density is differentiable"
            )


def initial_state(log_prob: LogProb, x: Tensor, step_size: float | Tensor | None = None,
                  grad: bool = True) -> State:
    """The `State` every kernel starts from: validated positions, their log-density (and gradient),
    and per-chain step sizes when the kernel has one."""
    x = check_positions(x)
    lp, g = evaluate(log_prob, x, grad=grad)
    check_initial(lp, grad=g)
    return State(x, lp, g, None if step_size is None else per_chain(step_size, x))

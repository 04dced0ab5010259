"""Argument checks shared by `flowmc_ebm`'s constructors and `fit` methods.

`samplers._checks.check_positive_int` is the sampler package's own (a TypeError for a non-int);
this one keeps `flowmc_ebm`'s convention that a bad argument is a ValueError naming what was
expected and what came, which its configs and CLI report as such.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_points", "check_positive_int", "iteration_count"]


def check_positive_int(value: object, name: str, minimum: int = 1) -> int:
    """``value`` if it is an int (not a bool) ``>= minimum``, else a ValueError.

    Example:
        >>> check_positive_int(3, "blocks")
        3
        >>> check_positive_int(1, "dim", minimum=2)
        Traceback (most recent call last):
        ...
        ValueError: dim must be an int >= 2; received 1
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        expected = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {expected}; received {value!r}")
    return value


def check_points(data: object, dim: int, name: str = "data") -> Tensor:
    """``data`` if it is a finite floating-point tensor of shape ``(n, dim)``, else a TypeError
    or ValueError naming what was expected and what came.

    Example:
        >>> check_points(torch.zeros(3, 2), 2).shape
        torch.Size([3, 2])
        >>> check_points(torch.zeros(3, 4), 2)
        Traceback (most recent call last):
        ...
        ValueError: data must have shape (n, 2) for this 2-D energy; received shape (3, 4)
    """
    if not isinstance(data, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (n, {dim}); received "
                        f"{type(data).__name__}")
    if data.ndim != 2 or data.shape[1] != dim:
        raise ValueError(f"{name} must have shape (n, {dim}) for this {dim}-D energy; "
                         f"received shape {tuple(data.shape)}")
    if not data.is_floating_point():
        raise TypeError(f"{name} must be floating point; received dtype {data.dtype}")
    bad = ~torch.isfinite(data).all(1)
    if bool(bad.any()):
        raise ValueError(f"{name} contains NaN or infinite values in {int(bad.sum())} of "
                         f"{data.shape[0]} rows (first at row {int(bad.nonzero()[0, 0])})")
    return data


def iteration_count(n_iterations: object, epochs: object, per_epoch: int) -> int:
    """The number of iterations asked for by exactly one of ``n_iterations`` and ``epochs``
    (``per_epoch`` iterations each), a positive int, else a ValueError.

    Example:
        >>> iteration_count(None, 3, per_epoch=16)
        48
    """
    if (n_iterations is None) == (epochs is None):
        raise ValueError("pass exactly one of n_iterations and epochs; received "
                         f"n_iterations={n_iterations!r}, epochs={epochs!r}")
    total = n_iterations if n_iterations is not None else (
        epochs * per_epoch if isinstance(epochs, int) and not isinstance(epochs, bool)
        else epochs)
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        raise ValueError(f"n_iterations / epochs must be a positive int; received "
                         f"n_iterations={n_iterations!r}, epochs={epochs!r}")
    return total

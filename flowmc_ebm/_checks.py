"""Argument checks shared by `flowmc_ebm`'s constructors.

`samplers._checks.check_positive_int` is the sampler package's own (a TypeError for a non-int);
this one keeps `flowmc_ebm`'s convention that a bad argument is a ValueError naming what was
expected and what came, which its configs and CLI report as such.
"""

from __future__ import annotations

__all__ = ["check_positive_int"]


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

"""The one place where traces, tensors and arrays become the `(chains, draws, dim)` layout."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def chains_tensor(samples: Any, *, name: str = "samples") -> torch.Tensor:
    """Validated chains as a tensor of shape `(chains, draws, dim)`, event axes flattened.

    Args:
        samples: a `samplers.Trace` (anything with `.samples`), a tensor or an array shaped
            `(chains, draws, *event)`.
        name: how error messages call the input.

    Returns:
        A detached CPU tensor `(chains, draws, prod(event))`, in the input's dtype (numpy
        float64 stays float64).

    Raises:
        ValueError: if the rank is below 3 or a value is NaN or infinite.
    """
    x = _tensor(getattr(samples, "samples", samples)).detach().cpu()
    if x.ndim < 3:
        raise ValueError(
            f"{name} must be shaped (chains, draws, *event) with rank >= 3; received shape "
            f"{tuple(x.shape)}. For a scalar quantity add a trailing axis (x[..., None]); for "
            f"a single chain add a leading one (x[None])."
        )
    if x.is_complex():
        raise ValueError(f"{name} must be real-valued; received dtype {x.dtype}.")
    x = x.reshape(x.shape[0], x.shape[1], -1)
    if x.is_floating_point():
        bad = ~torch.isfinite(x)
        if bad.any():
            chains = sorted({int(c) for c in bad.any(dim=(1, 2)).nonzero().flatten()})
            raise ValueError(
                f"{name} contain {int(bad.sum())} NaN or infinite values (in chains {chains}); "
                f"diagnostics need finite draws. A sampler should reject non-finite proposals, "
                f"so this usually means a bug upstream or a diverged chain."
            )
    return x


def chains_array(
    samples: Any,
    *,
    min_chains: int = 1,
    min_draws: int = 1,
    purpose: str = "these diagnostics",
    name: str = "samples",
) -> np.ndarray:
    """Validated chains as a float64 array `(chains, draws, dim)`; see `chains_tensor`.

    Raises:
        ValueError: on a wrong rank, non-finite values, or fewer than `min_chains` chains or
            `min_draws` draws per chain.
    """
    x = chains_tensor(samples, name=name)
    require_shape(
        x.shape[0],
        x.shape[1],
        min_chains=min_chains,
        min_draws=min_draws,
        purpose=purpose,
        name=name,
    )
    return x.to(torch.float64).numpy()


def require_shape(
    chains: int, draws: int, *, min_chains: int, min_draws: int, purpose: str, name: str
) -> None:
    """Raise a ValueError naming the expected and received counts of chains and draws."""
    if chains < min_chains or draws < min_draws:
        raise ValueError(
            f"{purpose} need(s) {name} with at least {min_chains} chain(s) of at least "
            f"{min_draws} draws; received {chains} chain(s) of {draws} draws."
        )


def points_tensor(samples: Any, *, name: str = "samples") -> torch.Tensor:
    """Points `(n, dim)` from either points `(n, dim)` or chains `(chains, draws, *event)`.

    A rank-2 input is read as points; rank 3 and above as chains, whose first two axes are
    pooled. Values must be finite.
    """
    x = _tensor(getattr(samples, "samples", samples))
    if x.ndim < 2:
        raise ValueError(
            f"{name} must be points (n, dim) or chains (chains, draws, *event); received shape "
            f"{tuple(x.shape)}."
        )
    x = chains_tensor(x[None] if x.ndim == 2 else x, name=name)
    return x.reshape(-1, x.shape[-1])


def _tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    # torch refuses numpy views with negative strides (x[::-1]) and warns on read-only arrays
    # (JAX output); a copy is cheap here.
    return torch.from_numpy(np.array(x, copy=True, order="C"))

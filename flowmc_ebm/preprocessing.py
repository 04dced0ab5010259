"""Data preparation for density models on bounded or integer data, and the minibatch stream.

"Match after preprocessing": integer-valued data are dequantized (:func:`dequantize`), scaled and
logit-transformed (:class:`LogitTransform`) outside the model, and the transform's log-determinant
is added back for the NLL in the original space (:func:`bits_per_dim` reports it per dimension).
:func:`minibatches` is what every minibatch fitting loop draws from: a tensor sampled with
replacement, or a callable that makes fresh data each call.

Example:
    >>> transform = LogitTransform(levels=17)
    >>> y, log_det = transform(dequantize(torch.tensor([[0, 16]]), torch.Generator().manual_seed(0)))
    >>> y.shape, log_det.shape
    (torch.Size([1, 2]), torch.Size([1]))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor
from tqdm.auto import tqdm

__all__ = ["DataSource", "LogitTransform", "bits_per_dim", "dequantize", "minibatches"]


def dequantize(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Uniform dequantization of integer-valued data: ``x + u``, ``u ~ U[0, 1)^D``.

    The NLL of the result is an upper bound on the discrete NLL of ``x``.

    Args:
        x: Integer-valued data (any dtype), shape ``[n, D]``.
        generator: Source of the noise.

    Returns:
        Float32 (or ``x``'s floating dtype) data in ``[x, x + 1)``.

    Example:
        >>> y = dequantize(torch.tensor([[0, 3]]))
        >>> bool(((y >= torch.tensor([0., 3.])) & (y < torch.tensor([1., 4.]))).all())
        True
    """
    dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    return x.to(dtype) + torch.rand(x.shape, generator=generator, dtype=dtype, device=x.device)


class LogitTransform:
    """``[0, levels]^D → R^D``: scale to ``(α, 1 − α)`` and take the logit.

    "Match after preprocessing": the model is fitted to ``y = logit(α + (1 − 2α) x / levels)`` and
    the NLL of ``x`` is ``−log p(y) − log|det ∂y/∂x|``.

    Args:
        levels: Width of the data range (e.g. 17 for digits valued 0..16, dequantized).
        alpha: Margin keeping the logit finite at the range's ends.

    Example:
        >>> transform = LogitTransform(levels=2, alpha=0.0)
        >>> y, log_det = transform(torch.tensor([[1.0]]))  # middle of the range: y = 0
        >>> y.item(), round(log_det.item(), 4)             # dy/dx = (1/2) / (1/4)
        (0.0, 0.6931)
    """

    def __init__(self, levels: float, alpha: float = 1e-6) -> None:
        if not levels > 0 or not 0 <= alpha < 0.5:
            raise ValueError(f"need levels > 0 and alpha in [0, 0.5); received {levels!r}, {alpha!r}")
        self.levels = float(levels)
        self.alpha = float(alpha)

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(y, log|det ∂y/∂x|)``, shapes ``[n, D]`` and ``[n]``."""
        p = self.alpha + (1 - 2 * self.alpha) * x / self.levels
        y = torch.log(p) - torch.log1p(-p)
        log_det = (math.log(1 - 2 * self.alpha) - math.log(self.levels)
                   - torch.log(p) - torch.log1p(-p)).sum(-1)
        return y, log_det

    def inverse(self, y: Tensor) -> Tensor:
        """``x`` from ``y``, shape ``[n, D]``."""
        return (torch.sigmoid(y) - self.alpha) * self.levels / (1 - 2 * self.alpha)


def bits_per_dim(nll: Tensor | float, dim: int) -> float:
    """Converts a mean NLL in nats over ``dim`` dimensions to bits per dimension.

    Example:
        >>> round(bits_per_dim(64 * math.log(2), 64), 6)
        1.0
    """
    return float(nll) / (dim * math.log(2))


DataSource = Tensor | Callable[[int, torch.Generator | None], Tensor]


def minibatches(data: DataSource, steps: int, batch_size: int,
                generator: torch.Generator | None = None, progress: bool = False,
                desc: str = "") -> Iterator[Tensor]:
    """``steps`` batches of ``batch_size`` points: drawn with replacement from a tensor, or from a
    callable ``(n, generator) -> [n, D]`` (fresh data each call).

    Example:
        >>> [b.shape for b in minibatches(torch.zeros(10, 3), steps=2, batch_size=4)]
        [torch.Size([4, 3]), torch.Size([4, 3])]
    """
    for _ in tqdm(range(steps), disable=not progress, desc=desc):
        if callable(data):
            yield data(batch_size, generator)
        else:
            index = torch.randint(0, data.shape[0], (batch_size,), generator=generator,
                                  device=data.device)
            yield data[index]


"""The blocks of a semi-autoregressive energy flow: the block split, and one block's map
``x_k = μ(c) + σ(c) ⊙ S_L ∘ … ∘ S_1(u_k; c)`` of conditional rational-quadratic splines."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from zuko.transforms import MonotonicRQSTransform

from flowmc_ebm.energies import zero_output_mlp

__all__ = ["block_sizes"]


def block_sizes(dim: int, blocks: int | Sequence[int]) -> list[int]:
    """Sizes of ``K`` contiguous blocks covering ``dim`` coordinates.

    Args:
        dim: ``D``.
        blocks: ``K`` (sizes as equal as possible, larger ones first) or the sizes themselves.

    Example:
        >>> block_sizes(7, 3), block_sizes(4, [1, 3])
        ([3, 2, 2], [1, 3])
    """
    if isinstance(blocks, int) and not isinstance(blocks, bool):
        if not 1 <= blocks <= dim:
            raise ValueError(f"need 1 <= blocks <= dim = {dim}; received {blocks}")
        base, extra = divmod(dim, blocks)
        return [base + (k < extra) for k in range(blocks)]
    sizes = [int(s) for s in blocks]
    if any(s < 1 for s in sizes) or sum(sizes) != dim:
        raise ValueError(f"block sizes must be positive and sum to {dim}; received {sizes}")
    return sizes


class _SplineLayer(nn.Module):
    """One conditional spline layer of a block: ``active ← spline(active; passive, context)``."""

    def __init__(self, size: int, context: int, flip: bool, hidden: Sequence[int], bins: int,
                 bound: float) -> None:
        super().__init__()
        if size == 1:
            self.active = [0]
        else:
            half = list(range(size // 2)) if flip else list(range(size // 2, size))
            self.active = half
        self.passive = [i for i in range(size) if i not in self.active]
        self.register_buffer("_active", torch.tensor(self.active, dtype=torch.long), persistent=False)
        self.register_buffer("_passive", torch.tensor(self.passive, dtype=torch.long), persistent=False)
        self.bins, self.bound = bins, bound
        n_in = len(self.passive) + context
        n_out = len(self.active) * (3 * bins - 1)
        if n_in == 0:
            self.net = None
            self.free = nn.Parameter(torch.zeros(n_out))
        else:
            self.net = zero_output_mlp(n_in, hidden, n_out)

    def _spline(self, x: Tensor, context: Tensor) -> MonotonicRQSTransform:
        conditioner = torch.cat([x[..., self._passive], context], dim=-1)
        if self.net is None:
            raw = self.free.expand(*x.shape[:-1], -1)
        else:
            raw = self.net(conditioner)
        raw = raw.unflatten(-1, (len(self.active), 3 * self.bins - 1))
        widths, heights, derivatives = raw.split([self.bins, self.bins, self.bins - 1], dim=-1)
        return MonotonicRQSTransform(widths, heights, derivatives, bound=self.bound)

    def forward(self, u: Tensor, context: Tensor) -> Tensor:
        spline = self._spline(u, context)
        return u.index_copy(-1, self._active, spline(u[..., self._active]))

    def inverse(self, x: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """``(u, log|det ∂u/∂x|)``; the passive coordinates are unchanged, so the spline's
        parameters are computed from ``x`` as in :meth:`forward`."""
        spline = self._spline(x, context)
        active = spline.inv(x[..., self._active])
        log_det = -spline.log_abs_det_jacobian(active, x[..., self._active]).sum(-1)
        return x.index_copy(-1, self._active, active), log_det


class _BlockFlow(nn.Module):
    """``x_k = μ(c) + σ(c) ⊙ S_L ∘ … ∘ S_1(u_k; c)`` for one block, ``c = x_{B_<k}``."""

    def __init__(self, size: int, context: int, layers: int, hidden: Sequence[int], bins: int,
                 bound: float) -> None:
        super().__init__()
        self.size, self.context = size, context
        self.splines = nn.ModuleList(
            _SplineLayer(size, context, flip=bool(i % 2), hidden=hidden, bins=bins, bound=bound)
            for i in range(layers))
        if context == 0:
            self.affine_net = None
            self.affine = nn.Parameter(torch.zeros(2 * size))
        else:
            self.affine_net = zero_output_mlp(context, hidden, 2 * size)

    def _affine(self, context: Tensor) -> tuple[Tensor, Tensor]:
        raw = self.affine.expand(*context.shape[:-1], -1) if self.affine_net is None \
            else self.affine_net(context)
        shift, raw_scale = raw.chunk(2, dim=-1)
        return shift, 3 * torch.tanh(raw_scale / 3)  # log-scale softly bounded to (−3, 3)

    def forward(self, u: Tensor, context: Tensor) -> Tensor:
        for spline in self.splines:
            u = spline(u, context)
        shift, log_scale = self._affine(context)
        return shift + log_scale.exp() * u

    def inverse(self, x: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self._affine(context)
        u = (x - shift) * torch.exp(-log_scale)
        log_det = -log_scale.sum(-1)
        for spline in reversed(self.splines):
            u, layer_log_det = spline.inverse(u, context)
            log_det = log_det + layer_log_det
        return u, log_det

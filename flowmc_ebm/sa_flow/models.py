"""The two energy flows: :class:`SemiAutoregressiveFlow` (``K`` blocks, one conditioner per
block) and :class:`AutoregressiveEnergyFlow` (``K = D`` with one masked conditioner); both
sample ancestrally and have a tractable density, used only to report the NLL."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, constraints
from zuko.nn import MaskedMLP
from zuko.transforms import MonotonicRQSTransform

from flowmc_ebm._checks import check_positive_int
from flowmc_ebm.sa_flow.blocks import _BlockFlow, block_sizes

__all__ = ["AutoregressiveEnergyFlow", "SemiAutoregressiveFlow"]

_LOG_2PI = math.log(2 * math.pi)


class _AncestralFlow(nn.Module):
    """What both energy flows share: ancestral sampling ``x = transform(u)`` from Gaussian noise.
    Subclasses set ``dim`` and define ``transform``."""

    dim: int

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        parameter = next(self.parameters())
        return parameter.device, parameter.dtype

    def noise(self, shape: Sequence[int], generator: torch.Generator | None = None) -> Tensor:
        """Standard normal noise of shape ``[*shape, D]`` on the model's device and dtype."""
        device, dtype = self._device_dtype()
        return torch.randn(*shape, self.dim, generator=generator, device=device, dtype=dtype)

    def rsample(self, shape: Sequence[int] | int, generator: torch.Generator | None = None) -> Tensor:
        """Reparameterized joint draws, shape ``[*shape, D]``."""
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        return self.transform(self.noise(shape, generator))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` joint draws, shape ``[n, D]``, without a graph."""
        return self.rsample((n,), generator)


class SemiAutoregressiveFlow(_AncestralFlow):
    """A flow of ``K`` blocks, each generated jointly given the earlier ones (see module doc).

    Args:
        dim: ``D``.
        blocks: ``K`` (``1``: non-autoregressive; ``D``: fully autoregressive) or block sizes.
        layers: Spline layers per block.
        hidden: Conditioner widths.
        bins: Spline bins.
        bound: Splines act on ``[−bound, bound]`` (identity outside); the affine maps rescale.

    Calling the module returns a :class:`~torch.distributions.Distribution` (``rsample``,
    ``sample``, ``log_prob``), the convention of zuko flows, so
    :func:`~flowmc_ebm.objectives.energy_score.energy_score_loss` and the samplers accept it.

    Example:
        >>> flow = SemiAutoregressiveFlow(3, blocks=3)
        >>> flow().rsample((2, 5)).shape
        torch.Size([2, 5, 3])
    """

    def __init__(self, dim: int, blocks: int | Sequence[int] = 1, layers: int = 3,
                 hidden: Sequence[int] = (64, 64), bins: int = 8, bound: float = 5.0) -> None:
        super().__init__()
        check_positive_int(dim, "dim")
        self.dim = dim
        self.sizes = block_sizes(dim, blocks)
        self.starts = [sum(self.sizes[:k]) for k in range(len(self.sizes))]
        self.blocks = nn.ModuleList(
            _BlockFlow(size, start, layers, hidden, bins, bound)
            for size, start in zip(self.sizes, self.starts, strict=True))

    @property
    def n_blocks(self) -> int:
        """``K``."""
        return len(self.sizes)

    def transform(self, u: Tensor) -> Tensor:
        """Ancestral generation ``x = f(u)``: ``K`` sequential passes; shape ``[*, D] -> [*, D]``."""
        parts: list[Tensor] = []
        for block, start, size in zip(self.blocks, self.starts, self.sizes, strict=True):
            context = torch.cat(parts, dim=-1) if parts else u[..., :0]
            parts.append(block(u[..., start:start + size], context))
        return torch.cat(parts, dim=-1)

    def conditional_transform(self, u: Tensor, y: Tensor) -> Tensor:
        """Each block generated from the *given* earlier blocks of ``y`` (teacher forcing).

        Args:
            u: Noise, shape ``[*, n, D]``.
            y: Conditioning points, shape ``[n, D]`` (broadcast over the leading dims of ``u``).

        Returns:
            ``[*, n, D]``: block ``k`` holds a draw from ``p(x_{B_k} | y_{B_<k})``. It is not a
            joint sample: the blocks are independent given ``y``.
        """
        parts = []
        for block, start, size in zip(self.blocks, self.starts, self.sizes, strict=True):
            context = y[..., :start].expand(*u.shape[:-1], start)
            parts.append(block(u[..., start:start + size], context))
        return torch.cat(parts, dim=-1)

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(u, log|det ∂u/∂x|)``: every block inverted in parallel (the context is ``x``)."""
        us, log_det = [], x.new_zeros(x.shape[:-1])
        for block, start, size in zip(self.blocks, self.starts, self.sizes, strict=True):
            u, block_log_det = block.inverse(x[..., start:start + size], x[..., :start])
            us.append(u)
            log_det = log_det + block_log_det
        return torch.cat(us, dim=-1), log_det

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact ``log p(x) = log N(u) + log|det ∂u/∂x|``; shape ``[*, D] -> [*]``.

        Only for evaluation (and the maximum-likelihood reference): energy-score training never
        calls it. Outside the splines' ``[−bound, bound]`` the layers are affine, so it is finite
        everywhere.
        """
        u, log_det = self.inverse(x)
        return -0.5 * u.square().sum(-1) - 0.5 * self.dim * _LOG_2PI + log_det

    def forward(self) -> _FlowDistribution:
        return _FlowDistribution(self)


class _FlowDistribution(Distribution):
    """The distribution of a :class:`SemiAutoregressiveFlow` (no argument validation)."""

    has_rsample = True
    arg_constraints: dict = {}
    support = constraints.real_vector

    def __init__(self, flow: SemiAutoregressiveFlow | AutoregressiveEnergyFlow) -> None:
        self.flow = flow
        super().__init__(batch_shape=torch.Size(), event_shape=torch.Size([flow.dim]),
                         validate_args=False)

    def rsample(self, sample_shape: Sequence[int] = torch.Size()) -> Tensor:
        return self.flow.rsample(tuple(sample_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        return self.flow.log_prob(value)


class AutoregressiveEnergyFlow(_AncestralFlow):
    """The fully autoregressive end, ``K = D``, with one masked conditioner for all coordinates.

    ``x_i = μ_i + σ_i · S_L ∘ … ∘ S_1(u_i)``, where the splines ``S_l`` and ``(μ_i, σ_i)`` of
    coordinate ``i`` come from a masked MLP (zuko's :class:`~zuko.nn.MaskedMLP`) that sees only
    ``x_<i``. The same model as :class:`SemiAutoregressiveFlow` with ``blocks = D`` up to the
    conditioner, but the teacher-forced loss and the density take *one* network pass instead of
    ``D`` (sampling still takes ``D``). Same interface: ``sizes``/``starts`` (all blocks of size
    1), :meth:`transform`, :meth:`conditional_transform`, :meth:`inverse`, :meth:`log_prob`.

    Args:
        dim: ``D``.
        layers: Spline layers per coordinate.
        hidden: Widths of the masked MLP.
        bins: Spline bins.
        bound: Splines act on ``[−bound, bound]``.

    Example:
        >>> flow = AutoregressiveEnergyFlow(3, hidden=(16,))
        >>> flow.sample(4).shape, flow.sizes
        (torch.Size([4, 3]), [1, 1, 1])
    """

    def __init__(self, dim: int, layers: int = 3, hidden: Sequence[int] = (256, 256), bins: int = 8,
                 bound: float = 5.0) -> None:
        super().__init__()
        check_positive_int(dim, "dim")
        self.dim, self.layers, self.bins, self.bound = dim, layers, bins, bound
        self.sizes, self.starts = [1] * dim, list(range(dim))
        self.per_coordinate = layers * (3 * bins - 1) + 2
        # Output (i, p) may depend on inputs j < i only; coordinate 0 gets constants.
        adjacency = torch.arange(dim)[None, :] < torch.arange(dim)[:, None]
        adjacency = adjacency.repeat_interleave(self.per_coordinate, dim=0)
        if dim == 1:  # nothing to condition on: free parameters
            self.net = None
            self.free = nn.Parameter(torch.zeros(self.per_coordinate))
        else:
            self.net = MaskedMLP(adjacency, hidden, activation=nn.SiLU)
            last = self.net[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    @property
    def n_blocks(self) -> int:
        """``K = D``."""
        return self.dim

    def _parameters_given(self, context: Tensor) -> tuple[list[MonotonicRQSTransform], Tensor, Tensor]:
        if self.net is None:
            raw = self.free.expand(*context.shape[:-1], 1, -1)
        else:
            raw = self.net(context).unflatten(-1, (self.dim, self.per_coordinate))
        width = 3 * self.bins - 1
        splines = []
        for layer in range(self.layers):
            chunk = raw[..., layer * width:(layer + 1) * width]
            widths, heights, derivatives = chunk.split([self.bins, self.bins, self.bins - 1], dim=-1)
            splines.append(MonotonicRQSTransform(widths, heights, derivatives, bound=self.bound))
        shift, raw_scale = raw[..., -2], raw[..., -1]
        return splines, shift, 3 * torch.tanh(raw_scale / 3)

    def _forward_given(self, u: Tensor, context: Tensor) -> Tensor:
        splines, shift, log_scale = self._parameters_given(context)
        for spline in splines:
            u = spline(u)
        return shift + log_scale.exp() * u

    def transform(self, u: Tensor) -> Tensor:
        """Ancestral generation: ``D`` passes; after pass ``t`` coordinates ``<= t`` are final."""
        x = torch.zeros_like(u)
        for _ in range(self.dim):
            x = self._forward_given(u, x)
        return x

    def conditional_transform(self, u: Tensor, y: Tensor) -> Tensor:
        """Coordinate ``i`` drawn from ``p(x_i | y_<i)``, all in one pass; see
        :meth:`SemiAutoregressiveFlow.conditional_transform`."""
        return self._forward_given(u, y.expand(*u.shape[:-1], self.dim))

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(u, log|det ∂u/∂x|)`` in one pass."""
        splines, shift, log_scale = self._parameters_given(x)
        u = (x - shift) * torch.exp(-log_scale)
        log_det = -log_scale.sum(-1)
        for spline in reversed(splines):
            v = spline.inv(u)
            log_det = log_det - spline.log_abs_det_jacobian(v, u).sum(-1)
            u = v
        return u, log_det

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact ``log p(x)``, for evaluation only."""
        u, log_det = self.inverse(x)
        return -0.5 * u.square().sum(-1) - 0.5 * self.dim * _LOG_2PI + log_det

    def forward(self) -> _FlowDistribution:
        return _FlowDistribution(self)

"""Semi-autoregressive energy flows: flows trained only through their samples, by the energy score.

Si et al. (ICML 2023, "Semi-Autoregressive Energy Flows"). The coordinates are split into ``K``
contiguous blocks ``B_1, …, B_K``. Block ``k`` is generated *jointly* from its own noise
``u_k ~ N(0, I)`` and the blocks before it:

    x_{B_k} = f_k(u_k; x_{B_<k}),

so ``K = 1`` is a non-autoregressive flow (one joint map ``x = f(u)``) and ``K = D`` a fully
autoregressive one (one coordinate at a time). Here each ``f_k`` is a stack of monotone
rational-quadratic spline layers (zuko's :class:`~zuko.transforms.MonotonicRQSTransform`), coupled
within the block (half the block's coordinates and the context set the splines of the other half)
and followed by a context-dependent affine map; the conditioners start at zero, so the flow starts
as ``N(0, I)``.

Training uses the energy score of :mod:`flowmc_ebm.objectives.energy_score` only — no Jacobian
determinant and no inverse is ever formed; gradients reach the parameters through ``m >= 2``
reparameterized samples per data point. Two losses:

- ``"autoregressive"`` (Si et al.'s semi-autoregressive energy objective): for each block the
  energy score of the conditional ``p(x_{B_k} | y_{B_<k})`` — the *data's* earlier blocks as
  context, so all blocks are scored in one parallel pass — at the observation ``y_{B_k}``, summed
  over blocks. A sum of strictly proper conditional scores is strictly proper for the joint. For
  ``K = 1`` it is the plain energy score.
- ``"joint"``: the energy score of ancestral (joint) samples against ``y`` in all ``D`` dimensions.

Because every ``f_k`` happens to be invertible in ``u_k``, the density is tractable,
``log p(x) = Σ_k [log N(u_k) − log|det ∂f_k/∂u_k|]`` (block-triangular Jacobian); it is used to
*report* the NLL (and for a maximum-likelihood reference), never by the energy-score training.

Example:
    >>> flow = SemiAutoregressiveFlow(4, blocks=2, hidden=(16,))
    >>> y = torch.randn(8, 4)
    >>> loss = semi_autoregressive_energy_loss(flow, y, m=2)
    >>> loss.backward()
    >>> flow.sample(5).shape, flow.log_prob(y).shape
    (torch.Size([5, 4]), torch.Size([8]))
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, constraints
from zuko.nn import MaskedMLP
from zuko.transforms import MonotonicRQSTransform

from ._checks import check_positive_int
from .energies import zero_output_mlp
from .objectives.energy_score import energy_score
from .preprocessing import DataSource
from .training.flow_fitting import MinibatchFitter

__all__ = [
    "ENERGY_LOSSES",
    "AutoregressiveEnergyFlow",
    "EnergyFlowTrainer",
    "SemiAutoregressiveFlow",
    "block_sizes",
    "joint_energy_loss",
    "semi_autoregressive_energy_loss",
]

_LOG_2PI = math.log(2 * math.pi)
ENERGY_LOSSES = ("autoregressive", "joint", "ml")


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


def _blockwise_scores(samples: Tensor, y: Tensor, starts: Sequence[int], sizes: Sequence[int],
                      beta: float) -> Tensor:
    """``Σ_k ES(samples[..., B_k], y[..., B_k])`` per point; vectorized when all blocks are 1-D."""
    if max(sizes) == 1:
        m = samples.shape[0]
        tiny = torch.finfo(samples.dtype).tiny
        fit = (samples - y).square().clamp_min(tiny).pow(beta / 2).mean(0)
        j, k = torch.triu_indices(m, m, offset=1, device=samples.device)
        spread = (samples[j] - samples[k]).square().clamp_min(tiny).pow(beta / 2).mean(0)
        return (fit - 0.5 * spread).sum(-1)
    scores = y.new_zeros(y.shape[0])
    for start, size in zip(starts, sizes, strict=True):
        block = slice(start, start + size)
        scores = scores + energy_score(samples[..., block], y[..., block], beta)
    return scores


def semi_autoregressive_energy_loss(
    flow: SemiAutoregressiveFlow | AutoregressiveEnergyFlow,
    y: Tensor,
    m: int = 2,
    beta: float = 1.0,
    generator: torch.Generator | None = None,
    per_point: bool = False,
) -> Tensor:
    """``Σ_k ES(p(x_{B_k} | y_{B_<k}), y_{B_k})``, averaged over the batch.

    Each block is sampled ``m`` times given the data's earlier blocks, by reparameterization; the
    blocks are scored in their own coordinates and the scores summed. ``K = 1``: the plain energy
    score; ``K = D``: the sum of the ``D`` conditional CRPS (for ``β = 1``).

    Args:
        flow: The model.
        y: Data, shape ``[n, D]``.
        m: Samples per point and block, ``>= 2``.
        beta: Exponent ``β ∈ (0, 2]``.
        generator: Source of the noise.
        per_point: Return the ``[n]`` per-point scores instead of their mean.

    Returns:
        A scalar (or ``[n]``), differentiable in the flow's parameters through the samples.
    """
    y = y.detach()
    if not 0 < beta <= 2:
        raise ValueError(f"beta must lie in (0, 2]; received {beta!r}")
    if m < 2:
        raise ValueError(f"the energy score needs m >= 2 samples per point; received m = {m}")
    samples = flow.conditional_transform(flow.noise((m, y.shape[0]), generator), y)
    scores = _blockwise_scores(samples, y, flow.starts, flow.sizes, beta)
    return scores if per_point else scores.mean()


def joint_energy_loss(
    flow: SemiAutoregressiveFlow | AutoregressiveEnergyFlow,
    y: Tensor,
    m: int = 2,
    beta: float = 1.0,
    generator: torch.Generator | None = None,
    per_point: bool = False,
) -> Tensor:
    """The energy score of ``m`` joint (ancestral) draws per point, in all ``D`` dimensions.

    Same arguments as :func:`semi_autoregressive_energy_loss`; gradients flow through the whole
    ancestral chain (block ``k``'s sample depends on the *sampled* earlier blocks).
    """
    y = y.detach()
    scores = energy_score(flow.rsample((m, y.shape[0]), generator), y, beta)
    return scores if per_point else scores.mean()


class EnergyFlowTrainer(MinibatchFitter):
    """Adam on the energy score of a :class:`SemiAutoregressiveFlow` (or on its NLL, as reference),
    on the one minibatch loop of :mod:`flowmc_ebm.training.flow_fitting`.

    Args:
        flow: The model (updated in place).
        loss: ``"autoregressive"`` (Si et al.), ``"joint"``, or ``"ml"`` (maximum likelihood with
            the tractable density, a reference only).
        m: Samples per data point (energy losses).
        beta: Energy-score exponent.
        lr: Adam learning rate.
        ema_decay: Decay of the parameter average used for evaluation (``None``: none).
        grad_clip: Maximum gradient norm (``None``: no clipping).

    Attributes:
        flow: The model (also ``model``).
        ema: The :class:`~flowmc_ebm.training.flow_fitting.ExponentialMovingAverage` (``None``
            without one); evaluate ``ema.average``, or ``evaluation_model`` in either case.
        history_: Loss per step.

    Example:
        >>> trainer = EnergyFlowTrainer(SemiAutoregressiveFlow(2, blocks=2, hidden=(8,)))
        >>> len(trainer.fit(torch.randn(64, 2), steps=3, batch_size=16).history_)
        3
    """

    def __init__(self, flow: SemiAutoregressiveFlow | AutoregressiveEnergyFlow,
                 loss: str = "autoregressive", *, m: int = 2,
                 beta: float = 1.0, lr: float = 1e-3, ema_decay: float | None = 0.999,
                 grad_clip: float | None = 10.0) -> None:
        if loss not in ENERGY_LOSSES:
            raise ValueError(f"unknown loss {loss!r}; known: {', '.join(ENERGY_LOSSES)}")
        super().__init__(flow, lr=lr, grad_clip=grad_clip, ema_decay=ema_decay,
                         desc=f"energy flow {loss}")
        self.flow, self.loss_name, self.m, self.beta = flow, loss, m, beta

    def loss(self, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The training loss on batch ``y`` (``[n, D]``), a scalar."""
        if self.loss_name == "ml":
            return -self.flow.log_prob(y).mean()
        function = semi_autoregressive_energy_loss if self.loss_name == "autoregressive" \
            else joint_energy_loss
        return function(self.flow, y, self.m, self.beta, generator)

    def fit(self, data: DataSource, steps: int, batch_size: int = 256,
            generator: torch.Generator | None = None, progress: bool = False) -> EnergyFlowTrainer:
        """``steps`` steps on minibatches drawn from a tensor (with replacement) or a callable
        ``(n, generator) -> [n, D]``; returns ``self``."""
        return super().fit(data, steps, batch_size, generator, progress)

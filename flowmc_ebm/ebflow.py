"""EBFlow: a normalizing flow trained as an energy-based model, without Jacobian determinants.

Chao et al. (NeurIPS 2023, "Training Energy-Based Normalizing Flow with Score-Matching
Objectives"). A flow ``g`` maps data to a standard normal latent. Its layers are either

- *linear* (:class:`LinearLayer`: :class:`Dense` ``x ↦ Wx + b``, the ``k × k`` convolution
  :class:`Conv2dLinear`, the ``1 × 1`` convolution :class:`Conv1x1`, the :class:`Squeeze`
  permutation): ``log|det J|`` does not depend on ``x``, so it is a constant of the density; or
- *nonlinear* (:class:`NonlinearLayer`: :class:`SmoothLeakyReLU`, :class:`AffineCoupling`), whose
  log-determinants are cheap (elementwise or triangular).

The model's density is ``p(x) = exp(−E(x)) / Z`` with the energy

    E(x) = −log N(g(x); 0, I) − Σ_nonlinear log|det J_l|,     log Z = −Σ_linear log|det W_l|.

Score-matching objectives see only ``∇ₓE``, so training never forms the ``D × D`` determinants:
``O(D²L)`` per step instead of maximum likelihood's ``O(D³L)`` (the slogdet of each dense layer
and its inverse in the backward pass). The exact NLL is recovered afterwards by adding ``log Z``
back, which :meth:`EBFlow.log_normalizer` computes once and caches until a parameter changes.

Also here: :class:`ExponentialMovingAverage` (the averaged weights used for evaluation),
:class:`LogitTransform` and :func:`dequantize` ("match after preprocessing": the data are
dequantized, scaled and logit-transformed outside the model and the transform's log-determinant is
added back for the NLL in the original space), and :class:`EBFlowTrainer` (score matching or
maximum likelihood, with EMA).

Example:
    >>> model = fully_connected_ebflow(4)
    >>> x = torch.randn(8, 4)
    >>> trainer = EBFlowTrainer(model, "ssm").fit(x, steps=3, batch_size=8)
    >>> with torch.no_grad():
    ...     nll = -trainer.ema.average.log_prob(x)
    >>> nll.shape
    torch.Size([8])
"""

from __future__ import annotations

import abc
import copy
import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .objectives.score_matching import OBJECTIVES, score_matching_loss

__all__ = [
    "AffineCoupling",
    "Conv1x1",
    "Conv2dLinear",
    "Dense",
    "EBFlow",
    "EBFlowTrainer",
    "ExponentialMovingAverage",
    "LinearLayer",
    "LogitTransform",
    "NonlinearLayer",
    "SmoothLeakyReLU",
    "Squeeze",
    "TRAINING_OBJECTIVES",
    "bits_per_dim",
    "conv_ebflow",
    "coupling_ebflow",
    "dequantize",
    "fully_connected_ebflow",
]

_LOG_2PI = math.log(2 * math.pi)
TRAINING_OBJECTIVES = ("ml", *OBJECTIVES)


class LinearLayer(nn.Module, abc.ABC):
    """A layer whose Jacobian log-determinant does not depend on its input."""

    @abc.abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        """``y = f(x)``, shape ``[n, D] -> [n, D]``."""

    @abc.abstractmethod
    def log_abs_det(self) -> Tensor:
        """``log|det ∂f/∂x|``, a scalar, differentiable in the parameters."""

    @abc.abstractmethod
    def inverse(self, y: Tensor) -> Tensor:
        """``x = f⁻¹(y)``, shape ``[n, D] -> [n, D]``."""


class NonlinearLayer(nn.Module, abc.ABC):
    """A layer whose Jacobian log-determinant depends on its input and is cheap to compute."""

    @abc.abstractmethod
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(f(x), log|det ∂f/∂x|)``, shapes ``[n, D]`` and ``[n]``."""

    @abc.abstractmethod
    def inverse(self, y: Tensor) -> Tensor:
        """``x = f⁻¹(y)``, shape ``[n, D] -> [n, D]``."""


class Dense(LinearLayer):
    """``y = Wx + b`` with a full ``D × D`` matrix, starting at ``W = −I``, ``b = 0``.

    ``−I`` is the initialization of the EBFlow authors' code: invertible, well conditioned, and
    with ``log|det W| = 0``.

    Args:
        dim: ``D``.

    Example:
        >>> Dense(3)(torch.ones(1, 3))
        tensor([[-1., -1., -1.]], grad_fn=<AddmmBackward0>)
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(-torch.eye(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        return torch.addmm(self.bias, x, self.weight.mT)

    def log_abs_det(self) -> Tensor:
        return torch.linalg.slogdet(self.weight).logabsdet

    def inverse(self, y: Tensor) -> Tensor:
        return torch.linalg.solve(self.weight, (y - self.bias).mT).mT


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    if len(shape) != 3 or any(int(s) < 1 for s in shape):
        raise ValueError(f"shape must be (channels, height, width); received {tuple(shape)!r}")
    return int(shape[0]), int(shape[1]), int(shape[2])


class Conv2dLinear(LinearLayer):
    """A ``k × k`` convolution (zero padding, stride 1, channels in = out) on flattened images.

    ``x`` of shape ``[n, C·H·W]`` is read as ``[n, C, H, W]``. The layer is the linear map
    ``x ↦ Mx + b`` with a ``D × D`` matrix ``M`` (``D = C·H·W``), so its log-determinant does not
    depend on ``x`` and goes to the normalizer. It is computed *exactly*, with no structural
    restriction on the kernel: :meth:`dense` builds ``M`` by pushing the ``D`` basis vectors through
    the convolution (one batched convolution), then ``slogdet`` (``O(D³)``). EBFlow calls it only
    when the normalizer is needed — every step under maximum likelihood, once per parameter change
    (cached) when score matching — which is affordable for small images (``D = 64`` here) and is the
    price of an unrestricted kernel. The inverse solves with ``M``.

    The kernel starts as the identity (a centred delta per channel).

    Args:
        shape: ``(C, H, W)``.
        kernel_size: Odd ``k``.

    Example:
        >>> layer = Conv2dLinear((1, 3, 3))
        >>> torch.equal(layer.dense(), torch.eye(9))
        True
    """

    def __init__(self, shape: Sequence[int], kernel_size: int = 3) -> None:
        super().__init__()
        self.shape = _check_shape(shape)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive; received {kernel_size!r}")
        channels = self.shape[0]
        weight = torch.zeros(channels, channels, kernel_size, kernel_size)
        weight[range(channels), range(channels), kernel_size // 2, kernel_size // 2] = 1.0
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.zeros(channels))

    def _conv(self, x: Tensor) -> Tensor:
        images = x.reshape(x.shape[0], *self.shape)
        out = nn.functional.conv2d(images, self.weight, padding=self.weight.shape[-1] // 2)
        return out.flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        bias = self.bias.repeat_interleave(self.shape[1] * self.shape[2])
        return self._conv(x) + bias

    def dense(self) -> Tensor:
        """The ``D × D`` matrix ``M`` of the convolution (bias excluded)."""
        dim = self.shape[0] * self.shape[1] * self.shape[2]
        basis = torch.eye(dim, dtype=self.weight.dtype, device=self.weight.device)
        return self._conv(basis).mT  # row i of conv(basis) is M e_i, column i of M

    def log_abs_det(self) -> Tensor:
        return torch.linalg.slogdet(self.dense()).logabsdet

    def inverse(self, y: Tensor) -> Tensor:
        bias = self.bias.repeat_interleave(self.shape[1] * self.shape[2])
        return torch.linalg.solve(self.dense(), (y - bias).mT).mT


class Conv1x1(LinearLayer):
    """Glow's invertible ``1 × 1`` convolution: the same ``C × C`` matrix at every pixel.

    ``log|det| = H·W·log|det W|`` in closed form (``O(C³)``). Starts at ``W = I``.

    Args:
        shape: ``(C, H, W)`` of the flattened input.

    Example:
        >>> layer = Conv1x1((2, 2, 2))
        >>> layer.log_abs_det().item()
        0.0
    """

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.shape = _check_shape(shape)
        self.weight = nn.Parameter(torch.eye(self.shape[0]))
        self.bias = nn.Parameter(torch.zeros(self.shape[0]))

    def _mix(self, x: Tensor, matrix: Tensor) -> Tensor:
        images = x.reshape(x.shape[0], self.shape[0], -1)
        return (matrix @ images).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        bias = self.bias.repeat_interleave(self.shape[1] * self.shape[2])
        return self._mix(x, self.weight) + bias

    def log_abs_det(self) -> Tensor:
        return self.shape[1] * self.shape[2] * torch.linalg.slogdet(self.weight).logabsdet

    def inverse(self, y: Tensor) -> Tensor:
        bias = self.bias.repeat_interleave(self.shape[1] * self.shape[2])
        return self._mix(y - bias, torch.linalg.inv(self.weight))


class Squeeze(LinearLayer):
    """Space-to-depth, ``(C, H, W) → (4C, H/2, W/2)``: a permutation, ``log|det| = 0``.

    Args:
        shape: ``(C, H, W)`` of the input, ``H`` and ``W`` even.

    Example:
        >>> layer = Squeeze((1, 2, 2))
        >>> layer(torch.arange(4.0)[None]).tolist()
        [[0.0, 1.0, 2.0, 3.0]]
    """

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.shape = _check_shape(shape)
        if self.shape[1] % 2 or self.shape[2] % 2:
            raise ValueError(f"Squeeze needs even height and width; received {self.shape}")
        self.out_shape = (4 * self.shape[0], self.shape[1] // 2, self.shape[2] // 2)

    def forward(self, x: Tensor) -> Tensor:
        images = x.reshape(x.shape[0], *self.shape)
        return nn.functional.pixel_unshuffle(images, 2).flatten(1)

    def log_abs_det(self) -> Tensor:
        return torch.zeros(())

    def inverse(self, y: Tensor) -> Tensor:
        images = y.reshape(y.shape[0], *self.out_shape)
        return nn.functional.pixel_shuffle(images, 2).flatten(1)


class SmoothLeakyReLU(NonlinearLayer):
    """Elementwise ``f(x) = αx + (1 − α) softplus(x)``: smooth, convex, slope in ``(α, 1)``.

    Being strictly increasing and convex, ``f`` is inverted by Newton's method started from
    ``min(y, y/α)``, a point at or right of the root (``f(x) > x`` and ``f(x) > αx``
    everywhere): from there the iterates decrease monotonically to the root, never overshooting.

    Args:
        alpha: Slope ``α ∈ (0, 1)`` far to the left.

    Example:
        >>> layer = SmoothLeakyReLU()
        >>> x = torch.tensor([[-30.0, -3.0, 0.0, 5.0]])
        >>> torch.allclose(layer.inverse(layer(x)[0]), x, atol=1e-6)
        True
    """

    def __init__(self, alpha: float = 0.3) -> None:
        super().__init__()
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must lie in (0, 1); received {alpha!r}")
        self.alpha = float(alpha)

    def _slope(self, x: Tensor) -> Tensor:
        return self.alpha + (1 - self.alpha) * torch.sigmoid(x)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = self.alpha * x + (1 - self.alpha) * nn.functional.softplus(x)
        return y, self._slope(x).log().sum(-1)

    @torch.no_grad()
    def inverse(self, y: Tensor, max_iter: int = 100) -> Tensor:
        x = torch.minimum(y, y / self.alpha)
        tol = 4 * torch.finfo(y.dtype).eps
        for _ in range(max_iter):
            residual = self.alpha * x + (1 - self.alpha) * nn.functional.softplus(x) - y
            step = residual / self._slope(x)
            x = x - step
            if (step.abs() <= tol * (1 + x.abs())).all():
                break
        return x


class AffineCoupling(NonlinearLayer):
    """RealNVP coupling: half the coordinates scale and shift the other half.

    ``y_b = x_b · exp(s(x_a)) + t(x_a)``, ``y_a = x_a``, with ``s`` softly bounded to ``(−2, 2)``;
    the conditioner uses SiLU, smooth, because score matching differentiates the energy twice.
    Its last layer starts at zero, so the layer starts as the identity.

    Args:
        dim: ``D >= 2``.
        hidden: Widths of the conditioner's hidden layers.
        swap: Condition on the second half instead of the first.

    Example:
        >>> layer = AffineCoupling(4)
        >>> x = torch.randn(2, 4)
        >>> torch.allclose(layer(x)[0], x), layer(x)[1].tolist()
        (True, [0.0, 0.0])
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (64, 64), swap: bool = False) -> None:
        super().__init__()
        if dim < 2:
            raise ValueError(f"a coupling needs dim >= 2; received {dim}")
        self.split = dim // 2 if not swap else dim - dim // 2
        self.swap = swap
        n_in, n_out = (dim // 2, dim - dim // 2) if not swap else (dim - dim // 2, dim // 2)
        layers: list[nn.Module] = []
        width = n_in
        for size in hidden:
            layers += [nn.Linear(width, size), nn.SiLU()]
            width = size
        last = nn.Linear(width, 2 * n_out)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)
        self.n_in = n_in

    def _halves(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.swap:
            passive, active = x[:, x.shape[1] - self.n_in:], x[:, : x.shape[1] - self.n_in]
        else:
            passive, active = x[:, : self.n_in], x[:, self.n_in:]
        return passive, active

    def _join(self, passive: Tensor, active: Tensor) -> Tensor:
        return torch.cat([active, passive] if self.swap else [passive, active], dim=-1)

    def _scale_shift(self, passive: Tensor) -> tuple[Tensor, Tensor]:
        raw_scale, shift = self.net(passive).chunk(2, dim=-1)
        return 2 * torch.tanh(raw_scale / 2), shift

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        passive, active = self._halves(x)
        log_scale, shift = self._scale_shift(passive)
        return self._join(passive, active * log_scale.exp() + shift), log_scale.sum(-1)

    def inverse(self, y: Tensor) -> Tensor:
        passive, active = self._halves(y)
        log_scale, shift = self._scale_shift(passive)
        return self._join(passive, (active - shift) * torch.exp(-log_scale))


class EBFlow(nn.Module):
    """A flow from data to ``N(0, I)`` read as an energy-based model.

    Args:
        dim: Data dimension ``D``.
        layers: :class:`LinearLayer` and :class:`NonlinearLayer` instances, data side first.

    Example:
        >>> model = EBFlow(2, [Dense(2), SmoothLeakyReLU(), Dense(2)])
        >>> x = torch.randn(5, 2)
        >>> model.energy(x).shape, model.log_prob(x).shape
        (torch.Size([5]), torch.Size([5]))
        >>> torch.allclose(model.inverse(model.transform(x)[0]), x, atol=1e-5)
        True
    """

    def __init__(self, dim: int, layers: Sequence[LinearLayer | NonlinearLayer]) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int; received {dim!r}")
        for layer in layers:
            if not isinstance(layer, LinearLayer | NonlinearLayer):
                raise TypeError(f"layers must be LinearLayer or NonlinearLayer; received "
                                f"{type(layer).__name__}")
        self.dim = dim
        self.layers = nn.ModuleList(layers)
        self._normalizer_cache: tuple[tuple, Tensor] | None = None

    def _check(self, x: Tensor) -> None:
        if not torch.is_tensor(x) or x.ndim != 2 or x.shape[1] != self.dim:
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"EBFlow expects x of shape (n, {self.dim}); received {shape}")

    def transform(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Maps data to the latent, summing the *nonlinear* layers' log-determinants only.

        Args:
            x: Data, shape ``[n, D]``.

        Returns:
            ``(g(x), Σ_nonlinear log|det J_l(x)|)``, shapes ``[n, D]`` and ``[n]``.
        """
        self._check(x)
        log_det = x.new_zeros(x.shape[0])
        for layer in self.layers:
            if isinstance(layer, LinearLayer):
                x = layer(x)
            else:
                x, layer_log_det = layer(x)
                log_det = log_det + layer_log_det
        return x, log_det

    def energy(self, x: Tensor) -> Tensor:
        """``E(x) = −log N(g(x); 0, I) − Σ_nonlinear log|det J_l(x)|``; no determinant of a
        dense matrix is formed.

        Args:
            x: Data, shape ``[n, D]``.

        Returns:
            Energies, shape ``[n]``.
        """
        z, log_det = self.transform(x)
        return 0.5 * z.square().sum(-1) + 0.5 * self.dim * _LOG_2PI - log_det

    def forward(self, x: Tensor) -> Tensor:
        """Same as :meth:`energy`, so the model can be passed wherever an energy is expected."""
        return self.energy(x)

    def linear_log_det(self) -> Tensor:
        """``Σ_linear log|det W_l|`` computed now (``O(D³)`` per dense layer), differentiable."""
        total = torch.zeros((), device=self._device(), dtype=self._dtype())
        for layer in self.layers:
            if isinstance(layer, LinearLayer):
                total = total + layer.log_abs_det()
        return total

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def log_normalizer(self) -> Tensor:
        """``log Z = −Σ_linear log|det W_l|``, so that ``log p(x) = −E(x) − log Z``.

        When no gradient is wanted (under ``torch.no_grad`` or with frozen parameters) the value
        is cached and reused until a linear layer's parameter changes: the key holds each
        parameter's version counter, which every in-place update (an optimizer step, an EMA
        update, ``load_state_dict``) increments. When gradients are wanted it is recomputed, in
        the graph, as maximum-likelihood training needs.

        Returns:
            A scalar.
        """
        linear = [p for layer in self.layers if isinstance(layer, LinearLayer)
                  for p in layer.parameters()]
        if torch.is_grad_enabled() and any(p.requires_grad for p in linear):
            return -self.linear_log_det()
        key = tuple((id(p), p._version, p.device, p.dtype) for p in linear)
        if self._normalizer_cache is None or self._normalizer_cache[0] != key:
            with torch.no_grad():
                self._normalizer_cache = (key, -self.linear_log_det())
        return self._normalizer_cache[1]

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact normalized log-density ``−E(x) − log Z``.

        Args:
            x: Data, shape ``[n, D]``.

        Returns:
            ``log p(x)``, shape ``[n]``.
        """
        return -self.energy(x) - self.log_normalizer()

    def inverse(self, z: Tensor) -> Tensor:
        """``g⁻¹(z)``: linear solves for dense layers, Newton for the smooth leaky ReLU.

        Args:
            z: Latents, shape ``[n, D]``.

        Returns:
            Data-space points, shape ``[n, D]``.
        """
        self._check(z)
        for layer in reversed(self.layers):
            z = layer.inverse(z)
        return z

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Exact draws by inverting the flow on standard normal latents.

        Args:
            n: Number of draws.
            generator: Source of randomness (on the model's device).

        Returns:
            Samples, shape ``[n, D]``.
        """
        z = torch.randn(n, self.dim, generator=generator, device=self._device(), dtype=self._dtype())
        return self.inverse(z)


def fully_connected_ebflow(dim: int, alpha: float = 0.3, blocks: int = 1) -> EBFlow:
    """The EBFlow paper's fully connected model: dense ``D×D`` → smooth leaky ReLU → dense ``D×D``.

    With ``blocks > 1`` the (smooth leaky ReLU → dense) pair is repeated: ``blocks`` nonlinear
    layers between ``blocks + 1`` dense ones. Still an EBFlow: every dense layer's log-determinant
    goes to the normalizer, so score matching never forms a determinant. ``blocks = 1`` is the
    paper's model.

    Every dense layer starts at ``−I`` (as in the authors' code).

    Args:
        dim: ``D``.
        alpha: Left slope of the smooth leaky ReLUs.
        blocks: Number of nonlinear layers, ``>= 1``.

    Returns:
        An :class:`EBFlow`.

    Example:
        >>> model = fully_connected_ebflow(3)
        >>> sum(p.numel() for p in model.parameters())
        24
        >>> deeper = fully_connected_ebflow(3, blocks=2)  # dense → SLReLU → dense → SLReLU → dense
        >>> sum(p.numel() for p in deeper.parameters()), len(deeper.layers)
        (36, 5)
    """
    if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
        raise ValueError(f"blocks must be a positive int; received {blocks!r}")
    layers: list[LinearLayer | NonlinearLayer] = [Dense(dim)]
    for _ in range(blocks):
        layers += [SmoothLeakyReLU(alpha), Dense(dim)]
    return EBFlow(dim, layers)


def coupling_ebflow(dim: int, blocks: int = 4, hidden: Sequence[int] = (64, 64)) -> EBFlow:
    """An EBFlow of ``blocks`` (dense → affine coupling) pairs and a final dense layer.

    The dense layers mix all coordinates, so the couplings need no permutations between them.

    Args:
        dim: ``D >= 2``.
        blocks: Number of (dense, coupling) pairs.
        hidden: Conditioner widths.

    Returns:
        An :class:`EBFlow`; it starts as ``x ↦ (−1)^(blocks+1) x``, whose density is ``N(0, I)``.

    Example:
        >>> coupling_ebflow(2, blocks=2).sample(3).shape
        torch.Size([3, 2])
    """
    layers: list[LinearLayer | NonlinearLayer] = []
    for block in range(blocks):
        layers += [Dense(dim), AffineCoupling(dim, hidden, swap=bool(block % 2))]
    return EBFlow(dim, [*layers, Dense(dim)])


def conv_ebflow(shape: Sequence[int] = (1, 8, 8), kernel_size: int = 3, blocks: int = 3,
                alpha: float = 0.3) -> EBFlow:
    """A small convolutional EBFlow: ``k × k`` conv → smooth leaky ReLU, then a squeeze and
    ``blocks − 1`` × (``1 × 1`` conv → ``k × k`` conv → smooth leaky ReLU), then a ``1 × 1`` conv.

    Every linear layer's log-determinant is input-independent and only enters the normalizer: the
    ``k × k`` convolutions' exactly, through their dense matrix (:class:`Conv2dLinear`), the
    ``1 × 1`` convolutions' in closed form, the squeeze's is 0.

    Args:
        shape: ``(C, H, W)``, ``H`` and ``W`` even.
        kernel_size: Odd ``k``.
        blocks: Number of (convolution, nonlinearity) stages, ``>= 1``.
        alpha: Left slope of the smooth leaky ReLUs.

    Returns:
        An :class:`EBFlow` on flattened images, ``D = C·H·W``; it starts as the identity map.

    Example:
        >>> model = conv_ebflow((1, 4, 4))
        >>> model.sample(2).shape
        torch.Size([2, 16])
    """
    shape = _check_shape(shape)
    layers: list[LinearLayer | NonlinearLayer] = [Conv2dLinear(shape, kernel_size), SmoothLeakyReLU(alpha)]
    squeeze = Squeeze(shape)
    layers.append(squeeze)
    for _ in range(blocks - 1):
        layers += [Conv1x1(squeeze.out_shape), Conv2dLinear(squeeze.out_shape, kernel_size),
                   SmoothLeakyReLU(alpha)]
    layers.append(Conv1x1(squeeze.out_shape))
    return EBFlow(shape[0] * shape[1] * shape[2], layers)


class ExponentialMovingAverage:
    """An exponential moving average of a model's parameters, with warm-up, for evaluation.

    The decay at update ``t`` is ``min(decay, (1 + t)/(10 + t))``: early averages forget the
    random initialization quickly, later ones settle to ``decay``.

    Args:
        model: The model being trained; a frozen copy of it holds the average.
        decay: Long-run decay, e.g. 0.999.
        warmup: Use the warm-up schedule above (else ``decay`` from the start).

    Example:
        >>> net = nn.Linear(2, 1)
        >>> ema = ExponentialMovingAverage(net, decay=0.999)
        >>> ema.update(net)
        >>> ema.decay_now()  # after one update: min(0.999, 2/11)
        0.18181818181818182
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"decay must lie in [0, 1); received {decay!r}")
        self.decay = float(decay)
        self.warmup = warmup
        self.updates = 0
        self.average = copy.deepcopy(model).requires_grad_(False)

    def decay_now(self) -> float:
        """The decay the next update will use."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Moves the average toward ``model``'s current parameters (buffers are copied)."""
        decay = self.decay_now()
        for average, current in zip(self.average.parameters(), model.parameters(), strict=True):
            average.lerp_(current, 1 - decay)
        for average, current in zip(self.average.buffers(), model.buffers(), strict=True):
            average.copy_(current)
        self.updates += 1


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
    callable ``(n, generator) -> [n, D]`` (fresh data each call)."""
    for _ in tqdm(range(steps), disable=not progress, desc=desc):
        if callable(data):
            yield data(batch_size, generator)
        else:
            index = torch.randint(0, data.shape[0], (batch_size,), generator=generator,
                                  device=data.device)
            yield data[index]


class EBFlowTrainer:
    """Trains an :class:`EBFlow` by score matching or maximum likelihood, keeping an EMA.

    Args:
        model: The flow to train (updated in place).
        objective: ``"ml"`` (exact NLL, slogdet of every dense layer each step) or a
            score-matching objective on ``model.energy``: ``"ssm"``, ``"dsm"``, ``"fdssm"``,
            ``"exact"`` (low dimension only).
        lr: Adam learning rate.
        sigma: DSM noise scale.
        xi: FD-SSM step.
        n_projections: SSM directions per point.
        energy_reg: ``λ`` of the ``λ · mean E`` regularizer (score matching only).
        ema_decay: Decay of the weight average used for evaluation.
        grad_clip: Maximum gradient norm (``None``: no clipping).

    Attributes:
        model: The model being trained.
        ema: Its :class:`ExponentialMovingAverage`; evaluate ``ema.average``.
        history_: Training loss per step.

    Example:
        >>> trainer = EBFlowTrainer(fully_connected_ebflow(2), "dsm", sigma=0.1)
        >>> len(trainer.fit(torch.randn(64, 2), steps=5, batch_size=16).history_)
        5
    """

    def __init__(
        self,
        model: EBFlow,
        objective: str = "ssm",
        *,
        lr: float = 1e-3,
        sigma: float = 0.05,
        xi: float = 1e-2,
        n_projections: int = 1,
        energy_reg: float = 0.0,
        ema_decay: float = 0.999,
        grad_clip: float | None = None,
    ) -> None:
        if objective not in TRAINING_OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; known: {', '.join(TRAINING_OBJECTIVES)}")
        self.model = model
        self.objective = objective
        self.sigma, self.xi, self.n_projections = sigma, xi, n_projections
        self.energy_reg = energy_reg
        self.grad_clip = grad_clip
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        self.ema = ExponentialMovingAverage(model, ema_decay)
        self.history_: list[float] = []

    def loss(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The objective on one batch ``x`` of shape ``[n, D]``, a scalar."""
        if self.objective == "ml":
            return -self.model.log_prob(x).mean()
        return score_matching_loss(
            self.model.energy, x, self.objective, sigma=self.sigma, xi=self.xi,
            n_projections=self.n_projections, energy_reg=self.energy_reg, generator=generator,
        ).loss

    def step(self, x: Tensor, generator: torch.Generator | None = None) -> float:
        """One optimizer step on batch ``x``, then an EMA update; returns the loss."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(x, generator)
        loss.backward()
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.ema.update(self.model)
        value = loss.item()
        self.history_.append(value)
        return value

    def fit(
        self,
        data: DataSource,
        steps: int,
        batch_size: int = 100,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> EBFlowTrainer:
        """Runs ``steps`` steps on minibatches.

        Args:
            data: A tensor ``[N, D]`` (batches drawn with replacement) or a callable
                ``(n, generator) -> [n, D]`` (e.g. a target's ``sample``, or a function that
                dequantizes and preprocesses fresh each call).
            steps: Number of optimizer steps.
            batch_size: Points per step.
            generator: Source of batches, directions and noise.
            progress: Show a progress bar.

        Returns:
            ``self``.
        """
        for batch in minibatches(data, steps, batch_size, generator, progress,
                                 f"EBFlow {self.objective}"):
            self.step(batch, generator)
        return self

"""EBFlow's layers: linear ones, whose log-determinant is a constant of the density, and cheap
nonlinear ones.

A *linear* layer (:class:`LinearLayer`: :class:`Dense` ``x ↦ Wx + b``, the ``k × k`` convolution
:class:`Conv2dLinear`, the ``1 × 1`` convolution :class:`Conv1x1`, the :class:`Squeeze`
permutation) has a ``log|det J|`` that does not depend on ``x``: it goes to the normalizer, which
score matching never needs. A *nonlinear* layer (:class:`NonlinearLayer`:
:class:`SmoothLeakyReLU`, :class:`AffineCoupling`) has an elementwise or triangular Jacobian whose
log-determinant is part of the energy.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from flowmc_ebm.energies import zero_output_mlp

__all__ = ["AffineCoupling", "Conv1x1", "Conv2dLinear", "Dense", "LinearLayer", "NonlinearLayer",
           "SmoothLeakyReLU", "Squeeze", "check_image_shape"]


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


def check_image_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    """``(C, H, W)`` as ints, or a ValueError naming what came."""
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
        self.shape = check_image_shape(shape)
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
        self.shape = check_image_shape(shape)
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
        self.shape = check_image_shape(shape)
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
        self.net = zero_output_mlp(n_in, hidden, 2 * n_out)
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


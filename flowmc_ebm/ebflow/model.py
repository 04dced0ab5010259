"""The EBFlow model (Chao et al., NeurIPS 2023): a flow from data to ``N(0, I)`` read as an EBM,
and the three architectures of the experiments.

The model's density is ``p(x) = exp(−E(x)) / Z`` with the energy

    E(x) = −log N(g(x); 0, I) − Σ_nonlinear log|det J_l|,     log Z = −Σ_linear log|det W_l|,

so score matching, which sees only ``∇ₓE``, never forms a ``D × D`` determinant; the exact NLL is
recovered by adding ``log Z`` back (:meth:`EBFlow.log_normalizer`, cached until a parameter
changes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from flowmc_ebm._checks import check_positive_int
from flowmc_ebm.ebflow.layers import (
    AffineCoupling,
    Conv1x1,
    Conv2dLinear,
    Dense,
    LinearLayer,
    NonlinearLayer,
    SmoothLeakyReLU,
    Squeeze,
    check_image_shape,
)

__all__ = ["EBFlow", "conv_ebflow", "coupling_ebflow", "fully_connected_ebflow"]

_LOG_2PI = math.log(2 * math.pi)


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
        check_positive_int(dim, "dim")
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
    check_positive_int(blocks, "blocks")
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
    shape = check_image_shape(shape)
    layers: list[LinearLayer | NonlinearLayer] = [Conv2dLinear(shape, kernel_size), SmoothLeakyReLU(alpha)]
    squeeze = Squeeze(shape)
    layers.append(squeeze)
    for _ in range(blocks - 1):
        layers += [Conv1x1(squeeze.out_shape), Conv2dLinear(squeeze.out_shape, kernel_size),
                   SmoothLeakyReLU(alpha)]
    layers.append(Conv1x1(squeeze.out_shape))
    return EBFlow(shape[0] * shape[1] * shape[2], layers)


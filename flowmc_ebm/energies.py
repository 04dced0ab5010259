"""Energy networks and the tilted model densities that MCMC samples.

Sign convention: ``p(x) ∝ exp(-E(x))``. Networks here return energies; samplers want
log-densities. The conversion happens in exactly one place, :func:`log_density_from_energy`,
which the tilts use; nothing else in the package negates an energy.

Two tilts turn an energy into an MCMC target:

- :class:`TiltedEnergy` (flowMC-EBM, Grenioux et al. 2023): ``log p~(x) = -E(x) + log lambda(x)``
  with ``lambda`` the flow's *base* distribution. The EBM models the data relative to a fixed,
  well-behaved reference, so ``E ≡ 0`` at initialization means "the model is lambda".
- :class:`FlowTiltedEnergy` (NT-EBM, Nijkamp et al. 2022): ``log p~(x) = -E(x) + log q(x)`` with
  ``q`` the full flow density, which keeps changing as the flow trains.

Example:
    >>> from flowmc_ebm.flows import make_flow
    >>> flow = make_flow(2)
    >>> model = TiltedEnergy(MLPEnergy(2), flow)
    >>> model.log_prob(torch.zeros(4, 2)).shape
    torch.Size([4])
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence

import torch
import zuko
from torch import Tensor, nn
from torch.distributions import Distribution

from ._checks import check_positive_int
from .flows import base_distribution

__all__ = [
    "ConvEnergy",
    "FlowTiltedEnergy",
    "MLPEnergy",
    "TiltedEnergy",
    "log_density_from_energy",
    "zero_output_mlp",
]


def log_density_from_energy(energy: Tensor) -> Tensor:
    """The unnormalized log-density of an energy: ``log p~ = -E``.

    This is the package's only energy-to-log-density conversion.

    Args:
        energy: Energies ``E(x)``, any shape.

    Returns:
        ``-E(x)``, same shape.

    Example:
        >>> log_density_from_energy(torch.tensor([0.0, 2.0]))
        tensor([-0., -2.])
    """
    return -energy


def _check_vectors(x: Tensor, dim: int, owner: str) -> None:
    if not torch.is_tensor(x):
        raise TypeError(f"{owner} expects a torch.Tensor; received {type(x).__name__}")
    if x.ndim < 1 or x.shape[-1] != dim:
        raise ValueError(f"{owner} expects x of shape (n, {dim}); received {tuple(x.shape)}")


def zero_output_mlp(n_in: int, hidden: Sequence[int], n_out: int,
                    activation: Callable[[], nn.Module] = nn.SiLU) -> nn.Sequential:
    """``Linear → activation`` per hidden width, then a ``Linear`` whose weights and bias start at
    zero, so the network outputs exactly 0 at initialization: the energy ``E ≡ 0`` here, the
    identity couplings of the determinant-free flows (`flowmc_ebm.ebflow`, `flowmc_ebm.sa_flow`).

    Example:
        >>> zero_output_mlp(3, (8,), 2)(torch.randn(4, 3)).abs().max().item()
        0.0
    """
    layers: list[nn.Module] = []
    width = n_in
    for size in hidden:
        layers += [nn.Linear(width, size), activation()]
        width = size
    last = nn.Linear(width, n_out)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(*layers, last)


class MLPEnergy(nn.Module):
    """A fully connected energy ``E: R^dim -> R``, exactly 0 at initialization.

    Args:
        dim: Input dimension ``D``.
        hidden: Widths of the hidden layers.
        activation: Activation constructor; smooth ones (the default SiLU) give the smooth
            gradients Langevin moves rely on.

    Example:
        >>> energy = MLPEnergy(3)
        >>> energy(torch.randn(5, 3))
        tensor([0., 0., 0., 0., 0.], grad_fn=<SqueezeBackward1>)
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (128, 128),
        activation: Callable[[], nn.Module] = nn.SiLU,
    ) -> None:
        super().__init__()
        check_positive_int(dim, "dim")
        self.dim = dim
        # E ≡ 0 makes the untrained model equal to its reference density (the tilt's base).
        self.net = zero_output_mlp(dim, hidden, 1, activation)

    def forward(self, x: Tensor) -> Tensor:
        """Energies of a batch.

        Args:
            x: Points, shape ``[*batch, D]`` (usually ``[n, D]``).

        Returns:
            ``E(x)``, shape ``[*batch]``.
        """
        _check_vectors(x, self.dim, type(self).__name__)
        return self.net(x).squeeze(-1)


class ConvEnergy(nn.Module):
    """A small convolutional energy for images (8x8 digits scale), exactly 0 at initialization.

    Each block is a 3x3 convolution and an activation; blocks after the first halve the spatial
    size (stride 2). A linear layer on the flattened features gives the energy.

    Args:
        shape: Image shape ``(C, H, W)``.
        channels: Output channels of each convolution block.
        activation: Activation constructor.

    Example:
        >>> energy = ConvEnergy((1, 8, 8))
        >>> energy(torch.randn(2, 1, 8, 8)).shape, energy(torch.randn(2, 64)).shape
        (torch.Size([2]), torch.Size([2]))
    """

    def __init__(
        self,
        shape: Sequence[int] = (1, 8, 8),
        channels: Sequence[int] = (32, 64, 64),
        activation: Callable[[], nn.Module] = nn.SiLU,
    ) -> None:
        super().__init__()
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape must be (C, H, W) with positive sizes; received {shape}")
        if len(channels) == 0:
            raise ValueError("channels must name at least one convolution block")
        self.shape = shape
        self.dim = math.prod(shape)
        layers: list[nn.Module] = []
        in_channels, height, width = shape
        for i, out_channels in enumerate(channels):
            stride = 1 if i == 0 else 2
            layers += [
                nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1),
                activation(),
            ]
            in_channels = out_channels
            # A 3x3 kernel with padding 1 maps size s to ceil(s / stride).
            height, width = -(-height // stride), -(-width // stride)
        last = nn.Linear(in_channels * height * width, 1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, nn.Flatten(), last)

    def forward(self, x: Tensor) -> Tensor:
        """Energies of a batch of images.

        Args:
            x: Images, shape ``[n, C, H, W]``, or flattened, ``[n, C*H*W]`` (the form flows and
                samplers use).

        Returns:
            ``E(x)``, shape ``[n]``.
        """
        name = type(self).__name__
        if not torch.is_tensor(x):
            raise TypeError(f"{name} expects a torch.Tensor; received {type(x).__name__}")
        if x.ndim == 2 and x.shape[1] == self.dim:
            x = x.reshape(-1, *self.shape)
        elif x.ndim != 4 or tuple(x.shape[1:]) != self.shape:
            raise ValueError(
                f"{name} expects x of shape (n, {', '.join(map(str, self.shape))}) or "
                f"(n, {self.dim}); received {tuple(x.shape)}"
            )
        return self.net(x).squeeze(-1)


def _resolve_base(
    base: Distribution | zuko.lazy.Flow | Callable[[], Distribution],
) -> Distribution:
    if isinstance(base, Distribution):
        return base
    if isinstance(base, zuko.lazy.Flow):
        return base_distribution(base)
    return base()


class _Tilt(abc.ABC):
    """Shared plumbing of the two tilts: ``log p~(x) = -E(x) + log r(x)``."""

    def __init__(self, energy: Callable[[Tensor], Tensor]) -> None:
        if not callable(energy):
            raise TypeError(f"energy must be callable; received {type(energy).__name__}")
        self.net = energy

    @abc.abstractmethod
    def _reference(self) -> Distribution:
        """The reference distribution ``r``, looked up anew on every call."""

    def energy(self, x: Tensor) -> Tensor:
        """The network's energy ``E(x)``, shape ``[n]``, without the tilt.

        This is the term whose parameters contrastive training differentiates.
        """
        return self.net(x)

    def log_prob(self, x: Tensor) -> Tensor:
        """Unnormalized model log-density, shape ``[n]``; differentiable in ``x``.

        Args:
            x: Points, shape ``[n, D]``.

        Returns:
            ``-E(x) + log r(x)`` with ``r`` the reference density.
        """
        energy = self.energy(x)
        log_reference = self._reference().log_prob(x)
        if log_reference.shape != energy.shape:
            raise ValueError(
                f"the reference log_prob returned shape {tuple(log_reference.shape)} for x of "
                f"shape {tuple(x.shape)}; expected {tuple(energy.shape)}, one value per point "
                "(wrap a per-coordinate distribution in torch.distributions.Independent)"
            )
        return log_density_from_energy(energy) + log_reference

    def __call__(self, x: Tensor) -> Tensor:
        return self.log_prob(x)


class TiltedEnergy(_Tilt):
    """flowMC-EBM's model: ``log p~(x) = -E(x) + log lambda(x)``, lambda a base distribution.

    The base is looked up on every call, never cached, so a flow trained during the run (or a
    base replaced on it) is always the one used.

    Args:
        energy: The energy network, ``[n, D] -> [n]``.
        base: ``lambda``: a ``Distribution``; a zuko ``Flow``, whose base is used; or a
            zero-argument callable returning a ``Distribution`` (e.g. ``flow.base``).

    Example:
        >>> lam = torch.distributions.Independent(
        ...     torch.distributions.Normal(torch.zeros(2), torch.ones(2)), 1)
        >>> model = TiltedEnergy(MLPEnergy(2), lam)
        >>> torch.allclose(model(torch.ones(1, 2)), lam.log_prob(torch.ones(1, 2)))
        True
    """

    def __init__(
        self,
        energy: Callable[[Tensor], Tensor],
        base: Distribution | zuko.lazy.Flow | Callable[[], Distribution],
    ) -> None:
        super().__init__(energy)
        if not isinstance(base, Distribution) and not callable(base):
            raise TypeError(
                f"base must be a Distribution, a zuko Flow or a callable returning a "
                f"Distribution; received {type(base).__name__}"
            )
        self.base = base

    def _reference(self) -> Distribution:
        return _resolve_base(self.base)


class FlowTiltedEnergy(_Tilt):
    """NT-EBM's model: ``log p~(x) = -E(x) + log q(x)``, q the density of a normalizing flow.

    ``flow()`` is called on every evaluation, so the flow's current parameters are used.

    Args:
        energy: The energy network, ``[n, D] -> [n]``.
        flow: A zuko ``Flow`` (or any callable returning a ``Distribution``).

    Example:
        >>> from flowmc_ebm.flows import make_flow
        >>> flow = make_flow(2)
        >>> model = FlowTiltedEnergy(MLPEnergy(2), flow)
        >>> x = torch.randn(3, 2)
        >>> torch.allclose(model(x), flow().log_prob(x))
        True
    """

    def __init__(
        self, energy: Callable[[Tensor], Tensor], flow: Callable[[], Distribution]
    ) -> None:
        super().__init__(energy)
        if not callable(flow):
            raise TypeError(f"flow must be callable; received {type(flow).__name__}")
        self.flow = flow

    def _reference(self) -> Distribution:
        return self.flow()

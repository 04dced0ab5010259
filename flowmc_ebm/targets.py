"""Multimodal target densities whose mode weights are known exactly.

Every target here is a finite mixture ``p(x) = sum_k w_k p_k(x)`` with normalized components, so
``log_prob`` is exact (not merely up to a constant), samples come with their component labels, and
any estimate of "how much mass sits in mode k" can be checked against ``weights[k]``.

Parameters are kept in float64 on the CPU and copied, once per (device, dtype), to wherever the
input lives; ``log_prob`` therefore follows the input's device and dtype without moving anything
in a hot loop.

Example:
    >>> target = get_target("two_modes")
    >>> x = target.sample(1000, generator=torch.Generator().manual_seed(0))
    >>> x.shape, target.log_prob(x).shape
    (torch.Size([1000, 2]), torch.Size([1000]))
    >>> round((target.assign(x) == target.top_right).float().mean().item(), 1)
    0.7
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from flowmc_ebm._checks import check_positive_int

__all__ = [
    "TARGETS",
    "EightGaussians",
    "FourModes",
    "GaussianMixture",
    "HighDimMixture",
    "MixtureTarget",
    "Rings",
    "TwoModes",
    "get_target",
]

_LOG_2PI = math.log(2 * math.pi)


def _as_float64(value: Tensor | Sequence | float, name: str) -> Tensor:
    try:
        return torch.as_tensor(value, dtype=torch.float64).detach().cpu().clone()
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be convertible to a float tensor: {error}") from None


def _check_weights(weights: Tensor, n_modes: int) -> Tensor:
    if weights.shape != (n_modes,):
        raise ValueError(
            f"weights must have shape ({n_modes},), one per mode; received {tuple(weights.shape)}"
        )
    if not torch.isfinite(weights).all() or (weights < 0).any():
        raise ValueError(f"weights must be finite and non-negative; received {weights.tolist()}")
    # float32 inputs such as (0.1, 0.2, 0.3, 0.4) sum to 1 only up to float32 rounding.
    if abs(weights.sum().item() - 1.0) > 1e-6:
        raise ValueError(f"weights must sum to 1; received sum {weights.sum().item():.8g}")
    return weights


class MixtureTarget(abc.ABC):
    """A mixture ``p(x) = sum_k w_k p_k(x)`` of normalized components on ``R^dim``.

    Subclasses provide the per-component log-densities and a per-component sampler; everything
    else (``log_prob``, ``responsibilities``, ``assign``, ``sample``) is shared.

    Attributes:
        dim: The event dimension ``D``.
        n_modes: The number of components ``K``; one mode per component.
    """

    def __init__(self, dim: int, n_modes: int, weights: Tensor | Sequence[float]) -> None:
        self.dim = int(dim)
        self.n_modes = int(n_modes)
        self._weights = _check_weights(_as_float64(weights, "weights"), self.n_modes)
        self._cache: dict[tuple[torch.device, torch.dtype], dict[str, Tensor]] = {}

    @property
    def weights(self) -> Tensor:
        """Mode weights ``w_k``, shape ``[K]``, float32; they sum to 1."""
        return self._weights.float()

    def _parameters(self) -> dict[str, Tensor]:
        """The float64 CPU tensors ``component_log_prob`` and ``_sample_components`` use."""
        return {"log_weights": self._weights.log()}

    def _params_like(self, device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
        key = (device, dtype)
        if key not in self._cache:
            self._cache[key] = {
                name: value.to(device=device, dtype=dtype)
                for name, value in self._parameters().items()
            }
        return self._cache[key]

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor; received {type(x).__name__}")
        if x.ndim < 1 or x.shape[-1] != self.dim:
            raise ValueError(
                f"{type(self).__name__} expects x of shape (n, {self.dim}); "
                f"received {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor; received {x.dtype}")

    @abc.abstractmethod
    def _component_log_prob(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        """Normalized ``log p_k(x)`` for flat ``x: [n, D]``, shape ``[n, K]``."""

    @abc.abstractmethod
    def _sample_components(
        self, modes: Tensor, generator: torch.Generator | None, params: dict[str, Tensor]
    ) -> Tensor:
        """Draws ``x_i ~ p_{modes[i]}`` in float64, shape ``[n, D]``."""

    def component_log_prob(self, x: Tensor) -> Tensor:
        """Normalized log-density of every component.

        Args:
            x: Points, shape ``[*batch, D]``.

        Returns:
            ``log p_k(x)``, shape ``[*batch, K]``.
        """
        self._check_input(x)
        params = self._params_like(x.device, x.dtype)
        flat = x.reshape(-1, self.dim)
        return self._component_log_prob(flat, params).reshape(*x.shape[:-1], self.n_modes)

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact normalized log-density ``log sum_k w_k p_k(x)``, differentiable in ``x``.

        Args:
            x: Points, shape ``[*batch, D]`` (usually ``[n, D]``).

        Returns:
            ``log p(x)``, shape ``[*batch]``.
        """
        joint = self._joint_log_prob(x)
        return torch.logsumexp(joint, dim=-1)

    def __call__(self, x: Tensor) -> Tensor:
        return self.log_prob(x)

    def _joint_log_prob(self, x: Tensor) -> Tensor:
        log_weights = self._params_like(x.device, x.dtype)["log_weights"]
        return self.component_log_prob(x) + log_weights

    def responsibilities(self, x: Tensor) -> Tensor:
        """Posterior component probabilities ``w_k p_k(x) / p(x)``.

        Args:
            x: Points, shape ``[*batch, D]``.

        Returns:
            Probabilities, shape ``[*batch, K]``; each row sums to 1.
        """
        return torch.softmax(self._joint_log_prob(x), dim=-1)

    def assign(self, x: Tensor) -> Tensor:
        """Mode index of each point: the component with the highest posterior responsibility.

        Args:
            x: Points, shape ``[*batch, D]``.

        Returns:
            Mode indices in ``[0, K)``, shape ``[*batch]``, dtype ``torch.long``.
        """
        with torch.no_grad():
            return self._joint_log_prob(x).argmax(dim=-1)

    def sample_with_modes(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Exact i.i.d. draws together with the component each came from.

        Args:
            n: Number of draws.
            generator: Source of randomness; the same seed gives the same draws. When given,
                draws are made on its device.
            dtype: Floating dtype of the returned points.
            device: Device of the draws when no generator is given (default CPU).

        Returns:
            ``(x, modes)``: points of shape ``[n, D]`` and their component indices ``[n]``.
        """
        check_positive_int(n, "n")
        if generator is not None:
            device = generator.device
        device = torch.device("cpu") if device is None else torch.device(device)
        params = self._params_like(device, torch.float64)
        modes = torch.multinomial(
            params["log_weights"].exp(), n, replacement=True, generator=generator
        )
        x = self._sample_components(modes, generator, params)
        return x.to(dtype), modes

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Exact i.i.d. draws, shape ``[n, D]``; see :meth:`sample_with_modes`."""
        return self.sample_with_modes(n, generator, dtype=dtype, device=device)[0]

    def __repr__(self) -> str:
        weights = ", ".join(f"{w:.3g}" for w in self._weights.tolist())
        return f"{type(self).__name__}(dim={self.dim}, weights=[{weights}])"


class GaussianMixture(MixtureTarget):
    """A mixture of Gaussians with full covariances.

    Args:
        means: Component means, shape ``[K, D]``.
        covariances: Symmetric positive-definite covariances, shape ``[K, D, D]``.
        weights: Mode weights, shape ``[K]``, non-negative, summing to 1.

    Raises:
        ValueError: On inconsistent shapes, invalid weights, or a covariance that is not
            symmetric positive definite.

    Example:
        >>> gm = GaussianMixture([[0.0], [4.0]], [[[1.0]], [[0.5]]], [0.25, 0.75])
        >>> gm.log_prob(torch.zeros(3, 1)).shape
        torch.Size([3])
    """

    def __init__(
        self,
        means: Tensor | Sequence,
        covariances: Tensor | Sequence,
        weights: Tensor | Sequence[float],
    ) -> None:
        means = _as_float64(means, "means")
        covariances = _as_float64(covariances, "covariances")
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, D); received {tuple(means.shape)}")
        n_modes, dim = means.shape
        if covariances.shape != (n_modes, dim, dim):
            raise ValueError(
                f"covariances must have shape ({n_modes}, {dim}, {dim}) to match means; "
                f"received {tuple(covariances.shape)}"
            )
        super().__init__(dim, n_modes, weights)
        if not torch.allclose(covariances, covariances.mT, rtol=1e-10, atol=1e-12):
            raise ValueError("covariances must be symmetric")
        scale_tril, info = torch.linalg.cholesky_ex(covariances)
        if (info != 0).any():
            bad = torch.nonzero(info).flatten().tolist()
            raise ValueError(f"covariances must be positive definite; components {bad} are not")
        self._means = means
        self._scale_tril = scale_tril
        self._covariances = covariances

    @property
    def means(self) -> Tensor:
        """Component means, shape ``[K, D]``, float32."""
        return self._means.float()

    @property
    def covariances(self) -> Tensor:
        """Component covariances, shape ``[K, D, D]``, float32."""
        return self._covariances.float()

    def _parameters(self) -> dict[str, Tensor]:
        eye = torch.eye(self.dim, dtype=torch.float64).expand_as(self._scale_tril)
        # Whitening by the inverse Cholesky factor is a batched matmul, cheaper in a sampler's
        # inner loop than a triangular solve per call.
        inverse_tril = torch.linalg.solve_triangular(self._scale_tril, eye, upper=False)
        half_log_det = self._scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return {
            **super()._parameters(),
            "means": self._means,
            "scale_tril": self._scale_tril,
            "inverse_tril": inverse_tril,
            "log_normalizer": -half_log_det - 0.5 * self.dim * _LOG_2PI,
        }

    def _component_log_prob(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        diff = x.unsqueeze(0) - params["means"].unsqueeze(1)  # [K, n, D]
        white = diff @ params["inverse_tril"].mT
        return (params["log_normalizer"].unsqueeze(1) - 0.5 * white.square().sum(-1)).mT

    def _sample_components(
        self, modes: Tensor, generator: torch.Generator | None, params: dict[str, Tensor]
    ) -> Tensor:
        noise = torch.randn(
            modes.shape[0], self.dim, generator=generator, dtype=torch.float64, device=modes.device
        )
        # Colour the noise with every factor, then pick; indexing the factors per draw would
        # materialize an [n, D, D] tensor.
        coloured = noise @ params["scale_tril"].mT  # [K, n, D]
        rows = torch.arange(modes.shape[0], device=modes.device)
        return params["means"][modes] + coloured[modes, rows]


def _isotropic(n_modes: int, dim: int, variance: float) -> Tensor:
    return variance * torch.eye(dim, dtype=torch.float64).expand(n_modes, dim, dim).clone()


class TwoModes(GaussianMixture):
    """``(1/3) N(-1.5 (1, 1), 0.05 I) + (2/3) N(1.5 (1, 1), 0.1 I)`` in 2-D.

    The heavier mode is the top-right one, index :attr:`top_right` (= 1).

    Example:
        >>> TwoModes().weights[TwoModes.top_right]
        tensor(0.6667)
    """

    top_right = 1
    bottom_left = 0

    def __init__(self) -> None:
        covariances = torch.cat([_isotropic(1, 2, 0.05), _isotropic(1, 2, 0.1)])
        super().__init__([[-1.5, -1.5], [1.5, 1.5]], covariances, [1 / 3, 2 / 3])


class FourModes(GaussianMixture):
    """Four Gaussians on the first axis at ``x = -3, -1, 1, 3``, variance 0.05, in 2-D.

    Weights 0.1, 0.2, 0.3, 0.4 from left to right.

    Example:
        >>> FourModes().means[:, 0]
        tensor([-3., -1.,  1.,  3.])
    """

    def __init__(self) -> None:
        means = [[-3.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [3.0, 0.0]]
        super().__init__(means, _isotropic(4, 2, 0.05), [0.1, 0.2, 0.3, 0.4])


class EightGaussians(GaussianMixture):
    """Eight equal-weight Gaussians evenly spaced on a circle, in 2-D.

    Args:
        radius: Radius of the circle of means.
        std: Standard deviation of each (isotropic) component.

    Example:
        >>> EightGaussians().n_modes
        8
    """

    def __init__(self, radius: float = 1.0, std: float = 0.15) -> None:
        angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
        means = radius * torch.stack([angles.cos(), angles.sin()], dim=-1)
        super().__init__(means, _isotropic(8, 2, std**2), torch.full((8,), 1 / 8))


class HighDimMixture(GaussianMixture):
    """The 4-mode mixture of Grenioux et al. (2023) in ``dim`` dimensions.

    Modes at ``a (1, ..., 1)``, ``-a (1, ..., 1)``, ``a s`` and ``-a s``, where ``s`` negates the
    first ``dim // 2`` coordinates of ``(1, ..., 1)``, with ``a = 0.591 sqrt(2 log dim)``; unit
    covariance.

    Args:
        dim: Dimension, at least 2.
        weights: Mode weights in the order above, shape ``[4]``; equal by default.

    Example:
        >>> HighDimMixture(16).means.shape
        torch.Size([4, 16])
    """

    def __init__(self, dim: int, weights: Tensor | Sequence[float] | None = None) -> None:
        check_positive_int(dim, "dim", minimum=2)
        a = 0.591 * math.sqrt(2 * math.log(dim))
        ones = torch.ones(dim, dtype=torch.float64)
        flipped = ones.clone()
        flipped[: dim // 2] = -1.0
        means = a * torch.stack([ones, -ones, flipped, -flipped])
        weights = torch.full((4,), 0.25) if weights is None else weights
        super().__init__(means, _isotropic(4, dim, 1.0), weights)


class Rings(MixtureTarget):
    """Concentric rings in 2-D: ``p(x) = sum_k w_k exp(-(|x| - r_k)^2 / (2 s^2)) / Z_k``.

    Not a Gaussian mixture: each component's density depends on ``|x|`` only. Each ``Z_k`` is
    the radial integral in closed form, ``Z_k = 2 pi s^2 (exp(-a^2 / 2) + a sqrt(2 pi) Phi(a))``
    with ``a = r_k / s`` and ``Phi`` the standard normal CDF. By default every ring carries the
    same mass (``w_k = 1/K``), so an outer ring is *less dense* than an inner one.

    Sampling is exact: the angle is uniform and the radius follows the component's radial
    marginal ``r exp(-(r - r_k)^2 / (2 s^2))`` on ``r > 0`` (note the Jacobian factor ``r``; a
    radius drawn from a plain truncated normal would not match :meth:`log_prob`).

    :meth:`assign` returns the nearest ring, which can differ from the highest-responsibility
    ring in a thin band (outer rings have larger ``Z_k``).

    Args:
        radii: Ring radii ``r_k``, positive, shape ``[K]``.
        std: Radial standard deviation ``s``.
        weights: Mass of each ring, shape ``[K]``; equal by default.

    Example:
        >>> rings = Rings()
        >>> rings.assign(torch.tensor([[0.0, 2.1], [3.9, 0.0]]))
        tensor([1, 3])
    """

    def __init__(
        self,
        radii: Sequence[float] = (1.0, 2.0, 3.0, 4.0),
        std: float = 0.15,
        weights: Tensor | Sequence[float] | None = None,
    ) -> None:
        radii = _as_float64(radii, "radii")
        if radii.ndim != 1 or radii.numel() == 0 or not (radii > 0).all():
            raise ValueError(f"radii must be a non-empty vector of positive numbers; got {radii}")
        if not std > 0:
            raise ValueError(f"std must be positive; received {std!r}")
        n_modes = radii.numel()
        equal = torch.full((n_modes,), 1 / n_modes)
        super().__init__(2, n_modes, equal if weights is None else weights)
        self._radii = radii
        self.std = float(std)

    @property
    def radii(self) -> Tensor:
        """Ring radii, shape ``[K]``, float32."""
        return self._radii.float()

    def _parameters(self) -> dict[str, Tensor]:
        a = self._radii / self.std
        radial = torch.exp(-0.5 * a.square()) + a * math.sqrt(2 * math.pi) * torch.special.ndtr(a)
        log_z = math.log(2 * math.pi * self.std**2) + radial.log()
        return {**super()._parameters(), "radii": self._radii, "log_normalizer": -log_z}

    def _radius(self, x: Tensor) -> Tensor:
        return torch.linalg.vector_norm(x, dim=-1)

    def _component_log_prob(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        gap = self._radius(x).unsqueeze(-1) - params["radii"]
        return params["log_normalizer"] - 0.5 * (gap / self.std).square()

    def assign(self, x: Tensor) -> Tensor:
        """Index of the nearest ring, shape ``[*batch]``, dtype ``torch.long``."""
        self._check_input(x)
        radii = self._params_like(x.device, x.dtype)["radii"]
        with torch.no_grad():
            return (self._radius(x).unsqueeze(-1) - radii).abs().argmin(dim=-1)

    def _sample_components(
        self, modes: Tensor, generator: torch.Generator | None, params: dict[str, Tensor]
    ) -> Tensor:
        # In t = (r - r_k) / s the radial density is (a + t) phi(t) on t > -a, a = r_k / s. It
        # splits exactly into three parts, each sampled in closed form:
        #   |t| < a : mass a (2 Phi(a) - 1). Draw |t| from the truncated normal, then take the
        #             sign + with probability (a + |t|) / (2a).
        #   t > a   : a phi(t), mass a Phi(-a); a normal tail, by inverse CDF.
        #   t > a   : t phi(t), mass phi(a); a Rayleigh tail, t = sqrt(a^2 + 2 Exp(1)).
        n, device = modes.shape[0], modes.device
        a = params["radii"][modes] / self.std
        u = torch.rand(5, n, generator=generator, dtype=torch.float64, device=device)
        lower_tail = torch.special.ndtr(-a)
        phi_a = torch.exp(-0.5 * a.square()) / math.sqrt(2 * math.pi)
        masses = torch.stack([a * (1 - 2 * lower_tail), a * lower_tail, phi_a], dim=-1)
        part = (u[0].unsqueeze(-1) * masses.sum(-1, keepdim=True) > masses.cumsum(-1)).sum(-1)

        magnitude = torch.special.ndtri(0.5 + u[1] * (0.5 - lower_tail)).clamp(min=0.0)
        sign = torch.where(u[2] * 2 * a < a + magnitude, 1.0, -1.0)
        inner = sign * magnitude
        # 1 - u lies in (0, 1], which keeps both tails finite.
        normal_tail = -torch.special.ndtri((1 - u[3]) * lower_tail)
        rayleigh_tail = torch.sqrt(a.square() - 2 * torch.log(1 - u[3]))
        t = torch.where(part == 0, inner, torch.where(part == 1, normal_tail, rayleigh_tail))

        radius = (self.std * (a + t)).clamp(min=0.0)
        angle = 2 * math.pi * u[4]
        return radius.unsqueeze(-1) * torch.stack([angle.cos(), angle.sin()], dim=-1)


#: The package's one target registry: name -> class. Configs, the CLI (``--target``) and
#: `get_target` read it; a target added here is known everywhere.
TARGETS: dict[str, type[MixtureTarget]] = {
    "two_modes": TwoModes,
    "four_modes": FourModes,
    "eight_gaussians": EightGaussians,
    "rings": Rings,
    "high_dim": HighDimMixture,
    "gaussian_mixture": GaussianMixture,
}


def get_target(name: str, **kwargs) -> MixtureTarget:
    """Builds a target by name.

    Names are matched ignoring case, ``_`` and ``-``, so ``"eight_gaussians"``,
    ``"eightgaussians"`` and ``"Eight-Gaussians"`` are the same target.

    Args:
        name: One of ``"two_modes"``, ``"four_modes"``, ``"eight_gaussians"``, ``"rings"``,
            ``"high_dim"``, ``"gaussian_mixture"``.
        **kwargs: Passed to the target's constructor (e.g. ``dim`` for ``"high_dim"``).

    Raises:
        ValueError: If the name is unknown; the message lists the known names.

    Example:
        >>> get_target("high_dim", dim=8).dim
        8
    """
    key = str(name).lower().replace("-", "").replace("_", "")
    for known, cls in TARGETS.items():
        if known.replace("_", "") == key:
            return cls(**kwargs)
    raise ValueError(f"unknown target {name!r}; known targets: {', '.join(TARGETS)}")

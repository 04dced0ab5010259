"""Gaussian mixtures: the general one and the named targets of the experiments (two modes 2:1,
four on a line, eight Gaussians on a circle, the paper's high-dimensional four-mode mixture)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from flowmc_ebm._checks import check_positive_int
from flowmc_ebm.targets.base import _LOG_2PI, MixtureTarget, _as_float64

__all__ = ["EightGaussians", "FourModes", "GaussianMixture", "HighDimMixture", "TwoModes"]


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

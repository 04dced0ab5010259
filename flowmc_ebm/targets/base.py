"""The base of every target: a finite mixture with normalized components, exact ``log_prob``,
labelled samples, ``assign`` and the known ``weights``; parameters kept in float64 and copied
once per (device, dtype)."""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from flowmc_ebm._checks import check_positive_int

__all__ = ["MixtureTarget"]

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

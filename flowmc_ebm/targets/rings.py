"""Concentric rings: a mixture whose components depend on ``|x|`` only, with closed-form
normalizers and exact sampling."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from flowmc_ebm.targets.base import MixtureTarget, _as_float64

__all__ = ["Rings"]


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

"""Rational-quadratic spline coupling at close to the cost of an affine coupling.

zuko's ``NSF(passes=2)`` builds a :class:`~zuko.transforms.MonotonicRQSTransform` for *every*
feature on every call (half of them only to apply a spline whose parameters do not depend on
the input), looks bins up through a broadcast ``gather`` per quantity, and computes sampling
and the log-density of the samples in two passes. At ``d = 32`` that costs ~12x RealNVP. Here:

- the conditioner outputs parameters only for the transformed half (as RealNVP does);
- the spline is evaluated in normalized coordinates ``[0, 1]``, so the bin search compares the
  input with the cumulative widths directly, and one ``gather`` of a stacked table fetches all
  six bin quantities (width, height, cumulative width and height, the two knot slopes);
- the inverse is analytic (the root of one quadratic per element) and, for
  ``rsample_and_log_prob``, returns its log-determinant from the same pass.

The spline is zuko's, raw parameter for raw parameter: the same soft bound on the raw widths,
heights and slopes (``slope`` is the minimal slope), the same knots on ``[-B, B]``, boundary
slopes fixed to 1 and the identity outside ``[-B, B]`` (so the map is C1 at ``±B``: the tails
are the linear extension of slope 1), and all-zero raw parameters give the identity. The
conditioner's output has zuko's layout (per transformed feature ``K`` widths, ``K`` heights,
``K - 1`` slopes), so weights carry over to ``zuko.flows.GeneralCouplingTransform`` with
``univariate=MonotonicRQSTransform``.

Example:
    >>> flow = SplineCouplingFlow(4, transforms=2)
    >>> x, log_q = flow().rsample_and_log_prob((3,))
    >>> x.shape, log_q.shape
    (torch.Size([3, 4]), torch.Size([3]))
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import zuko
from torch import BoolTensor, Tensor, nn
from torch.distributions import Transform, constraints

__all__ = [
    "SplineCoupling",
    "SplineCouplingFlow",
    "SplineCouplingTransform",
    "rq_spline",
    "rq_spline_inverse",
]


def _triangular(bins: int, like: Tensor, upper: bool) -> Tensor:
    """Ones on and above (``upper``) or below the diagonal, ``K x K``: ``e @ U`` is
    ``cumsum(e)`` and ``g @ L`` the reversed cumulative sum, several times faster on CPU than
    ``cumsum`` over a last dimension of 8."""
    ones = torch.ones(bins, bins, dtype=like.dtype, device=like.device)
    return ones.triu() if upper else ones.tril()


class _SplineBins(torch.autograd.Function):
    """Bin lookup of a batch of splines, with a hand-written backward.

    Autograd through softmax, cumulative sum and gather would allocate and traverse a dozen
    ``(..., 2K)`` tensors per call; the bin quantities below need three forward and three
    backward, which is what makes the spline cost close to an affine coupling's.
    """

    @staticmethod
    def forward(ctx, phi: Tensor, t: Tensor, row: int, limit: float) -> tuple[Tensor, ...]:
        bins = (phi.shape[-1] + 1) // 3
        raw = phi[..., : 2 * bins]
        e = raw.abs().mul_(2 / limit).add_(1)
        torch.div(raw, e, out=e)
        e = e.exp_().unflatten(-1, (2, bins))  # unnormalized softmax of widths and heights
        c = torch.matmul(e, _triangular(bins, phi, upper=True))
        totals = c[..., bins - 1]
        k = ((t * totals[..., row])[..., None] > c[..., row, : bins - 1]).sum(-1, keepdim=True)
        # Indices into the flattened [widths | heights] rows, both built from the one k.
        k_wh = torch.cat([k, k + bins], dim=-1)
        e_k = e.flatten(-2).gather(-1, k_wh)
        c_k = c.flatten(-2).gather(-1, k_wh)
        # Slopes at the bin's two knots: raw slopes d_1..d_{K-1} sit at slots 1..K-1 of
        # phi[..., 2K-1:]; the boundary knots (slot 0 and slot K) have slope 1, raw value 0.
        slots = torch.cat([k, k + 1], dim=-1)
        inner = (slots > 0) & (slots < bins)
        slots = slots.clamp(max=bins - 1)
        raw_d = phi[..., 2 * bins - 1 :].gather(-1, slots) * inner
        d = (raw_d / (raw_d.abs() * (1 / limit) + 1)).exp()
        ctx.save_for_backward(phi, e, k_wh, slots, inner, raw_d, d)
        ctx.limit = limit
        ctx.mark_non_differentiable(k)
        return e_k, c_k, totals, d, k

    @staticmethod
    def backward(ctx, g_e: Tensor, g_c: Tensor, g_t: Tensor, g_d: Tensor, _: Tensor):
        phi, e, k_wh, slots, inner, raw_d, d = ctx.saved_tensors
        limit = ctx.limit
        bins = e.shape[-1]
        grad = torch.zeros(*e.shape, dtype=e.dtype, device=e.device)
        # d c_k / d e_j = [j <= k]: scatter at k, then a reversed cumulative sum.
        grad.flatten(-2).scatter_(-1, k_wh, g_c)
        grad = torch.matmul(grad, _triangular(bins, e, upper=False))
        grad.flatten(-2).scatter_add_(-1, k_wh, g_e)
        grad.add_(g_t[..., None]).mul_(e)
        # d/du exp(u / (1 + a|u|)) = exp(...) / (1 + a|u|)^2.
        raw = phi[..., : 2 * bins]
        denom = raw.abs().mul_(2 / limit).add_(1).square_().unflatten(-1, (2, bins))
        grad_phi = torch.zeros_like(phi)
        grad_phi[..., : 2 * bins] = grad.div_(denom).flatten(-2)
        denom_d = raw_d.abs() * (1 / limit) + 1
        grad_phi[..., 2 * bins - 1 :].scatter_add_(-1, slots, g_d * d / (denom_d * denom_d) * inner)
        return grad_phi, None, None, None


def _spline_bins(
    phi: Tensor, t: Tensor, row: int, slope: float
) -> tuple[Tensor, ...]:
    """The bin of each normalized coordinate ``t`` and that bin's quantities.

    ``phi``: raw parameters ``(..., 3K - 1)``; ``t``: ``(...)`` in ``[0, 1]``, an input
    (``row = 0``, searched among the widths) or an output (``row = 1``, among the heights).
    The widths and heights are the softmax of zuko's soft-bounded raw values; the softmax is
    left unnormalized (``exp`` only: the soft bound keeps its arguments below
    ``log(1/slope) / 2``, so no max needs subtracting) and only the gathered values are
    divided by the totals. Returns ``t`` scaled by its row's total, the exp width and height
    of the bin, their cumulative sums at its right edge, the slopes at its two knots, and the
    two totals; all shaped like ``t``.
    """
    bins = (phi.shape[-1] + 1) // 3
    if phi.shape[-1] != 3 * bins - 1 or bins < 2:
        raise ValueError(
            "spline parameters need 3 * bins - 1 entries (bins >= 2) in their last dimension; "
            f"received shape {tuple(phi.shape)}"
        )
    e_k, c_k, totals, d, _ = _SplineBins.apply(phi, t, row, -math.log(slope))
    e_w, e_h = e_k.unbind(-1)
    c_w, c_h = c_k.unbind(-1)
    t_w, t_h = totals.unbind(-1)
    d0, d1 = d.unbind(-1)
    scaled = t * (t_h if row else t_w)
    return scaled, e_w, e_h, c_w, c_h, d0, d1, t_w, t_h


def _log_slope(xi: Tensor, s: Tensor, d0: Tensor, d1: Tensor) -> tuple[Tensor, Tensor]:
    """Denominator of the bin's rational quadratic and the log of its derivative at ``xi``."""
    xi1 = xi * (1 - xi)
    denom = s + (d0 + d1 - 2 * s) * xi1
    numer = d1 * xi * xi + 2 * s * xi1 + d0 * (1 - xi) * (1 - xi)
    return denom, torch.log(s * s * numer / (denom * denom))


def rq_spline(x: Tensor, phi: Tensor, bound: float = 5.0, slope: float = 1e-3) -> tuple[Tensor, Tensor]:
    """Monotonic rational-quadratic spline ``y = f(x)`` and ``log f'(x)``, element by element.

    Equal to ``zuko.transforms.MonotonicRQSTransform(widths, heights, derivatives, bound,
    slope).call_and_ladj(x)`` with ``phi = cat([widths, heights, derivatives], -1)``.

    Args:
        x: Inputs ``(...)``.
        phi: Raw parameters ``(..., 3K - 1)`` (``K`` widths, ``K`` heights, ``K - 1`` slopes).
        bound: The spline acts on ``[-bound, bound]`` and is the identity outside.
        slope: Minimal slope of the spline.

    Returns:
        ``(y, log_abs_det)``, both shaped like ``x``.

    Example:
        >>> y, ladj = rq_spline(torch.tensor([0.3, 7.0]), torch.zeros(2, 23))
        >>> y, ladj
        (tensor([0.3000, 7.0000]), tensor([0., 0.]))
    """
    inside = x.abs() < bound
    # Clamped so that the branch torch.where discards stays finite (its gradient is 0 * value).
    u = (x * (0.5 / bound) + 0.5).clamp(0.0, 1.0)
    scaled, e_w, e_h, c_w, c_h, d0, d1, t_w, t_h = _spline_bins(phi, u, 0, slope)
    xi = ((scaled - c_w) / e_w + 1).clamp(0.0, 1.0)
    s = e_h * t_w / (e_w * t_h)
    denom, log_slope = _log_slope(xi, s, d0, d1)
    v = (c_h - e_h + e_h * (s * xi * xi + d0 * xi * (1 - xi)) / denom) / t_h
    y = torch.where(inside, v * (2 * bound) - bound, x)
    return y, torch.where(inside, log_slope, 0.0)


def rq_spline_inverse(
    y: Tensor, phi: Tensor, bound: float = 5.0, slope: float = 1e-3
) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`rq_spline`, ``x = f^{-1}(y)``, and ``log |d f^{-1}/dy| = -log f'(x)``.

    Analytic: inside a bin the spline is a ratio of quadratics, so ``x`` is the root of one
    quadratic, taken in its cancellation-free form (Durkan et al., 2019, eq. 6-8).

    Args:
        y: Outputs ``(...)``.
        phi: Raw parameters ``(..., 3K - 1)``, as for :func:`rq_spline`.
        bound: Spline domain bound ``B``.
        slope: Minimal slope.

    Returns:
        ``(x, log_abs_det_of_the_inverse)``, both shaped like ``y``.

    Example:
        >>> phi = torch.randn(3, 23)
        >>> y, _ = rq_spline(torch.tensor([-1.0, 0.5, 2.0]), phi)
        >>> rq_spline_inverse(y, phi)[0]
        tensor([-1.0000,  0.5000,  2.0000])
    """
    inside = y.abs() < bound
    v = (y * (0.5 / bound) + 0.5).clamp(0.0, 1.0)
    scaled, e_w, e_h, c_w, c_h, d0, d1, t_w, t_h = _spline_bins(phi, v, 1, slope)
    s = e_h * t_w / (e_w * t_h)
    # Position in the bin as a fraction of its height, in [0, 1].
    eta = ((scaled - c_h) / e_h + 1).clamp(0.0, 1.0)
    c = d0 + d1 - 2 * s
    a = (s - d0) + eta * c
    b = d0 - eta * c
    disc = (b * b + 4 * a * s * eta).clamp(min=0.0)
    xi = (2 * s * eta / (b + disc.sqrt())).clamp(0.0, 1.0)
    u = (c_w - e_w + xi * e_w) / t_w
    _, log_slope = _log_slope(xi, s, d0, d1)
    x = torch.where(inside, u * (2 * bound) - bound, y)
    return x, torch.where(inside, -log_slope, 0.0)


class SplineCoupling(Transform):
    """Coupling transform ``y_a = x_a``, ``y_b = f(x_b | x_a)`` with a rational-quadratic ``f``.

    A ``torch.distributions.Transform`` with zuko's ``call_and_ladj``; its inverse also has a
    one-pass ``call_and_ladj``, which zuko's ``rsample_and_log_prob`` uses.

    Args:
        meta: Maps ``x_a`` ``(..., D_a)`` to raw parameters ``(..., D_b * (3K - 1))``.
        mask: Boolean ``(D,)``; ``True`` marks the constant part ``x_a`` (zuko's convention).
        bins: Number of bins ``K``.
        bound: Spline domain bound ``B``.
        slope: Minimal slope.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(
        self,
        meta: Callable[[Tensor], Tensor],
        mask: BoolTensor,
        bins: int = 8,
        bound: float = 5.0,
        slope: float = 1e-3,
    ) -> None:
        super().__init__()
        self.meta = meta
        self.idx_a = mask.nonzero().squeeze(-1)
        self.idx_b = (~mask).nonzero().squeeze(-1)
        self.order = torch.argsort(torch.cat([self.idx_a, self.idx_b]))
        self.bins, self.bound, self.slope = bins, bound, slope

    def __repr__(self) -> str:
        return f"{type(self).__name__}(bins={self.bins}, bound={self.bound})"

    @property
    def inv(self) -> Transform:
        return _InverseSplineCoupling(self)

    def _params(self, x_a: Tensor) -> Tensor:
        return self.meta(x_a).unflatten(-1, (len(self.idx_b), 3 * self.bins - 1))

    def _apply(self, x: Tensor, spline: Callable) -> tuple[Tensor, Tensor]:
        if x.shape[-1] != len(self.order):
            raise ValueError(
                f"expected points with {len(self.order)} coordinates in the last dimension; "
                f"received shape {tuple(x.shape)}"
            )
        x_a = x[..., self.idx_a]
        y_b, ladj = spline(x[..., self.idx_b], self._params(x_a), self.bound, self.slope)
        y = torch.cat([x_a, y_b], dim=-1)[..., self.order]
        return y, ladj.sum(-1)

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._apply(x, rq_spline)

    def inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(x, log|det dx/dy|)`` in one pass."""
        return self._apply(y, rq_spline_inverse)

    def _call(self, x: Tensor) -> Tensor:
        return self.call_and_ladj(x)[0]

    def _inverse(self, y: Tensor) -> Tensor:
        return self.inverse_and_ladj(y)[0]

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        return self.call_and_ladj(x)[1]


class _InverseSplineCoupling(Transform):
    """The inverse of a :class:`SplineCoupling`, with a one-pass ``call_and_ladj``."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, forward: SplineCoupling) -> None:
        super().__init__()
        self.forward = forward

    @property
    def inv(self) -> Transform:
        return self.forward

    def _call(self, y: Tensor) -> Tensor:
        return self.forward.inverse_and_ladj(y)[0]

    def _inverse(self, x: Tensor) -> Tensor:
        return self.forward.call_and_ladj(x)[0]

    def log_abs_det_jacobian(self, y: Tensor, x: Tensor) -> Tensor:
        return -self.forward.call_and_ladj(x)[1]

    def call_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self.forward.inverse_and_ladj(y)


class SplineCouplingTransform(zuko.lazy.LazyTransform):
    """Lazy rational-quadratic spline coupling transform (a zuko ``LazyTransform``).

    Args:
        features: Number of features ``D``.
        context: Number of context features.
        mask: Boolean ``(D,)``, ``True`` for the features that condition the others; default
            ``arange(D) % 2 == 1`` (zuko's). Ignored for ``D = 1``.
        bins: Number of bins ``K``.
        bound: Spline domain bound ``B``; the identity outside ``[-B, B]``.
        slope: Minimal slope of the spline.
        **kwargs: Passed to :class:`zuko.nn.MLP` (``hidden_features``, ``activation``, ...).

    Example:
        >>> t = SplineCouplingTransform(3)
        >>> x = torch.randn(5, 3)
        >>> torch.allclose(t().inv(t()(x)), x, atol=1e-5)
        True
    """

    def __init__(
        self,
        features: int,
        context: int = 0,
        mask: BoolTensor | None = None,
        bins: int = 8,
        bound: float = 5.0,
        slope: float = 1e-3,
        **kwargs,
    ) -> None:
        super().__init__()
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
            raise ValueError(f"bins must be an int >= 2; received {bins!r}")
        if not bound > 0:
            raise ValueError(f"bound must be positive; received {bound!r}")
        if not 1e-8 <= slope < 1:
            # Below 1e-8, exp of the soft-bounded raw parameters could overflow in float32.
            raise ValueError(f"slope must be in [1e-8, 1); received {slope!r}")
        self.bins, self.bound, self.slope = bins, float(bound), float(slope)
        self.shapes = [(bins,), (bins,), (bins - 1,)]
        self.total = 3 * bins - 1
        if features == 1:
            mask = torch.zeros(1, dtype=bool)
        elif mask is None:
            mask = torch.arange(features) % 2 == 1
        else:
            mask = torch.as_tensor(mask, dtype=bool)
            if mask.shape != (features,) or mask.all() or not mask.any():
                raise ValueError(
                    f"mask must be a boolean vector of {features} entries with both values; "
                    f"received {mask.tolist()}"
                )
        self.register_buffer("mask", mask)
        n_a, n_b = int(mask.sum()), int((~mask).sum())
        if n_a + context == 0:
            # zuko's convention for free univariate parameters (make_flow zeroes ``phi``).
            self.phi = nn.ParameterList([nn.Parameter(torch.randn(n_b * self.total))])
        else:
            self.hyper = zuko.nn.MLP(n_a + context, n_b * self.total, **kwargs)

    def extra_repr(self) -> str:
        mask = self.mask.int().tolist()
        if len(mask) > 10:
            mask = str(mask[:5] + [...] + mask[-5:]).replace("Ellipsis", "...")
        return f"(bins): {self.bins}, (bound): {self.bound}\n(mask): {mask}"

    def _meta(self, c: Tensor | None, x_a: Tensor) -> Tensor:
        if not hasattr(self, "hyper"):
            return self.phi[0].expand(*x_a.shape[:-1], -1)
        if c is not None:
            x_a = torch.cat(zuko.utils.broadcast(x_a, c, ignore=1), dim=-1)
        return self.hyper(x_a)

    def forward(self, c: Tensor | None = None) -> Transform:
        return SplineCoupling(lambda x_a: self._meta(c, x_a), self.mask, self.bins, self.bound,
                              self.slope)


class SplineCouplingFlow(zuko.flows.Flow):
    """Rational-quadratic spline coupling flow: ``transforms`` couplings with alternating masks
    (zuko's RealNVP layout) on a standard Gaussian base.

    Args:
        features: Number of features ``D``.
        context: Number of context features.
        transforms: Number of coupling transformations.
        randmask: Random (instead of alternating) coupling masks.
        **kwargs: Passed to :class:`SplineCouplingTransform` (``bins``, ``bound``, ``slope``,
            ``hidden_features``, ``activation``).
    """

    def __init__(
        self,
        features: int,
        context: int = 0,
        transforms: int = 3,
        randmask: bool = False,
        **kwargs,
    ) -> None:
        layers = []
        for i in range(transforms):
            order = torch.randperm(features) if randmask else torch.arange(features)
            layers.append(
                SplineCouplingTransform(features, context, mask=order % 2 == i % 2, **kwargs)
            )
        base = zuko.lazy.UnconditionalDistribution(
            zuko.distributions.DiagNormal,
            loc=torch.zeros(features),
            scale=torch.ones(features),
            buffer=True,
        )
        super().__init__(layers, base)

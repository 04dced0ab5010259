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

The spline is zuko's, raw parameter for raw parameter (`zuko_layout`): the same soft bound on the raw widths,
heights and slopes (``slope`` is the minimal slope), the same knots on ``[-B, B]``, boundary
slopes fixed to 1 and the identity outside ``[-B, B]`` (so the map is C1 at ``±B``: the tails
are the linear extension of slope 1), and all-zero raw parameters give the identity. The
conditioner's output holds all raw widths and heights first, then all raw slopes, bin-major
(bin ``j`` of every transformed feature, then bin ``j + 1``: the bin search then runs over
contiguous rows); permuted by :func:`zuko_layout` (zuko's per-feature layout: ``K`` widths,
``K`` heights, ``K - 1`` slopes)
the weights carry over to ``zuko.flows.GeneralCouplingTransform`` with
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
from torch.autograd.function import once_differentiable
from torch.distributions import Transform, constraints

from flowmc_ebm._checks import check_positive_int

__all__ = [
    "SplineCoupling",
    "SplineCouplingFlow",
    "SplineCouplingTransform",
    "rq_coupling_spline",
    "rq_coupling_spline_inverse",
    "rq_spline",
    "rq_spline_inverse",
    "zuko_layout",
]


class _SplineBins(torch.autograd.Function):
    """Bin lookup of a batch of splines, with a hand-written backward.

    Bins lie on dimension ``-2`` and elements on ``-1`` (``raw_wh (..., 2K, h)``, ``raw_d
    (..., K - 1, h)``, ``t (..., h)``): every reduction over the bins (cumulative sum,
    comparison count) then runs over contiguous rows of ``h`` elements, which eager PyTorch
    vectorizes, instead of over an innermost dimension of 8. Autograd through softmax,
    cumulative sum and gather would allocate and traverse a dozen ``(..., 2K, h)`` tensors per
    call; here the forward makes two (the exp of the bounded raw widths and heights, and their
    cumulative sums) and the backward three. Everything after the lookup acts on one value per
    element.
    """

    @staticmethod
    def forward(ctx, raw_wh: Tensor, raw_d: Tensor, t: Tensor, row: int, limit: float):
        bins = raw_wh.shape[-2] // 2
        denom = raw_wh.abs().mul_(2 / limit).add_(1)
        # Unnormalized softmax of widths (first K) and heights (last K).
        e = torch.div(raw_wh, denom).exp_()
        rows = e.unflatten(-2, (2, bins))
        c = rows.cumsum(-2)
        totals = c[..., bins - 1, :]
        k = ((t * totals[..., row, :]).unsqueeze(-2) > c[..., row, : bins - 1, :]).sum(
            -2, keepdim=True)
        # One index for the bin in the flattened [widths | heights] rows.
        k_wh = torch.cat([k, k + bins], dim=-2)
        e_k = e.gather(-2, k_wh)
        c_k = c.flatten(-3, -2).gather(-2, k_wh)
        # Slopes at the bin's two knots: knot j in 1..K-1 has raw slope raw_d[j - 1]; the
        # boundary knots 0 and K have slope 1 (raw value 0).
        knots = torch.cat([k - 1, k], dim=-2)
        inner = (knots >= 0) & (knots < bins - 1)
        knots = knots.clamp(0, bins - 2)
        raw_k = raw_d.gather(-2, knots) * inner
        d = (raw_k / (raw_k.abs() * (1 / limit) + 1)).exp()
        ctx.save_for_backward(denom, e, k_wh, knots, inner, raw_k, d)
        ctx.limit = limit
        ctx.d_shape = raw_d.shape
        ctx.mark_non_differentiable(k)
        return e_k, c_k, totals, d, k

    @staticmethod
    @once_differentiable  # not differentiable again: a second derivative raises, never lies
    def backward(ctx, g_e: Tensor, g_c: Tensor, g_t: Tensor, g_d: Tensor, _: Tensor):
        denom, e, k_wh, knots, inner, raw_k, d = ctx.saved_tensors
        limit = ctx.limit
        bins = e.shape[-2] // 2
        # d c_k / d e_j = [j <= k], the same k for the widths' and the heights' row.
        below = torch.arange(bins, device=e.device)[:, None] <= k_wh[..., :1, :]
        grad = (below.unsqueeze(-3) * g_c.unsqueeze(-2)).flatten(-3, -2)
        grad.scatter_add_(-2, k_wh, g_e)
        grad.unflatten(-2, (2, bins)).add_(g_t.unsqueeze(-2))
        # d/du exp(u / (1 + a|u|)) = exp(...) / (1 + a|u|)^2.
        grad_wh = grad.mul_(e).div_(denom).div_(denom)
        denom_d = raw_k.abs() * (1 / limit) + 1
        grad_d = torch.zeros(ctx.d_shape, dtype=d.dtype, device=d.device)
        grad_d.scatter_add_(-2, knots, g_d * d / (denom_d * denom_d) * inner)
        return grad_wh, grad_d, None, None, None


def _spline_bins(
    raw_wh: Tensor, raw_d: Tensor, t: Tensor, row: int, slope: float
) -> tuple[Tensor, ...]:
    """The bin of each normalized coordinate ``t`` and that bin's quantities.

    ``raw_wh``: raw widths and heights ``(..., 2K, h)``; ``raw_d``: raw inner-knot slopes
    ``(..., K - 1, h)``; ``t``: ``(..., h)`` in ``[0, 1]``, an input (``row = 0``, searched
    among the widths) or an output (``row = 1``, among the heights). The widths and heights
    are the softmax of zuko's soft-bounded raw values; the softmax is left unnormalized (``exp``
    only: the soft bound keeps its arguments below ``log(1/slope) / 2``, so no max needs
    subtracting) and only the gathered values are divided by the totals. Returns ``t`` scaled
    by its row's total, the exp width and height of the bin, their cumulative sums at its
    right edge, the slopes at its two knots, and the two totals; all shaped like ``t``.
    """
    bins = raw_wh.shape[-2] // 2
    if (raw_wh.shape[-2] != 2 * bins or raw_d.shape[-2] != bins - 1 or bins < 2
            or raw_wh.shape[-1] != t.shape[-1] or raw_d.shape[-1] != t.shape[-1]):
        raise ValueError(
            f"spline parameters need 2K raw widths and heights and K - 1 raw slopes (K >= 2) "
            f"on dimension -2 for the {t.shape[-1]} elements on dimension -1; "
            f"received shapes {tuple(raw_wh.shape)} and {tuple(raw_d.shape)}"
        )
    e_k, c_k, totals, d, _ = _SplineBins.apply(raw_wh, raw_d, t, row, -math.log(slope))
    e_w, e_h = e_k.unbind(-2)
    c_w, c_h = c_k.unbind(-2)
    t_w, t_h = totals.unbind(-2)
    d0, d1 = d.unbind(-2)
    scaled = t * (t_h if row else t_w)
    return scaled, e_w, e_h, c_w, c_h, d0, d1, t_w, t_h


def _split(phi: Tensor | tuple[Tensor, Tensor], v: Tensor) -> tuple[Tensor, Tensor, Tensor, bool]:
    """``(raw_wh, raw_d, v, squeeze)`` with the bins on dimension ``-2``: zuko's per-element
    layout ``phi (..., 3K - 1)`` and ``v (...)`` get a trailing element dimension of 1
    (``squeeze``: remove it from the results); a pair is taken as it is."""
    if isinstance(phi, tuple):
        return phi[0], phi[1], v, False
    bins = (phi.shape[-1] + 1) // 3
    if phi.shape[-1] != 3 * bins - 1 or bins < 2:
        raise ValueError(
            "spline parameters need 3 * bins - 1 entries (bins >= 2) in their last dimension; "
            f"received shape {tuple(phi.shape)}"
        )
    return phi[..., : 2 * bins, None], phi[..., 2 * bins :, None], v[..., None], True


def _log_slope(xi: Tensor, s: Tensor, d0: Tensor, d1: Tensor) -> tuple[Tensor, Tensor]:
    """Denominator of the bin's rational quadratic and the log of its derivative at ``xi``."""
    xi1 = xi * (1 - xi)
    denom = s + (d0 + d1 - 2 * s) * xi1
    numer = d1 * xi * xi + 2 * s * xi1 + d0 * (1 - xi) * (1 - xi)
    return denom, torch.log(s * s * numer / (denom * denom))


def rq_spline(
    x: Tensor, phi: Tensor | tuple[Tensor, Tensor], bound: float = 5.0, slope: float = 1e-3
) -> tuple[Tensor, Tensor]:
    """Monotonic rational-quadratic spline ``y = f(x)`` and ``log f'(x)``, element by element.

    Equal to ``zuko.transforms.MonotonicRQSTransform(widths, heights, derivatives, bound,
    slope).call_and_ladj(x)`` with ``phi = cat([widths, heights, derivatives], -1)``.

    Args:
        x: Inputs ``(...)``.
        phi: Raw parameters ``(..., 3K - 1)`` (``K`` widths, ``K`` heights, ``K - 1`` slopes),
            or, for ``x`` of shape ``(..., h)``, the bin-major pair ``(raw_wh (..., 2K, h),
            raw_d (..., K - 1, h))`` (faster: what the coupling passes).
        bound: The spline acts on ``[-bound, bound]`` and is the identity outside.
        slope: Minimal slope of the spline.

    Returns:
        ``(y, log_abs_det)``, both shaped like ``x``.

    Example:
        >>> y, ladj = rq_spline(torch.tensor([0.3, 7.0]), torch.zeros(2, 23))
        >>> y, ladj
        (tensor([0.3000, 7.0000]), tensor([0., 0.]))
    """
    raw_wh, raw_d, x, squeeze = _split(phi, x)
    inside = x.abs() < bound
    # Clamped so that the branch torch.where discards stays finite (its gradient is 0 * value).
    u = (x * (0.5 / bound) + 0.5).clamp(0.0, 1.0)
    scaled, e_w, e_h, c_w, c_h, d0, d1, t_w, t_h = _spline_bins(raw_wh, raw_d, u, 0, slope)
    xi = ((scaled - c_w) / e_w + 1).clamp(0.0, 1.0)
    s = e_h * t_w / (e_w * t_h)
    denom, log_slope = _log_slope(xi, s, d0, d1)
    v = (c_h - e_h + e_h * (s * xi * xi + d0 * xi * (1 - xi)) / denom) / t_h
    y = torch.where(inside, v * (2 * bound) - bound, x)
    ladj = torch.where(inside, log_slope, 0.0)
    return (y.squeeze(-1), ladj.squeeze(-1)) if squeeze else (y, ladj)


def rq_spline_inverse(
    y: Tensor, phi: Tensor | tuple[Tensor, Tensor], bound: float = 5.0, slope: float = 1e-3
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
    raw_wh, raw_d, y, squeeze = _split(phi, y)
    inside = y.abs() < bound
    v = (y * (0.5 / bound) + 0.5).clamp(0.0, 1.0)
    scaled, e_w, e_h, c_w, c_h, d0, d1, t_w, t_h = _spline_bins(raw_wh, raw_d, v, 1, slope)
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
    ladj = torch.where(inside, -log_slope, 0.0)
    return (x.squeeze(-1), ladj.squeeze(-1)) if squeeze else (x, ladj)


def _bins_of(phi: Tensor, t: Tensor, bins: int, slope: float, row: int, unrolled: bool) -> tuple:
    """The bin of each normalized coordinate ``t (..., h)`` among the widths (``row = 0``) or
    the heights (``row = 1``) of the bin-major parameters ``phi (..., (3K - 1) h)``, and that
    bin's quantities (no autograd: the fused spline's shared first half). ``unrolled``: the
    cumulative sum as ``K - 1`` additions, which ``torch.compile`` fuses with the rest."""
    h = t.shape[-1]
    limit = -math.log(slope)
    wh = phi[..., : 2 * bins * h].unflatten(-1, (2, bins, h))
    raw_d = phi[..., 2 * bins * h :].unflatten(-1, (bins - 1, h))
    den = wh.abs().mul_(2 / limit).add_(1)
    e = torch.div(wh, den).exp_()
    if unrolled:
        sums = [e[..., 0, :]]
        for j in range(1, bins):
            sums.append(sums[-1] + e[..., j, :])
        c = torch.stack(sums, dim=-2)
    else:
        c = e.cumsum(-2)
    t_w, t_h = c[..., 0, bins - 1, :], c[..., 1, bins - 1, :]
    scaled = t * (t_h if row else t_w)
    k = (scaled.unsqueeze(-2) > c[..., row, : bins - 1, :]).sum(-2, keepdim=True)
    kk = k.unsqueeze(-3).expand(*k.shape[:-2], 2, 1, h)
    e_k, c_k = e.gather(-2, kk), c.gather(-2, kk)
    e_w, e_h = e_k[..., 0, 0, :], e_k[..., 1, 0, :]
    l_w, l_h = c_k[..., 0, 0, :] - e_w, c_k[..., 1, 0, :] - e_h
    # Knot j in 1..K-1 has raw slope raw_d[j - 1]; the boundary knots have slope 1 (raw 0).
    knots = torch.cat([k - 1, k], dim=-2)
    inner = (knots >= 0) & (knots < bins - 1)
    knots = knots.clamp(0, bins - 2)
    raw_k = raw_d.gather(-2, knots) * inner
    den_d = raw_k.abs().mul_(1 / limit).add_(1)
    d = torch.div(raw_k, den_d).exp_()
    return e, den, k, kk, knots, inner, d, den_d, scaled, e_w, e_h, l_w, l_h, t_w, t_h


def _forward_math(phi: Tensor, x: Tensor, bins: int, bound: float, slope: float,
                  need_grad: bool, unrolled: bool) -> tuple:
    """``(y, ladj summed over h)`` and, if ``need_grad``, what the backward needs."""
    inside = x.abs() < bound
    u = (x * (0.5 / bound) + 0.5).clamp(0.0, 1.0)
    (e, den, k, kk, knots, inner, d, den_d, scaled, e_w, e_h, l_w, l_h, t_w,
     t_h) = _bins_of(phi, u, bins, slope, 0, unrolled)
    d0, d1 = d[..., 0, :], d[..., 1, :]
    xi = ((scaled - l_w) / e_w).clamp(0.0, 1.0)
    s = e_h * t_w / (e_w * t_h)
    q = xi * (1 - xi)
    denom = s + (d0 + d1 - 2 * s) * q
    p = s * xi * xi + d0 * q
    r = p / denom
    numer = d1 * xi * xi + 2 * s * q + d0 * (1 - xi) * (1 - xi)
    v = (l_h + e_h * r) / t_h
    y = torch.where(inside, v * (2 * bound) - bound, x)
    ladj = torch.where(inside, torch.log(s * s * numer / (denom * denom)), 0.0).sum(-1)
    if not need_grad:
        return y, ladj
    # d e / d raw = e / den^2 (zuko's soft bound); e itself is no longer needed.
    grad_e = e.div_(den).div_(den)
    grad_d = d / (den_d * den_d) * inner
    return (y, ladj, grad_e, k, kk, knots, grad_d, inside, xi, s, q, denom, p, r, numer, d0, d1,
            e_w, e_h, l_w, l_h, t_w, t_h)


def _backward_math(g_y: Tensor, g_ladj: Tensor, grad_e: Tensor, k: Tensor, kk: Tensor,
                   knots: Tensor, grad_d: Tensor, inside: Tensor, xi: Tensor, s: Tensor,
                   q: Tensor, denom: Tensor, p: Tensor, r: Tensor, numer: Tensor, d0: Tensor,
                   d1: Tensor, e_w: Tensor, e_h: Tensor, l_w: Tensor, l_h: Tensor, t_w: Tensor,
                   t_h: Tensor, bins: int, bound: float, unrolled: bool) -> tuple[Tensor, Tensor]:
    """Gradients of :func:`_forward_math` in ``phi`` (one buffer) and ``x``."""
    g_v = torch.where(inside, g_y, 0.0) * (2 * bound)
    g_l = torch.where(inside, g_ladj.unsqueeze(-1), 0.0)
    w, ht = e_w / t_w, e_h / t_h  # the bin's normalized width and height
    denom2 = denom * denom
    g_r = g_v * ht
    one_x, one_2x, one_2q = 1 - xi, 1 - 2 * xi, 1 - 2 * q
    # Partial derivatives of v = Y + H r(xi, s, d0, d1) and of log f' = log(s^2 N / D^2).
    g_xi = (g_r * (s * numer / denom2)
            + g_l * (2 * (d1 * xi + s * one_2x - d0 * one_x) / numer
                     - 2 * (d0 + d1 - 2 * s) * one_2x / denom))
    g_s = (g_r * ((xi * xi * denom - p * one_2q) / denom2)
           + g_l * (2 / s + 2 * q / numer - 2 * one_2q / denom))
    g_d0 = g_r * (q * (denom - p) / denom2) + g_l * (one_x * one_x / numer - 2 * q / denom)
    g_d1 = g_l * (xi * xi / numer - 2 * q / denom) - g_r * (p * q / denom2)
    # xi = (u - X) / W and s = H / W, X and Y the bin's left edges.
    g_x = torch.where(inside, g_xi / (w * (2 * bound)), g_y)
    g_w = -(g_xi * xi + g_s * s) / w
    g_left_w = -g_xi / w
    g_ht = g_v * r + g_s / w
    # Softmax: d (W, X) / d e_i = ([i == k] - W, [i < k] - X) / T_w (heights alike).
    left = torch.stack([g_left_w / t_w, g_v / t_h], -2).unsqueeze(-2)
    at_k = torch.stack([g_w / t_w, g_ht / t_h], -2).unsqueeze(-2)
    common = torch.stack([(g_left_w * l_w + g_w * e_w) / (t_w * t_w),
                          (g_v * l_h + g_ht * e_h) / (t_h * t_h)], -2).unsqueeze(-2)
    g_knots = torch.stack([g_d0, g_d1], -2) * grad_d
    index = torch.arange(bins, device=k.device)[:, None]
    h = xi.shape[-1]
    if unrolled:  # functional, so that torch.compile fuses it into one loop
        g_wh = (torch.where((index < k).unsqueeze(-3), left - common, -common)
                + torch.where((index == k).unsqueeze(-3), at_k, 0.0)) * grad_e
        g_raw_d = (torch.where(index[:-1] == knots[..., :1, :], g_knots[..., :1, :], 0.0)
                   + torch.where(index[:-1] == knots[..., 1:, :], g_knots[..., 1:, :], 0.0))
        return torch.cat([g_wh.flatten(-3), g_raw_d.flatten(-2)], -1), g_x
    grad_phi = grad_e.new_empty(*grad_e.shape[:-3], (3 * bins - 1) * h)
    g_wh = grad_phi[..., : 2 * bins * h].unflatten(-1, (2, bins, h))
    torch.where((index < k).unsqueeze(-3), left - common, -common, out=g_wh)
    g_wh.scatter_add_(-2, kk, at_k).mul_(grad_e)
    g_raw_d = grad_phi[..., 2 * bins * h :].unflatten(-1, (bins - 1, h)).zero_()
    g_raw_d.scatter_add_(-2, knots, g_knots)
    return grad_phi, g_x


def _inverse_math(phi: Tensor, y: Tensor, bins: int, bound: float, slope: float,
                  unrolled: bool) -> tuple[Tensor, Tensor]:
    """:func:`rq_spline_inverse` of a coupling's ``phi``, ladj summed over ``h``."""
    inside = y.abs() < bound
    v = (y * (0.5 / bound) + 0.5).clamp(0.0, 1.0)
    (_, _, _, _, _, _, d, _, scaled, e_w, e_h, l_w, l_h, t_w,
     t_h) = _bins_of(phi, v, bins, slope, 1, unrolled)
    d0, d1 = d[..., 0, :], d[..., 1, :]
    s = e_h * t_w / (e_w * t_h)
    eta = ((scaled - l_h) / e_h).clamp(0.0, 1.0)
    c = d0 + d1 - 2 * s
    a = (s - d0) + eta * c
    b = d0 - eta * c
    disc = (b * b + 4 * a * s * eta).clamp(min=0.0)
    xi = (2 * s * eta / (b + disc.sqrt())).clamp(0.0, 1.0)
    u = (l_w + xi * e_w) / t_w
    _, log_slope = _log_slope(xi, s, d0, d1)
    x = torch.where(inside, u * (2 * bound) - bound, y)
    return x, -torch.where(inside, log_slope, 0.0).sum(-1)


_COMPILED: dict[str, Callable] = {}


def _math(name: str, compiled: bool) -> Callable:
    """The eager math function ``name`` or its ``torch.compile``d version (built once)."""
    function = {"forward": _forward_math, "backward": _backward_math,
                "inverse": _inverse_math}[name]
    if not compiled:
        return function
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile(function, dynamic=None)
    return _COMPILED[name]


class _RQSplineFused(torch.autograd.Function):
    """``y = f(x)`` and ``sum_h log f'(x)`` of ``h`` splines per point in one node, with an
    analytic backward.

    ``phi (..., (3K - 1) h)`` is a coupling's conditioner output as it comes (bin-major),
    ``x (..., h)``. The forward is :func:`rq_spline` (same formula); it saves the ``(..., h)``
    values of each element's bin map and one ``(..., 2, K, h)`` tensor (the derivative of the
    exp widths and heights in their raw values), and the backward writes the gradient of the
    whole ``phi`` into one buffer: a few ops on ``(..., 2K, h)`` tensors and ~60 on
    ``(..., h)`` ones, where autograd through the same forward traverses ~150 nodes and
    allocates a zero-filled gradient per slice. ``compiled``: both halves through
    ``torch.compile``. Under ``create_graph`` (a gradient that will be differentiated again)
    the backward differentiates zuko's spline instead, so second derivatives stay exact.
    """

    @staticmethod
    def forward(ctx, phi: Tensor, x: Tensor, bins: int, bound: float, slope: float,
                compiled: bool):
        need_grad = any(ctx.needs_input_grad[:2])
        out = _math("forward", compiled)(phi, x, bins, bound, slope, need_grad, compiled)
        ctx.bins, ctx.bound, ctx.slope, ctx.compiled = bins, bound, slope, compiled
        if need_grad:
            ctx.save_for_backward(phi, x, *out[2:])
        return out[0], out[1]

    @staticmethod
    def backward(ctx, g_y: Tensor, g_ladj: Tensor):
        phi, x, *saved = ctx.saved_tensors
        if torch.is_grad_enabled():
            return _reference_backward(ctx, phi, x, g_y, g_ladj)
        grad_phi, g_x = _math("backward", ctx.compiled)(g_y, g_ladj, *saved, ctx.bins,
                                                        ctx.bound, ctx.compiled)
        return grad_phi, g_x, None, None, None, None


def _reference_backward(ctx, phi: Tensor, x: Tensor, g_y: Tensor, g_ladj: Tensor) -> tuple:
    """Gradients of the fused spline, with a graph, by autograd through zuko's spline (plain
    differentiable ops, so that the gradient itself can be differentiated)."""
    bins, bound, slope = ctx.bins, ctx.bound, ctx.slope
    inputs = [t for t, need in zip((phi, x), ctx.needs_input_grad[:2], strict=True) if need]
    with torch.enable_grad():
        wh, raw_d = _pair(phi, x.shape[-1], bins)
        wh, raw_d = wh.transpose(-1, -2), raw_d.transpose(-1, -2)
        spline = zuko.transforms.MonotonicRQSTransform(
            wh[..., :bins], wh[..., bins:], raw_d, bound=bound, slope=slope)
        y, ladj = spline.call_and_ladj(x)
        grads = iter(torch.autograd.grad((y, ladj.sum(-1)), inputs, (g_y, g_ladj),
                                         create_graph=True))
    return (*(next(grads) if need else None for need in ctx.needs_input_grad[:2]), None, None,
            None, None)


def _pair(phi: Tensor, h: int, bins: int) -> tuple[Tensor, Tensor]:
    return (phi[..., : 2 * bins * h].unflatten(-1, (2 * bins, h)),
            phi[..., 2 * bins * h :].unflatten(-1, (bins - 1, h)))


def rq_coupling_spline(
    x: Tensor, phi: Tensor, bins: int = 8, bound: float = 5.0, slope: float = 1e-3,
    compiled: bool = False,
) -> tuple[Tensor, Tensor]:
    """``h`` splines per point from a coupling's bin-major parameters: ``(f(x), sum log f'(x))``.

    The fast path of :func:`rq_spline` (one autograd node with an analytic backward).

    Args:
        x: Inputs ``(..., h)``.
        phi: Raw parameters ``(..., (3K - 1) h)``: the ``2K`` rows of ``h`` raw widths and
            heights, then the ``K - 1`` rows of raw slopes (what :class:`SplineCoupling`'s
            conditioner outputs).
        bins: Number of bins ``K``.
        bound: Spline domain bound ``B``.
        slope: Minimal slope.
        compiled: Run the forward and backward through ``torch.compile`` (compiled at the
            first call of each shape: tens of seconds on a CPU; then several times faster).

    Returns:
        ``y (..., h)`` and the log-determinant summed over the ``h`` elements, ``(...)``.

    Example:
        >>> y, ladj = rq_coupling_spline(torch.tensor([[0.3, 7.0]]), torch.zeros(1, 46))
        >>> y, ladj
        (tensor([[0.3000, 7.0000]]), tensor([0.]))
    """
    _check_coupling_shapes(x, phi, bins)
    return _RQSplineFused.apply(phi, x, bins, float(bound), float(slope), bool(compiled))


def rq_coupling_spline_inverse(
    y: Tensor, phi: Tensor, bins: int = 8, bound: float = 5.0, slope: float = 1e-3,
    compiled: bool = False,
) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`rq_coupling_spline`: ``(f^{-1}(y), -sum log f'(f^{-1}(y)))``.

    Without a gradient to compute (sampling, a FlowMC proposal), one pass with no autograd
    bookkeeping (through ``torch.compile`` if ``compiled``); otherwise
    :func:`rq_spline_inverse`, which autograd differentiates.

    Example:
        >>> phi = torch.randn(3, 2 * 23)
        >>> y, _ = rq_coupling_spline(torch.tensor([[-1.0, 0.5]] * 3), phi)
        >>> rq_coupling_spline_inverse(y, phi)[0]
        tensor([[-1.0000,  0.5000],
                [-1.0000,  0.5000],
                [-1.0000,  0.5000]])
    """
    _check_coupling_shapes(y, phi, bins)
    if torch.is_grad_enabled() and (phi.requires_grad or y.requires_grad):
        x, ladj = rq_spline_inverse(y, _pair(phi, y.shape[-1], bins), bound, slope)
        return x, ladj.sum(-1)
    return _math("inverse", compiled)(phi, y, bins, float(bound), float(slope), bool(compiled))


def _check_coupling_shapes(x: Tensor, phi: Tensor, bins: int) -> None:
    if bins < 2 or phi.shape[-1] != (3 * bins - 1) * x.shape[-1] or phi.shape[:-1] != x.shape[:-1]:
        raise ValueError(
            f"a coupling's spline parameters need (3 * bins - 1) * h = {(3 * bins - 1)} * "
            f"{x.shape[-1]} entries for the {x.shape[-1]} elements of x, bins >= 2 and the same "
            f"leading shape; received phi {tuple(phi.shape)} for x {tuple(x.shape)}, bins {bins}"
        )


def zuko_layout(features: int, bins: int) -> Tensor:
    """Permutation ``p`` of a conditioner's outputs such that ``phi[..., p]`` is in zuko's
    layout (for each of ``features`` transformed features: ``K`` widths, ``K`` heights,
    ``K - 1`` slopes) when ``phi`` is in ours (all widths and heights, then all slopes).

    Example:
        >>> zuko_layout(2, 2).tolist()
        [0, 2, 4, 6, 8, 1, 3, 5, 7, 9]
    """
    wh = torch.arange(features * 2 * bins).reshape(2 * bins, features).T
    d = features * 2 * bins + torch.arange(features * (bins - 1)).reshape(bins - 1, features).T
    return torch.cat([wh, d], dim=-1).reshape(-1)


class SplineCoupling(Transform):
    """Coupling transform ``y_a = x_a``, ``y_b = f(x_b | x_a)`` with a rational-quadratic ``f``.

    A ``torch.distributions.Transform`` with zuko's ``call_and_ladj``; its inverse also has a
    one-pass ``call_and_ladj``, which zuko's ``rsample_and_log_prob`` uses.

    Args:
        meta: Maps ``x_a`` ``(..., D_a)`` to raw parameters ``(..., D_b * (3K - 1))``: first
            the raw widths and heights ``(2K, D_b)``, then the raw slopes ``(K - 1, D_b)``,
            both bin-major (:func:`zuko_layout` gives the permutation to zuko's layout).
        mask: Boolean ``(D,)``; ``True`` marks the constant part ``x_a`` (zuko's convention).
        bins: Number of bins ``K``.
        bound: Spline domain bound ``B``.
        slope: Minimal slope.
        compiled: Evaluate the splines through ``torch.compile`` (:func:`rq_coupling_spline`).
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
        compiled: bool = False,
    ) -> None:
        super().__init__()
        self.meta = meta
        self.compiled = compiled
        self.idx_a = mask.nonzero().squeeze(-1)
        self.idx_b = (~mask).nonzero().squeeze(-1)
        self.order = torch.argsort(torch.cat([self.idx_a, self.idx_b]))
        self.bins, self.bound, self.slope = bins, bound, slope
        # Alternating masks of an even D (the default layout): strided views and a stack
        # instead of index copies to split and merge.
        n = len(mask)
        self.parity = None
        if n % 2 == 0 and n > 1 and bool((mask[1:] != mask[:-1]).all()):
            self.parity = 0 if bool(mask[0]) else 1  # 0: x_a holds the even coordinates

    def __repr__(self) -> str:
        return f"{type(self).__name__}(bins={self.bins}, bound={self.bound})"

    @property
    def inv(self) -> Transform:
        return _InverseSplineCoupling(self)

    def _apply(self, x: Tensor, spline: Callable) -> tuple[Tensor, Tensor]:
        if x.shape[-1] != len(self.order):
            raise ValueError(
                f"expected points with {len(self.order)} coordinates in the last dimension; "
                f"received shape {tuple(x.shape)}"
            )
        if self.parity is None:
            x_a, x_b = x[..., self.idx_a], x[..., self.idx_b]
        else:
            x_a, x_b = x[..., self.parity :: 2], x[..., 1 - self.parity :: 2]
        phi = self.meta(x_a).expand(*x_b.shape[:-1], -1)
        y_b, ladj = spline(x_b, phi, self.bins, self.bound, self.slope, self.compiled)
        if self.parity is None:
            y = torch.cat([x_a, y_b], dim=-1)[..., self.order]
        else:
            pair = (x_a, y_b) if self.parity == 0 else (y_b, x_a)
            y = torch.stack(pair, dim=-1).flatten(-2)
        return y, ladj

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._apply(x, rq_coupling_spline)

    def inverse_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(x, log|det dx/dy|)`` in one pass."""
        return self._apply(y, rq_coupling_spline_inverse)

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
        compiled: Evaluate the splines through ``torch.compile``: several times faster on a
            CPU once compiled, at the price of tens of seconds of compilation at the first
            call of each input shape (and a C++ compiler); off by default.
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
        compiled: bool = False,
        **kwargs,
    ) -> None:
        super().__init__()
        check_positive_int(bins, "bins", minimum=2)
        if not bound > 0:
            raise ValueError(f"bound must be positive; received {bound!r}")
        if not 1e-8 <= slope < 1:
            # Below 1e-8, exp of the soft-bounded raw parameters could overflow in float32.
            raise ValueError(f"slope must be in [1e-8, 1); received {slope!r}")
        self.bins, self.bound, self.slope = bins, float(bound), float(slope)
        self.compiled = bool(compiled)
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
                              self.slope, self.compiled)


class SplineCouplingFlow(zuko.flows.Flow):
    """Rational-quadratic spline coupling flow: ``transforms`` couplings with alternating masks
    (zuko's RealNVP layout) on a standard Gaussian base.

    Args:
        features: Number of features ``D``.
        context: Number of context features.
        transforms: Number of coupling transformations.
        randmask: Random (instead of alternating) coupling masks.
        **kwargs: Passed to :class:`SplineCouplingTransform` (``bins``, ``bound``, ``slope``,
            ``compiled``, ``hidden_features``, ``activation``).
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

"""Score matching: fitting ``s(x) = −∇ₓE(x)`` to data without the normalizing constant.

Every objective here estimates, up to a constant that does not depend on the model, the Fisher
divergence ``½ E_data‖s(x) − ∇ log p_data(x)‖²``. By Hyvärinen's integration by parts it equals

    J(s) = E_data[ ½‖s(x)‖² + tr ∇ₓs(x) ] + const,

which needs neither ``p_data``'s score nor the model's normalizer: the reason EBFlow can train a
flow without any Jacobian determinant. The estimators differ in how they get the trace:

- :func:`exact_score_matching`: the trace exactly, one backward pass per dimension (low ``D`` only).
- :func:`sliced_score_matching` (Song et al. 2019): ``vᵀ∇(vᵀs)`` with Rademacher ``v``
  (``E vvᵀ = I``), in the variance-reduced form that keeps ``½‖s‖²`` exact; two backward passes.
- :func:`finite_difference_sliced_score_matching` (Pang et al. 2020): the directional derivatives
  of SSM replaced by central differences of step ``ξ``: forward passes only, bias ``O(ξ²)``.
- :func:`denoising_score_matching` (Vincent 2011): matches the score of the data convolved with
  ``N(0, σ²I)``, so it estimates ``J`` of the *noised* data (bias ``O(σ²)`` w.r.t. the clean one);
  returned with the known constant ``D / (2σ²)`` removed, so its values are comparable to the
  others'.

Each takes a batch and either ``energy=`` (``[n, D] -> [n]``; the score is ``−∇E`` by autograd) or
``score=`` (``[n, D] -> [n, D]``), and returns one loss value per data point, so callers can average
them, weight them, or take their standard error. :func:`score_matching_loss` picks one by name and
adds the optional ``λ · mean E(x)`` regularizer.

The data are data: gradients never flow back into ``x``, only into the model's parameters.

Example:
    >>> import torch
    >>> energy = lambda x: 0.5 * x.square().sum(-1)        # N(0, I): s(x) = −x, tr ∇s = −D
    >>> x = torch.zeros(4, 3)
    >>> exact_score_matching(x, energy=energy).tolist()
    [-3.0, -3.0, -3.0, -3.0]
    >>> score_matching_loss(energy, x, "ssm").loss.item()
    -3.0
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "OBJECTIVES",
    "ScoreMatchingTerms",
    "denoising_score_matching",
    "exact_score_matching",
    "finite_difference_sliced_score_matching",
    "rademacher",
    "score_from_energy",
    "score_matching_loss",
    "sliced_score_matching",
]

OBJECTIVES = ("exact", "ssm", "dsm", "fdssm")

EnergyFn = Callable[[Tensor], Tensor]
ScoreFn = Callable[[Tensor], Tensor]


def _check_batch(x: Tensor) -> None:
    if not torch.is_tensor(x):
        raise TypeError(f"x must be a torch.Tensor; received {type(x).__name__}")
    if x.ndim != 2 or not x.is_floating_point():
        raise ValueError(
            f"x must be a floating-point batch of shape (n, D); received {tuple(x.shape)} {x.dtype}"
        )


def _check_model(energy: EnergyFn | None, score: ScoreFn | None) -> None:
    if (energy is None) == (score is None):
        raise ValueError("pass exactly one of energy= (x -> E(x), [n]) or score= (x -> s(x), [n, D])")


def _input(x: Tensor) -> Tensor:
    # A fresh leaf: the data must not carry someone else's graph, and we need ∇ₓ.
    return x.detach().requires_grad_(True)


def _grad(output: Tensor, x: Tensor) -> Tensor:
    # create_graph so that the result stays differentiable in the model's parameters;
    # materialize_grads because a model that ignores x (E ≡ const) has a zero, not a missing, gradient.
    (gradient,) = torch.autograd.grad(output.sum(), x, create_graph=True, materialize_grads=True)
    return gradient


def score_from_energy(energy: EnergyFn, x: Tensor) -> Tensor:
    """The model score ``s(x) = −∇ₓE(x)``, differentiable in the energy's parameters.

    Args:
        energy: ``[n, D] -> [n]``.
        x: Points, shape ``[n, D]``; must require grad (it is the variable differentiated).

    Returns:
        ``s(x)``, shape ``[n, D]``.

    Example:
        >>> x = torch.ones(2, 3, requires_grad=True)
        >>> score_from_energy(lambda y: 0.5 * y.square().sum(-1), x)
        tensor([[-1., -1., -1.],
                [-1., -1., -1.]], grad_fn=<NegBackward0>)
    """
    value = energy(x)
    if value.shape != x.shape[:1]:
        raise ValueError(
            f"energy must map x of shape {tuple(x.shape)} to shape ({x.shape[0]},); "
            f"returned {tuple(value.shape)}"
        )
    return -_grad(value, x)


def _score(x: Tensor, energy: EnergyFn | None, score: ScoreFn | None) -> Tensor:
    if energy is not None:
        return score_from_energy(energy, x)
    value = score(x)
    if value.shape != x.shape:
        raise ValueError(f"score must map x of shape {tuple(x.shape)} to the same shape; "
                         f"returned {tuple(value.shape)}")
    return value


def rademacher(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Independent ±1 entries with probability ½ each (so ``E vvᵀ = I``).

    Args:
        shape: Output shape.
        like: Tensor whose dtype and device the result takes.
        generator: Source of randomness (on ``like``'s device).

    Returns:
        A tensor of ``±1``, shape ``shape``.

    Example:
        >>> rademacher((2, 3), torch.zeros(1)).abs()
        tensor([[1., 1., 1.],
                [1., 1., 1.]])
    """
    bits = torch.randint(0, 2, shape, generator=generator, device=like.device)
    return (2 * bits - 1).to(like.dtype)


def exact_score_matching(
    x: Tensor, *, energy: EnergyFn | None = None, score: ScoreFn | None = None
) -> Tensor:
    """Hyvärinen's objective with the trace of ``∇s`` computed exactly.

    Costs ``D`` backward passes; for low dimension and for checking the estimators.

    Args:
        x: Data, shape ``[n, D]``.
        energy: ``[n, D] -> [n]``; or
        score: ``[n, D] -> [n, D]`` (exactly one of the two).

    Returns:
        ``½‖s(x)‖² + tr ∇ₓs(x)`` per data point, shape ``[n]``.

    Example:
        >>> exact_score_matching(torch.zeros(2, 2), score=lambda x: -2 * x).tolist()
        [-4.0, -4.0]
    """
    _check_batch(x)
    _check_model(energy, score)
    x = _input(x)
    s = _score(x, energy, score)
    trace = sum(_grad(s[:, i], x)[:, i] for i in range(x.shape[1]))
    return 0.5 * s.square().sum(-1) + trace


def sliced_score_matching(
    x: Tensor,
    *,
    energy: EnergyFn | None = None,
    score: ScoreFn | None = None,
    n_projections: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sliced score matching with Rademacher projections, variance-reduced form.

    ``½‖s‖² + vᵀ∇ₓ(vᵀs)``, averaged over ``n_projections`` directions ``v``. Keeping ``½‖s‖²``
    exact (instead of slicing it to ``½(vᵀs)²``) removes that term's share of the variance at no
    cost, since ``s`` is computed anyway. Unbiased for :func:`exact_score_matching`.

    Args:
        x: Data, shape ``[n, D]``.
        energy: ``[n, D] -> [n]``; or
        score: ``[n, D] -> [n, D]`` (exactly one of the two).
        n_projections: Directions per data point.
        generator: Source of the directions.

    Returns:
        Per-point loss, shape ``[n]``.

    Example:
        >>> sliced_score_matching(torch.zeros(2, 2), score=lambda x: -2 * x).tolist()
        [-4.0, -4.0]
    """
    _check_batch(x)
    _check_model(energy, score)
    if n_projections < 1:
        raise ValueError(f"n_projections must be >= 1; received {n_projections}")
    x = _input(x)
    s = _score(x, energy, score)
    directions = rademacher((n_projections, *x.shape), x, generator)
    curvature = sum((v * _grad((v * s).sum(-1), x)).sum(-1) for v in directions) / n_projections
    return 0.5 * s.square().sum(-1) + curvature


def finite_difference_sliced_score_matching(
    x: Tensor,
    xi: float = 1e-2,
    *,
    energy: EnergyFn | None = None,
    score: ScoreFn | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sliced score matching with directional derivatives by central differences (FD-SSM).

    With an energy, ``f = −E`` is evaluated at ``x`` and ``x ± ξv`` (one batched forward pass of
    ``3n`` points, no derivative w.r.t. ``x`` at all) and

        (f(x+ξv) + f(x−ξv) − 2f(x)) / ξ²  +  (f(x+ξv) − f(x−ξv))² / (8ξ²)

    estimates ``vᵀ∇²f v + ½(vᵀ∇f)²``, the (non variance-reduced) sliced objective. With a score,
    ``½‖s(x)‖² + vᵀ(s(x+ξv) − s(x−ξv)) / (2ξ)``. Unbiased over ``v``; the differences are exact
    for quadratic energies (linear scores) and otherwise biased by ``O(ξ²)``.

    Args:
        x: Data, shape ``[n, D]``.
        xi: Step ``ξ > 0`` along each Rademacher direction (whose norm is ``√D``). Too small a step
            loses the second difference to floating-point cancellation.
        energy: ``[n, D] -> [n]``; or
        score: ``[n, D] -> [n, D]`` (exactly one of the two).
        generator: Source of the directions.

    Returns:
        Per-point loss, shape ``[n]``.

    Example:
        >>> energy = lambda x: x.square().sum(-1)
        >>> loss = finite_difference_sliced_score_matching(torch.zeros(2, 2), 0.1, energy=energy)
        >>> [round(value, 4) for value in loss.tolist()]  # tr ∇s = −4; exact for a quadratic
        [-4.0, -4.0]
    """
    _check_batch(x)
    _check_model(energy, score)
    if not xi > 0:
        raise ValueError(f"xi must be positive; received {xi!r}")
    x = x.detach()
    v = rademacher(tuple(x.shape), x, generator)
    points = torch.cat([x + xi * v, x - xi * v, x])
    if energy is not None:
        values = energy(points)
        if values.shape != points.shape[:1]:
            raise ValueError(f"energy must map x of shape {tuple(points.shape)} to shape "
                             f"({points.shape[0]},); returned {tuple(values.shape)}")
        f_plus, f_minus, f_0 = (-values).chunk(3)
        return (f_plus + f_minus - 2 * f_0) / xi**2 + (f_plus - f_minus).square() / (8 * xi**2)
    values = score(points)
    if values.shape != points.shape:
        raise ValueError(f"score must map x of shape {tuple(points.shape)} to the same shape; "
                         f"returned {tuple(values.shape)}")
    s_plus, s_minus, s_0 = values.chunk(3)
    return 0.5 * s_0.square().sum(-1) + (v * (s_plus - s_minus)).sum(-1) / (2 * xi)


def denoising_score_matching(
    x: Tensor,
    sigma: float = 0.1,
    *,
    energy: EnergyFn | None = None,
    score: ScoreFn | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Denoising score matching with Gaussian noise of scale ``σ``.

    ``½‖s(x + σε) + ε/σ‖² − D/(2σ²)``, ``ε ~ N(0, I)``. Its mean is exactly the Hyvärinen
    objective :func:`exact_score_matching` of the model on the noised data ``x + σε``; the
    subtracted constant is the mean of ``½‖ε/σ‖²``, which changes no gradient but makes the value
    comparable to the other objectives'. Needs one backward pass w.r.t. ``x`` (for an energy).

    Args:
        x: Data, shape ``[n, D]``.
        sigma: Noise scale ``σ > 0``; the objective fits the data blurred by it.
        energy: ``[n, D] -> [n]``; or
        score: ``[n, D] -> [n, D]`` (exactly one of the two).
        generator: Source of the noise.

    Returns:
        Per-point loss, shape ``[n]``.

    Example:
        >>> # The noised data are N(0, I), whose score -x zeroes every residual: J = ½·2 − 2.
        >>> denoising_score_matching(torch.zeros(3, 2), 1.0, score=lambda x: -x).tolist()
        [-1.0, -1.0, -1.0]
    """
    _check_batch(x)
    _check_model(energy, score)
    if not sigma > 0:
        raise ValueError(f"sigma must be positive; received {sigma!r}")
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    noisy = _input(x + sigma * noise)
    s = _score(noisy, energy, score)
    return 0.5 * (s + noise / sigma).square().sum(-1) - x.shape[1] / (2 * sigma**2)


class ScoreMatchingTerms(NamedTuple):
    """A score-matching objective and its parts, all scalars.

    Attributes:
        loss: What to minimize: ``score_matching + λ · mean_energy``.
        score_matching: The batch mean of the chosen estimator.
        mean_energy: ``mean E(x)`` over the batch (0 when not asked for, i.e. ``λ = 0``).
    """

    loss: Tensor
    score_matching: Tensor
    mean_energy: Tensor


def score_matching_loss(
    energy: EnergyFn,
    x: Tensor,
    objective: str = "ssm",
    *,
    sigma: float = 0.1,
    xi: float = 1e-2,
    n_projections: int = 1,
    energy_reg: float = 0.0,
    generator: torch.Generator | None = None,
) -> ScoreMatchingTerms:
    """The batch loss of a score-matching objective chosen by name, for an energy model.

    Args:
        energy: ``[n, D] -> [n]``.
        x: Data, shape ``[n, D]``.
        objective: One of :data:`OBJECTIVES`: ``"exact"``, ``"ssm"``, ``"dsm"``, ``"fdssm"``.
        sigma: Noise scale of ``"dsm"``.
        xi: Finite-difference step of ``"fdssm"``.
        n_projections: Directions per point for ``"ssm"``.
        energy_reg: ``λ >= 0``: adds ``λ · mean E(x)``. Score matching cannot see an additive
            constant in ``E``; the term pins it (and, for models whose normalizer is not free,
            pushes mass onto the data).
        generator: Source of the directions or noise.

    Returns:
        :class:`ScoreMatchingTerms`.

    Example:
        >>> energy = lambda x: 0.5 * x.square().sum(-1)
        >>> terms = score_matching_loss(energy, torch.ones(4, 2), "ssm", energy_reg=0.5)
        >>> terms.loss.item(), terms.score_matching.item(), terms.mean_energy.item()
        (-0.5, -1.0, 1.0)
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; known: {', '.join(OBJECTIVES)}")
    if energy_reg < 0:
        raise ValueError(f"energy_reg must be >= 0; received {energy_reg!r}")
    if objective == "exact":
        values = exact_score_matching(x, energy=energy)
    elif objective == "ssm":
        values = sliced_score_matching(x, energy=energy, n_projections=n_projections,
                                       generator=generator)
    elif objective == "dsm":
        values = denoising_score_matching(x, sigma, energy=energy, generator=generator)
    else:
        values = finite_difference_sliced_score_matching(x, xi, energy=energy, generator=generator)
    sm = values.mean()
    mean_energy = energy(x.detach()).mean() if energy_reg > 0 else sm.new_zeros(())
    return ScoreMatchingTerms(sm + energy_reg * mean_energy, sm, mean_energy)

"""Claims about the score-matching objectives, checked on a Gaussian model where everything is known.

For the model ``E(x) = ½(x − μ)ᵀP(x − μ)`` (score ``s(x) = −P(x − μ)``) and data ``N(m, C)``,
Hyvärinen's objective is ``J = ½ tr(P²C) + ½ (m − μ)ᵀP²(m − μ) − tr P`` in closed form. Exact SM,
SSM and FD-SSM (central differences are exact for a quadratic) estimate ``J`` without bias; DSM
estimates ``J`` with ``C`` replaced by ``C + σ²I``. Tolerances are Monte-Carlo standard errors:
of the per-point losses for means, of batch means for gradients.
"""

import math

import pytest
import torch
from torch import nn

from flowmc_ebm.objectives.score_matching import (
    denoising_score_matching,
    exact_score_matching,
    finite_difference_sliced_score_matching,
    rademacher,
    score_from_energy,
    score_matching_loss,
    sliced_score_matching,
)


@pytest.fixture(autouse=True)
def _one_thread():
    # Runs after conftest's two-thread setting. These tensors are tiny: a second thread buys
    # nothing, and on a busy two-core machine its spinning made the tests 10-20x slower.
    torch.set_num_threads(1)

DIM = 3
# |z| above this for any of a handful of checks has probability < 1e-4 if the claim holds.
Z_MAX = 4.5


class GaussianModel(nn.Module):
    """E(x) = ½(x − μ)ᵀ L Lᵀ (x − μ), parameters μ and L."""

    def __init__(self, mu: torch.Tensor, factor: torch.Tensor) -> None:
        super().__init__()
        self.mu = nn.Parameter(mu.clone())
        self.factor = nn.Parameter(factor.clone())

    def precision(self) -> torch.Tensor:
        return self.factor @ self.factor.mT

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        diff = x - self.mu
        return 0.5 * ((diff @ self.precision()) * diff).sum(-1)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return -(x - self.mu) @ self.precision()


def closed_form(mu, factor, data_mean, data_cov):
    precision = factor @ factor.mT
    p2 = precision @ precision
    shift = data_mean - mu
    return 0.5 * torch.trace(p2 @ data_cov) + 0.5 * shift @ p2 @ shift - torch.trace(precision)


def _problem():
    g = torch.Generator().manual_seed(1)
    mu = torch.randn(DIM, generator=g, dtype=torch.float64)
    factor = torch.eye(DIM, dtype=torch.float64) + 0.3 * torch.randn(DIM, DIM, generator=g,
                                                                      dtype=torch.float64)
    data_mean = torch.randn(DIM, generator=g, dtype=torch.float64)
    a = torch.randn(DIM, DIM, generator=g, dtype=torch.float64)
    data_cov = 0.5 * a @ a.mT + 0.5 * torch.eye(DIM, dtype=torch.float64)
    return GaussianModel(mu, factor), data_mean, data_cov


def _data(n, data_mean, data_cov, seed):
    g = torch.Generator().manual_seed(seed)
    chol = torch.linalg.cholesky(data_cov)
    return data_mean + torch.randn(n, DIM, generator=g, dtype=torch.float64) @ chol.mT


SIGMA, XI = 0.4, 0.05


def _estimators(model):
    """name -> (per-point loss of a batch, the data covariance shift its mean answers to)."""
    return {
        "exact/energy": (lambda x, g: exact_score_matching(x, energy=model), 0.0),
        "exact/score": (lambda x, g: exact_score_matching(x, score=model.score), 0.0),
        "ssm/energy": (lambda x, g: sliced_score_matching(x, energy=model, generator=g), 0.0),
        "ssm/score": (lambda x, g: sliced_score_matching(x, score=model.score, n_projections=3,
                                                         generator=g), 0.0),
        "fdssm/energy": (lambda x, g: finite_difference_sliced_score_matching(
            x, XI, energy=model, generator=g), 0.0),
        "fdssm/score": (lambda x, g: finite_difference_sliced_score_matching(
            x, XI, score=model.score, generator=g), 0.0),
        "dsm/energy": (lambda x, g: denoising_score_matching(x, SIGMA, energy=model, generator=g),
                       SIGMA**2),
        "dsm/score": (lambda x, g: denoising_score_matching(x, SIGMA, score=model.score,
                                                            generator=g), SIGMA**2),
    }


def test_exact_score_matching_matches_the_gaussian_pointwise():
    model, data_mean, data_cov = _problem()
    x = _data(50, data_mean, data_cov, seed=2)
    precision = model.precision().detach()
    expected = 0.5 * ((x - model.mu.detach()) @ precision).square().sum(-1) - torch.trace(precision)
    torch.testing.assert_close(exact_score_matching(x, energy=model).detach(), expected)
    torch.testing.assert_close(score_from_energy(model, x.requires_grad_(True)).detach(),
                               model.score(x).detach())


@pytest.mark.parametrize("name", list(_estimators(nn.Identity())))
def test_estimator_mean_equals_the_closed_form_objective(name):
    model, data_mean, data_cov = _problem()
    estimator, cov_shift = _estimators(model)[name]
    x = _data(20_000, data_mean, data_cov, seed=3)
    values = estimator(x, torch.Generator().manual_seed(4)).detach()
    truth = closed_form(model.mu.detach(), model.factor.detach(), data_mean,
                        data_cov + cov_shift * torch.eye(DIM, dtype=torch.float64))
    mcse = values.std() / math.sqrt(values.numel())
    z = (values.mean() - truth) / mcse
    assert abs(z) < Z_MAX, f"{name}: mean {values.mean():.4f} vs {truth:.4f} (MCSE {mcse:.4f})"


def _finite_difference_gradient(model, data_mean, data_cov, step=1e-5):
    params = [model.mu.detach().clone(), model.factor.detach().clone()]
    grads = []
    for index in range(2):
        grad = torch.zeros_like(params[index])
        flat = grad.view(-1)
        for k in range(flat.numel()):
            values = []
            for sign in (1, -1):
                shifted = [p.clone() for p in params]
                shifted[index].view(-1)[k] += sign * step
                values.append(closed_form(*shifted, data_mean, data_cov))
            flat[k] = (values[0] - values[1]) / (2 * step)
        grads.append(grad)
    return torch.cat([g.flatten() for g in grads])


@pytest.mark.parametrize("name", ["exact/energy", "ssm/energy", "fdssm/energy", "dsm/energy"])
def test_parameter_gradient_matches_finite_differences_of_the_closed_form(name):
    model, data_mean, data_cov = _problem()
    estimator, cov_shift = _estimators(model)[name]
    target_cov = data_cov + cov_shift * torch.eye(DIM, dtype=torch.float64)
    expected = _finite_difference_gradient(model, data_mean, target_cov)
    # Gradients of independent batches: their mean estimates the expected gradient and their
    # spread gives its standard error.
    generator = torch.Generator().manual_seed(5)
    batches = []
    for seed in range(20):
        x = _data(1000, data_mean, data_cov, seed=100 + seed)
        grads = torch.autograd.grad(estimator(x, generator).mean(), [model.mu, model.factor])
        batches.append(torch.cat([g.flatten() for g in grads]))
    batches = torch.stack(batches)
    mcse = batches.std(0) / math.sqrt(batches.shape[0])
    z = (batches.mean(0) - expected) / mcse
    assert z.abs().max() < Z_MAX, f"{name}: z-scores {z}"


def test_fdssm_bias_shrinks_like_xi_squared_on_a_non_quadratic_energy():
    def energy(x):
        return torch.log(torch.cosh(x)).sum(-1) + 0.1 * x.pow(4).sum(-1)

    x = torch.randn(64, DIM, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    # The sliced objective FD-SSM approximates, with the very same directions (same seed).
    v = rademacher(tuple(x.shape), x, torch.Generator().manual_seed(7))
    xg = x.clone().requires_grad_(True)
    grad_f = -torch.autograd.grad(energy(xg).sum(), xg, create_graph=True)[0]
    curvature = (v * torch.autograd.grad((v * grad_f).sum(), xg)[0]).sum(-1)
    sliced = curvature + 0.5 * (v * grad_f.detach()).sum(-1).square()

    def error(xi):
        fd = finite_difference_sliced_score_matching(x, xi, energy=energy,
                                                     generator=torch.Generator().manual_seed(7))
        return (fd - sliced).abs().mean().item()

    ratio = error(0.02) / error(0.01)
    assert 3.5 < ratio < 4.5, f"halving xi divided the error by {ratio:.2f}, expected about 4"


def test_score_matching_loss_adds_the_energy_regularizer():
    model, data_mean, data_cov = _problem()
    x = _data(200, data_mean, data_cov, seed=8)
    plain = score_matching_loss(model, x, "ssm", generator=torch.Generator().manual_seed(9))
    regularized = score_matching_loss(model, x, "ssm", energy_reg=0.3,
                                      generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(regularized.score_matching, plain.score_matching)
    torch.testing.assert_close(regularized.loss,
                               plain.score_matching + 0.3 * model(x).mean())
    assert plain.mean_energy == 0


@pytest.mark.parametrize("objective", ["exact", "ssm", "dsm", "fdssm"])
def test_objectives_reach_the_model_parameters_only(objective):
    model, data_mean, data_cov = _problem()
    x = _data(16, data_mean, data_cov, seed=10).requires_grad_(True)
    score_matching_loss(model, x, objective).loss.backward()
    assert model.mu.grad is not None and model.factor.grad.abs().sum() > 0
    assert x.grad is None


def test_bad_arguments_are_refused_with_the_expected_shape_named():
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="exactly one of"):
        sliced_score_matching(x)
    with pytest.raises(ValueError, match="exactly one of"):
        sliced_score_matching(x, energy=lambda y: y.sum(-1), score=lambda y: y)
    with pytest.raises(ValueError, match=r"to shape \(4,\)"):
        exact_score_matching(x, energy=lambda y: y)
    with pytest.raises(ValueError, match=r"\(n, D\)"):
        denoising_score_matching(torch.zeros(4), energy=lambda y: y)
    with pytest.raises(ValueError, match="unknown objective"):
        score_matching_loss(lambda y: y.sum(-1), x, "nce")

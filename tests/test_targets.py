"""Claims about flowmc_ebm.targets: exact densities, exact samplers, known mode weights."""

import math
from itertools import pairwise

import pytest
import scipy.stats
import torch

from flowmc_ebm.targets import (
    EightGaussians,
    FourModes,
    GaussianMixture,
    HighDimMixture,
    Rings,
    TwoModes,
    get_target,
)

PLANAR = {
    "two_modes": TwoModes,
    "four_modes": FourModes,
    "eight_gaussians": EightGaussians,
    "rings": Rings,
}
ALL = {**PLANAR, "high_dim": lambda: HighDimMixture(8, weights=[0.1, 0.2, 0.3, 0.4])}
N_SAMPLES = 20_000


def _midpoint_grid(half_width: float, n: int) -> tuple[torch.Tensor, float]:
    step = 2 * half_width / n
    axis = -half_width + step * (torch.arange(n, dtype=torch.float64) + 0.5)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1).reshape(-1, 2)
    return grid, step**2


def _draws(target, seed: int = 0, n: int = N_SAMPLES):
    return target.sample_with_modes(n, torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("name", PLANAR)
def test_planar_target_and_each_component_integrate_to_one(name):
    target = PLANAR[name]()
    # Midpoint rule, step h = 0.02 on [-6, 6]^2. By Poisson summation its relative error on a
    # Gaussian profile of std s is about 2 exp(-2 pi^2 s^2 / h^2) < 1e-300 for s >= 0.15, and
    # every component leaves < 1e-15 of its mass outside the box (its mean or ring sits >= 9
    # stds from the edge). Only float64 rounding remains, hence the 1e-9 tolerance.
    grid, cell = _midpoint_grid(6.0, 600)
    total = target.log_prob(grid).exp().sum() * cell
    per_component = target.component_log_prob(grid).exp().sum(0) * cell
    assert total.item() == pytest.approx(1.0, abs=1e-9)
    torch.testing.assert_close(per_component, torch.ones_like(per_component), atol=1e-9, rtol=0)


def test_high_dim_mixture_integrates_to_one_by_importance_sampling():
    target = HighDimMixture(8, weights=[0.1, 0.2, 0.3, 0.4])
    # A wider mixture on the same means: p/q is bounded, so the estimator has finite variance.
    proposal = GaussianMixture(
        target.means.double(), 2.25 * torch.eye(8, dtype=torch.float64).expand(4, 8, 8), [0.25] * 4
    )
    x = proposal.sample(N_SAMPLES, torch.Generator().manual_seed(1), dtype=torch.float64)
    ratio = (target.log_prob(x) - proposal.log_prob(x)).exp()
    standard_error = ratio.std() / math.sqrt(N_SAMPLES)
    assert abs(ratio.mean().item() - 1.0) < 4 * standard_error.item()


def test_gaussian_mixture_log_prob_matches_scipy_with_full_covariances():
    generator = torch.Generator().manual_seed(2)
    factors = torch.randn(3, 3, 3, generator=generator, dtype=torch.float64)
    covariances = factors @ factors.mT + 0.5 * torch.eye(3, dtype=torch.float64)
    means = 2 * torch.randn(3, 3, generator=generator, dtype=torch.float64)
    weights = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    x = 2 * torch.randn(50, 3, generator=generator, dtype=torch.float64)

    reference = sum(
        w * scipy.stats.multivariate_normal(m.numpy(), c.numpy()).pdf(x.numpy())
        for w, m, c in zip(weights.tolist(), means, covariances, strict=True)
    )
    log_prob = GaussianMixture(means, covariances, weights).log_prob(x)
    torch.testing.assert_close(log_prob, torch.from_numpy(reference).log(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", PLANAR)
def test_planar_samples_of_each_component_match_its_density(name):
    # For each component k, compares the mean of (x1, x2, |x|) over draws labelled k with its
    # value under exp(component_log_prob[k]) on the grid. |x| catches a sampler that forgets a
    # Jacobian: a ring radius drawn from a plain normal is biased by about s^2 / r_k, 11
    # standard errors for the inner ring. Tolerance: 4 Monte-Carlo standard errors; the grid
    # error is negligible (see the normalization test).
    target = PLANAR[name]()
    x, modes = _draws(target, seed=3)
    grid, cell = _midpoint_grid(6.0, 600)
    grid_features = torch.cat([grid, grid.norm(dim=-1, keepdim=True)], dim=-1)
    densities = target.component_log_prob(grid).exp() * cell
    for k in range(target.n_modes):
        draws = x[modes == k]
        features = torch.cat([draws, draws.norm(dim=-1, keepdim=True)], dim=-1)
        exact = densities[:, k] @ grid_features
        standard_error = features.std(0) / math.sqrt(features.shape[0])
        assert ((features.mean(0) - exact).abs() < 4 * standard_error).all(), k


@pytest.mark.parametrize("name", ALL)
def test_sampled_mode_frequencies_match_weights(name):
    target = ALL[name]()
    _, modes = _draws(target, seed=4)
    frequencies = torch.bincount(modes, minlength=target.n_modes).double() / N_SAMPLES
    weights = target.weights.double()
    binomial_se = (weights * (1 - weights) / N_SAMPLES).sqrt()
    assert ((frequencies - weights).abs() <= 4 * binomial_se).all()


@pytest.mark.parametrize("name", ["two_modes", "four_modes", "eight_gaussians", "high_dim"])
def test_assign_errs_exactly_as_often_as_the_bayes_error(name):
    # assign is the maximum-posterior rule, whose error rate is E[1 - max_k r_k(x)]. Both sides
    # are estimated on the same draws; their paired difference has mean 0 and its own standard
    # error. A wrong assign (say, ignoring the weights) errs more often than that.
    target = ALL[name]()
    x, modes = _draws(target, seed=5)
    wrong = (target.assign(x) != modes).double()
    bayes = 1 - target.responsibilities(x).max(dim=-1).values
    difference = wrong - bayes
    assert abs(difference.mean()) <= 4 * difference.std() / math.sqrt(N_SAMPLES) + 1e-12
    assert wrong.mean() < 0.02


def _normal_pdf(t: float) -> float:
    return math.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)


def _normal_cdf(t: float) -> float:
    return 0.5 * math.erfc(-t / math.sqrt(2))


def _ring_radial_cdf(radius: float, ring: float, std: float) -> float:
    # CDF of the radial marginal r exp(-(r - ring)^2 / (2 std^2)) on r > 0, in closed form.
    a, c = ring / std, (radius - ring) / std
    mass_below = a * (_normal_cdf(c) - _normal_cdf(-a)) + _normal_pdf(a) - _normal_pdf(c)
    return mass_below / (a * _normal_cdf(a) + _normal_pdf(a))


def test_rings_assign_errs_as_often_as_the_radial_law_predicts():
    target = Rings()
    x, modes = _draws(target, seed=6)
    radii, std = target.radii.tolist(), target.std
    edges = [0.0] + [(lo + hi) / 2 for lo, hi in pairwise(radii)] + [math.inf]
    leave = [
        1 - (_ring_radial_cdf(edges[k + 1], r, std) - _ring_radial_cdf(edges[k], r, std))
        for k, r in enumerate(radii)
    ]
    expected = sum(w * p for w, p in zip(target.weights.tolist(), leave, strict=True))
    observed = (target.assign(x) != modes).double().mean().item()
    assert abs(observed - expected) <= 4 * math.sqrt(expected * (1 - expected) / N_SAMPLES)


@pytest.mark.parametrize("name", ALL)
def test_same_seed_gives_same_samples(name):
    target = ALL[name]()
    first = target.sample(64, generator=torch.Generator().manual_seed(7))
    again = target.sample(64, generator=torch.Generator().manual_seed(7))
    other = target.sample(64, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_log_prob_follows_input_dtype_and_is_differentiable():
    mean = torch.tensor([[1.0, -2.0]])
    covariance = torch.tensor([[[2.0, 0.5], [0.5, 1.0]]])
    single = GaussianMixture(mean, covariance, [1.0])
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(5, 2, dtype=dtype, requires_grad=True)
        log_prob = single.log_prob(x)
        assert log_prob.dtype == dtype and log_prob.shape == (5,)
        (grad,) = torch.autograd.grad(log_prob.sum(), x)
        expected = -(x.detach() - mean.to(dtype)) @ torch.linalg.inv(covariance[0]).to(dtype)
        torch.testing.assert_close(grad, expected)


def test_log_prob_accepts_extra_batch_dimensions():
    target = TwoModes()
    x = torch.randn(3, 4, 2)
    torch.testing.assert_close(target.log_prob(x), target.log_prob(x.reshape(12, 2)).reshape(3, 4))


def test_two_modes_top_right_is_the_heavy_mode():
    target = TwoModes()
    torch.testing.assert_close(target.means[target.top_right], torch.tensor([1.5, 1.5]))
    assert target.weights[target.top_right].item() == pytest.approx(2 / 3)
    torch.testing.assert_close(target.covariances[target.top_right], 0.1 * torch.eye(2))
    torch.testing.assert_close(target.covariances[target.bottom_left], 0.05 * torch.eye(2))


def test_high_dim_mixture_modes():
    target = HighDimMixture(6)
    a = 0.591 * math.sqrt(2 * math.log(6))
    s = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
    expected = a * torch.stack([torch.ones(6), -torch.ones(6), s, -s])
    torch.testing.assert_close(target.means, expected)
    torch.testing.assert_close(target.weights, torch.full((4,), 0.25))


@pytest.mark.parametrize("alias", ["eight_gaussians", "eightgaussians", "Eight-Gaussians"])
def test_registry_accepts_aliases(alias):
    assert isinstance(get_target(alias), EightGaussians)


def test_registry_rejects_unknown_name_and_lists_known_ones():
    with pytest.raises(ValueError, match="known targets: two_modes, four_modes"):
        get_target("swiss_roll")


def test_log_prob_rejects_wrong_dimension_naming_both_shapes():
    with pytest.raises(ValueError, match=r"\(n, 2\); received \(5, 3\)"):
        TwoModes().log_prob(torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"\(n, 2\); received \(5, 3\)"):
        Rings().assign(torch.zeros(5, 3))


@pytest.mark.parametrize(
    ("weights", "message"),
    [([0.5, 0.6], "sum to 1"), ([1.5, -0.5], "non-negative"), ([1.0], r"shape \(2,\)")],
)
def test_bad_weights_are_rejected(weights, message):
    with pytest.raises(ValueError, match=message):
        GaussianMixture(torch.zeros(2, 1), torch.ones(2, 1, 1), weights)


def test_covariance_must_be_positive_definite_and_symmetric():
    with pytest.raises(ValueError, match="positive definite; components \\[1\\]"):
        GaussianMixture(torch.zeros(2, 1), torch.tensor([[[1.0]], [[-1.0]]]), [0.5, 0.5])
    with pytest.raises(ValueError, match="symmetric"):
        GaussianMixture(torch.zeros(1, 2), torch.tensor([[[1.0, 0.5], [0.0, 1.0]]]), [1.0])
    with pytest.raises(ValueError, match=r"covariances must have shape \(1, 2, 2\)"):
        GaussianMixture(torch.zeros(1, 2), torch.ones(1, 3, 3), [1.0])


def test_sample_count_must_be_positive():
    with pytest.raises(ValueError, match="positive int"):
        TwoModes().sample(0)

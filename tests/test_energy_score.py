"""Claims about the energy score: unbiased against Gaussian closed forms, gradients through samples.

Closed forms used (β = 1 unless said): for X ~ N(μ, σ²) in 1-D, E|X − y| = σ(2φ(z) + z(2Φ(z) − 1))
with z = (y − μ)/σ and E|X − X′| = 2σ/√π. For X ~ N(μ, σ²I_D), E‖X − μ‖ = √2 σ c and
E‖X − X′‖ = 2σc with c = Γ((D+1)/2)/Γ(D/2). For β = 2 and any covariance, ES = ‖μ − y‖².
Tolerances are Monte-Carlo standard errors of independent per-point scores.
"""

import math

import pytest
import torch
from torch import nn
from torch.distributions import MultivariateNormal, Normal

from flowmc_ebm.flows import make_flow
from flowmc_ebm.objectives.energy_score import energy_distance, energy_score, energy_score_loss


@pytest.fixture(autouse=True)
def _one_thread():
    # Runs after conftest's two-thread setting. These tensors are tiny: a second thread buys
    # nothing, and on a busy two-core machine its spinning made the tests 10-20x slower.
    torch.set_num_threads(1)

Z_MAX = 4.5  # a |z| beyond it has probability < 1e-5 per check when the claim holds
N = 20_000


def _z(values: torch.Tensor, truth: torch.Tensor | float) -> float:
    return ((values.mean() - truth) / (values.std() / math.sqrt(values.numel()))).item()


def expected_abs_deviation(mu, sigma, y):
    """E|X − y| for X ~ N(mu, sigma²)."""
    z = (y - mu) / sigma
    normal = Normal(torch.zeros_like(z), torch.ones_like(z))
    return sigma * (2 * normal.log_prob(z).exp() + z * (2 * normal.cdf(z) - 1))


def closed_form_1d(mu, sigma, y):
    return expected_abs_deviation(mu, sigma, y) - sigma / math.sqrt(math.pi)


@pytest.mark.parametrize("m", [2, 5])
def test_univariate_gaussian_score_is_unbiased_for_its_closed_form(m):
    g = torch.Generator().manual_seed(0)
    mu, sigma = 0.3, 1.7
    y = 2.0 * torch.randn(N, 1, generator=g, dtype=torch.float64)
    samples = mu + sigma * torch.randn(m, N, 1, generator=g, dtype=torch.float64)
    scores = energy_score(samples, y)
    # Each point has its own y, so compare score − truth point by point.
    residual = scores - closed_form_1d(mu, sigma, y[:, 0])
    assert abs(_z(residual, 0.0)) < Z_MAX


class GaussianModel(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.full((dim,), 0.3, dtype=torch.float64))
        self.log_scale = nn.Parameter(torch.full((dim,), 0.5, dtype=torch.float64))

    def forward(self) -> Normal:
        return torch.distributions.Independent(Normal(self.loc, self.log_scale.exp()), 1)


def test_gradient_through_samples_matches_the_closed_form_gradient():
    torch.manual_seed(1)
    model = GaussianModel(1)
    g = torch.Generator().manual_seed(2)
    y = -0.5 + 0.8 * torch.randn(4000, 1, generator=g, dtype=torch.float64)
    truth = closed_form_1d(model.loc, model.log_scale.exp(), y[:, 0]).mean()
    expected = torch.cat(torch.autograd.grad(truth, [model.loc, model.log_scale]))
    # Same data, independent sample draws: the spread of the batch gradients is the MC error.
    batches = []
    for _ in range(30):
        loss = energy_score_loss(model, y, m=2)
        batches.append(torch.cat(torch.autograd.grad(loss, [model.loc, model.log_scale])))
    batches = torch.stack(batches)
    z = (batches.mean(0) - expected) / (batches.std(0) / math.sqrt(len(batches)))
    assert z.abs().max() < Z_MAX, f"z-scores {z}"


@pytest.mark.parametrize("dim", [2, 10])
def test_isotropic_gaussian_at_its_mean_matches_the_chi_closed_form(dim):
    g = torch.Generator().manual_seed(3)
    sigma = 0.7
    c = math.exp(math.lgamma((dim + 1) / 2) - math.lgamma(dim / 2))
    truth = sigma * c * (math.sqrt(2) - 1)
    mean = torch.linspace(-1, 1, dim, dtype=torch.float64)
    samples = mean + sigma * torch.randn(3, N, dim, generator=g, dtype=torch.float64)
    assert abs(_z(energy_score(samples, mean.expand(N, dim)), truth)) < Z_MAX


def test_beta_two_reduces_to_the_squared_mean_error_for_any_covariance():
    g = torch.Generator().manual_seed(4)
    a = torch.randn(3, 3, generator=g, dtype=torch.float64)
    model = MultivariateNormal(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64),
                               a @ a.mT + torch.eye(3, dtype=torch.float64))
    y = torch.randn(N, 3, generator=g, dtype=torch.float64)
    scores = energy_score(model.sample((2, N)), y, beta=2.0)
    residual = scores - (model.mean - y).square().sum(-1)
    assert abs(_z(residual, 0.0)) < Z_MAX


def test_multivariate_score_agrees_with_a_large_sample_estimate():
    g = torch.Generator().manual_seed(5)
    beta, dim = 0.5, 4
    y = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
    scale = torch.tensor([1.0, 0.5, 2.0, 1.5], dtype=torch.float64)

    def draw(*shape):
        return scale * torch.randn(*shape, dim, generator=g, dtype=torch.float64)

    # Reference: independent large-sample means of the two expectations, each with its MCSE.
    fit = (draw(400_000) - y).norm(dim=-1).pow(beta)
    spread = (draw(400_000) - draw(400_000)).norm(dim=-1).pow(beta)
    reference = fit.mean() - 0.5 * spread.mean()
    reference_var = fit.var() / fit.numel() + 0.25 * spread.var() / spread.numel()
    scores = energy_score(draw(2, N), y.expand(N, dim), beta=beta)
    z = (scores.mean() - reference) / torch.sqrt(scores.var() / N + reference_var)
    assert abs(z) < Z_MAX


def test_energy_distance_matches_the_gaussian_shift_closed_form():
    g = torch.Generator().manual_seed(6)
    shift = 1.5
    # X − Y ~ N(−shift, 2) and X − X′ ~ N(0, 2): ED = 2E|N(shift, 2)| − 2·(2/√π).
    truth = 2 * expected_abs_deviation(torch.tensor(shift), math.sqrt(2), torch.tensor(0.0)) \
        - 4 / math.sqrt(math.pi)
    estimates = torch.stack([
        energy_distance(torch.randn(400, 1, generator=g, dtype=torch.float64),
                        shift + torch.randn(400, 1, generator=g, dtype=torch.float64))
        for _ in range(100)])
    assert abs(_z(estimates, truth)) < Z_MAX
    same = torch.stack([
        energy_distance(torch.randn(200, 2, generator=g), torch.randn(200, 2, generator=g))
        for _ in range(100)])
    assert abs(_z(same, 0.0)) < Z_MAX, "the U-statistic should be unbiased for 0"


def test_training_by_energy_score_recovers_a_gaussian():
    torch.manual_seed(7)
    model = GaussianModel(1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(8)
    for _ in range(400):
        y = 2.0 + 0.5 * torch.randn(256, 1, generator=g, dtype=torch.float64)
        optimizer.zero_grad()
        energy_score_loss(model, y, m=4).backward()
        optimizer.step()
    assert abs(model.loc.item() - 2.0) < 0.1
    assert abs(model.log_scale.exp().item() - 0.5) < 0.1


def test_flow_parameters_receive_gradients_through_rsample():
    flow = make_flow(2, transforms=2, hidden=(16,))
    energy_score_loss(flow, torch.randn(32, 2) + 3.0, m=2).backward()
    grads = [p.grad for p in flow.parameters() if p.requires_grad]
    assert grads and all(grad is not None for grad in grads)
    assert sum(grad.abs().sum() for grad in grads) > 0


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="m >= 2"):
        energy_score(torch.zeros(1, 3, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"\(m, n, D\)"):
        energy_score(torch.zeros(2, 3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="beta"):
        energy_score(torch.zeros(2, 3, 2), torch.zeros(3, 2), beta=2.5)

"""Every exact kernel leaves a correlated 5-D Gaussian invariant; ULA at a large step does not.

Moments: each mean and covariance entry within 4 Monte-Carlo standard errors (ESS-based).
Stationarity: chains started from the target are still distributed as the target after several
steps (KS tests along random directions and on the squared norm, Bonferroni-corrected at 1e-3).
"""

import numpy as np
import pytest
import torch
import zuko
from torch.distributions import MultivariateNormal

import samplers
from tests.stats import moment_zscores, two_sample_pvalues

D = 5
_A = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0],
                   [0.6, 0.8, 0.0, 0.0, 0.0],
                   [-0.3, 0.4, 0.7, 0.0, 0.0],
                   [0.2, -0.2, 0.3, 0.5, 0.0],
                   [0.1, 0.5, -0.2, 0.3, 1.2]])
MEAN = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0])
COV = _A @ _A.T
TARGET = MultivariateNormal(MEAN, COV)
Z_TOL = 4.0
P_TOL = 1e-3 / 9  # nine KS tests per kernel


def log_prob(x):
    return TARGET.log_prob(x)


def _flow(seed):
    # zuko initializes couplings randomly, so as a latent map this flow is genuinely nonlinear.
    torch.manual_seed(seed)
    return zuko.flows.RealNVP(D, transforms=3, hidden_features=(32, 32))


KERNELS = {
    "mala": lambda: samplers.MALA(log_prob, 0.1),
    "hmc": lambda: samplers.HMC(log_prob, 0.2, n_leapfrog=8),
    "imh": lambda: samplers.IndependentMH(log_prob, MultivariateNormal(MEAN, 1.5 * COV)),
    "isir": lambda: samplers.ISIR(log_prob, MultivariateNormal(MEAN, 2.0 * COV), n_particles=8),
    "flowmc": lambda: samplers.FlowMC(log_prob, _flow(1), n_local=2, flow_lr=5e-3,
                                      batch_size=512),
    "latent_mala": lambda: samplers.Latent(log_prob, _flow(2)),
}


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_exact_kernel_reproduces_gaussian_moments(name):
    g = torch.Generator().manual_seed(10)
    x0 = MEAN + torch.randn(128, D, generator=g)
    trace = samplers.sample(KERNELS[name](), x0, n_steps=600, warmup=300, progress=False,
                            generator=g)
    z = moment_zscores(trace.samples, MEAN, COV)
    assert np.abs(z).max() < Z_TOL, f"{name}: worst z-score {np.abs(z).max():.2f}"


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_exact_kernel_keeps_target_distribution(name):
    g = torch.Generator().manual_seed(20)
    kernel = KERNELS[name]()
    x0 = TARGET.sample((4000,))
    trace = samplers.sample(kernel, x0, n_steps=30, progress=False, generator=g)
    p = two_sample_pvalues(trace.samples[:, -1], TARGET.sample((4000,)))
    assert p.min() > P_TOL, f"{name}: smallest KS p-value {p.min():.2e}"


def test_ula_with_large_step_is_flagged_by_moment_test():
    g = torch.Generator().manual_seed(10)
    x0 = MEAN + torch.randn(128, D, generator=g)
    trace = samplers.sample(samplers.ULA(log_prob, 0.15), x0, n_steps=600, warmup=300,
                            progress=False, generator=g)
    z = moment_zscores(trace.samples, MEAN, COV)
    assert np.abs(z).max() > Z_TOL


def test_ula_with_large_step_is_flagged_by_two_sample_test():
    g = torch.Generator().manual_seed(20)
    x0 = TARGET.sample((4000,))
    trace = samplers.sample(samplers.ULA(log_prob, 0.15), x0, n_steps=30, progress=False,
                            generator=g)
    p = two_sample_pvalues(trace.samples[:, -1], TARGET.sample((4000,)))
    assert p.min() < P_TOL


def test_imh_with_target_as_proposal_accepts_every_move():
    g = torch.Generator().manual_seed(3)
    kernel = samplers.IndependentMH(log_prob, TARGET)
    trace = samplers.sample(kernel, TARGET.sample((256,)), n_steps=50, progress=False,
                            generator=g)
    assert bool(trace.stats["accepted"].all())
    torch.testing.assert_close(trace.stats["accept_prob"], torch.ones(256, 50))


def test_isir_with_target_as_proposal_selects_uniformly():
    k = 7
    g = torch.Generator().manual_seed(4)
    kernel = samplers.ISIR(log_prob, TARGET, n_particles=k)
    trace = samplers.sample(kernel, TARGET.sample((512,)), n_steps=40, progress=False,
                            generator=g)
    # Equal weights: a new particle is chosen with probability k / (k + 1), ESS is k + 1.
    torch.testing.assert_close(trace.stats["accept_prob"], torch.full((512, 40), k / (k + 1)))
    torch.testing.assert_close(trace.stats["isir_ess"], torch.full((512, 40), k + 1.0))
    moved = trace.stats["accepted"].double().mean().item()
    se = np.sqrt(k / (k + 1) / (k + 1) / (512 * 40))
    assert abs(moved - k / (k + 1)) < 4 * se

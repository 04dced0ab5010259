"""numpyro models and constrained torch distributions as targets (flowmc_ebm.interop)."""

import subprocess
import sys

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import torch
from numpyro.infer.util import potential_energy

from flowmc_ebm.interop.constrained import UnconstrainedTarget, support_log_prob
from flowmc_ebm.interop.numpyro import NumpyroTarget, nuts_reference
from samplers import MALA, sample


def assert_mean_within_mcse(samples, truth, z_max=4.0):
    """Every coordinate's mean within ``z_max`` Monte-Carlo standard errors (bulk ESS) of the truth."""
    x = np.asarray(samples, dtype=np.float64)
    for i, t in enumerate(np.asarray(truth, dtype=np.float64)):
        q = x[..., i]
        mcse = q.std() / np.sqrt(float(az.ess(q, method="bulk")))
        z = (q.mean() - t) / mcse
        assert abs(z) < z_max, f"coordinate {i}: mean {q.mean():.4f} vs {t:.4f} (z = {z:.1f})"


def gmm(y, k=3):
    w = numpyro.sample("w", dist.Dirichlet(jnp.ones(k)))
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0).expand([k]))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
    numpyro.sample("y", dist.MixtureSameFamily(dist.Categorical(w), dist.Normal(mu, sigma)), obs=y)


def sign_symmetric(y):
    theta = numpyro.sample("theta", dist.Normal(0.0, 3.0).expand([2]))
    numpyro.sample("y", dist.Normal(theta**2, 0.5), obs=y)


def logistic(X, y):
    scale = numpyro.sample("scale", dist.HalfCauchy(1.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, scale).expand([X.shape[1]]))
    numpyro.deterministic("norm", jnp.linalg.norm(beta))
    numpyro.sample("y", dist.Bernoulli(logits=X @ beta), obs=y)


def gaussian():
    numpyro.sample("theta", dist.Normal(jnp.array([1.0, -2.0]), jnp.array([0.5, 2.0])))


MODELS = {
    "gmm": (gmm, (np.array([-3.0, -2.5, 0.1, 0.3, 4.0, 4.2]),), {}),
    "sign_symmetric": (sign_symmetric, (np.array([4.1, 0.9]),), {}),
    "logistic": (logistic, (np.random.default_rng(0).normal(size=(20, 3)),
                            np.random.default_rng(1).integers(0, 2, 20)), {}),
}


def _compare_with_numpyro(names):
    """Run in a fresh process with float64 JAX (toggling jax_enable_x64 inside one process leaves
    compiled executables of the other precision behind, which later calls trip on)."""
    assert jax.config.jax_enable_x64
    for name in names:
        model, args, kwargs = MODELS[name]
        target = NumpyroTarget(model, *args, **kwargs)
        assert target.dtype == jnp.float64
        gen = torch.Generator().manual_seed(3)
        x = torch.randn(7, target.dim, dtype=torch.float64, generator=gen).requires_grad_(True)
        lp = target(x)
        (grad,) = torch.autograd.grad(lp.sum(), x)

        def reference(flat, model=model, args=args, kwargs=kwargs, target=target):
            return -potential_energy(model, args, kwargs, target._unravel(flat))

        value, g = jax.vmap(jax.value_and_grad(reference))(jnp.asarray(x.detach().numpy()))
        np.testing.assert_allclose(lp.detach().numpy(), np.asarray(value), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(grad.numpy(), np.asarray(g), rtol=1e-5, atol=1e-5)
    print("compared", *names)


def _compare_in_float64(names):
    import os

    code = f"from tests.test_interop import _compare_with_numpyro; _compare_with_numpyro({names!r})"
    env = {**os.environ, "JAX_ENABLE_X64": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.split()


def test_log_density_and_gradient_equal_numpyros_potential():
    # One model in make test (a positive-constrained site, a scale-mixture prior and a
    # deterministic site: every path of the unravel/transform code); each model compiles for
    # ~10 s, so all three run in the slow suite.
    assert _compare_in_float64(["logistic"]) == ["compared", "logistic"]


@pytest.mark.slow
def test_log_density_and_gradient_equal_numpyros_potential_on_every_model():
    assert _compare_in_float64(list(MODELS)) == ["compared", *MODELS]


def test_mala_on_a_numpyro_model_recovers_its_moments():
    # End to end through the bridge (MALA's Metropolis correction would hide a wrong gradient:
    # with the backward pass's sign flipped this still passes, while the potential test above
    # fails, which is why that one compares gradients directly).
    target = NumpyroTarget(gaussian)
    assert target.dtype == jnp.float32 and target.dim == 2
    gen = torch.Generator().manual_seed(0)
    trace = sample(MALA(target, 0.3), torch.randn(64, 2, generator=gen), 600, warmup=300,
                   generator=gen, progress=False)
    assert_mean_within_mcse(trace.samples, torch.tensor([1.0, -2.0]))
    draws = target.constrain(trace.samples)["theta"]
    assert draws.shape == (64, 600, 2)


def test_constrained_torch_targets_recover_their_means():
    from torch.distributions import Beta, Dirichlet, Gamma

    target = UnconstrainedTarget({"g": Gamma(3.0, 2.0), "b": Beta(2.0, 5.0),
                                  "w": Dirichlet(torch.tensor([1.0, 2.0, 3.0]))})
    assert target.dim == 1 + 1 + 2
    gen = torch.Generator().manual_seed(1)
    trace = sample(MALA(target, 0.3), torch.zeros(64, target.dim), 800, warmup=400,
                   generator=gen, progress=False)
    draws = target.constrain(trace.samples)
    assert bool((draws["g"] > 0).all()) and bool(((draws["b"] > 0) & (draws["b"] < 1)).all())
    torch.testing.assert_close(draws["w"].sum(-1), torch.ones(64, 800))
    assert_mean_within_mcse(draws["g"].unsqueeze(-1), torch.tensor([1.5]))
    assert_mean_within_mcse(draws["b"].unsqueeze(-1), torch.tensor([2 / 7]))
    assert_mean_within_mcse(draws["w"], torch.tensor([1 / 6, 2 / 6, 3 / 6]))


def test_unconstrained_round_trip_and_jacobian():
    from torch.distributions import Gamma

    target = UnconstrainedTarget(Gamma(torch.tensor([2.0, 3.0]), 1.0))
    x = torch.tensor([[0.5, 2.0]])
    u = target.unconstrain(x)
    torch.testing.assert_close(target.constrain(u)["x"], x)
    # log p(u) = log p(e^u) + u for the exp transform
    expected = Gamma(torch.tensor([2.0, 3.0]), 1.0).log_prob(x).sum() + u.sum()
    torch.testing.assert_close(target(u)[0], expected)


def test_support_log_prob_rejects_instead_of_raising():
    from torch.distributions import Gamma

    log_prob = support_log_prob(Gamma(torch.tensor([2.0]), 1.0))
    out = log_prob(torch.tensor([[1.0], [-1.0]]))
    assert torch.isfinite(out[0]) and out[1] == -float("inf")


def test_to_arviz_names_the_models_sites():
    model, args, kwargs = MODELS["logistic"]
    target = NumpyroTarget(model, *args, **kwargs)
    gen = torch.Generator().manual_seed(0)
    trace = sample(MALA(target, 0.05), target.init_point.expand(4, -1).clone(), 50, warmup=20,
                   generator=gen, progress=False)
    summary = az.summary(target.to_arviz(trace), kind="stats")
    assert {"scale", "beta[0]", "beta[2]", "norm"} <= set(summary.index)
    assert bool(summary.loc["scale", "mean"] > 0)


def test_nuts_reference_runs_from_the_same_starts():
    target = NumpyroTarget(gaussian)
    x0 = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    trace = nuts_reference(target, x0, num_warmup=100, num_samples=200, seed=0)
    assert trace.samples.shape == (4, 200, 2)
    assert trace.kernel == "NUTS (numpyro)" and trace.wall_time > 0
    assert_mean_within_mcse(trace.samples, torch.tensor([1.0, -2.0]))
    torch.testing.assert_close(trace.log_prob, target(trace.samples.reshape(-1, 2)).reshape(4, 200),
                               rtol=1e-4, atol=1e-4)


def test_bad_input_is_named():
    target = NumpyroTarget(gaussian)
    with pytest.raises(ValueError, match=r"shape \(n, 2\).*got \(3, 5\)"):
        target(torch.zeros(3, 5))
    with pytest.raises(TypeError, match="numpyro model"):
        NumpyroTarget(3)
    with pytest.raises(ValueError, match="shape \\(n, 4\\)"):
        from torch.distributions import Dirichlet
        UnconstrainedTarget(Dirichlet(torch.ones(5)))(torch.zeros(2, 3))


def test_importing_the_library_does_not_import_jax():
    code = ("import sys, samplers, flowmc_ebm, flowmc_ebm.interop, flowmc_ebm.interop.constrained;"
            "print('jax' in sys.modules, 'numpyro' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]

"""`samplers.sample(..., compile=True)`: the compiled step is the eager step.

Exactness: the random draws stay eager, so for one generator the compiled and the eager chain
make the same draws; positions agree to float rounding and every accept/reject decision is the
same (an MH decision could only flip where ``u`` lies within rounding of the acceptance
probability, which these short runs never meet). Invariance: the invariance suite's moment and
stationarity tests, run on the compiled path (MALA in the fast suite, every kernel with a compiled
part under ``slow``). Fallback: a log-density the compiler cannot take as one graph gives one
warning and the eager chain, never an error.
"""

import warnings

import numpy as np
import pytest
import torch
import zuko

import samplers
from samplers import _compile
from tests.stats import moment_zscores, two_sample_pvalues
from tests.test_samplers_invariance import COV, KERNELS, MEAN, P_TOL, TARGET, Z_TOL, D

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def fast_backend(monkeypatch):
    """The fast suite compiles with "aot_eager": Dynamo's one-graph capture and AOTAutograd, as
    with Inductor, without Inductor's C++ generation (a minute or more on a cold cache on 2
    cores). The slow tests use Inductor, the default."""
    monkeypatch.setattr(_compile, "BACKEND", "aot_eager")


def quartic(x):
    return -0.5 * x.pow(2).sum(-1) - 0.1 * x.pow(4).sum(-1)


def _pair(make, x0, **kw):
    """The same run eager and compiled, each from a fresh kernel and generator seeded alike."""
    out = []
    for compile in (False, True):
        g = torch.Generator().manual_seed(3)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # a fallback would be a failure here
            out.append(samplers.sample(make(), x0, progress=False, generator=g, compile=compile,
                                       **kw))
    return out


def _assert_same_chain(eager, compiled, tol=1e-10):
    """Same decisions, same positions to float64 rounding (``tol``). (In float32 the warm-up's dual
    averaging multiplies rounding differences of the acceptance probabilities by up to
    sqrt(t) / gamma ~ 100, so positions drift apart by ~1e-4 while every decision agrees: float64
    is what shows the two paths compute the same chain.)"""
    assert torch.equal(eager.stats["accepted"], compiled.stats["accepted"])
    for a, b in [(compiled.samples, eager.samples), (compiled.log_prob, eager.log_prob),
                 (compiled.stats["accept_prob"], eager.stats["accept_prob"])]:
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)


def test_compiled_mala_is_the_eager_chain(fast_backend):
    # float32 with the step size fixed (no warm-up): rounding differences do not grow. The
    # invariance suite's target and shapes, so the moment test below reuses this compilation.
    g = torch.Generator().manual_seed(4)
    x0 = MEAN + torch.randn(128, D, generator=g)
    eager, compiled = _pair(KERNELS["mala"], x0, n_steps=40)
    _assert_same_chain(eager, compiled, tol=1e-5)
    # The chain moved and rejected: the comparison covers both branches of the MH decision.
    acc = eager.stats["accepted"].float().mean()
    assert 0.2 < acc < 0.95


@pytest.mark.slow
@pytest.mark.parametrize("make", [
    lambda: samplers.MALA(quartic, 0.3),
    lambda: samplers.HMC(quartic, 0.2, n_leapfrog=4),
    lambda: samplers.ULA(quartic, 0.05),
    lambda: samplers.FlowMC(quartic, _fixed_flow(), n_local=2, train=False),
], ids=["mala", "hmc", "ula", "flowmc"])
def test_compiled_kernels_are_the_eager_chains(make):
    x0 = torch.randn(16, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eager, compiled = _pair(make, x0, n_steps=30, warmup=10)
    _assert_same_chain(eager, compiled)


def _fixed_flow():
    torch.manual_seed(5)
    return zuko.flows.RealNVP(3, transforms=2, hidden_features=(16, 16)).double()


def test_uncompilable_log_density_warns_once_and_runs_eagerly(fast_backend):
    calls = []

    def host_synced(x):  # a Python branch on a tensor's value: no single graph can hold it
        lp = quartic(x)
        if float(lp.detach().mean()) > 1e9:
            calls.append("never")
        return lp

    _compile._WARNED.clear()
    x0 = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    runs = []
    for compile in (False, True):
        g = torch.Generator().manual_seed(1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            runs.append(samplers.sample(samplers.MALA(host_synced, 0.3), x0, 30, progress=False,
                                        generator=g, compile=compile))
        fallbacks = [w for w in caught if "could not compile" in str(w.message)]
        assert len(fallbacks) == (1 if compile else 0), [str(w.message) for w in caught]
    assert torch.equal(runs[0].samples, runs[1].samples)  # eager both times: bit for bit


def test_compile_argument_is_checked_and_kernels_without_a_path_warn():
    x0 = torch.zeros(4, 2)
    kernel = samplers.MALA(quartic, 0.3)
    with pytest.raises(TypeError, match="compile must be True, False or 'auto'"):
        samplers.sample(kernel, x0, 5, progress=False, compile="yes")
    _compile._WARNED.clear()
    imh = samplers.IndependentMH(quartic, torch.distributions.MultivariateNormal(
        torch.zeros(2), torch.eye(2)))
    with pytest.warns(RuntimeWarning, match="has no compiled step path"):
        samplers.sample(imh, x0, 5, progress=False, compile=True)
    # The flag is the run's, not the kernel's: after the run the kernel is eager again.
    samplers.sample(kernel, x0, 5, progress=False, compile=False)
    assert not getattr(kernel, "_compile", False)


def test_auto_stays_eager_for_small_cpu_runs():
    kernel = samplers.MALA(quartic, 0.3)
    from samplers.driver import _compile_choice
    assert _compile_choice("auto", kernel, torch.zeros(64, 2), 10_000) is False
    assert _compile_choice("auto", kernel, torch.zeros(4096, 64), 10_000) is True
    assert _compile_choice("auto", kernel, torch.zeros(4096, 64), 100) is False


# The invariance suite on the compiled path.

def _worst_moment_z(name) -> float:
    """The largest |z| of the compiled chain's moments against the target's."""
    _compile._WARNED.clear()  # a fallback warns once per process: make this run's visible
    g = torch.Generator().manual_seed(10)
    x0 = MEAN + torch.randn(128, D, generator=g)
    trace = samplers.sample(KERNELS[name](), x0, n_steps=600, warmup=300, progress=False,
                            generator=g, compile=True)
    return float(np.abs(moment_zscores(trace.samples, MEAN, COV)).max())


def _smallest_ks_pvalue(name) -> float:
    """Started from exact draws, the smallest KS p-value of the last draws against fresh ones."""
    _compile._WARNED.clear()
    g = torch.Generator().manual_seed(20)
    x0 = TARGET.sample((4000,))
    trace = samplers.sample(KERNELS[name](), x0, n_steps=30, progress=False, generator=g,
                            compile=True)
    return float(two_sample_pvalues(trace.samples[:, -1], TARGET.sample((4000,))).min())


# Not latent_mala: Dynamo cannot trace zuko's pushforward inside the latent log-density as one
# graph ("Failed to convert args/kwargs to proxy"), so its MALA warns and runs eagerly (the
# fallback the test above checks).
COMPILABLE = ["flowmc", "hmc", "mala"]


def test_compiled_mala_reproduces_gaussian_moments(fast_backend):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        worst = _worst_moment_z("mala")
    assert worst < Z_TOL, f"mala: worst z-score {worst:.2f}"


@pytest.mark.slow
@pytest.mark.parametrize("name", COMPILABLE)
def test_compiled_kernel_reproduces_gaussian_moments(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        worst = _worst_moment_z(name)
    assert worst < Z_TOL, f"{name}: worst z-score {worst:.2f}"


@pytest.mark.slow
@pytest.mark.parametrize("name", COMPILABLE)
def test_compiled_kernel_keeps_target_distribution(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        smallest = _smallest_ks_pvalue(name)
    assert smallest > P_TOL, f"{name}: smallest KS p-value {smallest:.2e}"

"""Property-based tests over the samplers' public API: any shape, dtype, chain count (1 included),
event shape (vectors and images) and step size either runs and returns finite draws of the right
shape and dtype, or fails with our own clear ValueError/TypeError."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.distributions import Independent, Normal

import samplers

EXAMPLES = 40
event_shapes = st.one_of(
    st.tuples(st.integers(1, 5)),
    st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 3)),
)
dtypes = st.sampled_from([torch.float32, torch.float64])
step_sizes = st.floats(1e-4, 10.0)


def gaussian(x):
    return -0.5 * x.flatten(1).pow(2).sum(1)


def proposal(event, dtype):
    return Independent(Normal(torch.zeros(event, dtype=dtype), torch.ones(event, dtype=dtype) * 1.5),
                       len(event))


def make_kernel(name, event, dtype, h):
    return {
        "ula": lambda: samplers.ULA(gaussian, h),
        "mala": lambda: samplers.MALA(gaussian, h),
        "hmc": lambda: samplers.HMC(gaussian, h, n_leapfrog=3),
        "imh": lambda: samplers.IndependentMH(gaussian, proposal(event, dtype)),
        "isir": lambda: samplers.ISIR(gaussian, proposal(event, dtype), n_particles=3),
    }[name]()


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(["ula", "mala", "hmc", "imh", "isir"]), chains=st.integers(1, 6),
       event=event_shapes, dtype=dtypes, h=step_sizes, warmup=st.integers(0, 5),
       thin=st.integers(1, 3))
def test_any_valid_configuration_runs_and_keeps_shapes_and_dtype(name, chains, event, dtype, h,
                                                                 warmup, thin):
    kernel = make_kernel(name, event, dtype, h)
    x0 = torch.randn(chains, *event, dtype=dtype)
    trace = samplers.sample(kernel, x0, 6, warmup=warmup, thin=thin, progress=False,
                            generator=torch.Generator().manual_seed(0))
    assert trace.samples.shape == (chains, 6 // thin, *event)
    assert trace.samples.dtype == dtype
    assert torch.isfinite(trace.samples).all()
    assert all(v.shape == (chains, 6 // thin) for v in trace.stats.values())


@settings(max_examples=EXAMPLES, deadline=None)
@given(h=st.one_of(st.floats(max_value=0.0), st.just(float("nan")), st.just(float("inf"))),
       name=st.sampled_from(["ula", "mala", "hmc"]))
def test_invalid_step_sizes_are_value_errors(h, name):
    with pytest.raises(ValueError, match="must be positive and finite"):
        make_kernel(name, (2,), torch.float32, h)


@settings(max_examples=EXAMPLES, deadline=None)
@given(shape=st.lists(st.integers(0, 4), min_size=0, max_size=1).map(tuple),
       name=st.sampled_from(["mala", "imh"]))
def test_positions_without_a_chain_axis_are_value_errors(shape, name):
    kernel = make_kernel(name, (2,), torch.float32, 0.1)
    with pytest.raises(ValueError, match="chains"):
        samplers.sample(kernel, torch.zeros(shape), 5, progress=False)


@settings(max_examples=EXAMPLES, deadline=None)
@given(n_steps=st.integers(-3, 3), thin=st.integers(-1, 4), warmup=st.integers(-2, 2))
def test_run_lengths_are_validated(n_steps, thin, warmup):
    kernel = samplers.MALA(gaussian, 0.1)
    ok = n_steps >= 1 and thin >= 1 and warmup >= 0 and n_steps >= thin
    if ok:
        trace = samplers.sample(kernel, torch.zeros(2, 2), n_steps, warmup=warmup, thin=thin,
                                progress=False)
        assert trace.n_draws == n_steps // thin
    else:
        with pytest.raises(ValueError):
            samplers.sample(kernel, torch.zeros(2, 2), n_steps, warmup=warmup, thin=thin,
                            progress=False)


@settings(max_examples=EXAMPLES, deadline=None)
@given(bad_fraction=st.floats(0.0, 1.0), name=st.sampled_from(["mala", "hmc", "imh", "isir"]),
       kind=st.sampled_from(["nan", "-inf", "+inf"]))
def test_non_finite_regions_never_leak_into_draws(bad_fraction, name, kind):
    value = {"nan": torch.nan, "-inf": -torch.inf, "+inf": torch.inf}[kind]
    # The target is broken on a half-space whose edge moves with bad_fraction; chains start outside.
    edge = 2.0 * bad_fraction

    def broken(x):
        return torch.where(x[:, 0] > edge, value, gaussian(x))

    kernel = {"mala": lambda: samplers.MALA(broken, 0.5), "hmc": lambda: samplers.HMC(broken, 0.3, 3),
              "imh": lambda: samplers.IndependentMH(broken, proposal((2,), torch.float32)),
              "isir": lambda: samplers.ISIR(broken, proposal((2,), torch.float32), 3)}[name]()
    trace = samplers.sample(kernel, torch.full((16, 2), -1.0), 20, progress=False,
                            generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(trace.samples).all() and torch.isfinite(trace.log_prob).all()
    assert (trace.samples[..., 0] <= edge).all()

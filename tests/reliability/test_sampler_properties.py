"""Property-based tests over the samplers' public API: any kernel (FlowMC and latent sampling
included), shape, dtype, chain count (1 included), event shape (vectors and images), step size and
kernel setting either runs and returns finite draws of the right shape and dtype, or fails with our
own clear ValueError/TypeError. Example counts are kept modest (the file runs in well under a
minute); each property's count is its ``max_examples``."""

import tempfile

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.distributions import AffineTransform, Independent, Normal, TransformedDistribution

import samplers

KERNELS = ["ula", "mala", "hmc", "imh", "isir", "flowmc", "latent"]
event_shapes = st.one_of(
    st.tuples(st.integers(1, 5)),
    st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 3)),  # images (C, H, W)
)
dtypes = st.sampled_from([torch.float32, torch.float64])
step_sizes = st.floats(1e-4, 10.0)
flowmc_settings = st.fixed_dictionaries({
    "n_local": st.integers(0, 3), "n_global": st.integers(0, 2),
    "global_move": st.sampled_from(["isir", "imh"]), "n_particles": st.integers(1, 4)})


def quick(examples):
    return settings(max_examples=examples, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def gaussian(x):
    return -0.5 * x.flatten(1).pow(2).sum(1)


def proposal(event, dtype, device="cpu"):
    loc = torch.zeros(event, dtype=dtype, device=device)
    return Independent(Normal(loc, torch.ones_like(loc) * 1.5, validate_args=False), len(event),
                       validate_args=False)


def latent_flow(event, dtype):
    """A bijection on any event shape: x = 1.3 z over a standard Gaussian."""
    base = Independent(Normal(torch.zeros(event, dtype=dtype), torch.ones(event, dtype=dtype)),
                       len(event))
    return TransformedDistribution(base, [AffineTransform(0.0, 1.3, event_dim=len(event))])


def make_kernel(name, event, dtype, h, log_prob=gaussian, flowmc=None):
    flowmc = flowmc or {"n_local": 2, "n_global": 1, "global_move": "isir", "n_particles": 3}
    return {
        "ula": lambda: samplers.ULA(log_prob, h),
        "mala": lambda: samplers.MALA(log_prob, h),
        "hmc": lambda: samplers.HMC(log_prob, h, n_leapfrog=3),
        "imh": lambda: samplers.IndependentMH(log_prob, proposal(event, dtype)),
        "isir": lambda: samplers.ISIR(log_prob, proposal(event, dtype), n_particles=3),
        "flowmc": lambda: samplers.FlowMC(log_prob, proposal(event, dtype), train=False,
                                          local_step_size=h, **flowmc),
        "latent": lambda: samplers.Latent(log_prob, latent_flow(event, dtype),
                                          lambda lp: samplers.MALA(lp, h)),
    }[name]()


@quick(70)
@given(name=st.sampled_from(KERNELS), chains=st.integers(1, 6), event=event_shapes, dtype=dtypes,
       h=step_sizes, warmup=st.integers(0, 5), thin=st.integers(1, 3), flowmc=flowmc_settings)
def test_any_valid_configuration_runs_and_keeps_shapes_and_dtype(name, chains, event, dtype, h,
                                                                 warmup, thin, flowmc):
    kernel = make_kernel(name, event, dtype, h, flowmc=flowmc)
    x0 = torch.randn(chains, *event, dtype=dtype)
    trace = samplers.sample(kernel, x0, 6, warmup=warmup, thin=thin, progress=False,
                            generator=torch.Generator().manual_seed(0))
    assert trace.samples.shape == (chains, 6 // thin, *event)
    assert trace.samples.dtype == trace.log_prob.dtype == dtype
    assert torch.isfinite(trace.samples).all() and torch.isfinite(trace.log_prob).all()
    assert all(v.shape == (chains, 6 // thin) for v in trace.stats.values())
    assert all(torch.isfinite(v.double()).all() for v in trace.stats.values())


@quick(15)
@given(name=st.sampled_from(["flowmc", "latent"]), chains=st.integers(1, 5), dim=st.integers(2, 4),
       dtype=dtypes, warmup=st.integers(0, 4), flowmc=flowmc_settings,
       batch_size=st.integers(1, 64), replay_steps=st.integers(1, 4))
def test_zuko_flows_train_and_sample_in_either_dtype(name, chains, dim, dtype, warmup, flowmc,
                                                     batch_size, replay_steps):
    import zuko

    torch.manual_seed(0)
    flow = zuko.flows.RealNVP(dim, transforms=2).to(dtype)
    if name == "flowmc":
        kernel = samplers.FlowMC(gaussian, flow, batch_size=batch_size, replay_steps=replay_steps,
                                 local_step_size=0.3, **flowmc)
    else:
        kernel = samplers.Latent(gaussian, flow)
    trace = samplers.sample(kernel, torch.randn(chains, dim, dtype=dtype), 4, warmup=warmup,
                            progress=False, generator=torch.Generator().manual_seed(0))
    assert trace.samples.shape == (chains, 4, dim) and trace.samples.dtype == dtype
    assert torch.isfinite(trace.samples).all()
    if name == "flowmc" and warmup > 0:
        assert kernel.flow_losses.shape == (warmup,) and torch.isfinite(kernel.flow_losses).all()


@quick(20)
@given(n_steps=st.integers(1, 40), thin=st.integers(1, 5), chunk_size=st.integers(1, 12),
       name=st.sampled_from(["mala", "isir", "flowmc"]))
def test_streamed_run_equals_in_memory_run(n_steps, thin, chunk_size, name):
    thin = min(thin, n_steps)

    def run(**kw):
        kernel = make_kernel(name, (2,), torch.float32, 0.5)
        return samplers.sample(kernel, torch.zeros(3, 2), n_steps, warmup=2, thin=thin,
                               progress=False, generator=torch.Generator().manual_seed(1), **kw)

    memory = run()
    with tempfile.TemporaryDirectory() as d:
        streamed = run(out=d, chunk_size=chunk_size)
        assert len(streamed.files) == -(-(n_steps // thin) // chunk_size)
        loaded = streamed.load()
    torch.testing.assert_close(loaded.samples, memory.samples, rtol=0, atol=0)
    assert all(torch.equal(loaded.stats[k], memory.stats[k]) for k in memory.stats)


@quick(20)
@given(h=st.one_of(st.floats(max_value=0.0), st.just(float("nan")), st.just(float("inf"))),
       name=st.sampled_from(["ula", "mala", "hmc"]))
def test_invalid_step_sizes_are_value_errors(h, name):
    with pytest.raises(ValueError, match="must be positive and finite"):
        make_kernel(name, (2,), torch.float32, h)


@quick(25)
@given(shape=st.lists(st.integers(0, 4), min_size=0, max_size=1).map(tuple),
       name=st.sampled_from(KERNELS))
def test_positions_without_a_chain_axis_are_value_errors(shape, name):
    kernel = make_kernel(name, (2,), torch.float32, 0.1)
    with pytest.raises(ValueError, match="chains"):
        samplers.sample(kernel, torch.zeros(shape), 5, progress=False)


@quick(30)
@given(name=st.sampled_from(KERNELS), dtype=st.sampled_from(
    [torch.int8, torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64]),
       chains=st.integers(1, 4))
def test_non_float_positions_are_type_errors(name, dtype, chains):
    kernel = make_kernel(name, (2,), torch.float32, 0.1)
    with pytest.raises(TypeError, match=f"floating-point tensor; got dtype {dtype}"):
        samplers.sample(kernel, torch.zeros(chains, 2, dtype=dtype), 5, progress=False)


@quick(30)
@given(name=st.sampled_from(KERNELS), bad=st.sampled_from([float("nan"), float("inf"), -float("inf")]),
       chains=st.integers(1, 4), data=st.data())
def test_positions_with_nan_or_inf_are_value_errors(name, bad, chains, data):
    x0 = torch.zeros(chains, 2)
    x0[data.draw(st.integers(0, chains - 1)), data.draw(st.integers(0, 1))] = bad
    with pytest.raises(ValueError, match="x0 contains NaN or infinite values"):
        samplers.sample(make_kernel(name, (2,), torch.float32, 0.1), x0, 5, progress=False)


@quick(30)
@given(name=st.sampled_from(["imh", "isir", "flowmc", "latent"]),
       mismatch=st.sampled_from(["dtype", "device", "event"]), x_dtype=dtypes)
def test_proposal_not_matching_the_chains_is_our_own_error(name, mismatch, x_dtype):
    other = torch.float64 if x_dtype == torch.float32 else torch.float32
    if mismatch == "event":
        q, error, message = proposal((3,), x_dtype), ValueError, r"event shape \(2,\); it draws \(3,\)"
    elif mismatch == "dtype":
        q, error, message = proposal((2,), other), TypeError, f"it draws \\({other}, cpu\\)"
    else:  # a proposal on another device ("meta" stands for a GPU on a CPU-only machine)
        q, error, message = proposal((2,), x_dtype, "meta"), TypeError, f"it draws \\({x_dtype}, meta\\)"
    kernel = {"imh": lambda: samplers.IndependentMH(gaussian, q),
              "isir": lambda: samplers.ISIR(gaussian, q, 3),
              "flowmc": lambda: samplers.FlowMC(gaussian, q, train=False),
              "latent": lambda: samplers.Latent(gaussian, q)}[name]()
    if name == "latent" and mismatch != "event":
        kernel.flow = TransformedDistribution(q, [AffineTransform(0.0, 1.3, event_dim=1)])
    with pytest.raises(error, match=message):
        samplers.sample(kernel, torch.zeros(3, 2, dtype=x_dtype), 5, progress=False)


@quick(30)
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


@quick(30)
@given(n_local=st.integers(-2, 2), n_global=st.integers(-2, 2), n_particles=st.integers(-1, 2),
       batch_size=st.integers(-1, 2))
def test_flowmc_settings_are_validated(n_local, n_global, n_particles, batch_size):
    ok = n_local >= 0 and n_global >= 0 and n_particles >= 1 and batch_size >= 1

    def build():
        return samplers.FlowMC(gaussian, proposal((2,), torch.float32), n_local=n_local,
                               n_global=n_global, n_particles=n_particles, batch_size=batch_size,
                               train=False)

    if ok:
        build()
    else:
        with pytest.raises(ValueError, match="must be an int >="):
            build()


@quick(40)
@given(bad_fraction=st.floats(0.0, 1.0), name=st.sampled_from(KERNELS),
       kind=st.sampled_from(["nan", "-inf", "+inf"]))
def test_non_finite_regions_never_leak_into_draws(bad_fraction, name, kind):
    value = {"nan": torch.nan, "-inf": -torch.inf, "+inf": torch.inf}[kind]
    # The target is broken on a half-space whose edge moves with bad_fraction; chains start outside.
    edge = 2.0 * bad_fraction

    def broken(x):
        return torch.where(x[:, 0] > edge, value, gaussian(x))

    h = 0.3 if name == "hmc" else 0.5
    kernel = make_kernel(name, (2,), torch.float32, h, log_prob=broken)
    trace = samplers.sample(kernel, torch.full((16, 2), -1.0), 20, progress=False,
                            generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(trace.samples).all() and torch.isfinite(trace.log_prob).all()
    assert (trace.samples[..., 0] <= edge).all()

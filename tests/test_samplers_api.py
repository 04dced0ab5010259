"""The samplers' public boundary: clear errors on bad input, NaN-safe moves, reproducibility,
traces that round-trip through .npz and ArviZ."""

import math

import numpy as np
import pytest
import torch
from torch.distributions import MultivariateNormal

import samplers


def std_normal(x):
    return -0.5 * x.flatten(1).pow(2).sum(1)


def test_non_callable_target_is_a_type_error():
    with pytest.raises(TypeError, match="log_prob must be a callable"):
        samplers.MALA(3.0, 0.1)


@pytest.mark.parametrize("bad", [0.0, -0.1, float("nan"), float("inf")])
def test_non_positive_step_size_is_a_value_error(bad):
    with pytest.raises(ValueError, match="step_size must be positive"):
        samplers.MALA(std_normal, bad)
    with pytest.raises(ValueError, match="step_size must be positive"):
        samplers.HMC(std_normal, bad)
    with pytest.raises(ValueError, match="step_size must be positive"):
        samplers.ULA(std_normal, bad)


def test_wrong_x0_shape_names_expected_and_received():
    kernel = samplers.MALA(std_normal, 0.1)
    with pytest.raises(ValueError, match=r"\(chains, \*event\).*got shape \(3,\)"):
        samplers.sample(kernel, torch.zeros(3), 10, progress=False)
    with pytest.raises(TypeError, match="torch.Tensor"):
        samplers.sample(kernel, np.zeros((3, 2)), 10, progress=False)


def test_log_prob_of_wrong_shape_is_reported():
    kernel = samplers.MALA(lambda x: -0.5 * x.pow(2), 0.1)  # forgot the sum: (n, d) not (n,)
    with pytest.raises(ValueError, match=r"shape \(4,\).*got shape \(4, 2\)"):
        kernel.init(torch.zeros(4, 2))


def test_bad_arguments_to_sample_and_kernels():
    kernel = samplers.MALA(std_normal, 0.1)
    with pytest.raises(ValueError, match="n_steps must be an int >= 1"):
        samplers.sample(kernel, torch.zeros(2, 2), 0, progress=False)
    with pytest.raises(TypeError, match="kernel must be a samplers Kernel"):
        samplers.sample(std_normal, torch.zeros(2, 2), 5, progress=False)
    with pytest.raises(ValueError, match="global_move must be 'isir' or 'imh'"):
        samplers.FlowMC(std_normal, MultivariateNormal(torch.zeros(2), torch.eye(2)),
                        global_move="nuts", train=False)
    with pytest.raises(TypeError, match="train=True needs a flow"):
        samplers.FlowMC(std_normal, MultivariateNormal(torch.zeros(2), torch.eye(2)))
    with pytest.raises(TypeError, match="proposal must be"):
        samplers.IndependentMH(std_normal, "flow")
    with pytest.raises(ValueError, match="target_accept"):
        samplers.MALA(std_normal, 0.1, target_accept=1.5)


def test_start_outside_support_is_reported():
    def half(x):
        return torch.where(x[:, 0] > 0, std_normal(x), -torch.inf)

    with pytest.raises(ValueError, match="not finite for 1 of 2 chains"):
        samplers.MALA(half, 0.1).init(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))


def _nan_left_half(x):
    lp = std_normal(x)
    return torch.where(x[:, 0] < -0.5, torch.nan, lp)


@pytest.mark.parametrize("make", [
    lambda: samplers.MALA(_nan_left_half, 1.0),
    lambda: samplers.HMC(_nan_left_half, 0.5, 5),
    lambda: samplers.ULA(_nan_left_half, 1.0),
    lambda: samplers.IndependentMH(_nan_left_half, MultivariateNormal(torch.zeros(2), torch.eye(2))),
    lambda: samplers.ISIR(_nan_left_half, MultivariateNormal(torch.zeros(2), torch.eye(2)), 4),
])
def test_nan_log_prob_is_a_counted_rejection(make):
    g = torch.Generator().manual_seed(0)
    trace = samplers.sample(make(), torch.full((64, 2), 0.5), 50, progress=False, generator=g)
    assert torch.isfinite(trace.samples).all()
    assert torch.isfinite(trace.log_prob).all()
    assert (trace.samples[..., 0] >= -0.5).all()
    assert trace.stats["invalid"].sum() > 0


def test_nan_gradient_is_a_counted_rejection():
    def bad_grad(x):
        # log-density finite everywhere, but its gradient is NaN where x0 > 1 (0 * d sqrt at 0).
        # The sqrt sees 1 elsewhere: where() sends a zero gradient into the unused branch, and
        # 0 * inf there would make the gradient NaN everywhere (the chains would never move).
        far = x[:, 0] > 1
        return std_normal(x) + torch.where(far, torch.sqrt(torch.where(far, x[:, 1] * 0.0, 1.0)), 0.0)

    g = torch.Generator().manual_seed(0)
    trace = samplers.sample(samplers.MALA(bad_grad, 1.0), torch.zeros(64, 2), 50,
                            progress=False, generator=g)
    assert (trace.samples[..., 0] <= 1).all()
    assert trace.stats["invalid"].sum() > 0
    assert trace.stats["accepted"].float().mean() > 0.2  # the chains do move where all is finite


def test_same_generator_seed_gives_same_chain():
    def run(seed):
        g = torch.Generator().manual_seed(seed)
        q = MultivariateNormal(torch.zeros(3), 2 * torch.eye(3))
        return samplers.sample(samplers.ISIR(std_normal, q, 4), torch.zeros(8, 3), 20,
                               warmup=5, progress=False, generator=g).samples

    torch.testing.assert_close(run(1), run(1), rtol=0, atol=0)
    assert not torch.equal(run(1), run(2))


def test_trace_shapes_thinning_and_image_events():
    trace = samplers.sample(samplers.MALA(std_normal, 0.3), torch.zeros(5, 1, 4, 4), 30, thin=3,
                            progress=False)
    assert trace.samples.shape == (5, 10, 1, 4, 4)
    assert trace.log_prob.shape == (5, 10)
    assert set(trace.stats) >= {"accept_prob", "accepted", "step_size", "invalid"}
    assert all(v.shape == (5, 10) for v in trace.stats.values())
    assert trace.wall_time > 0


def test_trace_round_trips_through_npz(tmp_path):
    trace = samplers.sample(samplers.MALA(std_normal, 0.3), torch.randn(4, 2), 20, warmup=5,
                            progress=False)
    path = trace.save(tmp_path / "t.npz")
    back = samplers.Trace.load(path)
    torch.testing.assert_close(back.samples, trace.samples, rtol=0, atol=0)
    torch.testing.assert_close(back.log_prob, trace.log_prob, rtol=0, atol=0)
    assert back.stats.keys() == trace.stats.keys()
    assert (back.wall_time, back.warmup, back.kernel) == (trace.wall_time, 5, trace.kernel)
    assert [p.name for p in tmp_path.iterdir()] == ["t.npz"]  # no temp file left behind


def test_trace_load_refuses_pickles_and_garbage(tmp_path):
    np.savez(tmp_path / "pickled.npz", samples=np.array([{"a": 1}], dtype=object))
    (tmp_path / "garbage.npz").write_bytes(b"not a zip file")
    np.savez(tmp_path / "foreign.npz", a=np.zeros(3))
    for name in ["pickled.npz", "garbage.npz", "foreign.npz"]:
        with pytest.raises(ValueError, match=f"cannot read trace .*{name}"):
            samplers.Trace.load(tmp_path / name)


def test_trace_to_arviz_has_draws_and_stats():
    trace = samplers.sample(samplers.MALA(std_normal, 0.3), torch.randn(4, 3), 20, progress=False)
    idata = trace.to_arviz()
    assert idata.posterior["x"].shape == (4, 20, 3)
    np.testing.assert_allclose(idata.sample_stats["lp"].values, trace.log_prob.numpy())
    assert "accept_prob" in idata.sample_stats


def test_mala_warmup_tunes_each_chain_toward_target_accept():
    # Chains in modes of very different widths need different steps.
    scales = torch.tensor([0.1] * 32 + [3.0] * 32)

    def lp(x):
        return -0.5 * (x / scales[: x.shape[0], None]).pow(2).sum(1)

    g = torch.Generator().manual_seed(0)
    trace = samplers.sample(samplers.MALA(lp, 0.5), torch.zeros(64, 2), 400, warmup=500,
                            progress=False, generator=g)
    h = trace.stats["step_size"]
    assert (h == h[:, :1]).all()  # frozen after warm-up
    assert h[:32, 0].max() < h[32:, 0].min()
    acc = trace.stats["accept_prob"].mean(1)
    # 400 draws per chain: acceptance averages of a tuned chain sit near 0.574.
    assert ((acc - 0.574).abs() < 0.15).all()


def test_latent_sampling_reports_target_space_positions():
    import zuko

    flow = zuko.flows.RealNVP(2, transforms=2)
    kernel = samplers.Latent(std_normal, flow)
    state = kernel.init(torch.randn(6, 2))
    torch.testing.assert_close(state.log_prob, std_normal(state.x))
    state, _ = kernel.step(state)
    torch.testing.assert_close(state.log_prob, std_normal(state.x), atol=1e-4, rtol=1e-4)


def test_flowmc_records_the_flow_training_loss_and_freezes_the_flow_after_warmup():
    import zuko

    torch.manual_seed(0)
    flow = zuko.flows.RealNVP(2, transforms=2)
    kernel = samplers.FlowMC(lambda x: -0.5 * (x - 3).pow(2).sum(1), flow, n_local=1, flow_lr=1e-2,
                             batch_size=256)
    g = torch.Generator().manual_seed(0)
    samplers.sample(kernel, torch.randn(64, 2), 5, warmup=100, progress=False, generator=g)
    losses = kernel.flow_losses
    assert losses.shape == (100,)
    # The flow learns the chains' law N(3, I): its NLL falls to near that law's entropy, log(2πe).
    assert losses[-10:].mean() < losses[:10].mean() - 0.5
    assert abs(losses[-10:].mean() - math.log(2 * math.pi * math.e)) < 0.3
    frozen = [p.detach().clone() for p in flow.parameters()]
    samplers.sample(kernel, torch.randn(64, 2) + 3, 20, progress=False, generator=g)
    assert all(torch.equal(a, b) for a, b in zip(frozen, flow.parameters(), strict=True))


def test_non_finite_start_raises_the_typed_error():
    # Callers that recover (the trainer's guard) catch this type; it stays a ValueError for others.
    from samplers import MALA, NonFiniteError

    def log_prob(x):
        return torch.where(x[:, 0] > 0, torch.nan, -0.5 * (x**2).sum(1))

    x0 = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    with pytest.raises(NonFiniteError, match="not finite for 1 of 2 chains"):
        MALA(log_prob, 0.1).init(x0)
    with pytest.raises(NonFiniteError, match="NaN or infinite"):
        MALA(log_prob, 0.1).init(torch.tensor([[float("nan"), 0.0]]))
    assert issubclass(NonFiniteError, ValueError)

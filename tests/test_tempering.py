"""Parallel tempering: exact at β = 1, finds every mode of a mixture from a broad start, estimates
log Z within its standard error, and refuses bad input with clear messages.

Tolerances: moments within 4 Monte-Carlo standard errors (ESS-based, `tests.stats`); mode weights
within 4 MCSEs of the indicator means; log Z within 3 of its own standard errors.
"""

import math
import warnings

import numpy as np
import pytest
import torch
from torch.distributions import Independent, Normal

import samplers
import samplers.tempering as tempering
from samplers.schedule import cumulative_barrier, optimal_schedule, replicas_for_barrier
from tests.stats import moment_zscores
from tests.test_samplers_invariance import COV, MEAN, D  # the kernels' shared 5-D Gaussian
from tests.test_samplers_invariance import TARGET as GAUSS

Z_TOL = 4.0


def broad(d, scale=6.0):
    return Independent(Normal(torch.zeros(d), scale * torch.ones(d)), 1)


class Mixture:
    """Isotropic Gaussian mixture times ``exp(log_c)``: ``log Z = log_c`` exactly."""

    def __init__(self, centers, sds, weights, log_c=0.0):
        self.centers, self.sds = torch.as_tensor(centers), torch.as_tensor(sds)
        self.weights, self.log_c = torch.as_tensor(weights), log_c
        self.d = self.centers.shape[1]

    def component_log_prob(self, x):
        z = (x.unsqueeze(1) - self.centers) / self.sds.unsqueeze(1)
        return (-0.5 * z.pow(2).sum(-1) - self.d * self.sds.log()
                - 0.5 * self.d * math.log(2 * math.pi) + self.weights.log())

    def __call__(self, x):
        return torch.logsumexp(self.component_log_prob(x), 1) + self.log_c

    def assign(self, x):
        flat = x.reshape(-1, self.d)
        return self.component_log_prob(flat).argmax(-1).view(x.shape[:-1])


def three_modes(d, log_c=0.0):
    centers = torch.zeros(3, d)
    centers[0, 0], centers[1, 0], centers[2, 1] = 8.0, -8.0, 8.0
    return Mixture(centers, [1.0, 0.3, 0.5], [0.5, 0.3, 0.2], log_c)


def run(kernel, x0, n_steps, warmup, seed):
    g = torch.Generator().manual_seed(seed)
    return samplers.sample(kernel, x0, n_steps=n_steps, warmup=warmup, progress=False, generator=g)


@pytest.mark.parametrize("local", [None, lambda lp: samplers.MALA(lp, 0.1)],
                         ids=["path_mala", "any_kernel"])
def test_parallel_tempering_leaves_gaussian_invariant_at_beta_one(local):
    # The default local kernel keeps both log-densities in its state; any other kernel gets them
    # from one more evaluation per step: both paths must be exact. The first runs from the
    # reference the mode search builds (the default), the second from the broad one alone.
    x0 = MEAN + torch.randn(64, D, generator=torch.Generator().manual_seed(0))
    kernel = samplers.ParallelTempering(GAUSS.log_prob, broad(D, 4.0), n_replicas=4, local=local,
                                        mode_search=1024 if local is None else 0)
    trace = run(kernel, x0, 600, 300, seed=10)
    z = moment_zscores(trace.samples, MEAN, COV)
    assert np.abs(z).max() < Z_TOL, f"worst z-score {np.abs(z).max():.2f}"


def test_moment_check_catches_a_swap_ratio_with_the_sign_flipped(monkeypatch):
    # A swap ratio with ℓ(x_k) and ℓ(x_{k+1}) exchanged favours moving hot positions to β = 1:
    # the same check as above must fail.
    monkeypatch.setattr(tempering, "swap_log_ratio", lambda db, lo, hi: db * (hi - lo))
    x0 = MEAN + torch.randn(64, D, generator=torch.Generator().manual_seed(0))
    kernel = samplers.ParallelTempering(GAUSS.log_prob, broad(D, 4.0), n_replicas=4)
    trace = run(kernel, x0, 600, 300, seed=10)
    z = moment_zscores(trace.samples, MEAN, COV)
    assert np.abs(z).max() > Z_TOL


def test_defaults_find_every_mode_from_a_broad_start_and_estimate_log_z():
    target = three_modes(2, log_c=3.7)
    x0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))  # all near the origin
    kernel = samplers.ParallelTempering(target, broad(2, 10.0))
    trace = run(kernel, x0, 800, 400, seed=2)
    labels = target.assign(trace.samples)  # (chains, draws)
    # Chains are independent ladders: the SE of a weight is the spread of the chains' occupancies.
    occupancy = torch.stack([(labels == m).double().mean(1) for m in range(3)], 1)  # (chains, 3)
    se = occupancy.std(0) / math.sqrt(occupancy.shape[0])
    err = (occupancy.mean(0) - target.weights.double()).abs()
    assert bool((err < 4 * se + 1e-3).all()), f"weight errors {err.tolist()} vs SE {se.tolist()}"
    log_z, log_z_se = kernel.log_normalizer()
    assert log_z_se <= 0.05, log_z_se
    assert abs(log_z - 3.7) <= 3 * log_z_se, (log_z, log_z_se)
    # The mode search found the three basins and the ladder runs from a reference built on them:
    # a low barrier, many round trips, nothing flagged.
    assert kernel.basins.n == 3 and kernel.barrier < 1.0 and kernel.round_trip_rate > 10
    assert kernel.check() == [] and not kernel.missing_mass
    assert trace.stats["swap_accept"].shape == (16, 800)
    # Per pair and chain, the running mean since warm-up: at the last draw, averaged over the
    # chains, it is the kernel's rate per pair.
    pairs = trace.stats["swap_accept_pairs"]
    assert pairs.shape == (16, 800, kernel.n_replicas - 1)
    torch.testing.assert_close(pairs[:, -1].double().mean(0), kernel.swap_accept_rates(),
                               rtol=1e-4, atol=1e-6)
    # Per draw, the basin each chain's β = 1 replica is in.
    torch.testing.assert_close(trace.stats["basin"].long(), kernel.basins.assign(
        trace.samples.reshape(-1, 2)).view(16, 800))
    assert bool((trace.stats["round_trips"].diff(dim=1) >= 0).all())


def pt_warnings(kernel, x0, n_steps, warmup, seed):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trace = run(kernel, x0, n_steps, warmup, seed)
        log_z = kernel.log_normalizer()
    return trace, log_z, [str(c.message) for c in caught if "parallel tempering" in str(c.message)]


def test_narrow_modes_lost_by_a_fixed_reference_are_flagged():
    # Modes 3x and 2x narrower in all 8 coordinates: tempering from the broad reference alone
    # keeps none of the 0.3 mode (its weight at β is ∝ 0.3^(8(1−β))), and its log Z is off by
    # about 0.6 with an SE of 0.1. The mode search found that basin; the check must say so.
    target = three_modes(8, log_c=1.5)
    x0 = torch.randn(8, 8, generator=torch.Generator().manual_seed(0))
    kernel = samplers.ParallelTempering(target, broad(8, 10.0), adapt_reference=False)
    trace, _, messages = pt_warnings(kernel, x0, 300, 300, seed=10)
    share = (target.assign(trace.samples) == 1).double().mean()
    assert share < 0.05, share  # the failure is there ...
    assert kernel.basins.n == 3 and kernel.missing_mass  # ... and is reported
    assert any("do not populate" in m and "basin" in m for m in messages), messages


def test_reference_built_from_the_mode_search_recovers_narrow_modes_and_log_z():
    # The same target with the default (adapted) reference: weights within 4 SE of the chains'
    # occupancies, stepping-stone and importance log Z within 3 of their SEs, nothing flagged.
    target = three_modes(8, log_c=1.5)
    x0 = torch.randn(8, 8, generator=torch.Generator().manual_seed(0))
    kernel = samplers.ParallelTempering(target, broad(8, 10.0))
    trace, (log_z, se), messages = pt_warnings(kernel, x0, 300, 300, seed=10)
    labels = target.assign(trace.samples)
    occupancy = torch.stack([(labels == m).double().mean(1) for m in range(3)], 1)
    occ_se = occupancy.std(0) / math.sqrt(occupancy.shape[0])
    err = (occupancy.mean(0) - target.weights.double()).abs()
    assert bool((err < 4 * occ_se + 1e-3).all()), (err.tolist(), occ_se.tolist())
    assert se <= 0.05 and abs(log_z - 1.5) <= 3 * se, (log_z, se)
    is_z, is_se = kernel.importance_log_normalizer()
    assert abs(is_z - 1.5) <= 3 * is_se, (is_z, is_se)
    assert messages == [] and not kernel.missing_mass
    # The adapted reference is part of the kernel's saved parameters (a resumed run uses it).
    fresh = samplers.ParallelTempering(target, broad(8, 10.0))
    assert fresh.load_params_state_dict(kernel.params_state_dict())
    assert type(fresh.reference).__name__ == "ModeMixture" and fresh.basins.n == 3
    torch.testing.assert_close(fresh.reference.log_prob(x0), kernel.reference.log_prob(x0))


def test_mala_alone_misses_the_modes_that_tempering_finds():
    # The control for the test above: the same start and budget without tempering stays put.
    target = three_modes(2)
    x0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))
    trace = run(samplers.MALA(target, 0.1), x0, 1000, 500, seed=2)
    weights = torch.bincount(target.assign(trace.samples).flatten(), minlength=3) / (16 * 1000)
    assert (weights - target.weights).abs().max() > 0.1


def test_nan_log_density_at_replicas_is_rejected_and_counted():
    def holed(x):  # NaN on a half-plane that the broad reference visits often
        lp = -0.5 * x.pow(2).sum(-1)
        return torch.where(x[:, 0] > 3.0, torch.nan, lp)

    kernel = samplers.ParallelTempering(holed, broad(2, 5.0), n_replicas=5)
    trace = run(kernel, torch.zeros(8, 2), 300, 100, seed=3)
    assert bool(torch.isfinite(trace.samples).all()) and bool((trace.samples[..., 0] <= 3.0).all())
    assert int(trace.stats["invalid"].sum()) > 0
    assert float(kernel.last_state.invalid_sum.sum()) > 0


def test_same_generator_same_chains_and_streaming_matches_memory(tmp_path):
    target = three_modes(2)

    def go(**kw):
        kernel = samplers.ParallelTempering(target, broad(2, 10.0), n_replicas=6)
        g = torch.Generator().manual_seed(5)
        return samplers.sample(kernel, torch.zeros(4, 2), 60, warmup=40, progress=False,
                               generator=g, **kw)

    a, b = go(), go()
    torch.testing.assert_close(a.samples, b.samples, rtol=0, atol=0)
    streamed = go(out=tmp_path / "run", chunk_size=25).load()
    torch.testing.assert_close(streamed.samples, a.samples, rtol=0, atol=0)
    torch.testing.assert_close(streamed.stats["round_trips"], a.stats["round_trips"])


def test_any_kernel_factory_serves_as_local_kernel():
    kernel = samplers.ParallelTempering(GAUSS.log_prob, broad(D, 4.0), n_replicas=3,
                                        local=lambda lp: samplers.HMC(lp, 0.1, n_leapfrog=4))
    trace = run(kernel, MEAN.expand(8, D).clone(), 50, 20, seed=4)
    assert trace.samples.shape == (8, 50, D) and bool(torch.isfinite(trace.samples).all())


def test_schedule_tuning_equalizes_rejection_per_gap():
    # Rejection proportional to a known barrier density λ(β) = 3β²: the optimal schedule puts
    # β_k at Λ^{-1}(Λ k/(K−1)) with Λ(β) = β³, i.e. β_k = (k/(K−1))^{1/3}.
    betas = np.linspace(0, 1, 41)
    rejection = np.diff(betas**3)
    new = optimal_schedule(betas, rejection, 6)
    np.testing.assert_allclose(new, (np.arange(6) / 5) ** (1 / 3), atol=2e-3)
    assert cumulative_barrier(betas, rejection)[-1] == pytest.approx(1.0)
    assert replicas_for_barrier(0.1) == 4 and replicas_for_barrier(5.0) == 21


@pytest.mark.parametrize("make, match", [
    (lambda: samplers.ParallelTempering(GAUSS.log_prob, broad(3)), "event"),
    (lambda: samplers.ParallelTempering(GAUSS.log_prob, Normal(torch.zeros(D), 1.0)), "Independent"),
    (lambda: samplers.ParallelTempering(GAUSS.log_prob, object()), "log_prob"),
    (lambda: samplers.ParallelTempering(GAUSS.log_prob, broad(D), n_replicas=1), ">= 2"),
    (lambda: samplers.ParallelTempering(GAUSS.log_prob, broad(D), betas=[0.0, 0.7, 0.5, 1.0]),
     "increase"),
])
def test_bad_reference_or_ladder_is_refused_clearly(make, match):
    with pytest.raises((TypeError, ValueError), match=match):
        make().init(torch.zeros(4, D))


@pytest.mark.slow
@pytest.mark.parametrize("d, se_max", [(10, 0.05), (50, None)])
def test_log_z_within_three_standard_errors_in_higher_dimension(d, se_max):
    # Equal-width modes: a mixture whose modes differ in width in every coordinate is the geometric
    # path's known failure (docs/tempering.md) and is not what this checks.
    centers = torch.zeros(3, d)
    centers[0, 0], centers[1, 0], centers[2, 1] = 8.0, -8.0, 8.0
    target = Mixture(centers, [1.0, 1.0, 1.0], [0.5, 0.3, 0.2], log_c=2.5)
    kernel = samplers.ParallelTempering(target, broad(d, 10.0))
    x0 = torch.randn(16, d, generator=torch.Generator().manual_seed(7))
    run(kernel, x0, 2000, 1000, seed=8)
    log_z, se = kernel.log_normalizer()
    assert abs(log_z - 2.5) <= 3 * se, (log_z, se)
    if se_max is not None:
        assert se <= se_max, se


class TwoShapes:
    """A Student-t mode (df 3, weight 0.3) and a banana (twisted Gaussian, weight 0.7) in 4-D, each
    normalized: modes whose Laplace weights are off (0.15 / 0.85 measured), a check for false
    alarms and for a reference that is not the target's own mixture."""

    def __init__(self, d=4):
        from torch.distributions import StudentT
        self.d = d
        self.t = Independent(StudentT(3.0, torch.full((d,), -6.0), torch.full((d,), 0.5)), 1)
        self.weights = torch.tensor([0.3, 0.7])

    def banana(self, x):
        y1 = x[..., 0] - 6.0
        y2 = x[..., 1] + 0.3 * (y1.pow(2) - 4.0)  # unit Jacobian: still normalized
        return (-0.5 * ((y1 / 2.0).pow(2) + (y2 / 0.5).pow(2) + x[..., 2:].pow(2).sum(-1))
                - 0.5 * self.d * math.log(2 * math.pi))

    def components(self, x):
        return torch.stack([self.t.log_prob(x), self.banana(x)], -1) + self.weights.log()

    def __call__(self, x):
        return torch.logsumexp(self.components(x), -1)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_false_alarm_and_right_weights_on_non_gaussian_modes(seed):
    target = TwoShapes()
    x0 = 2.0 * torch.randn(16, 4, generator=torch.Generator().manual_seed(seed))
    kernel = samplers.ParallelTempering(target, broad(4, 10.0))
    trace, (log_z, se), messages = pt_warnings(kernel, x0, 1500, 800, seed=seed + 20)
    labels = target.components(trace.samples).argmax(-1)
    share = (labels == 0).double().mean(1)  # per chain (independent ladders)
    err = abs(float(share.mean()) - 0.3)
    se_w = float(share.std()) / math.sqrt(share.numel())
    assert err < 4 * se_w + 1e-3, (float(share.mean()), se_w)
    assert abs(log_z) <= 3 * se, (log_z, se)
    # Both modes found; the curved one may come out as two basins (seed 2: 3 of 1024 starts
    # stopped elsewhere on the banana's ridge), which must not raise a false alarm either.
    assert messages == [] and kernel.basins.n >= 2


def test_path_components_from_one_backward_match_separate_gradients():
    """`TemperedPath.components` takes both gradients from one backward pass (two leaves); they
    must be each density's own gradient, and `PathMALA.step_with`'s extra rows (the fresh
    reference draws) must get the components there. (Summing the two densities on one leaf, the
    obvious wrong shortcut, gives gt = gr = their sum: this test fails on it.)"""
    from samplers._checks import evaluate
    from samplers.tempered_path import PathMALA, TemperedPath

    target = Mixture([[3.0, 0.0], [-3.0, 1.0]], [0.7, 1.3], [0.4, 0.6])
    path = TemperedPath(target, broad(2))
    x = torch.randn(7, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 3
    lt, lr, gt, gr = path.components(x, True)
    lt0, gt0 = evaluate(target, x, True)
    lr0, gr0 = evaluate(path.ref_log_prob, x, True)
    for a, b in ((lt, lt0), (lr, lr0), (gt, gt0), (gr, gr0)):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(gt, gr)
    kernel = PathMALA(path, 0.1)
    path.row_beta = torch.full((7,), 0.5, dtype=torch.float64)
    state = kernel.init(x)
    extra = x.flip(0) + 1.0
    _, _, at_extra = kernel.step_with(state, torch.Generator().manual_seed(0), extra)
    for a, b in zip(at_extra, path.components(extra, True), strict=True):
        torch.testing.assert_close(a, b)

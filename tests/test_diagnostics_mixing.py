"""Mixing diagnostics on chains whose truth is known: i.i.d. draws, AR(1) chains, stuck chains."""

import json
import types
import warnings

import numpy as np
import pytest
import torch
from scipy.signal import lfilter

from flowmc_ebm.diagnostics import max_rhat, mixing

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az


def ar1(rho, chains, draws, dim, seed):
    """Stationary Gaussian AR(1) chains `x_t = rho x_{t-1} + e_t`, `(chains, draws, dim)`."""
    noise = np.random.default_rng(seed).normal(size=(chains, draws, dim))
    noise[:, 0] /= np.sqrt(1 - rho**2)  # start in the stationary law, so no warm-up is needed
    return lfilter([1.0], [1.0, -rho], noise, axis=1)


def test_independent_normal_draws_have_rhat_one_and_ess_near_draws():
    chains, draws = 4, 2000
    x = np.random.default_rng(0).normal(size=(chains, draws, 3))
    m = mixing(x)
    n = chains * draws
    assert m.max_rhat < 1.01
    assert m.converged
    # Relative sd of ArviZ's ESS estimate is ~3% here (measured over seeds); 15% is ~5 sd.
    np.testing.assert_allclose(m.ess_bulk / n, 1.0, atol=0.15)
    np.testing.assert_allclose(m.iat, 1.0, atol=0.15)
    # MCSE of the mean of unit-variance i.i.d. draws is 1/sqrt(n).
    np.testing.assert_allclose(m.mcse_mean * np.sqrt(n), 1.0, atol=0.1)


@pytest.mark.parametrize(("rho", "draws"), [(0.5, 40_000), (0.9, 100_000)])
def test_ar1_ess_matches_theory(rho, draws):
    chains = 4
    x = ar1(rho, chains, draws, 2, seed=1)
    m = mixing(x)
    n = chains * draws
    theory = n * (1 - rho) / (1 + rho)
    # Over 20 seeds at a quarter of these lengths the ratio had mean 0.99 and sd 0.03-0.04,
    # so here its sd is <= 0.02 and 10% is a 5-sd band.
    np.testing.assert_allclose(m.ess_bulk / theory, 1.0, atol=0.10)
    np.testing.assert_allclose(n / m.iat / theory, 1.0, atol=0.10)
    np.testing.assert_allclose(m.iat, (1 + rho) / (1 - rho), rtol=0.10)


def test_mixing_agrees_with_arviz_called_directly():
    x = ar1(0.7, 3, 500, 3, seed=2)
    m = mixing(x)
    for d in range(3):
        xd = x[:, :, d]
        assert m.rhat[d] == pytest.approx(az.rhat(xd), rel=1e-6)
        assert m.ess_bulk[d] == pytest.approx(az.ess(xd, method="bulk"), rel=1e-6)
        assert m.ess_tail[d] == pytest.approx(az.ess(xd, method="tail"), rel=1e-6)
        assert m.mcse_mean[d] == pytest.approx(az.mcse(xd, method="mean"), rel=1e-6)
        assert m.iat[d] == pytest.approx(xd.size / az.ess(xd, method="mean"), rel=1e-6)
    assert max_rhat(x) == pytest.approx(max(az.rhat(x[:, :, d]) for d in range(3)), rel=1e-6)


def test_chains_stuck_in_different_modes_have_large_rhat():
    rng = np.random.default_rng(3)
    centers = np.array([-3.0, -3.0, 3.0, 3.0])[:, None, None]
    x = centers + 0.5 * rng.normal(size=(4, 500, 2))
    m = mixing(x)
    # Rank normalization bounds R-hat even for fully separated chains (about 1.73 here).
    assert m.max_rhat > 1.5
    assert not m.converged
    assert "NOT MIXED" in str(m)


def test_trace_stats_give_acceptance_and_ess_per_second():
    rng = np.random.default_rng(4)
    samples = torch.from_numpy(rng.normal(size=(4, 300, 2))).float()
    accept = torch.rand(4, 300, generator=torch.Generator().manual_seed(0))
    global_accept = torch.full((4, 300), float("nan"))
    global_accept[:, ::10] = 0.25  # the global move runs every 10th step only
    trace = types.SimpleNamespace(
        samples=samples,
        log_prob=torch.zeros(4, 300),
        stats={
            "accept_prob": accept,
            "global_accept_prob": global_accept,
            "accepted": accept > 0.5,
        },
        wall_time=2.0,
    )
    m = mixing(trace)
    assert m.acceptance["accept_prob"] == pytest.approx(float(accept.double().mean()))
    assert m.acceptance["global_accept_prob"] == pytest.approx(0.25)
    assert "local_accept_prob" not in m.acceptance
    assert m.stat_means["accepted"] == pytest.approx(float((accept > 0.5).double().mean()))
    np.testing.assert_allclose(m.ess_per_second, m.ess_bulk / 2.0)
    summary = json.loads(json.dumps(m.to_dict()))
    assert summary["min_ess_per_second"] == pytest.approx(m.min_ess_bulk / 2.0)
    assert "ESS/s" in m.table() and "global_accept_prob 0.250" in m.table()


def test_event_axes_are_flattened_and_tensors_accepted():
    x = torch.randn(3, 50, 2, 2, generator=torch.Generator().manual_seed(5))
    m = mixing(x)
    assert m.rhat.shape == (4,)
    np.testing.assert_allclose(m.rhat, mixing(x.reshape(3, 50, 4).double().numpy()).rhat)


def test_table_of_many_dims_shows_the_worst():
    x = np.random.default_rng(6).normal(size=(2, 100, 30))
    x[1, :, 17] += 5.0  # one coordinate whose chains disagree
    table = mixing(x).table(max_rows=5)
    rows = [line.split() for line in table.splitlines()[2:7]]
    assert rows[0][0] == "17"
    assert "showing the 5 of 30 dims" in table


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((100, 2), r"rank >= 3; received shape \(100, 2\)"),
        ((1, 100, 2), r"at least 2 chain\(s\).*received 1 chain\(s\) of 100 draws"),
        ((4, 3, 2), r"at least 4 draws; received 4 chain\(s\) of 3 draws"),
    ],
)
def test_bad_shapes_raise_clear_errors(shape, match):
    with pytest.raises(ValueError, match=match):
        mixing(np.zeros(shape))


def test_nan_samples_raise_naming_the_chain():
    x = np.random.default_rng(7).normal(size=(4, 100, 2))
    x[2, 10, 1] = np.nan
    with pytest.raises(ValueError, match=r"1 NaN or infinite values \(in chains \[2\]\)"):
        mixing(x)

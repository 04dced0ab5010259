"""The report: table, warnings, JSON and figures, on chains that mixed and chains that did not."""

import json
import time
import types

import numpy as np
import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from flowmc_ebm import plots
from flowmc_ebm.diagnostics import mode_hopping, mode_weights, report

MEANS = torch.tensor([[-3.0, 0.0], [3.0, 0.0]])
WEIGHTS = torch.tensor([2 / 3, 1 / 3])
SCALE = 0.7


def two_mode_target(weights=WEIGHTS):
    """A stand-in for a `flowmc_ebm.targets` object: two Gaussians at (+-3, 0)."""
    mix = MixtureSameFamily(
        Categorical(weights), Independent(Normal(MEANS, SCALE * torch.ones_like(MEANS)), 1)
    )

    def sample(n, generator=None):
        labels = torch.multinomial(weights, n, replacement=True, generator=generator)
        return MEANS[labels] + SCALE * torch.randn(n, 2, generator=generator)

    return types.SimpleNamespace(
        log_prob=mix.log_prob,
        sample=sample,
        weights=weights,
        assign=lambda x: torch.cdist(x.float(), MEANS).argmin(1),
        dim=2,
    )


def chains(weights, chains=4, draws=400, seed=0):
    """A trace stand-in of independent draws from the mixture with the given weights."""
    g = torch.Generator().manual_seed(seed)
    x = two_mode_target(weights).sample(chains * draws, g).reshape(chains, draws, 2)
    return types.SimpleNamespace(
        samples=x,
        log_prob=two_mode_target().log_prob(x.reshape(-1, 2)).reshape(chains, draws),
        stats={"accept_prob": torch.full((chains, draws), 0.6)},
        wall_time=1.5,
    )


def wide_proposal():
    return Independent(Normal(torch.zeros(2), 5 * torch.ones(2)), 1)


def test_report_of_mixed_chains_has_no_warnings_and_writes_figures_and_json(tmp_path):
    start = time.perf_counter()
    r = report(chains(WEIGHTS), target=two_mode_target(), proposal=wide_proposal(), out=tmp_path)
    elapsed = time.perf_counter() - start
    assert r.warnings == [], r.warnings
    assert r.comparison.agree
    assert set(r.figures) == {"traces", "samples", "occupancy", "mode_weights", "suspect_chains"}
    for path in r.figures.values():
        assert path.stat().st_size > 10_000 and path.read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["comparison"]["agree"] is True
    assert summary["mixing"]["min_ess_per_second"] == pytest.approx(r.mixing.min_ess_bulk / 1.5)
    assert summary["true_weights"] == pytest.approx(WEIGHTS.tolist())
    # 1600 i.i.d. draws: each weight's error is ~sqrt(2/9 / 1600) = 0.012, so MSE ~ 1.4e-4.
    assert r.metrics["occupancy_mode_weight_mse"] < 10 * 2 / 9 / 1600
    assert "No warnings." in str(r)
    assert elapsed < 10  # the brief asks for a few seconds; 2-core CI machines are slow


def test_chains_in_one_mode_look_mixed_by_rhat_but_the_report_says_otherwise(capsys):
    trace = chains(torch.tensor([1.0, 0.0]), seed=1)
    r = report(trace, target=two_mode_target(), proposal=wide_proposal(), print_table=True)
    assert r.mixing.max_rhat < 1.01  # coordinate R-hat sees nothing wrong
    assert r.occupancy.weights.tolist() == [1.0, 0.0]
    assert not r.comparison.agree
    assert abs(r.importance.weights[1] - 1 / 3) < 4 * r.importance.se[1]
    assert any(w.startswith("Coordinate R-hat looks fine") for w in r.warnings)
    assert any("Only 1 of 2 modes visited" in w for w in r.warnings)
    printed = capsys.readouterr().out
    assert "DISAGREE" in printed and "WARNING: Coordinate R-hat looks fine" in printed


def test_chains_stuck_in_different_modes_are_reported_stuck():
    x = torch.cat(
        [
            chains(torch.tensor([1.0, 0.0]), 2, seed=2).samples,
            chains(torch.tensor([0.0, 1.0]), 2, seed=3).samples,
        ]
    )
    r = report(x, target=two_mode_target())
    assert r.hopping.stuck
    assert r.hopping.transitions.tolist() == [0, 0, 0, 0]
    assert r.mixing.max_rhat > 1.5
    assert any(w.startswith("STUCK") for w in r.warnings)
    assert any("have not mixed" in w for w in r.warnings)


def test_report_of_a_2d_model_computes_the_grid_metrics():
    model = two_mode_target(torch.tensor([0.5, 0.5])).log_prob  # an "EBM" with wrong weights
    r = report(chains(WEIGHTS), target=two_mode_target(), log_prob=model, bounds=((-7.0, 7.0), (-4.0, 4.0)))
    # Separated modes: normalized log-density is off by log(0.5 / (2/3)) over most of the
    # high-density region (see test_log_density_error_...), and weights by 1/6 each.
    assert r.metrics["log_density_median_sq_error"] == pytest.approx(np.log(0.75) ** 2, rel=1e-2)
    assert r.metrics["grid_mode_weight_mse"] == pytest.approx((1 / 6) ** 2, rel=1e-3)


def test_report_without_modes_does_mixing_only_and_fits_modes_when_told_how_many():
    trace = chains(WEIGHTS, seed=4)
    bare = report(trace.samples.numpy())
    assert bare.hopping is None and bare.occupancy is None
    fitted = report(trace.samples.numpy(), n_modes=2)
    truth = WEIGHTS.numpy()
    assert np.all(np.abs(fitted.occupancy.weights - truth) < 4 * fitted.occupancy.se)


def test_plots_reject_what_they_cannot_draw():
    with pytest.raises(ValueError, match="needs 2-D samples"):
        plots.plot_samples_2d(np.zeros((2, 10, 3)))
    with pytest.raises(ValueError, match=r"rank >= 3; received shape \(10, 2\)"):
        plots.plot_traces(np.zeros((10, 2)))


def test_plots_accept_results_and_raw_labels():
    trace = chains(WEIGHTS, seed=5)
    hop = mode_hopping(trace, MEANS)
    assert len(plots.plot_mode_occupancy(hop).axes) == 2
    assert len(plots.plot_mode_occupancy(hop.labels).axes) == 2
    fig = plots.plot_mode_weights(mode_weights(trace, MEANS), WEIGHTS)
    # truth bars, one estimator's bars and their error bars
    assert len(fig.axes[0].containers) == 3


def test_trace_plot_with_many_chains_draws_a_readable_subset_and_highlights_suspects():
    x = np.random.default_rng(0).normal(size=(64, 80, 2))
    fig = plots.plot_traces(x, highlight=[5, 40])
    trace_ax = fig.axes[0]
    assert 12 <= len(trace_ax.lines) <= 16  # not 64 tangled lines
    red = [ln for ln in trace_ax.lines if ln.get_label() in ("chain 5", "chain 40")]
    assert len(red) == 2 and all(ln.get_color() == "tab:red" for ln in red)
    assert red[0] is trace_ax.lines[-2] and red[1] is trace_ax.lines[-1]  # drawn on top
    assert "suspect chains in red: [5, 40]" in fig._suptitle.get_text()
    assert len(plots.plot_traces(x[:8]).axes[0].lines) == 8  # few chains: all of them
    with pytest.raises(ValueError, match=r"chain indices in 0..63; received \[64\]"):
        plots.plot_traces(x, highlight=[64])


def test_suspect_figure_draws_leave_one_out_bars_only_for_chains_tried():
    from flowmc_ebm.diagnostics.suspects import plot_suspects, suspect_chains

    x = np.random.default_rng(1).normal(size=(64, 60, 2))
    s = suspect_chains(x, None, seed=0)
    assert not np.isfinite(s.loo_rhat).any()  # R-hat fine: leave-one-out never ran
    fig = plot_suspects(s)
    assert len(fig.axes[1].patches) == 0  # before: 64 bars from 1.0 down to 0
    assert fig.get_size_inches()[0] <= 14

"""Mode weights (two estimators), mode hopping, fitted modes and the paper's metrics, on
mixtures whose weights are known."""

import warnings

import numpy as np
import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from flowmc_ebm.diagnostics import (
    StuckChainsWarning,
    UnvisitedModesWarning,
    compare_mode_weights,
    fit_modes,
    grid_log_density,
    grid_mode_weights,
    importance_mode_weights,
    log_density_error,
    mode_hopping,
    mode_labels,
    mode_weight_mse,
    mode_weights,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

MEANS = torch.tensor([[-4.0, 0.0], [0.0, 4.0], [4.0, 0.0]])
WEIGHTS = torch.tensor([0.5, 0.3, 0.2])


def mixture(means=MEANS, weights=WEIGHTS, scale=0.7):
    return MixtureSameFamily(
        Categorical(weights), Independent(Normal(means, scale * torch.ones_like(means)), 1)
    )


def nearest_mean(x):
    return torch.cdist(x.float(), MEANS).argmin(1)


def mixture_draws(shape, seed, means=MEANS, weights=WEIGHTS, scale=0.7):
    """Independent draws shaped `(*shape, dim)` and their true modes."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(len(weights), p=weights.numpy(), size=shape)
    x = means.numpy()[labels] + scale * rng.normal(size=(*shape, means.shape[1]))
    return x, labels


def wide_proposal(dim=2, scale=6.0):
    return Independent(Normal(torch.zeros(dim), scale * torch.ones(dim)), 1)


# --- occupancy ---------------------------------------------------------------------------


def test_occupancy_intervals_cover_true_weights():
    repeats, chains, draws = 100, 4, 250
    x, _ = mixture_draws((repeats, chains, draws), seed=0)
    estimates = [mode_weights(x[r], MEANS) for r in range(repeats)]
    lower = np.stack([e.lower for e in estimates])
    upper = np.stack([e.upper for e in estimates])
    truth = WEIGHTS.numpy()
    coverage = ((lower <= truth) & (truth <= upper)).mean(axis=0)
    # Nominal 95%; with 100 repeats the binomial sd of a coverage rate is 2.2 points.
    assert np.all((coverage >= 0.90) & (coverage <= 0.99)), coverage
    se = np.stack([e.se for e in estimates])
    # The standard error matches the spread of the estimates across repeats (i.i.d. draws:
    # sqrt(w (1 - w) / n)); sd of a 100-sample sd is ~7%.
    spread = np.stack([e.weights for e in estimates]).std(axis=0, ddof=1)
    np.testing.assert_allclose(se.mean(axis=0) / spread, 1.0, atol=0.25)
    np.testing.assert_allclose(se.mean(axis=0), np.sqrt(truth * (1 - truth) / 1000), rtol=0.05)


def test_occupancy_errors_are_arviz_mcse_of_the_indicators():
    rng = np.random.default_rng(1)
    # Sticky chains: labels follow a Markov chain that keeps its mode with probability 0.95.
    labels = np.zeros((4, 400), dtype=np.int64)
    labels[:, 0] = rng.integers(0, 3, 4)
    for t in range(1, 400):
        jump = rng.random(4) < 0.05
        labels[:, t] = np.where(jump, rng.integers(0, 3, 4), labels[:, t - 1])
    x = MEANS.numpy()[labels] + 0.3 * rng.normal(size=(4, 400, 2))
    w = mode_weights(x, MEANS)
    for k in range(3):
        indicator = (labels == k).astype(float)
        assert w.weights[k] == pytest.approx(indicator.mean(), abs=1e-12)
        assert w.se[k] == pytest.approx(az.mcse(indicator, method="mean"), rel=1e-6)
        assert w.ess[k] == pytest.approx(az.ess(indicator, method="mean"), rel=1e-6)
    # Autocorrelation shrinks the ESS well below the 1600 draws.
    assert np.all(w.ess < 400)


@pytest.mark.parametrize(
    "assign",
    [
        nearest_mean,
        lambda x: nearest_mean(x).numpy(),
        MEANS,
        MEANS.numpy(),
    ],
    ids=["callable-tensor", "callable-numpy", "centers-tensor", "centers-numpy"],
)
def test_every_form_of_assign_gives_the_same_weights(assign):
    x, labels = mixture_draws((2, 100), seed=2)
    reference = mode_weights(x, labels)
    w = mode_weights(torch.from_numpy(x).float(), assign)
    np.testing.assert_array_equal(w.weights, reference.weights)
    np.testing.assert_allclose(w.se, reference.se)


def test_stuck_chains_get_a_wide_occupancy_interval():
    x, _ = mixture_draws((4, 300), seed=3)
    x[:2] = mixture_draws((2, 300), seed=4, weights=torch.tensor([1.0, 0.0, 0.0]))[0]
    x[2:] = mixture_draws((2, 300), seed=5, weights=torch.tensor([0.0, 0.0, 1.0]))[0]
    with pytest.warns(UnvisitedModesWarning, match=r"modes \[1\] were never visited"):
        w = mode_weights(x, MEANS)
    assert w.se[0] > 0.2 and w.upper[0] - w.lower[0] > 0.5


def test_labels_outside_n_modes_are_rejected():
    x, _ = mixture_draws((2, 50), seed=6)
    with pytest.raises(ValueError, match="must be < n_modes=2; assign returned 2"):
        mode_weights(x, MEANS, n_modes=2)


# --- fitted modes ------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["gmm", "kmeans"])
def test_fit_modes_recovers_centers_and_weights(method):
    x, labels = mixture_draws((4, 500), seed=7)
    modes = fit_modes(x, 3, method=method)
    # Sorted by first coordinate, the fitted centers line up with MEANS.
    np.testing.assert_allclose(modes.centers_, MEANS.numpy(), atol=0.1)
    np.testing.assert_allclose(modes.weights_, np.bincount(labels.ravel()) / labels.size)
    w = mode_weights(x, modes)
    assert np.all(np.abs(w.weights - WEIGHTS.numpy()) < 4 * w.se)
    assert isinstance(modes(torch.from_numpy(x[0])), torch.Tensor)
    np.testing.assert_array_equal(mode_labels(x[0], modes), labels[0])


# --- importance sampling -----------------------------------------------------------------


def test_importance_weights_recover_truth_and_their_errors_match_their_spread():
    target = mixture()
    big = importance_mode_weights(target, wide_proposal(), MEANS, 20_000, seed=0)
    assert np.all(np.abs(big.weights - WEIGHTS.numpy()) < 4 * big.se)
    assert big.pareto_k < 0.7
    assert 0 < big.weights_ess < 20_000
    # Delta-method errors against the spread of 100 independent runs of n=1000: the sd of a
    # 100-sample sd is ~7%, so 25% is > 3 sd.
    runs = [importance_mode_weights(target, wide_proposal(), MEANS, 1000, seed=s) for s in range(1, 101)]
    spread = np.stack([r.weights for r in runs]).std(axis=0, ddof=1)
    mean_se = np.stack([r.se for r in runs]).mean(axis=0)
    np.testing.assert_allclose(mean_se / spread, 1.0, atol=0.25)
    inside = np.stack([(r.lower <= WEIGHTS.numpy()) & (WEIGHTS.numpy() <= r.upper) for r in runs])
    assert np.all(inside.mean(axis=0) >= 0.88), inside.mean(axis=0)


def test_proposal_may_be_a_module_returning_a_distribution():
    class Flow(torch.nn.Module):
        def forward(self):
            return wide_proposal()

    a = importance_mode_weights(mixture().log_prob, Flow(), MEANS, 2000, seed=3)
    b = importance_mode_weights(mixture().log_prob, wide_proposal(), MEANS, 2000, seed=3)
    np.testing.assert_array_equal(a.weights, b.weights)


def test_importance_sampling_leaves_the_global_random_state_alone():
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    importance_mode_weights(mixture(), wide_proposal(), MEANS, 500, seed=9)
    assert torch.rand(1) == expected


def test_a_proposal_narrower_than_the_target_has_large_pareto_k():
    # Proposal sd 0.35 under a mode of sd 0.7: weights have infinite variance.
    narrow = Independent(Normal(torch.tensor([-4.0, 0.0]), 0.35 * torch.ones(2)), 1)
    w = importance_mode_weights(mixture(), narrow, MEANS, 5000, seed=0)
    assert w.pareto_k > 0.7
    assert "UNRELIABLE" in w.table()


def test_pareto_k_cannot_see_a_mode_the_proposal_never_reaches():
    # Why occupancy and importance sampling are compared: k-hat looks fine here.
    covers_one_mode = Independent(Normal(torch.tensor([-4.0, 0.0]), torch.ones(2)), 1)
    w = importance_mode_weights(mixture(), covers_one_mode, MEANS, 5000, seed=0)
    assert w.pareto_k < 0.7
    assert w.weights[0] > 0.95  # truth 0.5


def test_a_factorized_proposal_without_independent_is_a_clear_error():
    with pytest.raises(ValueError, match=r"shape \(100,\); received \(100, 2\).*Independent"):
        importance_mode_weights(mixture(), Normal(torch.zeros(2), torch.ones(2)), MEANS, 100)


# --- agreement of the two estimators -----------------------------------------------------


def test_estimators_agree_on_well_mixed_chains():
    x, _ = mixture_draws((4, 500), seed=10)
    occupancy = mode_weights(x, MEANS)
    importance = importance_mode_weights(mixture(), wide_proposal(), MEANS, 10_000, seed=0)
    comparison = compare_mode_weights(occupancy, importance)
    assert comparison.agree, comparison.message
    assert comparison.threshold == pytest.approx(2.394, abs=1e-3)  # 95%, Bonferroni over 3


def test_chains_in_one_mode_disagree_with_importance_sampling():
    two = torch.tensor([[-3.0, 0.0], [3.0, 0.0]])
    target = mixture(two, torch.tensor([2 / 3, 1 / 3]))
    x, _ = mixture_draws((4, 500), seed=11, means=two, weights=torch.tensor([1.0, 0.0]))
    occupancy = mode_weights(x, two, warn=False)
    importance = importance_mode_weights(target, wide_proposal(), two, 10_000, seed=0)
    comparison = compare_mode_weights(occupancy, importance)
    # Never an SE of 0 with an interval [1, 1] (issue #13): the weights are not estimable.
    assert occupancy.weights.tolist() == [1.0, 0.0] and np.isnan(occupancy.se[1])
    assert not comparison.agree
    assert comparison.max_abs_z > 10
    assert "DISAGREE" in comparison.message and "R-hat near 1" in comparison.message


# --- mode hopping ------------------------------------------------------------------------


def test_hopping_counts_transitions_and_round_trips_exactly():
    labels = np.array([[0, 1, 0, 1, 0, 0], [2, 2, 0, 1, 2, 2], [1, 1, 1, 1, 1, 1]])
    hop = mode_hopping(np.zeros((3, 6, 1)), labels, n_modes=3)
    assert hop.transitions.tolist() == [4, 3, 0]
    assert hop.round_trips.tolist() == [2, 1, 0]
    assert hop.transition_counts.tolist() == [[0, 3, 0], [2, 0, 1], [1, 0, 0]]
    np.testing.assert_allclose(hop.occupancy[1], [1 / 6, 1 / 6, 4 / 6])
    assert not hop.stuck and "1 of 3 chains never changed mode" in hop.message


def test_chains_stuck_in_different_modes_are_flagged():
    x = np.concatenate(
        [
            mixture_draws((2, 300), seed=12, weights=torch.tensor([1.0, 0.0, 0.0]))[0],
            mixture_draws((2, 300), seed=13, weights=torch.tensor([0.0, 1.0, 0.0]))[0],
        ]
    )
    with pytest.warns(StuckChainsWarning, match="no chain ever left its starting mode"):
        hop = mode_hopping(x, nearest_mean)
    assert hop.stuck
    assert hop.transitions.tolist() == [0, 0, 0, 0]
    assert hop.max_rhat > 1e6  # indicators constant within chains, different between them
    assert "R-hat may still look fine" in hop.message


def test_chains_in_one_of_two_modes_say_occupancy_cannot_tell():
    x = np.random.default_rng(14).normal(size=(4, 100, 2)) + np.array([-3.0, 0.0])
    hop = mode_hopping(x, np.array([[-3.0, 0.0], [3.0, 0.0]]))
    assert not hop.stuck
    assert "Only 1 of 2 modes visited" in hop.message


def test_well_mixed_chains_hop_often_and_indicator_rhat_is_one():
    x, _ = mixture_draws((4, 500), seed=15)
    hop = mode_hopping(x, MEANS)
    assert not hop.stuck and hop.message == ""
    assert hop.max_rhat < 1.01
    # i.i.d. labels change with probability 1 - sum(w**2) = 0.62 per step.
    expected = 499 * (1 - float((WEIGHTS**2).sum()))
    se = np.sqrt(499 * 0.62 * 0.38)
    assert np.all(np.abs(hop.transitions - expected) < 4 * se)


# --- the paper's metrics -----------------------------------------------------------------


def test_mode_weight_mse_is_the_mean_squared_weight_error():
    x, _ = mixture_draws((4, 250), seed=16)
    labels = nearest_mean(torch.from_numpy(x.reshape(-1, 2))).numpy()
    empirical = np.bincount(labels, minlength=3) / labels.size
    expected = np.mean((empirical - WEIGHTS.numpy()) ** 2)
    assert mode_weight_mse(x, MEANS, WEIGHTS) == pytest.approx(expected, rel=1e-12)
    assert mode_weight_mse(x.reshape(-1, 2), nearest_mean, WEIGHTS) == pytest.approx(expected)


def test_grid_quadrature_recovers_mixture_weights_and_normalizes():
    grid = grid_log_density(mixture(), 9.0, 150)
    assert np.exp(grid.log_density).sum() * grid.cell_area == pytest.approx(1.0, abs=1e-9)
    weights = grid_mode_weights(lambda x: mixture().log_prob(x) + 3.0, MEANS, 9.0, 150)
    np.testing.assert_allclose(weights, WEIGHTS.numpy(), atol=1e-3)


def test_log_density_error_is_zero_for_the_truth_and_known_for_wrong_weights():
    two = torch.tensor([[-3.0, 0.0], [3.0, 0.0]])
    truth = mixture(two, torch.tensor([2 / 3, 1 / 3]))
    model = mixture(two, torch.tensor([0.5, 0.5]))
    assert log_density_error(lambda x: truth.log_prob(x) - 5.0, truth, 8.0) < 1e-12
    # Separated modes: the error is log(0.5 / (2/3))**2 in mode 0 and log(0.5 / (1/3))**2 in
    # mode 1; mode 0 holds most of the high-density region, so the median is its value.
    error = log_density_error(model, truth, 8.0)
    assert error == pytest.approx(np.log(0.75) ** 2, rel=1e-3)


def test_bad_bounds_are_a_clear_error():
    with pytest.raises(ValueError, match="bounds must be"):
        grid_log_density(mixture(), ((1.0, -1.0), (0.0, 1.0)))

"""Claims about score-matching EBMs: the quadrature reads mode weights exactly, and score matching
cannot see the weights of well-separated modes, so a trained model gets the shapes right and the
weights wrong."""

import math

import pytest
import torch

from flowmc_ebm.diagnostics import grid_quadrature
from flowmc_ebm.objectives.score_matching import exact_score_matching
from flowmc_ebm.sm_ebm import ScoreMatchingEBM
from flowmc_ebm.targets import FourModes, GaussianMixture, TwoModes


@pytest.fixture(autouse=True)
def _one_thread():
    # Runs after conftest's two-thread setting. These tensors are tiny: a second thread buys
    # nothing, and on a busy two-core machine its spinning made the tests 10-20x slower.
    torch.set_num_threads(1)


@pytest.mark.parametrize("target", [TwoModes(), FourModes()], ids=["two", "four"])
def test_grid_quadrature_recovers_known_mode_weights(target):
    result = grid_quadrature(target.log_prob, target.assign, 5.0, 500, n_modes=target.n_modes,
                             dtype=torch.float64)
    torch.testing.assert_close(torch.from_numpy(result.weights).float(), target.weights, atol=1e-4,
                               rtol=0)
    assert result.edge_mass < 1e-8


def test_grid_quadrature_reports_mass_cut_off_by_the_box():
    result = grid_quadrature(lambda x: -0.5 * x.square().sum(-1) / 4.0,
                             lambda x: (x[:, 0] > 0).long(), 2.0, 100, n_modes=2, dtype=torch.float32)
    assert result.edge_mass > 0.02


def test_score_matching_objective_cannot_tell_two_to_one_from_one_to_two():
    target = TwoModes()
    swapped = GaussianMixture(target.means, target.covariances, target.weights.flip(0))
    x = target.sample(20_000, torch.Generator().manual_seed(0), dtype=torch.float64)
    right = exact_score_matching(x, energy=lambda y: -target.log_prob(y)).detach()
    wrong = exact_score_matching(x, energy=lambda y: -swapped.log_prob(y)).detach()
    # The objectives agree to far below their own Monte-Carlo error ...
    mcse = right.std() / math.sqrt(len(right))
    assert (right - wrong).mean().abs() < 1e-3 * mcse
    # ... while the likelihood tells them apart (by (2/3 − 1/3) log 2 per point, ~50 MCSEs here).
    log_ratio = (target.log_prob(x) - swapped.log_prob(x)).detach()
    assert log_ratio.mean() / (log_ratio.std() / math.sqrt(len(log_ratio))) > 20


def test_seeded_fit_is_reproducible_and_lowers_the_loss():
    target = TwoModes()
    fits = [ScoreMatchingEBM("ssm", steps=150, batch_size=128, hidden=(32, 32))
            .fit(target.sample, dim=2, generator=torch.Generator().manual_seed(1)) for _ in range(2)]
    first, second = (list(fit.energy_.parameters()) for fit in fits)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    history = fits[0].history_
    assert sum(history[-20:]) / 20 < sum(history[:20]) / 20 - 1.0


def test_mala_chains_on_the_learned_density_have_the_trace_shape():
    ebm = ScoreMatchingEBM("dsm", steps=5, hidden=(16,)).fit(torch.randn(64, 2))
    trace = ebm.sample(torch.zeros(4, 2), n_steps=10, warmup=5,
                       generator=torch.Generator().manual_seed(2))
    assert trace.samples.shape == (4, 10, 2)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown objective"):
        ScoreMatchingEBM("nce", steps=1).fit(torch.zeros(8, 2))
    with pytest.raises(ValueError, match="dim="):
        ScoreMatchingEBM("dsm", steps=1).fit(TwoModes().sample)


@pytest.mark.slow
def test_dsm_ebm_learns_the_mode_shapes_but_not_their_weights():
    target = TwoModes()
    ebm = ScoreMatchingEBM("dsm", sigma=0.1, steps=2000, batch_size=256).fit(
        target.sample, dim=2, generator=torch.Generator().manual_seed(0))
    x = target.sample(2000, torch.Generator().manual_seed(3)).requires_grad_(True)
    true_score = torch.autograd.grad(target.log_prob(x).sum(), x)[0]
    model_score = -torch.autograd.grad(ebm.energy_(x).sum(), x)[0]
    relative_error = ((model_score - true_score).norm(dim=-1) / true_score.norm(dim=-1)).median()
    # DSM fits the data blurred by σ: within a mode of variance v its score is v / (v + σ²) of the
    # true one, 17% short for the narrow mode; beyond that the shapes must match.
    assert relative_error < 0.25, "the local shape of each mode should be learned"
    weight = grid_quadrature(ebm.score_samples, target.assign, 4.0, 400, n_modes=2,
                             dtype=torch.float32).weights[target.top_right]
    assert abs(weight - 2 / 3) > 0.1, f"top-right weight {weight:.3f} unexpectedly right"

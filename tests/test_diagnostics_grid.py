"""The one grid quadrature (`diagnostics.grid`) gives what the three copies it replaces gave."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowmc_ebm.diagnostics import GridWeights, grid_mode_weights, grid_quadrature
from flowmc_ebm.targets import TwoModes

CENTERS = np.array([[-1.0, 0.0], [1.0, 0.0]])


def test_grid_quadrature_of_an_energy_gives_the_true_weights_and_the_edge_mass():
    # What evaluation.quadrature_mode_weights (float32 points, a target's assign) and
    # sm_ebm.grid_mode_weights (an energy, the edge mass) computed, now from the one quadrature.
    target = TwoModes()
    energy = lambda x: -target.log_prob(x)  # noqa: E731
    ours = grid_quadrature(lambda x: -energy(x), target.assign, 4.5, 128, n_modes=2, dtype=torch.float32)
    assert isinstance(ours, GridWeights) and ours.weights.dtype == np.float64
    # TwoModes holds 1/3 and 2/3; the 9x9 box and 128 cells per side cost < 1e-4.
    np.testing.assert_allclose(ours.weights, target.weights.double().numpy(), atol=1e-4)
    # The edge mass recomputed independently: cells of the outer ring over all cells.
    edges = torch.linspace(-4.5, 4.5, 129, dtype=torch.float64)
    centers = 0.5 * (edges[1:] + edges[:-1])
    mass = target.log_prob(torch.cartesian_prod(centers, centers).float()).double().exp()
    mass = mass.reshape(128, 128)
    expected = float((mass.sum() - mass[1:-1, 1:-1].sum()) / mass.sum())
    assert ours.edge_mass == pytest.approx(expected, rel=1e-5)
    assert ours.edge_mass < 1e-4


def test_grid_quadrature_edge_mass_flags_a_box_too_small():
    wide = lambda x: -0.5 * x.square().sum(-1) / 9.0  # noqa: E731  (sd 3)
    small = grid_quadrature(wide, CENTERS, 2.0, 50)
    assert small.edge_mass > 0.05
    big = grid_quadrature(wide, CENTERS, 20.0, 100)
    assert big.edge_mass < 1e-6
    np.testing.assert_allclose(big.weights, [0.5, 0.5], atol=1e-9)


def test_grid_quadrature_nan_policy_and_bad_values():
    def half_nan(x):
        out = -0.5 * x.square().sum(-1)
        return torch.where(x[:, 0] > 3.0, torch.full_like(out, float("nan")), out)

    with pytest.raises(ValueError, match="NaN"):
        grid_mode_weights(half_nan, CENTERS, 4.0, 40)
    w = grid_quadrature(half_nan, CENTERS, 4.0, 40, nan="zero")
    assert np.isfinite(w.weights).all() and w.weights.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"\+inf"):
        grid_mode_weights(lambda x: torch.full((x.shape[0],), float("inf")), CENTERS, 4.0, 10)
    with pytest.raises(ValueError, match="not finite anywhere"):
        grid_mode_weights(lambda x: torch.full((x.shape[0],), -float("inf")), CENTERS, 4.0, 10)

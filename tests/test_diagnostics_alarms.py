"""Diagnostics that never stay silent (issue #13): each test here failed on the behaviour before
the fix it checks (see the commit messages)."""

from __future__ import annotations

import numpy as np
import pytest

from flowmc_ebm.diagnostics import (
    UnvisitedModesWarning,
    mode_hopping,
    mode_weights,
    report,
)

DIM = 10
# Three modes of a 10-D mixture, 12 apart along the first axis (a draw crosses to a
# neighbour with probability 1e-9).
CENTERS = np.zeros((3, DIM))
CENTERS[:, 0] = [-12.0, 0.0, 12.0]


def draws_in(modes_of_chains, draws=300, seed=0, dim=DIM):
    """Chains of i.i.d. N(center, I) draws; chain c stays in mode `modes_of_chains[c]`."""
    rng = np.random.default_rng(seed)
    centers = CENTERS[np.asarray(modes_of_chains)][:, None, :dim]
    return centers + rng.normal(size=(len(modes_of_chains), draws, dim))


# --- 1. modes known but never visited ------------------------------------------------------


def test_modes_never_visited_are_named_and_their_weights_not_estimable():
    x = draws_in([0, 0, 0, 0])
    with pytest.warns(UnvisitedModesWarning, match=r"modes \[1, 2\]"):
        w = mode_weights(x, CENTERS)
    assert w.estimable.tolist()[1:] == [False, False]
    assert np.isnan(w.se[1:]).all() and np.isnan(w.lower[1:]).all() and np.isnan(w.upper[1:]).all()
    assert w.table().count("not estimable") >= 2
    r = report(x, CENTERS)
    assert any("never visited" in m and "[1, 2]" in m for m in r.warnings), r.warnings
    hop = mode_hopping(x, CENTERS, warn=False)
    assert hop.unvisited.tolist() == [1, 2]


# --- 2. a mode indicator constant within every chain ---------------------------------------


def test_indicator_constant_within_every_chain_gets_a_between_chain_error_or_none():
    # All chains in mode 0 throughout: weight 1, but no SE of 0 and no interval [1, 1].
    w = mode_weights(draws_in([0, 0, 0, 0]), CENTERS, warn=False)
    assert not w.estimable[0] and np.isnan(w.se[0]) and np.isnan(w.lower[0])
    assert w.se_method[0].startswith("not estimable")
    # Chains stuck apart, 3 in mode 0 and 3 in mode 2: chains are the clusters, so the SE is
    # the sd of the 6 chain means over sqrt(6), the effective size 6 chains.
    w = mode_weights(draws_in([0, 0, 0, 2, 2, 2]), CENTERS, warn=False)
    chain_means = np.array([1, 1, 1, 0, 0, 0.0])
    assert w.se_method[0] == w.se_method[2] == "between-chain"
    assert w.se[0] == pytest.approx(chain_means.std(ddof=1) / np.sqrt(6))
    assert w.ess[0] == 6 and w.upper[0] - w.lower[0] > 0.5
    # A mode the chains hop in and out of keeps the within-chain (ArviZ) error.
    rng = np.random.default_rng(1)
    hopping = CENTERS[rng.integers(0, 3, size=(4, 300))] + rng.normal(size=(4, 300, DIM))
    w = mode_weights(hopping, CENTERS)
    assert w.se_method == ("within-chain ESS",) * 3 and w.estimable.all()

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
# Three modes of a 10-D mixture, 8 apart along the first axis.
CENTERS = np.zeros((3, DIM))
CENTERS[:, 0] = [-8.0, 0.0, 8.0]


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

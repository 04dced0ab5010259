"""Whether chains move between modes: occupancy, transitions, round trips, stuck chains."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from flowmc_ebm.diagnostics import _arviz
from flowmc_ebm.diagnostics._chains import chains_tensor, require_shape
from flowmc_ebm.diagnostics.modes import chain_labels, infer_n_modes


class StuckChainsWarning(UserWarning):
    """Chains never left their starting modes while several modes are populated."""


class UnvisitedModesWarning(UserWarning):
    """Modes are known (centers, an assign with its count of modes, a target) but no chain
    visited them: chain occupancy cannot estimate their weights."""


@dataclass(frozen=True)
class ModeHopping:
    """How chains travel between modes. `C` chains, `T` draws, `K` modes.

    Transitions are counted between consecutive *stored* draws, so thinning hides hops that
    leave and come back between two stored draws.

    Attributes:
        labels: `(C, T)` mode of every draw.
        occupancy: `(C, K)` fraction of each chain's draws in each mode.
        start_mode: `(C,)` mode of each chain's first draw.
        transitions: `(C,)` number of mode changes along each chain.
        transition_counts: `(K, K)` changes from row mode to column mode, over all chains.
        round_trips: `(C,)` returns to the starting mode after having left it.
        rhat: `(K,)` rank-normalized split R-hat of each mode's indicator (ArviZ); NaN for a
            mode no chain, or every chain, occupies throughout, and for fewer than 2 chains or
            4 draws.
        stuck_chains: `(C,)` chains that never changed mode.
        stuck: several modes are populated across chains and no chain ever changed mode.
        message: a sentence for humans; empty when there is nothing to say.
    """

    labels: np.ndarray
    occupancy: np.ndarray
    start_mode: np.ndarray
    transitions: np.ndarray
    transition_counts: np.ndarray
    round_trips: np.ndarray
    rhat: np.ndarray
    stuck_chains: np.ndarray
    stuck: bool
    message: str

    @property
    def n_modes(self) -> int:
        return self.occupancy.shape[1]

    @property
    def populated(self) -> np.ndarray:
        """`(K,)` whether any chain ever visited each mode."""
        return self.occupancy.max(axis=0) > 0

    @property
    def unvisited(self) -> np.ndarray:
        """Indices of the modes no chain ever visited."""
        return np.flatnonzero(~self.populated)

    @property
    def max_rhat(self) -> float:
        """Largest finite-or-infinite R-hat of the mode indicators; NaN if none is defined."""
        defined = self.rhat[~np.isnan(self.rhat)]
        return float(defined.max()) if defined.size else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_modes": self.n_modes,
            "occupancy": self.occupancy.tolist(),
            "start_mode": self.start_mode.tolist(),
            "transitions": self.transitions.tolist(),
            "transition_counts": self.transition_counts.tolist(),
            "round_trips": self.round_trips.tolist(),
            "rhat": self.rhat.tolist(),
            "max_rhat": self.max_rhat,
            "populated": self.populated.tolist(),
            "unvisited": self.unvisited.tolist(),
            "stuck_chains": int(self.stuck_chains.sum()),
            "stuck": self.stuck,
            "message": self.message,
        }

    def table(self) -> str:
        chains = self.labels.shape[0]
        lines = [
            f"Mode hopping: {chains} chains, {self.n_modes} modes ({int(self.populated.sum())} visited)",
            f"transitions per chain: mean {self.transitions.mean():.1f}, "
            f"min {self.transitions.min()}, max {self.transitions.max()}; "
            f"round trips per chain: mean {self.round_trips.mean():.1f}",
            "indicator R-hat: " + ", ".join(self._rhat_text(k) for k in range(self.n_modes)),
        ]
        if self.message:
            lines.append(self.message)
        return "\n".join(lines)

    def _rhat_text(self, k: int) -> str:
        # An indicator constant within every chain but not between them makes ArviZ's R-hat
        # 0/0-ish (1e16 or inf): say what it is instead of printing that number.
        ind = self.labels == k
        constant = bool((ind.all(axis=1) | ~ind.any(axis=1)).all())
        if constant and ind.any() and not ind.all():
            return "constant within chains"
        if np.isnan(self.rhat[k]):
            return "undefined (constant)"
        return f"{self.rhat[k]:.3g}"

    def __str__(self) -> str:
        return self.table()


def mode_hopping(trace: Any, assign: Any, *, n_modes: int | None = None, warn: bool = True) -> ModeHopping:
    """Per-chain mode occupancy, transitions and round trips, and a stuck-chain check.

    Coordinate R-hat compares chains' marginal distributions; when each chain stays in its
    starting mode, that can look fine (symmetric modes) while nothing is mixing. Here the
    chains are reduced to their mode labels and checked directly.

    Args:
        trace: a Trace or an array / tensor `(chains, draws, *event)`; at least 2 draws.
        assign: callable, centers `(K, dim)`, `FittedModes` or labels `(chains, draws)`.
        n_modes: K; inferred from `assign` when it knows it, else the largest label + 1.
        warn: emit a `StuckChainsWarning` when `stuck`.

    Returns:
        `ModeHopping`.

    Example:
        >>> import numpy as np
        >>> x = np.stack([np.full((50, 1), -3.0), np.full((50, 1), 3.0)])  # two stuck chains
        >>> hop = mode_hopping(x, np.array([[-3.0], [3.0]]), warn=False)
        >>> hop.stuck, hop.transitions.tolist()
        (True, [0, 0])
    """
    x = chains_tensor(trace)
    require_shape(*x.shape[:2], min_chains=1, min_draws=2, purpose="Mode hopping", name="samples")
    labels = chain_labels(x, assign, n_modes)
    k = infer_n_modes(assign, labels, n_modes)
    chains, draws = labels.shape

    indicators = (labels[..., None] == np.arange(k)).astype(np.float64)
    occupancy = indicators.mean(axis=1)
    start = labels[:, 0]
    moved = labels[:, 1:] != labels[:, :-1]
    transitions = moved.sum(axis=1)
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (labels[:, :-1][moved], labels[:, 1:][moved]), 1)
    round_trips = (moved & (labels[:, 1:] == start[:, None])).sum(axis=1)
    rhat = _arviz.rhat(indicators) if chains >= 2 and draws >= 4 else np.full(k, np.nan)

    stuck_chains = transitions == 0
    n_populated = int((occupancy.max(axis=0) > 0).sum())
    stuck = n_populated >= 2 and bool(stuck_chains.all())
    unvisited = np.flatnonzero(occupancy.max(axis=0) == 0)
    message = _message(stuck, stuck_chains, n_populated, k, chains, unvisited)
    if stuck and warn:
        warnings.warn(message, StuckChainsWarning, stacklevel=2)
    return ModeHopping(
        labels, occupancy, start, transitions, counts, round_trips, rhat, stuck_chains, stuck, message
    )


def unvisited_message(unvisited: np.ndarray, k: int) -> str:
    """The sentence that names the modes no chain visited."""
    return (
        f"Only {k - len(unvisited)} of {k} modes visited by any chain: modes "
        f"{[int(m) for m in unvisited]} were never visited, so occupancy cannot estimate their "
        f"weights (reported as not estimable); compare with importance_mode_weights."
    )


def _message(
    stuck: bool, stuck_chains: np.ndarray, n_populated: int, k: int, chains: int, unvisited: np.ndarray
) -> str:
    notes = []
    if stuck:
        notes.append(
            f"STUCK: no chain ever left its starting mode, while {n_populated} modes are "
            f"populated across chains. Mode weights from occupancy only echo the starting "
            f"points; coordinate R-hat may still look fine if the modes are alike."
        )
    elif stuck_chains.any() and n_populated >= 2:
        notes.append(f"{int(stuck_chains.sum())} of {chains} chains never changed mode.")
    if unvisited.size:
        notes.append(unvisited_message(unvisited, k))
    return " ".join(notes)

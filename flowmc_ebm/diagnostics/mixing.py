"""How well chains mixed, per coordinate: R-hat, ESS, MCSE, autocorrelation time, acceptance."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from flowmc_ebm.diagnostics import _arviz
from flowmc_ebm.diagnostics._chains import chains_array

#: R-hat above this is the usual sign of unmixed chains (Vehtari et al. 2021).
RHAT_THRESHOLD = 1.01

# Kernel stats reported as acceptance, in the order they are shown.
_ACCEPTANCE_KEYS = ("accept_prob", "local_accept_prob", "global_accept_prob")


@dataclass(frozen=True)
class MixingSummary:
    """Per-dimension mixing diagnostics of a set of chains (all arrays have shape `(dim,)`).

    Attributes:
        n_chains, n_draws: the trace's shape.
        rhat: rank-normalized split R-hat (ArviZ `method="rank"`).
        ess_bulk, ess_tail: ArviZ bulk and tail effective sample sizes.
        ess_per_second: `ess_bulk / wall_time`, or None when the wall time is unknown.
        mcse_mean: Monte Carlo standard error of each coordinate's mean.
        iat: integrated autocorrelation time, `chains * draws / ess_mean`, where `ess_mean`
            is ArviZ's (Geyer-truncated, multi-chain) ESS of the mean; 1 for independent draws.
        acceptance: mean over chains and steps of each acceptance stat the trace carries
            ("accept_prob", "local_accept_prob", "global_accept_prob"); NaN entries (e.g. steps
            with no global move) are skipped.
        stat_means: mean of every per-step stat of the trace (invalid rate, i-SIR ESS, ...).
        wall_time: seconds of post-warm-up sampling, or None.
    """

    n_chains: int
    n_draws: int
    rhat: np.ndarray
    ess_bulk: np.ndarray
    ess_tail: np.ndarray
    mcse_mean: np.ndarray
    iat: np.ndarray
    ess_per_second: np.ndarray | None = None
    acceptance: dict[str, float] = field(default_factory=dict)
    stat_means: dict[str, float] = field(default_factory=dict)
    wall_time: float | None = None

    @property
    def max_rhat(self) -> float:
        """The largest R-hat over dimensions, the usual one-number convergence check."""
        return float(np.max(self.rhat))

    @property
    def min_ess_bulk(self) -> float:
        return float(np.min(self.ess_bulk))

    @property
    def min_ess_tail(self) -> float:
        return float(np.min(self.ess_tail))

    @property
    def converged(self) -> bool:
        """Whether every coordinate's R-hat is below `RHAT_THRESHOLD`.

        Chains that all sit in the same subset of modes pass this check: see `mode_hopping`
        and `compare_mode_weights` for what coordinates cannot show.
        """
        return self.max_rhat < RHAT_THRESHOLD

    @property
    def converged_defined(self) -> bool:
        """Whether every coordinate with a defined (non-NaN) R-hat is below the threshold."""
        defined = self.rhat[~np.isnan(self.rhat)]
        return bool(defined.size) and bool(np.all(defined < RHAT_THRESHOLD))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: scalars, per-dimension lists, acceptance."""
        out: dict[str, Any] = {
            "n_chains": self.n_chains,
            "n_draws": self.n_draws,
            "wall_time": self.wall_time,
            "max_rhat": self.max_rhat,
            "min_ess_bulk": self.min_ess_bulk,
            "min_ess_tail": self.min_ess_tail,
            "converged": self.converged,
            "rhat": self.rhat.tolist(),
            "ess_bulk": self.ess_bulk.tolist(),
            "ess_tail": self.ess_tail.tolist(),
            "mcse_mean": self.mcse_mean.tolist(),
            "iat": self.iat.tolist(),
            "acceptance": dict(self.acceptance),
            "stat_means": dict(self.stat_means),
        }
        if self.ess_per_second is not None:
            out["ess_per_second"] = self.ess_per_second.tolist()
            out["min_ess_per_second"] = float(np.min(self.ess_per_second))
        return out

    def table(self, max_rows: int = 10) -> str:
        """A terminal table; above `max_rows` dimensions, the ones with the largest R-hat."""
        dim = self.rhat.shape[0]
        rows = np.arange(dim) if dim <= max_rows else np.argsort(-self.rhat)[:max_rows]
        head = f"{'dim':>5} {'R-hat':>7} {'ESS bulk':>9} {'ESS tail':>9} {'MCSE mean':>10} {'IAT':>7}"
        if self.ess_per_second is not None:
            head += f" {'ESS/s':>9}"
        lines = [
            f"Mixing: {self.n_chains} chains x {self.n_draws} draws, {dim} dims"
            + (f", {self.wall_time:.3g} s" if self.wall_time is not None else ""),
            head,
        ]
        for d in rows:
            line = (
                f"{d:>5} {_fmt_rhat(self.rhat[d]):>7} {self.ess_bulk[d]:>9.0f} {self.ess_tail[d]:>9.0f} "
                f"{self.mcse_mean[d]:>10.3g} {self.iat[d]:>7.2f}"
            )
            if self.ess_per_second is not None:
                line += f" {self.ess_per_second[d]:>9.3g}"
            lines.append(line)
        if dim > max_rows:
            lines.append(f"  (showing the {max_rows} of {dim} dims with the largest R-hat)")
        undefined = np.flatnonzero(np.isnan(self.rhat))
        if undefined.size:
            verdict = (
                f"R-hat undefined for dims {undefined.tolist()}: constant draws, no variance to "
                f"compare; {'the other dims are ok' if self.converged_defined else 'NOT MIXED'}"
            )
        elif self.converged:
            verdict = "ok"
        else:
            verdict = f"NOT MIXED: some R-hat >= {RHAT_THRESHOLD}"
        defined = self.rhat[~np.isnan(self.rhat)]
        shown = f"{defined.max():.3f}" if defined.size else "undefined"
        lines.append(
            f"max R-hat {shown} ({verdict}); min ESS bulk {self.min_ess_bulk:.0f}, "
            f"tail {self.min_ess_tail:.0f}"
        )
        if self.acceptance:
            lines.append("acceptance " + ", ".join(f"{k} {v:.3f}" for k, v in self.acceptance.items()))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def mixing(trace: Any) -> MixingSummary:
    """Mixing diagnostics of chains, one value per coordinate, all computed by ArviZ.

    Args:
        trace: a `samplers.Trace` (anything with `.samples`, and optionally `.stats` and
            `.wall_time`), or a tensor / array shaped `(chains, draws, *event)`; event axes
            are flattened to `dim` coordinates.

    Returns:
        A `MixingSummary`; `str()` of it is a terminal table.

    Raises:
        ValueError: for a rank below 3, fewer than 2 chains or 4 draws (split R-hat needs
            them), or NaN / infinite samples.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(4, 500, 2))
        >>> summary = mixing(x)
        >>> summary.rhat.shape, summary.max_rhat < 1.01
        ((2,), True)
    """
    x = chains_array(trace, min_chains=2, min_draws=4, purpose="Split R-hat")
    n_chains, n_draws, _ = x.shape
    ess_mean = _arviz.ess(x, "mean")
    ess_bulk = _arviz.ess(x, "bulk")
    wall_time = getattr(trace, "wall_time", None)
    stat_means = _stat_means(getattr(trace, "stats", None) or {})
    return MixingSummary(
        n_chains=n_chains,
        n_draws=n_draws,
        rhat=_arviz.rhat(x),
        ess_bulk=ess_bulk,
        ess_tail=_arviz.ess(x, "tail"),
        mcse_mean=_arviz.mcse_mean(x),
        iat=n_chains * n_draws / ess_mean,
        ess_per_second=ess_bulk / wall_time if wall_time else None,
        acceptance={k: stat_means[k] for k in _ACCEPTANCE_KEYS if k in stat_means},
        stat_means=stat_means,
        wall_time=float(wall_time) if wall_time is not None else None,
    )


def max_rhat(samples: Any) -> float:
    """The largest rank-normalized split R-hat over coordinates (the paper's mixing metric).

    Args:
        samples: a Trace or an array `(chains, draws, *event)` with at least 2 chains and
            4 draws.

    Example:
        >>> import numpy as np
        >>> max_rhat(np.random.default_rng(0).normal(size=(4, 500, 3))) < 1.01
        True
    """
    return float(np.max(_arviz.rhat(chains_array(samples, min_chains=2, min_draws=4, purpose="Split R-hat"))))


def _fmt_rhat(value: float) -> str:
    return "undef" if np.isnan(value) else f"{value:.3f}"


def _stat_means(stats: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in stats.items():
        value = torch.as_tensor(value).detach().cpu().to(torch.float64)
        finite = value[~torch.isnan(value)]
        out[key] = float(finite.mean()) if finite.numel() else float("nan")
    return out

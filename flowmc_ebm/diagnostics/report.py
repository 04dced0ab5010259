"""One call that runs every diagnostic on a trace: a terminal table, figures and a JSON summary."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowmc_ebm.diagnostics._chains import chains_tensor
from flowmc_ebm.diagnostics.grid import grid_mode_weights
from flowmc_ebm.diagnostics.hopping import ModeHopping, mode_hopping
from flowmc_ebm.diagnostics.metrics import log_density_error
from flowmc_ebm.diagnostics.mixing import MixingSummary, mixing
from flowmc_ebm.diagnostics.modes import fit_modes
from flowmc_ebm.diagnostics.suspects import SuspectChains, plot_suspects, suspect_chains
from flowmc_ebm.diagnostics.weights import (
    KHAT_THRESHOLD,
    ModeWeightComparison,
    ModeWeights,
    broad_reference,
    compare_mode_weights,
    importance_mode_weights,
    mode_weights,
)


@dataclass
class Report:
    """Everything `report` found. `str(report)` is the terminal table.

    Attributes:
        mixing: coordinate-wise mixing.
        hopping: mode hopping, when modes are known or fitted.
        occupancy: mode weights from chain occupancy.
        importance: mode weights from importance sampling with the proposal.
        comparison: whether the two mode-weight estimates agree.
        true_weights: `(K,)` when known.
        metrics: the paper's numbers that apply (max R-hat, mode-weight MSEs, 2-D grid errors).
        suspects: which chains look unlike the others and why (R*, leave-one-out R-hat,
            collapsed step sizes, chains that never moved).
        warnings: sentences flagging what looks wrong.
        figures: name -> path of each PNG written.
    """

    mixing: MixingSummary
    hopping: ModeHopping | None = None
    occupancy: ModeWeights | None = None
    importance: ModeWeights | None = None
    comparison: ModeWeightComparison | None = None
    true_weights: np.ndarray | None = None
    suspects: SuspectChains | None = None
    tempering: dict[str, Any] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    figures: dict[str, Path] = field(default_factory=dict)

    @property
    def suspect_chains(self) -> list[int]:
        """Indices of the chains that look unlike the others, for any reason."""
        return [] if self.suspects is None else self.suspects.chains

    def table(self) -> str:
        parts = [self.mixing.table()]
        if self.suspects is not None:
            line = f"Suspect chains: {self.suspect_chains}" if self.suspect_chains else "Suspect chains: none"
            if np.isfinite(self.suspects.rstar):
                line += f" (R* {self.suspects.rstar:.2f})"
            parts.append(line)
        if self.hopping is not None:
            parts.append(self.hopping.table())
        for est in (self.occupancy, self.importance):
            if est is not None:
                parts.append(est.table(self.true_weights))
        if self.comparison is not None:
            parts.append(self.comparison.message)
        if self.metrics:
            parts.append("Metrics: " + ", ".join(f"{k} {v:.4g}" for k, v in self.metrics.items()))
        if self.warnings:
            parts.append("\n".join(f"WARNING: {w}" for w in self.warnings))
        else:
            parts.append("No warnings.")
        return "\n\n".join(parts)

    def __str__(self) -> str:
        return self.table()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary; non-finite numbers become None."""
        out = {
            "mixing": self.mixing.to_dict(),
            "hopping": self.hopping.to_dict() if self.hopping else None,
            "occupancy": self.occupancy.to_dict() if self.occupancy else None,
            "importance": self.importance.to_dict() if self.importance else None,
            "comparison": self.comparison.to_dict() if self.comparison else None,
            "true_weights": None if self.true_weights is None else self.true_weights.tolist(),
            "suspect_chains": self.suspect_chains,
            "suspects": self.suspects.to_dict() if self.suspects else None,
            "metrics": self.metrics,
            "warnings": self.warnings,
            "figures": {k: str(v) for k, v in self.figures.items()},
        }
        return _finite_or_none(out)


def report(
    trace: Any,
    assign: Any = None,
    *,
    target: Any = None,
    log_prob: Any = None,
    proposal: Any = None,
    reference: Any = "broad",
    defensive: float = 0.1,
    n_modes: int | None = None,
    true_weights: Any = None,
    n_importance: int = 10_000,
    bounds: Any = None,
    out: str | Path | None = None,
    figures: bool = True,
    print_table: bool = False,
    seed: int = 0,
) -> Report:
    """Diagnose a trace: mixing, mode hopping, mode weights two ways, the paper's metrics.

    Args:
        trace: a Trace or an array `(chains, draws, *event)`.
        assign: how to label modes (callable, centers, `FittedModes`). Defaults to
            `target.assign`; failing that, modes are fitted with a GMM when `n_modes` is given;
            otherwise mode diagnostics are skipped.
        target: the ground truth when known: `log_prob`, `sample(n, generator)`, `weights`,
            `assign`, `dim`.
        log_prob: the density the chains sample (e.g. an EBM's `-energy`); defaults to
            `target.log_prob`. With `proposal`, gives importance-sampling weights; for 2-D with
            a target, the grid metrics compare it with the target.
        proposal: a torch Distribution or a module returning one (the flow).
        reference: the broad reference of defensive importance sampling: the distribution the
            chains were started from when known (a torch Distribution); "broad" (default)
            for `broad_reference` of the chains and the known mode centers; None for plain
            importance sampling from `proposal`.
        defensive: share of the importance proposals drawn from `reference`.
        n_modes: K; defaults to `len(target.weights)` or what `assign` knows.
        true_weights: `(K,)`; defaults to `target.weights`.
        n_importance: number of importance-sampling proposals.
        bounds: box of the 2-D grid and plots, `((xmin, xmax), (ymin, ymax))` or `L`; defaults
            to the range of target draws (or of the chains), padded by 10%.
        out: directory for `summary.json` and the PNG figures; nothing written when None.
        figures: write figures into `out`.
        print_table: also print the table.
        seed: seeds importance sampling, target draws and plot subsampling.

    Returns:
        `Report`.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(4, 200, 2))
        >>> r = report(x, np.array([[-1.0, 0.0], [1.0, 0.0]]))
        >>> r.hopping.stuck, r.mixing.converged
        (False, True)
    """
    x = chains_tensor(trace)
    summary = mixing(trace)
    result = Report(mixing=summary, metrics={"max_rhat": summary.max_rhat})
    undefined = np.flatnonzero(np.isnan(summary.rhat))
    if undefined.size:
        result.warnings.append(
            f"R-hat is undefined for dims {undefined.tolist()}: their draws are constant, so "
            f"nothing can be said of their mixing."
        )
    if not summary.converged_defined and (~np.isnan(summary.rhat)).any():
        worst = float(np.nanmax(summary.rhat))
        result.warnings.append(f"Coordinate R-hat up to {worst:.3f}: the chains have not mixed.")
    _tempering(result, getattr(trace, "stats", None) or {}, x.shape[1] * (getattr(trace, "thin", 1) or 1))
    x64 = x.to(torch.float64).numpy()
    result.suspects = suspect_chains(x64, getattr(trace, "stats", None), rhat=summary.rhat, seed=seed)
    result.warnings.extend(result.suspects.messages())
    result.metrics["rstar"] = result.suspects.rstar
    result.metrics["collapsed_step_chains"] = float(result.suspects.collapsed.size)
    result.metrics["frozen_chains"] = float(result.suspects.frozen.size)

    if true_weights is None and target is not None:
        true_weights = target.weights
    if true_weights is not None:
        result.true_weights = np.asarray(torch.as_tensor(true_weights).cpu(), dtype=float)
        n_modes = n_modes or len(result.true_weights)
    if assign is None and target is not None:
        assign = target.assign
    if assign is None and n_modes is not None:
        assign = fit_modes(x, n_modes)
    density = log_prob if log_prob is not None else target
    bounds = bounds if bounds is not None else _default_bounds(x, target, seed)

    if assign is not None:
        if isinstance(reference, str):
            if reference != "broad":
                raise ValueError(
                    f"reference must be a Distribution, 'broad' or None; received {reference!r}."
                )
            centers = _centers(assign)
            if centers is None and target is not None and hasattr(target, "means"):
                centers = np.asarray(torch.as_tensor(target.means).detach().cpu(), dtype=float)
            reference = broad_reference(x, centers) if proposal is not None else None
        _mode_diagnostics(
            result, x, assign, n_modes, density, proposal, n_importance, seed, reference, defensive
        )
    if target is not None and log_prob is not None and x.shape[-1] == 2:
        result.metrics["log_density_median_sq_error"] = log_density_error(log_prob, target, bounds)
        if assign is not None and result.true_weights is not None:
            grid_w = grid_mode_weights(log_prob, assign, bounds, n_modes=len(result.true_weights))
            result.metrics["grid_mode_weight_mse"] = float(np.mean((grid_w - result.true_weights) ** 2))

    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        if figures:
            contours = target if target is not None else log_prob
            result.figures = _write_figures(result, x, contours, bounds, out, seed)
        (out / "summary.json").write_text(json.dumps(result.to_dict(), indent=2, allow_nan=False))
    if print_table:
        print(result.table())
    return result


def _mode_diagnostics(
    result: Report,
    x: torch.Tensor,
    assign: Any,
    n_modes: int | None,
    density: Any,
    proposal: Any,
    n_importance: int,
    seed: int,
    reference: Any = None,
    defensive: float = 0.1,
) -> None:
    result.hopping = hopping = mode_hopping(x, assign, n_modes=n_modes, warn=False)
    if hopping.message:
        result.warnings.append(hopping.message)
    result.occupancy = mode_weights(x, hopping.labels, n_modes=hopping.n_modes, warn=False)
    if result.true_weights is not None:
        result.metrics["occupancy_mode_weight_mse"] = float(
            np.mean((result.occupancy.weights - result.true_weights) ** 2)
        )
    if proposal is None or density is None:
        return
    result.importance = importance_mode_weights(
        density,
        proposal,
        assign,
        n_importance,
        n_modes=hopping.n_modes,
        seed=seed,
        reference=reference,
        defensive=defensive,
    )
    missed = result.importance.missed_by_proposal
    if missed.size:
        shares = ", ".join(f"{100 * result.importance.reference_share[m]:.0f}%" for m in missed)
        result.warnings.append(
            f"The proposal (flow) misses modes {[int(m) for m in missed]}: their importance mass "
            f"came from the broad reference's draws ({shares}), not from the flow."
        )
    if result.true_weights is not None:
        result.metrics["importance_mode_weight_mse"] = float(
            np.mean((result.importance.weights - result.true_weights) ** 2)
        )
    if result.importance.pareto_k > KHAT_THRESHOLD:
        result.warnings.append(
            f"Importance weights have Pareto k-hat {result.importance.pareto_k:.2f} > "
            f"{KHAT_THRESHOLD}: the proposal's tails are lighter than the target's somewhere "
            f"(or it misses mass), so the importance estimate and its SE are unreliable and "
            f"cannot confirm the chains' mode weights."
        )
    result.comparison = compare_mode_weights(result.occupancy, result.importance)
    if not result.comparison.agree:
        lead = (
            f"Coordinate R-hat looks fine (max {result.mixing.max_rhat:.3f}), yet"
            if result.mixing.converged
            else "In addition,"
        )
        result.warnings.append(
            f"{lead} chain occupancy and importance sampling disagree on the mode weights "
            f"(max |z| = {result.comparison.max_abs_z:.1f}): the chains likely do not move "
            f"between modes, or all sit in the same subset of modes."
        )


def _tempering(result: Report, stats: dict[str, Any], steps: int) -> None:
    """Parallel tempering figures, when the trace has them (stats "swap_accept", "round_trips")."""
    if "round_trips" not in stats or "swap_accept" not in stats:
        return
    trips = np.asarray(torch.as_tensor(stats["round_trips"]).detach().cpu().double())
    swap = np.asarray(torch.as_tensor(stats["swap_accept"]).detach().cpu().double())
    per_chain = trips.reshape(trips.shape[0], -1)[:, -1]
    result.metrics["pt_round_trips_per_1000_steps"] = float(1000 * per_chain.mean() / max(steps, 1))
    result.metrics["pt_swap_accept"] = float(np.nanmean(swap))
    result.tempering = {"round_trips": per_chain, "swap_accept": swap}
    if per_chain.max() == 0:
        result.warnings.append(
            "Parallel tempering: no chain's ladder made a single round trip (reference -> target "
            "-> reference): the replicas do not carry states across the ladder."
        )


def _plot_tempering(tempering: dict[str, np.ndarray]):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.5), layout="constrained")
    left, right = fig.subplots(1, 2)
    swap = tempering["swap_accept"]
    flat = swap.reshape(swap.shape[0], swap.shape[1], -1)
    left.plot(np.nanmean(flat, axis=(0, 2)), lw=0.8)
    left.set(
        xlabel="draw",
        ylabel="swap acceptance (mean over chains)",
        ylim=(0, 1),
        title="Parallel tempering: swaps",
    )
    right.bar(np.arange(len(tempering["round_trips"])), tempering["round_trips"])
    right.set(xlabel="chain", ylabel="round trips", title="Round trips per chain's ladder")
    return fig


def _centers(assign: Any) -> np.ndarray | None:
    """Mode centers when `assign` holds them (an array of centers, `FittedModes`), else None."""
    if hasattr(assign, "centers_"):
        return np.asarray(assign.centers_, dtype=float)
    if callable(assign):
        return None
    centers = np.asarray(torch.as_tensor(assign).cpu(), dtype=float)
    return centers if centers.ndim == 2 else None


def _default_bounds(x: torch.Tensor, target: Any, seed: int) -> Any:
    if x.shape[-1] != 2:
        return None
    points = x.reshape(-1, 2).double()
    if target is not None and hasattr(target, "sample"):
        with torch.no_grad():
            drawn = target.sample(4000, torch.Generator().manual_seed(seed))
        points = torch.cat([points, torch.as_tensor(drawn).reshape(-1, 2).double().cpu()])
    lo, hi = points.min(0).values.numpy(), points.max(0).values.numpy()
    pad = 0.1 * (hi - lo) + 1e-6
    return ((lo[0] - pad[0], hi[0] + pad[0]), (lo[1] - pad[1], hi[1] + pad[1]))


def _write_figures(
    result: Report, x: torch.Tensor, contours: Any, bounds: Any, out: Path, seed: int
) -> dict[str, Path]:
    from flowmc_ebm import plots

    figs = {"traces": plots.plot_traces(x, highlight=result.suspect_chains)}
    if x.shape[-1] == 2:
        figs["samples"] = plots.plot_samples_2d(x, contours, bounds=bounds, seed=seed)
    if result.hopping is not None:
        figs["occupancy"] = plots.plot_mode_occupancy(result.hopping)
    if result.occupancy is not None:
        estimates = {"chain occupancy": result.occupancy}
        if result.importance is not None:
            estimates["importance sampling"] = result.importance
        figs["mode_weights"] = plots.plot_mode_weights(estimates, result.true_weights)
    if result.suspects is not None and np.isfinite(result.suspects.rstar):
        figs["suspect_chains"] = plot_suspects(result.suspects)
    if result.tempering is not None:
        figs["tempering"] = _plot_tempering(result.tempering)
    paths = {}
    for name, fig in figs.items():
        paths[name] = out / f"{name}.png"
        fig.savefig(paths[name], dpi=90)
    return paths


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value

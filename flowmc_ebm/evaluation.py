"""How much mass a trained 2-D EBM puts on each mode, and pictures of it.

Two estimates of an EBM's mode weights: `quadrature_mode_weights` normalizes the model density on
a grid and sums the mass of each mode's region (exact up to the grid and the box, no sampling
noise); `sample_mode_weights` counts where the model's own MCMC samples fall (what a user of the
sampler sees). `last_quarter_summary` turns a training history into the numbers the results
report (weight over the last quarter of training, acceptance, R̂ of the persistent chains, which
`ChainSnapshots` records). The figures are the two every run writes: density landscapes and the
weight of one mode against the iteration (`write_figures`; `write_model_figure` for a run on a
user's data).

Example:
    >>> from flowmc_ebm.targets import TwoModes
    >>> target = TwoModes()
    >>> w = quadrature_mode_weights(target.log_prob, target)
    >>> round(w[target.top_right].item(), 3)
    0.667
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from flowmc_ebm.diagnostics.grid import grid_log_density, grid_quadrature
from flowmc_ebm.diagnostics.mixing import max_rhat as diagnostics_max_rhat
from samplers.rundir import atomic_write

__all__ = ["ChainSnapshots", "focus_mode", "landscape_figure", "last_quarter_summary",
           "max_rhat", "mode_name", "quadrature_mode_weights", "sample_mode_weights",
           "weight_figure", "write_figures", "write_model_figure"]

Bounds = tuple[tuple[float, float], tuple[float, float]]
#: The box used for TwoModes and the other 2-D targets: their modes and the tilt's bulk fit inside.
DEFAULT_BOUNDS: Bounds = ((-4.5, 4.5), (-4.5, 4.5))
#: ``(label, iterations, weights)``: one line of `weight_figure`.
Curve = tuple[str, Sequence[float], Sequence[float]]


def quadrature_mode_weights(log_prob: Callable[[Tensor], Tensor], target,
                            bounds: Bounds = DEFAULT_BOUNDS, n_grid: int = 128,
                            device: torch.device | str | None = None) -> Tensor:
    """Mode weights of a 2-D model by the package's one quadrature
    (`flowmc_ebm.diagnostics.grid.grid_quadrature`), for a target object.

    Float32 points, ``target.assign`` for the modes, NaN cells carrying no mass (an EBM in the
    middle of training); mass outside ``bounds`` is ignored (below 1e-4 for the tilted EBM of
    TwoModes unless the energy grows a far-away well).

    Args:
        log_prob: unnormalized log-density ``(n, 2) -> (n,)``, e.g. `JointTrainer.log_prob`.
        target: anything with ``assign(x) -> mode index`` and ``n_modes``.
        bounds: ``((xmin, xmax), (ymin, ymax))``.
        n_grid: cells per axis.
        device: where ``log_prob`` wants its input (default CPU).

    Returns:
        Weights ``(n_modes,)``, float64, summing to 1.
    """
    result = grid_quadrature(log_prob, target.assign, bounds, n_grid, n_modes=target.n_modes,
                             dtype=torch.float32, device=device, nan="zero")
    return torch.from_numpy(result.weights)


def sample_mode_weights(samples: Tensor, target) -> Tensor:
    """Mode weights as the fraction of samples in each mode.

    Args:
        samples: points ``(n, dim)`` or chains ``(chains, draws, dim)``, pooled.
        target: anything with ``assign`` and ``n_modes``.

    Returns:
        Weights ``(n_modes,)``, float64.

    Example:
        >>> from flowmc_ebm.targets import TwoModes
        >>> sample_mode_weights(torch.tensor([[1.5, 1.5], [1.4, 1.6], [-1.5, -1.5]]), TwoModes())
        tensor([0.3333, 0.6667], dtype=torch.float64)
    """
    x = samples.reshape(-1, samples.shape[-1])
    counts = torch.bincount(target.assign(x).cpu(), minlength=target.n_modes)
    return counts.double() / x.shape[0]


class ChainSnapshots:
    """A `JointTrainer` callback keeping the positions of the first ``n_chains`` persistent chains.

    The trainer calls it every ``log_every`` iterations; the snapshots are the draws R̂ is
    computed on.

    Args:
        n_chains: how many chains of the pool to follow.

    Example:
        >>> snapshots = ChainSnapshots(64)
        >>> # trainer.fit(data, n_iterations=1000, callbacks=[snapshots])
        >>> snapshots.chains().shape  # (chains, draws, dim); no draws yet
        torch.Size([0, 0, 0])
    """

    def __init__(self, n_chains: int = 128) -> None:
        self.n_chains = n_chains
        self.iterations: list[int] = []
        self.positions: list[Tensor] = []

    def __call__(self, trainer) -> None:
        self.iterations.append(trainer.iteration_)
        self.positions.append(trainer.pool_[:self.n_chains].detach().cpu().clone())

    def state_dict(self) -> dict:
        """Plain data for a checkpoint, so a resumed run computes R̂ on all its snapshots."""
        return {"n_chains": self.n_chains, "iterations": list(self.iterations),
                "positions": torch.stack(self.positions) if self.positions else None}

    def load_state_dict(self, state: dict) -> None:
        self.n_chains, self.iterations = state["n_chains"], list(state["iterations"])
        self.positions = [] if state["positions"] is None else list(state["positions"].unbind(0))

    def chains(self, since: int = 0) -> Tensor:
        """Snapshots taken at iteration ``>= since``, as ``(chains, draws, dim)``."""
        kept = [x for i, x in zip(self.iterations, self.positions, strict=True) if i >= since]
        if not kept:
            return torch.zeros(0, 0, 0)
        return torch.stack(kept, 1)


def max_rhat(chains: Tensor) -> float:
    """`flowmc_ebm.diagnostics.max_rhat` of chains ``(chains, draws, dim)``; NaN when there are
    fewer than 2 chains or 4 draws (e.g. a run shorter than a few ``log_every``)."""
    if chains.ndim != 3 or chains.shape[0] < 2 or chains.shape[1] < 4:
        return math.nan
    return diagnostics_max_rhat(chains.double().numpy())


def last_quarter_summary(history: dict[str, list], mode: int, truth: float,
                         snapshots: ChainSnapshots | None = None) -> dict[str, float]:
    """What a run says about one mode's weight over its last 25% of iterations.

    Args:
        history: `JointTrainer.fit`'s history, fitted with a target (2-D for the quadrature).
        mode: the mode index whose weight is reported (e.g. ``TwoModes.top_right``).
        truth: its true weight.
        snapshots: the chains recorded during training, for R̂.

    Returns:
        ``weight_mean``, ``weight_sd`` (over the evaluations in the last quarter, quadrature of
        the EBM; NaN when none fell there, e.g. a run shorter than ``eval_every``),
        ``weight_error`` (mean − truth), ``neg_weight_mean`` (the persistent chains' occupancy,
        i.e. the model's own samples), ``local_accept``, ``global_accept``, ``rhat`` (of the
        followed chains over the last quarter) and ``iterations``.
    """
    last = history["iteration"][-1]
    since = last - last // 4
    out: dict[str, float] = {"iterations": float(last), "weight_mean": math.nan,
                             "weight_sd": math.nan, "weight_error": math.nan}
    if history.get("ebm_mode_weights"):
        w = torch.tensor([ws[mode] for i, ws in zip(history["eval_iteration"],
                                                     history["ebm_mode_weights"], strict=True)
                          if i > since], dtype=torch.float64)
        out["weight_mean"] = float(w.mean()) if w.numel() else math.nan
        out["weight_sd"] = float(w.std()) if w.numel() > 1 else math.nan
        out["weight_error"] = out["weight_mean"] - truth
    recent = [i for i, it in enumerate(history["iteration"]) if it > since]

    def mean_of(key: str, index: int | None = None) -> float:
        values = [history[key][i] if index is None else history[key][i][index] for i in recent]
        t = torch.tensor(values, dtype=torch.float64)
        return float(t.nanmean()) if t.numel() else math.nan

    if "neg_mode_weights" in history:
        out["neg_weight_mean"] = mean_of("neg_mode_weights", mode)
    out["local_accept"] = mean_of("local_accept")
    out["global_accept"] = mean_of("global_accept")
    out["rhat"] = max_rhat(snapshots.chains(since)) if snapshots is not None else math.nan
    return out


def landscape_figure(panels: Sequence[tuple[str, Callable[[Tensor], Tensor]]], path: str | Path,
                     data: Tensor | None = None, bounds: Bounds = DEFAULT_BOUNDS,
                     n_grid: int = 128, points: Sequence[Tensor | None] | None = None,
                     device: torch.device | str | None = None) -> Path:
    """Side-by-side log-density maps of 2-D models, normalized on the grid, saved as an image.

    Args:
        panels: ``(title, log_prob)`` pairs, one panel each.
        path: image file to write.
        data: optional data ``(n, 2)``, a few hundred of them drawn over each panel.
        bounds, n_grid: the grid.
        points: optional per-panel samples ``(m, 2)`` (e.g. the persistent chains), or None.
        device: where the ``log_prob`` functions want their input (default CPU).

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
    (x0, x1), (y0, y1) = bounds
    for i, (ax, (title, log_prob)) in enumerate(zip(axes[0], panels, strict=True)):
        log_density = grid_log_density(log_prob, bounds, n_grid, dtype=torch.float32, device=device,
                                       nan="zero").log_density
        # Log scale, clipped 10 nats below the peak: a sharp spike would black out a linear map.
        top = float(log_density.max())
        image = ax.imshow(np.maximum(log_density, top - 10), origin="lower",
                          extent=(x0, x1, y0, y1), cmap="viridis", aspect="equal",
                          vmin=top - 10, vmax=top)
        fig.colorbar(image, ax=ax, shrink=0.8, label="log density (nats, normalized on the box)")
        if data is not None:
            shown = data[:300].detach().cpu().numpy()
            ax.scatter(shown[:, 0], shown[:, 1], s=2, c="white", alpha=0.5, label="data")
        extra = points[i] if points is not None else None
        if extra is not None:
            shown = extra[:300].detach().cpu().numpy()
            ax.scatter(shown[:, 0], shown[:, 1], s=2, c="tab:red", alpha=0.6, label="chains")
        ax.set_title(title, fontsize=10)
        ax.set(xlim=(x0, x1), ylim=(y0, y1), xlabel="x[0]", ylabel="x[1]")
        if data is not None or extra is not None:
            ax.legend(loc="upper left", fontsize="small", markerscale=4, framealpha=0.8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def weight_figure(curves: Sequence[Curve] | Mapping[str, Sequence[Curve]], truth: float,
                  path: str | Path, ylabel: str = "EBM weight of the top-right mode",
                  xlabel: str = "iteration") -> Path:
    """One mode's weight against the iteration, one line per run, the true weight dashed.

    Args:
        curves: ``(label, iterations, weights)`` triples drawn on one panel, or a mapping from
            panel titles to such triples (one panel each, side by side: e.g. one per method
            with its seeds, which on one panel would hide each other).
        truth: the true weight.
        path: image file to write.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    panels = dict(curves) if isinstance(curves, Mapping) else {"": curves}
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels) + 2.4, 3.6),
                             squeeze=False, sharey=True)
    for ax, (title, triples) in zip(axes[0], panels.items(), strict=True):
        for label, iterations, weights in triples:
            ax.plot(np.asarray(iterations), np.asarray(weights, dtype=float), label=label, lw=1.1)
        ax.axhline(truth, color="black", ls="--", lw=1, label=f"truth {truth:.3f}")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize=10)
        # Outside the axes: the curves cover the whole range, so no corner inside is free.
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.18), ncol=2)
    axes[0][0].set_ylabel(ylabel)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


# ------------------------------------------------------------------- the files a run writes


def focus_mode(target: Any) -> int:
    """The mode whose weight runs report: TwoModes' top-right one, else the heaviest."""
    return int(getattr(target, "top_right", int(torch.argmax(target.weights))))


def mode_name(target: Any, mode: int) -> str:
    """How figures name the reported mode: TwoModes' "the top-right mode", else its index and
    place (e.g. "mode 3 at (3, 0)"; the figure draws its true weight)."""
    if getattr(target, "top_right", None) == mode:
        return "the top-right mode"
    where = ""
    means = getattr(target, "means", None)
    if means is not None and means.shape[-1] == 2:
        where = " at ({:g}, {:g})".format(*(round(float(v), 2) for v in means[mode]))
    return f"mode {mode}{where}"


def write_figures(trainer: Any, target: Any, data: torch.Tensor, out: Path,
                  label: str, pool: torch.Tensor | None = None) -> None:
    """``landscape.png`` and ``weights.png`` of one 2-D run (``pool``: the chains to draw,
    default ``trainer.pool_``)."""
    mode = focus_mode(target)
    pool = trainer.pool_ if pool is None else pool
    # Drawn in a scratch directory, then moved in atomically like every file of a run.
    with tempfile.TemporaryDirectory() as scratch:
        drawn = landscape_figure(
            [("target", target.log_prob), (f"{label}-EBM", trainer.log_prob)],
            Path(scratch) / "landscape.png", data=data, points=[None, pool],
            device=trainer.device)
        atomic_write(out / "landscape.png", drawn.read_bytes())
        h = trainer.history_
        if h.get("ebm_mode_weights"):
            weights = [w[mode] for w in h["ebm_mode_weights"]]
            drawn = weight_figure([(f"{label}-EBM (quadrature)", h["eval_iteration"], weights)],
                                  float(target.weights[mode]), Path(scratch) / "weights.png",
                                  ylabel=f"EBM weight of {mode_name(target, mode)}")
            atomic_write(out / "weights.png", drawn.read_bytes())


def write_model_figure(trainer: Any, data: torch.Tensor, out: Path,
                       data_run: Any = None, pool: torch.Tensor | None = None) -> None:
    """``model.png``: the model's samples beside the data (in the data's units), a density
    panel in 2-D and a pair plot above."""
    from flowmc_ebm.plots import plot_data_vs_model

    # The persistent chains: the model's own draws.
    samples = (trainer.pool_ if pool is None else pool).detach()
    std = data_run.standardization if data_run is not None else None
    names = std.names if std is not None else None
    log_prob = trainer.log_prob
    if std is not None:
        data, samples = std.inverse_transform(data), std.inverse_transform(samples)
        log_prob = lambda x: trainer.log_prob(std.transform(x.to(trainer.device)))  # noqa: E731
    fig = plot_data_vs_model(data, samples, log_prob=log_prob if data.shape[1] == 2 else None,
                             names=names)
    with tempfile.TemporaryDirectory() as scratch:
        fig.savefig(Path(scratch) / "model.png", dpi=90)
        atomic_write(out / "model.png", (Path(scratch) / "model.png").read_bytes())

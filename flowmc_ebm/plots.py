"""Figures for the diagnostics: traces and rank plots, samples over contours, mode occupancy and
mode weights with their intervals.

Every function returns a `matplotlib.figure.Figure` built without pyplot, so nothing depends on
the backend or on global figure state; save with `fig.savefig(path)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from flowmc_ebm.diagnostics import _arviz
from flowmc_ebm.diagnostics._chains import chains_array
from flowmc_ebm.diagnostics.hopping import ModeHopping
from flowmc_ebm.diagnostics.metrics import grid_log_density
from flowmc_ebm.diagnostics.weights import ModeWeights


def _palette(n: int) -> list:
    import seaborn as sns

    return sns.color_palette("tab10" if n <= 10 else "husl", n)


def plot_traces(samples: Any, *, max_dims: int = 4) -> Figure:
    """Trace (left) and ArviZ rank plot (right) of the first `max_dims` coordinates.

    Rank plots show a flat histogram per chain when chains mix; a chain whose ranks pile up at
    one end sits apart from the others.

    Args:
        samples: a Trace or an array `(chains, draws, *event)`.
        max_dims: at most this many coordinates (rows).

    Example:
        >>> import numpy as np
        >>> fig = plot_traces(np.random.default_rng(0).normal(size=(2, 100, 3)), max_dims=2)
        >>> len(fig.axes)
        4
    """
    x = chains_array(samples)
    n_chains, _, dim = x.shape
    rows = min(dim, max_dims)
    fig = Figure(figsize=(10, 2.2 * rows), layout="constrained")
    axes = fig.subplots(rows, 2, squeeze=False, width_ratios=[2, 1])
    colors = _palette(n_chains)
    for d in range(rows):
        for c in range(n_chains):
            axes[d, 0].plot(x[c, :, d], lw=0.6, alpha=0.8, color=colors[c])
        axes[d, 0].set_ylabel(f"x[{d}]")
        _arviz.az.plot_rank(
            _arviz.az.convert_to_dataset({f"x[{d}]": x[:, :, d]}), ax=axes[d, 1], colors=colors
        )
        # ArviZ sizes its text for a figure of its own; match the traces beside it.
        axes[d, 1].title.set_fontsize("medium")
        axes[d, 1].xaxis.label.set_fontsize("small")
        axes[d, 1].yaxis.label.set_fontsize("small")
    axes[-1, 0].set_xlabel("draw")
    fig.suptitle("Traces and rank plots" + (f" (first {rows} of {dim} dims)" if dim > rows else ""))
    return fig


def plot_samples_2d(
    samples: Any,
    log_prob: Any = None,
    *,
    bounds: Any = None,
    n_grid: int = 120,
    max_points: int = 4000,
    seed: int = 0,
) -> Figure:
    """Draws of each chain (colors) over the contours of a 2-D density.

    Args:
        samples: a Trace or an array `(chains, draws, 2)`.
        log_prob: density whose contours are drawn (callable or object with `.log_prob`);
            none drawn when None.
        bounds: `((xmin, xmax), (ymin, ymax))`; defaults to the samples' range, padded.
        n_grid: grid cells per axis for the contours.
        max_points: at most this many draws are shown (a seeded random subset).
        seed: seed of that subset.

    Example:
        >>> import numpy as np
        >>> fig = plot_samples_2d(np.random.default_rng(0).normal(size=(2, 100, 2)))
        >>> len(fig.axes)
        1
    """
    x = chains_array(samples)
    if x.shape[2] != 2:
        raise ValueError(f"plot_samples_2d needs 2-D samples (chains, draws, 2); received dim {x.shape[2]}.")
    n_chains, n_draws, _ = x.shape
    if bounds is None:
        lo, hi = x.min(axis=(0, 1)), x.max(axis=(0, 1))
        pad = 0.1 * (hi - lo) + 1e-6
        bounds = ((lo[0] - pad[0], hi[0] + pad[0]), (lo[1] - pad[1], hi[1] + pad[1]))
    fig = Figure(figsize=(5.5, 5), layout="constrained")
    ax = fig.subplots()
    if log_prob is not None:
        grid = grid_log_density(log_prob, bounds, n_grid)
        ax.contour(grid.x, grid.y, np.exp(grid.log_density), levels=8, cmap="Greys")
    chain = np.repeat(np.arange(n_chains), n_draws)
    flat = x.reshape(-1, 2)
    keep = np.random.default_rng(seed).permutation(len(flat))[:max_points]
    colors = _palette(n_chains)
    ax.scatter(flat[keep, 0], flat[keep, 1], s=4, alpha=0.5, c=[colors[c] for c in chain[keep]], linewidths=0)
    ax.set(
        xlim=bounds[0],
        ylim=bounds[1],
        xlabel="x[0]",
        ylabel="x[1]",
        title="Samples by chain" + (" over the contours" if log_prob is not None else ""),
    )
    return fig


def plot_mode_occupancy(hopping: ModeHopping | Any, n_modes: int | None = None) -> Figure:
    """Fraction of chains in each mode against the draw index, and each chain's mode over time.

    Args:
        hopping: a `ModeHopping`, or integer labels `(chains, draws)`.
        n_modes: K when `hopping` is labels; defaults to the largest label + 1.

    Example:
        >>> import numpy as np
        >>> fig = plot_mode_occupancy(np.array([[0, 0, 1, 1], [1, 1, 1, 0]]))
        >>> len(fig.axes)
        2
    """
    if isinstance(hopping, ModeHopping):
        labels, k = hopping.labels, hopping.n_modes
    else:
        labels = np.asarray(hopping, dtype=np.int64)
        if labels.ndim != 2:
            raise ValueError(f"labels must be shaped (chains, draws); received {labels.shape}.")
        k = n_modes if n_modes is not None else int(labels.max()) + 1
    fractions = (labels[..., None] == np.arange(k)).mean(axis=0).T  # (K, draws)
    colors = _palette(k)
    fig = Figure(figsize=(9, 5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[1, 1])
    top.stackplot(
        np.arange(labels.shape[1]), fractions, colors=colors, labels=[f"mode {m}" for m in range(k)]
    )
    top.set(ylabel="fraction of chains", ylim=(0, 1), title="Mode occupancy against step")
    top.legend(loc="upper right", fontsize="small")
    bottom.imshow(
        labels, aspect="auto", interpolation="nearest", cmap=ListedColormap(colors), vmin=-0.5, vmax=k - 0.5
    )
    bottom.set(xlabel="draw", ylabel="chain", title="Mode of each chain")
    return fig


def plot_mode_weights(estimates: ModeWeights | Mapping[str, ModeWeights], true_weights: Any = None) -> Figure:
    """Mode weights of one or several estimators with their intervals, beside the truth.

    Args:
        estimates: a `ModeWeights`, or a mapping from a label to one.
        true_weights: `(K,)` true weights, drawn as grey bars when given.

    Example:
        >>> import numpy as np
        >>> from flowmc_ebm.diagnostics import mode_weights
        >>> w = mode_weights(np.random.default_rng(0).normal(size=(2, 100, 1)),
        ...                  np.array([[-1.0], [1.0]]))
        >>> len(plot_mode_weights({"chains": w}, [0.5, 0.5]).axes)
        1
    """
    if isinstance(estimates, ModeWeights):
        estimates = {estimates.method: estimates}
    k = max(est.n_modes for est in estimates.values())
    fig = Figure(figsize=(1.2 * k + 3, 4), layout="constrained")
    ax = fig.subplots()
    modes = np.arange(k)
    if true_weights is not None:
        ax.bar(modes, np.asarray(true_weights, dtype=float), width=0.7, color="0.85", label="true")
    colors = _palette(len(estimates))
    offsets = np.linspace(-0.2, 0.2, len(estimates)) if len(estimates) > 1 else [0.0]
    for (name, est), dx, color in zip(estimates.items(), offsets, colors, strict=True):
        ax.errorbar(
            modes[: est.n_modes] + dx,
            est.weights,
            # Round-off can put an interval end a hair past an estimate at 0 or 1.
            yerr=np.clip([est.weights - est.lower, est.upper - est.weights], 0.0, None),
            fmt="o",
            capsize=4,
            color=color,
            label=f"{name} ({100 * est.level:g}% interval)",
        )
    ax.set(xticks=modes, xlabel="mode", ylabel="weight", ylim=(0, None), title="Mode weights")
    ax.legend(fontsize="small")
    return fig

"""Figures for the diagnostics: traces and rank plots, samples over contours, mode occupancy and
mode weights with their intervals, and a trained model's samples beside the data.

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


def plot_traces(
    samples: Any, *, max_dims: int = 4, chains: Any = None, highlight: Any = (), max_chains: int = 16
) -> Figure:
    """Trace (left) and ArviZ rank plot (right) of the first `max_dims` coordinates.

    Rank plots show a flat histogram per chain when chains mix; a chain whose ranks pile up at
    one end sits apart from the others. With many chains neither panel can be read, so at most
    `max_chains` are drawn (spread over the run's chain indices, the highlighted ones always
    among them); ranks are those within the chains drawn.

    Args:
        samples: a Trace or an array `(chains, draws, *event)`.
        max_dims: at most this many coordinates (rows).
        chains: indices of the chains to draw; None for all of them, or `max_chains` spread out
            when there are more.
        highlight: chain indices drawn in red on top of the others and named in the legend
            (e.g. `Report.suspect_chains`).
        max_chains: how many chains to draw when `chains` is None.

    Example:
        >>> import numpy as np
        >>> fig = plot_traces(np.random.default_rng(0).normal(size=(2, 100, 3)), max_dims=2)
        >>> len(fig.axes)
        4
    """
    x = chains_array(samples)
    n_chains, _, dim = x.shape
    highlight = sorted({int(c) for c in highlight})
    bad = [c for c in highlight if not 0 <= c < n_chains]
    if bad:
        raise ValueError(f"highlight must hold chain indices in 0..{n_chains - 1}; received {bad}")
    if chains is None:
        chains = _spread_chains(n_chains, max_chains, highlight)
    else:
        chains = sorted({int(c) for c in chains} | set(highlight))
        bad = [c for c in chains if not 0 <= c < n_chains]
        if bad:
            raise ValueError(f"chains must hold chain indices in 0..{n_chains - 1}; received {bad}")
    rows = min(dim, max_dims)
    fig = Figure(figsize=(10, 2.2 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, 2, squeeze=False, width_ratios=[2, 1])
    plain = [c for c in chains if c not in highlight]
    colors = dict(zip(plain, _palette(len(plain)) if plain else [], strict=True))
    colors.update({c: "tab:red" for c in highlight})
    for d in range(rows):
        for c in plain + highlight:  # highlighted chains on top
            red = c in highlight
            axes[d, 0].plot(x[c, :, d], lw=1.1 if red else 0.6, alpha=1.0 if red else 0.7,
                            color=colors[c], zorder=3 if red else 2,
                            label=f"chain {c}" if red and d == 0 else None)
        axes[d, 0].set_ylabel(f"x[{d}]")
        _arviz.az.plot_rank(
            _arviz.az.convert_to_dataset({f"x[{d}]": x[chains, :, d]}),
            ax=axes[d, 1],
            colors=[colors[c] for c in chains],
        )
        # ArviZ numbers the chains it was given 0..k-1: label the rows with the run's indices.
        # (ArviZ puts one tick per chain, at its row).
        ticks = axes[d, 1].get_yticks()
        if len(ticks) == len(chains):
            axes[d, 1].set_yticks(ticks, [str(c) for c in chains], fontsize="x-small")
        axes[d, 1].set_ylabel("chain", fontsize="small")
        # ArviZ sizes its text for a figure of its own; match the traces beside it.
        axes[d, 1].title.set_fontsize("medium")
        axes[d, 1].xaxis.label.set_fontsize("small")
    if highlight:
        axes[0, 0].legend(fontsize="small", loc="upper right", title="suspect", title_fontsize="small")
    axes[-1, 0].set_xlabel("draw")
    shown = f"{len(chains)} of {n_chains} chains" if len(chains) < n_chains else f"{n_chains} chains"
    title = f"Traces and rank plots ({shown}" + (f", first {rows} of {dim} dims)" if dim > rows else ")")
    if highlight:
        title += f"; suspect chains in red: {highlight}"
    fig.suptitle(title)
    return fig


def _spread_chains(n_chains: int, k: int, keep: list[int]) -> list[int]:
    """`k` chain indices spread over `0..n_chains-1`, always including `keep`."""
    if n_chains <= k:
        return list(range(n_chains))
    spread = np.linspace(0, n_chains - 1, max(k - len(keep), 1)).round().astype(int).tolist()
    return sorted(set(spread) | set(keep))


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


def plot_mode_weights(estimates: ModeWeights | Mapping[str, ModeWeights], true_weights: Any = None,
                      *, mode_names: list[str] | None = None) -> Figure:
    """Mode weights of one or several estimators as bars with their intervals, beside the truth.

    Each mode has a group of bars: the true weight (grey, hatched) when known, then one bar per
    estimator with its interval as an error bar; the numbers are written above the bars.

    Args:
        estimates: a `ModeWeights`, or a mapping from a label to one.
        true_weights: `(K,)` true weights, or None.
        mode_names: a name per mode for the axis (default ``mode 0``, ``mode 1``, ...).

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
    names = list(mode_names) if mode_names is not None else [f"mode {m}" for m in range(k)]
    if len(names) != k:
        raise ValueError(f"mode_names must name {k} modes; received {len(names)}")
    groups = len(estimates) + (true_weights is not None)
    width = 0.8 / groups
    fig = Figure(figsize=(max(1.1 * k * groups / 2 + 3, 5), 4), layout="constrained")
    ax = fig.subplots()
    modes = np.arange(k)
    slot = 0
    truth = None if true_weights is None else np.asarray(_as_numpy(true_weights), dtype=float)
    if truth is not None:
        bars = ax.bar(modes + (slot - (groups - 1) / 2) * width, truth, width, color="0.85",
                      edgecolor="0.4", hatch="//", label="truth")
        ax.bar_label(bars, fmt="%.3f", fontsize="x-small", padding=2)
        slot += 1
    colors = _palette(len(estimates))
    for (name, est), color in zip(estimates.items(), colors, strict=True):
        x = modes[: est.n_modes] + (slot - (groups - 1) / 2) * width
        # Round-off can put an interval end a hair past an estimate at 0 or 1.
        err = np.clip([est.weights - est.lower, est.upper - est.weights], 0.0, None)
        bars = ax.bar(x, est.weights, width, color=color, alpha=0.85, yerr=err, capsize=3,
                      error_kw={"elinewidth": 1.2}, label=f"{name} ({100 * est.level:g}% interval)")
        ax.bar_label(bars, labels=[f"{w:.3f}" for w in est.weights], fontsize="x-small", padding=2)
        slot += 1
    top = max([float(np.max(e.upper)) for e in estimates.values()]
              + ([float(np.max(truth))] if truth is not None else []))
    # Headroom for the value labels above the tallest bar; the legend goes below the axes, where
    # it cannot cover a bar or a label whatever the weights are.
    ax.set(xticks=modes, xticklabels=names, ylabel="weight (share of the mass)",
           ylim=(0, min(1.0, top * 1.12) + 0.04 if top > 0 else 1.0), title="Mode weights")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", fontsize="small",
               ncols=min(groups, 3), frameon=False)
    return fig


def plot_data_vs_model(data: Any, samples: Any, *, log_prob: Any = None,
                       names: list[str] | None = None, max_dims: int = 4, bounds: Any = None,
                       n_grid: int = 160, max_points: int = 3000, seed: int = 0) -> Figure:
    """A trained model's samples beside the data it was trained on.

    In 2-D: the model's normalized log-density on a grid (colorbar in nats) with the data and
    the model's samples over it. In higher dimension: a pair plot (seaborn histograms on the
    diagonal, both point sets off it) of the first ``max_dims`` coordinates, or, above
    ``max_dims`` coordinates, of the data's first ``max_dims`` principal components (the
    samples projected on the same axes).

    Args:
        data: points ``(n, d)`` (array or tensor).
        samples: the model's draws ``(m, d)``.
        log_prob: the model's (unnormalized) log-density, for the 2-D panel.
        names: coordinate names for the axes (default ``x[0]``, ``x[1]``, ...).
        max_dims: coordinates (or components) in the pair plot.
        bounds: the 2-D box; default the data's range, padded by 10 %.
        n_grid: cells per axis of the 2-D grid.
        max_points: at most this many points of each set are drawn (a seeded subset).
        seed: seed of those subsets.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> fig = plot_data_vs_model(rng.normal(size=(200, 5)), rng.normal(size=(100, 5)))
        >>> len(fig.axes)
        16
    """
    import seaborn as sns

    x = np.asarray(_as_numpy(data), dtype=float)
    y = np.asarray(_as_numpy(samples), dtype=float)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"data and samples must be (n, d) and (m, d); received {x.shape} and "
                         f"{y.shape}")
    rng = np.random.default_rng(seed)
    x = x[rng.permutation(len(x))[:max_points]]
    y = y[rng.permutation(len(y))[:max_points]]
    dim = x.shape[1]
    names = list(names) if names is not None else [f"x[{j}]" for j in range(dim)]
    colors = {"data": "0.35", "model": sns.color_palette("tab10")[3]}
    if dim == 2:
        if bounds is None:
            lo, hi = x.min(0), x.max(0)
            pad = 0.1 * (hi - lo) + 1e-6
            bounds = ((lo[0] - pad[0], hi[0] + pad[0]), (lo[1] - pad[1], hi[1] + pad[1]))
        fig = Figure(figsize=(6.2, 5), layout="constrained")
        ax = fig.subplots()
        if log_prob is not None:
            grid = grid_log_density(log_prob, bounds, n_grid, nan="zero")
            shown = np.maximum(grid.log_density, grid.log_density.max() - 12.0)
            mesh = ax.pcolormesh(grid.x, grid.y, shown, cmap="viridis", shading="auto")
            fig.colorbar(mesh, ax=ax, label="model log density (nats, normalized on the box)")
        ax.scatter(x[:, 0], x[:, 1], s=5, c=colors["data"], alpha=0.6, linewidths=0,
                   label=f"data ({len(x)} shown)")
        ax.scatter(y[:, 0], y[:, 1], s=5, c=[colors["model"]], alpha=0.6, linewidths=0,
                   label=f"model samples ({len(y)} shown)")
        ax.set(xlim=bounds[0], ylim=bounds[1], xlabel=names[0], ylabel=names[1],
               title="Trained EBM: density, data and samples")
        ax.legend(loc="upper right", markerscale=3, framealpha=0.9)
        return fig
    if dim > max_dims:
        from sklearn.decomposition import PCA

        pca = PCA(max_dims, random_state=seed).fit(x)
        x, y = pca.transform(x), pca.transform(y)
        share = pca.explained_variance_ratio_
        names = [f"PC{j + 1} ({100 * share[j]:.0f}% of data variance)" for j in range(max_dims)]
    k = min(dim, max_dims)
    fig = Figure(figsize=(2.4 * k + 1, 2.4 * k), layout="constrained")
    axes = fig.subplots(k, k, squeeze=False)
    for i in range(k):
        for j in range(k):
            ax = axes[i, j]
            if i == j:
                both = np.concatenate([x[:, i], y[:, i]])
                edges = np.histogram_bin_edges(both, bins=30)
                for label, pts in (("data", x), ("model", y)):
                    sns.histplot(pts[:, i], bins=edges, stat="density", element="step",
                                 fill=False, color=colors[label], ax=ax, label=label)
                ax.set_ylabel("density" if j == 0 else "")
            else:
                ax.scatter(x[:, j], x[:, i], s=2, c=colors["data"], alpha=0.4, linewidths=0)
                ax.scatter(y[:, j], y[:, i], s=2, c=[colors["model"]], alpha=0.4,
                           linewidths=0)
                ax.set_ylabel(names[i] if j == 0 else "")
            ax.set_xlabel(names[j] if i == k - 1 else "")
    axes[0, 0].legend(loc="upper right", fontsize="small")
    fig.suptitle(f"Data ({len(x)} points) vs model samples ({len(y)})"
                 + (f": first {k} principal components of the data" if dim > max_dims else ""))
    return fig


def _as_numpy(value: Any) -> Any:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else value

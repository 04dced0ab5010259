"""Which chains are suspect: R* (a classifier tells chains apart), leave-one-out R-hat, collapsed
step sizes and chains that never moved.

- R* (Lambert & Vehtari 2022): a scikit-learn random forest learns to predict the chain index
  from the draws of the first half of every chain and is scored on the second half (a block
  split, so autocorrelated neighbours do not leak from training into testing). R* is the number
  of chains times the held-out accuracy: about 1 when chains mix, up to the number of chains
  when each is told apart. A chain is suspect when the classifier recognizes its held-out draws
  far more often than chance: a one-sided binomial test of its recall against the rate at which
  the other chains' draws are given its label, on test draws thinned by the autocorrelation
  time (exact binomial tail), Bonferroni-corrected over chains, and at least 0.3 above
  that rate.
- Leave-one-out R-hat: when the max coordinate R-hat is at or above the threshold, chains are
  removed one at a time (greedily, the one whose removal lowers the max R-hat most, among the
  chains whose means are furthest from the rest) until the others mix; at most a quarter of the
  chains and at most `MAX_LOO_REMOVALS`. The removed ones are suspect; when no minority
  explains it, none is named this way.
- Step sizes (the trace's "step_size" stat) that collapsed in warm-up: below an absolute floor
  (`STEP_FLOOR`) or a thousandth of the median over chains. Chains that never moved: every
  coordinate's spread along the chain below 1e-6 of the pooled spread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from flowmc_ebm.diagnostics import _arviz
from flowmc_ebm.diagnostics.mixing import RHAT_THRESHOLD

#: Step sizes below this are collapsed, whatever the other chains do.
STEP_FLOOR = 1e-8
#: A chain whose step size is below this fraction of the median over chains is collapsed.
STEP_RELATIVE = 1e-3
#: R*: a chain is suspect only if its held-out recall beats chance by at least this much.
MIN_EFFECT = 0.3
#: A chain whose spread is below this fraction of the pooled spread never moved.
FROZEN_RELATIVE = 1e-6
#: R*: held-out draws per chain scored by the classifier, at most (thinned further if needed).
MAX_TEST_PER_CHAIN = 100
#: Leave-one-out R-hat looks for a few outlying chains: at most this many are removed.
MAX_LOO_REMOVALS = 8


@dataclass(frozen=True)
class SuspectChains:
    """Chains that look unlike the others, and why. `C` chains.

    Attributes:
        rstar: R* = chains x held-out accuracy of the classifier (NaN if not computed).
        recall: `(C,)` held-out share of each chain's draws recognized as that chain.
        chance: `(C,)` share of the other chains' held-out draws given each chain's label.
        by_rstar: chains the classifier recognizes beyond chance.
        loo_rhat: `(C,)` max coordinate R-hat without each chain removed by the greedy
            search (NaN for chains not tried).
        by_loo: chains whose removal lets the others mix (leave-one-out R-hat).
        step_size: `(C,)` each chain's median post-warm-up step size, or None.
        collapsed: chains whose step size collapsed.
        frozen: chains that never moved.
    """

    rstar: float
    recall: np.ndarray
    chance: np.ndarray
    by_rstar: np.ndarray
    loo_rhat: np.ndarray
    by_loo: np.ndarray
    step_size: np.ndarray | None
    collapsed: np.ndarray
    frozen: np.ndarray

    @property
    def chains(self) -> list[int]:
        """Sorted indices of every suspect chain, whatever the reason."""
        parts = (self.by_rstar, self.by_loo, self.collapsed, self.frozen)
        return sorted({int(c) for part in parts for c in part})

    def messages(self) -> list[str]:
        """One warning per reason that named a chain."""
        out = []
        if self.by_loo.size:
            out.append(
                f"Leave-one-out R-hat: without chains {self.by_loo.tolist()} the others mix "
                f"(max R-hat {np.nanmin(self.loo_rhat):.3f}); those chains sit apart."
            )
        if self.by_rstar.size:
            out.append(
                f"R* {self.rstar:.2f}: a classifier tells chains {self.by_rstar.tolist()} apart "
                f"from the others on held-out draws (recall "
                + ", ".join(f"{self.recall[c]:.2f}" for c in self.by_rstar)
                + f" vs chance {np.mean(self.chance[self.by_rstar]):.2f})."
            )
        if self.collapsed.size:
            sizes = ", ".join(f"{self.step_size[c]:.2g}" for c in self.collapsed)
            out.append(
                f"Step size collapsed in warm-up for {self.collapsed.size} chains "
                f"{self.collapsed.tolist()} (step {sizes}; median over chains "
                f"{np.median(self.step_size):.2g}): they barely move, whatever their acceptance."
            )
        if self.frozen.size:
            out.append(
                f"{self.frozen.size} chains never moved: {self.frozen.tolist()}; their draws are "
                f"one point repeated and their ESS means nothing."
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "chains": self.chains,
            "rstar": self.rstar,
            "recall": self.recall.tolist(),
            "chance": self.chance.tolist(),
            "by_rstar": self.by_rstar.tolist(),
            "loo_rhat": self.loo_rhat.tolist(),
            "by_loo": self.by_loo.tolist(),
            "step_size": None if self.step_size is None else self.step_size.tolist(),
            "collapsed": self.collapsed.tolist(),
            "frozen": self.frozen.tolist(),
        }


def suspect_chains(
    x: np.ndarray, stats: dict[str, Any] | None = None, *, rhat: np.ndarray | None = None, seed: int = 0
) -> SuspectChains:
    """Suspect chains of draws `x` `(chains, draws, dim)` (float64), see the module doc.

    Args:
        x: the chains.
        stats: the trace's per-step stats (for "step_size"), or None.
        rhat: `(dim,)` coordinate R-hat when already computed.
        seed: random state of the classifier.
    """
    chains = x.shape[0]
    spread = x.std(axis=1)  # (C, dim)
    pooled = x.reshape(-1, x.shape[2]).std(axis=0)
    frozen = np.flatnonzero((spread <= FROZEN_RELATIVE * np.maximum(pooled, 1e-300)).all(axis=1))
    step, collapsed = _step_sizes(stats, chains)
    rstar, recall, chance, by_rstar = _rstar(x, seed)
    if rhat is None:
        rhat = _arviz.rhat(x)
    loo, by_loo = _leave_one_out(x, rhat)
    return SuspectChains(rstar, recall, chance, by_rstar, loo, by_loo, step, collapsed, frozen)


def _step_sizes(stats: dict[str, Any] | None, chains: int) -> tuple[np.ndarray | None, np.ndarray]:
    if not stats or "step_size" not in stats:
        return None, np.zeros(0, dtype=np.int64)
    value = np.asarray(torch.as_tensor(stats["step_size"]).detach().cpu().double())
    if value.ndim < 1 or value.shape[0] != chains:
        return None, np.zeros(0, dtype=np.int64)
    step = np.nanmedian(value.reshape(chains, -1), axis=1)
    median = np.nanmedian(step)
    collapsed = np.flatnonzero((step < STEP_FLOOR) | (step < STEP_RELATIVE * median))
    return step, collapsed


def _rstar(x: np.ndarray, seed: int, alpha: float = 0.01) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.ensemble import RandomForestClassifier

    chains, draws, dim = x.shape
    nan = np.full(chains, np.nan)
    if chains < 2 or draws < 20:
        return float("nan"), nan, nan, np.zeros(0, dtype=np.int64)
    half = draws // 2
    # Features: the coordinates, standardized; at most 16 of them (those with the largest
    # between-chain spread of means), and a bounded number of training draws.
    scale = x.reshape(-1, dim).std(axis=0)
    z = (x - x.reshape(-1, dim).mean(axis=0)) / np.where(scale > 0, scale, 1.0)
    if dim > 16:
        z = z[:, :, np.argsort(-z.mean(axis=1).std(axis=0))[:16]]
    train_step = max(1, (chains * half) // 4000)
    train = z[:, :half:train_step]
    # Test draws thinned by the autocorrelation time, so they count as roughly independent.
    # Within-chain autocorrelation (each chain alone), not the pooled ESS, which chains that
    # differ would shrink; the median over chains, the largest over coordinates.
    # Each chain as its own variable of a one-chain dataset: one ArviZ call for all chains.
    ess_per_chain = _arviz.ess(x.transpose(1, 0, 2).reshape(1, draws, chains * dim), "mean")
    per_chain = draws / ess_per_chain.reshape(chains, dim)
    iat = float(np.nanmax(np.nanmedian(per_chain, axis=0)))
    test_step = max(1, int(np.ceil(iat)) if np.isfinite(iat) else 1)
    # At most MAX_TEST_PER_CHAIN test draws per chain (thinned further): the binomial test
    # has power enough with them, and predicting every draw of hundreds of chains costs minutes.
    test_step = max(test_step, -(-(draws - half) // MAX_TEST_PER_CHAIN))
    test = z[:, half::test_step]
    labels_train = np.repeat(np.arange(chains), train.shape[1])
    labels_test = np.repeat(np.arange(chains), test.shape[1])
    model = RandomForestClassifier(n_estimators=50, min_samples_leaf=5, random_state=seed, n_jobs=1)
    model.fit(train.reshape(-1, train.shape[2]), labels_train)
    predicted = model.predict(test.reshape(-1, test.shape[2]))
    rstar = float(chains * np.mean(predicted == labels_test))
    per_chain = test.shape[1]
    recall = np.array([np.mean(predicted[labels_test == c] == c) for c in range(chains)])
    chance = np.array([np.mean(predicted[labels_test != c] == c) for c in range(chains)])
    # Exact binomial tail of the recognized count under chance (small chance rates make the
    # normal approximation far too eager), Bonferroni over chains, and a clear effect.
    from scipy.stats import binom

    p0 = np.clip(chance, 1.0 / (chains * per_chain), 1.0 - 1e-9)
    hits = np.rint(recall * per_chain)
    p_value = binom.sf(hits - 1, per_chain, p0)
    suspect = np.flatnonzero((p_value < alpha / chains) & (recall - chance > MIN_EFFECT))
    return rstar, recall, chance, suspect


def _leave_one_out(x: np.ndarray, rhat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    chains = x.shape[0]
    loo = np.full(chains, np.nan)
    current = float(np.nanmax(rhat)) if np.isfinite(rhat).any() else float("nan")
    if chains < 3 or not current >= RHAT_THRESHOLD:
        return loo, np.zeros(0, dtype=np.int64)
    keep = list(range(chains))
    removed: list[int] = []
    # A few outlying chains, not a split population: after MAX_LOO_REMOVALS removals without
    # R-hat recovering, the chains disagree as groups, which the other diagnostics report.
    for _ in range(max(1, min(chains // 4, MAX_LOO_REMOVALS))):
        if len(keep) < 3:
            break
        means = x[keep].mean(axis=1)  # (kept, dim)
        sd = means.std(axis=0) + 1e-300
        far = np.abs((means - np.median(means, axis=0)) / sd).max(axis=1)
        candidates = [keep[i] for i in np.argsort(-far)[:8]]
        best, best_rhat = None, np.inf
        for c in candidates:
            rest = [k for k in keep if k != c]
            value = float(np.nanmax(_arviz.rhat(x[rest])))
            loo[c] = value
            if value < best_rhat:
                best, best_rhat = c, value
        keep.remove(best)
        removed.append(best)
        if best_rhat < RHAT_THRESHOLD:
            return loo, np.array(sorted(removed), dtype=np.int64)
    return loo, np.zeros(0, dtype=np.int64)


def plot_suspects(suspects: SuspectChains):
    """Per-chain figure: classifier recall against chance (R*), leave-one-out R-hat, suspects
    in red."""
    from matplotlib.figure import Figure

    chains = suspects.recall.shape[0]
    idx = np.arange(chains)
    red = set(suspects.chains)
    colors = ["tab:red" if c in red else "tab:blue" for c in idx]
    # Wide enough to tell bars apart with a few dozen chains; beyond that the width is capped
    # and the suspects are named above their bars.
    fig = Figure(figsize=(min(max(6, 0.35 * chains + 3), 14), 5.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.bar(idx, suspects.recall, color=colors, label="held-out recall")
    top.plot(idx, suspects.chance, "k_", markersize=14, label="chance (other chains given this label)")
    top.set(
        ylabel="share of held-out draws",
        ylim=(0, 1.05),
        title=f"R* = {suspects.rstar:.2f} (1 when chains mix); suspect chains in red",
    )
    top.legend(fontsize="small", loc="upper left")
    for c in suspects.chains:
        top.annotate(str(c), (c, suspects.recall[c]), xytext=(0, 3), textcoords="offset points",
                     ha="center", fontsize="small", color="tab:red")
    tried = np.isfinite(suspects.loo_rhat)  # chains never tried get no bar (not a bar down to 0)
    bottom.bar(idx[tried], suspects.loo_rhat[tried] - 1.0, bottom=1.0,
               color=[colors[c] for c in idx[tried]])
    if not tried.any():
        bottom.text(0.5, 0.75, f"not run: every coordinate's R-hat is below {RHAT_THRESHOLD}",
                    transform=bottom.transAxes, ha="center", va="center", color="0.4")
    bottom.axhline(RHAT_THRESHOLD, color="k", ls="--", lw=1, label=f"R-hat {RHAT_THRESHOLD}")
    bottom.set(
        xlabel="chain",
        ylabel="max R-hat without the chain",
        title="Leave-one-out R-hat (bars only for chains tried)",
    )
    bottom.legend(fontsize="small")
    if chains <= 40:
        bottom.set_xticks(idx)
    return fig

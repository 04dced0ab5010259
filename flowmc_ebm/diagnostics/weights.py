"""Mode weights with error bars, from two independent estimators, and whether they agree.

- `mode_weights`: occupancy of the chains. Its standard error is ArviZ's MCSE of the mean of
  each mode's indicator, i.e. `sd / sqrt(ess)` with ArviZ's multi-chain ESS of that indicator,
  so autocorrelation and chains stuck apart widen it (no batch means); where the indicator is
  constant within every chain, a between-chain error (chains as clusters), or "not estimable".
- `importance_mode_weights`: self-normalized importance sampling with a proposal (the flow),
  which does not depend on the chains having mixed. Its standard error is the delta-method one
  of the SNIS ratio.

Both give Wilson score intervals with the effective sample size in place of `n`, which stay in
[0, 1] and do not collapse to a point for a weight estimated as exactly 0 or 1.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import torch

from flowmc_ebm.diagnostics import _arviz
from flowmc_ebm.diagnostics._chains import chains_tensor, require_shape
from flowmc_ebm.diagnostics.hopping import UnvisitedModesWarning, unvisited_message
from flowmc_ebm.diagnostics.modes import chain_labels, infer_n_modes, mode_labels

#: Weights that differ by less than this are equal (round-off of sums of float64 weights).
ROUND_OFF = 1e-12

#: Pareto k-hat above this means importance-sampling estimates are unreliable (Vehtari et al.).
KHAT_THRESHOLD = 0.7

#: Occupancy errors: with at least this many chains, the sd of the chain means over sqrt(chains)
#: replaces ArviZ's MCSE where it is larger by more than three standard errors of a sample sd,
#: a factor ``1 + 3 / sqrt(2 (chains - 1))`` (1.80 at 8 chains, 1.19 at 128): where the chains
#: really are as independent as ArviZ's ESS says, that is a rare chance (a wider error, never a
#: narrower one).
MIN_CHAINS_BETWEEN = 8


@dataclass(frozen=True)
class ModeWeights:
    """Estimated mode weights; arrays have shape `(K,)`.

    Attributes:
        weights: estimated mass of each mode (sums to 1).
        se: standard error of each weight.
        lower, upper: `level` Wilson interval with `ess` in place of the sample size.
        ess: effective sample size behind each weight: ArviZ's ESS of the mode indicator
            (occupancy), or `w (1 - w) / se**2` (importance sampling; the weights' Kish ESS
            where `w` is 0 or 1).
        method: "occupancy" or "importance".
        level: coverage of the interval.
        pareto_k: importance sampling only: Pareto k-hat of the log-weights (ArviZ `psislw`);
            above 0.7 the standard errors are not to be trusted.
        weights_ess: importance sampling only: Kish ESS `1 / sum(normalized_w**2)`.
        n: number of draws (occupancy) or of proposals (importance).
        estimable: `(K,)` whether the estimator can put an error bar on each weight; where it
            cannot (a mode no chain visited), `se`, `lower` and `upper` are NaN, never a
            zero-width interval. None means all are.
        se_method: `(K,)` how each standard error was obtained: "within-chain ESS",
            "between-chain" (chains as clusters) or "not estimable: <why>"; None for
            importance sampling.
        defensive: defensive importance sampling only: the share of proposals drawn from the
            broad reference (the proposal is the mixture `(1 - a) flow + a reference`).
        reference_share: defensive only, `(K,)`: the share of each mode's estimated mass that
            the reference's draws carry. Near `defensive` or below where the flow covers a
            mode; near 1 where only the reference reached it, i.e. the flow missed that mode.
    """

    weights: np.ndarray
    se: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    ess: np.ndarray
    method: str
    n: int
    level: float = 0.95
    pareto_k: float | None = None
    weights_ess: float | None = None
    estimable: np.ndarray | None = None
    se_method: tuple[str, ...] | None = None
    defensive: float | None = None
    reference_share: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.estimable is None:
            object.__setattr__(self, "estimable", np.ones(self.weights.shape[0], dtype=bool))

    @property
    def n_modes(self) -> int:
        return self.weights.shape[0]

    def to_dict(self) -> dict[str, Any]:
        out = {
            "method": self.method,
            "n": self.n,
            "level": self.level,
            "weights": self.weights.tolist(),
            "se": self.se.tolist(),
            "lower": self.lower.tolist(),
            "upper": self.upper.tolist(),
            "ess": self.ess.tolist(),
            "estimable": self.estimable.tolist(),
        }
        if self.se_method is not None:
            out["se_method"] = list(self.se_method)
        if self.pareto_k is not None:
            out["pareto_k"] = self.pareto_k
            out["weights_ess"] = self.weights_ess
        if self.defensive is not None:
            out["defensive"] = self.defensive
            out["reference_share"] = self.reference_share.tolist()
        return out

    @property
    def missed_by_proposal(self) -> np.ndarray:
        """Defensive only: modes whose estimated mass (> 1%) came mostly (> 50%) from the
        reference's draws, i.e. that the flow did not reach. Empty otherwise."""
        if self.reference_share is None:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero((self.reference_share > 0.5) & (self.weights > 0.01))

    def table(self, true_weights: Any = None) -> str:
        """A terminal table, with a column for the true weights when given."""
        truth = None if true_weights is None else np.asarray(true_weights, dtype=float)
        title = f"Mode weights ({self.method}, n={self.n}"
        if self.pareto_k is not None:
            flag = " UNRELIABLE" if self.pareto_k > KHAT_THRESHOLD else ""
            title += f", weights ESS {self.weights_ess:.0f}, Pareto k {self.pareto_k:.2f}{flag}"
        if self.defensive is not None:
            title += f", defensive {self.defensive:g}"
        lines = [title + ")"]
        pct = f"{100 * self.level:g}%"
        head = f"{'mode':>5} {'weight':>8} {'se':>8} {pct + ' interval':>20} {'ESS':>8}"
        lines.append(head + (f" {'true':>7}" if truth is not None else ""))
        for k in range(self.n_modes):
            if self.estimable[k]:
                line = (
                    f"{k:>5} {self.weights[k]:>8.4f} {self.se[k]:>8.4f} "
                    f"{f'[{self.lower[k]:.4f}, {self.upper[k]:.4f}]':>20} {self.ess[k]:>8.0f}"
                )
            else:
                line = f"{k:>5} {self.weights[k]:>8.4f} {'-':>8} {'not estimable':>20} {'-':>8}"
            line += f" {truth[k]:>7.4f}" if truth is not None else ""
            if self.se_method is not None and self.se_method[k] != "within-chain ESS":
                line += f"  ({self.se_method[k]})"
            if self.reference_share is not None and k in self.missed_by_proposal:
                line += f"  (missed by the flow: {100 * self.reference_share[k]:.0f}% from the reference)"
            lines.append(line)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def mode_weights(
    samples: Any, assign: Any, *, n_modes: int | None = None, level: float = 0.95, warn: bool = True
) -> ModeWeights:
    """Mode weights as the chains' occupancy, with autocorrelation-aware errors.

    The weight of mode k is the fraction of all draws in it; its standard error is ArviZ's
    MCSE of the mean of the indicator `1[label == k]` over `(chains, draws)`, so chains that
    stay apart yield a large error (small ESS), not a falsely precise one.

    Where there are 8 or more chains and the spread of their means says the error is clearly
    larger than ArviZ's (few draws per chain, rare switches: ArviZ's ESS is then optimistic; see
    `MIN_CHAINS_BETWEEN`), the between-chain error below is used instead (`se_method`
    "between-chain").

    Where a mode's indicator is constant within every chain, the within-chain ESS means nothing:
    if the chains differ (some always in the mode, some never), the chains are the clusters and
    the error is the sd of the chain means over sqrt(chains), with the number of chains as ESS
    (`se_method` "between-chain"); if they agree (no chain visits the mode, or every chain sits
    in it throughout), the weight is not estimable from occupancy and its `se` and interval are
    NaN. Only another estimator (`importance_mode_weights`) can then say more.

    Args:
        samples: a Trace or an array / tensor `(chains, draws, *event)`; at least 4 draws.
        assign: callable, centers `(K, dim)`, `FittedModes` or labels `(chains, draws)`.
        n_modes: K; inferred from `assign` when it knows it, else the largest label + 1.
        level: coverage of the intervals.
        warn: emit an `UnvisitedModesWarning` naming the modes no chain visited.

    Returns:
        `ModeWeights` with `method="occupancy"`.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> x = np.where(rng.random((4, 1000, 1)) < 0.25, 3.0, -3.0) + rng.normal(size=(4, 1000, 1))
        >>> w = mode_weights(x, np.array([[-3.0], [3.0]]))
        >>> bool(abs(w.weights[1] - 0.25) < 3 * w.se[1])
        True
    """
    x = chains_tensor(samples)
    require_shape(*x.shape[:2], min_chains=1, min_draws=4, purpose="ESS of mode indicators", name="samples")
    labels = chain_labels(x, assign, n_modes)
    k = infer_n_modes(assign, labels, n_modes)
    indicators = (labels[..., None] == np.arange(k)).astype(np.float64)
    weights = indicators.mean(axis=(0, 1))
    ess = _arviz.ess(indicators, "mean")
    se = _arviz.mcse_mean(indicators)
    lower, upper = _wilson(weights, ess, level)
    # Where a mode's indicator is constant within every chain, ArviZ's within-chain ESS means
    # nothing (it is the number of draws, or undefined): chains are then the clusters, each one
    # draw of "in" or "out", and the error comes from how the chains differ, if they do.
    chain_means = indicators.mean(axis=1)  # (chains, K)
    constant = (indicators.min(axis=1) == indicators.max(axis=1)).all(axis=0)
    method = ["within-chain ESS"] * k
    for m in np.flatnonzero(constant):
        means = chain_means[:, m]
        if weights[m] == 0:
            method[m] = "not estimable: never visited"
        elif np.all(means == means[0]):
            method[m] = "not estimable: every chain sits in this mode throughout"
        else:
            method[m] = "between-chain"
            ess[m] = means.shape[0]
            se[m] = means.std(ddof=1) / np.sqrt(means.shape[0])
    # With few draws per chain that rarely switch mode, ArviZ's within-chain ESS is itself a
    # noisy, optimistic estimate (measured: 128 chains of 15 draws read twice gave weights 2.6
    # combined MCSEs apart). The chain means are independent replicates whatever the
    # autocorrelation, so where there are enough chains and their spread says the error is
    # clearly larger, the between-chain error is used instead: never the smaller of the two.
    n_chains = chain_means.shape[0]
    if n_chains >= MIN_CHAINS_BETWEEN:
        spread = chain_means.std(axis=0, ddof=1) / np.sqrt(n_chains)
        factor = 1 + 3 / np.sqrt(2 * (n_chains - 1))
        for m in np.flatnonzero(~constant & (spread > factor * se)):
            method[m] = "between-chain"
            se[m] = spread[m]
            ess[m] = min(ess[m], weights[m] * (1 - weights[m]) / spread[m] ** 2)
    between = np.array([m == "between-chain" for m in method])
    if between.any():
        lo, hi = _wilson(weights[between], ess[between], level)
        lower[between], upper[between] = lo, hi
    unvisited = np.flatnonzero(weights == 0)
    estimable = np.array([not m.startswith("not estimable") for m in method])
    se, lower, upper, ess = (np.where(estimable, a, np.nan) for a in (se, lower, upper, ess))
    if unvisited.size and warn:
        warnings.warn(unvisited_message(unvisited, k), UnvisitedModesWarning, stacklevel=2)
    return ModeWeights(
        weights,
        se,
        lower,
        upper,
        ess,
        "occupancy",
        int(labels.size),
        level,
        estimable=estimable,
        se_method=tuple(method),
    )


def importance_mode_weights(
    log_prob: Any,
    proposal: Any,
    assign: Any,
    n: int = 10_000,
    *,
    n_modes: int | None = None,
    level: float = 0.95,
    seed: int | None = None,
    batch_size: int = 8192,
    reference: Any = None,
    defensive: float = 0.1,
) -> ModeWeights:
    """Mode weights by self-normalized importance sampling (SNIS) from a proposal.

    With `x_i ~ q` and `w_i ∝ p(x_i) / q(x_i)` normalized to sum to 1, the weight of mode k is
    `sum_i w_i 1[a_i = k]` and its delta-method variance `sum_i w_i**2 (1[a_i = k] - w_k)**2`.
    Draws whose log-weight is not finite count with weight 0. Pareto k-hat flags a proposal
    whose tails are too light where it does reach; it cannot see a mode the proposal never
    reaches, which is one reason to compare with the chains (`compare_mode_weights`).

    Defensive importance sampling (Hesterberg 1995): with a `reference`, a broad distribution
    (the one the chains were started from, or `broad_reference(chains)`), the proposal becomes
    the mixture `(1 - defensive) q + defensive * reference`: `defensive * n` draws come from the
    reference, the rest from `q`, and every draw is weighed against the mixture density. Where
    `q` has no mass the weights are bounded by `p / (defensive * reference)`, so mass the flow
    never saw shows up in the weights (`reference_share`, `missed_by_proposal`), in a
    disagreement with the chains, or in a large k-hat, instead of silently vanishing. It can
    only see mass the reference reaches: in high dimension a broad reference puts almost no
    draws in a small far-away mode (its volume is a vanishing share of the reference's), so a
    clean defensive estimate is evidence, not proof, that nothing is missed.

    Args:
        log_prob: unnormalized log-density, a callable `x[n, dim] -> Tensor[n]` or an object
            with such a `.log_prob` (a target, an EBM wrapper).
        proposal: a `torch.distributions.Distribution`, or a module whose call returns one
            (a zuko flow).
        assign: callable, centers `(K, dim)` or `FittedModes`.
        n: number of proposals.
        n_modes: K; inferred from `assign` when it knows it, else the largest label + 1.
        level: coverage of the intervals.
        seed: if given, proposals are drawn under this torch seed without touching the global
            random state (distributions sample from the global generator).
        batch_size: proposals drawn and scored per batch, to bound memory.
        reference: a torch Distribution (or a module returning one) for defensive importance
            sampling; None for plain SNIS from `proposal`.
        defensive: share of the `n` proposals drawn from `reference`, in (0, 1).

    Returns:
        `ModeWeights` with `method="importance"`, `pareto_k` and `weights_ess` set, and
        `defensive` and `reference_share` with a reference.

    Example:
        >>> import torch
        >>> from torch.distributions import Independent, Normal
        >>> q = Independent(Normal(torch.zeros(1), 4 * torch.ones(1)), 1)
        >>> p = lambda x: torch.logsumexp(torch.stack([
        ...     Normal(-3.0, 1.0).log_prob(x[:, 0]) + torch.tensor(0.75).log(),
        ...     Normal(3.0, 1.0).log_prob(x[:, 0]) + torch.tensor(0.25).log()]), 0)
        >>> w = importance_mode_weights(p, q, torch.tensor([[-3.0], [3.0]]), 20_000, seed=0)
        >>> bool(abs(w.weights[1] - 0.25) < 4 * w.se[1])
        True
    """
    if n < 2:
        raise ValueError(f"importance sampling needs n >= 2 proposals; received n={n}.")
    n_ref = 0
    if reference is not None:
        if not 0.0 < defensive < 1.0:
            raise ValueError(f"defensive must be a share in (0, 1); received {defensive!r}.")
        n_ref = max(1, round(defensive * n))
        if n_ref >= n:
            raise ValueError(f"n={n} proposals leave none for the flow at defensive={defensive}.")
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        if seed is not None:
            torch.manual_seed(seed)
        if reference is None:
            x, log_w = _propose_and_weigh(log_prob, proposal, n, batch_size)
        else:
            x, log_w = _defensive_propose_and_weigh(
                log_prob, proposal, reference, n - n_ref, n_ref, batch_size
            )
    finite = np.isfinite(log_w)
    if not finite.any():
        raise ValueError(
            "all importance log-weights are NaN or infinite: the proposal and log_prob share no "
            "support (or log_prob returns NaN)."
        )
    log_w = np.where(finite, log_w, -np.inf)
    w = np.exp(log_w - log_w.max())
    w /= w.sum()

    labels = mode_labels(x, assign, n_modes)
    k = infer_n_modes(assign, labels, n_modes)
    indicators = labels[:, None] == np.arange(k)
    weights = w @ indicators
    se = np.sqrt((w[:, None] ** 2 * (indicators - weights) ** 2).sum(0))
    kish = float(1.0 / np.sum(w**2))
    interior = (weights > 0) & (weights < 1) & (se > 0)
    ess = np.full(k, kish)
    ess[interior] = weights[interior] * (1 - weights[interior]) / se[interior] ** 2
    lower, upper = _wilson(weights, ess, level)
    share = None
    if n_ref:
        from_ref = np.zeros(n, dtype=bool)
        from_ref[n - n_ref :] = True  # the reference's draws come last
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.where(weights > 0, (w * from_ref) @ indicators / weights, 0.0)
    return ModeWeights(
        weights,
        se,
        lower,
        upper,
        ess,
        "importance",
        n,
        level,
        pareto_k=_arviz.pareto_khat(log_w[finite]),
        weights_ess=kish,
        defensive=None if not n_ref else n_ref / n,
        reference_share=share,
    )


def broad_reference(
    samples: Any, centers: Any = None, *, scale: float = 2.0
) -> torch.distributions.Distribution:
    """A broad Gaussian reference for defensive importance sampling, from the chains.

    For when the distribution the chains were started from is not at hand: a full-covariance
    Gaussian centred on the pooled draws (and the known mode centers), with covariance
    `scale**2 * (cov(draws) + cov(mean of draws, centers...))`, so it spans the known modes
    even when every chain sits in one of them.

    Args:
        samples: chains `(chains, draws, *event)` / a Trace, or points `(n, dim)`.
        centers: `(K, dim)` known mode centers, or None.
        scale: how much wider than the draws' spread.

    Example:
        >>> import numpy as np
        >>> ref = broad_reference(np.random.default_rng(0).normal(size=(2, 100, 2)),
        ...                       np.array([[-4.0, 0.0], [4.0, 0.0]]))
        >>> bool(ref.covariance_matrix[0, 0] > 4 * ref.covariance_matrix[1, 1])
        True
    """
    from flowmc_ebm.diagnostics._chains import points_tensor

    x = points_tensor(samples).to(torch.float64)
    if x.shape[0] > 20_000:
        x = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:20_000]]
    mean = x.mean(0)
    cov = torch.atleast_2d(torch.cov(x.T)) if x.shape[0] > 1 else torch.eye(x.shape[1], dtype=x.dtype)
    if centers is not None:
        c = torch.as_tensor(np.asarray(centers, dtype=np.float64)).reshape(-1, x.shape[1])
        anchors = torch.cat([mean[None], c])
        mean = anchors.mean(0)
        cov = cov + torch.atleast_2d(torch.cov(anchors.T, correction=0))
    cov = scale**2 * cov
    cov = cov + 1e-6 * (torch.diagonal(cov).mean() + 1.0) * torch.eye(x.shape[1], dtype=x.dtype)
    dtype = torch.get_default_dtype()
    return torch.distributions.MultivariateNormal(mean.to(dtype), covariance_matrix=cov.to(dtype))


@dataclass(frozen=True)
class ModeWeightComparison:
    """Whether two mode-weight estimates agree within their standard errors.

    Attributes:
        methods: the two estimators' names.
        difference: `a.weights - b.weights`, `(K,)`.
        z: difference over `sqrt(se_a**2 + se_b**2)`, `(K,)`; 0 where both are exactly equal
            with zero error, infinite where they differ with zero error.
        threshold: the `|z|` beyond which a mode disagrees: a two-sided `1 - alpha` bound
            Bonferroni-corrected over the K modes.
        agree: no mode's `|z|` exceeds the threshold.
        message: a sentence for humans, saying what a disagreement suggests.
    """

    methods: tuple[str, str]
    difference: np.ndarray
    z: np.ndarray
    threshold: float
    agree: bool
    message: str

    @property
    def max_abs_z(self) -> float:
        return float(np.max(np.abs(self.z)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "methods": list(self.methods),
            "difference": self.difference.tolist(),
            "z": self.z.tolist(),
            "max_abs_z": self.max_abs_z,
            "threshold": self.threshold,
            "agree": self.agree,
            "message": self.message,
        }

    def __str__(self) -> str:
        return self.message


def compare_mode_weights(a: ModeWeights, b: ModeWeights, *, alpha: float = 0.05) -> ModeWeightComparison:
    """Test whether two estimates of the same mode weights agree within their errors.

    The two estimators should be independent (chain occupancy and importance sampling with the
    flow): when they disagree, at least one is wrong, and that is itself the diagnostic. Chains
    that never visit a mode, or never leave the mode they started in, have coordinate R-hat
    near 1 and a precise-looking but wrong occupancy.

    Args:
        a: one estimate of the mode weights.
        b: the other, over the same modes (same `assign`).
        alpha: family-wise false-alarm rate when both are right.

    Returns:
        `ModeWeightComparison`.

    Example:
        >>> import numpy as np
        >>> one = lambda w, se: ModeWeights(np.array(w), np.array(se), np.array(w),
        ...                                 np.array(w), np.ones(2), "x", 100)
        >>> compare_mode_weights(one([1.0, 0.0], [0, 0]), one([0.66, 0.34], [0.01, 0.01])).agree
        False
    """
    if a.n_modes != b.n_modes:
        raise ValueError(
            f"estimates cover different numbers of modes: {a.n_modes} vs "
            f"{b.n_modes}; compute both with the same assign."
        )
    diff = a.weights - b.weights
    # A weight that is not estimable (NaN se) contributes no error of its own: its value is
    # then what the other estimate is tested against. Differences at round-off level (weights
    # are sums of floats) are no difference, whatever the standard errors, which for exact or
    # degenerate estimates may be 0 or 1e-18.
    se = np.sqrt(np.nan_to_num(a.se) ** 2 + np.nan_to_num(b.se) ** 2)
    diff = np.where(np.abs(diff) <= ROUND_OFF, 0.0, diff)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, diff / se, np.where(diff == 0, 0.0, np.inf * np.sign(diff)))
    z = np.where(diff == 0, 0.0, z)
    threshold = NormalDist().inv_cdf(1 - alpha / (2 * a.n_modes))
    agree = bool(np.all(np.abs(z) <= threshold))
    worst = int(np.argmax(np.abs(z)))
    names = (a.method, b.method)
    if agree:
        message = (
            f"{names[0]} and {names[1]} mode weights agree (max |z| = "
            f"{np.max(np.abs(z)):.2f} <= {threshold:.2f})."
        )
    else:
        message = (
            f"{names[0]} and {names[1]} mode weights DISAGREE beyond their errors: mode {worst} "
            f"has {a.weights[worst]:.3f} vs {b.weights[worst]:.3f} (|z| = {abs(z[worst]):.1f} > "
            f"{threshold:.2f}). Chains that never visit a mode, or never leave the one they "
            f"started in, show coordinate R-hat near 1 yet weigh modes wrongly; a proposal that "
            f"misses a mode misleads importance sampling (check its Pareto k-hat)."
        )
    for est in (a, b):
        if est.pareto_k is not None and est.pareto_k > KHAT_THRESHOLD:
            message += (
                f" The {est.method} estimate is unreliable: Pareto k-hat "
                f"{est.pareto_k:.2f} > {KHAT_THRESHOLD}."
            )
    return ModeWeightComparison(names, diff, z, threshold, agree, message)


def _distribution(proposal: Any, name: str = "proposal") -> torch.distributions.Distribution:
    q = proposal if isinstance(proposal, torch.distributions.Distribution) else proposal()
    if not isinstance(q, torch.distributions.Distribution):
        raise ValueError(
            f"{name} must be a torch Distribution or a module returning one; "
            f"received {type(proposal).__name__} returning {type(q).__name__}."
        )
    return q


def _defensive_propose_and_weigh(
    log_prob: Any, proposal: Any, reference: Any, n_flow: int, n_ref: int, batch_size: int
) -> tuple[torch.Tensor, np.ndarray]:
    """Draws from the flow, then from the reference, each weighed against the mixture."""
    q, r = _distribution(proposal), _distribution(reference, "reference")
    share = n_ref / (n_flow + n_ref)
    target = getattr(log_prob, "log_prob", log_prob)
    xs, log_ws = [], []
    for dist, count in ((q, n_flow), (r, n_ref)):
        for start in range(0, count, batch_size):
            m = min(batch_size, count - start)
            x = dist.sample((m,))
            log_q, log_r, log_p = q.log_prob(x), r.log_prob(x), target(x)
            for name, value in (
                ("proposal.log_prob", log_q),
                ("reference.log_prob", log_r),
                ("log_prob", log_p),
            ):
                _check_one_per_point(name, value, m)
            log_mix = torch.logaddexp(
                log_q.double() + np.log1p(-share), log_r.double().to(log_q.device) + np.log(share)
            )
            xs.append(x.reshape(m, -1).cpu())
            log_ws.append((log_p.double() - log_mix).cpu())
    return torch.cat(xs), torch.cat(log_ws).numpy()


def _check_one_per_point(name: str, value: torch.Tensor, m: int) -> None:
    if value.shape != (m,):
        raise ValueError(
            f"{name} must return one value per point, shape ({m},); received "
            f"{tuple(value.shape)}. For a factorized torch distribution wrap it in "
            f"Independent(..., 1)."
        )


def _propose_and_weigh(
    log_prob: Any, proposal: Any, n: int, batch_size: int
) -> tuple[torch.Tensor, np.ndarray]:
    q = _distribution(proposal)
    target = getattr(log_prob, "log_prob", log_prob)
    xs, log_ws = [], []
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        x = q.sample((m,))
        log_q, log_p = q.log_prob(x), target(x)
        for name, value in (("proposal.log_prob", log_q), ("log_prob", log_p)):
            _check_one_per_point(name, value, m)
        xs.append(x.reshape(m, -1).cpu())
        log_ws.append((log_p.double() - log_q.double()).cpu())
    return torch.cat(xs), torch.cat(log_ws).numpy()


def _wilson(weights: np.ndarray, n_eff: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    z = NormalDist().inv_cdf(0.5 + level / 2)
    denom = 1 + z**2 / n_eff
    center = (weights + z**2 / (2 * n_eff)) / denom
    half = z / denom * np.sqrt(weights * (1 - weights) / n_eff + z**2 / (4 * n_eff**2))
    return np.clip(center - half, 0.0, 1.0), np.clip(center + half, 0.0, 1.0)

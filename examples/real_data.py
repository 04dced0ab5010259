"""Class weights of EBMs trained on real data: digits subsets and a second labelled data set.

The question a user asks: "how much mass does each class carry in my model?". Each data set here is
a labelled real data set with known class proportions (digits subsets subsampled to chosen
proportions; wine / breast cancer at their own); every model is trained on the features without
labels, and its class weights are read by a classifier trained on the labelled points.

Data: digits (scikit-learn's 8×8, shipped with it) of the classes and proportions of ``--datasets``
(see `DATASETS`), each image dequantized ``--copies`` times (pixel + U(0, 1)), scaled to [−1, 1] and
projected on ``--pca`` whitened principal components fitted on the training mixture; wine and
breast cancer standardized (mean 0, sd 1 per feature), as a user would.

Models (``--methods``): flowMC-EBM and ULA-PCD with the tilt ``--tilt`` (the library's
``TrainerConfig.tilt``, `flowmc_ebm.training.tilts`: ``gmm``, the default here, a Gaussian
mixture fitted to the data with its size by BIC; ``base``: the flow's N(0, I) base, the paper's;
``gaussian``: the data's mean and covariance; ``flow``: a flow pre-fitted to the data by maximum
likelihood, frozen), NT-EBM (its own flow is its tilt), and the baselines: scikit-learn's
GaussianMixture with one component per class (its samples classified; its component weights
mapped to classes are in the run files), a Gaussian KDE (bandwidth by cross-validation) sampled
and classified, the data-fitted flow alone, and the classifier applied to the data (the floor:
what a perfect model would be read as).

Reading the class weights of a generative model: draws are assigned to the classifier's most
probable class; the share of draws whose top probability is below 0.8 ("unplaced") measures sample
quality. For an EBM the draws are ``--eval-chains`` chains started from the persistent pool and run
``--eval-steps`` flowMC cycles on the final EBM (the same kernel for every EBM), the first
``--eval-burn`` discarded and one in ``--eval-thin`` kept; the class weights and their Monte-Carlo
standard error come from `flowmc_ebm.diagnostics.mode_weights(trace, assign=classifier.predict)`.
A second estimate is self-normalized importance sampling with the tilt (NT-EBM: its flow) as the
proposal; its Pareto k-hat says when it is not to be trusted (k > 0.7).

Writes under ``--out`` (default ``out/real_data``): ``runs/<dataset>/<tag>_seed<s>.json`` (one per
finished run, reused by later invocations: run seeds in parallel processes with the same ``--out``,
then once more over everything to aggregate), ``table.md``, ``results.json``,
``samples_<dataset>_<tag>_seed<s>.png`` (digits: grids of EBM draws).

Usage:
    python examples/real_data.py --datasets digits147 --methods floor gmm flowmc --seeds 0
    python examples/real_data.py --iterations 20 --seeds 0 --eval-steps 4    # a quick look
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer, load_digits, load_wine
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split
from sklearn.neighbors import KernelDensity
from sklearn.preprocessing import StandardScaler
from torch import Tensor

import samplers
from flowmc_ebm.config import ModelConfig, TrainerConfig
from flowmc_ebm.diagnostics import broad_reference, importance_mode_weights, mode_weights
from flowmc_ebm.training import tilts
from flowmc_ebm.training.joint import JointTrainer

UNPLACED = 0.8  # a draw whose top class probability is below this is "unplaced"
EBMS = ("flowmc", "ula", "nt")
BASELINES = ("floor", "gmm", "kde", "flow", "tilt")
LABELS = {"flowmc": "flowMC-EBM", "ula": "ULA-PCD", "nt": "NT-EBM", "floor": "classifier on the data",
          "gmm": "GaussianMixture", "kde": "KDE", "flow": "flow fitted by ML",
          "tilt": "the EBM's tilt alone"}


@dataclass(frozen=True)
class DataSpec:
    """A labelled data set: digits ``classes`` subsampled to ``weights``, or a whole sklearn set."""

    source: str  # "digits", "wine", "breast_cancer"
    classes: tuple[int, ...] = ()
    weights: tuple[float, ...] = ()


DATASETS = {
    "digits01": DataSpec("digits", (0, 1), (0.75, 0.25)),
    "digits147": DataSpec("digits", (1, 4, 7), (0.5, 0.3, 0.2)),
    "digits0236": DataSpec("digits", (0, 2, 3, 6), (0.4, 0.3, 0.2, 0.1)),
    "digits38": DataSpec("digits", (3, 8), (0.88, 0.12)),
    "wine": DataSpec("wine"),
    "breast_cancer": DataSpec("breast_cancer"),
}


def dequantize(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pixels 0..16 plus U(0, 1) noise, scaled to [-1, 1]."""
    return (images + rng.uniform(size=images.shape)) / 17.0 * 2.0 - 1.0


@dataclass
class Problem:
    """Training features, their labels and the classifier that reads a model's class weights."""

    x: np.ndarray  # (n, dim) float64, the model's training data
    labels: np.ndarray  # (n,) class index
    classifier: LogisticRegression
    accuracy: float  # held-out accuracy of the classifier
    to_pixels: object  # features -> pixels in [-1, 1] (digits), or None

    @property
    def truth(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.n_classes) / len(self.labels)

    @property
    def n_classes(self) -> int:
        return len(self.classifier.classes_)


def load_problem(spec: DataSpec, seed: int, copies: int, n_pca: int) -> Problem:
    """The data of one seed (digits: the subsample and the noise depend on it) and its classifier.

    The classifier is scikit-learn's logistic regression with its defaults, fitted in the model's
    feature space on all labelled points of those classes; its accuracy is measured on a held-out
    30 % (digits) or by 5-fold cross-validation (the small sets).
    """
    if spec.source == "digits":
        digits = load_digits()
        rng = np.random.default_rng(seed)
        pools = [np.flatnonzero(digits.target == c) for c in spec.classes]
        w = np.asarray(spec.weights) / np.sum(spec.weights)
        total = min(len(p) / wk for p, wk in zip(pools, w, strict=True))
        counts = [int(round(total * wk)) for wk in w]
        picked = [rng.choice(p, size=n, replace=False) for p, n in zip(pools, counts, strict=True)]
        images = np.concatenate([digits.data[i] for i in picked])
        labels = np.tile(np.concatenate([np.full(n, k) for k, n in enumerate(counts)]), copies)
        pixels = dequantize(np.tile(images, (copies, 1)), rng)
        pca = PCA(n_pca, whiten=True).fit(pixels)
        keep = np.isin(digits.target, spec.classes)
        x_all = pca.transform(dequantize(digits.data[keep], np.random.default_rng(seed + 1000)))
        y_all = np.searchsorted(spec.classes, digits.target[keep])
        x_tr, x_te, y_tr, y_te = train_test_split(x_all, y_all, test_size=0.3, random_state=0,
                                                  stratify=y_all)
        accuracy = LogisticRegression(max_iter=5000).fit(x_tr, y_tr).score(x_te, y_te)
        clf = LogisticRegression(max_iter=5000).fit(x_all, y_all)
        return Problem(pca.transform(pixels), labels, clf, float(accuracy), pca.inverse_transform)
    loader = {"wine": load_wine, "breast_cancer": load_breast_cancer}[spec.source]
    raw = loader()
    x = StandardScaler().fit_transform(raw.data)
    clf = LogisticRegression(max_iter=5000)
    accuracy = cross_val_score(clf, x, raw.target, cv=5).mean()
    return Problem(x, raw.target.astype(int), clf.fit(x, raw.target), float(accuracy), None)


def read_classes(problem: Problem, x: np.ndarray) -> dict:
    """Class weights of independent draws ``x (n, dim)``, their binomial SE, the unplaced share."""
    proba = problem.classifier.predict_proba(np.asarray(x, dtype=np.float64))
    w = np.bincount(proba.argmax(1), minlength=problem.n_classes) / len(proba)
    return {"weights": w.tolist(), "se": np.sqrt(w * (1 - w) / len(proba)).tolist(),
            "unplaced": float((proba.max(1) < UNPLACED).mean()), "n": len(proba)}


# ------------------------------------------------------------------------------------- baselines

def run_baseline(method: str, problem: Problem, seed: int, args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    x, k = problem.x, problem.n_classes
    n = args.eval_chains * max(1, (args.eval_steps - args.eval_burn) // args.eval_thin)
    rng = np.random.RandomState(seed)
    out: dict = {}
    if method == "floor":
        out["samples"] = read_classes(problem, x)
    elif method == "gmm":
        gmm = GaussianMixture(k, covariance_type="full", n_init=3, random_state=seed).fit(x)
        draws, comp = gmm.sample(n)
        # Each component's weight goes to the class the classifier gives most of its draws.
        owner = [np.bincount(problem.classifier.predict(draws[comp == j]), minlength=k).argmax()
                 if np.any(comp == j) else 0 for j in range(k)]
        out["components"] = np.bincount(owner, weights=gmm.weights_, minlength=k).tolist()
        out["samples"] = read_classes(problem, draws)
    elif method == "kde":
        grid = GridSearchCV(KernelDensity(), {"bandwidth": np.geomspace(0.05, 1.0, 12)}, cv=3)
        kde = grid.fit(x).best_estimator_
        out["bandwidth"] = float(kde.bandwidth)
        out["samples"] = read_classes(problem, kde.sample(n, random_state=rng))
    elif method == "flow":
        flow = fit_data_flow(torch.as_tensor(x, dtype=torch.float32), args, seed)
        out["flow_wall"] = time.perf_counter() - start
        with torch.no_grad():
            out["samples"] = read_classes(problem, flow().sample((n,)).double().numpy())
    elif method == "tilt":
        # The EBMs' fitted tilt alone (the untrained EBM): what the training has to improve on.
        lam = tilts.fit_tilt(args.tilt, torch.as_tensor(x, dtype=torch.float32), seed=seed,
                             steps=args.tilt_steps)
        with torch.no_grad():
            out["samples"] = read_classes(problem, lam.sample((args.is_draws,)).double().numpy())
    else:
        raise ValueError(method)
    out["wall_time"] = time.perf_counter() - start
    return out


def fit_data_flow(data: torch.Tensor, args: argparse.Namespace, seed: int):
    """The flow the ``"flow"`` tilt is (`flowmc_ebm.training.tilts.flow_tilt`, same settings)."""
    return tilts.flow_tilt(data, transforms=args.flow_transforms, hidden=(args.flow_hidden,) * 2,
                           steps=args.tilt_steps, seed=seed)


# ------------------------------------------------------------------------------------------ EBMs

class ParameterEMA:
    """Exponential moving average of a module's parameters, updated from a training callback."""

    def __init__(self, module: torch.nn.Module, half_life: float, every: int) -> None:
        self.decay = 0.5 ** (every / half_life) if half_life > 0 else 0.0
        self.average = copy.deepcopy(module).requires_grad_(False)
        self.module = module

    def __call__(self, _trainer: JointTrainer) -> None:
        with torch.no_grad():
            for a, p in zip(self.average.parameters(), self.module.parameters(), strict=True):
                a.lerp_(p, 1.0 - self.decay)


def run_ebm(method: str, problem: Problem, seed: int, args: argparse.Namespace, out: Path,
            tag: str, dataset: str) -> dict:
    data = torch.as_tensor(problem.x, dtype=torch.float32)
    dim = data.shape[1]
    model = ModelConfig(energy_hidden=(args.energy_hidden,) * args.energy_layers,
                        flow_transforms=args.flow_transforms, flow_hidden=(args.flow_hidden,) * 2)
    # The library's tilt option: fitted to the data at the first fit (NT-EBM has its own).
    config = TrainerConfig(pool_size=args.pool, batch_size=args.batch, n_negatives=args.negatives,
                           mcmc_steps=10, step_size=args.step_size, lr_energy=args.lr,
                           lr_flow=args.lr, energy_l2=args.alpha, seed=seed,
                           log_every=args.log_every, eval_every=0, lr_decay=args.lr_decay,
                           lr_decay_iterations=args.iterations, lr_final_factor=args.lr_final,
                           tilt=args.tilt if method != "nt" else "base",
                           tilt_steps=args.tilt_steps,
                           global_proposal=args.global_proposal if method == "flowmc" else "flow")
    start, cpu = time.perf_counter(), time.process_time()
    trainer = JointTrainer.from_config(dim, method, model=model, trainer=config)
    ema = ParameterEMA(trainer.energy, args.ema, args.log_every)
    curve: list[tuple[int, dict]] = []

    def log_classes(t: JointTrainer) -> None:
        ema(t)
        if t.iteration_ % (args.log_every * 10) == 0:
            point = {"pool": read_classes(problem, t.pool_.double().numpy())["weights"]}
            if t.tilt is not None and args.curve_is > 0:
                # The EBM's own class weights now (the EMA energy, as evaluated at the end).
                now = ema.average if args.ema > 0 else t.energy
                iw = importance_mode_weights(tilts.tilted_model(now, t.tilt).log_prob, t.tilt,
                                             problem.classifier.predict, n=args.curve_is,
                                             n_modes=problem.n_classes, seed=t.iteration_)
                point["importance"] = iw.weights.tolist()
            curve.append((t.iteration_, point))

    trainer.fit(data, n_iterations=args.iterations, callbacks=(log_classes,), progress=False)
    train_wall = time.perf_counter() - start
    energy = ema.average if args.ema > 0 else trainer.energy
    final = (tilts.tilted_model(energy, trainer.tilt) if trainer.tilt is not None
             else trainer.method.tilt(energy, trainer.flow))
    if args.save_model:
        torch.save({"energy": energy, "tilt": tilts.tilt_state(trainer.tilt), "flow": trainer.flow,
                    "pool": trainer.pool_.clone(), "method": method},
                   out / "runs" / dataset / f"{tag}_seed{seed}.pt")
    result = evaluate_ebm(final, trainer, problem, seed, args)
    # A second estimator where a good proposal exists: importance sampling from the data-fitted
    # flow (the tilt, or NT-EBM's flow), defensive against mass that flow misses.
    proposal = trainer.flow if method == "nt" else trainer.tilt
    if proposal is not None and args.is_draws > 0:
        iw = importance_mode_weights(final.log_prob, proposal, problem.classifier.predict,
                                     n=args.is_draws, n_modes=problem.n_classes, seed=seed)
        result["importance"] = {"weights": iw.weights.tolist(), "se": iw.se.tolist(),
                                "pareto_k": iw.pareto_k, "weights_ess": iw.weights_ess}
    if problem.to_pixels is not None:
        save_grid(problem.to_pixels(result.pop("grid")), out / f"samples_{dataset}_{tag}_seed{seed}.png",
                  f"{dataset}, {tag}, seed {seed}: draws of the final EBM")
    else:
        result.pop("grid")
    result["pool"] = read_classes(problem, trainer.pool_.double().numpy())
    result["curve"] = curve
    result["train_wall"] = train_wall
    result["wall_time"] = time.perf_counter() - start
    result["cpu_time"] = time.process_time() - cpu
    h = trainer.history_
    q = max(1, len(h["local_accept"]) // 4)
    result["local_accept"] = float(np.nanmean(h["local_accept"][-q:]))
    glob = np.asarray(h["global_accept"][-q:], dtype=float)
    result["global_accept"] = float(np.nanmean(glob)) if np.isfinite(glob).any() else None
    result["energy_gap"] = float(np.mean(h["energy_gap"][-q:]))
    return result


def evaluate_ebm(model, trainer: JointTrainer, problem: Problem, seed: int,
                 args: argparse.Namespace) -> dict:
    """Draws of the final EBM: flowMC from the pool (MALA steps tuned in the burn-in)."""
    log_prob = model.log_prob
    kernel = samplers.FlowMC(log_prob, trainer.flow, local=samplers.MALA(log_prob, args.step_size),
                             n_local=4, n_global=1, n_particles=32, train=False)
    g = torch.Generator().manual_seed(seed + 1)
    idx = torch.randint(0, trainer.pool_.shape[0], (args.eval_chains,), generator=g)
    start = time.perf_counter()
    trace = samplers.sample(kernel, trainer.pool_[idx], args.eval_steps - args.eval_burn,
                            warmup=args.eval_burn, thin=args.eval_thin, progress=False, generator=g)
    wall = time.perf_counter() - start
    draws = trace.samples  # (chains, draws, dim)
    flat = draws.reshape(-1, draws.shape[-1]).double().numpy()
    w = mode_weights(draws, problem.classifier.predict, n_modes=problem.n_classes)
    read = read_classes(problem, flat)
    return {"samples": {"weights": w.weights.tolist(), "se": w.se.tolist(),
                        "unplaced": read["unplaced"], "n": read["n"]},
            "eval_wall": wall, "grid": draws[:64, -1].double().numpy()}


def study(path: Path, problem: Problem, seed: int, args: argparse.Namespace) -> dict:
    """Several readings of the class weights of one saved EBM (``--save-model``), to tell which
    reading converges: the standard one (``--eval-chains`` chains x ``--eval-steps`` flowMC cycles
    from the pool), much longer flowMC chains from the pool and from the tilt, MALA alone,
    ParallelTempering from the tilt (the mode-search default) and importance sampling with the tilt
    as proposal, plain and defensive (a broad Gaussian reference on the data), with more draws.
    Each reading: weights, MCSE, unplaced share, wall time. The long chains are also read per
    quarter (after burn-in) to show drift."""
    saved = torch.load(path, weights_only=False)
    dim = problem.x.shape[1]
    tilt = tilts.restore_tilt(saved["tilt"], dim)
    final = tilts.tilted_model(saved["energy"], tilt)
    log_prob, flow, pool = final.log_prob, saved["flow"], saved["pool"]
    predict, k = problem.classifier.predict, problem.n_classes
    g = torch.Generator().manual_seed(seed + 7)
    out: dict = {}

    def chains(name: str, kernel, x0: Tensor, steps: int, burn: int, thin: int) -> None:
        start = time.perf_counter()
        trace = samplers.sample(kernel, x0, steps, warmup=burn, thin=thin, progress=False,
                                generator=g)
        draws = trace.samples
        w = mode_weights(draws, predict, n_modes=k, warn=False)
        read = read_classes(problem, draws.reshape(-1, dim).double().numpy())
        q = draws.shape[1] // 4
        quarters = ([mode_weights(draws[:, i * q:(i + 1) * q], predict, n_modes=k,
                                  warn=False).weights.tolist() for i in range(4)] if q >= 4 else [])
        out[name] = {"weights": w.weights.tolist(), "se": w.se.tolist(), "quarters": quarters,
                     "unplaced": read["unplaced"], "wall": time.perf_counter() - start,
                     "draws": list(draws.shape[:2])}
        print(f"  {name}: {np.round(w.weights, 3).tolist()} se {np.round(w.se, 3).tolist()} "
              f"quarters {np.round(quarters, 3).tolist()} ({out[name]['wall']:.0f} s)", flush=True)

    def flowmc() -> samplers.FlowMC:
        return samplers.FlowMC(log_prob, flow, local=samplers.MALA(log_prob, args.step_size),
                               n_local=4, n_global=1, n_particles=32, train=False)

    n, long = args.eval_chains, args.study_steps
    idx = torch.randint(0, pool.shape[0], (n,), generator=g)
    chains("flowmc_pool_standard", flowmc(), pool[idx], args.eval_steps - args.eval_burn,
           args.eval_burn, args.eval_thin)
    chains("flowmc_pool_long", flowmc(), pool[idx], long, args.eval_burn, args.eval_thin * 5)
    with torch.no_grad():
        x_tilt = tilt.sample((n,)).float()
    chains("flowmc_tilt_long", flowmc(), x_tilt, long, args.eval_burn, args.eval_thin * 5)
    data = torch.as_tensor(problem.x, dtype=torch.float32)
    x_data = data[torch.randint(0, len(data), (n,), generator=g)]
    chains("mala_data_long", samplers.MALA(log_prob, args.step_size), x_data, long * 5,
           args.eval_burn * 5, args.eval_thin * 25)
    chains("pt_tilt", samplers.ParallelTempering(log_prob, tilt), x_tilt[: args.study_pt_chains],
           args.study_pt_steps, args.study_pt_steps // 2, 2)
    for name, defensive in (("is_tilt", None), ("is_tilt_defensive", 0.2)):
        start = time.perf_counter()
        kw = ({} if defensive is None else
              {"reference": broad_reference(data.double()), "defensive": defensive})
        iw = importance_mode_weights(log_prob, tilt, predict, n=args.study_is_draws, n_modes=k,
                                     seed=seed, **kw)
        out[name] = {"weights": iw.weights.tolist(), "se": iw.se.tolist(), "pareto_k": iw.pareto_k,
                     "weights_ess": iw.weights_ess, "wall": time.perf_counter() - start,
                     "reference_share": (None if iw.reference_share is None
                                         else iw.reference_share.tolist())}
        print(f"  {name}: {np.round(iw.weights, 3).tolist()} se {np.round(iw.se, 4).tolist()} "
              f"k-hat {iw.pareto_k:.2f} ESS {iw.weights_ess:.0f}", flush=True)
    return out


def save_grid(pixels: np.ndarray, path: Path, title: str) -> None:
    from matplotlib.figure import Figure

    images = ((np.clip(pixels, -1, 1) + 1) / 2).reshape(-1, 8, 8)
    cols = 8
    rows = math.ceil(len(images) / cols)
    fig = Figure(figsize=(cols, rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, img in zip(axes.flat, images, strict=False):
        ax.imshow(img, cmap="gray_r", vmin=0, vmax=1)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(title)
    fig.savefig(path, dpi=80)


def error_figure(results: dict[str, dict], path: Path) -> None:
    """Per data set, each model's worst-class error per seed (dots; `reading`) against the 0.03
    bar."""
    from matplotlib.figure import Figure

    datasets = list(results)
    fig = Figure(figsize=(2.6 * len(datasets) + 1, 3.6), layout="constrained")
    axes = fig.subplots(1, len(datasets), squeeze=False, sharey=True)[0]
    for ax, dataset in zip(axes, datasets, strict=True):
        tags = list(results[dataset])
        for i, tag in enumerate(tags):
            runs = results[dataset][tag]
            truth = np.asarray(runs[0]["truth"])
            err = [np.abs(reading(r)[0] - truth).max() for r in runs]
            color = ("C0" if tag.startswith("flowmc") else
                     "C1" if tag.startswith(("ula", "nt")) else "0.4")
            ax.plot(np.full(len(err), i), np.maximum(err, 1e-4), "o", color=color, alpha=0.8)
        ax.axhline(0.03, color="C3", lw=1, ls="--")
        ax.set_xticks(range(len(tags)), tags, rotation=60, ha="right", fontsize=8)
        ax.set_title(dataset, fontsize=10)
        ax.set_yscale("log")
    axes[0].set_ylabel("max |class weight − truth|")
    fig.suptitle("Worst-class error of each model, one dot per seed (EBMs read by importance "
                 "sampling; 0 drawn at 1e-4); "
                 "dashed: the 0.03 bar")
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------------------------------- table

def method_tag(method: str, args: argparse.Namespace) -> str:
    if method in ("flowmc", "ula"):
        return f"{method}-{args.tilt}" + (f"-{args.variant}" if args.variant else "")
    if method == "nt":
        return method + (f"-{args.variant}" if args.variant else "")
    if method == "tilt":
        return f"tilt-{args.tilt}"
    return method


def reading(run: dict) -> tuple[np.ndarray, np.ndarray, str]:
    """The class weights a run is judged by, their within-model SE, and which reading they are:
    importance sampling with the tilt as proposal for an EBM that has it (the reading long chains
    and parallel tempering confirmed, `docs/results_real_data.md`), else the classified draws."""
    if "importance" in run:
        return (np.asarray(run["importance"]["weights"]), np.asarray(run["importance"]["se"]),
                "importance")
    return np.asarray(run["samples"]["weights"]), np.asarray(run["samples"]["se"]), "draws"


def table(results: dict[str, dict], args: argparse.Namespace) -> str:
    lines = ["| data set | model | reading | max abs. error over classes (per seed) | class weights, "
             "mean ± sd over seeds (truth) | within-model SE | max k-hat | chain reading: max "
             "error | unplaced draws | wall / CPU per run |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for dataset, by_tag in results.items():
        for tag, runs in by_tag.items():
            truth = np.asarray(runs[0]["truth"])
            read = [reading(r) for r in runs]
            w = np.asarray([x[0] for x in read])
            errors = np.abs(w - truth).max(1)
            se = np.asarray([x[1] for x in read]).max(1)
            sd = w.std(0, ddof=1) if len(runs) > 1 else np.full(len(truth), math.nan)
            weights = ", ".join(f"{m:.3f}±{s:.3f} ({t:.3f})" for m, s, t in
                                zip(w.mean(0), sd, truth, strict=True))
            kind = read[0][2] if len({x[2] for x in read}) == 1 else "mixed"
            if kind == "importance":
                khat = f"{max(r['importance']['pareto_k'] for r in runs):.2f}"
                chains = np.abs(np.asarray([r["samples"]["weights"] for r in runs]) - truth)
                chain_err = f"{chains.max():.3f}"
            else:
                khat, chain_err = "–", "–"
            cpu = (f" / {statistics.fmean(r['cpu_time'] for r in runs):.0f} s"
                   if all("cpu_time" in r for r in runs) else "")
            lines.append(
                f"| {dataset} | {tag} | {kind} | {errors.max():.3f} ("
                + ", ".join(f"{e:.3f}" for e in errors) + f") | {weights} | "
                f"{statistics.fmean(se):.3f} | {khat} | {chain_err} | "
                f"{statistics.fmean(r['samples']['unplaced'] for r in runs):.3f} | "
                f"{statistics.fmean(r['wall_time'] for r in runs):.0f} s{cpu} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--methods", nargs="+", default=["floor", "gmm", "kde", "flowmc", "ula", "nt"],
                        choices=[*BASELINES, *EBMS])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--variant", default="", help="a name for these settings in the run files")
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--pca", type=int, default=16)
    parser.add_argument("--tilt", default="gmm", choices=tilts.TILTS)
    parser.add_argument("--tilt-steps", type=int, default=1000)
    parser.add_argument("--tilt-lr", type=float, default=3e-3)
    parser.add_argument("--tilt-batch", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--pool", type=int, default=1024)
    parser.add_argument("--negatives", type=int, default=128)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--energy-hidden", type=int, default=256)
    parser.add_argument("--energy-layers", type=int, default=2)
    parser.add_argument("--flow-transforms", type=int, default=4)
    parser.add_argument("--flow-hidden", type=int, default=128)
    parser.add_argument("--alpha", type=float, default=0.1, help="energy L2 weight")
    parser.add_argument("--step-size", type=float, default=0.01)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lr-decay", default="none", choices=("none", "cosine", "linear"))
    parser.add_argument("--lr-final", type=float, default=0.1)
    parser.add_argument("--ema", type=float, default=0.0,
                        help="half-life (iterations) of the energy's parameter EMA; 0: none")
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--global-proposal", default="flow", choices=("flow", "tilt"),
                        help="what flowMC-EBM's i-SIR global moves propose from during training: "
                             "the sampler's flow (the paper's) or the fitted tilt")
    parser.add_argument("--curve-is", type=int, default=2000,
                        help="importance draws for the EBM's class weights every 50 iterations "
                             "(the curve in the run file); 0: none")
    parser.add_argument("--eval-chains", type=int, default=128)
    parser.add_argument("--eval-steps", type=int, default=100)
    parser.add_argument("--eval-burn", type=int, default=40)
    parser.add_argument("--eval-thin", type=int, default=4)
    parser.add_argument("--is-draws", type=int, default=20000)
    parser.add_argument("--save-model", action="store_true",
                        help="also write runs/<dataset>/<tag>_seed<s>.pt (the evaluated energy, "
                             "tilt, flow and pool) for later readings (--study)")
    parser.add_argument("--out", type=Path, default=Path("out/real_data"))
    parser.add_argument("--tags", nargs="*", default=None,
                        help="only tabulate: the run files of these tags (e.g. flowmc-gmm-decay), "
                             "whatever seeds exist; nothing is run")
    parser.add_argument("--study", default=None, metavar="TAG",
                        help="read the saved models (--save-model) of this tag several ways "
                             "(see `study`); writes runs/<dataset>/<tag>_seed<s>_study.json")
    parser.add_argument("--study-steps", type=int, default=1000)
    parser.add_argument("--study-pt-chains", type=int, default=32)
    parser.add_argument("--study-pt-steps", type=int, default=400)
    parser.add_argument("--study-is-draws", type=int, default=200_000)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.study is not None:
        for dataset in args.datasets:
            for seed in args.seeds:
                path = args.out / "runs" / dataset / f"{args.study}_seed{seed}.pt"
                if not path.exists():
                    continue
                problem = load_problem(DATASETS[dataset], seed, args.copies, args.pca)
                print(f"{dataset} {args.study} seed {seed} (truth "
                      f"{np.round(problem.truth, 3).tolist()}):", flush=True)
                res = study(path, problem, seed, args)
                res.update(truth=problem.truth.tolist(), dataset=dataset, seed=seed)
                path.with_name(path.stem + "_study.json").write_text(json.dumps(res) + "\n",
                                                                      encoding="utf-8")
        return 0
    results: dict[str, dict] = {}
    if args.tags is not None:
        for dataset in args.datasets:
            for tag in args.tags:
                for seed in args.seeds:
                    done = args.out / "runs" / dataset / f"{tag}_seed{seed}.json"
                    if done.exists():
                        run = json.loads(done.read_text(encoding="utf-8"))
                        results.setdefault(dataset, {}).setdefault(tag, []).append(run)
        args.methods = []
    for dataset in args.datasets:
        runs_dir = args.out / "runs" / dataset
        runs_dir.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            problem = None
            for method in args.methods:
                tag = method_tag(method, args)
                done = runs_dir / f"{tag}_seed{seed}.json"
                if done.exists():
                    run = json.loads(done.read_text(encoding="utf-8"))
                else:
                    if problem is None:
                        problem = load_problem(DATASETS[dataset], seed, args.copies, args.pca)
                    run = (run_ebm(method, problem, seed, args, args.out, tag, dataset)
                           if method in EBMS else run_baseline(method, problem, seed, args))
                    run.update(dataset=dataset, tag=tag, seed=seed, truth=problem.truth.tolist(),
                               classifier_accuracy=problem.accuracy,
                               settings={k: str(v) if isinstance(v, Path) else v
                                         for k, v in vars(args).items()})
                    done.write_text(json.dumps(run) + "\n", encoding="utf-8")
                    err = np.abs(np.asarray(run["samples"]["weights"]) - problem.truth).max()
                    print(f"{dataset} {tag} seed {seed}: weights "
                          f"{np.round(run['samples']['weights'], 3).tolist()} (truth "
                          f"{np.round(problem.truth, 3).tolist()}), max error {err:.3f}, unplaced "
                          f"{run['samples']['unplaced']:.3f}, {run['wall_time']:.0f} s", flush=True)
                results.setdefault(dataset, {}).setdefault(tag, []).append(run)
    text = table(results, args)
    (args.out / "table.md").write_text(text, encoding="utf-8")
    keep = ("seed", "truth", "samples", "importance", "pool", "components", "wall_time", "cpu_time",
            "classifier_accuracy", "local_accept", "global_accept")
    summary = {d: {t: [{k: r[k] for k in keep if k in r} for r in runs] for t, runs in by.items()}
               for d, by in results.items()}
    (args.out / "results.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    error_figure(results, args.out / "errors.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Real data with known mode weights: 8×8 digits of two classes mixed 3:1, flowMC-EBM against ULA-PCD.

Data: scikit-learn's `load_digits` (ships with the package), the classes ``--classes`` (default 0
and 1) mixed in the proportions ``--weights`` (default 3:1) by subsampling the lighter classes,
dequantized (pixel + U(0, 1); ``--copies`` copies of each image with independent noise, so
the few hundred images do not get memorized), scaled to ``[-1, 1]`` and, by default, projected on their first
``--pca`` principal components, whitened (fitted on the training mixture itself, as a user would;
``--pca 0`` keeps all 64 pixels). Each EBM is trained with the same network, tilt, pool and
gradient budget; only the sampler of the negatives differs.

How the EBM's class weights are read: a logistic-regression classifier is fitted on *all* the
labelled images of those classes (dequantized the same way; its held-out accuracy is reported),
then assigns (a) the persistent chains at the end of training (the model's own samples, as
training saw them) and (b) fresh samples: ``--eval-chains`` chains started from the pool and
run ``--eval-steps`` further flowMC steps on the final EBM (the same kernel for every method, so
the evaluation does not favour the chains each method trained with). Each sample goes to the
classifier's most probable class; samples whose top probability is below 0.9 are also reported
as "unclear" (neither digit clearly: a measure of sample quality), with the weights among the
confident samples alone beside them.

Writes under ``--out`` (default ``out/digits_mixture``): ``runs/<method>_seed<s>.json`` (one per
finished run, reused by later invocations, so seeds can run in parallel processes with the same
``--out`` and a last invocation over all seeds aggregates them), ``results.json``, ``table.md``,
``samples_<method>_seed<s>.png`` (grids of fresh samples) and ``weights.png`` (the chains' class
weights over training).

Usage:
    python examples/digits_mixture.py                          # 2 methods × 3 seeds
    python examples/digits_mixture.py --iterations 50 --seeds 0 --eval-steps 5   # a quick look
    python examples/digits_mixture.py --seeds 1 & python examples/digits_mixture.py --seeds 2
    python examples/digits_mixture.py            # then: reuses both, runs seed 0, aggregates
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

import samplers
from flowmc_ebm.config import ModelConfig, TrainerConfig
from flowmc_ebm.trainer import JointTrainer

LABELS = {"flowmc": "flowMC-EBM", "ula": "ULA-PCD", "mala": "MALA-PCD", "nt": "NT-EBM"}
CONFIDENT = 0.9


def dequantize(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pixels 0..16 plus U(0, 1) noise, scaled to [-1, 1]."""
    return (images + rng.uniform(size=images.shape)) / 17.0 * 2.0 - 1.0


def make_data(classes: list[int], weights: list[float], seed: int, copies: int = 1
              ) -> tuple[np.ndarray, np.ndarray]:
    """Images of ``classes`` subsampled to the proportions ``weights`` (largest class kept whole),
    each dequantized ``copies`` times with independent noise."""
    digits = load_digits()
    rng = np.random.default_rng(seed)
    pools = [np.flatnonzero(digits.target == c) for c in classes]
    w = np.asarray(weights, dtype=float) / np.sum(weights)
    total = min(len(p) / wk for p, wk in zip(pools, w, strict=True))
    counts = [int(round(total * wk)) for wk in w]
    picked = [rng.choice(p, size=n, replace=False) for p, n in zip(pools, counts, strict=True)]
    images = np.concatenate([digits.data[i] for i in picked])
    labels = np.concatenate([np.full(n, k) for k, n in enumerate(counts)])
    return dequantize(np.tile(images, (copies, 1)), rng), np.tile(labels, copies)


class Features:
    """Pixels in [-1, 1] to the model's coordinates (whitened PCA, or the pixels themselves)."""

    def __init__(self, pixels: np.ndarray, n_components: int) -> None:
        self.pca = PCA(n_components, whiten=True).fit(pixels) if n_components else None
        self.dim = n_components or pixels.shape[1]

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return pixels if self.pca is None else self.pca.transform(pixels)

    def pixels(self, z: np.ndarray) -> np.ndarray:
        return z if self.pca is None else self.pca.inverse_transform(z)


def fit_classifier(classes: list[int], features: Features, seed: int
                   ) -> tuple[LogisticRegression, float]:
    """A classifier of the chosen classes on all their labelled images; its held-out accuracy."""
    digits = load_digits()
    keep = np.isin(digits.target, classes)
    x = features(dequantize(digits.data[keep], np.random.default_rng(seed + 1000)))
    y = np.searchsorted(classes, digits.target[keep])
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)
    clf = LogisticRegression(max_iter=2000, C=0.1).fit(x_tr, y_tr)
    return clf, float(clf.score(x_te, y_te))


def class_weights(clf: LogisticRegression, x: torch.Tensor, n_classes: int) -> dict:
    """Class weights of samples: every sample by the classifier's most probable class
    (``weights``), and only the confident ones (``weights_confident``); the unclear fraction."""
    proba = clf.predict_proba(x.detach().cpu().double().numpy())
    labels = proba.argmax(1)
    confident = proba.max(1) > CONFIDENT

    def share(keep: np.ndarray) -> tuple[list[float], list[float]]:
        n = int(keep.sum())
        if not n:
            return [math.nan] * n_classes, [math.nan] * n_classes
        w = np.bincount(labels[keep], minlength=n_classes) / n
        # Binomial standard error (independent chains, one draw each).
        return w.tolist(), np.sqrt(w * (1 - w) / n).tolist()

    weights, se = share(np.ones_like(confident))
    weights_confident, se_confident = share(confident)
    return {"weights": weights, "se": se, "weights_confident": weights_confident,
            "se_confident": se_confident, "n": int(len(labels)),
            "unclear": float(1 - confident.mean())}


def train_one(method: str, seed: int, args: argparse.Namespace, data: torch.Tensor,
              clf: LogisticRegression, features: Features, out: Path) -> dict:
    torch.manual_seed(seed)
    model = ModelConfig(energy_hidden=(256, 256), flow_transforms=4, flow_hidden=(128, 128),
                        base_scale=args.base_scale)
    config = TrainerConfig(pool_size=args.pool, batch_size=args.batch, n_negatives=args.negatives,
                           mcmc_steps=10, step_size=args.step_size, lr_energy=args.lr,
                           lr_flow=args.lr, energy_l2=args.alpha, seed=seed,
                           log_every=args.log_every, eval_every=0)
    trainer = JointTrainer.from_config(data.shape[1], method, model=model, trainer=config)
    n_classes = len(args.classes)
    curve: list[tuple[int, list[float]]] = []

    def log_classes(t: JointTrainer) -> None:
        curve.append((t.iteration_, class_weights(clf, t.pool_, n_classes)["weights"]))

    start = time.perf_counter()
    trainer.fit(data, n_iterations=args.iterations, callbacks=(log_classes,), progress=False)
    wall = time.perf_counter() - start
    pool = class_weights(clf, trainer.pool_, n_classes)

    # Fresh samples: the same flowMC kernel on every method's final EBM, from its pool.
    log_prob = trainer.log_prob
    kernel = samplers.FlowMC(log_prob, trainer.flow, local=samplers.MALA(log_prob, args.step_size),
                             n_local=4, n_global=1, n_particles=32, train=False)
    g = torch.Generator().manual_seed(seed + 1)
    idx = torch.randint(0, trainer.pool_.shape[0], (args.eval_chains,), generator=g)
    trace = samplers.sample(kernel, trainer.pool_[idx], args.eval_steps, progress=False, generator=g)
    fresh_x = trace.samples[:, -1]
    fresh = class_weights(clf, fresh_x, n_classes)
    save_grid(features.pixels(fresh_x[:64].double().numpy()), out / f"samples_{method}_seed{seed}.png",
              f"{LABELS[method]}, seed {seed}: fresh samples")
    h = trainer.history_
    quarter = max(1, len(h["local_accept"]) // 4)
    return {"method": method, "seed": seed, "wall_time": wall, "pool": pool, "fresh": fresh,
            "curve": curve,
            "global_accept": float(np.nanmean(h["global_accept"][-quarter:]))
            if method == "flowmc" else None,
            "local_accept": float(np.nanmean(h["local_accept"][-quarter:])),
            "iterations": trainer.iteration_}


def save_grid(x: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    images = ((np.clip(x, -1, 1) + 1) / 2).reshape(-1, 8, 8)
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


def weights_figure(runs: list[dict], truth: list[float], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    colors = {"flowmc": "C0", "ula": "C1", "mala": "C2", "nt": "C3"}
    for r in runs:
        its = [c[0] for c in r["curve"]]
        ax.plot(its, [c[1][0] for c in r["curve"]], color=colors.get(r["method"], "k"), alpha=0.8,
                label=f"{LABELS[r['method']]}, seed {r['seed']}")
    ax.axhline(truth[0], color="k", ls="--", label="truth")
    ax.set(xlabel="iteration", ylabel="weight of the first class (chains)", ylim=(0, 1),
           title="Class weight of the persistent chains over training")
    ax.legend(fontsize="x-small", ncol=2)
    fig.savefig(path, dpi=100)


def _mean_sd(values: list[float]) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else math.nan
    return f"{statistics.fmean(values):.3f} ± {sd:.3f}"


def table(runs: list[dict], truth: list[float], args: argparse.Namespace) -> str:
    accuracy = min(r["classifier_accuracy"] for r in runs)
    space = f"{args.pca} whitened principal components" if args.pca else "the 64 pixels"
    lines = ["| method | first-class weight, fresh samples | per seed | confident samples only | "
             "chains (end of training) | unclear samples | global acc. | wall-clock / run |",
             "|---|---|---|---|---|---|---|---|"]
    for method in dict.fromkeys(r["method"] for r in runs):
        rs = [r for r in runs if r["method"] == method]
        fresh = [r["fresh"]["weights"][0] for r in rs]
        lines.append(
            f"| {LABELS[method]} | {_mean_sd(fresh)} | "
            + ", ".join(f"{w:.3f} (±{r['fresh']['se'][0]:.3f})" for w, r in zip(fresh, rs, strict=True))
            + f" | {_mean_sd([r['fresh']['weights_confident'][0] for r in rs])}"
            f" | {_mean_sd([r['pool']['weights'][0] for r in rs])} | "
            f"{_mean_sd([r['fresh']['unclear'] for r in rs])} | "
            f"{_mean_sd([r['global_accept'] for r in rs])} | "
            f"{statistics.fmean(r['wall_time'] for r in rs):.0f} s |")
    lines.append(
        f"\nDigits {args.classes} mixed {':'.join(f'{w:g}' for w in args.weights)} (true first-class "
        f"weight {truth[0]:.3f}), modelled on {space}; {args.iterations} iterations, "
        f"{args.negatives} negatives from a pool of {args.pool}, batch {args.batch}, "
        f"α = {args.alpha:g}, tilt N(0, {args.base_scale:g}² I), step {args.step_size:g}. Fresh "
        f"samples: {args.eval_chains} chains × {args.eval_steps} flowMC steps on the final EBM. "
        f"Classifier (same space) held-out accuracy ≥ {accuracy:.3f}; each sample goes to its most "
        f"probable class (± the binomial SE); 'confident' keeps those with probability > "
        f"{CONFIDENT}. sd over seeds {args.seeds}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--weights", nargs="+", type=float, default=[3.0, 1.0])
    parser.add_argument("--methods", nargs="+", default=["flowmc", "ula"], choices=sorted(LABELS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--pool", type=int, default=1024)
    parser.add_argument("--negatives", type=int, default=128)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--copies", type=int, default=10,
                        help="dequantized copies of each image (fresh uniform noise each)")
    parser.add_argument("--pca", type=int, default=16, help="whitened principal components (0: pixels)")
    parser.add_argument("--alpha", type=float, default=0.1, help="energy L2 weight")
    parser.add_argument("--base-scale", type=float, default=1.0,
                        help="sd of the flow's Gaussian base, the EBM's tilt")
    parser.add_argument("--step-size", type=float, default=0.01)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--eval-chains", type=int, default=512)
    parser.add_argument("--eval-steps", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("out/digits_mixture"))
    args = parser.parse_args(argv)
    if len(args.weights) != len(args.classes):
        parser.error(f"--weights needs one value per class ({len(args.classes)}); "
                     f"received {len(args.weights)}")
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    truth = (np.asarray(args.weights) / np.sum(args.weights)).tolist()
    runs = []
    (args.out / "runs").mkdir(exist_ok=True)
    for seed in args.seeds:
        x, labels = make_data(args.classes, args.weights, seed, args.copies)
        features = Features(x, args.pca)
        clf, accuracy = fit_classifier(args.classes, features, 0)
        data = torch.as_tensor(features(x), dtype=torch.float32)
        data_weights = np.bincount(labels) / len(labels)
        for method in args.methods:
            done = args.out / "runs" / f"{method}_seed{seed}.json"
            if done.exists():  # finished by an earlier (or a parallel) invocation
                runs.append(json.loads(done.read_text(encoding="utf-8")))
                continue
            run = train_one(method, seed, args, data, clf, features, args.out)
            run["data_weights"] = data_weights.tolist()
            run["classifier_accuracy"] = accuracy
            runs.append(run)
            done.write_text(json.dumps(run) + "\n", encoding="utf-8")
            print(f"{LABELS[method]} seed {seed}: fresh {run['fresh']['weights'][0]:.3f}, chains "
                  f"{run['pool']['weights'][0]:.3f}, unclear {run['fresh']['unclear']:.2f}, "
                  f"{run['wall_time']:.0f} s", flush=True)
    text = table(runs, truth, args)
    (args.out / "table.md").write_text(text, encoding="utf-8")
    (args.out / "results.json").write_text(json.dumps(
        {"truth": truth, "settings": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
         "runs": runs}, indent=1) + "\n", encoding="utf-8")
    weights_figure(runs, truth, args.out / "weights.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

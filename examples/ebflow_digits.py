"""EBFlow trained by maximum likelihood and by score matching, on 8×8 digits and on a 2-D toy.

Digits (scikit-learn's `load_digits`, 1 797 images, values 0..16, D = 64; 1 497 to train, 300
held out): the paper's fully connected EBFlow (dense 64×64 → smooth leaky ReLU → dense 64×64,
dense layers starting at −I), trained "after preprocessing": each batch is dequantized afresh
(``x + U[0, 1)``), scaled to ``(α, 1 − α)`` with α = 0.05 and logit-transformed outside the model;
the transform's log-determinant is added back, so the reported NLL is that of the dequantized
images on ``[0, 17)^64`` (an upper bound on the discrete NLL; bits/dim = NLL / (64 ln 2), and
log2 17 = 4.09 for a uniform model). Evaluation uses the EMA weights (0.999, warm-up), 10
dequantization draws of the held-out set. Beside the NLL: the exact Hyvärinen objective on held-out
data (what score matching minimizes, 64 backward passes) and a Gaussian fitted by maximum
likelihood in the same logit space, as a reference point.

2-D toy: an overlapping two-Gaussian mixture (weights 0.3 / 0.7), a coupling EBFlow
(4 × (dense, affine coupling) + dense), fresh samples each step; NLL against the data's entropy.

Writes under ``--out`` (default ``out/ebflow_digits``): ``results.json``, ``table.md`` and
``samples.png`` (digits drawn from each model by inverting the flow).

Usage:
    python examples/ebflow_digits.py                     # a few minutes on one core
    python examples/ebflow_digits.py --steps 1000 --toy-steps 500   # a quick look
    python examples/ebflow_digits.py --model fc --blocks 2 --skip-toy --out out/ebflow_digits_fc2
        # a deeper fully connected EBFlow: dense → (smooth leaky ReLU → dense) × 2
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from flowmc_ebm.diagnostics import grid_quadrature  # noqa: E402
from flowmc_ebm.ebflow import (  # noqa: E402
    EBFlow,
    EBFlowTrainer,
    LogitTransform,
    bits_per_dim,
    conv_ebflow,
    coupling_ebflow,
    dequantize,
    fully_connected_ebflow,
)
from flowmc_ebm.objectives.score_matching import exact_score_matching  # noqa: E402
from flowmc_ebm.targets import GaussianMixture  # noqa: E402

OBJECTIVES = ("ml", "ssm", "dsm", "fdssm")
LEVELS = 17
PREPROCESS = LogitTransform(LEVELS, alpha=0.05)
#: Chao et al. (2023), MNIST, fully connected: test NLL (nats) and training batches per second.
PAPER_MNIST = {"ml": (1092.4, 8.0), "ssm": (1092.8, 33.1), "dsm": (1099.2, 66.7),
               "fdssm": (1104.1, 130.2)}


def digits_split(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.tensor(load_digits().data, dtype=torch.float32)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    return images[order[300:]], images[order[:300]]


def digits_nll(model: EBFlow, images: torch.Tensor, draws: int = 10) -> float:
    """Mean NLL (nats) of the dequantized images in the original space, ``[0, 17)^64``."""
    generator = torch.Generator().manual_seed(12_345)
    values = []
    with torch.no_grad():
        for _ in range(draws):
            y, log_det = PREPROCESS(dequantize(images, generator))
            values.append(-model.log_prob(y) - log_det)
    return float(torch.stack(values).mean())


def gaussian_reference(train: torch.Tensor, test: torch.Tensor) -> float:
    """Held-out NLL of a Gaussian fitted by maximum likelihood in the logit space."""
    generator = torch.Generator().manual_seed(1)
    y = torch.cat([PREPROCESS(dequantize(train, generator))[0] for _ in range(20)]).double()
    gaussian = torch.distributions.MultivariateNormal(y.mean(0), torch.cov(y.T))
    values = []
    for _ in range(10):
        y_test, log_det = PREPROCESS(dequantize(test, generator))
        values.append(-gaussian.log_prob(y_test.double()) - log_det)
    return float(torch.stack(values).mean())


def held_out_hyvarinen(model: EBFlow, test: torch.Tensor) -> tuple[float, float]:
    """Exact score-matching objective on held-out preprocessed data: mean and its MCSE."""
    y, _ = PREPROCESS(dequantize(test, torch.Generator().manual_seed(7)))
    values = exact_score_matching(y, energy=model.energy).detach()
    return float(values.mean()), float(values.std() / math.sqrt(len(values)))


#: Model constructors, called with the number of nonlinear blocks.
MODELS = {"fc": lambda blocks=1: fully_connected_ebflow(64, blocks=blocks),
          "conv": lambda blocks=3: conv_ebflow((1, 8, 8), 3, blocks=blocks)}


def run_digits(objective: str, steps: int, train: torch.Tensor, test: torch.Tensor,
               seed: int, model_name: str = "fc", blocks: int | None = None,
               lr: float = 1e-3) -> tuple[dict, EBFlow]:
    torch.manual_seed(seed)
    model = MODELS[model_name]() if blocks is None else MODELS[model_name](blocks)
    trainer = EBFlowTrainer(model, objective, lr=lr, sigma=0.05, xi=1e-2)

    def batches(n: int, generator: torch.Generator) -> torch.Tensor:
        index = torch.randint(0, len(train), (n,), generator=generator)
        return PREPROCESS(dequantize(train[index], generator))[0]

    start = time.perf_counter()
    trainer.fit(batches, steps, batch_size=100, generator=torch.Generator().manual_seed(seed))
    seconds = time.perf_counter() - start
    model = trainer.ema.average
    nll = digits_nll(model, test)
    hyvarinen, hyvarinen_se = held_out_hyvarinen(model, test)
    return {
        "model": model_name, "blocks": blocks, "objective": objective, "steps": steps, "lr": lr,
        "seconds": seconds,
        "steps_per_second": steps / seconds,
        "test_nll": nll, "test_bits_per_dim": bits_per_dim(nll, 64),
        "train_nll": digits_nll(model, train[:300]),
        "held_out_hyvarinen": hyvarinen, "held_out_hyvarinen_se": hyvarinen_se,
    }, model


def toy_target() -> GaussianMixture:
    return GaussianMixture([[-1.0, -0.5], [1.0, 0.5]],
                           [[[0.5, 0.2], [0.2, 0.3]], [[0.3, -0.1], [-0.1, 0.4]]], [0.3, 0.7])


def run_toy(objective: str, steps: int, seed: int) -> dict:
    target = toy_target()
    torch.manual_seed(seed)
    trainer = EBFlowTrainer(coupling_ebflow(2), objective, lr=1e-3, sigma=0.05, xi=1e-2)
    start = time.perf_counter()
    trainer.fit(target.sample, steps, batch_size=256, generator=torch.Generator().manual_seed(seed))
    seconds = time.perf_counter() - start
    model = trainer.ema.average
    test = target.sample(20_000, torch.Generator().manual_seed(10_000))
    with torch.no_grad():
        nll = float(-model.log_prob(test).mean())
    weights = grid_quadrature(lambda x: -model.energy(x), target.assign, 5.0, 300, n_modes=2,
                              dtype=torch.float32).weights
    return {"objective": objective, "steps": steps, "seconds": seconds, "test_nll": nll,
            "test_bits_per_dim": bits_per_dim(nll, 2), "weights": weights.tolist()}


def samples_figure(models: dict[str, EBFlow], path: Path) -> None:
    fig, axes = plt.subplots(len(models), 8, figsize=(8, 1.1 * len(models)), squeeze=False)
    for row, (name, model) in zip(axes, models.items(), strict=True):
        y = model.sample(8, generator=torch.Generator().manual_seed(0))
        images = PREPROCESS.inverse(y).floor().clamp(0, LEVELS - 1).reshape(8, 8, 8)
        for ax, image in zip(row, images, strict=True):
            ax.imshow(image, cmap="gray_r", vmin=0, vmax=LEVELS - 1)
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(name, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _versus(value: float, reference: dict | None) -> str:
    return "—" if reference is None else f"{100 * (value / reference['test_nll'] - 1):+.1f}%"


def markdown(digits: list[dict], gaussian: float, toy: list[dict], toy_entropy: float) -> str:
    ml = next((r for r in digits if r["objective"] == "ml"), None)
    model = {"fc": "fully connected", "conv": "convolutional"}[digits[0]["model"]] if digits else ""
    if digits and digits[0].get("blocks") is not None:
        model += f" ({digits[0]['blocks']} nonlinear blocks)"
    lines = [
        f"Digits (8×8, D = 64), {model} EBFlow, held-out NLL of the dequantized images "
        "(EMA weights).",
        "",
        "| objective | test NLL (nats) | bits/dim | vs ML | train NLL | held-out Hyvärinen J "
        "(± MCSE) | steps/s | paper MNIST NLL / batches/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in digits:
        paper = PAPER_MNIST[r["objective"]]
        lines.append(
            f"| {r['objective']} | {r['test_nll']:.1f} | {r['test_bits_per_dim']:.3f} | "
            f"{_versus(r['test_nll'], ml)} | {r['train_nll']:.1f} | "
            f"{r['held_out_hyvarinen']:.1f} ± {r['held_out_hyvarinen_se']:.1f} | "
            f"{r['steps_per_second']:.0f} | {paper[0]} / {paper[1]} |")
    lines += [f"| Gaussian (ML, logit space) | {gaussian:.1f} | {bits_per_dim(gaussian, 64):.3f} | "
              f"{_versus(gaussian, ml)} | | | | |", ""]
    if not toy:
        return "\n".join(lines) + "\n"
    ml_toy = next((r for r in toy if r["objective"] == "ml"), None)
    lines += [f"2-D toy (two overlapping Gaussians, weights 0.3 / 0.7), coupling EBFlow; data "
              f"entropy {toy_entropy:.3f} nats.", "",
              "| objective | test NLL (nats) | bits/dim | vs ML | weights by quadrature |",
              "|---|---|---|---|---|"]
    for r in toy:
        weights = " / ".join(f"{w:.3f}" for w in r["weights"])
        lines.append(f"| {r['objective']} | {r['test_nll']:.3f} | {r['test_bits_per_dim']:.3f} | "
                     f"{_versus(r['test_nll'], ml_toy)} | {weights} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8000, help="digits training steps")
    parser.add_argument("--toy-steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", choices=sorted(MODELS), default="fc",
                        help="fc: dense 64x64 -> smooth leaky ReLU -> dense; conv: conv_ebflow (1, 8, 8)")
    parser.add_argument("--blocks", type=int, default=None,
                        help="nonlinear blocks (fc: (smooth leaky ReLU -> dense) repeats, default 1; "
                             "conv: its stages, default 3)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (digits)")
    parser.add_argument("--objectives", nargs="+", choices=OBJECTIVES, default=list(OBJECTIVES))
    parser.add_argument("--skip-toy", action="store_true", help="digits only")
    parser.add_argument("--out", type=Path, default=Path("out/ebflow_digits"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    train, test = digits_split()
    digits, models = [], {}
    for objective in args.objectives:
        result, models[objective] = run_digits(objective, args.steps, train, test, args.seed,
                                               args.model, args.blocks, args.lr)
        digits.append(result)
        print(f"digits {objective:>6}: test NLL {result['test_nll']:.1f} nats "
              f"({result['test_bits_per_dim']:.3f} bits/dim), {result['seconds']:.0f} s", flush=True)
    gaussian = gaussian_reference(train, test)
    toy = []
    for objective in [] if args.skip_toy else OBJECTIVES:
        toy.append(run_toy(objective, args.toy_steps, args.seed))
        print(f"toy    {objective:>6}: test NLL {toy[-1]['test_nll']:.3f} nats, "
              f"{toy[-1]['seconds']:.0f} s", flush=True)
    target = toy_target()
    with torch.no_grad():
        entropy = float(-target.log_prob(target.sample(20_000, torch.Generator().manual_seed(10_000))).mean())

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(
        {"digits": digits, "gaussian_reference_nll": gaussian, "toy": toy, "toy_entropy": entropy,
         "paper_mnist": PAPER_MNIST, "settings": vars(args) | {"out": str(args.out)}}, indent=2))
    (args.out / "table.md").write_text(markdown(digits, gaussian, toy, entropy), encoding="utf-8")
    samples_figure(models, args.out / "samples.png")
    print((args.out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

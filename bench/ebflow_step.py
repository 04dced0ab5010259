"""Time per training step of EBFlow by score matching (SSM, DSM, FD-SSM) against maximum likelihood.

The fully connected EBFlow (dense D×D → smooth leaky ReLU → dense D×D) at batch 100, as D grows.
Maximum likelihood needs the slogdet of both dense matrices (and their inverses in the backward
pass), O(D³); the score-matching objectives only multiply the batch by them, O(n D²). The paper
(Chao et al. 2023, MNIST, D = 784, GPU) reports 8.0 / 33.1 / 66.7 / 130.2 batches per second for
ML / SSM / DSM / FD-SSM: 4×, 8×, 16× faster than ML.

All objectives run in this process, in rounds, alternating (the order rotates every round), so
machine load affects them alike; the median over rounds is reported. A step is the whole update:
zero_grad, loss, backward, Adam step and EMA update (the same O(D²) bookkeeping for every
objective). Writes ``ebflow_step.json`` into ``--out``.

Example:
    .venv/bin/python bench/ebflow_step.py --dims 64 256 784 1024 --out bench/results
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch

from flowmc_ebm.ebflow import EBFlowTrainer, fully_connected_ebflow

OBJECTIVES = ("ml", "ssm", "dsm", "fdssm")
PAPER_RATIO_784 = {"ssm": 33.1 / 8.0, "dsm": 66.7 / 8.0, "fdssm": 130.2 / 8.0}


def _trainers(dim: int, device: torch.device) -> dict[str, EBFlowTrainer]:
    trainers = {}
    for objective in OBJECTIVES:
        torch.manual_seed(0)
        model = fully_connected_ebflow(dim)
        # Off −I, so that no objective meets a special case (e.g. an exactly orthogonal W).
        with torch.no_grad():
            for layer in (model.layers[0], model.layers[2]):
                layer.weight.add_(torch.randn(dim, dim) / math.sqrt(dim) * 0.1)
        trainers[objective] = EBFlowTrainer(model.to(device), objective, lr=1e-4)
    return trainers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_steps(trainer: EBFlowTrainer, batch: torch.Tensor, steps: int) -> float:
    _sync(batch.device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.step(batch)
    _sync(batch.device)
    return (time.perf_counter() - start) / steps


def bench_dim(dim: int, batch_size: int, rounds: int, steps: int,
              device: torch.device | str = "cpu") -> dict:
    device = torch.device(device)
    trainers = _trainers(dim, device)
    batch = torch.randn(batch_size, dim, generator=torch.Generator().manual_seed(1)).to(device)
    for trainer in trainers.values():  # warm-up: allocator, kernels
        _time_steps(trainer, batch, 2)
    times: dict[str, list[float]] = {objective: [] for objective in OBJECTIVES}
    for r in range(rounds):
        order = OBJECTIVES[r % len(OBJECTIVES):] + OBJECTIVES[: r % len(OBJECTIVES)]
        for objective in order:
            times[objective].append(_time_steps(trainers[objective], batch, steps))
    median = {objective: statistics.median(values) for objective, values in times.items()}
    return {
        "dim": dim,
        "seconds_per_step": median,
        "steps_per_second": {objective: 1 / value for objective, value in median.items()},
        "speedup_over_ml": {objective: median["ml"] / median[objective]
                            for objective in OBJECTIVES if objective != "ml"},
        "all_round_times": times,
    }


def growth_exponents(results: list[dict]) -> dict[str, float]:
    """Least-squares slope of log(time) on log(D) over the two largest D (where the leading
    term dominates)."""
    last = results[-2:]
    exponents = {}
    for objective in OBJECTIVES:
        (d0, t0), (d1, t1) = [(r["dim"], r["seconds_per_step"][objective]) for r in last]
        exponents[objective] = math.log(t1 / t0) / math.log(d1 / d0)
    return exponents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 256, 784, 1024])
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="steps per timing")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu",
                        help="where the models and batches live, e.g. cuda (the paper's figures "
                             "are from a GPU)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = []
    for dim in sorted(args.dims):
        result = bench_dim(dim, args.batch_size, args.rounds, args.steps, device)
        results.append(result)
        speedups = ", ".join(f"{k} {v:.2f}x" for k, v in result["speedup_over_ml"].items())
        step_ms = ", ".join(f"{k} {1e3 * v:.2f}" for k, v in result["seconds_per_step"].items())
        print(f"D={dim:5d}  ms/step: {step_ms}  |  speed-up over ML: {speedups}", flush=True)

    report = {
        "benchmark": "ebflow_step",
        "model": "fully connected EBFlow: dense DxD -> smooth leaky ReLU (alpha 0.3) -> dense DxD",
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "steps_per_timing": args.steps,
        "threads": args.threads,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "machine": platform.platform(),
        "processor": platform.processor(),
        "results": results,
        "growth_exponent_largest_two_dims": growth_exponents(results) if len(results) > 1 else None,
        "paper_speedup_at_784": PAPER_RATIO_784,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "ebflow_step.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"growth exponents (time ~ D^k): {report['growth_exponent_largest_two_dims']}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

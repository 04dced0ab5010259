"""Training cost: seconds per iteration of flowMC-EBM against ULA-PCD (and MALA-PCD, NT-EBM) at an
equal number of energy-gradient evaluations, as the dimension and the number of chains grow.

Per chain and iteration, flowMC-EBM (default schedule, ``mcmc_steps = 10``) runs 2 cycles of
4 MALA steps and 1 i-SIR move: 8 energy gradients plus ``2 × n_particles`` forward-only energy
evaluations of flow proposals. The baselines get the same 8 gradient steps (``mcmc_steps = 8``),
so the ratio prices exactly what flowMC adds: the i-SIR candidates, the flow's density and its
training step. Everything else is equal: the network, the tilt, the pool, the batch and the
number of negatives.

Every method runs in this process, one after the other inside each repeat, and the median over
repeats of the per-repeat ratios to ULA-PCD is reported, so machine load affects all alike.
Writes ``training_cost.json`` into ``--out``.

Usage:
    python bench/training_cost.py --threads 1                       # d = 2, 16, 64; 256 and 1024 chains
    python bench/training_cost.py --dims 2 --negatives 256 --repeats 3   # a quick look
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from flowmc_ebm.config import TrainerConfig
from flowmc_ebm.targets import HighDimMixture
from flowmc_ebm.trainer import JointTrainer

#: mcmc_steps per method: flowMC's 10 moves hold 8 MALA steps; the others take 8 gradient steps.
STEPS = {"flowmc": 10, "ula": 8, "mala": 8, "nt": 8}


def evaluations(method: str, config: TrainerConfig) -> dict[str, int]:
    """Energy evaluations per chain and iteration: with a gradient, and forward-only."""
    if method == "flowmc":
        cycles = config.flowmc_cycles()
        return {"gradient": cycles * config.n_local,
                "forward_only": cycles * config.n_global * config.n_particles}
    return {"gradient": config.mcmc_steps, "forward_only": 0}


def make_trainer(method: str, dim: int, negatives: int, batch: int, device: str) -> JointTrainer:
    config = TrainerConfig(pool_size=max(1024, negatives), n_negatives=negatives, batch_size=batch,
                           mcmc_steps=STEPS[method], log_every=10**6, eval_every=0, seed=0)
    return JointTrainer.from_config(dim, method, trainer=config, device=device)


def seconds_per_iteration(trainer: JointTrainer, data: torch.Tensor, iterations: int) -> float:
    start = time.perf_counter()
    trainer.fit(data, n_iterations=iterations, progress=False)
    if data.device.type == "cuda":
        torch.cuda.synchronize(data.device)
    return (time.perf_counter() - start) / iterations


def measure(dim: int, negatives: int, methods: list[str], iterations: int, repeats: int,
            batch: int, device: str) -> dict:
    data = HighDimMixture(dim).sample(max(8 * batch, 4096), generator=torch.Generator().manual_seed(0))
    data = data.to(device=device, dtype=torch.float32)
    trainers = {m: make_trainer(m, dim, negatives, batch, device) for m in methods}
    for trainer in trainers.values():
        seconds_per_iteration(trainer, data, 3)  # warm caches, allocator, the pool
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(repeats):
        for m, trainer in trainers.items():
            times[m].append(seconds_per_iteration(trainer, data, iterations))
    row = {"dim": dim, "negatives": negatives, "batch": batch, "iterations": iterations,
           "repeats": repeats, "methods": {}}
    for m in methods:
        ratios = [t / u for t, u in zip(times[m], times["ula"], strict=True)]
        row["methods"][m] = {
            "ms_per_iteration": 1e3 * statistics.median(times[m]),
            "ratio_to_ula": statistics.median(ratios),
            "evaluations_per_chain": evaluations(m, trainers[m].config),
        }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 16, 64])
    parser.add_argument("--negatives", type=int, nargs="+", default=[256, 1024],
                        help="chains advanced (and used as negatives) per iteration")
    parser.add_argument("--methods", nargs="+", default=["flowmc", "ula", "mala", "nt"],
                        choices=sorted(STEPS))
    parser.add_argument("--batch", type=int, default=256, help="data points per iteration")
    parser.add_argument("--iterations", type=int, default=5, help="iterations per timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = list(dict.fromkeys(["ula", *args.methods]))  # ULA-PCD is the baseline of every ratio
    rows = []
    for dim in args.dims:
        for negatives in args.negatives:
            row = measure(dim, negatives, methods, args.iterations, args.repeats, args.batch,
                          args.device)
            rows.append(row)
            print(f"d={dim:>3} chains={negatives:>5}  " + "  ".join(
                f"{m} {r['ms_per_iteration']:.1f} ms ({r['ratio_to_ula']:.2f}x)"
                for m, r in row["methods"].items()), flush=True)
    result = {"benchmark": "training_cost", "baseline": "ula", "device": args.device,
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "machine": platform.machine(), "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "training_cost.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""``flowmc-ebm demo``: why flow-assisted MCMC matters, in about three minutes on two CPU cores.

1. Sampling a fixed density: a 2-D mixture with weights 2/3 and 1/3, modes 8 sd apart, 256 chains
   mostly started in the lighter mode. MALA alone keeps the starting split; FlowMC (MALA + i-SIR
   moves from a flow it trains during warm-up) finds the weights (≤ 20 s).
2. Training an EBM on `TwoModes` (2/3 of the data in the top-right mode) with flowMC-EBM and with
   ULA-PCD, side by side at equal settings: the EBM's top-right weight over the last quarter of
   training, its error, the chains' acceptance and R̂, and figures in ``--out`` (default
   ``out/demo``): ``landscapes.png``, ``weights.png``, ``summary.json``.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
import zuko

import samplers
from flowmc_ebm.commands import make_output_directory
from flowmc_ebm.commands.train import make_data, train_run, write_json
from flowmc_ebm.config import RunConfig, TrainerConfig
from flowmc_ebm.evaluation import landscape_figure, weight_figure
from flowmc_ebm.trainer import JointTrainer

HELP = "MALA vs FlowMC on a two-mode mixture, then flowMC-EBM vs ULA-PCD on TwoModes"

LABELS = {"flowmc": "flowMC-EBM", "ula": "ULA-PCD"}
# The sampler-table setup of tests/test_samplers_mixing.py: unit-variance modes 8 sd apart.
MEANS = torch.tensor([[4.0, 0.0], [-4.0, 0.0]])
WEIGHTS = torch.tensor([2 / 3, 1 / 3])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="figures and JSON")
    parser.add_argument("--quick", action="store_true", help="a tiny version (a smoke test)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="EBM training iterations per method (default 2000; --quick: 60)")
    parser.add_argument("--jobs", type=int, default=2, choices=(1, 2),
                        help="train the two EBMs in parallel processes (2) or one after the other")
    parser.add_argument("--no-progress", dest="progress", action="store_false")


def mixture_log_prob(x: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(-0.5 * (x.unsqueeze(1) - MEANS).pow(2).sum(-1) + WEIGHTS.log(), 1)


def sampler_table(quick: bool) -> list[dict[str, Any]]:
    """MALA alone and FlowMC on the mixture: heavy-mode weight found, acceptance, time."""
    steps = {"mala": (100, 200) if quick else (300, 1000),
             "flowmc": (60, 60) if quick else (250, 300)}
    rows = []
    for name in ("mala", "flowmc"):
        generator = torch.Generator().manual_seed(0)
        # As a user who does not know the modes: most chains in the lighter mode, a quarter broad.
        x0 = torch.cat([MEANS[1] + torch.randn(192, 2, generator=generator),
                        5.0 * torch.randn(64, 2, generator=generator)])
        if name == "mala":
            kernel = samplers.MALA(mixture_log_prob, 0.5)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                flow = zuko.flows.RealNVP(2, transforms=4)
            kernel = samplers.FlowMC(mixture_log_prob, flow, n_local=2, flow_lr=1e-2,
                                     batch_size=1024)
        warmup, n_steps = steps[name]
        start = time.perf_counter()
        trace = samplers.sample(kernel, x0, n_steps, warmup=warmup, progress=False,
                                generator=generator)
        heavy = float((trace.samples[..., 0] > 0).double().mean())
        stats = trace.stats
        rows.append({
            "sampler": "MALA" if name == "mala" else "FlowMC (MALA + i-SIR)",
            "weights": [heavy, 1 - heavy],
            "local_accept": float(stats.get("local_accept_prob", stats["accept_prob"]).mean()),
            "global_accept": (float(stats["global_accept_prob"].mean())
                              if "global_accept_prob" in stats else math.nan),
            "seconds": time.perf_counter() - start,
        })
    return rows


def print_sampler_table(rows: list[dict[str, Any]]) -> None:
    print("1) Sampling a fixed mixture: weights 2/3 and 1/3, modes 8 sd apart, 256 chains,\n"
          "   192 started in the light mode.")
    print(f"   {'sampler':<22} {'heavy mode':>10} {'light mode':>10} {'local acc':>9} "
          f"{'global acc':>10} {'time':>6}")
    print(f"   {'truth':<22} {2 / 3:>10.3f} {1 / 3:>10.3f}")
    for r in rows:
        g = "–" if math.isnan(r["global_accept"]) else f"{r['global_accept']:.2f}"
        print(f"   {r['sampler']:<22} {r['weights'][0]:>10.3f} {r['weights'][1]:>10.3f} "
              f"{r['local_accept']:>9.2f} {g:>10} {r['seconds']:>5.1f}s")


def demo_config(sampler: str, iterations: int, quick: bool) -> RunConfig:
    """The comparison settings of examples/configs/two_modes.toml, shortened."""
    if quick:
        trainer = TrainerConfig(pool_size=256, batch_size=64, n_negatives=64, eval_every=10,
                                log_every=10)
    else:
        trainer = TrainerConfig(batch_size=256, n_negatives=256, eval_every=25, log_every=25)
    return RunConfig(target="two_modes", sampler=sampler, iterations=iterations,
                     trainer=trainer)


def train_method(job: tuple[str, int, bool, str]) -> dict[str, Any]:
    """Train one method (in a worker process when run in parallel) and save its trainer."""
    sampler, iterations, quick, checkpoint = job
    torch.set_num_threads(1)
    trainer, summary = train_run(demo_config(sampler, iterations, quick), None, progress=False,
                                 snapshot_chains=64 if quick else 128)
    trainer.save(checkpoint)
    return {"summary": summary, "history": trainer.history_}


def run(args: argparse.Namespace) -> int:
    total = time.perf_counter()
    iterations = args.iterations if args.iterations is not None else (60 if args.quick else 2000)
    if iterations < 1:
        raise ValueError(f"--iterations must be >= 1; received {iterations}")
    make_output_directory(args.out)
    # Batches of a few hundred 2-D points gain nothing from intra-op threads, and on a busy
    # machine spinning threads cost several times the work itself.
    torch.set_num_threads(1)

    rows = sampler_table(args.quick)
    print_sampler_table(rows)

    methods = ("flowmc", "ula")
    print(f"\n2) Training an EBM on TwoModes (top-right weight 2/3): flowMC-EBM and ULA-PCD, "
          f"{iterations} iterations each, equal settings...", flush=True)
    jobs = [(m, iterations, args.quick, str(args.out / f"{m}.pt")) for m in methods]
    if args.jobs == 2:
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = dict(zip(methods, pool.map(train_method, jobs), strict=True))
    else:
        results = {m: train_method(job) for m, job in zip(methods, jobs, strict=True)}

    print(f"   {'method':<11} {'top-right weight (last 25%)':>28} {'error':>7} {'chains':>7} "
          f"{'global acc':>10} {'R-hat':>6} {'time':>6}")
    for m in methods:
        s = results[m]["summary"]
        g = "–" if math.isnan(s["global_accept"]) else f"{s['global_accept']:.2f}"
        rhat = "–" if math.isnan(s["rhat"]) else f"{s['rhat']:.3f}"
        print(f"   {LABELS[m]:<11} {s['weight_mean']:>20.3f} ± {s['weight_sd']:<5.3f} "
              f"{s['weight_error']:>+7.3f} {s['neg_weight_mean']:>7.3f} {g:>10} {rhat:>6} "
              f"{s['wall_time']:>5.0f}s")
    print("   (weight: quadrature of the EBM's normalized density; chains: share of the "
          "persistent chains in the top-right mode;\n    R-hat: rank-normalized split R-hat of "
          "128 chains over the last quarter; truth 0.667)")

    config = demo_config("flowmc", iterations, args.quick)
    target, data = make_data(config)
    trainers = {m: JointTrainer.load(args.out / f"{m}.pt") for m in methods}
    landscape_figure([("TwoModes (truth)", target.log_prob)]
                     + [(f"{LABELS[m]}: w={results[m]['summary']['weight_mean']:.3f}",
                         trainers[m].log_prob) for m in methods],
                     args.out / "landscapes.png", data=data,
                     points=[None] + [trainers[m].pool_ for m in methods])
    weight_figure([(LABELS[m], results[m]["history"]["eval_iteration"],
                    [w[target.top_right] for w in results[m]["history"]["ebm_mode_weights"]])
                   for m in methods], 2 / 3, args.out / "weights.png")
    write_json(args.out / "summary.json", {"sampler_table": rows,
                                           "ebm": {m: results[m]["summary"] for m in methods}})
    print(f"\nFigures and summary in {args.out}/ (landscapes.png, weights.png, summary.json); "
          f"total {time.perf_counter() - total:.0f} s")
    return 0

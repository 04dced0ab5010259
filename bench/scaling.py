"""Throughput with 1 and N processes (torchrun, gloo on CPU; one thread per process), as ratios
to one process in the same run:

- samplers: chain-steps per second of `samplers.distributed.sample`: MALA on an MLP energy
  (d = 16, hidden 128) and FlowMC (same energy, RealNVP flow trained in warm-up, so the gradient
  all-reduce is exercised), ``--chains`` chains in total, sharded;
- trainer: iterations per second and chain-steps (MCMC moves of all negatives) per second of
  data-parallel `JointTrainer.fit` (flowMC-EBM, ``from_config`` networks, ``--trainer-*`` sizes
  global, split over the ranks), after ``--trainer-warmup`` untimed iterations.

    .venv/bin/python bench/scaling.py --procs 1 2 --out bench/results

Each process count is one `torchrun --standalone` launch (one process too: the same code path,
a group of one); the time is rank 0's wall time of the sampling or `fit` call itself (from a
barrier to a barrier), not process start-up. Writes ``scaling.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    import zuko
    from torch import nn

    import samplers
    from samplers.distributed import sample

    dist.init_process_group("gloo")
    torch.manual_seed(0)
    energy = nn.Sequential(nn.Linear(args.dim, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(),
                           nn.Linear(128, 1))
    for p in energy.parameters():
        dist.broadcast(p.data, src=0)
        p.requires_grad_(False)

    def log_prob(x):
        return -energy(x).squeeze(-1) - 0.5 * x.pow(2).sum(-1)

    kernels = {
        "mala": lambda: samplers.MALA(log_prob, 0.1),
        "flowmc": lambda: samplers.FlowMC(log_prob, zuko.flows.RealNVP(args.dim, transforms=4,
                                                                       hidden_features=(64, 64)),
                                          n_local=2),
    }
    result = {}
    for name, make in kernels.items():
        kernel = make()
        x0 = torch.randn(args.chains, args.dim, generator=torch.Generator().manual_seed(1))
        dist.barrier()
        start = time.perf_counter()
        sample(kernel, x0, args.steps, warmup=args.warmup, generator=torch.Generator().manual_seed(2))
        dist.barrier()
        seconds = time.perf_counter() - start
        result[name] = {"seconds": seconds,
                        "chain_steps_per_s": args.chains * (args.steps + args.warmup) / seconds}
    if args.trainer_iterations > 0:
        result["trainer"] = trainer_throughput(args)
    if dist.get_rank() == 0:
        Path(args.worker_out).write_text(json.dumps(result))
    dist.destroy_process_group()


def trainer_throughput(args: argparse.Namespace) -> dict:
    """Data-parallel `JointTrainer.fit`: iterations and chain-steps per second (rank 0's wall
    time between two barriers around one `fit` of ``--trainer-iterations``)."""
    import torch
    import torch.distributed as dist

    from flowmc_ebm.config import ModelConfig, TrainerConfig
    from flowmc_ebm.trainer import JointTrainer

    g = torch.Generator().manual_seed(3)
    centers = 3.0 * torch.randn(4, args.dim, generator=g)
    data = centers[torch.randint(0, 4, (args.trainer_data,), generator=g)] + torch.randn(
        args.trainer_data, args.dim, generator=g)
    config = TrainerConfig(pool_size=args.trainer_pool, batch_size=args.trainer_batch,
                           n_negatives=args.trainer_negatives, mcmc_steps=10, n_local=4,
                           n_global=1, log_every=10, eval_every=0, seed=0)
    trainer = JointTrainer.from_config(args.dim, "flowmc", ModelConfig(), config)
    trainer.fit(data, n_iterations=args.trainer_warmup, progress=False)
    dist.barrier()
    start = time.perf_counter()
    trainer.fit(data, n_iterations=args.trainer_iterations, progress=False)
    dist.barrier()
    seconds = time.perf_counter() - start
    moves = args.trainer_negatives * config.mcmc_steps * args.trainer_iterations
    return {"seconds": seconds, "iterations_per_s": args.trainer_iterations / seconds,
            "chain_steps_per_s": moves / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--chains", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--trainer-iterations", type=int, default=100,
                        help="timed fit iterations (0: no trainer measurement)")
    parser.add_argument("--trainer-warmup", type=int, default=5)
    parser.add_argument("--trainer-pool", type=int, default=2048)
    parser.add_argument("--trainer-batch", type=int, default=512)
    parser.add_argument("--trainer-negatives", type=int, default=512)
    parser.add_argument("--trainer-data", type=int, default=8192)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_out:
        return worker(args)
    runs = {}
    load_before = os.getloadavg()
    for n in args.procs:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "r.json"
            forwarded = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                         if k not in ("procs", "out", "worker_out")]
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                   str(n), __file__, *forwarded, "--worker-out", str(out)]
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
            subprocess.run(cmd, check=True, env=env, cwd=ROOT)
            runs[n] = json.loads(out.read_text())
        print(n, "processes:", {k: f"{v['chain_steps_per_s']:.0f} chain-steps/s" for k, v in runs[n].items()})
    base = runs[args.procs[0]]
    table = {n: {k: v["chain_steps_per_s"] / base[k]["chain_steps_per_s"] for k, v in r.items()}
             for n, r in runs.items()}
    if args.trainer_iterations > 0:  # iterations/s: the same ratio as chain-steps/s
        for n, r in runs.items():
            table[n]["trainer_iterations"] = (r["trainer"]["iterations_per_s"]
                                              / base["trainer"]["iterations_per_s"])
    for n, ratios in table.items():
        print(f"{n} processes / {args.procs[0]}:", {k: round(v, 2) for k, v in ratios.items()})
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "scaling.json").write_text(json.dumps({
        "settings": vars(args) | {"worker_out": None}, "runs": runs, "speedup": table,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "command": " ".join(["bench/scaling.py", *sys.argv[1:]]),
    }, indent=2))


if __name__ == "__main__":
    main()

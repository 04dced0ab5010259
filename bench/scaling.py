"""Chain-steps per second of `samplers.distributed.sample` with 1 and N processes (torchrun, gloo
on CPU; one thread per process), as ratios to one process in the same run.

MALA on an MLP energy (d = 16, hidden 128) and FlowMC (same energy, RealNVP flow trained in
warm-up, so the gradient all-reduce is exercised), `--chains` chains in total, sharded.

    .venv/bin/python bench/scaling.py --procs 1 2 --out bench/results

Each process count is one `torchrun --standalone` launch; the time is rank 0's wall time of the
sampling call itself (from a barrier to the gathered trace), not process start-up.
Writes ``scaling.json`` into ``--out``.
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
    if dist.get_rank() == 0:
        Path(args.worker_out).write_text(json.dumps(result))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--chains", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_out:
        return worker(args)
    runs = {}
    for n in args.procs:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "r.json"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                   str(n), __file__, "--chains", str(args.chains), "--dim", str(args.dim), "--steps",
                   str(args.steps), "--warmup", str(args.warmup), "--worker-out", str(out)]
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
            subprocess.run(cmd, check=True, env=env, cwd=ROOT)
            runs[n] = json.loads(out.read_text())
        print(n, "processes:", {k: f"{v['chain_steps_per_s']:.0f} chain-steps/s" for k, v in runs[n].items()})
    base = runs[args.procs[0]]
    table = {n: {k: v["chain_steps_per_s"] / base[k]["chain_steps_per_s"] for k, v in r.items()}
             for n, r in runs.items()}
    for n, ratios in table.items():
        print(f"{n} processes / {args.procs[0]}:", {k: round(v, 2) for k, v in ratios.items()})
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "scaling.json").write_text(json.dumps({
        "settings": vars(args) | {"worker_out": None}, "runs": runs, "speedup": table,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }, indent=2))


if __name__ == "__main__":
    main()

"""Time per kernel step, eager against `torch.compile(kernel.step)`, as the number of chains and the
dimension grow (issue #19's first measurement: does compiling the step pay on this machine?).

For each (kernel, chains, dim): the compile time of the first compiled call, then eager and
compiled steps timed alternately in rounds (the median per round), so machine load affects both
alike. The target is a quartic log-density (cheap: the step's own overhead dominates, which is
where compilation could win). MALA and FlowMC (2 MALA steps + one i-SIR move with a RealNVP flow,
not trained). Writes ``sampler_step.json`` into ``--out``.

    .venv/bin/python bench/sampler_step.py --quick --out bench/results
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import zuko

import samplers


def log_prob(x):
    return -0.5 * x.pow(2).sum(-1) - 0.1 * x.pow(4).sum(-1)


def kernel(name: str, dim: int) -> samplers.Kernel:
    if name == "mala":
        return samplers.MALA(log_prob, 0.3)
    torch.manual_seed(0)
    flow = zuko.flows.RealNVP(dim, transforms=4, hidden_features=(64, 64))
    return samplers.FlowMC(log_prob, flow, n_local=2, train=False)


def per_step(step, state, gen, n: int) -> tuple[float, object]:
    start = time.perf_counter()
    for _ in range(n):
        state, _ = step(state, gen)
    return (time.perf_counter() - start) / n, state


def case(name: str, chains: int, dim: int, steps: int, rounds: int) -> dict:
    k = kernel(name, dim)
    gen = torch.Generator().manual_seed(0)
    state = k.init(torch.randn(chains, dim, generator=gen))
    compiled = torch.compile(k.step)
    start = time.perf_counter()
    try:
        c_state, _ = compiled(state, gen)
        compile_s = time.perf_counter() - start
        error = None
    except Exception as err:  # the compiler may not handle a kernel: say so, keep the eager time
        compile_s, error, c_state = None, f"{type(err).__name__}: {str(err).splitlines()[0][:200]}", None
    eager, comp = [], []
    e_state = state
    for _ in range(rounds):
        t, e_state = per_step(k.step, e_state, gen, steps)
        eager.append(t)
        if c_state is not None:
            t, c_state = per_step(compiled, c_state, gen, steps)
            comp.append(t)
    out = {"kernel": name, "chains": chains, "dim": dim, "eager_ms": 1e3 * statistics.median(eager),
           "compile_s": compile_s, "error": error}
    if comp:
        out["compiled_ms"] = 1e3 * statistics.median(comp)
        out["compiled_over_eager"] = out["compiled_ms"] / out["eager_ms"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="64 and 4096 chains, d = 2 and 64, MALA and FlowMC")
    parser.add_argument("--chains", type=int, nargs="+", default=[64, 1024, 4096, 16384, 65536])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 16, 64])
    parser.add_argument("--kernels", nargs="+", default=["mala", "flowmc"])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    if args.quick:
        args.chains, args.dims, args.steps, args.rounds = [64, 4096], [2, 64], 20, 3
    torch.set_num_threads(args.threads)
    results = []
    for name in args.kernels:
        for dim in args.dims:
            for chains in args.chains:
                r = case(name, chains, dim, args.steps, args.rounds)
                results.append(r)
                print(json.dumps(r))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "sampler_step.json").write_text(json.dumps({
        "settings": vars(args), "results": results,
        "machine": {"torch": torch.__version__, "threads": args.threads, "platform": platform.platform()},
    }, indent=2))


if __name__ == "__main__":
    main()

"""Time per kernel step, eager against the compiled path (`samplers.sample(compile=True)`), as the
number of chains and the dimension grow (issue #19).

For each (kernel, chains, dim): the compile time of the first compiled call, then eager and
compiled steps timed alternately in rounds (the median per round), so machine load affects both
alike. The target is a quartic log-density (cheap: the step's own overhead dominates, which is
where compilation could win). MALA and FlowMC (2 MALA steps + one i-SIR move with a RealNVP flow,
not trained; compiled = its MALA steps compiled, the flow move eager). For MALA also
``samplers.sample`` (driver included, eager) against a bare torch loop doing the same arithmetic,
timed in alternate rounds: ``sample_over_bare`` (eager) and ``sample_compiled_over_bare``
(``compile=True``) are medians of the per-round ratios (goal <= 1.05). With ``--peer FILE``
(the JSON lines of ``bench/peers/flowmc_step.py``, run in the bench venv), each FlowMC row gets
flowMC (JAX)'s production cycle time (2 MALA + 1 flow step) at the same shape and the
ratios. Writes ``sampler_step.json`` into ``--out``.

    .venv/bin/python bench/sampler_step.py --quick --out bench/results --peer peer.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import zuko

import samplers
from samplers import _compile


def log_prob(x):
    return -0.5 * x.pow(2).sum(-1) - 0.1 * x.pow(4).sum(-1)


def kernel(name: str, dim: int) -> samplers.Kernel:
    if name == "mala":
        return samplers.MALA(log_prob, 0.3)
    torch.manual_seed(0)
    flow = zuko.flows.RealNVP(dim, transforms=4, hidden_features=(64, 64))
    return samplers.FlowMC(log_prob, flow, n_local=2, train=False)


def per_step(k: samplers.Kernel, state, gen, n: int, compiled: bool) -> tuple[float, object]:
    with _compile.compiling(k, compiled):
        start = time.perf_counter()
        for _ in range(n):
            state, _ = k.step(state, gen)
        return (time.perf_counter() - start) / n, state


def bare_mala(x: torch.Tensor, n: int, h: float = 0.1) -> torch.Tensor:
    """MALA written out by hand (no validation, no stats but the draws): the floor."""

    def lp_and_grad(z):
        z = z.detach().requires_grad_(True)
        lp = log_prob(z)
        (g,) = torch.autograd.grad(lp.sum(), z)
        return lp.detach(), g

    lp, g = lp_and_grad(x)
    out = x.new_empty((n, *x.shape))
    for i in range(n):
        y = x + h * g + math.sqrt(2 * h) * torch.randn_like(x)
        lpy, gy = lp_and_grad(y)
        log_ratio = (lpy - lp - (x - y - h * gy).square().sum(1) / (4 * h)
                     + (y - x - h * g).square().sum(1) / (4 * h))
        acc = torch.rand_like(lp).log() < log_ratio
        a = acc.unsqueeze(1)
        x, lp, g = torch.where(a, y, x), torch.where(acc, lpy, lp), torch.where(a, gy, g)
        out[i] = x
    return out


def driver_over_bare(chains: int, dim: int, steps: int, rounds: int) -> dict:
    """``samplers.sample(MALA)`` per step against `bare_mala`, in alternate rounds."""
    x = torch.randn(chains, dim, generator=torch.Generator().manual_seed(1))
    k = samplers.MALA(log_prob, 0.1)
    n = max(steps, 100)
    bare_mala(x, 10)
    samplers.sample(k, x, 10, progress=False)
    samplers.sample(k, x, 10, progress=False, compile=True)
    bare, ours, comp = [], [], []
    for _ in range(rounds):
        start = time.perf_counter()
        bare_mala(x, n)
        bare.append((time.perf_counter() - start) / n)
        start = time.perf_counter()
        samplers.sample(k, x, n, progress=False)
        ours.append((time.perf_counter() - start) / n)
        start = time.perf_counter()
        samplers.sample(k, x, n, progress=False, compile=True)
        comp.append((time.perf_counter() - start) / n)
    return {"bare_ms": 1e3 * statistics.median(bare), "sample_ms": 1e3 * statistics.median(ours),
            "sample_compiled_ms": 1e3 * statistics.median(comp),
            "sample_over_bare": statistics.median(o / b for o, b in zip(ours, bare, strict=True)),
            "sample_compiled_over_bare": statistics.median(
                c / b for c, b in zip(comp, bare, strict=True))}


def case(name: str, chains: int, dim: int, steps: int, rounds: int) -> dict:
    k = kernel(name, dim)
    gen = torch.Generator().manual_seed(0)
    state = k.init(torch.randn(chains, dim, generator=gen))
    parts = _compile.compiled_kernels(k)

    start = time.perf_counter()
    _, c_state = per_step(k, state, gen, 1, True)
    compile_s = time.perf_counter() - start
    failed = [p._compiled_cores["advance"].failed for p in parts
              if p._compiled_cores["advance"].failed]
    eager, comp = [], []
    e_state = state
    for _ in range(rounds):
        t, e_state = per_step(k, e_state, gen, steps, False)
        eager.append(t)
        t, c_state = per_step(k, c_state, gen, steps, True)
        comp.append(t)
    out = {"kernel": name, "chains": chains, "dim": dim, "eager_ms": 1e3 * statistics.median(eager),
           "compile_s": compile_s, "fallback": failed[0] if failed else None,
           "compiled_ms": 1e3 * statistics.median(comp)}
    out["compiled_over_eager"] = statistics.median(c / e for c, e in zip(comp, eager, strict=True))
    if name == "mala":
        out.update(driver_over_bare(chains, dim, steps, rounds))
    return out


def add_peer(results: list[dict], path: str) -> None:
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    peer = {(r["chains"], r["dim"]): r for r in map(json.loads, lines)}
    for r in results:
        p = peer.get((r["chains"], r["dim"]))
        if r["kernel"] == "flowmc" and p is not None:
            r["flowmc_jax_cycle_ms"] = p["cycle_ms"]
            r["eager_over_flowmc_jax"] = r["eager_ms"] / p["cycle_ms"]
            r["compiled_over_flowmc_jax"] = r["compiled_ms"] / p["cycle_ms"]


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
    parser.add_argument("--peer", default=None,
                        help="JSON lines from bench/peers/flowmc_step.py (run in .venv-bench)")
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
    if args.peer:
        add_peer(results, args.peer)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "sampler_step.json").write_text(json.dumps({
        "settings": vars(args), "results": results,
        "machine": {"torch": torch.__version__, "threads": args.threads, "platform": platform.platform(),
                    "load_average_end": os.getloadavg()},
    }, indent=2))


if __name__ == "__main__":
    main()

"""Cost of a flow's calls: RealNVP, zuko's NSF and our spline coupling flow, side by side.

For each dimension ``d`` and number of points ``n``, times four calls of each flow (4 transforms,
hidden 64x64, float32): ``sample`` (no grad), ``log_prob`` (no grad), ``sample + log_prob`` in one
``rsample_and_log_prob`` call (no grad; what a FlowMC global move needs) and one training step
(Adam on the mean negative log-likelihood of ``n`` points). The flows:

- ``realnvp``: ``make_flow(d, "realnvp")`` (zuko's affine coupling);
- ``zuko_nsf``: ``zuko.flows.NSF(d, passes=2)``, what ``make_flow(d, "nsf")`` was before;
- ``spline``: ``make_flow(d, "nsf")``, :class:`flowmc_ebm.spline.SplineCouplingFlow`;
- ``spline_compiled``: the same with ``compiled=True`` (its splines through ``torch.compile``;
  the compilation is in ``first_call_seconds``, not in the timings).

The flows' parameters are perturbed off the identity (the cost of a spline does not depend on
its parameters, but an identity flow could hide a branch). Timings are interleaved: every round
times every flow and call once (the flow order rotates), and the median over rounds is
reported, so that load from other processes affects the flows alike; ratios to RealNVP are
taken from the medians of the same run. Writes ``flow_cost.json`` (or ``--name``) into ``--out``.

Example:
    .venv/bin/python bench/flow_cost.py --dims 32 --points 1024 --rounds 7
    PYTHONPATH=. .venv/bin/python bench/flow_cost.py --flowmc --warmup 300 --cycles 600
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import zuko

from flowmc_ebm.flows import make_flow

FLOWS = ("realnvp", "zuko_nsf", "spline", "spline_compiled")
CALLS = ("sample", "log_prob", "sample_and_log_prob", "train_step")


def build_flow(name: str, dim: int, transforms: int = 4, hidden: tuple[int, ...] = (64, 64),
               seed: int = 0) -> zuko.flows.Flow:
    """One of :data:`FLOWS` in ``dim`` dimensions, its parameters perturbed off the identity."""
    torch.manual_seed(seed)
    if name == "realnvp":
        flow = make_flow(dim, "realnvp", transforms=transforms, hidden=hidden)
    elif name == "spline":
        flow = make_flow(dim, "nsf", transforms=transforms, hidden=hidden)
    elif name == "spline_compiled":
        flow = make_flow(dim, "nsf", transforms=transforms, hidden=hidden, compiled=True)
    elif name == "zuko_nsf":
        flow = zuko.flows.NSF(dim, transforms=transforms, passes=2, hidden_features=hidden)
    else:
        raise ValueError(f"unknown flow {name!r}; known: {', '.join(FLOWS)}")
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return flow


def _calls(flow: zuko.flows.Flow, data: torch.Tensor) -> dict[str, Callable[[], object]]:
    n = data.shape[0]
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-4)

    def sample():
        with torch.no_grad():
            return flow().sample((n,))

    def log_prob():
        with torch.no_grad():
            return flow().log_prob(data)

    def sample_and_log_prob():
        with torch.no_grad():
            return flow().rsample_and_log_prob((n,))

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        loss = -flow().log_prob(data).mean()
        loss.backward()
        optimizer.step()
        return loss

    return {"sample": sample, "log_prob": log_prob, "sample_and_log_prob": sample_and_log_prob,
            "train_step": train_step}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(call: Callable[[], object], repeats: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def bench_case(dim: int, n: int, rounds: int, flows: tuple[str, ...] = FLOWS,
               device: torch.device | str = "cpu", budget_s: float = 60.0) -> dict:
    """Median seconds per call for every flow and call at one ``(dim, n)``, and ratios to
    RealNVP. Rounds stop early (at least 3) once ``budget_s`` seconds are spent."""
    device = torch.device(device)
    load_before = _loadavg()
    data = torch.randn(n, dim, generator=torch.Generator().manual_seed(2)).to(device)
    calls = {name: _calls(build_flow(name, dim).to(device), data) for name in flows}
    # Warm-up (allocator, first-call overheads, compilation of spline_compiled; timed), then
    # one more call of each sets how many calls make one timing.
    compile_s = {name: {c: _time(f, 1, device) for c, f in fs.items()} for name, fs in calls.items()}
    first = {name: {c: _time(f, 1, device) for c, f in fs.items()} for name, fs in calls.items()}
    repeats = {name: {c: max(1, min(20, int(0.05 / max(t, 1e-6)))) for c, t in ts.items()}
               for name, ts in first.items()}
    times = {name: {c: [] for c in CALLS} for name in flows}
    start = time.perf_counter()
    done = 0
    for r in range(rounds):
        order = flows[r % len(flows):] + flows[: r % len(flows)]
        for name in order:
            for c in CALLS:
                times[name][c].append(_time(calls[name][c], repeats[name][c], device))
        done += 1
        if done >= 3 and time.perf_counter() - start > budget_s:
            break
    median = {name: {c: statistics.median(v) for c, v in ts.items()} for name, ts in times.items()}
    ratio = {}
    if "realnvp" in flows:
        ratio = {name: {c: median[name][c] / median["realnvp"][c] for c in CALLS}
                 for name in flows if name != "realnvp"}
    # Ratios per round too (same round, same load), and their median and range.
    per_round = {name: {c: sorted(a / b for a, b in zip(times[name][c], times["realnvp"][c],
                                                         strict=True))
                        for c in CALLS} for name in flows if name != "realnvp"
                 } if "realnvp" in flows else {}
    ratio_rounds = {name: {c: {"median": statistics.median(v), "min": v[0], "max": v[-1]}
                           for c, v in rs.items()} for name, rs in per_round.items()}
    return {"dim": dim, "points": n, "rounds": done, "seconds": median, "ratio_to_realnvp": ratio,
            "first_call_seconds": compile_s,
            "ratio_per_round": ratio_rounds, "loadavg_before": load_before,
            "loadavg_after": _loadavg()}


def _loadavg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (Linux), to read the timings against."""
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def flowmc_comparison(kind: str, dim: int = 32, chains: int = 64, warmup: int = 500,
                      cycles: int = 1000, seed: int = 0) -> dict:
    """FlowMC (2 MALA steps + one i-SIR move with 16 proposals per cycle, the flow trained on
    the chains during ``warmup`` cycles, frozen after) on the 32-D four-mode mixture with a
    ``make_flow(dim, kind)`` flow; scored as ``bench/sampling_peers.py`` scores its runs."""
    import samplers
    from bench.peers.base import Run
    from bench.peers.ours import FlowMCConfig
    from bench.sampling_peers import score
    from flowmc_ebm.targets import HighDimMixture

    config = FlowMCConfig()
    target = HighDimMixture(dim)
    generator = torch.Generator().manual_seed(seed)
    x0 = 2 * torch.randn(chains, dim, generator=generator)
    torch.manual_seed(seed)
    flow = make_flow(dim, kind, transforms=config.transforms, hidden=config.hidden)
    kernel = samplers.FlowMC(target.log_prob, flow, n_local=config.n_local,
                             global_move=config.global_move, n_particles=config.n_particles,
                             flow_lr=config.flow_lr, batch_size=config.batch_size,
                             local_step_size=config.local_step_size)
    start = time.perf_counter()
    trace = samplers.sample(kernel, x0, cycles, warmup=warmup, progress=False,
                            generator=generator)
    wall = time.perf_counter() - start
    stats = {k: float(v.float().nanmean()) for k, v in trace.stats.items()
             if k in ("local_accept_prob", "global_accept_prob", "isir_ess")}
    run = Run(f"FlowMC ({kind})", trace.samples.numpy(), 1 + (warmup + cycles) * 3,
              (warmup + cycles) * config.n_particles, wall, trace.wall_time,
              {"flow": kind, "warmup_cycles": warmup, "cycles": cycles, "chains": chains,
               **stats})
    result = score(run, target)
    result["ess_mode_per_cycle"] = result["ess_mode"] / cycles
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 8, 32, 64, 784])
    parser.add_argument("--points", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--flows", nargs="+", default=list(FLOWS), choices=FLOWS)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--budget", type=float, default=60.0,
                        help="seconds per (dim, points) case after which rounds stop (>= 3 rounds)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--name", default="flow_cost")
    parser.add_argument("--flowmc", action="store_true",
                        help="instead: FlowMC with realnvp and nsf flows on the 32-D mixture")
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--cycles", type=int, default=1000)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.flowmc:
        runs = []
        for kind in ("realnvp", "nsf"):
            runs.append(flowmc_comparison(kind, warmup=args.warmup, cycles=args.cycles))
            r = runs[-1]
            print(f"{kind}: wall {r['wall_s']:.1f}s, max weight error {r['mode_weight_error']:.3f}"
                  f" (se {r['mode_weight_se']:.3f}), mode ESS {r['ess_mode']:.0f} "
                  f"({r['ess_mode_per_s']:.2f}/s), coordinate ESS/s {r['ess_coord_per_s']:.2f}, "
                  f"max R-hat {r['max_rhat']:.3f}", flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        report = {"threads": args.threads, "runs": runs,
                  "wall_ratio_nsf_to_realnvp": runs[1]["wall_s"] / runs[0]["wall_s"]}
        (args.out / f"{args.name}_flowmc.json").write_text(json.dumps(report, indent=2))
        return report
    results = []
    report = {
        "settings": {"transforms": 4, "hidden": [64, 64], "dtype": "float32",
                     "threads": args.threads, "device": args.device, "rounds": args.rounds,
                     "budget_s": args.budget},
        "versions": {"torch": torch.__version__, "zuko": zuko.__version__,
                     "python": platform.python_version(), "machine": platform.machine()},
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for dim in args.dims:
        for n in args.points:
            case = bench_case(dim, n, args.rounds, tuple(args.flows), args.device, args.budget)
            results.append(case)
            line = "  ".join(
                f"{name} {c}={1e3 * case['seconds'][name][c]:.1f}ms"
                for name in args.flows for c in CALLS)
            print(f"d={dim} n={n} rounds={case['rounds']} load {case['loadavg_before']} -> "
                  f"{case['loadavg_after']}: {line}", flush=True)
            for name, ratios in case["ratio_to_realnvp"].items():
                print(f"    {name}/realnvp: " + "  ".join(f"{c} {v:.2f}x" for c, v in ratios.items()),
                      flush=True)
            # Written after every case, so that a run cut short keeps what it measured.
            (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()

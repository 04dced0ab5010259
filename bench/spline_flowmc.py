"""FlowMC on the 32-D four-mode mixture with our spline flow against RealNVP (issue #22).

64 chains from ``N(0, 2^2 I)``; every cycle 2 MALA steps and one i-SIR move with 16 proposals
(``bench/peers/ours.py``'s ``FlowMCConfig``); the flow is trained on the chains during the
warm-up cycles and frozen after; scored as ``bench/sampling_peers.py`` scores its runs (mode
weights and their error, the mode indicators' ESS, coordinate ESS, R-hat). The flows, all with
the same depth and width: ``realnvp``, ``nsf`` (``make_flow(d, "nsf")``, eager) and
``nsf_compiled`` (the same with ``compiled=True``; its compilation is inside the wall time and
reported as ``compile_s`` where measured). The runs go one after another in one process,
each with the same seed; the JSON is rewritten after every run, so a run cut short keeps the
finished ones.

Example:
    PYTHONPATH=. .venv/bin/python bench/spline_flowmc.py --warmup 500 --cycles 5000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

FLOWS = ("realnvp", "nsf", "nsf_compiled")


def run_flowmc(flow_name: str, dim: int = 32, chains: int = 64, warmup: int = 500,
               cycles: int = 5000, seed: int = 0) -> dict:
    """One FlowMC run with flow ``flow_name`` (one of :data:`FLOWS`); the scored result."""
    import samplers
    from bench.peers.base import Run
    from bench.peers.ours import FlowMCConfig
    from bench.sampling_peers import score
    from flowmc_ebm.flows import make_flow
    from flowmc_ebm.targets import HighDimMixture

    config = FlowMCConfig()
    target = HighDimMixture(dim)
    generator = torch.Generator().manual_seed(seed)
    x0 = 2 * torch.randn(chains, dim, generator=generator)
    torch.manual_seed(seed)
    kind, options = ("realnvp", {}) if flow_name == "realnvp" else ("nsf", {})
    if flow_name == "nsf_compiled":
        options = {"compiled": True}
    flow = make_flow(dim, kind, transforms=config.transforms, hidden=config.hidden, **options)
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
    run = Run(f"FlowMC ({flow_name})", trace.samples.numpy(), 1 + (warmup + cycles) * 3,
              (warmup + cycles) * config.n_particles, wall, trace.wall_time,
              {"flow": flow_name, "warmup_cycles": warmup, "cycles": cycles, "chains": chains,
               **stats})
    result = score(run, target)
    result["ess_mode_per_cycle"] = result["ess_mode"] / cycles
    result["loadavg_after"] = _loadavg()
    return result


def _loadavg() -> list[float] | None:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", nargs="+", default=list(FLOWS), choices=FLOWS)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--cycles", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--name", default="spline_flowmc")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"threads": args.threads, "warmup": args.warmup, "cycles": args.cycles,
              "seed": args.seed, "torch": torch.__version__, "loadavg_before": _loadavg(),
              "runs": []}
    for name in args.flows:
        r = run_flowmc(name, warmup=args.warmup, cycles=args.cycles, seed=args.seed)
        report["runs"].append(r)
        walls = {run["method"]: run["wall_s"] for run in report["runs"]}
        base = walls.get("FlowMC (realnvp)")
        report["wall_ratio_to_realnvp"] = {m: w / base for m, w in walls.items()} if base else {}
        print(f"{name}: wall {r['wall_s']:.1f}s, max weight error {r['mode_weight_error']:.3f}"
              f" (se {r['mode_weight_se']:.3f}), mode ESS {r['ess_mode']:.0f} "
              f"({r['ess_mode_per_s']:.2f}/s, {r['ess_mode_per_cycle']:.2f}/cycle), "
              f"coordinate ESS/s {r['ess_coord_per_s']:.2f}, max R-hat {r['max_rhat']:.3f}, "
              f"load {r['loadavg_after']}", flush=True)
        (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()

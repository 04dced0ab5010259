"""Parallel tempering against its peers on the tempering suite's targets, at an equal budget of
target evaluations (issue #12).

Targets: the 7 diagonal Gaussian mixtures of ``examples/tempering_suite.py`` (imported from it, so
both build the very same densities), normalized: log Z = 0, mode weights known.

Methods, one after the other in this process, torch and JAX on one thread each:

- ``PT (ours)``: ``samplers.ParallelTempering(target, N(0, 10² I))`` with its defaults (the mode
  search included), 16 chains, ``--warmup`` + ``--steps`` steps. It runs first: **the target
  evaluations it spent set the budget of every other method on that target and seed.**
- ``adaptive tempered SMC (blackjax)``: `bench.peers.blackjax_smc`, prior = the same reference,
  sized to the budget (a pilot counts the adaptive steps; the pilot is counted).
- ``MALA (ours)``: 256 chains, a quarter of its steps warm-up (step-size tuning).
- ``FlowMC (ours)``: the suite's settings (RealNVP, 4 transforms, ``n_local=2``, ``flow_lr=1e-2``,
  i-SIR with 16 proposals), 128 chains, half of its cycles warm-up (flow training).
- ``flowMC PT bundle (JAX)``: `bench.peers.flowmc_pt`, flowMC 0.6.4's ``RQSpline_MALA_PT_Bundle``
  with its defaults (5 temperatures up to T = 5), 128 chains from the same starts as our FlowMC,
  sized to the budget from evaluation counts derived from its source (checked by a counter).

Counting: every point at which the target is evaluated counts one, with or without gradient (a
gradient comes from the same forward pass). On the torch side a wrapper counts the rows of every
batch passed to the target; on the JAX side ``jax.debug.callback`` does. Reference evaluations are
not counted (the reference is cheap and the same for PT and SMC). Starts: chains from the suite's
``N(0, 2² I)`` (the same generator: MALA's and FlowMC's first 16 starts are PT's); SMC's particles
start from its prior, the reference, as SMC must.

Figures per run: the largest |ŵ − w| over modes (modes assigned by the largest responsibility),
|log Ẑ| (PT: stepping stone with its SE; SMC: the product of its incremental weights, no SE),
wall-clock (everything: mode search, warm-up, flow training, JIT compilation), and the ESS of the
mode indicators per second, two ways. (1) Per run: for the chains, ArviZ's ESS of each mode's
indicator over ``(chains, draws)``, smallest over modes (NaN where a mode is never visited); for
SMC, the Kish ESS ``1 / Σ wᵢ²`` of the final weights, which is not a chain ESS and flatters SMC (it
ignores the correlation resampling leaves between particles). (2) The same estimator for every
method, from the errors against the known weights: ``ESS_err = Σ_m w_m (1 − w_m) / mean over seeds
of Σ_m (ŵ_m − w_m)²`` (the number of independent draws whose mode-weight estimate would have the
observed mean squared error; bias counts, as it does for a user), divided by the mean wall time.
With 3 seeds it is rough (a factor ~2 either way on a 2-mode target), but it cannot favour a
method by how its ESS is modelled.

Run from the repository root::

    nice -n 10 .venv-bench/bin/python -m bench.tempering_peers        # 7 targets x 3 seeds
    .venv-bench/bin/python -m bench.tempering_peers --quick           # a smoke run

Writes ``tempering_peers[_quick].json`` and ``.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time
import traceback
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zuko

import samplers
from bench.peers import blackjax_smc, flowmc_pt
from bench.peers.base import Run, json_safe, versions
from flowmc_ebm.diagnostics import mode_weights

ROOT = Path(__file__).resolve().parents[1]
PT = "PT (ours)"
SMC = "adaptive tempered SMC (blackjax)"
MALA = "MALA (ours)"
FLOWMC = "FlowMC (ours)"
FLOWMC_PT = flowmc_pt.LABEL
PACKAGES = ("torch", "zuko", "numpy", "arviz", "jax", "jaxlib", "blackjax", "flowMC")


def suite_module():
    """examples/tempering_suite.py as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location("tempering_suite",
                                                  ROOT / "examples" / "tempering_suite.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def flowmc_pt_reason() -> str:
    """Whether the installed flowMC has a parallel-tempering bundle or resource."""
    try:
        import flowMC
    except ImportError as error:
        return f"flowMC not importable: {error}"
    root = Path(flowMC.__file__).parent
    hits = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                  if "temper" in p.read_text(errors="ignore").lower())
    version = metadata.version("flowMC")
    if flowmc_pt.unavailable() is None:
        return f"flowMC {version}: RQSpline_MALA_PT_Bundle run (bench.peers.flowmc_pt)"
    if hits:
        return f"flowMC {version} mentions tempering in {hits}: not wired into this benchmark"
    return (f"flowMC {version} has no parallel-tempering bundle or resource (no module mentions "
            "tempering); its PT bundles are in a newer fork only")


class Counted:
    """The target with a count of the points it was evaluated at (with or without gradient)."""

    def __init__(self, target):
        self.target, self.dim, self.n = target, target.dim, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.n += x.numel() // self.dim
        return self.target(x)


def _starts(target, seed: int, chains: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 2.0 * torch.randn(chains, target.dim, generator=g)


def run_pt(target, seed: int, warmup: int, steps: int, reference, chains: int = 16
           ) -> tuple[Run, dict[str, Any]]:
    counted = Counted(target)
    g = torch.Generator().manual_seed(seed)
    x0 = 2.0 * torch.randn(chains, target.dim, generator=g)  # the suite's starts
    kernel = samplers.ParallelTempering(counted, reference(target.dim))
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trace = samplers.sample(kernel, x0, steps, warmup=warmup, progress=False, generator=g)
        log_z, se = kernel.log_normalizer()
    wall = time.perf_counter() - start
    run = Run(PT, trace.samples.numpy(), 0.0, float(counted.n), wall, trace.wall_time,
              {"chains": chains, "warmup": warmup, "steps": steps, "K": kernel.n_replicas,
               "barrier": kernel.barrier, "round_trips_per_1000": kernel.round_trip_rate})
    return run, {"log_z": log_z, "log_z_se": se,
                 "warnings": [str(c.message) for c in caught if "tempering" in str(c.message)]}


def run_mala(target, seed: int, budget: int, chains: int = 256) -> tuple[Run, dict[str, Any]]:
    counted = Counted(target)
    g = torch.Generator().manual_seed(seed)
    x0 = _starts(target, seed, chains)
    total = budget // chains - 1  # one evaluation per chain at init, one per step
    warm = total // 4
    start = time.perf_counter()
    trace = samplers.sample(samplers.MALA(counted, 0.1), x0, total - warm, warmup=warm,
                            progress=False, generator=g)
    wall = time.perf_counter() - start
    return Run(MALA, trace.samples.numpy(), 0.0, float(counted.n), wall, trace.wall_time,
               {"chains": chains, "warmup": warm, "steps": total - warm}), {}


def run_flowmc(target, seed: int, budget: int, chains: int = 128, n_local: int = 2,
               n_particles: int = 16) -> tuple[Run, dict[str, Any]]:
    counted = Counted(target)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x0 = _starts(target, seed, chains)
    kernel = samplers.FlowMC(counted, zuko.flows.RealNVP(target.dim, transforms=4),
                             n_local=n_local, n_particles=n_particles, flow_lr=1e-2)
    # A cycle: n_local MALA steps, i-SIR at n_particles proposals, one gradient at the result.
    cycles = (budget // chains - 1) // (n_local + 1 + n_particles)
    warm = cycles // 2
    start = time.perf_counter()
    trace = samplers.sample(kernel, x0, cycles - warm, warmup=warm, progress=False, generator=g)
    wall = time.perf_counter() - start
    return Run(FLOWMC, trace.samples.numpy(), 0.0, float(counted.n), wall, trace.wall_time,
               {"chains": chains, "warmup_cycles": warm, "cycles": cycles - warm,
                "n_local": n_local, "n_particles": n_particles}), {}


def score(run: Run, extra: dict[str, Any], target) -> dict[str, Any]:
    """The figures of one run (JSON-ready)."""
    truth = target.weights.double().numpy()
    k = len(truth)
    x = torch.from_numpy(np.array(run.samples, dtype=np.float32))
    labels = target.assign(x)  # (chains, draws)
    if "particle_weights" in extra:  # SMC: weighted particles
        w = extra["particle_weights"]
        est = np.bincount(labels.flatten().numpy(), weights=w, minlength=k)
        ess = extra["kish_ess"]
        se = float(np.max(np.sqrt(est * (1 - est) / ess)))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mw = mode_weights(x, labels, n_modes=k, warn=False)
        est = np.asarray(mw.weights, dtype=np.float64)
        ess = float(np.min(mw.ess)) if bool(np.all(est > 0)) else math.nan
        se = float(np.nanmax(mw.se)) if np.any(np.isfinite(mw.se)) else math.nan
    log_z = extra.get("log_z")
    return {"method": run.method, "mode_weight_sq_error": float(np.sum((est - truth) ** 2)),
            "truth_var": float(np.sum(truth * (1 - truth))), "target_evals": run.logprob_evals,
            "wall_s": run.wall_s,
            "sample_s": run.sample_s, "mode_weights": est.tolist(),
            "mode_weight_error": float(np.max(np.abs(est - truth))), "mode_weight_se": se,
            "all_modes_visited": bool(np.all(est > 0)), "ess_mode": ess,
            "ess_mode_per_s": ess / run.wall_s if math.isfinite(ess) else math.nan,
            "log_z": log_z, "log_z_error": None if log_z is None else abs(log_z),
            "log_z_se": extra.get("log_z_se"), "warnings": extra.get("warnings", []),
            "config": run.config, "notes": run.notes,
            **{key: extra[key] for key in ("smc_steps", "pilot_evals", "particles") if key in extra}}


def run_target(target, seed: int, args, reference, log=print) -> dict[str, Any]:
    rows, failed = [], []
    pt_run, pt_extra = run_pt(target, seed, args.warmup, args.steps, reference)
    budget = int(pt_run.logprob_evals)
    rows.append(score(pt_run, pt_extra, target))
    methods = [(SMC, lambda: blackjax_smc.run_smc(target, budget, seed)),
               (MALA, lambda: run_mala(target, seed, budget)),
               (FLOWMC, lambda: run_flowmc(target, seed, budget)),
               (FLOWMC_PT, lambda: flowmc_pt.run_flowmc_pt(
                   target, _starts(target, seed, 128).numpy(), budget, seed))]
    for label, fn in methods:
        why = {SMC: blackjax_smc.unavailable, FLOWMC_PT: flowmc_pt.unavailable}.get(
            label, lambda: None)()
        if why is not None:
            failed.append({"method": label, "error": why})
            continue
        try:
            rows.append(score(*fn(), target))
        except Exception as error:  # a peer's failure is a result to report
            failed.append({"method": label, "error": f"{type(error).__name__}: {error}",
                           "traceback": traceback.format_exc(limit=-3)})
    for r in rows:
        lz = "" if r["log_z"] is None else f", log Z {r['log_z']:+.3f}"
        log(f"  {r['method']}: err {r['mode_weight_error']:.3f}, ESS/s {r['ess_mode_per_s']:.3g}, "
            f"{r['wall_s']:.1f} s, {r['target_evals']:.0f} evals{lz}")
    for f in failed:
        log(f"  {f['method']}: FAILED {f['error']}")
    return {"target": target.name, "dim": target.dim, "modes": len(target.weights),
            "seed": seed, "budget_target_evals": budget, "rows": rows, "failed": failed}


def summary(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per target and method over seeds; ratios of PT to the best peer (smallest worst error,
    largest mean ESS/s, smallest mean |log Ẑ| among the peers that have them)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for res in results:
        for row in res["rows"]:
            groups.setdefault((res["target"], row["method"]), []).append(row)
    out: dict[str, dict[str, Any]] = {}
    for (name, method), rows in groups.items():
        lz = [r["log_z_error"] for r in rows if r["log_z_error"] is not None]
        ses = [r["log_z_se"] for r in rows if r["log_z_se"] is not None]
        ess = [r["ess_mode_per_s"] for r in rows]
        wall = float(np.mean([r["wall_s"] for r in rows]))
        sq = [r.get("mode_weight_sq_error") for r in rows]
        ess_err = (rows[0]["truth_var"] / max(float(np.mean(sq)), 1e-300)
                   if all(v is not None for v in sq) and "truth_var" in rows[0] else math.nan)
        out.setdefault(name, {})[method] = {
            "ess_err": ess_err, "ess_err_per_s": ess_err / wall,
            "seeds": len(rows), "worst_error": max(r["mode_weight_error"] for r in rows),
            "mean_error": float(np.mean([r["mode_weight_error"] for r in rows])),
            "max_log_z_error": max(lz) if lz else None,
            "log_z_sd_over_seeds": float(np.std([r["log_z"] for r in rows], ddof=1))
            if len(lz) > 1 else None,
            "max_log_z_se": max(ses) if ses else None,
            "mean_wall_s": float(np.mean([r["wall_s"] for r in rows])),
            "mean_target_evals": float(np.mean([r["target_evals"] for r in rows])),
            "mean_ess_mode_per_s": float(np.mean(ess)) if all(math.isfinite(e) for e in ess)
            else math.nan}
    table = []
    for name, methods in out.items():
        peers = {m: v for m, v in methods.items() if m != PT}
        pt = methods.get(PT)
        row: dict[str, Any] = {"target": name, "methods": methods}
        if pt and peers:
            best_err = min(peers.items(), key=lambda kv: kv[1]["worst_error"])
            finite = {m: v for m, v in peers.items() if math.isfinite(v["mean_ess_mode_per_s"])}
            best_ess = max(finite.items(), key=lambda kv: kv[1]["mean_ess_mode_per_s"]) \
                if finite else None
            lz_peers = {m: v for m, v in peers.items() if v["max_log_z_error"] is not None}
            row.update({
                "best_error_peer": best_err[0],
                "error_ratio": _divide(pt["worst_error"], best_err[1]["worst_error"]),
                "error_goal_met": pt["worst_error"] <= best_err[1]["worst_error"],
                "best_ess_peer": best_ess[0] if best_ess else None,
                "ess_ratio": _divide(pt["mean_ess_mode_per_s"], best_ess[1]["mean_ess_mode_per_s"])
                if best_ess else math.nan,
                "ess_goal_met": bool(best_ess is None or pt["mean_ess_mode_per_s"]
                                     >= 2 * best_ess[1]["mean_ess_mode_per_s"]),
                **_err_ess_goal(pt, peers),
                "log_z_ratio": _divide(pt["max_log_z_error"],
                                       min(v["max_log_z_error"] for v in lz_peers.values()))
                if lz_peers and pt["max_log_z_error"] is not None else None})
        table.append(row)
    return table


def _err_ess_goal(pt: dict[str, Any], peers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The ESS/s goal on the error-based ESS, the same estimator for every method."""
    finite = {m: v for m, v in peers.items() if math.isfinite(v.get("ess_err_per_s", math.nan))}
    if not finite or not math.isfinite(pt.get("ess_err_per_s", math.nan)):
        return {"best_ess_err_peer": None, "ess_err_ratio": math.nan, "ess_err_goal_met": None}
    best = max(finite.items(), key=lambda kv: kv[1]["ess_err_per_s"])
    return {"best_ess_err_peer": best[0],
            "ess_err_ratio": _divide(pt["ess_err_per_s"], best[1]["ess_err_per_s"]),
            "ess_err_goal_met": bool(pt["ess_err_per_s"] >= 2 * best[1]["ess_err_per_s"])}


def _divide(a: float, b: float) -> float:
    if b == 0:
        return math.inf if a > 0 else math.nan
    return a / b


def _fmt(x: Any, spec: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return format(x, spec)


def markdown(table: list[dict[str, Any]]) -> str:
    lines = ["| target | method | worst err (seeds) | max \\|log Ẑ\\| | max SE | mean wall s | "
             "mean evals | ESS/s mode | ESS_err/s |", "|---" * 9 + "|"]
    for row in table:
        for method, v in row["methods"].items():
            lines.append(f"| {row['target']} | {method} | {v['worst_error']:.3f} ({v['seeds']}) | "
                         f"{_fmt(v['max_log_z_error'], '.3f')} | {_fmt(v['max_log_z_se'], '.3f')} | "
                         f"{v['mean_wall_s']:.1f} | {v['mean_target_evals']:.3g} | "
                         f"{_fmt(v['mean_ess_mode_per_s'])} | "
                         f"{_fmt(v.get('ess_err_per_s', math.nan))} |")
    lines += ["", "| target | best peer (error) | PT err ÷ best | goal err | best peer (ESS/s) | "
              "PT ESS/s ÷ best | goal ≥ 2× | best peer (ESS_err/s) | PT ESS_err/s ÷ best | "
              "goal ≥ 2× (ESS_err) | PT \\|log Ẑ\\| ÷ SMC's |", "|---" * 11 + "|"]
    for row in table:
        if "error_ratio" not in row:
            continue
        lines.append(f"| {row['target']} | {row['best_error_peer']} | {_fmt(row['error_ratio'])} | "
                     f"{'met' if row['error_goal_met'] else 'NOT met'} | "
                     f"{row['best_ess_peer'] or '–'} | {_fmt(row['ess_ratio'])} | "
                     f"{_ess_goal(row)} | {row.get('best_ess_err_peer') or '–'} | "
                     f"{_fmt(row.get('ess_err_ratio', math.nan))} | "
                     f"{_goal_word(row.get('ess_err_goal_met'))} | "
                     f"{_fmt(row['log_z_ratio'])} |")
    return "\n".join(lines) + "\n"


def _goal_word(met: bool | None) -> str:
    return "–" if met is None else ("met" if met else "NOT met")


def _ess_goal(row: dict[str, Any]) -> str:
    if row["best_ess_peer"] is None:
        return "met (no peer visits every mode on every seed)"
    return "met" if row["ess_goal_met"] else "NOT met"


def _truth(name: str) -> list[float]:
    (target,) = [t for t in suite_module().targets() if t.name == name]
    return target.weights.double().tolist()


def merge(paths: list[str], out: Path) -> dict[str, Any]:
    """One report from several: runs concatenated, summary recomputed (NaN came back as null)."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    runs = [r for part in parts for r in part["runs"]]
    for res in runs:
        for row in res["rows"]:
            for key in ("ess_mode", "ess_mode_per_s"):
                row[key] = math.nan if row[key] is None else row[key]
            if row.get("mode_weight_sq_error") is None and "mode_weights" in row:
                # Older files: the squared error from the stored weights and the target's truth.
                truth = np.asarray(_truth(res["target"]))
                est = np.asarray(row["mode_weights"])
                row["mode_weight_sq_error"] = float(np.sum((est - truth) ** 2))
                row["truth_var"] = float(np.sum(truth * (1 - truth)))
    table = summary(runs)
    def flat(key: str) -> list[Any]:  # a part may itself be a merge (its entries are lists)
        return [v for p in parts for v in (p[key] if "merged_from" in p else [p[key]])]

    report = {**parts[0], "command": flat("command"), "load_average": flat("load_average"),
              "total_s": flat("total_s"), "summary": table, "runs": runs,
              "merged_from": [v for p in parts for v in p.get("merged_from", [])] or paths,
              "summary_recomputed_by": " ".join(["python -m bench.tempering_peers --merge", *paths])}
    out.mkdir(parents=True, exist_ok=True)
    (out / "tempering_peers.json").write_text(json.dumps(json_safe(report), indent=1))
    (out / "tempering_peers.md").write_text(markdown(table))
    print(markdown(table))
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench/results")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--warmup", type=int, default=1000, help="PT's warm-up steps")
    p.add_argument("--steps", type=int, default=2000, help="PT's steps after warm-up")
    p.add_argument("--only", nargs="*", help="target names")
    p.add_argument("--quick", action="store_true", help="one seed, two targets, short runs")
    p.add_argument("--merge", nargs="+", help="combine these tempering_peers JSON files (runs split "
                   "over processes) into one table in --out; runs nothing")
    args = p.parse_args(argv)
    if args.merge:
        return merge(args.merge, Path(args.out))
    torch.set_num_threads(1)
    name = "tempering_peers"
    if args.quick:
        args.seeds, args.warmup, args.steps = [0], 200, 200
        args.only = args.only or ["two_2d", "eight_6d"]
        name += "_quick"
    suite = suite_module()
    start, load = time.perf_counter(), os.getloadavg()
    results = []
    for target in suite.targets():
        if args.only and target.name not in args.only:
            continue
        for seed in args.seeds:
            print(f"{target.name} (d = {target.dim}, seed {seed}):", flush=True)
            results.append(run_target(target, seed, args, suite.reference))
    table = summary(results)
    report = {"benchmark": "tempering_peers",
              "command": " ".join([os.path.relpath(sys.executable), "-m", "bench.tempering_peers",
                                   *(argv if argv is not None else sys.argv[1:])]),
              "versions": versions(PACKAGES), "flowmc_pt": flowmc_pt_reason(),
              "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
              "load_average": [load[0], os.getloadavg()[0]],
              "total_s": time.perf_counter() - start, "summary": table, "runs": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(json_safe(report), indent=1))
    (out / f"{name}.md").write_text(markdown(table))
    print(markdown(table))
    print(f"done in {report['total_s']:.0f} s; wrote {out}/{name}.json")
    return report


if __name__ == "__main__":
    main()

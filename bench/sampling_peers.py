"""Sampling benchmark against peers at an equal budget of target-gradient evaluations (issue #5).

Targets: ``TwoModes`` (2-D, weights 1:2) and ``HighDimMixture(d, weights=(0.1, 0.2, 0.3, 0.4))``,
four unit-covariance Gaussians at ``±a(1, ..., 1)`` and ``±a s`` (``s`` flips the first half of
the signs) with ``a = 0.591 sqrt(2 log d)``, the mixture of Grenioux et al. (2023).

Methods: our FlowMC (the method under test) and MALA, numpyro's NUTS, flowMC (the JAX package)
and torchebm's Langevin sampler, each given the same budget of target-gradient evaluations per
chain (warm-up included; see each adapter in ``bench/peers`` for how it is counted) and started
from the same points, drawn from a broad Gaussian ``N(0, 2² I)`` as a user who does not know the
modes would. All run in this process, one after the other, torch and JAX on one thread each.

Figures, all from ``flowmc_ebm.diagnostics`` (ArviZ underneath): the largest absolute error of the
mode weights estimated by chain occupancy (``target.assign``), the ESS of the mode indicators
(smallest over modes) and of the coordinates (smallest bulk ESS) per second of wall-clock (warm-up,
flow training and JIT compilation included), and the largest rank-normalized split R-hat. Each
peer's figures are also given as ratios to our FlowMC's.

Run from the repository root (``bench`` is imported as a package)::

    .venv-bench/bin/python -m bench.sampling_peers --quick   # < 5 min on 2 cores
    .venv-bench/bin/python -m bench.sampling_peers           # d = 16, 32, 64; longer

    .venv-bench/bin/python -m bench.sampling_peers --long --seeds 0 1 2   # issue #19's headline
    .venv-bench/bin/python -m bench.sampling_peers --long --report-only --seeds 0 1 2

``--long`` drops the budget: every method keeps 20 000 production draws per chain (64 chains,
TwoModes and d = 16, 32) after its own warm-up, flowMC (JAX) at its library defaults, and blackjax's
MALA joins; JAX's compilation time is measured (``bench/peers/jax_clock.py``) so ESS/s is given with
and without it. It writes one JSON per target, seed and method under
``OUT/sampling_peers_long/`` (reused when present) and the tables ``sampling_peers_long.{json,md}``.

Writes ``sampling_peers_{quick,full}.json`` and ``.md`` (the tables) into ``--out``. Peers whose
packages are missing are skipped with the reason; a peer that fails is recorded with its error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.peers import blackjax_mala, flowmc_jax, numpyro_nuts, ours, torchebm_langevin
from bench.peers.base import Problem, Run, json_safe, versions
from flowmc_ebm.diagnostics import mixing, mode_hopping, mode_weights
from flowmc_ebm.targets import GaussianMixture, HighDimMixture, TwoModes

WEIGHTS = (0.1, 0.2, 0.3, 0.4)
START_SCALE = 2.0
OURS = "FlowMC (ours)"
PACKAGES = ("torch", "zuko", "numpy", "arviz", "jax", "jaxlib", "numpyro", "flowMC", "equinox",
            "optax", "torchebm")


@dataclass(frozen=True)
class Mode:
    """A benchmark size: which targets, how many chains, what budget."""

    name: str
    dims: tuple[int, ...]
    chains: int
    budget: int


QUICK = Mode("quick", (16,), 64, 1500)
FULL = Mode("full", (16, 32, 64), 128, 6000)


@dataclass(frozen=True)
class Method:
    """A row of the tables: its label, why it cannot run (None if it can), how to run it."""

    key: str
    label: str
    unavailable: Callable[[], str | None]
    run: Callable[[Problem, dict[str, Run]], Run]


def _always() -> None:
    return None


def _langevin(problem: Problem, done: dict[str, Run]) -> Run:
    if "MALA (ours)" not in done:
        raise RuntimeError("torchebm's Langevin takes our MALA's tuned step size: run MALA first")
    return torchebm_langevin.run_langevin(problem, done["MALA (ours)"].config["median_step_size"])


METHODS = (
    Method("flowmc", OURS, _always, lambda p, done: ours.run_flowmc(p)),
    Method("flowmc_strict", "FlowMC (ours, strict)", _always,
           lambda p, done: ours.run_flowmc(p, ours.FlowMCConfig(strict=True))),
    Method("mala", "MALA (ours)", _always, lambda p, done: ours.run_mala(p)),
    Method("nuts", "NUTS (numpyro)", numpyro_nuts.unavailable,
           lambda p, done: numpyro_nuts.run_nuts(p)),
    Method("flowmc_jax", "flowMC (JAX)", flowmc_jax.unavailable,
           lambda p, done: flowmc_jax.run_flowmc_jax(p)),
    Method("torchebm", "ULA (torchebm)", torchebm_langevin.unavailable, _langevin),
)


def make_problems(mode: Mode, seed: int = 0, two_modes: bool = True) -> list[Problem]:
    """TwoModes, then the 4-mode mixture in each of ``mode.dims``; starts ``N(0, 2² I)``."""
    targets: list[tuple[str, GaussianMixture]] = [("two_modes", TwoModes())] if two_modes else []
    targets += [(f"mixture_d{d}", HighDimMixture(d, weights=WEIGHTS)) for d in mode.dims]
    problems = []
    for name, target in targets:
        generator = torch.Generator().manual_seed(seed)
        x0 = START_SCALE * torch.randn(mode.chains, target.dim, generator=generator)
        problems.append(Problem(name, target, x0, mode.budget, seed=seed))
    return problems


def score(run: Run, target: GaussianMixture) -> dict[str, Any]:
    """The benchmark's figures for one run (JSON-ready)."""
    samples = torch.from_numpy(np.array(run.samples, dtype=np.float32))  # JAX output is read-only
    labels = target.assign(samples)  # (chains, draws)
    k = target.n_modes
    with warnings.catch_warnings():
        # Short runs keep fewer draws than chains; ArviZ then suspects transposed input, wrongly.
        warnings.filterwarnings("ignore", "More chains", UserWarning)
        weights = mode_weights(samples, labels, n_modes=k)
        hops = mode_hopping(samples, labels, n_modes=k, warn=False)
        mix = mixing(samples)
    # A mode no draw visits has a constant indicator, whose ArviZ ESS is the number of draws:
    # meaningless, so none is reported.
    visited = bool(np.all(weights.weights > 0))
    ess_mode = float(np.min(weights.ess)) if visited else math.nan
    ess_coord = mix.min_ess_bulk
    compile_s = run.config.get("compile_s")
    net_s = run.wall_s - compile_s if compile_s is not None else None
    return {
        "method": run.method,
        "chains": int(samples.shape[0]),
        "draws": int(samples.shape[1]),
        "grad_evals_per_chain": float(run.grad_evals),
        "gradient_free_evals_per_chain": float(run.logprob_evals),
        "wall_s": run.wall_s,
        "sample_s": run.sample_s,
        "mode_weights": weights.weights.tolist(),
        "true_weights": target.weights.tolist(),
        "mode_weight_error": float(np.max(np.abs(weights.weights - target.weights.numpy()))),
        "mode_weight_se": float(np.max(weights.se)),
        "all_modes_visited": visited,
        "ess_mode": ess_mode,
        "ess_mode_per_s": ess_mode / run.wall_s,
        "ess_coord": ess_coord,
        "ess_coord_per_s": ess_coord / run.wall_s,
        "compile_s": compile_s,
        "ess_mode_per_s_excl_compile": None if net_s is None else ess_mode / net_s,
        "ess_coord_per_s_excl_compile": None if net_s is None else ess_coord / net_s,
        "ess_mode_per_sample_s": None if not run.sample_s else ess_mode / run.sample_s,
        "max_rhat": mix.max_rhat,
        "mode_indicator_max_rhat": hops.max_rhat,
        "chains_that_changed_mode": float(1.0 - hops.stuck_chains.mean()),
        "config": run.config,
        "notes": run.notes,
    }


RATIO_KEYS = ("mode_weight_error", "ess_mode_per_s", "ess_coord_per_s", "wall_s")


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Each row's figures over our FlowMC's (peer / ours), in place."""
    base = next((r for r in rows if r["method"] == OURS), None)
    for row in rows:
        if base is None:
            row["ratio_to_ours"] = None
            continue
        row["ratio_to_ours"] = {key: _divide(row[key], base[key]) for key in RATIO_KEYS}


def _divide(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:  # a figure a run could not give (e.g. an ESS of a frozen chain)
        return None
    a, b = float(a), float(b)  # rows read back from JSON hold inf / nan as strings
    if b == 0:
        return math.inf if a > 0 else math.nan
    return a / b


def run_problem(problem: Problem, methods=METHODS, log: Callable[[str], None] = print
                ) -> dict[str, Any]:
    """Every available method on ``problem``: scored rows, skipped methods, failures."""
    done: dict[str, Run] = {}
    rows, skipped, failed = [], [], []
    for method in methods:
        reason = method.unavailable()
        if reason is not None:
            log(f"  {method.label}: SKIPPED ({reason})")
            skipped.append({"method": method.label, "reason": reason})
            continue
        try:
            run = method.run(problem, done)
        except Exception as error:  # a peer's failure is a result to report, not a crash
            message = f"{type(error).__name__}: {error}"
            log(f"  {method.label}: FAILED ({message})")
            failed.append({"method": method.label, "error": message,
                           "traceback": traceback.format_exc(limit=-3)})
            continue
        done[run.method] = run
        rows.append(score(run, problem.target))
        r = rows[-1]
        log(f"  {run.method}: error {r['mode_weight_error']:.4f}, ESS/s mode "
            f"{r['ess_mode_per_s']:.3g}, coords {r['ess_coord_per_s']:.3g}, R-hat "
            f"{r['max_rhat']:.3f}, {r['wall_s']:.1f} s, {r['grad_evals_per_chain']:.0f} grads")
    add_ratios(rows)
    return {"problem": problem.name, "target": repr(problem.target), "dim": problem.dim,
            "chains": problem.chains, "budget_grad_evals_per_chain": problem.budget,
            "warmup_fraction": problem.warmup_fraction, "seed": problem.seed,
            "start": f"N(0, {START_SCALE:g}^2 I), the same draws for every method",
            "rows": rows, "skipped": skipped, "failed": failed}


def _checks(rows: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The project's targets on one set of rows (method -> figures)."""
    check: dict[str, Any] = {}
    ours_row = rows[OURS]
    for peer in ("MALA (ours)", "NUTS (numpyro)"):
        if peer in rows:
            ratio = _divide(rows[peer]["mode_weight_error"], ours_row["mode_weight_error"])
            check[f"error_5x_smaller_than_{peer}"] = {"ratio": ratio, "met": ratio >= 5}
    if "flowMC (JAX)" in rows:
        ratio = _divide(ours_row["ess_mode_per_s"], rows["flowMC (JAX)"]["ess_mode_per_s"])
        check["ess_mode_per_s_at_least_flowMC_JAX"] = {"ratio": ratio, "met": ratio >= 1}
    return check


def summary(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per problem and method, the figures over seeds: mean and worst error, mean ESS/s, wall."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for res in results:
        for row in res["rows"]:
            groups.setdefault((res["problem"], row["method"]), []).append(row)
    return [{"problem": problem, "method": method, "seeds": len(rows),
             "mode_weight_error": float(np.mean([r["mode_weight_error"] for r in rows])),
             "worst_mode_weight_error": max(r["mode_weight_error"] for r in rows),
             "ess_mode_per_s": float(np.mean([r["ess_mode_per_s"] for r in rows])),
             "wall_s": float(np.mean([r["wall_s"] for r in rows]))}
            for (problem, method), rows in groups.items()]


def targets_met(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The project's targets per problem: on each seed and, with several, on the seeds' means."""
    out: dict[str, Any] = {}
    for res in results:
        rows = {r["method"]: r for r in res["rows"]}
        if OURS in rows:
            out.setdefault(res["problem"], {})[f"seed {res['seed']}"] = _checks(rows)
    means: dict[str, dict[str, Any]] = {}
    for row in summary(results):
        if row["seeds"] > 1:
            means.setdefault(row["problem"], {})[row["method"]] = row
    for problem, rows in means.items():
        if OURS in rows:
            out[problem]["mean over seeds"] = _checks(rows)
    return out


def _fmt(x: Any, spec: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return format(x, spec)


def markdown(results: list[dict[str, Any]]) -> str:
    """One table per problem: absolute figures, then ratios to our FlowMC."""
    lines = []
    for res in results:
        lines += [f"### {res['problem']}, seed {res['seed']}: {res['target']}", "",
                  f"{res['chains']} chains, budget {res['budget_grad_evals_per_chain']} gradient "
                  f"evaluations per chain, start {res['start']}.", "",
                  "| method | grad evals | grad-free evals | wall s | weight error (± se) | "
                  "ESS mode | ESS/s mode | ESS/s coords | max R̂ | chains that hopped | "
                  "error ÷ ours | ESS/s mode ÷ ours | ESS/s coords ÷ ours | wall ÷ ours |",
                  "|---" * 14 + "|"]
        for r in res["rows"]:
            ratio = r["ratio_to_ours"] or {}
            lines.append(
                f"| {r['method']} | {r['grad_evals_per_chain']:.0f} | "
                f"{r['gradient_free_evals_per_chain']:.0f} | {r['wall_s']:.1f} | "
                f"{r['mode_weight_error']:.4f} (± {r['mode_weight_se']:.4f}) | "
                f"{_fmt(r['ess_mode'], '.0f')} | {_fmt(r['ess_mode_per_s'])} | "
                f"{_fmt(r['ess_coord_per_s'])} | {_fmt(r['max_rhat'], '.3f')} | "
                f"{r['chains_that_changed_mode']:.0%} | "
                + " | ".join(_fmt(ratio.get(k)) for k in RATIO_KEYS) + " |")
        for s in res["skipped"]:
            lines.append(f"| {s['method']} | skipped: {s['reason']} |" + " |" * 12)
        for f in res["failed"]:
            lines.append(f"| {f['method']} | failed: {f['error']} |" + " |" * 12)
        lines.append("")
    rows = [r for r in summary(results) if r["seeds"] > 1]
    if rows:
        lines += ["### Over seeds", "",
                  "| problem | method | seeds | mean weight error | worst weight error | "
                  "mean ESS/s mode | mean wall s |", "|---" * 7 + "|"]
        lines += [f"| {r['problem']} | {r['method']} | {r['seeds']} | "
                  f"{r['mode_weight_error']:.4f} | {r['worst_mode_weight_error']:.4f} | "
                  f"{_fmt(r['ess_mode_per_s'])} | {r['wall_s']:.1f} |" for r in rows]
        lines.append("")
    return "\n".join(lines)


@dataclass(frozen=True)
class Long:
    """The realistic length (issue #19): every method keeps ``production`` draws per chain after
    its own warm-up, as users run them; no gradient budget."""

    dims: tuple[int, ...] = (16, 32)
    chains: int = 64
    production: int = 20_000
    flowmc_warmup: int = 1000  # cycles of 2 MALA steps + 1 i-SIR move + 1 flow update
    mala_warmup: int = 4000  # flowMC's 20 training loops of 100 + 100 steps
    nuts_warmup: int = 1000


LONG = Long()
MALA_LABEL = "MALA (ours)"


def _mala_step(rows: dict[str, dict[str, Any]]) -> float:
    if MALA_LABEL not in rows:
        raise RuntimeError("this peer takes our MALA's tuned step size: run MALA first")
    return rows[MALA_LABEL]["config"]["median_step_size"]


def _flowmc_jax_length(production: int) -> flowmc_jax.FlowMCJaxDefaults:
    """flowMC's production loops for ``production`` draws (each loop keeps 100 + 100)."""
    d = flowmc_jax.FlowMCJaxDefaults()
    per_loop = d.n_local_steps + d.n_global_steps
    return dataclasses.replace(d, n_production_loops=max(1, production // per_loop))


def long_methods(length: Long = LONG) -> tuple[Method, ...]:
    """The long run's rows; a runner takes the problem and the rows scored so far."""
    w, n = length, length.production
    return (
        Method("mala", MALA_LABEL, _always,
               lambda p, rows: ours.run_mala_steps(p, w.mala_warmup, n)),
        Method("flowmc", OURS, _always,
               lambda p, rows: ours.run_flowmc_steps(p, w.flowmc_warmup, n)),
        Method("flowmc_jax", "flowMC (JAX)", flowmc_jax.unavailable,
               lambda p, rows: flowmc_jax.run_flowmc_jax_defaults(p, _flowmc_jax_length(n))),
        Method("nuts", "NUTS (numpyro)", numpyro_nuts.unavailable,
               lambda p, rows: numpyro_nuts.run_nuts_steps(p, w.nuts_warmup, n)),
        Method("blackjax_mala", "MALA (blackjax)", blackjax_mala.unavailable,
               lambda p, rows: blackjax_mala.run_mala(p, _mala_step(rows), w.mala_warmup, n)),
        Method("torchebm", "ULA (torchebm)", torchebm_langevin.unavailable,
               lambda p, rows: torchebm_langevin.run_langevin_steps(p, _mala_step(rows),
                                                                    w.mala_warmup, n)),
    )


def run_long_problem(problem: Problem, methods: tuple[Method, ...], folder: Path,
                     log: Callable[[str], None] = print, run_missing: bool = True
                     ) -> dict[str, Any]:
    """Every method on ``problem``, one JSON per method in ``folder`` (kept if already there, so
    an interrupted run resumes where it stopped; with ``run_missing=False`` only those are read
    and a missing one is left out)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, Any]] = {}
    skipped, failed = [], []
    for method in methods:
        path = folder / f"{problem.name}_seed{problem.seed}_{method.key}.json"
        if path.exists():
            saved = json.loads(path.read_text())
            if saved["kind"] == "row":
                rows[method.label] = saved["row"]
            else:
                (skipped if saved["kind"] == "skipped" else failed).append(saved["row"])
            log(f"  {method.label}: read {path}")
            continue
        if not run_missing:
            continue
        reason = method.unavailable()
        if reason is not None:
            entry, kind = {"method": method.label, "reason": reason}, "skipped"
            skipped.append(entry)
        else:
            try:
                run = method.run(problem, rows)
                entry, kind = score(run, problem.target), "row"
                rows[method.label] = entry
                del run
            except Exception as error:  # a peer's failure is a result to report
                entry, kind = {"method": method.label, "error": f"{type(error).__name__}: {error}",
                               "traceback": traceback.format_exc(limit=-3)}, "failed"
                failed.append(entry)
        path.write_text(json.dumps(json_safe({"kind": kind, "row": entry,
                                              "load_average": os.getloadavg()[0]}), indent=1))
        if kind == "row":
            r = entry
            log(f"  {method.label}: error {r['mode_weight_error']:.4f}, ESS/s mode "
                f"{r['ess_mode_per_s']:.3g} ({_fmt(r['ess_mode_per_s_excl_compile'])} without "
                f"compilation), R-hat {r['max_rhat']:.3f}, {r['wall_s']:.1f} s "
                f"(compile {_fmt(r['compile_s'], '.1f')} s)")
        else:
            log(f"  {method.label}: {kind.upper()} ({entry.get('reason') or entry.get('error')})")
    ordered = [rows[m.label] for m in methods if m.label in rows]
    add_ratios(ordered)
    return {"problem": problem.name, "target": repr(problem.target), "dim": problem.dim,
            "chains": problem.chains, "seed": problem.seed,
            "start": f"N(0, {START_SCALE:g}^2 I), the same draws for every method",
            "rows": ordered, "skipped": skipped, "failed": failed}


LONG_KEYS = ("mode_weight_error", "max_rhat", "mode_indicator_max_rhat", "ess_mode", "ess_mode_per_s",
             "ess_mode_per_s_excl_compile", "ess_coord_per_s", "ess_coord_per_s_excl_compile",
             "wall_s", "compile_s", "chains_that_changed_mode")


def long_summary(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per problem and method, over seeds: the mean of each figure and the worst error."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for res in results:
        for row in res["rows"]:
            groups.setdefault((res["problem"], row["method"]), []).append(row)
    out = []
    for (problem, method), rows in groups.items():
        entry = {"problem": problem, "method": method, "seeds": len(rows),
                 "worst_mode_weight_error": max(r["mode_weight_error"] for r in rows),
                 "worst_max_rhat": max(r["max_rhat"] for r in rows)}
        for key in LONG_KEYS:
            # float(): a JSON row read back holds non-finite numbers as "inf" / "nan" strings.
            values = [float(r[key]) for r in rows if r.get(key) is not None]
            values = [v for v in values if not math.isnan(v)]
            entry[key] = float(np.mean(values)) if len(values) == len(rows) else None
        out.append(entry)
    return out


def long_markdown(summary_rows: list[dict[str, Any]]) -> str:
    """The headline table: per problem and method, means over seeds."""
    lines = ["| target | method | seeds | weight error: mean (worst) | max R̂: mean (worst) | "
             "ESS mode | ESS/s mode | ESS/s mode, compilation excluded | ESS/s coords | "
             "ESS/s coords, compilation excluded | wall s | of which compilation s | "
             "chains that hopped |", "|---" * 13 + "|"]
    for r in summary_rows:
        lines.append(
            f"| {r['problem']} | {r['method']} | {r['seeds']} | {r['mode_weight_error']:.4f} "
            f"({r['worst_mode_weight_error']:.4f}) | {r['max_rhat']:.3f} ({r['worst_max_rhat']:.3f}) | "
            f"{_fmt(r['ess_mode'], '.0f')} | {_fmt(r['ess_mode_per_s'])} | "
            f"{_fmt(r['ess_mode_per_s_excl_compile'])} | "
            f"{_fmt(r['ess_coord_per_s'])} | {_fmt(r['ess_coord_per_s_excl_compile'])} | "
            f"{r['wall_s']:.1f} | {_fmt(r['compile_s'], '.1f')} | "
            f"{_fmt(r['chains_that_changed_mode'], '.0%')} |")
    return "\n".join(lines) + "\n"


def main_long(args: argparse.Namespace) -> dict[str, Any]:
    length = Long(tuple(args.dims or LONG.dims), args.chains or LONG.chains,
                  args.production or LONG.production)
    methods = tuple(m for m in long_methods(length) if m.key in args.methods)
    mode = Mode("long", length.dims, length.chains, 0)
    out = Path(args.out)
    folder = out / "sampling_peers_long"
    start, load = time.perf_counter(), os.getloadavg()
    results = []
    for seed in args.seeds:
        for problem in make_problems(mode, seed, two_modes=not args.no_two_modes):
            print(f"{problem.name} (d = {problem.dim}, seed {seed}):", flush=True)
            results.append(run_long_problem(problem, methods, folder,
                                            run_missing=not args.report_only))
    results = [r for r in results if r["rows"] or r["skipped"] or r["failed"]]
    rows = long_summary(results)
    report = {"benchmark": "sampling_peers", "mode": "long", "length": dataclasses.asdict(length),
              "command": " ".join([os.path.relpath(sys.executable), "-m", "bench.sampling_peers",
                                   *sys.argv[1:]]),
              "python_executable": sys.executable, "versions": versions(PACKAGES),
              "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
              "cpus": os.cpu_count(), "load_average": [load[0], os.getloadavg()[0]],
              "total_s": time.perf_counter() - start, "summary_over_seeds": rows,
              "problems": results}
    (out / "sampling_peers_long.json").write_text(json.dumps(json_safe(report), indent=1))
    (out / "sampling_peers_long.md").write_text(long_markdown(rows))
    print(f"done in {report['total_s']:.0f} s; wrote {out}/sampling_peers_long.json")
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results", help="folder for the JSON and tables")
    parser.add_argument("--quick", action="store_true",
                        help=f"d = {QUICK.dims}, {QUICK.chains} chains, budget {QUICK.budget} "
                             f"(< 5 min); default: d = {FULL.dims}, {FULL.chains} chains, "
                             f"budget {FULL.budget}")
    parser.add_argument("--dims", type=int, nargs="+", help="override the mode's dimensions")
    parser.add_argument("--chains", type=int, help="override the mode's number of chains")
    parser.add_argument("--budget", type=int,
                        help="override the gradient evaluations per chain")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="one run of everything per seed (starts, flows, chains)")
    keys = sorted({m.key for m in METHODS} | {m.key for m in long_methods()})
    parser.add_argument("--methods", nargs="+", choices=keys, default=keys,
                        help="a subset of the methods (torchebm needs mala)")
    parser.add_argument("--no-two-modes", action="store_true", help="only the 4-mode mixtures")
    parser.add_argument("--long", action="store_true",
                        help=f"the realistic length: {LONG.production} production draws per "
                             f"chain, {LONG.chains} chains, d = {LONG.dims} (one JSON per target, "
                             "seed and method under OUT/sampling_peers_long/, reused if present)")
    parser.add_argument("--production", type=int, help="--long: production draws per chain")
    parser.add_argument("--report-only", action="store_true",
                        help="--long: tables from the JSONs already written; run nothing")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.long:
        return main_long(args)
    mode = QUICK if args.quick else FULL
    mode = Mode(mode.name, tuple(args.dims or mode.dims), args.chains or mode.chains,
                args.budget or mode.budget)
    start, load = time.perf_counter(), os.getloadavg()
    results = []
    methods = [m for m in METHODS if m.key in args.methods]  # unknown keys: long-mode rows
    for seed in args.seeds:
        for problem in make_problems(mode, seed, two_modes=not args.no_two_modes):
            print(f"{problem.name} (d = {problem.dim}, seed {seed}):", flush=True)
            results.append(run_problem(problem, methods))
    report = {"benchmark": "sampling_peers", "mode": mode.name,
              "command": " ".join([os.path.relpath(sys.executable), "-m", "bench.sampling_peers",
                                   *(argv if argv is not None else sys.argv[1:])]),
              "python_executable": sys.executable, "versions": versions(PACKAGES),
              "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
              "cpus": os.cpu_count(),
              # Other people's jobs share the machine: the 1-minute load average, before and after.
              "load_average": [load[0], os.getloadavg()[0]],
              "total_s": time.perf_counter() - start, "targets_met": targets_met(results),
              "summary_over_seeds": summary(results), "problems": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"sampling_peers_{mode.name}.json").write_text(json.dumps(json_safe(report), indent=1))
    (out / f"sampling_peers_{mode.name}.md").write_text(markdown(results))
    print(f"done in {report['total_s']:.0f} s; wrote {out}/sampling_peers_{mode.name}.json")
    return report


if __name__ == "__main__":
    main()

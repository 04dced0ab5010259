"""flowMC-EBM against ULA-PCD on the paper's two-mode example, across the energy L2 weight α.

Data: ``(1/3) N(-1.5·1, 0.05 I) + (2/3) N(+1.5·1, 0.1 I)`` in 2-D (`TwoModes`). For every sampler,
α and seed this trains one EBM with the same network, tilt, pool and gradient budget (only the
sampler differs; each seed fixes both the data and the trainer), then reports the EBM's weight of
the top-right mode (quadrature of the normalized tilted density, averaged over the last 25% of
training) against the true 2/3, with acceptance, R̂ of the persistent chains and wall time.

Writes under ``--out`` (default ``out/two_modes``):

    runs/<sampler>_alpha<α>_seed<s>/    one `flowmc-ebm train` output directory per run
    results.json                          every run's summary and the aggregated table
    table.md                              the markdown table for docs/results.md
    weights_alpha<α>.png                  top-right weight against iteration, all runs
    landscapes_alpha<α>.png               target and each sampler's EBM (seed 0)

Runs already finished are reused and killed ones resumed, so the script can be re-run at will.

Usage:
    python examples/two_modes.py                                # the full grid, 2 processes
    python examples/two_modes.py --alphas 0 --seeds 0 --jobs 1  # one setting
    python examples/two_modes.py --report-only                  # re-aggregate finished runs
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from flowmc_ebm.commands.train import format_summary, make_data, train_run, write_json
from flowmc_ebm.config import RunConfig, load_config
from flowmc_ebm.evaluation import landscape_figure, weight_figure
from flowmc_ebm.trainer import JointTrainer

HERE = Path(__file__).resolve().parent
#: What the paper reports for this example (Grenioux, Moulines & Gabrié 2023, Fig. 1).
PAPER = {"flowmc": "≈ 0.72", "ula": "swings between 0 and 1"}
LABELS = {"flowmc": "flowMC-EBM", "ula": "ULA-PCD", "mala": "MALA-PCD", "nt": "NT-EBM"}


def run_name(sampler: str, alpha: float, seed: int) -> str:
    return f"{sampler}_alpha{alpha:g}_seed{seed}"


def run_one(job: tuple[str, str, float, int, str, int]) -> dict:
    """Train one (sampler, α, seed) run in its own process, on one thread."""
    config_path, sampler, alpha, seed, run_dir, iterations = job
    torch.set_num_threads(1)
    run_dir = Path(run_dir)
    done = run_dir / "summary.json"
    if done.exists():
        return json.loads(done.read_text())
    overrides = {"sampler": sampler, "trainer.energy_l2": alpha, "trainer.seed": seed,
                 "data_seed": seed}
    if iterations:
        overrides["iterations"] = iterations
    config = load_config(config_path).replace(overrides)
    resume = (run_dir / "checkpoints" / "last.pt").exists()
    _, summary = train_run(config, run_dir, resume=resume, progress=False)
    print(f"{run_dir.name}: {format_summary(summary)}", flush=True)
    return summary


def _mean_sd(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else math.nan)


def aggregate(summaries: list[dict]) -> list[dict]:
    """One row per (sampler, α): the seeds' last-quarter weights and their mean ± sd."""
    rows: dict[tuple[str, float], list[dict]] = {}
    for s in summaries:
        key = (s["sampler"], s["config"]["trainer"]["energy_l2"])
        rows.setdefault(key, []).append(s)
    table = []
    for (sampler, alpha), runs in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        runs.sort(key=lambda s: s["config"]["trainer"]["seed"])
        weights = [s["weight_mean"] for s in runs]
        mean, sd = _mean_sd(weights)
        table.append({
            "sampler": sampler, "alpha": alpha, "seeds": [s["config"]["trainer"]["seed"] for s in runs],
            "weights": weights, "weight_sds": [s["weight_sd"] for s in runs],
            "weight_mean": mean, "weight_sd_over_seeds": sd,
            "max_abs_error": max(abs(w - runs[0]["truth"]) for w in weights),
            "chain_weight": _mean_sd([s.get("neg_weight_mean") for s in runs])[0],
            "global_accept": _mean_sd([s["global_accept"] for s in runs])[0],
            "local_accept": _mean_sd([s["local_accept"] for s in runs])[0],
            "rhat": _mean_sd([s["rhat"] for s in runs])[0],
            "wall_time": _mean_sd([s["wall_time"] for s in runs])[0],
            "iterations": runs[0]["iterations"],
        })
    return table


def _fmt(value: float, spec: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else format(value, spec)


def markdown_table(table: list[dict], truth: float, eval_every: int) -> str:
    lines = [
        "| method | α | top-right weight, mean ± sd over seeds | per seed (last 25%) | "
        "max \\|Δw\\| | chains' weight | global acc. | local acc. | R̂ (chains) | "
        "wall-clock / run | paper |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table:
        seeds = ", ".join(f"{w:.3f}" for w in row["weights"])
        lines.append(
            f"| {LABELS.get(row['sampler'], row['sampler'])} | {row['alpha']:g} | "
            f"{_fmt(row['weight_mean'], '.3f')} ± {_fmt(row['weight_sd_over_seeds'], '.3f')} | "
            f"{seeds} | {row['max_abs_error']:.3f} | {_fmt(row['chain_weight'], '.3f')} | "
            f"{_fmt(row['global_accept'], '.2f')} | {_fmt(row['local_accept'], '.2f')} | "
            f"{_fmt(row['rhat'], '.3f')} | {row['wall_time']:.0f} s | "
            f"{PAPER.get(row['sampler'], '')} |")
    seeds = max(len(row["seeds"]) for row in table)
    lines.append(f"\nTrue weight {truth:.4f}. Weight: quadrature of the EBM's normalized tilted "
                 f"density on a 128² grid over [-4.5, 4.5]², every {eval_every} iterations, "
                 f"averaged over the last 25% of training; sd over {seeds} seeds (data and trainer "
                 "seeded together).")
    return "\n".join(lines) + "\n"


def figures(out: Path, summaries: list[dict]) -> None:
    by_alpha: dict[float, list[dict]] = {}
    for s in summaries:
        by_alpha.setdefault(s["config"]["trainer"]["energy_l2"], []).append(s)
    for alpha, runs in by_alpha.items():
        panels: dict[str, list] = {}
        for s in sorted(runs, key=lambda s: (s["sampler"], s["config"]["trainer"]["seed"])):
            name = run_name(s["sampler"], alpha, s["config"]["trainer"]["seed"])
            history = json.loads((out / "runs" / name / "history.json").read_text())
            panels.setdefault(f"{LABELS.get(s['sampler'], s['sampler'])}, α={alpha:g}", []).append(
                (f"seed {s['config']['trainer']['seed']}", history.get("eval_iteration", []),
                 [w[s["mode"]] for w in history.get("ebm_mode_weights", [])]))
        weight_figure(panels, runs[0]["truth"], out / f"weights_alpha{alpha:g}.png")
        first = sorted((s for s in runs if s["config"]["trainer"]["seed"] == min(
            r["config"]["trainer"]["seed"] for r in runs)), key=lambda s: s["sampler"])
        if not first:
            continue
        config = RunConfig.from_dict(first[0]["config"])
        target, data = make_data(config)
        panels, points = [("target", target.log_prob)], [None]
        for s in first:
            name = run_name(s["sampler"], alpha, s["config"]["trainer"]["seed"])
            trainer = JointTrainer.load(out / "runs" / name / "checkpoints" / "last.pt")
            panels.append((f"{LABELS.get(s['sampler'], s['sampler'])}, α={alpha:g}: "
                           f"w={s['weight_mean']:.3f}", trainer.log_prob))
            points.append(trainer.pool_)
        landscape_figure(panels, out / f"landscapes_alpha{alpha:g}.png", data=data,
                         points=points)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=HERE / "configs" / "two_modes.toml")
    parser.add_argument("--samplers", nargs="+", default=["flowmc", "ula"])
    parser.add_argument("--alphas", nargs="+", type=float, default=[0.0, 0.1, 0.01])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=0,
                        help="override the config's length (0: keep it)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, one thread each")
    parser.add_argument("--out", type=Path, default=Path("out/two_modes"))
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)

    jobs = [(str(args.config), sampler, alpha, seed,
             str(args.out / "runs" / run_name(sampler, alpha, seed)), args.iterations)
            for alpha in args.alphas for seed in args.seeds for sampler in args.samplers]
    if args.report_only:
        summaries = [json.loads(p.read_text()) for p in sorted(args.out.glob("runs/*/summary.json"))]
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
            summaries = list(pool.map(run_one, jobs))
    if not summaries:
        print("no finished runs", file=sys.stderr)
        return 1
    table = aggregate(summaries)
    truth = summaries[0]["truth"]
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "results.json", {"table": table, "runs": summaries})
    eval_every = summaries[0]["config"]["trainer"]["eval_every"]
    (args.out / "table.md").write_text(markdown_table(table, truth, eval_every), encoding="utf-8")
    figures(args.out, summaries)
    print(markdown_table(table, truth, eval_every))
    return 0


if __name__ == "__main__":
    sys.exit(main())

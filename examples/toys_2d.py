"""flowMC-EBM, ULA-PCD and NT-EBM on the paper's 2-D toys: four modes on a line, 8 Gaussians, rings.

For every target, sampler and seed this trains one EBM with the same network, tilt, α, pool and
gradient budget (only the sampler differs; each seed fixes both the data and the trainer) and, at
``--evals`` evenly spaced iterations of the last 25% of training, measures:

- ``w_ebm``: the EBM's mode weights, by quadrature of its normalized (tilted) density on a
  200² grid over the target's box (`quadrature_mode_weights`; each cell goes to the mode
  ``target.assign`` gives its center: nearest mean, nearest ring).
- ``w_init``: the weights of what the negative chains start from: the persistent pool (all its
  chains; flowMC-EBM and ULA-PCD) or fresh flow draws (NT-EBM, whose chains are short-run from
  the flow).
- ``w_neg``: the weights of the negatives, i.e. ``--eval-chains`` chains started from that
  distribution (drawn from the pool with replacement, or from the flow) after one training
  iteration's worth of the trainer's own kernel, run with a separate generator.
- ``w_flow`` (flowMC-EBM only): the flow's weights from ``--eval-chains`` draws.
- The three mode-weight MSEs of the paper's four-mode table, mean over modes of the squared
  difference: (a) init vs EBM, (b) negatives vs EBM, (c) EBM vs truth; and the flow vs EBM.
- ``log_density_error``: the median squared difference of the EBM's and the target's
  log-densities, both normalized on the same 200² grid, over the grid cells of the target's
  highest-density region holding 99% of its grid mass
  (`flowmc_ebm.diagnostics.metrics.log_density_error`).

A run's numbers are the means over its evaluations; the tables give mean ± sd over seeds.

Writes under ``--out`` (default ``out/toys_2d``, or ``out/toys_2d_paper`` with ``--paper``):

    runs/<target>/<sampler>_alpha<α>_seed<s>/   one `flowmc-ebm train` output directory per run,
                                                 plus toys.json (its evaluations and summary)
    results.json                                 every run's summary and the aggregated tables
    table.md                                     the markdown tables for docs/results_toys.md
    landscapes_<target>.png                      target and each sampler's EBM (first seed)

α is set per sampler (``--alphas``), by default each at its best α on the two-mode example.

Runs already finished are reused and killed ones resumed. Runs go one after another, each on one
thread.

Usage:
    python examples/toys_2d.py                                  # quick grid (27 runs)
    python examples/toys_2d.py --paper                          # the paper's settings (long)
    python examples/toys_2d.py --targets rings --seeds 0        # a part of the grid
    python examples/toys_2d.py --report-only --figures docs/figures/toys
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from flowmc_ebm.commands.train import format_summary, make_data, train_run, write_json
from flowmc_ebm.config import RunConfig, load_config, parse_overrides
from flowmc_ebm.diagnostics.metrics import log_density_error
from flowmc_ebm.evaluation import landscape_figure, quadrature_mode_weights, sample_mode_weights
from flowmc_ebm.trainer import JointTrainer
from samplers.independent import draw

HERE = Path(__file__).resolve().parent
TARGETS = ("four_modes", "eight_gaussians", "rings")
LABELS = {"flowmc": "flowMC-EBM", "ula": "ULA-PCD", "mala": "MALA-PCD", "nt": "NT-EBM"}
#: Boxes of the quadrature: the target's mass and the tilt's bulk fit inside.
BOUNDS = {"four_modes": ((-4.5, 4.5), (-4.5, 4.5)),
          "eight_gaussians": ((-2.5, 2.5), (-2.5, 2.5)),
          "rings": ((-5.5, 5.5), (-5.5, 5.5))}
N_GRID = 200
#: Grenioux, Moulines & Gabrié (2023): four modes, mode-weight MSEs of flowMC-EBM
#: (chain initializations vs EBM, negatives vs EBM, EBM vs truth).
PAPER_FOUR_MODES = {"flowmc": (5.19e-4, 3.12e-5, 4.29e-4)}
#: Their median squared log-density errors (8 Gaussians, rings); they name the ULA baseline ULA-EBM.
PAPER_LOG_DENSITY = {"eight_gaussians": {"flowmc": 0.94, "ula": 1.86, "nt": 0.97},
                     "rings": {"flowmc": 0.40, "ula": 5.39, "nt": 0.62}}
#: α of each sampler: where it did best on the two-mode example (docs/results_two_modes.md):
#: flowMC-EBM is unbiased at α = 0 (the paper's setting); ULA-PCD collapses to one mode at
#: α <= 0.01 and NT-EBM lost a mode at α = 0 in 2 of 3 seeds, both are right at α = 0.1.
ALPHAS = {"flowmc": 0.0, "ula": 0.1, "mala": 0.1, "nt": 0.1}
TITLES = {"four_modes": "Four modes on a line (weights 0.1, 0.2, 0.3, 0.4)",
          "eight_gaussians": "8 Gaussians", "rings": "Rings (4 rings, equal mass)"}


def run_name(sampler: str, alpha: float, seed: int) -> str:
    return f"{sampler}_alpha{alpha:g}_seed{seed}"


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a.double() - b.double()) ** 2).mean())


def evaluate(trainer: JointTrainer, target: Any, bounds, n_chains: int,
             generator: torch.Generator) -> dict[str, Any]:
    """The mode weights and errors of one trained state (see the module docstring)."""
    truth = target.weights.double()
    w_ebm = quadrature_mode_weights(trainer.log_prob, target, bounds=bounds, n_grid=N_GRID,
                                    device=trainer.device)
    if trainer.sampler == "nt":
        x0, _ = draw(trainer.flow, (n_chains,), generator)
        w_init = sample_mode_weights(x0, target)
    else:
        pool = trainer.pool_
        idx = torch.randint(0, pool.shape[0], (n_chains,), generator=generator)
        x0 = pool[idx]
        w_init = sample_mode_weights(pool, target)
    # One training iteration's worth of the trainer's kernel, as `JointTrainer._advance` runs it.
    state = trainer.kernel.init(x0)
    for _ in range(trainer._steps):
        state, _ = trainer.kernel.step(state, generator)
    w_neg = sample_mode_weights(state.x.detach(), target)
    out = {"iteration": trainer.iteration_, "w_ebm": w_ebm.tolist(), "w_init": w_init.tolist(),
           "w_neg": w_neg.tolist(), "mse_init_ebm": _mse(w_init, w_ebm),
           "mse_neg_ebm": _mse(w_neg, w_ebm), "mse_ebm_true": _mse(w_ebm, truth),
           "mse_neg_true": _mse(w_neg, truth),
           "log_density_error": log_density_error(trainer.log_prob, target.log_prob, bounds,
                                                  N_GRID)}
    if trainer.sampler == "flowmc":
        xf, _ = draw(trainer.flow, (n_chains,), generator)
        w_flow = sample_mode_weights(xf, target)
        out.update(w_flow=w_flow.tolist(), mse_flow_ebm=_mse(w_flow, w_ebm))
    return out


class Evaluations:
    """A `JointTrainer` callback: `evaluate` at the given iterations, saved to a JSON file."""

    def __init__(self, path: Path, target: Any, bounds, at: list[int], n_chains: int,
                 seed: int) -> None:
        self.path, self.target, self.bounds, self.at = path, target, bounds, set(at)
        self.n_chains, self.seed = n_chains, seed
        self.records: dict[int, dict] = {}
        if path.exists():
            self.records = {r["iteration"]: r for r in json.loads(path.read_text())["evaluations"]}

    def __call__(self, trainer: JointTrainer) -> None:
        it = trainer.iteration_
        if it in self.at and it not in self.records:
            generator = torch.Generator().manual_seed(10_000 * self.seed + it)
            self.records[it] = evaluate(trainer, self.target, self.bounds, self.n_chains, generator)
            self.save()

    def save(self, **extra: Any) -> None:
        write_json(self.path, {"evaluations": [self.records[i] for i in sorted(self.records)],
                               **extra})


def eval_iterations(n_iterations: int, log_every: int, evals: int) -> list[int]:
    """``evals`` iterations evenly spread over the last quarter, on the callback's grid."""
    since = n_iterations - n_iterations // 4
    points = {n_iterations}
    for k in range(1, evals):
        it = since + round(k * (n_iterations - since) / evals)
        points.add(max(log_every, log_every * round(it / log_every)))
    return sorted(p for p in points if since < p <= n_iterations)


def summarize(summary: dict, records: list[dict]) -> dict:
    """Fill ``summary`` with the means over a run's evaluations ``records``; return it."""
    truth = torch.tensor(summary["truth_weights"])
    for r in records:
        r["mse_init_true"] = _mse(torch.tensor(r["w_init"]), truth)
    for key in ("mse_init_ebm", "mse_neg_ebm", "mse_ebm_true", "mse_init_true", "mse_neg_true",
                "mse_flow_ebm", "log_density_error"):
        values = [r[key] for r in records if key in r]
        summary[key] = statistics.fmean(values) if values else math.nan
        # The last evaluation alone: the model a user gets at the end of training.
        summary[f"{key}_final"] = values[-1] if values else math.nan
    for key in ("w_ebm", "w_init", "w_neg", "w_flow"):
        values = [r[key] for r in records if key in r]
        if values:
            summary[key] = torch.tensor(values).mean(0).tolist()
    return summary


def run_one(config_path: Path, target_name: str, sampler: str, alpha: float, seed: int,
            run_dir: Path, args: argparse.Namespace) -> dict:
    """Train (or resume, or reuse) one run and return its summary with the evaluations."""
    done = run_dir / "toys.json"
    saved = json.loads(done.read_text()) if done.exists() else {}
    if "summary" in saved:
        return summarize(saved["summary"], saved["evaluations"])
    overrides = {"sampler": sampler, "trainer.energy_l2": alpha, "trainer.seed": seed,
                 "data_seed": seed, **parse_overrides(args.set)}
    if args.iterations:
        overrides["iterations"] = args.iterations
    config = load_config(config_path).replace(overrides)
    target, _ = make_data(config)
    at = eval_iterations(config.n_iterations, config.trainer.log_every, args.evals)
    callback = Evaluations(done, target, BOUNDS[target_name], at, args.eval_chains, seed)
    resume = (run_dir / "checkpoints" / "last.pt").exists()
    start = time.perf_counter()
    trainer, summary = train_run(config, run_dir, resume=resume, progress=False,
                                 callbacks=(callback,))
    if trainer.iteration_ not in callback.records:  # the end is off the callback's grid
        callback.at.add(trainer.iteration_)
        callback(trainer)
    records = [callback.records[i] for i in sorted(callback.records)]
    summary.update(target_name=target_name, alpha=alpha, seed=seed,
                   truth_weights=target.weights.tolist(),
                   train_time=trainer.history_["elapsed"][-1],
                   session_time=time.perf_counter() - start,
                   eval_iterations=[r["iteration"] for r in records])
    summarize(summary, records)
    callback.save(summary=summary)
    print(f"{target_name}/{run_dir.name}: {format_summary(summary)}; MSE init/neg/true "
          f"{summary['mse_init_ebm']:.2e}/{summary['mse_neg_ebm']:.2e}/"
          f"{summary['mse_ebm_true']:.2e}; log-density error {summary['log_density_error']:.3f}",
          flush=True)
    return summary


def _mean_sd(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else math.nan)


METRICS = ("mse_init_ebm", "mse_neg_ebm", "mse_ebm_true", "mse_avg_ebm_true", "mse_init_true",
           "mse_neg_true", "mse_flow_ebm",
           "log_density_error", "train_time", "global_accept", "local_accept", "rhat",
           "mse_init_ebm_final", "mse_neg_ebm_final", "mse_ebm_true_final",
           "log_density_error_final")


def aggregate(summaries: list[dict]) -> list[dict]:
    """One row per (target, sampler, α): each metric's per-seed values and mean ± sd."""
    groups: dict[tuple, list[dict]] = {}
    for s in summaries:
        groups.setdefault((s["target_name"], s["sampler"], s["alpha"]), []).append(s)
    order = {name: i for i, name in enumerate(TARGETS)}
    samplers = {"flowmc": 0, "ula": 1, "mala": 2, "nt": 3}
    table = []
    for (target, sampler, alpha), runs in sorted(
            groups.items(), key=lambda kv: (order[kv[0][0]], samplers[kv[0][1]], kv[0][2])):
        runs.sort(key=lambda s: s["seed"])
        row = {"target": target, "sampler": sampler, "alpha": alpha,
               "seeds": [s["seed"] for s in runs], "iterations": runs[0]["iterations"],
               "w_ebm": torch.tensor([s["w_ebm"] for s in runs]).mean(0).tolist(),
               "truth_weights": runs[0]["truth_weights"],
               "tilt_log_density_error": tilt_error(target, runs[0]["config"]["model"]["base_scale"])}
        for s in runs:  # the EBM's weights averaged over the evaluations, against the truth
            s["mse_avg_ebm_true"] = _mse(torch.tensor(s["w_ebm"]), torch.tensor(s["truth_weights"]))
        for key in METRICS:
            values = [s.get(key, math.nan) for s in runs]
            values = [math.nan if v is None else v for v in values]
            mean, sd = _mean_sd(values)
            row[key] = {"per_seed": values, "mean": mean, "sd": sd}
        table.append(row)
    return table


def tilt_error(target_name: str, base_scale: float) -> float:
    """The log-density error of the tilt λ = N(0, base_scale² I) alone (an EBM with E ≡ 0)."""
    target = RunConfig(target=target_name).make_target()
    base = torch.distributions.Independent(
        torch.distributions.Normal(torch.zeros(2), torch.full((2,), base_scale)), 1)
    return log_density_error(base.log_prob, target.log_prob, BOUNDS[target_name], N_GRID)


def _num(value: float, spec: str) -> str:
    return "–" if value is None or math.isnan(value) else format(value, spec)


def _ms(cell: dict, spec: str) -> str:
    return f"{_num(cell['mean'], spec)} ± {_num(cell['sd'], spec)}"


def markdown_tables(table: list[dict], config_note: str) -> str:
    out: list[str] = []
    four = [r for r in table if r["target"] == "four_modes"]
    if four:
        out += [f"### {TITLES['four_modes']}", "",
                "| method | α | (a) init vs EBM: paper | ours | (b) negatives vs EBM: paper | ours | "
                "(c) EBM vs truth: paper | ours | config |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in four:
            paper = PAPER_FOUR_MODES.get(r["sampler"], (math.nan,) * 3)
            cells = [f"{_num(p, '.2e')} | {_ms(r[key], '.2e')}" for p, key in
                     zip(paper, ("mse_init_ebm", "mse_neg_ebm", "mse_ebm_true"), strict=True)]
            out.append(f"| {LABELS[r['sampler']]} | {r['alpha']:g} | {' | '.join(cells)} | "
                       f"{config_note}, {r['iterations']:.0f} it. |")
        out += ["", "The same at the last evaluation only (the end of training), mean ± sd over seeds:",
                "", "| method | α | (a) init vs EBM | (b) negatives vs EBM | (c) EBM vs truth | "
                "config |", "|---|---|---|---|---|---|"]
        for r in four:
            out.append(f"| {LABELS[r['sampler']]} | {r['alpha']:g} | "
                       f"{_ms(r['mse_init_ebm_final'], '.2e')} | "
                       f"{_ms(r['mse_neg_ebm_final'], '.2e')} | "
                       f"{_ms(r['mse_ebm_true_final'], '.2e')} | "
                       f"{config_note}, {r['iterations']:.0f} it. |")
        out += ["", "All measures:", "",
                "| method | α | paper: init / neg / EBM | (a) init vs EBM | (b) negatives vs EBM | "
                "(c) EBM vs truth | EBM averaged over evaluations vs truth | init vs truth | "
                "negatives vs truth | "
                "flow vs EBM | EBM weights (mean of seeds) | log-density error | train time / run | "
                "config |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in four:
            paper = PAPER_FOUR_MODES.get(r["sampler"])
            paper = " / ".join(f"{v:.2e}" for v in paper) if paper else "–"
            weights = ", ".join(f"{w:.3f}" for w in r["w_ebm"])
            out.append(
                f"| {LABELS[r['sampler']]} | {r['alpha']:g} | {paper} | {_ms(r['mse_init_ebm'], '.2e')}"
                f" | {_ms(r['mse_neg_ebm'], '.2e')} | {_ms(r['mse_ebm_true'], '.2e')} | "
                f"{_ms(r['mse_avg_ebm_true'], '.2e')} | {_ms(r['mse_init_true'], '.2e')} | "
                f"{_ms(r['mse_neg_true'], '.2e')} | "
                f"{_ms(r['mse_flow_ebm'], '.2e')} | {weights} | "
                f"{_ms(r['log_density_error'], '.3f')} | {_num(r['train_time']['mean'], '.0f')} s | "
                f"{config_note}, {r['iterations']:.0f} it. |")
        out += ["", f"Reference: the tilt λ alone (E ≡ 0) has log-density error "
                f"{four[0]['tilt_log_density_error']:.3f}.", ""]
    for name in ("eight_gaussians", "rings"):
        rows = [r for r in table if r["target"] == name]
        if not rows:
            continue
        out += [f"### {TITLES[name]}", "",
                "| method | α | paper: log-density error | log-density error | per seed | "
                "at the end of training | "
                "mode-weight MSE, EBM vs truth | (a) init vs EBM | (b) negatives vs EBM | "
                "train time / run | config |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            paper = PAPER_LOG_DENSITY[name].get(r["sampler"])
            seeds = ", ".join(_num(v, ".3f") for v in r["log_density_error"]["per_seed"])
            out.append(
                f"| {LABELS[r['sampler']]} | {r['alpha']:g} | {_num(paper or math.nan, '.2f')} | "
                f"{_ms(r['log_density_error'], '.3f')} | {seeds} | "
                f"{_ms(r['log_density_error_final'], '.3f')} | {_ms(r['mse_ebm_true'], '.2e')}"
                f" | {_ms(r['mse_init_ebm'], '.2e')} | {_ms(r['mse_neg_ebm'], '.2e')} | "
                f"{_num(r['train_time']['mean'], '.0f')} s | {config_note}, "
                f"{r['iterations']:.0f} it. |")
        out += ["", f"Reference: the tilt λ alone (E ≡ 0) has log-density error "
                f"{rows[0]['tilt_log_density_error']:.3f}.", ""]
    seeds = max(len(r["seeds"]) for r in table)
    out.append(f"Mean ± sd over {seeds} seeds (data and trainer seeded together); each run's number "
               "is the mean of its evaluations over the last 25% of training. MSE: mean over modes "
               "of the squared weight difference. EBM weights: quadrature of the normalized "
               f"tilted density on a {N_GRID}² grid. Log-density error: median over the grid cells "
               "of the target's 99% highest-density region of the squared difference of the two "
               "log-densities, both normalized on the grid.")
    return "\n".join(out) + "\n"


def figures(out: Path, summaries: list[dict], alphas: dict[str, float],
            figures_dir: Path | None) -> None:
    """Landscapes of each target and each sampler's EBM (at its α) at the first seed."""
    groups: dict[str, list[dict]] = {}
    for s in summaries:
        if s["alpha"] == alphas.get(s["sampler"]):
            groups.setdefault(s["target_name"], []).append(s)
    samplers = {"flowmc": 0, "ula": 1, "mala": 2, "nt": 3}
    for name, runs in groups.items():
        seed = min(s["seed"] for s in runs)
        first = sorted((s for s in runs if s["seed"] == seed), key=lambda s: samplers[s["sampler"]])
        config = RunConfig.from_dict(first[0]["config"])
        target, data = make_data(config)
        panels, points = [(f"{name}: target", target.log_prob)], [None]
        for s in first:
            alpha = s["alpha"]
            run_dir = out / "runs" / name / run_name(s["sampler"], alpha, seed)
            trainer = JointTrainer.load(run_dir / "checkpoints" / "last.pt")
            panels.append((f"{LABELS[s['sampler']]}, α={alpha:g}, seed {seed}: "
                           f"log-dens. err. {s['log_density_error']:.2f}", trainer.log_prob))
            points.append(trainer.pool_)
        path = landscape_figure(panels, out / f"landscapes_{name}.png", data=data,
                                bounds=BOUNDS[name], points=points)
        if figures_dir is not None:
            figures_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, figures_dir / path.name)


def recheck(out: Path, summaries: list[dict], targets: list[str], n_chains: int) -> str:
    """Re-evaluate every finished run's final checkpoint with ``n_chains`` chains (cached per run
    in ``recheck_<n>.json``) and return a markdown table of (a), (b), (c) with their floors.

    With 4096 chains the sampling noise alone puts a floor of about 4e-5 under (b) on four modes
    (``mean_k w_k (1 − w_k) / n``); more chains lower it, so what is left is the negatives' bias.
    """
    rows: dict[tuple, list[dict]] = {}
    for s in summaries:
        if s["target_name"] not in targets:
            continue
        run_dir = out / "runs" / s["target_name"] / run_name(s["sampler"], s["alpha"], s["seed"])
        path = run_dir / f"recheck_{n_chains}.json"
        if path.exists():
            record = json.loads(path.read_text())
        else:
            trainer = JointTrainer.load(run_dir / "checkpoints" / "last.pt")
            target = RunConfig.from_dict(s["config"]).make_target()
            generator = torch.Generator().manual_seed(20_000 + s["seed"])
            record = evaluate(trainer, target, BOUNDS[s["target_name"]], n_chains, generator)
            record["pool_size"] = trainer.pool_.shape[0]
            write_json(path, record)
        rows.setdefault((s["target_name"], s["sampler"], s["alpha"]), []).append(record)
    lines = [f"The final model of every run, re-evaluated with {n_chains} chains (and flow draws);"
             " floor: the expected MSE of sampling alone, `mean_k w_k (1 − w_k) / n`, for the "
             "pool (a) and the chains (b). Mean ± sd over seeds.", "",
             "| target | method | α | (a) init vs EBM | floor (a) | (b) negatives vs EBM | "
             "floor (b) | (c) EBM vs truth | seeds |", "|---|---|---|---|---|---|---|---|---|"]
    for (name, sampler, alpha), records in rows.items():
        w = torch.tensor([r["w_ebm"] for r in records]).double().mean(0)
        spread = float((w * (1 - w)).mean())
        cells = []
        for key in ("mse_init_ebm", "mse_neg_ebm", "mse_ebm_true"):
            mean, sd = _mean_sd([r[key] for r in records])
            cells.append(f"{_num(mean, '.2e')} ± {_num(sd, '.2e')}")
        pool = records[0]["pool_size"] if sampler != "nt" else n_chains
        lines.append(f"| {name} | {LABELS[sampler]} | {alpha:g} | {cells[0]} | "
                     f"{spread / pool:.1e} | {cells[1]} | {spread / n_chains:.1e} | {cells[2]} | "
                     f"{len(records)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paper", action="store_true",
                        help="the paper's settings (configs/toys_<target>_paper.toml) instead of "
                             "the quick ones")
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    parser.add_argument("--samplers", nargs="+", default=["flowmc", "ula", "nt"])
    parser.add_argument("--alphas", nargs="+", default=[f"{k}={v:g}" for k, v in ALPHAS.items()],
                        metavar="SAMPLER=α",
                        help="energy L2 weight α per sampler (default: each at its best α of "
                             "examples/two_modes.py)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=0,
                        help="override the configs' length (0: keep it)")
    parser.add_argument("--evals", type=int, default=4, help="evaluations in the last 25%%")
    parser.add_argument("--eval-chains", type=int, default=4096,
                        help="chains (and flow draws) per evaluation")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any config field, dotted, TOML value (all runs)")
    parser.add_argument("--out", type=Path, default=None,
                        help="default out/toys_2d (out/toys_2d_paper with --paper)")
    parser.add_argument("--figures", type=Path, default=None,
                        help="also copy the landscape figures there (e.g. docs/figures/toys)")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--recheck-chains", type=int, default=0, metavar="N",
                        help="also re-evaluate each finished run's final model with N chains "
                             "(table in recheck.md; lowers the sampling floor of (a) and (b))")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    alphas = {**ALPHAS, **{k: float(v) for k, _, v in (a.partition("=") for a in args.alphas)}}
    out = args.out or Path("out/toys_2d_paper" if args.paper else "out/toys_2d")
    suffix = "_paper" if args.paper else ""

    summaries = []
    if args.report_only:
        for path in sorted(out.glob("runs/*/*/toys.json")):
            saved = json.loads(path.read_text())
            if "summary" in saved:
                summaries.append(summarize(saved["summary"], saved["evaluations"]))
    else:
        # Seed by seed, so a grid cut short still covers every target and sampler.
        for seed in args.seeds:
            for name in args.targets:
                config_path = HERE / "configs" / f"toys_{name}{suffix}.toml"
                for sampler in args.samplers:
                    alpha = alphas[sampler]
                    run_dir = out / "runs" / name / run_name(sampler, alpha, seed)
                    summaries.append(run_one(config_path, name, sampler, alpha, seed, run_dir,
                                             args))
    if not summaries:
        print("no finished runs", file=sys.stderr)
        return 1
    table = aggregate(summaries)
    note = "paper settings" if args.paper else "quick"
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", {"table": table, "runs": summaries})
    text = markdown_tables(table, note)
    (out / "table.md").write_text(text, encoding="utf-8")
    figures(out, summaries, alphas, args.figures)
    if args.recheck_chains:
        extra = recheck(out, summaries, args.targets, args.recheck_chains)
        (out / "recheck.md").write_text(extra, encoding="utf-8")
        text += "\n" + extra
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

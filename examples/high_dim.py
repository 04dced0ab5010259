"""flowMC-EBM, NT-EBM and ULA-PCD on the paper's 4-mode Gaussian mixture in d = 16, 32, 64.

Target: `HighDimMixture(d, weights)`: four unit-covariance Gaussians at ``±a·1`` and ``±a·s``
(``s`` flips the signs of the first ``d // 2`` coordinates), ``a = 0.591·sqrt(2 log d)`` as in
Grenioux, Moulines & Gabrié (2023); equal weights, and a variant with weights (0.1, 0.2, 0.3, 0.4).
Every method trains the same energy network, tilt, flow, pool and gradient budget; only the sampler
differs (`RunConfig.sampler`). Each seed fixes both the data and the trainer.

After training, each run is measured with the EBM frozen:

- **R̂**: the method's own kernel (the one it trained with, same step size and schedule) is run on
  the first ``n_chains`` (128) persistent chains, started from where training left them, for
  ``eval_iterations`` iterations' worth of MCMC (one draw kept per iteration's worth: 10 kernel
  moves); R̂ is ArviZ's rank-normalized split R̂ of each of the d coordinates over all those
  draws, and we report the largest over coordinates. NT-EBM's negatives are short-run chains
  restarted from the flow each iteration; its evaluation chains are continued latent-MALA chains
  from the last negatives. The R̂ of the pool during training (snapshots every ``log_every``
  iterations over the last quarter, a moving target) is kept beside it.
- **ESS/s**: ArviZ's bulk ESS of each coordinate of those evaluation chains over their wall time
  (min and median over coordinates).
- **Acceptance**: local (MALA) and global (flow) moves, over the last quarter of training.
- **The EBM's own mode weights**: self-normalized importance sampling with the trained flow as
  proposal (`diagnostics.importance_mode_weights`, delta-method SE, Pareto k̂), modes assigned by
  `target.assign`; and, as a second estimator, the evaluation chains' occupancy with an ESS-based
  SE (`diagnostics.mode_weights`), which is only right when the chains mixed.

Writes under ``--out`` (default ``out/high_dim``):

    runs/<variant>_d<d>_<sampler>_seed<s>/   `train_run` output plus eval.json (the numbers above)
    results.json                              every run and the aggregated rows
    table.md                                  the tables for docs/results_high_dim.md
    rhat_vs_dim.png, mode_weights.png         the figures (also copied to --figures-dir)

Finished runs are reused and killed ones resumed, so the script can be re-run at will.

Usage:
    python examples/high_dim.py                                  # quick grid (configs/high_dim.toml)
    python examples/high_dim.py --config examples/configs/high_dim_paper.toml --out out/high_dim_paper
    python examples/high_dim.py --dims 16 --seeds 0 --samplers flowmc   # one setting
    python examples/high_dim.py --report-only                    # re-aggregate finished runs
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import samplers
from flowmc_ebm import diagnostics
from flowmc_ebm.commands.train import train_run, write_json
from flowmc_ebm.config import load_config
from flowmc_ebm.targets import HighDimMixture

HERE = Path(__file__).resolve().parent
LABELS = {"flowmc": "flowMC-EBM", "ula": "ULA-PCD", "nt": "NT-EBM", "mala": "MALA-PCD"}
#: Max R̂ of 128 negative chains at the end of training, equal weights, d = 16 / 32 / 64
#: (Grenioux, Moulines & Gabrié 2023, high-dimensional Gaussian mixture).
PAPER_RHAT = {"flowmc": {16: 1.01, 32: 1.01, 64: 1.05}, "nt": {16: 2.02, 32: 2.50, 64: 3.10},
              "ula": {16: 7.30, 32: 9.29, 64: 90.9}}
UNEQUAL = (0.1, 0.2, 0.3, 0.4)
VARIANTS = {"equal": None, "unequal": UNEQUAL}
ORDER = ("flowmc", "nt", "ula", "mala")


def run_name(variant: str, dim: int, sampler: str, seed: int) -> str:
    return f"{variant}_d{dim}_{sampler}_seed{seed}"


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def steps_per_iteration(trainer) -> int:
    """Kernel steps of one training iteration (a FlowMC step is a whole local+global cycle)."""
    c = trainer.config
    return c.flowmc_cycles() if trainer.sampler == "flowmc" else c.mcmc_steps


def evaluate(trainer, target, seed: int, n_chains: int, eval_iterations: int,
             is_samples: int) -> dict:
    """Freeze the EBM; run its own kernel on ``n_chains`` persistent chains; R̂, ESS/s, weights."""
    spi = steps_per_iteration(trainer)
    n_chains = min(n_chains, trainer.pool_.shape[0])
    x0 = trainer.pool_[:n_chains].detach().clone()
    generator = torch.Generator(device=trainer.device).manual_seed(10_000 + seed)
    for p in (*trainer.energy.parameters(), *trainer.flow.parameters()):
        p.requires_grad_(False)
    trace = samplers.sample(trainer.kernel, x0, eval_iterations * spi, thin=spi, progress=False,
                            generator=generator)
    with warnings.catch_warnings():
        # ArviZ warns when there are more chains than draws; split R̂ is well defined there.
        warnings.simplefilter("ignore", UserWarning)
        mix = diagnostics.mixing(trace)
    truth = np.asarray(target.weights, dtype=float)
    occupancy = diagnostics.mode_weights(trace.samples, target.assign, n_modes=target.n_modes)
    start = time.perf_counter()
    importance = diagnostics.importance_mode_weights(trainer.log_prob, trainer.flow, target.assign,
                                                     is_samples, n_modes=target.n_modes,
                                                     seed=20_000 + seed, batch_size=4096)
    is_time = time.perf_counter() - start
    ess_s = np.asarray(mix.ess_per_second)
    occupied = int((np.bincount(target.assign(trace.samples[:, -1]).numpy(),
                                minlength=target.n_modes) > 0).sum())
    return {
        "n_chains": n_chains, "eval_draws": int(trace.samples.shape[1]),
        "eval_kernel_steps": eval_iterations * spi, "eval_wall_time": trace.wall_time,
        "max_rhat": _finite(mix.max_rhat), "min_ess_bulk": _finite(mix.min_ess_bulk),
        "min_ess_per_s": _finite(float(ess_s.min())),
        "median_ess_per_s": _finite(float(np.median(ess_s))),
        "eval_acceptance": {k: _finite(v) for k, v in mix.acceptance.items()},
        "modes_occupied_by_chains": occupied,
        "truth": truth.tolist(),
        "is_weights": importance.weights.tolist(), "is_se": importance.se.tolist(),
        "is_pareto_k": _finite(importance.pareto_k), "is_kish_ess": _finite(importance.weights_ess),
        "is_n": is_samples, "is_wall_time": is_time,
        "is_max_abs_error": float(np.abs(importance.weights - truth).max()),
        "is_tv": float(0.5 * np.abs(importance.weights - truth).sum()),
        "chain_weights": occupancy.weights.tolist(), "chain_se": occupancy.se.tolist(),
        "chain_max_abs_error": float(np.abs(occupancy.weights - truth).max()),
        "chain_tv": float(0.5 * np.abs(occupancy.weights - truth).sum()),
    }


def run_one(config_path: str, variant: str, dim: int, sampler: str, seed: int, run_dir: Path,
            iterations: int, n_chains: int, eval_iterations: int, is_samples: int) -> dict:
    """Train one run (or resume it), evaluate it once, and return its record."""
    done = run_dir / "eval.json"
    if done.exists():
        return json.loads(done.read_text())
    torch.set_num_threads(1)
    options = {"dim": dim} if VARIANTS[variant] is None else {"dim": dim,
                                                             "weights": list(VARIANTS[variant])}
    overrides = {"sampler": sampler, "trainer.seed": seed, "data_seed": seed,
                 "target": "high_dim", "target_options": options}
    if iterations:
        overrides["iterations"] = iterations
    config = load_config(config_path).replace(overrides)
    resume = (run_dir / "checkpoints" / "last.pt").exists()
    trainer, summary = train_run(config, run_dir, resume=resume, progress=False,
                                 snapshot_chains=n_chains)
    target = config.make_target()
    record = {
        "variant": variant, "dim": dim, "sampler": sampler, "seed": seed,
        "iterations": trainer.iteration_,
        "train_wall_time": trainer.history_["elapsed"][-1],
        "train_rhat_last_quarter": _finite(summary.get("rhat", math.nan)),
        "local_accept": _finite(summary["local_accept"]),
        "global_accept": _finite(summary["global_accept"]),
        **evaluate(trainer, target, seed, n_chains, eval_iterations, is_samples),
        "config": config.to_dict(),
    }
    write_json(done, record)
    print(f"{run_dir.name}: R-hat {record['max_rhat']:.3f} (train {record['train_rhat_last_quarter']}),"
          f" IS weights {np.round(record['is_weights'], 3).tolist()} (k {record['is_pareto_k']}),"
          f" global acc. {record['global_accept']}, {record['train_wall_time']:.0f} s", flush=True)
    return record


def stuck_rhat(dim: int, weights, n_chains: int, n_draws: int, seed: int = 0) -> float:
    """Max R̂ of chains each stuck in one mode of the true target but exact within it.

    Each chain's mode is drawn from the weights and its draws are independent from that mode's
    Gaussian: the R̂ of chains that never hop but are otherwise perfect, about ``sqrt(1 + a²)``
    per coordinate (between-chain variance ``a²``, within-chain variance 1).
    """
    target = HighDimMixture(dim, weights)
    g = torch.Generator().manual_seed(seed)
    modes = torch.multinomial(target.weights.double(), n_chains, replacement=True, generator=g)
    x = target.means[modes].double()[:, None, :] + torch.randn(n_chains, n_draws, dim,
                                                                generator=g, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return diagnostics.max_rhat(x.numpy())


def _mean_sd(values: list) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else math.nan)


STATS = ("max_rhat", "train_rhat_last_quarter", "is_max_abs_error", "is_tv", "chain_tv",
         "is_pareto_k", "min_ess_per_s", "median_ess_per_s", "local_accept", "global_accept",
         "train_wall_time", "eval_wall_time", "modes_occupied_by_chains")


def aggregate(records: list[dict]) -> list[dict]:
    """One row per (variant, d, sampler): mean and sd over seeds of every number."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["variant"], r["dim"], r["sampler"]), []).append(r)
    rows = []
    for (variant, dim, sampler), runs in sorted(
            groups.items(), key=lambda kv: (kv[0][0], kv[0][1], ORDER.index(kv[0][2]))):
        runs.sort(key=lambda r: r["seed"])
        row = {"variant": variant, "dim": dim, "sampler": sampler,
               "seeds": [r["seed"] for r in runs], "iterations": runs[0]["iterations"],
               "truth": runs[0]["truth"],
               "paper_rhat": PAPER_RHAT.get(sampler, {}).get(dim) if variant == "equal" else None}
        for key in STATS:
            values = [r.get(key) for r in runs]
            row[key] = values
            row[key + "_mean"], row[key + "_sd"] = _mean_sd(values)
        w = np.asarray([r["is_weights"] for r in runs])
        row["is_weights_mean"] = w.mean(0).tolist()
        row["is_weights_sd"] = (w.std(0, ddof=1) if len(runs) > 1 else np.full(4, np.nan)).tolist()
        row["is_se_mean"] = np.asarray([r["is_se"] for r in runs]).mean(0).tolist()
        row["stuck_rhat"] = stuck_rhat(dim, VARIANTS[variant], runs[0]["n_chains"],
                                       runs[0]["eval_draws"])
        rows.append(row)
    return rows


def _f(value: float, spec: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else format(value, spec)


def _pm(row: dict, key: str, spec: str) -> str:
    mean, sd = row[key + "_mean"], row[key + "_sd"]
    return _f(mean, spec) + ("" if sd is None or math.isnan(sd) else f" ± {_f(sd, spec)}")


def markdown_tables(rows: list[dict], records: list[dict], label: str) -> str:
    c = records[0]["config"]
    t = c["trainer"]
    config_line = (f"{rows[0]['iterations']} iterations, batch {t['batch_size']}, pool "
                   f"{t['pool_size']} = negatives {t['n_negatives']}, {t['mcmc_steps']} MCMC "
                   f"moves/iteration, step {t['step_size']:g}, lr {t['lr_energy']:g}/"
                   f"{t['lr_flow']:g}, n_data {c['n_data']}, flow {c['model']['flow_kind']} "
                   f"×{c['model']['flow_transforms']} {c['model']['flow_hidden']}, energy MLP "
                   f"{c['model']['energy_hidden']}, base σ {c['model']['base_scale']:g}")
    r0 = records[0]
    eval_line = (f"R̂: {r0['n_chains']} chains × {r0['eval_draws']} draws (one per iteration's worth "
                 f"of MCMC) of the method's own kernel on the frozen final EBM; max over the d "
                 f"coordinates. IS: {r0['is_n']} draws from the trained flow.")
    out = ["### Max R̂ of the negative chains, equal weights (paper | ours)", "",
           f"Config ({label}): {config_line}. {eval_line} Mean ± sd over seeds.", "",
           "| method | d | paper | ours: max R̂ (frozen EBM) | per seed | R̂ of the pool, last 25% of "
           "training | modes held by the chains | R̂ if every chain stuck in one exact mode | "
           "wall-clock train / run | config |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if row["variant"] != "equal":
            continue
        seeds = ", ".join(_f(v, ".2f") for v in row["max_rhat"])
        out.append(f"| {LABELS[row['sampler']]} | {row['dim']} | {_f(row['paper_rhat'], '.2f')} | "
                   f"{_pm(row, 'max_rhat', '.2f')} | {seeds} | "
                   f"{_pm(row, 'train_rhat_last_quarter', '.2f')} | "
                   f"{_pm(row, 'modes_occupied_by_chains', '.1f')} / 4 | "
                   f"{_f(row['stuck_rhat'], '.2f')} | {_pm(row, 'train_wall_time', '.0f')} s | "
                   f"{label}, {row['iterations']} it., {len(row['seeds'])} seeds |")
    out += ["", "### What the paper does not report: the EBM's mode weights, ESS/s, acceptance", "",
            "Mode-weight error of the EBM itself, by self-normalized importance sampling with the "
            "trained flow as proposal (TV = ½ Σ|ŵ − w|; k̂: Pareto shape of the log-weights, above "
            "0.7 the IS estimate is not to be trusted); and the evaluation chains' occupancy. "
            "ESS/s: bulk ESS per coordinate over the evaluation chains' wall-clock (min, median "
            "over coordinates). Acceptance: last quarter of training. Mean ± sd over seeds.", "",
            "| weights | method | d | EBM weights (IS), mean over seeds | TV (IS) | max \\|Δw\\| (IS) | "
            "IS SE (mean) | k̂ | TV (chains) | min ESS/s | median ESS/s | local acc. | global acc. |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        weights = "(" + ", ".join(f"{w:.3f}" for w in row["is_weights_mean"]) + ")"
        se = max(row["is_se_mean"])
        truth = "equal" if row["variant"] == "equal" else "(" + ", ".join(
            f"{w:g}" for w in row["truth"]) + ")"
        out.append(f"| {truth} | {LABELS[row['sampler']]} | {row['dim']} | {weights} | "
                   f"{_pm(row, 'is_tv', '.3f')} | {_pm(row, 'is_max_abs_error', '.3f')} | "
                   f"≤ {se:.3f} | {_pm(row, 'is_pareto_k', '.2f')} | {_pm(row, 'chain_tv', '.3f')} | "
                   f"{_pm(row, 'min_ess_per_s', '.3g')} | {_pm(row, 'median_ess_per_s', '.3g')} | "
                   f"{_pm(row, 'local_accept', '.2f')} | {_pm(row, 'global_accept', '.2f')} |")
    return "\n".join(out) + "\n"


def figures(rows: list[dict], records: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    colors = {"flowmc": "tab:blue", "nt": "tab:orange", "ula": "tab:red", "mala": "tab:green"}
    paths = []
    fig, ax = plt.subplots(figsize=(5.6, 4))
    for sampler in ORDER:
        sel = [r for r in rows if r["sampler"] == sampler and r["variant"] == "equal"]
        if not sel:
            continue
        dims = [r["dim"] for r in sel]
        ax.plot(dims, [r["max_rhat_mean"] for r in sel], "o-", color=colors[sampler],
                label=f"{LABELS[sampler]} (ours)")
        for r in records:
            if r["sampler"] == sampler and r["variant"] == "equal" and r["max_rhat"]:
                ax.scatter(r["dim"], r["max_rhat"], s=10, color=colors[sampler], alpha=0.5)
        paper = [PAPER_RHAT[sampler].get(d) for d in dims] if sampler in PAPER_RHAT else []
        if paper and all(p is not None for p in paper):
            ax.plot(dims, paper, "s--", color=colors[sampler], alpha=0.6,
                    label=f"{LABELS[sampler]} (paper)")
    ax.axhline(1.01, color="black", lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("dimension d")
    ax.set_ylabel("max R̂ over coordinates, 128 chains")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "rhat_vs_dim.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    panels = sorted({(r["variant"], r["dim"]) for r in rows}, key=lambda k: (k[0], k[1]))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), squeeze=False,
                             sharey=True)
    for ax, (variant, dim) in zip(axes[0], panels, strict=True):
        sel = [r for r in rows if r["variant"] == variant and r["dim"] == dim]
        width = 0.8 / max(len(sel), 1)
        for j, r in enumerate(sel):
            x = np.arange(4) + (j - (len(sel) - 1) / 2) * width
            # Bars: mean over seeds; whiskers: sd over seeds (clipped at 0 by the axis).
            ax.bar(x, r["is_weights_mean"], width, yerr=np.nan_to_num(r["is_weights_sd"]),
                   color=colors[r["sampler"]], label=LABELS[r["sampler"]], capsize=2)
        truth = sel[0]["truth"]
        for k, w in enumerate(truth):
            ax.hlines(w, k - 0.45, k + 0.45, color="black", ls="--", lw=1,
                      label="truth" if k == 0 else None)
        ax.set_xticks(range(4))
        ax.set_xticklabels(["+a·1", "−a·1", "+a·s", "−a·s"], fontsize=8)
        ax.set_title(f"{variant} weights, d={dim}", fontsize=9)
        ax.set_ylim(0, 1.05)
    axes[0][0].set_ylabel("EBM mode weight (IS with the flow)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "mode_weights.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=HERE / "configs" / "high_dim.toml")
    parser.add_argument("--dims", nargs="+", type=int, default=[16, 32, 64])
    parser.add_argument("--samplers", nargs="+", default=["flowmc", "nt", "ula"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--unequal-dims", nargs="*", type=int, default=[16],
                        help="dims of the (0.1, 0.2, 0.3, 0.4) variant (none: skip it)")
    parser.add_argument("--unequal-samplers", nargs="+", default=["flowmc", "ula"])
    parser.add_argument("--iterations", type=int, default=0,
                        help="override the config's length (0: keep it)")
    parser.add_argument("--chains", type=int, default=128, help="chains R̂ is computed on")
    parser.add_argument("--eval-iterations", type=int, default=100,
                        help="iterations' worth of MCMC run on the frozen EBM for R̂ and ESS")
    parser.add_argument("--is-samples", type=int, default=20_000, help="flow draws for IS weights")
    parser.add_argument("--out", type=Path, default=Path("out/high_dim"))
    parser.add_argument("--figures-dir", type=Path, default=None,
                        help="also copy the figures there (e.g. docs/figures/high_dim)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)

    jobs = [("equal", d, s, seed) for seed in args.seeds for d in args.dims for s in args.samplers]
    jobs += [("unequal", d, s, seed) for seed in args.seeds for d in args.unequal_dims
             for s in args.unequal_samplers]
    records = []
    if args.report_only:
        records = [json.loads(p.read_text()) for p in sorted(args.out.glob("runs/*/eval.json"))]
    else:
        for variant, dim, sampler, seed in jobs:
            run_dir = args.out / "runs" / run_name(variant, dim, sampler, seed)
            records.append(run_one(str(args.config), variant, dim, sampler, seed, run_dir,
                                   args.iterations, args.chains, args.eval_iterations,
                                   args.is_samples))
    if not records:
        print("no finished runs", file=sys.stderr)
        return 1
    rows = aggregate(records)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "results.json", {"table": rows, "runs": records})
    table = markdown_tables(rows, records, args.config.stem)
    (args.out / "table.md").write_text(table, encoding="utf-8")
    paths = figures(rows, records, args.out)
    if args.figures_dir is not None:
        args.figures_dir.mkdir(parents=True, exist_ok=True)
        for p in paths:
            shutil.copy(p, args.figures_dir / p.name)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Parallel tempering against MALA and FlowMC on multimodal mixtures they cannot mix from a broad start.

Targets: diagonal Gaussian mixtures with known weights (so the truth is exact), d from 2 to 50,
mode widths differing by 3× or more, narrow modes 8+ of their own standard deviations from where
chains settle, weights down to 0.05, one with 8 modes. Every method starts from the same broad
start ``N(0, 2² I)``.

- PT: ``ParallelTempering(log_prob, reference)`` with nothing else set; reference
  ``N(0, 10² I)``; 16 chains; ``warmup`` + ``steps`` steps.
- MALA: ``MALA(log_prob, 0.1)``, 256 chains, same steps.
- FlowMC: the README's settings (RealNVP with 4 transforms, ``n_local=2``, ``flow_lr=1e-2``),
  128 chains, 500 warm-up cycles (twice the README's) and 1000 cycles (each cycle: 2 MALA steps
  and one i-SIR move with 16 flow proposals), which keeps its wall time near PT's.

For each target and seed: the largest absolute mode-weight error of each method (modes assigned by
the largest component responsibility), wall time (warm-up included), and for PT the round trips
per chain per 1000 steps, the barrier Λ, K, and log Z ± SE (truth 0: every target is normalized).

``--coverage``: the ±2 SE interval of log Z over 50 groups of 8 independent ladders (one run per
dimension, one tuned schedule) on equal-width mixtures in d = 2 and 10, and |error|/SE in d = 50.

Writes JSON and figures under ``--out`` (default docs/figures/tempering).

Usage:
    nice -n 10 python examples/tempering_suite.py             # the suite (~20 min on 2 cores)
    nice -n 10 python examples/tempering_suite.py --coverage  # the log Z error-bar check
    python examples/tempering_suite.py --quick                # a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import zuko
from torch.distributions import Independent, Normal

import samplers


class DiagMixture:
    """``Σ_m w_m N(μ_m, diag(σ_m²))``, normalized (log Z = 0)."""

    def __init__(self, name, centers, sds, weights):
        self.name = name
        self.centers = torch.as_tensor(centers, dtype=torch.float32)
        self.sds = torch.as_tensor(sds, dtype=torch.float32)
        self.weights = torch.as_tensor(weights, dtype=torch.float32)
        self.weights = self.weights / self.weights.sum()
        self.dim = self.centers.shape[1]

    def component_log_prob(self, x):
        z = (x.unsqueeze(-2) - self.centers) / self.sds
        return (-0.5 * z.pow(2).sum(-1) - self.sds.log().sum(-1)
                - 0.5 * self.dim * math.log(2 * math.pi) + self.weights.log())

    def __call__(self, x):
        return torch.logsumexp(self.component_log_prob(x), -1)

    def assign(self, x):
        return self.component_log_prob(x).argmax(-1)

    def describe(self):
        widths = self.sds.min(1).values
        return {"name": self.name, "dim": self.dim, "modes": len(self.weights),
                "min_weight": round(float(self.weights.min()), 3),
                "width_ratio": round(float(self.sds.max() / self.sds.min()), 2),
                "narrow_coords": int((self.sds < self.sds.max(0).values).sum(1).max()),
                "min_mode_width": round(float(widths.min()), 3)}


def _place(d, coords):
    c = torch.zeros(len(coords), d)
    for i, row in enumerate(coords):
        c[i, : len(row)] = torch.tensor(row, dtype=torch.float32)
    return c


def _sds(d, spec):
    """``spec``: per mode ``(sd_narrow, n_narrow_coords)``; the other coordinates have sd 1."""
    s = torch.ones(len(spec), d)
    for i, (sd, k) in enumerate(spec):
        s[i, :k] = sd
    return s


def targets():
    axes8 = [[8 * (1 - 2 * (i % 2)) if j == i // 2 else 0 for j in range(4)] for i in range(8)]
    return [
        DiagMixture("two_2d", _place(2, [[-3, 0], [12, 0]]), _sds(2, [(1.0, 0), (0.25, 2)]),
                    [0.7, 0.3]),
        DiagMixture("three_4d", _place(4, [[6, 0], [-6, 0], [0, 8]]),
                    _sds(4, [(1.0, 0), (0.3, 4), (1 / 3, 4)]), [0.5, 0.3, 0.2]),
        DiagMixture("eight_6d", _place(6, axes8), _sds(6, [(1.0, 0), (0.3, 2)] * 4),
                    [0.25, 0.05, 0.2, 0.05, 0.15, 0.1, 0.1, 0.1]),
        DiagMixture("four_10d", _place(10, [[8, 0], [-8, 0], [0, 8], [0, -8]]),
                    _sds(10, [(1.0, 0), (0.3, 2), (0.3, 2), (1.0, 0)]), [0.4, 0.3, 0.25, 0.05]),
        DiagMixture("three_20d", _place(20, [[8, 0, 0], [-8, 0, 0], [0, 0, 8]]),
                    _sds(20, [(1.0, 0), (0.3, 3), (1.0, 0)]), [0.6, 0.35, 0.05]),
        DiagMixture("two_50d", _place(50, [[-6], [6]]), _sds(50, [(1.0, 0), (0.3, 2)]),
                    [0.8, 0.2]),
        # The case tempering along the geometric path is known to lose (Woodard, Schmidler & Huber
        # 2009): a mode narrower in *every* coordinate carries a weight ∝ (σ_narrow/σ_wide)^(d(1−β))
        # at inverse temperature β, so in d = 10 no replica below β ≈ 0.7 ever sees it.
        DiagMixture("iso_narrow_10d", _place(10, [[8, 0], [-8, 0], [0, 8]]),
                    _sds(10, [(1.0, 0), (0.3, 10), (0.5, 10)]), [0.5, 0.3, 0.2]),
    ]


def weight_error(target, samples):
    labels = target.assign(samples.reshape(-1, target.dim))
    w = torch.bincount(labels, minlength=len(target.weights)).double() / labels.numel()
    return float((w - target.weights.double()).abs().max()), w.tolist()


def reference(d):
    return Independent(Normal(torch.zeros(d), 10.0 * torch.ones(d)), 1)


def run_pt(target, seed, steps, warmup, chains=16, **options):
    g = torch.Generator().manual_seed(seed)
    x0 = 2.0 * torch.randn(chains, target.dim, generator=g)
    kernel = samplers.ParallelTempering(target, reference(target.dim), **options)
    t = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trace = samplers.sample(kernel, x0, steps, warmup=warmup, progress=False, generator=g)
        wall = time.perf_counter() - t
        log_z, se = kernel.log_normalizer()
    err, w = weight_error(target, trace.samples)
    is_z, is_se = kernel.importance_log_normalizer()
    basins = kernel.basins
    return {"err": err, "weights": w, "wall_s": wall, "round_trips_per_1000": kernel.round_trip_rate,
            "barrier": kernel.barrier, "K": kernel.n_replicas, "log_z": log_z, "log_z_se": se,
            "is_log_z": is_z, "is_log_z_se": is_se,
            "basins": None if basins is None else basins.n,
            "basin_weights": None if basins is None else basins.weights.tolist(),
            "warnings": [str(c.message) for c in caught if "parallel tempering" in str(c.message)],
            "betas": kernel.betas.tolist(), "swap_accept": kernel.swap_accept_rates().tolist(),
            "invalid": int(trace.stats["invalid"].sum())}, trace


def run_mala(target, seed, steps, warmup, chains=256):
    g = torch.Generator().manual_seed(seed)
    x0 = 2.0 * torch.randn(chains, target.dim, generator=g)
    t = time.perf_counter()
    trace = samplers.sample(samplers.MALA(target, 0.1), x0, steps, warmup=warmup, progress=False,
                            generator=g)
    err, w = weight_error(target, trace.samples)
    return {"err": err, "weights": w, "wall_s": time.perf_counter() - t}, trace


def run_flowmc(target, seed, steps, warmup, chains=128):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x0 = 2.0 * torch.randn(chains, target.dim, generator=g)
    kernel = samplers.FlowMC(target, zuko.flows.RealNVP(target.dim, transforms=4), n_local=2,
                             flow_lr=1e-2)
    t = time.perf_counter()
    trace = samplers.sample(kernel, x0, steps, warmup=warmup, progress=False, generator=g)
    err, w = weight_error(target, trace.samples)
    return {"err": err, "weights": w, "wall_s": time.perf_counter() - t}, trace


def suite(args):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, traces = [], {}
    # --pt-only: PT is rerun, MALA's and FlowMC's per-seed results are taken from --reuse (a
    # previous suite.json with the same settings for them).
    old = {r["name"]: r for r in json.loads(Path(args.reuse).read_text())} if args.pt_only else {}
    pt_options = {} if not args.fixed_reference else {"adapt_reference": False}
    for target in targets():
        if args.only and target.name not in args.only:
            continue
        steps = args.steps if target.dim <= 10 else int(1.5 * args.steps)
        row = {**target.describe(), "truth": target.weights.tolist(), "steps": steps,
               "warmup": args.warmup, "pt": [], "mala": [], "flowmc": []}
        for seed in range(args.seeds):
            pt, tr = run_pt(target, seed, steps, args.warmup, **pt_options)
            row["pt"].append(pt)
            if args.pt_only:
                ma, fm = old[target.name]["mala"][seed], old[target.name]["flowmc"][seed]
                trm = trf = None
            else:
                ma, trm = run_mala(target, seed, steps, args.warmup)
                fm, trf = run_flowmc(target, seed, args.flowmc_steps, args.flowmc_warmup)
            row["mala"].append(ma)
            row["flowmc"].append(fm)
            if seed == 0:
                traces[target.name] = (tr, trm, trf)
            print(f"{target.name} seed {seed}: PT err {pt['err']:.3f} ({pt['wall_s']:.0f} s, K={pt['K']}, "
                  f"Λ={pt['barrier']:.2f}, rt/1000={pt['round_trips_per_1000']:.1f}, "
                  f"log Z={pt['log_z']:.3f}±{pt['log_z_se']:.3f}, IS {pt['is_log_z']:.3f}, "
                  f"{len(pt['warnings'])} warnings) | MALA {ma['err']:.3f} | "
                  f"FlowMC {fm['err']:.3f}", flush=True)
        rows.append(row)
        (out / args.name).write_text(json.dumps(rows, indent=1))
    figures(rows, traces, out)
    print(table(rows))


def table(rows):
    lines = ["| target | d | modes | min w | width ratio | PT max err (3 seeds) | MALA | FlowMC | "
             "PT wall s | MALA s | FlowMC s | K | Λ | round trips /1000 | log Z ± SE |",
             "|" + "---|" * 15]
    for r in rows:
        pt = r["pt"]
        lines.append(
            f"| {r['name']} | {r['dim']} | {r['modes']} | {r['min_weight']} | {r['width_ratio']} | "
            f"{max(p['err'] for p in pt):.3f} | {max(p['err'] for p in r['mala']):.3f} | "
            f"{max(p['err'] for p in r['flowmc']):.3f} | {np.mean([p['wall_s'] for p in pt]):.0f} | "
            f"{np.mean([p['wall_s'] for p in r['mala']]):.0f} | "
            f"{np.mean([p['wall_s'] for p in r['flowmc']]):.0f} | {pt[0]['K']} | "
            f"{np.mean([p['barrier'] for p in pt]):.2f} | "
            f"{np.mean([p['round_trips_per_1000'] for p in pt]):.1f} | "
            f"{pt[0]['log_z']:.3f} ± {pt[0]['log_z_se']:.3f} |")
    return "\n".join(lines)


def figures(rows, traces, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(rows)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 3.2), squeeze=False)
    for ax, r in zip(axes[0], rows, strict=True):
        m = np.arange(r["modes"])
        width = 0.2
        ax.bar(m - 1.5 * width, r["truth"], width, label="truth", color="black")
        for j, (key, color) in enumerate([("pt", "tab:green"), ("mala", "tab:red"),
                                          ("flowmc", "tab:blue")]):
            ax.bar(m + (j - 0.5) * width, r[key][0]["weights"], width, label=key.upper() if key != "flowmc"
                   else "FlowMC", color=color)
        ax.set_title(f"{r['name']}", fontsize=9)
        ax.set_xlabel("mode")
        ax.set_xticks(m)
    axes[0][0].set_ylabel("mode weight (seed 0)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "mode_weights.png", dpi=120)
    plt.close(fig)

    labels = ["PT", "MALA", "FlowMC"]
    shown = [i for i in range(3) if traces[rows[0]["name"]][i] is not None]  # --pt-only: PT only
    fig, axes = plt.subplots(len(shown), n, figsize=(2.6 * n, 2.5 * len(shown)), squeeze=False)
    for col, r in enumerate(rows):
        for row_i, i in enumerate(shown):
            trace, label = traces[r["name"]][i], labels[i]
            ax = axes[row_i][col]
            x = trace.samples.reshape(-1, r["dim"])
            x = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:4000]]
            ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.3)
            ax.set_title(f"{r['name']}: {label}", fontsize=8)
            ax.set_xlabel("$x_1$", fontsize=8)
            ax.set_ylabel("$x_2$", fontsize=8)
            ax.set_xlim(-13, 13)
            ax.set_ylim(-13, 13)
    fig.tight_layout()
    fig.savefig(out / "draws.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for r in rows:
        p = r["pt"][0]
        ax.plot(np.arange(1, len(p["swap_accept"]) + 1) / len(p["swap_accept"]), p["swap_accept"],
                marker=".", label=f"{r['name']} (K={p['K']})")
    ax.set_xlabel("pair k / (K − 1)")
    ax.set_ylabel("swap acceptance after tuning")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "swap_acceptance.png", dpi=120)
    plt.close(fig)


def coverage(args):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    groups, per = 50, 8
    for d in args.dims:
        centers = _place(d, [[6, 0], [-6, 0], [0, 6]])
        target = DiagMixture(f"equal_{d}d", centers, torch.ones(3, d), [0.5, 0.3, 0.2])
        g = torch.Generator().manual_seed(100 + d)
        grouped = d < 50 or args.groups_50d
        n = groups * per if grouped else 16
        kernel = samplers.ParallelTempering(target, reference(d), **(
            {"adapt_reference": False} if args.fixed_reference else {}))
        t = time.perf_counter()
        samplers.sample(kernel, 2.0 * torch.randn(n, d, generator=g), args.steps,
                        warmup=args.warmup, progress=False, generator=g)
        wall = time.perf_counter() - t
        log_z, se = kernel.log_normalizer()
        is_z, is_se = kernel.importance_log_normalizer()
        res = {"chains": n, "K": kernel.n_replicas, "barrier": kernel.barrier, "wall_s": wall,
               "log_z": log_z, "se": se, "z": log_z / se, "is_log_z": is_z, "is_se": is_se,
               "fixed_reference": bool(args.fixed_reference)}
        if grouped:
            est = [kernel.log_normalizer(chains=slice(i * per, (i + 1) * per)) for i in range(groups)]
            z = np.array([e / s for e, s in est])
            res.update({"groups": groups, "chains_per_group": per,
                        "group_se_mean": float(np.mean([s for _, s in est])),
                        "group_error_sd": float(np.std([e for e, _ in est])),
                        "coverage_2se": float(np.mean(np.abs(z) <= 2)),
                        "max_abs_z": float(np.abs(z).max())})
        results[f"d{d}"] = res
        print(d, res, flush=True)
        name = "log_z_coverage_fixed_reference.json" if args.fixed_reference else "log_z_coverage.json"
        if args.dims != [2, 10, 50]:
            name = name.replace(".json", "_d" + "_".join(map(str, args.dims)) + ".json")
        (out / name).write_text(json.dumps(results, indent=1))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="docs/figures/tempering")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--warmup", type=int, default=1000)
    p.add_argument("--flowmc-steps", type=int, default=1000)
    p.add_argument("--flowmc-warmup", type=int, default=500)
    p.add_argument("--only", nargs="*")
    p.add_argument("--name", default="suite.json", help="the results file under --out")
    p.add_argument("--pt-only", action="store_true",
                   help="rerun PT only; MALA and FlowMC per-seed results from --reuse")
    p.add_argument("--reuse", default="docs/figures/tempering/suite.json")
    p.add_argument("--fixed-reference", action="store_true",
                   help="PT from the given reference only (adapt_reference=False): the old default")
    p.add_argument("--coverage", action="store_true")
    p.add_argument("--dims", type=int, nargs="+", default=[2, 10, 50],
                   help="--coverage: the dimensions (other than 2 10 50: its own file)")
    p.add_argument("--groups-50d", action="store_true",
                   help="--coverage: 50 groups of 8 ladders in d = 50 too (default there: one run "
                        "of 16 chains)")
    p.add_argument("--quick", action="store_true", help="one seed, few steps, two targets")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.quick:
        args.seeds, args.steps, args.warmup, args.flowmc_steps, args.flowmc_warmup = 1, 100, 100, 50, 50
        args.only = args.only or ["two_2d", "eight_6d"]
        args.out = args.out if args.out != "docs/figures/tempering" else "out/tempering_quick"
    (coverage if args.coverage else suite)(args)


if __name__ == "__main__":
    main()

"""numpyro models with symmetric modes, sampled by parallel tempering, FlowMC and MALA from torch, and
by numpyro's NUTS, side by side.

Three models, one command each; in every one a symmetry fixes the posterior mass of each mode, so a
sampler's mode weights can be checked against the truth:

- ``gmm``: a 1-D Gaussian mixture with exchangeable priors (K = 3 components, weights ~ Dirichlet(1),
  means iid N(0, 5²), one shared scale) on 90 generated points from three clusters. Relabelling the
  components leaves the posterior unchanged: K! = 6 modes (the orderings of the means), 1/6 each.
- ``sign``: y_j ~ N(θ_j², 0.5) for j = 1, 2 (θ_j ~ N(0, 3²)): the likelihood cannot tell θ_j from
  −θ_j, so the 4 sign patterns carry 1/4 each.
- ``iris``: the petal lengths of scikit-learn's iris (150 flowers), a 2-component mixture with
  exchangeable priors: 2 modes (which component holds the setosa cluster), 1/2 each.

Each sampler runs ``--chains`` chains from the same broad start (N(0, 2²) on numpyro's unconstrained
space); ``--seeds`` seeds. Reported: the largest mode-weight error (occupancy of the mode indicator),
the max R̂ over the unconstrained coordinates (ArviZ, rank-normalized split), the bulk ESS per second of
the mode indicators (the slowest one), and wall time (warm-up included; NUTS includes its compilation,
as a numpyro user pays it).

Run:
    .venv/bin/python examples/numpyro_models.py --model gmm
    .venv/bin/python examples/numpyro_models.py --model sign
    .venv/bin/python examples/numpyro_models.py --model iris
    .venv/bin/python examples/numpyro_models.py --model all --out docs/figures/numpyro   # the docs' table

Writes ``<out>/<model>.json`` and ``<out>/table.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

import samplers
from flowmc_ebm.flows import make_flow


def build(name: str):
    """(model, args, mode labeller on constrained draws, number of modes, description)."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    def mixture(y, k):
        w = numpyro.sample("w", dist.Dirichlet(jnp.ones(k)))
        mu = numpyro.sample("mu", dist.Normal(0.0, 5.0).expand([k]))
        sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
        numpyro.sample("y", dist.MixtureSameFamily(dist.Categorical(w), dist.Normal(mu, sigma)),
                       obs=y)

    if name == "gmm":
        rng = np.random.default_rng(0)
        y = np.concatenate([rng.normal(c, 0.7, 30) for c in (-4.0, 0.0, 4.0)])
        perms = {p: i for i, p in enumerate(itertools.permutations(range(3)))}

        def label(draws):
            order = np.argsort(draws["mu"], axis=-1)
            return np.vectorize(lambda a, b, c: perms[(a, b, c)])(order[..., 0], order[..., 1],
                                                                  order[..., 2])

        return mixture, (y, 3), label, 6, "1-D mixture, K=3, 90 generated points: 6 modes, 1/6 each"
    if name == "sign":
        def sign(y):
            theta = numpyro.sample("theta", dist.Normal(0.0, 3.0).expand([2]))
            numpyro.sample("y", dist.Normal(theta**2, 0.5), obs=y)

        def label(draws):
            t = draws["theta"]
            return (t[..., 0] > 0).astype(int) * 2 + (t[..., 1] > 0).astype(int)

        return sign, (np.array([4.0, 2.25]),), label, 4, "y ~ N(theta^2, 0.5), d=2: 4 modes, 1/4 each"
    if name == "iris":
        from sklearn.datasets import load_iris

        y = load_iris().data[:, 2]  # petal length (cm)

        def label(draws):
            return (draws["mu"][..., 0] > draws["mu"][..., 1]).astype(int)

        return mixture, (y, 2), label, 2, "iris petal length, K=2 mixture: 2 modes, 1/2 each"
    raise ValueError(f"unknown model {name!r}; expected gmm, sign, iris or all")


def summarize(trace, target, label, k, wall):
    import arviz as az

    draws = target.constrain(trace.samples)
    labels = label(draws)  # (chains, draws)
    indicators = (labels[..., None] == np.arange(k)).astype(np.float64)
    weights = indicators.mean((0, 1))
    ess = [float(az.ess(indicators[..., j])) if indicators[..., j].std() > 0 else float("nan")
           for j in range(k)]
    rhat = float(np.nanmax(az.rhat(az.convert_to_dataset(np.asarray(trace.samples)))["x"].values))
    return {"weights": weights.round(4).tolist(), "max_weight_error": float(np.abs(weights - 1 / k).max()),
            "modes_visited": int((weights > 0).sum()), "max_rhat": rhat,
            "min_indicator_ess_per_s": (min(ess) / wall) if all(math.isfinite(e) for e in ess) else 0.0,
            "wall_s": wall}


def run(name: str, seeds: list[int], chains: int, steps: int, warmup: int,
        methods: tuple[str, ...] = ("PT", "FlowMC", "MALA", "NUTS")):
    from flowmc_ebm.interop.numpyro import NumpyroTarget, nuts_reference

    model, args, label, k, about = build(name)
    target = NumpyroTarget(model, *args)
    d = target.dim
    rows = []
    for seed in seeds:
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        x0 = 2.0 * torch.randn(chains, d, generator=g)
        reference = torch.distributions.Independent(
            torch.distributions.Normal(torch.zeros(d), 2.0 * torch.ones(d)), 1)
        kernels = {
            "PT": lambda reference=reference: samplers.ParallelTempering(target, reference),
            "FlowMC": lambda: samplers.FlowMC(target, make_flow(d), n_local=4, local_step_size=0.05),
            "MALA": lambda: samplers.MALA(target, 0.05),
        }
        for method, make in kernels.items():
            if method not in methods:
                continue
            start = time.perf_counter()
            trace = samplers.sample(make(), x0, steps, warmup=warmup, generator=g, progress=False)
            row = summarize(trace, target, label, k, time.perf_counter() - start)
            rows.append({"model": name, "method": method, "seed": seed, **row})
            print(json.dumps(rows[-1]))
        if "NUTS" not in methods:
            continue
        start = time.perf_counter()
        trace = nuts_reference(target, x0, num_warmup=warmup, num_samples=steps, seed=seed)
        row = summarize(trace, target, label, k, time.perf_counter() - start)
        rows.append({"model": name, "method": "NUTS (numpyro)", "seed": seed, **row})
        print(json.dumps(rows[-1]))
    return {"model": name, "about": about, "dim": d, "modes": k, "chains": chains, "steps": steps,
            "warmup": warmup, "rows": rows}


def table(results) -> str:
    lines = ["| model | method | max weight error (per seed) | modes visited | max R̂ | "
             "min indicator ESS/s | wall s |", "|---|---|---|---|---|---|---|"]
    for res in results:
        for method in dict.fromkeys(r["method"] for r in res["rows"]):
            rs = [r for r in res["rows"] if r["method"] == method]
            err = " / ".join(f"{r['max_weight_error']:.3f}" for r in rs)
            lines.append(
                f"| {res['model']} (d={res['dim']}, {res['modes']} modes) | {method} | {err} | "
                f"{' / '.join(str(r['modes_visited']) for r in rs)} | "
                f"{max(r['max_rhat'] for r in rs):.2f} | "
                f"{np.mean([r['min_indicator_ess_per_s'] for r in rs]):.1f} | "
                f"{np.mean([r['wall_s'] for r in rs]):.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gmm", choices=["gmm", "sign", "iris", "all"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--chains", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2000, help="kept steps per chain")
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--out", default="out/numpyro")
    parser.add_argument("--methods", nargs="+", default=["PT", "FlowMC", "MALA", "NUTS"],
                        choices=["PT", "FlowMC", "MALA", "NUTS"],
                        help="a subset (PT runs first, so its draws do not depend on the others)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = ["gmm", "sign", "iris"] if args.model == "all" else [args.model]
    results = []
    for name in names:
        res = run(name, args.seeds, args.chains, args.steps, args.warmup, tuple(args.methods))
        (out / f"{name}.json").write_text(json.dumps(res, indent=1))
        results.append(res)
    text = table(results)
    (out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

"""Overhead of the numpyro bridge: one `NumpyroTarget` call from torch (value and gradient, through
DLPack and the autograd Function) against the jitted JAX call alone, batch 1 to 4096.

Both sides compute the same thing: the value and gradient of the log density for the batch. The JAX
side is the compiled ``vmap(value_and_grad)`` on a JAX array (``block_until_ready``); the torch side is
what a kernel does, ``target(x)`` with ``x.requires_grad_()`` and ``torch.autograd.grad``. Timings are
medians over interleaved repeats (the two are measured alternately, so a busy machine slows both).

Run: ``.venv/bin/python bench/numpyro_bridge.py --out bench/results``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def model_logistic(X, y):
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    scale = numpyro.sample("scale", dist.HalfCauchy(1.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, scale).expand([X.shape[1]]))
    numpyro.sample("y", dist.Bernoulli(logits=jnp.asarray(X) @ beta), obs=y)


def measure(target, batch: int, repeats: int) -> dict:
    import jax

    x = torch.randn(batch, target.dim, generator=torch.Generator().manual_seed(batch))
    xj = jax.numpy.asarray(x.numpy())

    def jax_call():
        value, grad = target._value_and_grad(xj)
        jax.block_until_ready(grad)

    def torch_call():
        xt = x.clone().requires_grad_(True)
        lp = target(xt)
        torch.autograd.grad(lp.sum(), xt)

    for f in (jax_call, torch_call):  # compile / warm
        f()
        f()
    inner = max(1, int(2000 / max(batch, 1) ** 0.5))
    t_jax, t_torch = [], []
    for _ in range(repeats):
        for f, store in ((jax_call, t_jax), (torch_call, t_torch)):
            start = time.perf_counter()
            for _ in range(inner):
                f()
            store.append((time.perf_counter() - start) / inner)
    jax_s, torch_s = statistics.median(t_jax), statistics.median(t_torch)
    return {"batch": batch, "jax_us": jax_s * 1e6, "bridge_us": torch_s * 1e6,
            "ratio": torch_s / jax_s, "overhead_us": (torch_s - jax_s) * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 256, 1024, 4096])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--features", type=int, default=30)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    from sklearn.datasets import load_breast_cancer

    from flowmc_ebm.interop.numpyro import NumpyroTarget

    data = load_breast_cancer()
    X = data.data[:, :args.features]
    X = (X - X.mean(0)) / X.std(0)
    target = NumpyroTarget(model_logistic, X, data.target)
    rows = [measure(target, b, args.repeats) for b in args.batches]
    for r in rows:
        print(f"batch {r['batch']:5d}: JAX {r['jax_us']:9.1f} us, bridge {r['bridge_us']:9.1f} us, "
              f"ratio {r['ratio']:.2f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "numpyro_bridge", "model": f"logistic regression, breast cancer, "
              f"{X.shape[0]} points, dim {target.dim}", "torch_threads": torch.get_num_threads(),
              "rows": rows}
    (out / "numpyro_bridge.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""flowMC (JAX)'s production step, timed per step, for `bench/sampler_step.py` (issue #19).

Runs in the bench venv (``.venv-bench/bin/python bench/peers/flowmc_step.py --chains 64 --dims 2``)
and prints one JSON line per (chains, dim). flowMC 0.6's ``RQSpline_MALA_Bundle`` with its library
defaults, but ``n_local_steps = n_global_steps = --steps``, one short training loop (one epoch)
and ``--loops`` production loops, on the bench's quartic target. Each production strategy call
(``local_stepper``: ``--steps`` MALA steps; ``global_stepper``: ``--steps`` flow moves) is timed
with ``jax.block_until_ready`` on the sampler's resources; the first production loop (which
compiles the production buffers' shapes) is dropped, the median over the others is reported, per
step. ``cycle_ms`` = 2 local + 1 global step, the composition of our FlowMC's step in the bench
(2 MALA steps + 1 global move), so the two are comparable step for step. Single CPU thread when
run with ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def measure(chains: int, dim: int, steps: int, loops: int, seed: int = 0) -> dict:
    import jax
    import jax.numpy as jnp
    from flowMC.resource_strategy_bundle.RQSpline_MALA import RQSpline_MALA_Bundle
    from flowMC.Sampler import Sampler

    def log_prob(x, data):
        return -0.5 * jnp.sum(x**2) - 0.1 * jnp.sum(x**4)

    key, flow_key = jax.random.split(jax.random.PRNGKey(seed))
    bundle = RQSpline_MALA_Bundle(flow_key, chains, dim, log_prob, n_local_steps=steps,
                                  n_global_steps=steps, n_training_loops=1,
                                  n_production_loops=loops, n_epochs=1)
    sampler = Sampler(n_dim=dim, n_chains=chains, rng_key=key,
                      resource_strategy_bundles=bundle, checkpoint_interval=0)
    times: dict[str, list[float]] = {"local_stepper": [], "global_stepper": []}
    production = {"seen": False}

    def timed(name, strategy):
        def call(rng_key, resources, last_step, data):
            start = time.perf_counter()
            out = strategy(rng_key, resources, last_step, data)
            jax.block_until_ready([r.data for r in out[1].values() if hasattr(r, "data")
                                   and isinstance(r.data, jax.Array)])
            if production["seen"]:
                times[name].append(time.perf_counter() - start)
            return out
        return call

    def mark(strategy):
        def call(*args):
            production["seen"] = True
            return strategy(*args)
        return call

    for name in times:
        sampler.strategies[name] = timed(name, sampler.strategies[name])
    sampler.strategies["update_state"] = mark(sampler.strategies["update_state"])
    x0 = jax.random.normal(jax.random.PRNGKey(seed + 1), (chains, dim))
    start = time.perf_counter()
    sampler.sample(x0, {})
    total = time.perf_counter() - start
    local = [t / steps for t in times["local_stepper"][1:]]
    globl = [t / steps for t in times["global_stepper"][1:]]
    local_ms, global_ms = 1e3 * statistics.median(local), 1e3 * statistics.median(globl)
    return {"peer": "flowMC (JAX)", "chains": chains, "dim": dim, "steps_per_call": steps,
            "production_loops_timed": len(local), "local_ms": local_ms, "global_ms": global_ms,
            "cycle_ms": 2 * local_ms + global_ms, "run_s": total,
            "jax": jax.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, nargs="+", default=[64, 4096])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 64])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--loops", type=int, default=4)
    args = parser.parse_args()
    import flowMC

    for dim in args.dims:
        for chains in args.chains:
            row = measure(chains, dim, args.steps, args.loops)
            row["flowMC"] = getattr(flowMC, "__version__", "unknown")
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

"""flowMC (the JAX package, PyPI ``flowmc``): its RQSpline + MALA bundle, the algorithm of
Gabrié, Rotskoff & Vanden-Eijnden (2022) that our FlowMC also implements.

Evaluations per chain and loop, read from flowMC 0.6's source: a MALA step computes the target's
value and gradient at the current point *and* at the proposal (it does not cache the former), so
``n_local_steps`` MALA steps cost ``2 n_local_steps`` gradient evaluations; each stepper also
evaluates the target once, without gradient, at its starting points; the flow move evaluates it
without gradient at its ``n_global_steps`` proposals. Training the flow evaluates the flow only.
The run is ``n_training_loops`` loops (MALA, step-size adaptation, flow training, flow moves)
then ``n_production_loops`` loops whose local and global steps all are kept as draws.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from bench.peers.base import Problem, Run
from bench.peers.jax_mixture import jax_log_prob


@dataclass(frozen=True)
class FlowMCJaxConfig:
    """flowMC's bundle settings: its defaults but the flow's width (ours: 64), and minibatches of
    1000 (its default 10000 would give one optimizer step per epoch on our chains)."""

    # Total loops: budget / 75, between 10 and 40. Fewer, longer loops train the flow too rarely
    # (at budget 1500, 10 loops left d = 16 unmixed, R-hat 1.40; 20 loops gave 1.07); more loops
    # cost more training rounds, a second or two each on one CPU thread. A learning rate of 1e-2
    # mixed worse than the default 1e-3 (R-hat 1.85 and 1.24 at 10 and 20 loops).
    loops_per_gradient: float = 1 / 75
    min_loops: int = 10
    max_loops: int = 40
    n_epochs: int = 5
    batch_size: int = 1000
    learning_rate: float = 1e-3
    hidden: tuple[int, ...] = (64, 64)
    n_layers: int = 4
    n_bins: int = 8


def unavailable() -> str | None:
    """Why this peer cannot run here, or None."""
    try:
        import flowMC  # noqa: F401
    except ImportError as error:
        return f"flowMC not importable: {error} (pip install flowmc; see bench/README.md)"
    return None


def run_flowmc_jax(problem: Problem, config: FlowMCJaxConfig = FlowMCJaxConfig()) -> Run:
    """flowMC's ``RQSpline_MALA_Bundle`` with ``n_local_steps == n_global_steps``."""
    import jax
    import jax.numpy as jnp
    from flowMC.resource_strategy_bundle.RQSpline_MALA import RQSpline_MALA_Bundle
    from flowMC.Sampler import Sampler

    log_prob = jax_log_prob(problem.target)
    loops = min(config.max_loops,
                max(config.min_loops, round(problem.budget * config.loops_per_gradient)))
    steps = problem.budget // (2 * loops)
    training = max(1, round(loops * problem.warmup_fraction))
    production = loops - training
    key, flow_key = jax.random.split(jax.random.PRNGKey(problem.seed))
    start = time.perf_counter()
    bundle = RQSpline_MALA_Bundle(
        flow_key, problem.chains, problem.dim, lambda x, data: log_prob(x),
        n_local_steps=steps, n_global_steps=steps, n_training_loops=training,
        n_production_loops=production, n_epochs=config.n_epochs, batch_size=config.batch_size,
        learning_rate=config.learning_rate, rq_spline_hidden_units=config.hidden,
        rq_spline_n_layers=config.n_layers, rq_spline_n_bins=config.n_bins)
    # checkpoint_interval=0: no checkpoint files, hence no persistent compilation cache that a
    # later run could reuse; every run compiles from scratch, as a user's first run does.
    sampler = Sampler(n_dim=problem.dim, n_chains=problem.chains, rng_key=key,
                      resource_strategy_bundles=bundle, checkpoint_interval=0)
    sampler.sample(jnp.asarray(problem.x0.numpy()), {})
    samples = np.asarray(sampler.resources["positions_production"].data)
    wall = time.perf_counter() - start
    global_acc = np.asarray(sampler.resources["global_accs_production"].data)
    local_acc = np.asarray(sampler.resources["local_accs_production"].data)
    config_out = {**asdict(config), "n_local_steps": steps, "n_global_steps": steps,
                  "n_training_loops": training, "n_production_loops": production,
                  "chains": problem.chains,
                  # The buffers hold -inf where the other stepper wrote its draw.
                  "global_accept": float(global_acc[np.isfinite(global_acc)].mean()),
                  "local_accept": float(local_acc[np.isfinite(local_acc)].mean())}
    return Run("flowMC (JAX)", samples, 2 * steps * loops, (2 + steps) * loops, wall, None,
               config_out, ["a MALA step costs 2 gradient evaluations in flowMC 0.6"])


@dataclass(frozen=True)
class FlowMCJaxDefaults:
    """The arguments ``RQSpline_MALA_Bundle`` requires (it has no default for these); every
    other argument is left at flowMC's default (RQ spline 4 layers of (32, 32), 8 bins, Adam 1e-3,
    minibatches of 10 000, at most 10 000 training examples, MALA step 0.1 adapted per dimension).
    100 + 100 steps per loop as in flowMC's examples; 100 production loops give 20 000 draws per
    chain (flowMC keeps every local and every global step)."""

    n_local_steps: int = 100
    n_global_steps: int = 100
    n_training_loops: int = 20
    n_production_loops: int = 100
    n_epochs: int = 20


def run_flowmc_jax_defaults(problem: Problem,
                            config: FlowMCJaxDefaults = FlowMCJaxDefaults()) -> Run:
    """flowMC's bundle at its defaults; JAX compilation measured by `bench.peers.jax_clock`
    (``config["compile_s"]``). flowMC runs training and production inside one call, so the
    production phase's own time is not visible from outside: ``sample_s`` is None."""
    import jax
    import jax.numpy as jnp
    from flowMC.resource_strategy_bundle.RQSpline_MALA import RQSpline_MALA_Bundle
    from flowMC.Sampler import Sampler

    from bench.peers.jax_clock import compile_clock

    log_prob = jax_log_prob(problem.target)
    key, flow_key = jax.random.split(jax.random.PRNGKey(problem.seed))
    with compile_clock() as clock:
        start = time.perf_counter()
        bundle = RQSpline_MALA_Bundle(flow_key, problem.chains, problem.dim,
                                      lambda x, data: log_prob(x), **asdict(config))
        sampler = Sampler(n_dim=problem.dim, n_chains=problem.chains, rng_key=key,
                          resource_strategy_bundles=bundle, checkpoint_interval=0)
        sampler.sample(jnp.asarray(problem.x0.numpy()), {})
        samples = np.asarray(sampler.resources["positions_production"].data)
        wall = time.perf_counter() - start
    global_acc = np.asarray(sampler.resources["global_accs_production"].data)
    local_acc = np.asarray(sampler.resources["local_accs_production"].data)
    loops = config.n_training_loops + config.n_production_loops
    out = {**asdict(config), "chains": problem.chains, "compile_s": clock.seconds,
           "global_accept": float(global_acc[np.isfinite(global_acc)].mean()),
           "local_accept": float(local_acc[np.isfinite(local_acc)].mean())}
    return Run("flowMC (JAX)", samples, 2 * config.n_local_steps * loops,
               (2 + config.n_global_steps) * loops, wall, None, out,
               ["library defaults; a MALA step costs 2 gradient evaluations in flowMC 0.6"])

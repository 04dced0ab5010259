"""flowMC's parallel-tempering bundle (``RQSpline_MALA_PT_Bundle``, flowMC 0.6.4), a tempering peer
of `bench.tempering_peers` (issue #12).

What the bundle does, read from flowMC 0.6.4's source: every loop runs (1) its ``ParallelTempering``
strategy: each chain's ladder of ``n_temperatures`` replicas of ``target^(1/T)``, ``T`` from 1 to
``max_temperature`` (defaults 5 and 5.0; with the default ``logprior = 0`` the path is the target
tempered, not a path from a reference), takes ``n_tempered_steps`` MALA steps per replica, then one
sweep of sequential swaps between neighbours; the T = 1 replica goes on as the chain; (2)
``n_local_steps`` MALA steps, (3) during training: step-size adaptation, flow training, then (4)
``n_global_steps`` flow proposals. The tempered replicas and the temperatures (adapted from the
swap rates) are updated during training only; in production each loop restarts the tempered
replicas from where training left them. flowMC gives no normalizing constant.

Settings: the library's defaults (5 temperatures up to T = 5, ``n_tempered_steps = n_local_steps``,
RQSpline flow (32, 32) hidden units, learning rate 1e-3, step-size adaptation on) but what the
bundle requires (``n_local_steps = n_global_steps``, loops, ``n_epochs = 5``) and the minibatch,
1000 as in `bench.peers.flowmc_jax` (its default 10000 would give one optimizer step per epoch on
our chains). Loops: 10, half training, the fewest of `bench.peers.flowmc_jax`'s rule (per-chain
budget / 75 between 10 and 40), for wall time: flowMC 0.6.4's PT strategy wraps its step in a
fresh ``eqx.filter_jit`` at every call (not profiled further); a 4-chain, 4-loop run took 115 s on
the loaded machine, and with 40 loops the first target and seed (all five methods) had not finished
after 10 minutes.

Target evaluations per chain and loop, derived from the source (a value or value+gradient counts
one) and checked against a ``jax.debug.callback`` counter on a small run (`count_check`):
PT ``T (1 + 2 s) + T`` (MALA evaluates value and gradient at the current point and at the
proposal; the swap sweep evaluates every replica once), local ``1 + 2 s``, global ``1 + s``
(one at the start, one per flow proposal); ``s`` = steps per stepper.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bench.peers.base import Run

LABEL = "flowMC PT bundle (JAX)"


@dataclass(frozen=True)
class FlowMCPTConfig:
    chains: int = 128
    loops_per_eval: float = 1 / 75  # loops per per-chain target evaluation, clamped below
    min_loops: int = 10
    max_loops: int = 10  # every loop recompiles (see above)
    n_epochs: int = 5
    batch_size: int = 1000
    n_temperatures: int = 5  # flowMC's default
    max_temperature: float = 5.0  # flowMC's default


def unavailable() -> str | None:
    """Why this peer cannot run here, or None."""
    try:
        from flowMC.resource_strategy_bundle.RQSpline_MALA_PT import RQSpline_MALA_PT_Bundle  # noqa: F401
    except ImportError as error:
        return f"flowMC's RQSpline_MALA_PT_Bundle not importable: {error}"
    return None


def evals_per_loop(steps: int, temps: int) -> int:
    """Target evaluations per chain in one loop (PT + local + global steppers)."""
    return temps * (1 + 2 * steps) + temps + (1 + 2 * steps) + (1 + steps)


def plan(budget_per_chain: int, config: FlowMCPTConfig) -> tuple[int, int, int]:
    """``(training loops, production loops, steps per stepper)`` within the budget."""
    loops = min(config.max_loops,
                max(config.min_loops, round(budget_per_chain * config.loops_per_eval)))
    t = config.n_temperatures
    steps = max(1, (budget_per_chain // loops - (2 * t + 2)) // (2 * t + 3))
    training = max(1, loops // 2)
    return training, loops - training, steps


def _run(target, x0: np.ndarray, seed: int, training: int, production: int, steps: int,
         config: FlowMCPTConfig, counter=None):
    import jax
    import jax.numpy as jnp
    from flowMC.resource_strategy_bundle.RQSpline_MALA_PT import RQSpline_MALA_PT_Bundle
    from flowMC.Sampler import Sampler

    from bench.peers.blackjax_smc import jax_diag_mixture

    log_prob = jax_diag_mixture(target, counter)
    chains, dim = x0.shape
    key, flow_key = jax.random.split(jax.random.PRNGKey(seed))
    bundle = RQSpline_MALA_PT_Bundle(
        flow_key, chains, dim, lambda x, data: log_prob(x), n_local_steps=steps,
        n_global_steps=steps, n_training_loops=training, n_production_loops=production,
        n_epochs=config.n_epochs, batch_size=config.batch_size,
        n_temperatures=config.n_temperatures, max_temperature=config.max_temperature)
    # checkpoint_interval=0: no checkpoint files, hence no persistent compilation cache.
    sampler = Sampler(n_dim=dim, n_chains=chains, rng_key=key, resource_strategy_bundles=bundle,
                      checkpoint_interval=0)
    sampler.sample(jnp.asarray(x0), {})
    return sampler


def count_check(target, seed: int = 0) -> dict[str, int]:
    """Counted against derived evaluations on a small run (4 chains, 2 + 2 loops, 3 steps)."""
    import numpy as np

    from bench.peers.blackjax_smc import _Counter

    config = FlowMCPTConfig(chains=4)
    counter = _Counter(target.dim)
    x0 = 2.0 * np.random.default_rng(seed).standard_normal((4, target.dim)).astype(np.float32)
    _run(target, x0, seed, 2, 2, 3, config, counter)
    return {"counted": counter.n, "derived": 4 * 4 * evals_per_loop(3, config.n_temperatures)}


def run_flowmc_pt(target, x0: np.ndarray, budget: int, seed: int,
                  config: FlowMCPTConfig = FlowMCPTConfig()) -> tuple[Run, dict[str, Any]]:
    """The bundle from ``x0`` ``(chains, dim)`` within ``budget`` target evaluations in all."""
    chains = x0.shape[0]
    training, production, steps = plan(budget // chains, config)
    start = time.perf_counter()
    sampler = _run(target, x0.astype(np.float32), seed, training, production, steps, config)
    samples = np.asarray(sampler.resources["positions_production"].data)
    wall = time.perf_counter() - start
    temps = np.asarray(sampler.resources["temperatures"].data)
    global_acc = np.asarray(sampler.resources["global_accs_production"].data)
    local_acc = np.asarray(sampler.resources["local_accs_production"].data)
    evals = chains * (training + production) * evals_per_loop(steps, config.n_temperatures)
    run = Run(LABEL, samples, 0.0, float(evals), wall, None,
              {**asdict(config), "chains": chains, "n_training_loops": training,
               "n_production_loops": production, "n_local_steps": steps, "n_global_steps": steps,
               "n_tempered_steps": steps, "final_temperatures": temps.tolist(),
               # The buffers hold -inf where the other stepper wrote its draw.
               "global_accept": float(global_acc[np.isfinite(global_acc)].mean()),
               "local_accept": float(local_acc[np.isfinite(local_acc)].mean())},
              ["target evaluations derived from flowMC 0.6.4's source (checked by count_check)",
               "draws: the production loops' local and global steps of the T = 1 replicas",
               "path: target^(1/T), T <= 5 (flowMC's defaults; logprior = 0); no log Z"])
    return run, {}

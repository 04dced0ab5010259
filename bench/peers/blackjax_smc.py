"""blackjax's adaptive tempered SMC (``blackjax.adaptive_tempered_smc``), the tempering peer of
`bench.tempering_peers` (issue #12).

The path is the one our ParallelTempering tempers along from its user's reference: prior = the
reference ``N(0, 10² I)`` (normalized), likelihood = target − reference, so the final particles
are weighted draws of the target and the sum of the steps' ``log_likelihood_increment`` estimates
log Z (0 on the suite: every target is normalized). blackjax gives no standard error for it.

Inner kernel: blackjax's MALA, ``num_mcmc_steps`` steps per SMC step, one step size shared by the
particles, tuned between SMC steps from the particles' mean acceptance toward 0.574 (a
Robbins-Monro step on its log), as a user of blackjax's ``inner_kernel_tuning`` would. Resampling:
systematic. Target ESS: 0.5 (blackjax's examples).

Target evaluations are *derived* from blackjax 1.7's source, not counted at run time (a
``jax.debug.callback`` counter under ``vmap`` ran per point and made a run take over 10 minutes):
per SMC step, N (the ESS solver's likelihoods) + N (MALA init at the resampled particles, value
and gradient) + N per MALA step + N (the new weights), each value or value+gradient counting one.

Sizing to a budget: the number of SMC steps is adaptive, so a pilot run with ``pilot_particles``
particles counts its steps S; the main run then gets ``N = (budget − pilot cost) / (S (m + 3))``
particles. The pilot's evaluations are counted in the budget.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bench.peers.base import Run


@dataclass(frozen=True)
class SMCConfig:
    num_mcmc_steps: int = 10
    target_ess: float = 0.5
    initial_step_size: float = 1.0
    target_accept: float = 0.574
    adapt_rate: float = 2.0
    pilot_particles: int = 256
    min_particles: int = 64
    max_steps: int = 500


def unavailable() -> str | None:
    """Why this peer cannot run here, or None."""
    try:
        import blackjax  # noqa: F401
    except ImportError as error:
        return (f"blackjax not importable: {error} (it is in the bench extra: "
                "make .venv-bench/.installed; see bench/README.md)")
    return None


class _Counter:
    """Points at which the JAX target was evaluated (host side, fed by jax.debug.callback)."""

    def __init__(self, dim: int):
        self.dim, self.n = dim, 0

    def __call__(self, x: Any) -> None:
        self.n += int(np.asarray(x).size) // self.dim


def jax_diag_mixture(target: Any, counter: _Counter | None = None):
    """``log p(x)`` of a ``DiagMixture`` (examples/tempering_suite.py) for one point ``(dim,)``."""
    import jax
    import jax.numpy as jnp
    from jax.scipy.special import logsumexp

    centers = jnp.asarray(target.centers.numpy(), jnp.float32)
    sds = jnp.asarray(target.sds.numpy(), jnp.float32)
    offset = jnp.asarray((-np.log(target.sds.double().numpy()).sum(-1)
                          - 0.5 * target.dim * math.log(2 * math.pi)
                          + np.log(target.weights.double().numpy())), jnp.float32)

    def log_prob(x):
        if counter is not None:
            jax.debug.callback(counter, x)
        z = (x - centers) / sds
        return logsumexp(offset - 0.5 * jnp.sum(z**2, -1))

    return log_prob


def _run_once(target, n: int, key, ref_scale: float, config: SMCConfig, counter: _Counter):
    import blackjax
    import jax
    import jax.numpy as jnp
    from blackjax.smc.resampling import systematic

    d = target.dim
    log_target = jax_diag_mixture(target)
    log_norm = -0.5 * d * math.log(2 * math.pi * ref_scale**2)

    def logprior(x):
        return log_norm - 0.5 * jnp.sum((x / ref_scale) ** 2)

    def loglik(x):
        return log_target(x) - logprior(x)

    from blackjax.smc import adaptive_tempered

    kernel = adaptive_tempered.build_kernel(
        logprior, loglik, blackjax.mala.build_kernel(), blackjax.mala.init, systematic,
        config.target_ess)
    key, init_key = jax.random.split(key)
    state = adaptive_tempered.init(ref_scale * jax.random.normal(init_key, (n, d)))
    step = jax.jit(lambda k, s, size: kernel(k, s, config.num_mcmc_steps, {"step_size": size}))
    log_z, size, steps, sizes = 0.0, config.initial_step_size, 0, []
    while float(state.tempering_param) < 1.0:
        if steps >= config.max_steps:
            raise RuntimeError(f"adaptive tempered SMC did not reach lambda = 1 in {steps} steps "
                               f"(lambda = {float(state.tempering_param):.3g})")
        key, k = jax.random.split(key)
        state, info = step(k, state, jnp.full((1,), size, jnp.float32))
        log_z += float(info.log_likelihood_increment)
        accept = float(jnp.mean(info.update_info.acceptance_rate))
        sizes.append(size)
        size = float(size * math.exp(config.adapt_rate * (accept - config.target_accept)))
        steps += 1
        counter.n += n * (config.num_mcmc_steps + 3)
    return state, log_z, steps, sizes


def run_smc(target, budget: int, seed: int, ref_scale: float = 10.0,
            config: SMCConfig = SMCConfig()) -> tuple[Run, dict[str, Any]]:
    """Adaptive tempered SMC sized to ``budget`` target evaluations in all (all particles, pilot
    included). Returns the Run (samples ``(1, N, dim)``: the final particles, unweighted) and
    the figures only SMC has: normalized particle weights, log Z, the number of SMC steps."""
    import jax

    counter = _Counter(target.dim)
    key = jax.random.PRNGKey(seed)
    key, pilot_key = jax.random.split(key)
    start = time.perf_counter()
    _, _, pilot_steps, _ = _run_once(target, config.pilot_particles, pilot_key, ref_scale, config,
                                     counter)
    pilot_cost = counter.n
    per_particle = pilot_steps * (config.num_mcmc_steps + 3)
    n = max(config.min_particles, (budget - pilot_cost) // per_particle)
    state, log_z, steps, sizes = _run_once(target, n, key, ref_scale, config, counter)
    weights = np.asarray(state.weights, dtype=np.float64)
    particles = np.asarray(state.particles, dtype=np.float32)
    wall = time.perf_counter() - start
    weights = weights / weights.sum()
    extra = {"particle_weights": weights, "log_z": log_z, "smc_steps": steps,
             "pilot_steps": pilot_steps, "pilot_evals": pilot_cost, "particles": int(n),
             "kish_ess": float(1.0 / np.sum(weights**2)),
             "final_step_size": sizes[-1] if sizes else None}
    run = Run("adaptive tempered SMC (blackjax)", particles[None], 0.0, float(counter.n), wall,
              None, {**asdict(config), "particles": int(n), "smc_steps": steps,
                     "pilot_steps": pilot_steps, "reference_scale": ref_scale},
              ["start: N particles drawn from the reference N(0, 10^2 I) (SMC must start from its "
               "prior), not the chains' N(0, 2^2 I)",
               "target evaluations (value or value+gradient alike) derived from blackjax's source: "
               "N (m + 3) per SMC step",
               "ESS = Kish ESS of the final weights, 1 / sum w^2: not a chain ESS; it ignores the "
               "correlation resampling leaves between particles, so it flatters SMC"])
    return run, extra

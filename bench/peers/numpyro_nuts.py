"""numpyro's NUTS on the same target (a JAX port of its log-density), chains vectorized.

Gradient evaluations are counted from NUTS's own ``num_steps`` (leapfrog steps, one gradient each,
per chain and draw), warm-up included, plus one at initialization. NUTS picks its trajectory
lengths itself, so the budget cannot be set in advance: we advance all chains in fixed-size chunks
of draws (one compiled ``lax.scan`` over numpyro's ``NUTS.sample``, the loop numpyro's own ``MCMC``
runs) and keep the draws up to the one where the mean count over chains reaches the budget; the
clock counts the kept share of the last chunk only. Vectorized chains wait for the longest
trajectory of the batch, so the wall-clock pays for more leapfrog steps than are counted here.
"""

from __future__ import annotations

import time

import numpy as np

from bench.peers.base import Problem, Run
from bench.peers.jax_mixture import jax_log_prob

CHUNK = 25


def unavailable() -> str | None:
    """Why this peer cannot run here, or None."""
    try:
        import numpyro  # noqa: F401
    except ImportError as error:
        return f"numpyro not importable: {error}"
    return None


def run_nuts(problem: Problem, num_warmup: int | None = None) -> Run:
    """NUTS with numpyro's default window adaptation (step size and diagonal mass matrix).

    Args:
        problem: the task; its budget caps the gradient evaluations per chain.
        num_warmup: adaptation draws, rounded up to a whole chunk; by default one per 8 gradients
            of the warm-up share of the budget (NUTS takes about 4 to 8 leapfrog steps per draw on
            these targets).
    """
    import jax
    import jax.numpy as jnp
    from numpyro.infer import NUTS

    log_prob = jax_log_prob(problem.target)
    if num_warmup is None:
        num_warmup = round(problem.budget * problem.warmup_fraction / 8)
    num_warmup = CHUNK * max(1, -(-num_warmup // CHUNK))
    kernel = NUTS(potential_fn=lambda x: -log_prob(x))

    def advance(state):
        def body(s, _):
            s = kernel.sample(s, (), {})  # vectorized over chains by NUTS.init's batched keys
            return s, (s.z, s.num_steps)

        return jax.lax.scan(body, state, None, length=CHUNK)

    start = time.perf_counter()
    keys = jax.random.split(jax.random.PRNGKey(problem.seed), problem.chains)
    state = kernel.init(keys, num_warmup, init_params=jnp.asarray(problem.x0.numpy()),
                        model_args=(), model_kwargs={})
    tick = time.perf_counter()
    step = jax.jit(advance).lower(state).compile()
    compile_s = time.perf_counter() - tick
    spent = 1.0
    for _ in range(num_warmup // CHUNK):
        state, (_, num_steps) = step(state)
        spent += float(np.asarray(num_steps).sum(0).mean())
    warm_s = time.perf_counter() - start
    draws, steps, chunk_s = [], [], []
    while spent + sum(s.sum() for s in steps) < problem.budget or not draws:
        tick = time.perf_counter()
        state, (z, num_steps) = step(state)
        draws.append(np.asarray(z))  # (CHUNK, chains, dim)
        chunk_s.append(time.perf_counter() - tick)
        steps.append(np.asarray(num_steps).mean(1))  # mean over chains, per draw
    cumulative = spent + np.cumsum(np.concatenate(steps))
    keep = max(4, int(np.searchsorted(cumulative, problem.budget, side="right")))
    notes = []
    if spent >= problem.budget:
        notes.append(f"warm-up alone used {spent:.0f} gradient evaluations per chain, over the "
                     f"budget of {problem.budget}; 4 draws kept past it")
    kept_in_last = keep - CHUNK * (len(draws) - 1)
    sample_s = sum(chunk_s[:-1]) + chunk_s[-1] * kept_in_last / CHUNK
    samples = np.concatenate(draws).transpose(1, 0, 2)[:, :keep]
    config = {"num_warmup": num_warmup, "draws": keep, "chains": problem.chains,
              "compile_s": compile_s, "warmup_gradient_evals": spent,
              "step_size_median": float(np.median(np.asarray(state.adapt_state.step_size))),
              "mean_num_steps": float(np.concatenate(steps)[:keep].mean())}
    return Run("NUTS (numpyro)", samples, float(cumulative[keep - 1]), 0, warm_s + sample_s,
               sample_s, config, notes)


def run_nuts_steps(problem: Problem, num_warmup: int, production: int, chunk: int = 500) -> Run:
    """NUTS with numpyro's default window adaptation over ``num_warmup`` draws, then
    ``production`` draws, no budget. JAX's compilation time (`bench.peers.jax_clock`) is reported
    in ``config["compile_s"]``; the warm-up's gradients are counted, not capped."""
    import jax
    import jax.numpy as jnp
    from numpyro.infer import NUTS

    from bench.peers.jax_clock import compile_clock

    log_prob = jax_log_prob(problem.target)
    num_warmup = chunk * max(1, -(-num_warmup // chunk))
    production = chunk * max(1, -(-production // chunk))
    kernel = NUTS(potential_fn=lambda x: -log_prob(x))

    def advance(state):
        def body(s, _):
            s = kernel.sample(s, (), {})
            return s, (s.z, s.num_steps)

        return jax.lax.scan(body, state, None, length=chunk)

    with compile_clock() as clock:
        start = time.perf_counter()
        keys = jax.random.split(jax.random.PRNGKey(problem.seed), problem.chains)
        state = kernel.init(keys, num_warmup, init_params=jnp.asarray(problem.x0.numpy()),
                            model_args=(), model_kwargs={})
        step = jax.jit(advance)
        spent = 1.0
        for _ in range(num_warmup // chunk):
            state, (_, num_steps) = step(state)
            spent += float(np.asarray(num_steps).sum(0).mean())
        tick = time.perf_counter()
        draws, steps = [], []
        for _ in range(production // chunk):
            state, (z, num_steps) = step(state)
            draws.append(np.asarray(z))
            steps.append(np.asarray(num_steps).sum(0).mean())
        wall = time.perf_counter() - start
        sample_s = time.perf_counter() - tick
    samples = np.concatenate(draws).transpose(1, 0, 2)
    config = {"num_warmup": num_warmup, "draws": production, "chains": problem.chains,
              "compile_s": clock.seconds, "warmup_gradient_evals": spent,
              "step_size_median": float(np.median(np.asarray(state.adapt_state.step_size))),
              "mean_num_steps": float(sum(steps) / production)}
    return Run("NUTS (numpyro)", samples, spent + float(sum(steps)), 0, wall, sample_s, config,
               ["vectorized chains wait for the longest trajectory of the batch"])

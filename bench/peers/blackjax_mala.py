"""blackjax's MALA (``blackjax.mala``) on the same target, chains vectorized with ``jax.vmap``.

blackjax's MALA has no step-size adaptation of its own (its adaptation routines are for HMC and
NUTS), so it takes the median step size our MALA tuned on the same target, in the same
convention (``y = x + h ∇log p(x) + sqrt(2h) ξ``); the first ``burn`` steps are dropped. Steps run
in compiled chunks (``jax.lax.scan``); JAX's compilation time is measured by
`bench.peers.jax_clock`. Each step evaluates the target with its gradient once (blackjax keeps the
current point's value and gradient in its state).
"""

from __future__ import annotations

import time

import numpy as np

from bench.peers.base import Problem, Run
from bench.peers.jax_mixture import jax_log_prob


def unavailable() -> str | None:
    """Why this peer cannot run here, or None."""
    try:
        import blackjax  # noqa: F401
    except ImportError as error:
        return f"blackjax not importable: {error}"
    return None


def run_mala(problem: Problem, step_size: float, burn: int, production: int,
             chunk: int = 1000) -> Run:
    """``burn + production`` MALA steps at ``step_size`` (rounded up to whole chunks)."""
    import blackjax
    import jax
    import jax.numpy as jnp

    from bench.peers.jax_clock import compile_clock

    log_prob = jax_log_prob(problem.target)
    mala = blackjax.mala(log_prob, step_size)
    burn = chunk * -(-burn // chunk)
    production = chunk * max(1, -(-production // chunk))

    def advance(states, key):
        def body(carry, k):
            s, accepted = carry
            keys = jax.random.split(k, problem.chains)
            s, info = jax.vmap(mala.step)(keys, s)
            return (s, accepted + info.is_accepted.mean()), s.position

        (states, accepted), xs = jax.lax.scan(body, (states, 0.0),
                                              jax.random.split(key, chunk))
        return states, xs, accepted

    with compile_clock() as clock:
        start = time.perf_counter()
        states = jax.vmap(mala.init)(jnp.asarray(problem.x0.numpy()))
        step = jax.jit(advance)
        key = jax.random.PRNGKey(problem.seed)
        for _ in range(burn // chunk):
            key, sub = jax.random.split(key)
            states, _, _ = step(states, sub)
        jax.block_until_ready(states)
        tick = time.perf_counter()
        draws, accepted = [], 0.0
        for _ in range(production // chunk):
            key, sub = jax.random.split(key)
            states, xs, acc = step(states, sub)
            draws.append(np.asarray(xs))
            accepted += float(acc)
        wall = time.perf_counter() - start
        sample_s = time.perf_counter() - tick
    samples = np.concatenate(draws).transpose(1, 0, 2)
    return Run("MALA (blackjax)", samples, 1 + burn + production, 0, wall, sample_s,
               {"step_size": step_size, "burn_in": burn, "steps": production,
                "chains": problem.chains, "compile_s": clock.seconds,
                "accept_prob": accepted / production},
               ["step size: our MALA's tuned median (blackjax's MALA does not adapt it)"])

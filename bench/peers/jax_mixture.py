"""The benchmark's Gaussian mixtures as JAX log-densities of one point, for the JAX peers.

Built from the torch target's public parameters (means, covariances, weights) so both sides sample
the very same density; float32, like the torch side.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from flowmc_ebm.targets import GaussianMixture


def jax_log_prob(target: GaussianMixture) -> Callable:
    """``log p(x)`` for one point ``x: (dim,)`` -> scalar, differentiable with ``jax.grad``."""
    import jax.numpy as jnp
    from jax.scipy.special import logsumexp

    means = target.means.double().numpy()
    tril = np.linalg.cholesky(target.covariances.double().numpy())
    inverse = np.linalg.inv(tril)
    dim = means.shape[1]
    log_norm = -np.log(np.diagonal(tril, axis1=1, axis2=2)).sum(1) - 0.5 * dim * np.log(2 * np.pi)
    log_w = np.log(target.weights.double().numpy())
    means, inverse = jnp.asarray(means, jnp.float32), jnp.asarray(inverse, jnp.float32)
    offset = jnp.asarray(log_norm + log_w, jnp.float32)

    def log_prob(x):
        white = jnp.einsum("kij,kj->ki", inverse, x - means)
        return logsumexp(offset - 0.5 * jnp.sum(white**2, -1))

    return log_prob

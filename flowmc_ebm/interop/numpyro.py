"""numpyro models as targets for `samplers`, and numpyro's NUTS on the same model as a reference.

`NumpyroTarget(model, *args, **kwargs)` is a batched torch log-density ``x: (n, dim) -> (n,)`` on
numpyro's unconstrained space: numpyro's own `initialize_model` gives the potential energy (minus
the log joint density of the unconstrained latent sites, Jacobians included), a jitted and
vmapped JAX function computes its value and gradient for the whole batch in one call, and the
arrays cross between torch and JAX through DLPack (no copy on CPU where the buffers allow it)
inside a `torch.autograd.Function`, so every gradient-based kernel (MALA, HMC, FlowMC, tempering)
runs on it unchanged.

Precision follows JAX's: float32 unless ``jax.config.update("jax_enable_x64", True)`` was called
before the target was built (then float64); `NumpyroTarget.dtype` says which. Inputs of another
floating dtype are cast to it, and the outputs are returned in the input's dtype.

jax and numpyro are imported when this module is, never by ``import flowmc_ebm``.

Example:
    >>> import numpyro, numpyro.distributions as dist, torch
    >>> def model():
    ...     numpyro.sample("theta", dist.Normal(0.0, 2.0).expand([3]))
    >>> target = NumpyroTarget(model)
    >>> target.dim
    3
    >>> lp = target(torch.zeros(5, 3))
    >>> lp.shape
    torch.Size([5])
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from jax.flatten_util import ravel_pytree
from numpyro.infer.util import initialize_model
from torch import Tensor

__all__ = ["NumpyroTarget", "nuts_reference"]


def _to_jax(x: Tensor, dtype) -> jax.Array:
    """A torch tensor as a JAX array of ``dtype``: shared memory on CPU when the dtypes agree."""
    x = x.detach()
    if x.dtype != _TORCH_DTYPE[dtype]:
        x = x.to(_TORCH_DTYPE[dtype])
    x = x.contiguous()
    if x.device.type != "cpu":  # JAX here runs on its own (CPU) backend
        x = x.cpu()
    return jax.dlpack.from_dlpack(x)


def _to_torch(a: jax.Array, like: Tensor) -> Tensor:
    return torch.from_dlpack(a).to(device=like.device, dtype=like.dtype)


_TORCH_DTYPE = {jnp.dtype("float32"): torch.float32, jnp.dtype("float64"): torch.float64}


class _Bridge(torch.autograd.Function):
    """log p(x) for a batch, with the gradient computed in the same JAX call and kept for the
    backward pass (a kernel that asks for the gradient never pays a second evaluation)."""

    @staticmethod
    def forward(ctx, x: Tensor, target: NumpyroTarget) -> Tensor:  # type: ignore[override]
        xj = _to_jax(x, target.dtype)
        if ctx.needs_input_grad[0]:
            value, grad = target._value_and_grad(xj)
            ctx.save_for_backward(_to_torch(grad, x))
        else:
            value = target._value(xj)
        return _to_torch(value, x)

    @staticmethod
    def backward(ctx, grad_output: Tensor):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad_output.unsqueeze(-1) * grad, None


class NumpyroTarget:
    """A numpyro model's posterior as a batched, differentiable torch log-density on the
    unconstrained space.

    Args:
        model: a numpyro model (a Python function with ``numpyro.sample`` statements).
        *args, **kwargs: passed to the model (data, observations).
        seed: the key numpyro's `initialize_model` uses to find a valid starting point
            (`init_point`), the point that fixes the layout of the flat vector.

    Attributes:
        dim: length of the flat unconstrained vector (latent sites raveled in numpyro's order).
        sites: ``{name: shape}`` of the unconstrained latent sites, in the flat vector's order.
        dtype: the JAX (and torch) dtype the log-density is computed in.
        init_point: a flat unconstrained point where the density is finite, ``(dim,)``.

    Calling the target on ``x: (n, dim)`` returns the log joint density of the unconstrained
    latents (minus numpyro's potential energy) ``(n,)``; a point where the model's density is NaN
    comes back NaN, which every kernel in `samplers` rejects and counts.
    """

    def __init__(self, model: Callable, *args: Any, seed: int = 0, **kwargs: Any):
        if not callable(model):
            raise TypeError(f"model must be a numpyro model (a callable); got {type(model).__name__}")
        info = initialize_model(jax.random.PRNGKey(seed), model, model_args=args,
                                model_kwargs=kwargs)
        z0 = info.param_info.z
        if not z0:
            raise ValueError("the model has no latent sample sites to sample (every site is "
                             "observed or deterministic)")
        flat0, unravel = ravel_pytree(z0)
        self.model, self.args, self.kwargs = model, args, kwargs
        self.dtype = flat0.dtype
        self.dim = int(flat0.shape[0])
        self.sites = {name: tuple(np.shape(value)) for name, value in z0.items()}
        self.init_point = torch.from_dlpack(flat0).clone()
        self._unravel = unravel
        self._potential = info.potential_fn
        self._postprocess = info.postprocess_fn

        def log_density(flat):
            return -self._potential(unravel(flat))

        self._value = jax.jit(jax.vmap(log_density))
        self._value_and_grad = jax.jit(jax.vmap(jax.value_and_grad(log_density)))
        self._constrain = jax.jit(jax.vmap(lambda flat: self._postprocess(unravel(flat))))

    def _check(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor of shape (n, {self.dim}); "
                            f"got {type(x).__name__}")
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (n, {self.dim}) (the model's {self.dim} "
                             f"unconstrained coordinates: {self.sites}); got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor; got dtype {x.dtype}")

    def __call__(self, x: Tensor) -> Tensor:
        self._check(x)
        return _Bridge.apply(x, self)

    log_prob = __call__

    def unravel(self, x: Tensor | np.ndarray) -> dict[str, np.ndarray]:
        """Flat unconstrained points ``(..., dim)`` as ``{site: (..., *shape)}`` (unconstrained)."""
        x = np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x)
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.dim)
        out = jax.vmap(self._unravel)(jnp.asarray(flat, dtype=self.dtype))
        return {k: np.asarray(v).reshape(*lead, *np.shape(v)[1:]) for k, v in out.items()}

    def constrain(self, x: Tensor | np.ndarray) -> dict[str, np.ndarray]:
        """Flat unconstrained points ``(..., dim)`` mapped to the model's constrained sites and
        its deterministic sites, ``{site: (..., *site_shape)}`` (numpyro's `postprocess_fn`)."""
        x = np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x)
        if x.shape[-1] != self.dim:
            raise ValueError(f"expected points with a last dimension of {self.dim}; "
                             f"got shape {x.shape}")
        lead = x.shape[:-1]
        out = self._constrain(jnp.asarray(x.reshape(-1, self.dim), dtype=self.dtype))
        return {k: np.asarray(v).reshape(*lead, *np.shape(v)[1:]) for k, v in out.items()}

    def to_arviz(self, trace):
        """An ArviZ ``InferenceData`` of a `samplers.Trace` (or anything with ``samples`` shaped
        ``(chains, draws, dim)``) with the model's site names and shapes, so ``arviz.summary``
        shows named parameters on the constrained scale."""
        import arviz as az

        samples = trace.samples if hasattr(trace, "samples") else trace
        samples = np.asarray(samples.cpu() if isinstance(samples, Tensor) else samples)
        if samples.ndim != 3 or samples.shape[-1] != self.dim:
            raise ValueError(f"expected samples shaped (chains, draws, {self.dim}); "
                             f"got {samples.shape}")
        posterior = self.constrain(samples)
        stats = {}
        if getattr(trace, "log_prob", None) is not None:
            stats["lp"] = np.asarray(trace.log_prob)
        return az.from_dict(posterior=posterior, sample_stats=stats or None)

    def __repr__(self) -> str:
        sites = ", ".join(f"{k}{list(v) if v else ''}" for k, v in self.sites.items())
        name = getattr(self.model, "__name__", "model")
        return f"NumpyroTarget({name}: {sites}; dim={self.dim}, {self.dtype})"


def nuts_reference(target: NumpyroTarget, x0: Tensor, num_warmup: int = 1000,
                   num_samples: int = 1000, seed: int = 0, **nuts_kwargs: Any):
    """numpyro's NUTS (its defaults: window adaptation of the step size and a diagonal mass
    matrix) on the target's potential, from the same flat unconstrained starts ``x0: (chains,
    dim)`` a torch sampler would use, chains vectorized. Returns a `samplers.Trace` in the same
    unconstrained coordinates (``samples (chains, num_samples, dim)``, ``log_prob``, stats
    ``num_steps`` and ``diverging``), its ``wall_time`` counting warm-up and sampling (the
    compilation included, as a numpyro user pays it), so the two compare on equal terms.
    """
    from numpyro.infer import MCMC, NUTS

    from samplers import Trace

    target._check(x0)
    chains = x0.shape[0]
    init = jax.vmap(target._unravel)(_to_jax(x0, target.dtype))
    kernel = NUTS(potential_fn=target._potential, **nuts_kwargs)
    mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, num_chains=chains,
                chain_method="vectorized", progress_bar=False)
    start = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(seed), init_params=init,
             extra_fields=("num_steps", "diverging", "potential_energy"))
    z = mcmc.get_samples(group_by_chain=True)
    flat = jax.vmap(jax.vmap(lambda d: ravel_pytree(d)[0]))(z)
    flat = np.asarray(jax.block_until_ready(flat))
    wall = time.perf_counter() - start
    extra = mcmc.get_extra_fields(group_by_chain=True)
    stats = {"num_steps": torch.tensor(np.asarray(extra["num_steps"]).astype(np.int64)),
             "diverging": torch.tensor(np.asarray(extra["diverging"]))}
    log_prob = -torch.tensor(np.asarray(extra["potential_energy"]))
    trace = Trace(torch.tensor(flat), log_prob, stats, warmup=num_warmup, thin=1,
                  kernel="NUTS (numpyro)", wall_time=wall)
    return trace

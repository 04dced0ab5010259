"""Bridges to other libraries' models. Each submodule imports its library only when it is used:
``import flowmc_ebm`` never imports jax or numpyro.

- `flowmc_ebm.interop.numpyro`: a numpyro model as a batched, differentiable torch log-density on
  numpyro's unconstrained space (`NumpyroTarget`), and numpyro's NUTS on the same model from the
  same starts (`nuts_reference`).
- `flowmc_ebm.interop.constrained`: `torch.distributions` targets on a constrained support (Gamma,
  Beta, Dirichlet, ...) sampled on the unconstrained space (`UnconstrainedTarget`).
"""

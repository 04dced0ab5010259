"""torchebm's `LangevinDynamics` on the same torch target.

It is the unadjusted Langevin algorithm (``x + h ∇log p(x) + sqrt(2h) ξ``, no Metropolis–Hastings
correction, so its draws are biased by ``h``) with a fixed step size: one gradient evaluation per
step and no tuning. We give it a tenth of the (median) step size our MALA tuned on the same
target: at 0.574 acceptance MALA's step is about the modes' variance, where ULA is unstable or badly
biased (in a Gaussian of variance s², ULA's stationary variance is s² / (1 - h / 2s²), and it
diverges for h > 2s²); at a tenth the inflation is about 5 %. The warm-up share of the budget is
dropped as burn-in, as for every other method.
"""

from __future__ import annotations

import time

import torch

from bench.peers.base import Problem, Run


def unavailable() -> str | None:
    """Why this peer cannot run here, or None."""
    try:
        import torchebm  # noqa: F401
    except ImportError as error:
        return f"torchebm not importable: {error} (pip install torchebm; see bench/README.md)"
    return None


STEP_FRACTION = 0.1


def run_langevin(problem: Problem, mala_step_size: float) -> Run:
    """``problem.budget`` Langevin steps from ``problem.x0``; the first share is burn-in."""
    from torchebm.core import BaseModel
    from torchebm.samplers import LangevinDynamics

    class Energy(BaseModel):
        """The target as torchebm's energy ``E = -log p``."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return -problem.target.log_prob(x)

    burn = round(problem.budget * problem.warmup_fraction)
    step_size = STEP_FRACTION * mala_step_size
    sampler = LangevinDynamics(Energy(), step_size=step_size, noise_scale=1.0)
    generator = torch.Generator().manual_seed(problem.seed)
    start = time.perf_counter()
    path = sampler.sample(x=problem.x0.clone(), n_steps=problem.budget, return_trajectory=True,
                          generator=generator)
    wall = time.perf_counter() - start
    samples = path[:, burn:].numpy()
    return Run("ULA (torchebm)", samples, problem.budget, 0, wall, None,
               {"step_size": step_size, "burn_in": burn, "steps": problem.budget - burn,
                "chains": problem.chains},
               ["unadjusted: no MH correction, biased by its step size"])


def run_langevin_steps(problem: Problem, mala_step_size: float, burn: int,
                       production: int) -> Run:
    """``burn + production`` Langevin steps at a tenth of MALA's step; the first ``burn``
    dropped; eager torch (``compile_s`` 0)."""
    from torchebm.core import BaseModel
    from torchebm.samplers import LangevinDynamics

    class Energy(BaseModel):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return -problem.target.log_prob(x)

    step_size = STEP_FRACTION * mala_step_size
    sampler = LangevinDynamics(Energy(), step_size=step_size, noise_scale=1.0)
    generator = torch.Generator().manual_seed(problem.seed)
    start = time.perf_counter()
    path = sampler.sample(x=problem.x0.clone(), n_steps=burn + production,
                          return_trajectory=True, generator=generator)
    wall = time.perf_counter() - start
    return Run("ULA (torchebm)", path[:, burn:].numpy(), burn + production, 0, wall, None,
               {"step_size": step_size, "burn_in": burn, "steps": production,
                "chains": problem.chains, "compile_s": 0.0},
               ["unadjusted: no MH correction, biased by its step size"])

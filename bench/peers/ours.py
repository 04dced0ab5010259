"""Our samplers: `samplers.FlowMC` (the method under test) and `samplers.MALA` (its local kernel
alone), counted in target evaluations as they spend them.

Per chain, both kernels evaluate the target with its gradient once at ``init``. A MALA step is one
gradient evaluation (the state caches log-density and gradient). A FlowMC cycle is ``n_local`` MALA
steps plus one global move; the global move evaluates the target *without* gradient at its
proposals (``n_particles`` per chain for i-SIR, 1 for independent MH) and then once *with*
gradient at every chain's resulting position, so the next MALA step has it. So a cycle costs
``n_local + 1`` gradient evaluations and ``n_particles`` gradient-free ones (i-SIR). Training the
flow evaluates the flow only, never the target.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

import samplers
from bench.peers.base import Problem, Run
from flowmc_ebm.flows import make_flow


@dataclass(frozen=True)
class FlowMCConfig:
    """Settings of our FlowMC in the benchmark (those of tests/test_samplers_mixing.py, scaled).

    ``strict`` counts i-SIR's gradient-free evaluations against the budget as if each were a
    gradient evaluation, for a comparison that favours no one.
    """

    n_local: int = 2
    global_move: str = "isir"
    n_particles: int = 16
    flow_lr: float = 1e-2
    batch_size: int = 1024
    transforms: int = 4
    hidden: tuple[int, ...] = (64, 64)
    local_step_size: float = 0.05
    strict: bool = False


def _split(total: int, fraction: float) -> tuple[int, int]:
    """``total`` steps into (warm-up, production), production at least 4 (split R-hat needs 4)."""
    if total < 8:
        raise ValueError(f"the budget allows only {total} steps; raise --budget")
    warm = min(round(total * fraction), total - 4)
    return warm, total - warm


def run_flowmc(problem: Problem, config: FlowMCConfig = FlowMCConfig()) -> Run:
    """FlowMC with a RealNVP flow trained on the chains during warm-up, frozen after."""
    torch.manual_seed(problem.seed)  # the flow's initial weights
    generator = torch.Generator().manual_seed(problem.seed)
    flow = make_flow(problem.dim, "realnvp", transforms=config.transforms, hidden=config.hidden)
    kernel = samplers.FlowMC(problem.target.log_prob, flow, n_local=config.n_local,
                             global_move=config.global_move, n_particles=config.n_particles,
                             flow_lr=config.flow_lr, batch_size=config.batch_size,
                             local_step_size=config.local_step_size)
    free_per_cycle = config.n_particles if config.global_move == "isir" else 1
    grads_per_cycle = config.n_local + 1
    cost = grads_per_cycle + (free_per_cycle if config.strict else 0)
    warm, prod = _split((problem.budget - 1) // cost, problem.warmup_fraction)
    start = time.perf_counter()
    trace = samplers.sample(kernel, problem.x0, prod, warmup=warm, progress=False,
                            generator=generator)
    wall = time.perf_counter() - start
    cycles = warm + prod
    stats = {k: float(v.float().nanmean()) for k, v in trace.stats.items()
             if k in ("local_accept_prob", "global_accept_prob", "isir_ess")}
    return Run("FlowMC (ours, strict)" if config.strict else "FlowMC (ours)",
               trace.samples.numpy(), 1 + cycles * grads_per_cycle, cycles * free_per_cycle, wall,
               trace.wall_time, {**asdict(config), "warmup_cycles": warm, "cycles": prod,
                                 "chains": problem.chains, **stats})


def run_mala(problem: Problem, initial_step_size: float = 0.05) -> Run:
    """MALA alone, per-chain step sizes tuned toward 0.574 acceptance during warm-up."""
    generator = torch.Generator().manual_seed(problem.seed)
    warm, prod = _split(problem.budget - 1, problem.warmup_fraction)
    start = time.perf_counter()
    trace = samplers.sample(samplers.MALA(problem.target.log_prob, initial_step_size), problem.x0,
                            prod, warmup=warm, progress=False, generator=generator)
    wall = time.perf_counter() - start
    step = float(trace.state.step_size.median())
    return Run("MALA (ours)", trace.samples.numpy(), 1 + warm + prod, 0, wall, trace.wall_time,
               {"warmup_steps": warm, "steps": prod, "chains": problem.chains,
                "median_step_size": step,
                "accept_prob": float(trace.stats["accept_prob"].mean())})


def run_flowmc_steps(problem: Problem, warmup: int, production: int,
                     config: FlowMCConfig = FlowMCConfig()) -> Run:
    """FlowMC for ``warmup`` cycles (step sizes tuned, flow trained) then ``production`` cycles,
    one draw per cycle; no budget. Eager torch: nothing is compiled, so ``compile_s`` is 0."""
    torch.manual_seed(problem.seed)
    generator = torch.Generator().manual_seed(problem.seed)
    flow = make_flow(problem.dim, "realnvp", transforms=config.transforms, hidden=config.hidden)
    kernel = samplers.FlowMC(problem.target.log_prob, flow, n_local=config.n_local,
                             global_move=config.global_move, n_particles=config.n_particles,
                             flow_lr=config.flow_lr, batch_size=config.batch_size,
                             local_step_size=config.local_step_size)
    free_per_cycle = config.n_particles if config.global_move == "isir" else 1
    start = time.perf_counter()
    trace = samplers.sample(kernel, problem.x0, production, warmup=warmup, progress=False,
                            generator=generator)
    wall = time.perf_counter() - start
    cycles = warmup + production
    stats = {k: float(v.float().nanmean()) for k, v in trace.stats.items()
             if k in ("local_accept_prob", "global_accept_prob", "isir_ess")}
    return Run("FlowMC (ours)", trace.samples.numpy(), 1 + cycles * (config.n_local + 1),
               cycles * free_per_cycle, wall, trace.wall_time,
               {**asdict(config), "warmup_cycles": warmup, "cycles": production,
                "chains": problem.chains, "compile_s": 0.0, **stats})


def run_mala_steps(problem: Problem, warmup: int, production: int,
                   initial_step_size: float = 0.05) -> Run:
    """MALA for ``warmup`` tuning steps then ``production`` steps; no budget; eager torch."""
    generator = torch.Generator().manual_seed(problem.seed)
    start = time.perf_counter()
    trace = samplers.sample(samplers.MALA(problem.target.log_prob, initial_step_size), problem.x0,
                            production, warmup=warmup, progress=False, generator=generator)
    wall = time.perf_counter() - start
    return Run("MALA (ours)", trace.samples.numpy(), 1 + warmup + production, 0, wall,
               trace.wall_time,
               {"warmup_steps": warmup, "steps": production, "chains": problem.chains,
                "median_step_size": float(trace.state.step_size.median()), "compile_s": 0.0,
                "accept_prob": float(trace.stats["accept_prob"].mean())})

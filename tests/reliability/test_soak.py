"""Soak test: a long FlowMC run streamed to disk must hold its memory flat.

FlowMC on a cheap 2-D two-mode target, 32 chains, a small RealNVP flow trained during warm-up,
then ``SOAK_STEPS`` (default 1e5) MCMC transitions streamed to disk with thinning. Resident memory
is read from ``/proc/self/statm`` along the way. After warm-up nothing may accumulate per step:
neither in the process (RSS growth between 20% and 100% of the run, and the count of live Python
objects) nor inside the kernel (the flow's parameters and loss record, the chains' state).

The bounds on RSS growth come from what the smallest per-step leak would cost: one float32 per
chain per transition adds ``32 · 4 B`` per transition, 9.8 MB over the last 80% of 1e5 transitions
and 4.9 MB over the last 40%; growth must stay under a quarter of that. (Keeping the full per-step
history, position, log-density and stats, would be ten times more: 98 MB.) Measured here in two
runs on a two-core machine shared with other jobs: RSS 515.8 MB at 5% of the run, 518-519 MB at 20%,
then flat at 519.0-519.1 MB to the end (growth over 20-100%: 1.02 and 0.07 MB; over 60-100%: 0.00
MB); live Python objects flat after 20%; 116 s of CPU (382 s wall at load 8). A leak injected on
purpose, one (32,) tensor kept per FlowMC step, fails the test (3.7 MB over 20-100% of 3e4 steps).
"""

import gc
import os
import resource
import time

import pytest
import torch

import samplers
from flowmc_ebm.flows import make_flow

N_CHAINS = 32
N_LOCAL = 4  # one FlowMC step = 4 MALA transitions + 1 global i-SIR move
STEPS = int(float(os.environ.get("SOAK_STEPS", "1e5")))  # MCMC transitions, local and global
THIN = 10
PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 2**20


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def two_modes(x):
    a = -0.5 * (x - torch.tensor([2.5, 0.0])).square().sum(-1)
    b = -0.5 * (x + torch.tensor([2.5, 0.0])).square().sum(-1)
    return torch.logaddexp(a + 0.693, b)  # weights 2:1


class Metered(samplers.Kernel):
    """Delegates to ``kernel``; records RSS and live-object counts at the marked production steps."""

    def __init__(self, kernel, marks):
        self.kernel, self.log_prob = kernel, kernel.log_prob
        self.marks, self.seen, self.warm = set(marks), 0, False
        self.rss, self.objects, self.kernel_numel = {}, {}, {}

    def init(self, x):
        return self.kernel.init(x)

    def step(self, state, generator=None):
        if self.warm:
            self.seen += 1
            if self.seen in self.marks:
                gc.collect()
                self.rss[self.seen] = rss()
                self.objects[self.seen] = len(gc.get_objects())
                self.kernel_numel[self.seen] = tensors_held(self.kernel) + tensors_held(state)
        return self.kernel.step(state, generator)

    def warmup_init(self, state):
        return self.kernel.warmup_init(state)

    def warmup_update(self, wstate, state, info, generator=None):
        return self.kernel.warmup_update(wstate, state, info, generator)

    def warmup_final(self, wstate, state):
        self.warm = True
        return self.kernel.warmup_final(wstate, state)

    def __repr__(self):
        return repr(self.kernel)


def tensors_held(obj) -> int:
    """Elements in the tensors an object holds directly, in its modules, lists and dicts."""
    seen, stack, total = set(), [vars(obj)], 0
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor):
            total += item.numel()
        elif isinstance(item, torch.nn.Module):
            stack.extend(item.state_dict().values())
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif hasattr(item, "__dict__") and type(item).__module__.startswith("samplers"):
            stack.extend(vars(item).values())
    return total


@pytest.mark.slow
def test_flowmc_soak_streams_to_disk_in_flat_memory(tmp_path):
    torch.manual_seed(0)
    cycles = STEPS // (N_LOCAL + 1)
    marks = [int(cycles * f) for f in (0.05, 0.2, 0.4, 0.6, 0.8, 1.0)]
    flowmc = samplers.FlowMC(two_modes, make_flow(2, transforms=2, hidden=(16, 16)), n_local=N_LOCAL,
                             n_particles=4, batch_size=256, replay_steps=8, flow_lr=5e-3,
                             local_step_size=0.3)
    kernel = Metered(flowmc, marks)
    x0 = torch.randn(N_CHAINS, 2)
    start, cpu = time.perf_counter(), time.process_time()
    run = samplers.sample(kernel, x0, cycles, warmup=300, thin=THIN, out=tmp_path / "run",
                          chunk_size=200, progress=False, generator=torch.Generator().manual_seed(0))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu

    n_draws = cycles // THIN
    assert run.complete and run.n_draws == n_draws
    leak = N_CHAINS * 4  # bytes: one float32 per chain per transition
    history = N_CHAINS * (2 + 1 + 7) * 4 * STEPS * 0.8  # full per-step history over 20-100%
    late = kernel.rss[marks[-1]] - kernel.rss[marks[1]]
    later = kernel.rss[marks[-1]] - kernel.rss[marks[3]]
    print(f"\nsoak: {STEPS} transitions ({cycles} FlowMC steps) in {seconds:.0f} s wall, {cpu:.0f} s "
          f"CPU; RSS MB at {[f'{m}:{kernel.rss[m] / MB:.1f}' for m in marks]}; growth 20-100% "
          f"{late / MB:.2f} MB, 60-100% {later / MB:.2f} MB (a leak of one float per chain-step: "
          f"{leak * 0.8 * STEPS / MB:.1f} / {leak * 0.4 * STEPS / MB:.1f} MB; full history "
          f"{history / MB:.0f} MB); peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}"
          f" MB; objects {[kernel.objects[m] for m in marks]}; chunks {len(run.files)}")
    assert late < leak * 0.8 * STEPS / 4, f"RSS grew {late / MB:.2f} MB over 20-100% of the run"
    assert later < leak * 0.4 * STEPS / 4, f"RSS grew {later / MB:.2f} MB over 60-100% of the run"
    assert kernel.objects[marks[-1]] - kernel.objects[marks[1]] < 100
    assert len({kernel.kernel_numel[m] for m in marks}) == 1  # nothing inside the kernel grows
    assert flowmc.flow_losses.shape == (300,)  # the record stops at warm-up

    draws = 0
    right = 0.0
    for chunk in run.chunks():  # read back one chunk at a time; the draws must be sane
        assert torch.isfinite(chunk.samples).all()
        draws += chunk.n_draws
        right += float((chunk.samples[..., 0] > 0).float().sum())
    assert draws == n_draws
    # Mode weight 2/3 on the right; generous bound: the point is a working sampler, not a
    # precision test (that is test_samplers_mixing's job).
    assert abs(right / (draws * N_CHAINS) - 2 / 3) < 0.1

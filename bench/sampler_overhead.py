"""Overhead of `samplers.sample(MALA)` against a bare PyTorch loop doing the same arithmetic.

Target: ratio (ours / bare) <= 1.05 per MALA step (issue #19; 1.10 in issue #2), 4096 chains, MLP
energy, d = 2 and d = 64. bench/sampler_step.py measures the same ratio on a quartic target, eager
and compiled, at 64 and 4096 chains.
Both run in this process, alternately, and the median over repeats is reported, so machine load
affects both alike. Writes ``sampler_overhead.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import samplers


def mlp_energy(dim: int, hidden: int = 128) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                         nn.Linear(hidden, 1))


def bare_mala(energy: nn.Module, x: torch.Tensor, n_steps: int, h: float) -> torch.Tensor:
    """MALA written out by hand: the floor any library implementation is measured against."""

    def lp_and_grad(z):
        z = z.detach().requires_grad_(True)
        lp = -energy(z).squeeze(-1)
        (g,) = torch.autograd.grad(lp.sum(), z)
        return lp.detach(), g

    lp, g = lp_and_grad(x)
    out = x.new_empty((n_steps, *x.shape))
    for i in range(n_steps):
        y = x + h * g + math.sqrt(2 * h) * torch.randn_like(x)
        lpy, gy = lp_and_grad(y)
        log_ratio = (lpy - lp - (x - y - h * gy).square().sum(1) / (4 * h)
                     + (y - x - h * g).square().sum(1) / (4 * h))
        acc = torch.rand_like(lp).log() < log_ratio
        a = acc.unsqueeze(1)
        x, lp, g = torch.where(a, y, x), torch.where(acc, lpy, lp), torch.where(a, gy, g)
        out[i] = x
    return out


def ours(energy: nn.Module, x: torch.Tensor, n_steps: int, h: float) -> samplers.Trace:
    kernel = samplers.MALA(lambda z: -energy(z).squeeze(-1), h)
    return samplers.sample(kernel, x, n_steps, progress=False)


def time_per_step(fn, *args, n_steps: int) -> float:
    start = time.perf_counter()
    fn(*args, n_steps=n_steps, h=0.01)
    return (time.perf_counter() - start) / n_steps


def measure(dim: int, chains: int, n_steps: int, repeats: int, device: str) -> dict:
    energy = mlp_energy(dim).to(device)
    for p in energy.parameters():
        p.requires_grad_(False)
    x = torch.randn(chains, dim, device=device)
    time_per_step(bare_mala, energy, x, n_steps=5)  # warm caches and allocator
    time_per_step(ours, energy, x, n_steps=5)
    bare_t, ours_t = [], []
    for _ in range(repeats):
        bare_t.append(time_per_step(bare_mala, energy, x, n_steps=n_steps))
        ours_t.append(time_per_step(ours, energy, x, n_steps=n_steps))
    # Each adjacent pair ran under the same machine load; the median of their ratios is robust to
    # load that comes and goes (other processes on a shared machine).
    ratios = [o / b for o, b in zip(ours_t, bare_t, strict=True)]
    return {"dim": dim, "chains": chains, "steps": n_steps, "repeats": repeats,
            "bare_ms_per_step": 1e3 * statistics.median(bare_t),
            "ours_ms_per_step": 1e3 * statistics.median(ours_t),
            "ratio": statistics.median(ratios), "ratio_of_minima": min(ours_t) / min(bare_t)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--chains", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 64])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [measure(d, args.chains, args.steps, args.repeats, args.device) for d in args.dims]
    result = {"benchmark": "sampler_overhead", "target_ratio": 1.05, "device": args.device,
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "machine": platform.machine(), "rows": rows}
    for r in rows:
        print(f"d={r['dim']:>3}  bare {r['bare_ms_per_step']:.3f} ms/step  "
              f"ours {r['ours_ms_per_step']:.3f} ms/step  ratio {r['ratio']:.3f} "
              f"(of minima {r['ratio_of_minima']:.3f})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sampler_overhead.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""SIGKILL campaign on streamed sampling, in the spirit of SQLite's crash tests.

One process imports torch once and forks a child per attempt; each child runs
``sample(..., out=DIR, resume=True)`` and is SIGKILLed at a seeded random moment: either after a
random delay (anywhere in a step, a chunk copy or a write) or, through `samplers.rundir`'s fault
hook, inside the k-th file write (after creating the temporary file, after writing it, after its
fsync, after the rename, after the directory fsync). After every kill the directory is checked
(every committed chunk reads and equals the uninterrupted run's draws, none is lost) and the
next child resumes. The finished run must equal the
uninterrupted one bit for bit. Prints one JSON line.

    python tests/reliability/stream_crash.py --kernel mala --kills 20 --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import samplers  # noqa: E402
from samplers import rundir  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _faults import count_writes, kill_in_write  # noqa: E402

D, CHAINS = 4, 32
# MALA: 150 draws in 10 chunks; FlowMC (its flow calls are slower): 24 draws in 6 chunks.
SETTINGS = {"mala": dict(n_steps=300, warmup=30, thin=2, chunk_size=15),
            "flowmc": dict(n_steps=48, warmup=16, thin=2, chunk_size=4)}


def log_prob(x):
    return -0.5 * x.pow(2).sum(-1) - 0.2 * x[:, 0].pow(4)


def make(name):
    torch.manual_seed(0)
    if name == "mala":
        return samplers.MALA(log_prob, 0.3)
    import zuko

    return samplers.FlowMC(log_prob, zuko.flows.RealNVP(D, transforms=2, hidden_features=[16]),
                           n_local=2, n_particles=4, batch_size=64, replay_steps=8)


def run(name, out):
    return samplers.sample(make(name), torch.full((CHAINS, D), 0.5), progress=False, out=out,
                           resume=True, generator=torch.Generator().manual_seed(7),
                           **SETTINGS[name])


def check(out: Path, reference, committed_before: int) -> int:
    """Every committed chunk reads and equals the reference; returns the committed count."""
    reader = samplers.open_trace(out)
    assert reader._listed >= committed_before, "a committed chunk was lost"
    start = 0
    for chunk in reader.chunks():
        end = start + chunk.n_draws
        assert torch.equal(chunk.samples, reference.samples[:, start:end]), "draws differ"
        start = end
    return reader._listed


def campaign(name: str, kills: int, seed: int, workdir: Path) -> dict:
    torch.set_num_threads(1)
    make(name)  # imports (zuko) before the clock starts: the children inherit them
    writes = count_writes()
    t0 = time.perf_counter()
    reference = run(name, workdir / f"reference-{name}").load()
    t1 = time.perf_counter()
    rundir.set_fault_hook(None)
    uninterrupted, n_chunks = t1 - t0, SETTINGS[name]["n_steps"] // SETTINGS[name]["thin"]
    n_chunks = -(-n_chunks // SETTINGS[name]["chunk_size"])
    rng = random.Random(seed)
    survived, attempts, rounds, by_kind = 0, 0, 0, {"timer": 0, "in a write": 0}
    identical = []
    while survived < kills:
        rounds += 1
        out = workdir / f"run-{name}-{rounds}"
        committed = 0
        while True:  # kill attempts on this run until one finishes it
            attempts += 1
            kind = "in a write" if rng.random() < 0.5 else "timer"
            delay = rng.uniform(0.0, uninterrupted * (n_chunks - committed) / n_chunks + 0.1)
            point = rng.choice(["open", "write", "fsync", "rename", "dirsync"])
            # A write of those left to do (about 3 per chunk still to commit).
            left = writes[0] * (n_chunks - committed) // n_chunks
            kth = rng.randint(1, max(left, 1))
            status = _attempt(name, out, kind, delay, point, kth)
            if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
                survived += 1
                by_kind[kind] += 1
                if (out / "manifest.json").exists():
                    committed = check(out, reference, committed)
                continue
            if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
                raise SystemExit(f"attempt {attempts} ended with status {status}")
            break
        final = samplers.open_trace(out)
        whole = final.load()
        identical.append(final.complete and torch.equal(whole.samples, reference.samples)
                         and torch.equal(whole.log_prob, reference.log_prob))
    return {"kernel": name, "writes_per_run": writes[0], "kills_survived": survived,
            "by_kind": by_kind, "attempts": attempts,
            "runs": rounds, "runs_bit_identical": sum(identical), "seed": seed,
            "uninterrupted_s": round(uninterrupted, 2),
            "campaign_s": round(time.perf_counter() - t1, 2)}


def _attempt(name: str, out: Path, kind: str, delay: float, point: str, kth: int) -> int:
    """Fork a child that resumes the run; kill it as ``kind`` says; its wait status."""
    pid = os.fork()
    if pid == 0:
        try:
            if kind == "in a write":
                kill_in_write(point, kth)
            run(name, out)
        except BaseException as err:  # noqa: BLE001 - reported through the exit status
            print(f"child failed: {type(err).__name__}: {err}", file=sys.stderr)
            os._exit(3)
        os._exit(0)
    if kind == "timer":
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status
            time.sleep(0.002)
        os.kill(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)[1]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--kernel", choices=["mala", "flowmc"], nargs="+", default=["mala"])
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        for name in args.kernel:
            print(json.dumps(campaign(name, args.kills, args.seed, Path(d))), flush=True)


if __name__ == "__main__":
    main()

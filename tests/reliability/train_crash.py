"""SIGKILL campaign on ``flowmc-ebm train``, in the spirit of SQLite's crash tests.

One process imports torch and the CLI once and forks a child per attempt; each child runs
``flowmc_ebm.cli.main`` (what ``python -m flowmc_ebm.cli`` runs) on the command line a job
scheduler would re-run: the first time ``train --config C --out D``, then the same line with
``--resume`` (or without it while ``D/config.json`` does not exist yet). Each child is SIGKILLed at
a seeded random moment: either after a random delay (anywhere in start-up, an iteration, a
checkpoint or a JSON write) or, through `samplers.rundir`'s fault hook, inside the k-th file
write (after creating the temporary file, after writing it, after its fsync, after the rename,
after the directory fsync). After every kill the directory is checked: every checkpoint there
loads, the newest never goes back, every JSON file present parses. When a run finishes, its
parameters, optimizers, chains, generator, history and summary must equal the uninterrupted run's
bit for bit, but for the wall-clock fields (`WALL_CLOCK`). Prints one JSON line.

    python tests/reliability/train_crash.py --kills 20 --seed 0
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
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

from flowmc_ebm import cli  # noqa: E402
from flowmc_ebm.checkpoint import list_checkpoints, load_checkpoint  # noqa: E402
from samplers import rundir  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _faults import count_writes, kill_in_write  # noqa: E402

#: Fields of summary.json / history.json that differ between an interrupted and an
#: uninterrupted run by nature: wall-clock times, and the count of resumptions.
WALL_CLOCK = {"summary": ("wall_time", "wall_time_process", "resumptions"),
              "history": ("elapsed",)}

# A 4-D target, figures off (--no-figures: the campaign compares run files, not plots); no
# quadrature (2-D only); R-hat comes from the chain snapshots.
CONFIG = """
target = "high_dim"
sampler = "flowmc"
n_data = 256
iterations = {iterations}
checkpoint_every = 8

[trainer]
pool_size = 64
batch_size = 32
n_negatives = 32
mcmc_steps = 5
n_local = 4
n_global = 1
n_particles = 8
log_every = 2
keep_checkpoints = 2

[target_options]
dim = 4

[model]
energy_hidden = [16, 16]
flow_hidden = [8]
flow_transforms = 2
"""

STATE_KEYS = ["energy", "flow", "opt_energy", "opt_flow", "generator", "pool", "order", "cursor",
              "n_data", "iteration", "config", "model_config", "sampler"]


def same(a, b) -> bool:
    """Equal, with NaN equal to NaN, through nested lists, dicts and tensors."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return (isinstance(b, (list, tuple)) and len(a) == len(b)
                and all(same(x, y) for x, y in zip(a, b, strict=True)))
    return a == b


def _argv(config: Path, out: Path) -> list[str]:
    base = ["train", "--config", str(config), "--out", str(out), "--no-progress", "--no-figures"]
    return [*base, "--resume"] if (out / "config.json").exists() else base


def newest(out: Path) -> int:
    found = list_checkpoints(out / "checkpoints")
    return found[0][0] if found else -1


def check(out: Path, before: int) -> int:
    """What a kill may leave: every checkpoint loads, the newest did not go back, every JSON
    file parses; returns the newest iteration."""
    for _, path in list_checkpoints(out / "checkpoints"):
        load_checkpoint(path, "joint-trainer")
    if (out / "checkpoints" / "last.pt").exists():
        load_checkpoint(out / "checkpoints" / "last.pt", "joint-trainer")
    now = newest(out)
    assert now >= before, f"the newest checkpoint went back from {before} to {now}"
    for name in ("config.json", "history.json", "summary.json"):
        if (out / name).exists():
            json.loads((out / name).read_text())
    return now


def compare(reference: Path, out: Path) -> list[str]:
    """What differs between two finished runs, but for the wall-clock fields."""
    diffs = []
    a = load_checkpoint(reference / "checkpoints" / "last.pt", "joint-trainer")
    b = load_checkpoint(out / "checkpoints" / "last.pt", "joint-trainer")
    diffs += [f"checkpoint {k}" for k in STATE_KEYS if not same(a[k], b[k])]
    diffs += [f"checkpoint history {k}" for k in a["history"].keys() | b["history"].keys()
              if k not in WALL_CLOCK["history"]
              and not same(a["history"].get(k), b["history"].get(k))]
    diffs += ["checkpoint callbacks"] if not same(a["callbacks"], b["callbacks"]) else []
    for name in ("summary", "history"):
        x, y = (json.loads((d / f"{name}.json").read_text()) for d in (reference, out))
        for k in x.keys() | y.keys():
            if k not in WALL_CLOCK[name] and not same(x.get(k), y.get(k)):
                diffs.append(f"{name}.json {k}")
    return diffs


def campaign(kills: int, seed: int, workdir: Path, iterations: int = 96,
             per_run: int = 8) -> dict:
    """``kills`` SIGKILLs in all, at most ``per_run`` on one run (then it finishes uncut), each
    run compared with the uninterrupted one when it ends."""
    torch.set_num_threads(1)
    os.environ["CI"] = "1"  # no progress bars
    config = workdir / "run.toml"
    config.write_text(CONFIG.format(iterations=iterations))
    reference = workdir / "reference"
    log = workdir / "runs.log"
    writes = count_writes()
    t0 = time.perf_counter()
    status = _attempt(_argv(config, reference), log, "none", 0.0, "open", 0, in_process=True)
    summary = json.loads((reference / "summary.json").read_text())
    assert math.isfinite(summary["rhat"]), "too few snapshots for R-hat: lengthen the run"
    uninterrupted = time.perf_counter() - t0
    rundir.set_fault_hook(None)
    assert status == 0, log.read_text()
    rng = random.Random(seed)
    survived, attempts, rounds, by_kind = 0, 0, 0, {"timer": 0, "in a write": 0}
    by_point: dict[str, int] = {}
    identical, differences, resumptions, progress = [], [], [], []
    while survived < kills:
        rounds += 1
        out = workdir / f"run-{rounds}"
        done, cut = -1, 0
        while True:  # kill attempts on this run until one finishes it
            attempts += 1
            kind = "in a write" if rng.random() < 0.5 else "timer"
            if cut >= per_run or survived >= kills:
                kind = "none"
            left = (iterations - max(done, 0)) / iterations
            # Timer: once this attempt wrote a checkpoint of its own, within about one
            # checkpoint interval after it (an iteration, a checkpoint or a JSON write).
            delay = rng.uniform(0.0, uninterrupted * 8 / iterations)
            point = rng.choice(["open", "write", "fsync", "rename", "dirsync"])
            # A write of those left: checkpoints still to come, then config/history/summary.
            kth = rng.randint(1, round((writes[0] - 3) * left) + 3)
            status = _attempt(_argv(config, out), log, kind, delay, point, kth, out, done)
            if status == -signal.SIGKILL:
                survived, cut = survived + 1, cut + 1
                by_kind[kind] += 1
                if kind == "in a write":
                    by_point[point] = by_point.get(point, 0) + 1
                done = check(out, done)
                progress.append(done)
                continue
            if status != 0:
                raise SystemExit(f"attempt {attempts} ended with exit code {status}: "
                                 f"{log.read_text()[-2000:]}")
            break
        diff = compare(reference, out)
        identical.append(not diff)
        differences.append(diff)
        resumptions.append(json.loads((out / "summary.json").read_text())["resumptions"])
    text = log.read_text()
    return {"kills_survived": survived, "by_kind": by_kind, "in_write_by_point": by_point,
            "attempts": attempts, "runs": rounds, "runs_bit_identical": sum(identical),
            "differences": [d for d in differences if d], "resumptions": resumptions,
            "newest_checkpoint_after_each_kill": progress,
            "tracebacks": text.count("Traceback"), "writes_per_run": writes[0],
            "iterations": iterations, "seed": seed,
            "uninterrupted_s": round(uninterrupted, 2),
            "campaign_s": round(time.perf_counter() - t0 - uninterrupted, 2)}


def _attempt(argv: list[str], log: Path, kind: str, delay: float, point: str, kth: int,
             out: Path | None = None, done: int = -1, in_process: bool = False) -> int:
    """Run the CLI on ``argv`` in a forked child (or here); kill it as ``kind`` says (a timer
    starts once the newest checkpoint in ``out`` is past ``done``, or the run's last one is
    there). Returns the exit code, negative for a signal."""
    if in_process:
        with open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            return cli.main(argv)
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            if kind == "in a write":
                kill_in_write(point, kth)
            code = cli.main(argv)
        except BaseException:  # noqa: BLE001 - reported through the exit status and the log
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    if kind == "timer":
        deadline = None
        while deadline is None or time.monotonic() < deadline:
            if deadline is None and newest(out) > done:
                deadline = time.monotonic() + delay
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return _code(status)
            time.sleep(0.002)
        os.kill(pid, signal.SIGKILL)
    return _code(os.waitpid(pid, 0)[1])


def _code(status: int) -> int:
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iterations", type=int, default=96)
    p.add_argument("--per-run", type=int, default=8)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        print(json.dumps(campaign(args.kills, args.seed, Path(d), args.iterations,
                                  args.per_run)), flush=True)


if __name__ == "__main__":
    main()

"""Interrupted work: ``flowmc-ebm train`` killed with SIGKILL at random moments and resumed with
``--resume`` ends bit-identical to an uninterrupted run of the same seed; a truncated newest
checkpoint is skipped, named, and the run resumes from the one before.

Starting Python and importing torch + flowmc-ebm costs 4-15 s per process on a loaded 2-core
machine, so the killed runs are forked from one server process that imported the CLI once: each
run is a separate process running ``flowmc_ebm.cli.main(argv)``, exactly what ``python -m
flowmc_ebm.cli`` runs, and is killed with SIGKILL like any other.
"""

import json
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from flowmc_ebm import cli
from flowmc_ebm.checkpoint import list_checkpoints, load_checkpoint
from flowmc_ebm.trainer import JointTrainer

REPO = Path(__file__).resolve().parents[2]
ITERATIONS = 200
KILLS = 5

# A 4-D target: no figures or quadrature (2-D only) to spend time on at the end of the runs.
CONFIG = f"""
target = "high_dim"
sampler = "flowmc"
n_data = 256
iterations = {ITERATIONS}
checkpoint_every = 8

[trainer]
pool_size = 64
batch_size = 32
n_negatives = 32
mcmc_steps = 5
n_local = 4
n_global = 1
n_particles = 8
log_every = 4
keep_checkpoints = 2

[target_options]
dim = 4

[model]
energy_hidden = [16, 16]
flow_hidden = [8]
flow_transforms = 2
"""

# Reads one JSON argv per line; forks a child running the CLI on it (output to a log file);
# answers "pid N", then "exit CODE" (negative: killed by that signal) when the child is gone.
SERVER = textwrap.dedent("""
    import json, os, sys
    import torch
    torch.set_num_threads(1)
    from flowmc_ebm import cli
    print("ready", flush=True)
    for line in sys.stdin:
        argv, log = json.loads(line)
        pid = os.fork()
        if pid == 0:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            try:
                code = cli.main(argv)
            except BaseException:
                import traceback
                traceback.print_exc()
                code = 99
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print(f"exit {code}", flush=True)
""")


class Server:
    def __init__(self, tmp_path):
        script = tmp_path / "server.py"
        script.write_text(SERVER)
        env = {**os.environ, "PYTHONPATH": str(REPO), "CI": "1", "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
        self.log = tmp_path / "runs.log"
        assert self.proc.stdout.readline().strip() == "ready"

    def start(self, argv):
        self.proc.stdin.write(json.dumps([argv, str(self.log)]) + "\n")
        self.proc.stdin.flush()
        word, pid = self.proc.stdout.readline().split()
        assert word == "pid"
        return int(pid)

    def wait(self):
        word, code = self.proc.stdout.readline().split()
        assert word == "exit"
        return int(code)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def newest(directory):
    found = list_checkpoints(directory)
    return found[0][0] if found else -1


def same(a, b):
    """Equal, with NaN equal to NaN, through nested lists and dicts."""
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


def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(CONFIG)
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    server = Server(tmp_path)
    try:
        server.start(["train", "--config", str(config), "--out", str(reference), "--no-progress"])
        assert server.wait() == 0, server.log.read_text()

        # Random moments, seeded: past a random iteration (so the runs are cut at spread-out
        # points whatever the machine's speed), then a random fraction of a checkpoint interval
        # (so the kill lands anywhere in an iteration or a checkpoint write).
        rng = random.Random(20261201)
        span = (ITERATIONS - 40) // KILLS
        targets = [rng.randrange(4 + k * span, (k + 1) * span) for k in range(KILLS)]
        moments, resumed_from = [], []
        for kill in range(KILLS):
            before = newest(interrupted / "checkpoints")
            resume = ["--resume"] if kill else ["--config", str(config)]
            pid = server.start(["train", *resume, "--out", str(interrupted), "--no-progress"])
            deadline = time.monotonic() + 60
            # Kill only once this run made progress of its own.
            while newest(interrupted / "checkpoints") <= max(before, targets[kill]):
                assert time.monotonic() < deadline, server.log.read_text()
                time.sleep(0.005)
            moments.append(rng.uniform(0.0, 0.05))
            time.sleep(moments[-1])
            os.kill(pid, signal.SIGKILL)
            assert server.wait() == -signal.SIGKILL, f"kill {kill}: run ended first"
            resumed_from.append(newest(interrupted / "checkpoints"))
        server.start(["train", "--resume", "--out", str(interrupted), "--no-progress"])
        assert server.wait() == 0, server.log.read_text()
    finally:
        server.close()

    assert len(moments) == KILLS and all(i < ITERATIONS for i in resumed_from)
    assert resumed_from == sorted(resumed_from) and len(set(resumed_from)) == KILLS
    log = server.log.read_text()
    assert log.count("resuming from") == KILLS and "Traceback" not in log

    a = load_checkpoint(reference / "checkpoints" / "last.pt", "joint-trainer")
    b = load_checkpoint(interrupted / "checkpoints" / "last.pt", "joint-trainer")
    assert a["iteration"] == b["iteration"] == ITERATIONS
    for key in ["energy", "flow", "opt_energy", "opt_flow", "generator", "pool", "order",
                "cursor", "n_data", "config", "model_config", "sampler"]:
        assert same(a[key], b[key]), key
    # The history is the same but for the wall-clock times.
    assert a["history"].keys() == b["history"].keys()
    assert "restarts" not in a["history"]
    for key in a["history"]:
        if key != "elapsed":
            assert same(a["history"][key], b["history"][key]), key
    history = {k: v for k, v in json.loads((interrupted / "history.json").read_text()).items()
               if k != "elapsed"}
    assert history == {k: v for k, v in json.loads((reference / "history.json").read_text()).items()
                       if k != "elapsed"}
    assert len(history["iteration"]) == ITERATIONS
    # What the killed runs left behind: only good checkpoints, no temporary files.
    names = sorted(p.name for p in (interrupted / "checkpoints").iterdir())
    assert names == [f"iter-{ITERATIONS - 8:06d}.pt", f"iter-{ITERATIONS:06d}.pt", "last.pt"]
    for name in names:
        load_checkpoint(interrupted / "checkpoints" / name, "joint-trainer")


TINY = ["--set", "trainer.pool_size=32", "--set", "trainer.batch_size=16", "--set",
        "trainer.n_negatives=16", "--set", "trainer.log_every=5", "--set", "trainer.eval_every=0",
        "--set", "trainer.keep_checkpoints=3", "--set", "checkpoint_every=5",
        "--set", "model.energy_hidden=[8]", "--set", "model.flow_hidden=[8]",
        "--set", "n_data=128", "--no-progress"]


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_resume_skips_a_damaged_newest_checkpoint_and_names_it(tmp_path, capsys, damage):
    straight, run = tmp_path / "straight", tmp_path / "run"
    assert cli.main(["train", "--iterations", "30", "--out", str(straight), *TINY]) == 0
    assert cli.main(["train", "--iterations", "20", "--out", str(run), *TINY]) == 0
    newest_file = run / "checkpoints" / "iter-000020.pt"
    data = newest_file.read_bytes()
    newest_file.write_bytes(data[:len(data) // 3] if damage == "truncate"
                            else data[:100] + b"\0" * 64 + data[164:])
    capsys.readouterr()
    assert cli.main(["train", "--resume", "--iterations", "30", "--out", str(run),
                     "--no-progress"]) == 0
    captured = capsys.readouterr()
    (warning,) = captured.err.strip().splitlines()
    assert warning.startswith("warning: skipped a newer checkpoint: ")
    assert "iter-000020.pt is not a readable flowmc-ebm checkpoint" in warning
    assert "resuming from" in captured.out and "iter-000015.pt (iteration 15)" in captured.out
    a = JointTrainer.load(straight / "checkpoints" / "last.pt")
    b = JointTrainer.load(run / "checkpoints" / "last.pt")
    assert a.iteration_ == b.iteration_ == 30
    assert all(torch.equal(p, q) for p, q in zip(a._parameters(), b._parameters(), strict=True))
    assert torch.equal(a.pool_, b.pool_)
    assert a.history_["loss_energy"] == b.history_["loss_energy"]
    # The damaged file was replaced by a good one of the same number; three kept.
    assert [i for i, _ in list_checkpoints(run / "checkpoints")] == [30, 25, 20]
    assert load_checkpoint(newest_file, "joint-trainer")["iteration"] == 20


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_over(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--iterations", "6", "--out", str(run), *TINY]) == 0
    for path in (run / "checkpoints").iterdir():
        path.unlink()
    capsys.readouterr()
    assert cli.main(["train", "--resume", "--out", str(run), "--no-progress"]) == 0
    assert "the run starts again from iteration 0" in capsys.readouterr().err
    assert JointTrainer.load(run / "checkpoints" / "last.pt").iteration_ == 6

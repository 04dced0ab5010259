"""A training run directory has one writer, atomic files, a graceful stop and a resume that takes
the command line a job scheduler re-runs.

- 2 and 4 ``flowmc-ebm train`` started together on one ``--out``: exactly one runs (and ends
  equal to a run alone), the others exit 2 with one line naming the directory and the winner's
  pid; a reader polling `latest_checkpoint` meanwhile always loads a good checkpoint.
- ``JointTrainer.fit(checkpoint_dir=...)`` on a directory another process holds fails at once,
  writing nothing.
- SIGTERM / SIGINT: the iteration finishes, a checkpoint is committed, one line says how to
  resume, exit 143 / 130; resumed, the run equals the uninterrupted one bit for bit.
- A full disk at config.json, summary.json or a checkpoint: one line naming the file and saying
  the previous version is intact; that version still reads and the run resumes.
- ``--resume`` with the same flags is accepted; a flag that differs is refused naming the key and
  both values.

Children are forked from this process (which imported torch and the CLI once).
"""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from flowmc_ebm import cli
from flowmc_ebm.checkpoint import latest_checkpoint, load_checkpoint
from flowmc_ebm.trainer import JointTrainer
from samplers import rundir
from samplers.rundir import RunDirectoryLocked

TINY = ["--set", "trainer.pool_size=32", "--set", "trainer.batch_size=16", "--set",
        "trainer.n_negatives=16", "--set", "trainer.log_every=5", "--set", "trainer.eval_every=0",
        "--set", "trainer.keep_checkpoints=3", "--set", "checkpoint_every=5",
        "--set", "model.energy_hidden=[8]", "--set", "model.flow_hidden=[8]",
        "--set", "n_data=128", "--no-progress"]
WALL_CLOCK = ("wall_time", "wall_time_process", "resumptions")


def train(out, iterations, *extra):
    return ["train", "--iterations", str(iterations), "--out", str(out), *TINY, *extra]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 30-iteration run, alone."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert cli.main(train(out, 30)) == 0
    return out


def assert_same_run(a: Path, b: Path):
    x = JointTrainer.load(a / "checkpoints" / "last.pt")
    y = JointTrainer.load(b / "checkpoints" / "last.pt")
    assert x.iteration_ == y.iteration_
    assert all(torch.equal(p, q) for p, q in zip(x._parameters(), y._parameters(), strict=True))
    assert torch.equal(x.pool_, y.pool_)
    history = [{k: v for k, v in json.loads((d / "history.json").read_text()).items()
                if k != "elapsed"} for d in (a, b)]
    assert history[0] == history[1]
    summary = [{k: v for k, v in json.loads((d / "summary.json").read_text()).items()
                if k not in WALL_CLOCK} for d in (a, b)]
    assert summary[0] == summary[1]


def fork_cli(argv, log: Path, gate: tuple[int, int] | None = None) -> int:
    """A child running ``cli.main(argv)`` (stdout and stderr to ``log``.out/.err), started when
    the write end of ``gate`` (a pipe) closes."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            if gate is not None:
                os.close(gate[1])
                os.read(gate[0], 1)
            for fd, suffix in ((1, ".out"), (2, ".err")):
                os.dup2(os.open(f"{log}{suffix}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            # pytest's capture replaced sys.stdout/sys.stderr: write to the files instead.
            sys.stdout, sys.stderr = (open(fd, "w", buffering=1, closefd=False) for fd in (1, 2))
            code = cli.main(argv)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid


def exit_code(pid: int) -> int:
    status = os.waitpid(pid, 0)[1]
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


@pytest.mark.parametrize("writers", [2, 4])
def test_writers_started_together_one_runs_the_others_get_one_line(tmp_path, reference, writers):
    out = tmp_path / "run"
    read, write = os.pipe()
    pids = [fork_cli(train(out, 30), tmp_path / f"w{i}", gate=(read, write))
            for i in range(writers)]
    os.close(read)
    os.close(write)  # all start now
    # A reader meanwhile: whatever it finds loads (no lock needed).
    seen, codes = set(), {}
    while len(codes) < writers:
        try:
            path = latest_checkpoint(out / "checkpoints")
            seen.add(load_checkpoint(path, "joint-trainer")["iteration"])
        except FileNotFoundError:
            pass
        for p in pids:
            if p not in codes:
                done, status = os.waitpid(p, os.WNOHANG)
                if done:
                    codes[p] = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
        time.sleep(0.01)
    errs = [(tmp_path / f"w{i}.err").read_text().strip().splitlines() for i in range(writers)]
    winners = [i for i, e in enumerate(errs) if not e]
    assert len(winners) == 1, errs
    (winner,) = winners
    assert [codes[p] for p in pids] == [0 if i == winner else 2 for i in range(writers)]
    for i, lines in enumerate(errs):
        if i != winner:
            assert len(lines) == 1, lines
            assert lines[0].startswith("flowmc-ebm train: error: run directory "), lines
            assert f"{out} is being written by another process (pid {pids[winner]})" in lines[0]
    assert "weight" in (tmp_path / f"w{winner}.out").read_text()  # the summary line
    assert seen and seen <= {5, 10, 15, 20, 25, 30}
    assert_same_run(reference, out)


def test_fit_on_a_directory_another_process_holds_fails_at_once(tmp_path):
    directory = tmp_path / "ckpt"
    directory.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({str(directory / '.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\nos.write(fd, f'{os.getpid()}\\n'.encode())\n"
         "print('locked', flush=True)\ntime.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        trainer = JointTrainer.from_config(2)
        data = torch.randn(64, 2)
        with pytest.raises(RunDirectoryLocked, match=rf"pid {holder.pid}\)"):
            trainer.fit(data, n_iterations=3, checkpoint_dir=directory, progress=False)
        assert trainer.iteration_ == 0 and trainer.pool_ is None
        assert [p.name for p in directory.iterdir()] == [".lock"]
    finally:
        holder.kill()
        holder.wait()
    # The kernel dropped the lock with its holder: the directory is free again.
    trainer.fit(data, n_iterations=3, checkpoint_dir=directory, progress=False)
    assert latest_checkpoint(directory).name == "iter-000003.pt"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_with_a_checkpoint_and_resume_is_exact(tmp_path, reference, signum):
    out, log = tmp_path / "run", tmp_path / "child"
    pid = fork_cli(train(out, 30), log)
    deadline = time.monotonic() + 60
    while not (out / "checkpoints" / "iter-000005.pt").exists():
        assert time.monotonic() < deadline and os.waitpid(pid, os.WNOHANG) == (0, 0)
        time.sleep(0.002)
    os.kill(pid, signum)
    assert exit_code(pid) == 128 + signum
    (line,) = (tmp_path / "child.err").read_text().strip().splitlines()
    name = signal.Signals(signum).name
    assert line.startswith(f"flowmc-ebm train: stopped by {name} after iteration "), line
    assert line.endswith(f"; resume with: flowmc-ebm train --resume --out {out}"), line
    stopped = int(line.split("after iteration ")[1].split(";")[0])
    assert 5 <= stopped < 30
    assert load_checkpoint(latest_checkpoint(out / "checkpoints"),
                           "joint-trainer")["iteration"] == stopped
    # The scheduler's way: the same line, --resume added.
    assert cli.main(train(out, 30, "--resume")) == 0
    assert_same_run(reference, out)
    assert json.loads((out / "summary.json").read_text())["resumptions"] == 1


@pytest.mark.parametrize("name", ["config.json", "summary.json", "iter-000025.pt"])
def test_a_full_disk_names_the_file_and_the_previous_version_reads(tmp_path, capsys, reference,
                                                                   name):
    out = tmp_path / "run"
    assert cli.main(train(out, 20)) == 0
    target = out / name if name.endswith(".json") else out / "checkpoints" / name
    before = target.read_bytes() if target.exists() else None

    def full(point, path):
        if point == "write" and path.name == name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    capsys.readouterr()
    previous = rundir.set_fault_hook(full)
    try:
        assert cli.main(train(out, 30, "--resume")) == 2
    finally:
        rundir.set_fault_hook(previous)
    (line,) = capsys.readouterr().err.strip().splitlines()
    intact = "its previous version is intact" if before is not None else \
        "no previous version existed; nothing was left behind"
    assert line.startswith("flowmc-ebm train: error: "), line
    assert line.endswith(f"cannot write {target}: No space left on device; {intact}"), line
    assert (target.read_bytes() if target.exists() else None) == before
    if before is not None and name.endswith(".json"):
        json.loads(before)
    assert not [p for d in (out, out / "checkpoints") for p in d.iterdir()
                if p.name.endswith(".tmp")]
    # Space freed: the run resumes and ends as the uninterrupted one.
    assert cli.main(train(out, 30, "--resume")) == 0
    assert_same_run(reference, out)


def test_resume_takes_the_same_line_and_refuses_a_changed_setting(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(train(out, 10, "--seed", "3")) == 0
    assert cli.main(train(out, 10, "--seed", "3", "--resume")) == 0  # nothing left: the report
    capsys.readouterr()
    assert cli.main(train(out, 15, "--seed", "4", "--resume")) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (f"flowmc-ebm train: error: --resume: data_seed is 4 on this command line "
                    f"but 3 in the saved run ({out / 'config.json'}); only --epochs or "
                    "--iterations may change")
    assert cli.main(train(out, 15, "--seed", "3", "--resume", "--set",
                          "trainer.lr_flow=0.5")) == 2
    assert "trainer.lr_flow is 0.5 on this command line but 0.01 in the saved run" in \
        capsys.readouterr().err
    assert JointTrainer.load(out / "checkpoints" / "last.pt").iteration_ == 10
    # The bare form and a longer run are fine.
    assert cli.main(["train", "--resume", "--iterations", "15", "--out", str(out),
                     "--no-progress"]) == 0
    assert JointTrainer.load(out / "checkpoints" / "last.pt").iteration_ == 15

"""``flowmc-ebm sample --stream DIR [--resume]`` and ``diagnose DIR``: a streamed run gives the
draws of an in-memory one; SIGINT/SIGTERM stop it after a commit with one line saying how to
resume (exit 130/143) and ``--resume`` finishes it bit-identical; a second writer is refused in
one line naming the holder's pid; ``diagnose`` reads a streamed directory chunk by chunk."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import samplers
from flowmc_ebm import cli
from flowmc_ebm.commands import sample as sample_command

ROOT = Path(__file__).resolve().parents[2]
RUN = ["sample", "--target", "two_modes", "--kernel", "mala", "--chains", "4", "--steps", "40",
       "--warmup", "10", "--thin", "2", "--no-progress"]


def one_line(capsys, argv, code):
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == code, (rc, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


@pytest.fixture(scope="module")
def in_memory(tmp_path_factory):
    path = tmp_path_factory.mktemp("mem") / "t.npz"
    assert cli.main([*RUN, "--out", str(path)]) == 0
    return samplers.Trace.load(path)


def test_a_streamed_run_gives_the_in_memory_draws_and_diagnoses(tmp_path, capsys, in_memory):
    d = tmp_path / "run"
    assert cli.main([*RUN, "--stream", str(d), "--chunk-size", "6"]) == 0
    assert "streamed 20 draws x 4 chains of mala on two_modes" in capsys.readouterr().out
    streamed = samplers.open_trace(d).load()
    torch.testing.assert_close(streamed.samples, in_memory.samples, rtol=0, atol=0)
    assert cli.main(["diagnose", str(d), "--target", "two_modes"]) == 0
    out = capsys.readouterr().out
    assert f"{d}: streamed run, complete, 4 chunks" in out and "R-hat" in out
    assert cli.main(["diagnose", str(d), "--max-draws", "7"]) == 0
    assert "every 3-th draw kept, 7 of 20, to fit memory" in capsys.readouterr().out


def test_sigint_stops_after_a_commit_and_resume_finishes_the_run(tmp_path, capsys, monkeypatch,
                                                                 in_memory):
    build = sample_command.build_kernel
    steps = [0]

    def interrupting(*args):
        kernel = build(*args)
        step = kernel.step

        def counted(state, generator=None):
            steps[0] += 1
            if steps[0] == 10 + 9:  # Ctrl-C mid-chunk: the chunk is finished and committed
                os.kill(os.getpid(), signal.SIGINT)
            return step(state, generator)

        kernel.step = counted
        return kernel

    monkeypatch.setattr(sample_command, "build_kernel", interrupting)
    d = tmp_path / "run"
    line = one_line(capsys, [*RUN, "--stream", str(d), "--chunk-size", "6"], 130)
    assert line == (f"flowmc-ebm sample: stopped by SIGINT after committing 6 draws to {d}; run "
                    "the same command with --resume to continue")
    monkeypatch.undo()
    assert cli.main([*RUN, "--stream", str(d), "--chunk-size", "6", "--resume"]) == 0
    assert "resumed 1 times" in capsys.readouterr().out
    torch.testing.assert_close(samplers.open_trace(d).load().samples, in_memory.samples,
                               rtol=0, atol=0)


def test_sigterm_to_a_streaming_process_exits_143_after_a_commit(tmp_path, in_memory):
    d = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "flowmc_ebm.cli", *RUN[:-3], "--steps", str(10**6),
            "--no-progress", "--stream", str(d), "--chunk-size", "5"]
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if (d / "manifest.json").exists() and samplers.open_trace(d)._listed >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    rc, err = proc.wait(timeout=60), proc.stderr.read()
    assert rc == 143, err
    assert err.count("\n") == 1 and "stopped by SIGTERM after committing" in err
    assert "the same command with --resume" in err
    run = samplers.open_trace(d)
    assert not run.complete and run.n_draws >= 10 and run.n_draws % 5 == 0


HOLDER = f"""
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("rundir", {str(ROOT / "samplers" / "rundir.py")!r})
rundir = importlib.util.module_from_spec(spec); spec.loader.exec_module(rundir)
rundir.RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_writer_is_one_line_naming_the_holder(tmp_path, capsys):
    d = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(d)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        line = one_line(capsys, [*RUN, "--stream", str(d), "--resume"], 2)
        assert f"run directory {d} is being written by another process (pid {proc.pid})" in line
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert sorted(p.name for p in d.iterdir()) == [".lock"]  # touched nothing


@pytest.mark.parametrize("argv, message", [
    (["--out", "t.npz", "--resume"], "--resume applies to a streamed run; pass --stream DIR"),
    (["--out", "t.npz", "--chunk-size", "5"], "--chunk-size applies to a streamed run"),
])
def test_stream_flags_without_stream_are_one_line(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    assert message in one_line(capsys, [*RUN, *argv], 2)


def test_resume_with_other_flags_is_refused_naming_the_setting(tmp_path, capsys):
    d = tmp_path / "run"
    assert cli.main([*RUN, "--stream", str(d), "--chunk-size", "6"]) == 0
    capsys.readouterr()
    line = one_line(capsys, [*RUN[:-1], "--thin", "1", "--no-progress", "--stream", str(d),
                             "--chunk-size", "6", "--resume"], 2)
    assert f"cannot resume {d} with different settings: thin was 2 when the run started, now 1" in line

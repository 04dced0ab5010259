"""The run directory's two guarantees (`samplers.rundir`): a write stopped at any step (an
exception, a SIGKILL, a full disk) leaves the previous version of the file whole, and of several
writers started together on one directory exactly one runs while the others exit at once with
one line naming the directory and the holder's pid."""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from samplers import rundir
from samplers.rundir import RunDirectoryLocked, RunLock, atomic_write

RUNDIR_PY = Path(rundir.__file__)
POINTS = ["open", "write", "fsync", "rename", "dirsync"]
# Load rundir.py alone (not the samplers package, which imports torch): subprocesses start in
# ~50 ms, so several really do start together.
PRELUDE = f"""
import importlib.util, os, signal, sys, time
spec = importlib.util.spec_from_file_location("rundir", {str(RUNDIR_PY)!r})
rundir = importlib.util.module_from_spec(spec); spec.loader.exec_module(rundir)
"""


class Stop(Exception):
    pass


@pytest.fixture(autouse=True)
def no_hook():
    yield
    rundir.set_fault_hook(None)


def names(d):
    return sorted(p.name for p in Path(d).iterdir())


@pytest.mark.parametrize("point", POINTS)
def test_a_write_interrupted_at_any_step_leaves_one_whole_version(tmp_path, point):
    path = atomic_write(tmp_path / "f.json", b"old version")
    new = b"new version, longer than the old"

    def hook(p, _):
        if p == point:
            raise Stop

    rundir.set_fault_hook(hook)
    with pytest.raises(Stop):
        atomic_write(path, lambda f: f.write(new))
    expected = b"old version" if point in ("open", "write", "fsync") else new
    assert path.read_bytes() == expected
    assert names(tmp_path) == ["f.json"]  # the temporary file was removed


KILLED_WRITE = PRELUDE + """
path = sys.argv[1]
rundir.atomic_write(path, b"version 1")
def hook(point, _):
    if point == sys.argv[2]:
        os.kill(os.getpid(), signal.SIGKILL)
rundir.set_fault_hook(hook)
rundir.atomic_write(path, b"version 2" * 1000)
"""


@pytest.mark.parametrize("point", POINTS)
def test_a_write_sigkilled_at_any_step_leaves_one_whole_version(tmp_path, point):
    path = tmp_path / "f.bin"
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITE, str(path), point],
                          capture_output=True, timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert path.read_bytes() in (b"version 1", b"version 2" * 1000)
    assert path.read_bytes() == (b"version 1" if point in ("open", "write", "fsync")
                                 else b"version 2" * 1000)
    leftovers = [n for n in names(tmp_path) if n.endswith(".tmp")]
    assert len(leftovers) == (1 if point in ("open", "write", "fsync") else 0)
    with RunLock(tmp_path):  # the next writer clears what the dead one left
        rundir.sweep_leftovers(tmp_path)
    assert names(tmp_path) == [".lock", "f.bin"]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
@pytest.mark.parametrize("where", ["write", "fsync"])
def test_full_disk_or_io_error_names_the_file_and_keeps_the_previous_version(
        tmp_path, monkeypatch, code, where):
    path = atomic_write(tmp_path / "manifest.json", b"previous")

    def fail(*args):
        raise OSError(code, os.strerror(code))

    if where == "fsync":
        monkeypatch.setattr(os, "fsync", fail)
        data = b"new"
    else:
        def data(f):
            f.write(b"half")
            fail()
    with pytest.raises(OSError) as info:
        atomic_write(path, data)
    monkeypatch.undo()
    assert info.value.errno == code
    message = str(info.value)
    assert str(path) in message and "previous version is intact" in message
    assert os.strerror(code) in message and "\n" not in message
    assert path.read_bytes() == b"previous" and names(tmp_path) == ["manifest.json"]


def test_a_failed_first_write_says_nothing_was_left(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="new.json: No space left on device; no previous version") as info:
        atomic_write(tmp_path / "new.json", b"x")
    monkeypatch.undo()
    # One line a CLI can print as is: no "[Errno 28]" before it, the errno still on the error.
    assert str(info.value).startswith("cannot write ") and info.value.errno == errno.ENOSPC
    assert names(tmp_path) == []


WRITER = PRELUDE + """
d, start, hold = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
while time.time() < start:
    time.sleep(0.001)
try:
    lock = rundir.RunLock(d).acquire()
except rundir.RunDirectoryLocked as err:
    print(err, file=sys.stderr)
    sys.exit(3)
for i in range(5):
    rundir.atomic_write(os.path.join(d, "out.txt"), f"{os.getpid()} {i}".encode())
    time.sleep(hold / 5)
print(os.getpid())
"""


@pytest.mark.parametrize("n_writers", [2, 4])
def test_of_writers_started_together_exactly_one_runs(tmp_path, n_writers):
    run = tmp_path / "run"
    start = time.time() + 1.0  # every process is up and waiting by then
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(run), str(start), "1.5"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(n_writers)]
    results = [(p.wait(timeout=30), p.stdout.read(), p.stderr.read()) for p in procs]
    winners = [r for r in results if r[0] == 0]
    losers = [r for r in results if r[0] != 0]
    assert len(winners) == 1, results
    pid = winners[0][1].strip()
    for rc, _, err in losers:
        assert rc == 3
        assert err.count("\n") == 1 and "Traceback" not in err
        assert f"run directory {run} is being written by another process (pid {pid})" in err
    assert (run / "out.txt").read_text() == f"{pid} 4"  # the survivor's file, untouched
    assert names(run) == [".lock", "out.txt"]


HOLDER = PRELUDE + """
lock = rundir.RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_a_sigkilled_writer_leaves_no_stale_lock(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirectoryLocked, match=f"pid {proc.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with RunLock(tmp_path) as lock:  # the kernel dropped the dead process's lock
        assert lock.held
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())


def test_the_lock_is_reentrant_within_a_process_and_released_by_the_last_holder(tmp_path):
    outer = RunLock(tmp_path).acquire()
    with RunLock(tmp_path):
        pass
    assert outer.held and str(tmp_path.resolve()) in rundir._held
    outer.release()
    assert str(tmp_path.resolve()) not in rundir._held
    outer.release()  # a second release is harmless


def test_a_symlinked_lock_file_is_refused(tmp_path):
    (tmp_path / "elsewhere").write_text("")
    (tmp_path / ".lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError, match="is a symbolic link"):
        RunLock(tmp_path).acquire()


@pytest.mark.skipif(not hasattr(os, "fchmod"), reason="POSIX file modes")
def test_written_files_get_the_mode_open_would_give_and_replaced_files_keep_theirs(tmp_path):
    # mkstemp's 0600 must not leak into a user's results (group/others could no longer read them).
    old = os.umask(0o022)
    try:
        fresh = atomic_write(tmp_path / "fresh.json", b"{}")
        with open(tmp_path / "plain.json", "wb") as f:
            f.write(b"{}")
        assert fresh.stat().st_mode & 0o777 == (tmp_path / "plain.json").stat().st_mode & 0o777 == 0o644
        kept = tmp_path / "kept.json"
        kept.write_bytes(b"1")
        kept.chmod(0o640)
        atomic_write(kept, b"2")
        assert kept.stat().st_mode & 0o777 == 0o640 and kept.read_bytes() == b"2"
    finally:
        os.umask(old)

"""Streaming a run to disk (`samplers.sample(..., out=dir, chunk_size=N)`): the same draws as in
memory, chunk boundaries that respect thinning, one chunk's buffers whatever the run length,
completed chunks readable after a kill, and corrupt chunks reported by file name."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.distributions import Independent, Normal

import samplers
from samplers import driver

ROOT = Path(__file__).resolve().parents[2]


def gaussian(x):
    return -0.5 * x.flatten(1).pow(2).sum(1)


def make(name):
    if name == "mala":
        return samplers.MALA(gaussian, 0.5)
    q = Independent(Normal(torch.zeros(2), 1.5 * torch.ones(2)), 1)
    return samplers.ISIR(gaussian, q, n_particles=3)


def run(name, out=None, **kwargs):
    kwargs.setdefault("n_steps", 60)
    return samplers.sample(make(name), torch.zeros(5, 2), warmup=7, progress=False, out=out,
                           generator=torch.Generator().manual_seed(11), **kwargs)


def assert_same_draws(a, b):
    for x, y in [(a.samples, b.samples), (a.log_prob, b.log_prob)]:
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    assert a.stats.keys() == b.stats.keys()
    for k in a.stats:
        torch.testing.assert_close(a.stats[k], b.stats[k], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["mala", "isir"])
@pytest.mark.parametrize("n_steps, thin, chunk_size", [
    (60, 1, 60),  # one chunk, exactly full
    (60, 3, 7),  # 20 draws: chunks of 7, 7, 6
    (61, 4, 5),  # 15 draws, one step left over after the last kept one
    (20, 2, 1),  # one draw per chunk
    (30, 2, 100),  # chunk larger than the run
])
def test_streamed_draws_equal_in_memory_draws(tmp_path, name, n_steps, thin, chunk_size):
    memory = run(name, n_steps=n_steps, thin=thin)
    streamed = run(name, tmp_path / "run", n_steps=n_steps, thin=thin, chunk_size=chunk_size)
    n_draws = n_steps // thin
    assert isinstance(streamed, samplers.StreamedTrace) and streamed.complete
    sizes = [c.n_draws for c in streamed.chunks()]
    assert sizes == [chunk_size] * (n_draws // chunk_size) + ([n_draws % chunk_size] if n_draws %
                                                               chunk_size else [])
    loaded = streamed.load()
    assert_same_draws(loaded, memory)
    assert (loaded.warmup, loaded.thin, loaded.kernel) == (7, thin, memory.kernel)
    assert loaded.wall_time > 0 and streamed.n_draws == n_draws
    torch.testing.assert_close(streamed.state.x, memory.state.x, rtol=0, atol=0)
    assert_same_draws(samplers.Trace.load(tmp_path / "run"), memory)
    assert_same_draws(samplers.open_trace(tmp_path / "run").load(), memory)
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    # The lock file, and the run state of the last commit, to resume from.
    state = [n for n in names if n.startswith("state-")]
    assert len(state) == 1
    assert names == sorted([".lock", "manifest.json", *state]
                           + [f"chunk-{i:06d}.npz" for i in range(len(sizes))])


def test_buffers_hold_one_chunk_whatever_the_run_length(tmp_path, monkeypatch):
    sizes = []

    class Recording(driver._Draws):
        def __init__(self, size, x0):
            sizes.append(size)
            super().__init__(size, x0)

    monkeypatch.setattr(driver, "_Draws", Recording)
    for n_steps in [100, 2000]:
        run("mala", tmp_path / str(n_steps), n_steps=n_steps, thin=2, chunk_size=16)
    run("mala", n_steps=2000, thin=2)  # in memory: the whole run
    assert sizes == [16, 16, 1000]


class Interrupted(samplers.MALA):
    """MALA that is interrupted (like Ctrl-C) before its ``stop``-th step."""

    def __init__(self, stop):
        super().__init__(gaussian, 0.5)
        self.left = stop

    def step(self, state, generator=None):
        self.left -= 1
        if self.left < 0:
            raise KeyboardInterrupt
        return super().step(state, generator)


def test_interrupted_run_leaves_its_completed_chunks_readable(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        samplers.sample(Interrupted(7 + 47), torch.zeros(5, 2), 60, warmup=7, thin=2,
                        out=tmp_path, chunk_size=6, progress=False,
                        generator=torch.Generator().manual_seed(11))
    reader = samplers.open_trace(tmp_path)
    # 47 post-warm-up steps give 23 draws; 3 full chunks of 6 were written, 5 draws were lost.
    assert not reader.complete and reader.wall_time is None
    assert len(reader.files) == 3 and reader.n_draws == 18
    memory = run("mala", n_steps=60, thin=2)
    part = reader.load()
    torch.testing.assert_close(part.samples, memory.samples[:, :18], rtol=0, atol=0)


KILLED_RUN = """
import sys, torch, samplers
torch.set_num_threads(1)
kernel = samplers.MALA(lambda x: -0.5 * x.pow(2).sum(-1), 0.5)
samplers.sample(kernel, torch.zeros(8, 2), 10**8, thin=3, out=sys.argv[1], chunk_size=20,
                progress=False, generator=torch.Generator().manual_seed(5))
"""


def test_sigkilled_run_leaves_its_completed_chunks_readable(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(out)], env=env,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            manifest = out / "manifest.json"
            if manifest.exists() and json.loads(manifest.read_text())["n_chunks"] >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    reader = samplers.open_trace(out)
    assert not reader.complete and len(reader.files) >= 3
    part = reader.load()
    assert part.n_draws == 20 * len(reader.files)
    kernel = samplers.MALA(lambda x: -0.5 * x.pow(2).sum(-1), 0.5)
    memory = samplers.sample(kernel, torch.zeros(8, 2), 3 * part.n_draws, thin=3, progress=False,
                             generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(part.samples, memory.samples, rtol=0, atol=0)


@pytest.fixture
def streamed(tmp_path):
    out = tmp_path / "run"
    run("mala", out, n_steps=40, thin=2, chunk_size=5)  # 4 chunks
    return out


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_corrupt_chunk_is_a_value_error_naming_the_file(streamed, damage):
    chunk = streamed / "chunk-000002.npz"
    data = chunk.read_bytes()
    broken = {"truncate": data[: len(data) // 2],
              # A byte inside the stored samples: the zip member's CRC no longer matches.
              "flip": data[:200] + bytes([data[200] ^ 0xFF]) + data[201:],
              "garbage": b"not a zip file at all",
              "empty": b""}[damage]
    chunk.write_bytes(broken)
    reader = samplers.open_trace(streamed)
    first_two = list(zip(range(2), reader.chunks(), strict=False))
    assert len(first_two) == 2  # the chunks before the damage still read
    with pytest.raises(ValueError, match="chunk-000002.npz"):
        reader.load()
    with pytest.raises(ValueError, match="chunk-000002.npz"):
        samplers.Trace.load(streamed)


def test_missing_or_foreign_chunks_and_manifest_are_named(streamed):
    one, three = streamed / "chunk-000001.npz", streamed / "chunk-000003.npz"
    one.rename(streamed / "swap")
    three.rename(one)
    (streamed / "swap").rename(three)  # chunks 1 and 3 swapped: draws out of order
    with pytest.raises(ValueError, match="chunk-000001.npz: its first draw is 15, expected 5"):
        samplers.open_trace(streamed).load()
    one.unlink()
    with pytest.raises(ValueError, match="missing chunk file .*chunk-000001.npz"):
        samplers.open_trace(streamed)
    (streamed / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="manifest.json"):
        samplers.open_trace(streamed)
    (streamed / "manifest.json").unlink()
    with pytest.raises(ValueError, match="no manifest.json"):
        samplers.open_trace(streamed)


def test_complete_run_with_a_lost_last_chunk_is_reported(streamed):
    (streamed / "chunk-000003.npz").unlink()
    with pytest.raises(ValueError, match="lists 4 chunks but holds 3"):
        samplers.open_trace(streamed)


def test_leftover_temp_file_of_a_killed_write_is_ignored(streamed):
    (streamed / ".chunk-000004.npz.abc123.tmp").write_bytes(b"half a chunk")
    assert samplers.open_trace(streamed).n_draws == 20


def test_streaming_arguments_are_validated(tmp_path):
    kernel = samplers.MALA(gaussian, 0.5)
    x0 = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="chunk_size applies to streaming only"):
        samplers.sample(kernel, x0, 10, chunk_size=5, progress=False)
    with pytest.raises(ValueError, match="chunk_size must be an int >= 1; got 0"):
        samplers.sample(kernel, x0, 10, out=tmp_path / "a", chunk_size=0, progress=False)
    with pytest.raises(TypeError, match="out must be a directory path"):
        samplers.sample(kernel, x0, 10, out=3, progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        samplers.sample(kernel, x0, 10, out=tmp_path / "file", progress=False)
    with pytest.raises(ValueError, match="is not empty"):
        samplers.sample(kernel, x0, 10, out=tmp_path, progress=False)
    with pytest.raises(FileNotFoundError, match="no streamed trace directory"):
        samplers.open_trace(tmp_path / "nowhere")


def test_chunks_are_plain_npz_traces_without_pickles(streamed):
    with np.load(streamed / "chunk-000000.npz", allow_pickle=False) as data:
        assert data["samples"].shape == (5, 5, 2) and int(data["chunk_start"]) == 0
    chunk = samplers.Trace.load(streamed / "chunk-000000.npz")
    assert chunk.n_draws == 5 and chunk.thin == 2

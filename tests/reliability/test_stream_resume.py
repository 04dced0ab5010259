"""Streamed sampling resumes exactly: a run stopped anywhere (in warm-up, mid-chunk, on a chunk
boundary, several times) and continued with ``sample(..., out=dir, resume=True)`` gives the draws
of the uninterrupted run bit for bit (MALA, HMC, FlowMC with its flow trained in warm-up, latent
MALA, parallel tempering with its tuned schedule); resuming with other settings is refused by
name; a finished run resumed is returned as is.
A SIGKILL campaign (`stream_crash.py`: kills after random delays and inside file writes) checks
the same of processes killed at random moments: 3 kills per kernel here, 20 in the slow test.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import zuko

import samplers

D, CHAINS = 2, 6
CRASH = Path(__file__).with_name("stream_crash.py")


def gaussian(x):
    return -0.5 * x.flatten(1).pow(2).sum(1) - 0.3 * x.flatten(1)[:, 0].pow(4)


def make(name, flow_seed=0):
    torch.manual_seed(flow_seed)  # a resumed FlowMC must not depend on its new flow's init
    if name == "mala":
        return samplers.MALA(gaussian, 0.5)
    if name == "hmc":
        return samplers.HMC(gaussian, 0.2, n_leapfrog=3)
    if name == "pt":  # its schedule is tuned in warm-up and must be restored with the chains
        from torch.distributions import Independent, Normal

        return samplers.ParallelTempering(
            gaussian, Independent(Normal(torch.zeros(D), 3 * torch.ones(D)), 1), n_replicas=4,
            first_round=4)  # rounds of 4, 8 steps: the schedule is re-tuned within the warm-up
    if name == "flowmc":
        return samplers.FlowMC(gaussian, zuko.flows.RealNVP(D, transforms=2, hidden_features=[8]),
                               n_local=2, n_particles=4, batch_size=32, replay_steps=4)
    return samplers.Latent(gaussian, zuko.flows.RealNVP(D, transforms=1, hidden_features=[8]))


SETTINGS = dict(n_steps=40, warmup=12, thin=2, chunk_size=3)  # 20 draws: chunks 3,...,3,2


def run(name, out=None, resume=False, kernel=None, **changes):
    kw = {**SETTINGS, **changes}
    if out is None:
        kw.pop("chunk_size")
    return samplers.sample(kernel or make(name), torch.zeros(CHAINS, D) + 0.1, progress=False,
                           out=out, resume=resume, generator=torch.Generator().manual_seed(3), **kw)


def stopped_after(kernel, n_steps):
    """``kernel`` whose ``n_steps + 1``-th step raises KeyboardInterrupt (a process stopped there)."""
    step, left = kernel.step, [n_steps]

    def counted(state, generator=None):
        left[0] -= 1
        if left[0] < 0:
            raise KeyboardInterrupt
        return step(state, generator)

    kernel.step = counted  # on the instance: type and repr, which a resume checks, are unchanged
    return kernel


def assert_same(a, b):
    torch.testing.assert_close(a.samples, b.samples, rtol=0, atol=0)
    torch.testing.assert_close(a.log_prob, b.log_prob, rtol=0, atol=0)
    assert a.stats.keys() == b.stats.keys()
    for k in a.stats:
        torch.testing.assert_close(a.stats[k], b.stats[k], rtol=0, atol=0)


@pytest.fixture(scope="module")
def reference():
    return {name: run(name) for name in ["mala", "hmc", "flowmc", "latent", "pt"]}


# Steps (warm-up + sampling) before each stop: 12 warm-up steps, commits every 6 of them and
# every 6 sampling steps (3 draws of thin 2).
STOPS = {"in warm-up, before its first commit": [4],
         "in warm-up, after a commit": [8],
         "just after warm-up": [12],
         "mid-chunk": [12 + 9],
         "on a chunk boundary": [12 + 12],
         "in the last chunk": [12 + 38],
         "three times": [5, 7, 16]}


@pytest.mark.parametrize("name", ["mala", "flowmc"])
@pytest.mark.parametrize("stops", STOPS.values(), ids=STOPS.keys())
def test_a_stopped_run_resumed_gives_the_uninterrupted_draws(tmp_path, reference, name, stops):
    out = tmp_path / "run"
    for k, n in enumerate(stops):
        with pytest.raises(KeyboardInterrupt):
            # The first process's kernel defines the run; later ones get other flow inits.
            kernel = make(name, flow_seed=0 if k == 0 else 10 + k)
            run(name, out, resume=k > 0, kernel=stopped_after(kernel, n))
    resumed = run(name, out, resume=True, kernel=make(name, flow_seed=99))
    assert resumed.complete
    assert_same(resumed.load(), reference[name])
    torch.testing.assert_close(resumed.state.x, reference[name].state.x, rtol=0, atol=0)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["resumes"] == len(stops)
    assert resumed.wall_time > 0


@pytest.mark.parametrize("name", ["hmc", "latent", "pt"])
def test_other_kernels_resume_exactly_too(tmp_path, reference, name):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run(name, out, kernel=stopped_after(make(name), 8))
    with pytest.raises(KeyboardInterrupt):
        run(name, out, resume=True, kernel=stopped_after(make(name), 15))
    assert_same(run(name, out, resume=True).load(), reference[name])


def test_the_flow_trained_in_warmup_is_restored_not_retrained(tmp_path, reference):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run("flowmc", out, kernel=stopped_after(make("flowmc"), 12 + 7))
    fresh = make("flowmc", flow_seed=123)
    before = [p.clone() for p in fresh.flow.parameters()]
    run("flowmc", out, resume=True, kernel=fresh)
    trained = make("flowmc")
    run("flowmc", kernel=trained)
    for p, q in zip(fresh.flow.parameters(), trained.flow.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert any(not torch.equal(p, b) for p, b in zip(fresh.flow.parameters(), before, strict=True))
    torch.testing.assert_close(fresh.flow_losses, trained.flow_losses, rtol=0, atol=0)


CHANGES = [({"thin": 1}, "thin was 2 when the run started, now 1"),
           ({"chunk_size": 4}, "chunk_size was 3 when the run started, now 4"),
           ({"n_steps": 60}, "n_steps was 40 when the run started, now 60"),
           ({"warmup": 0}, "warmup was 12 when the run started, now 0")]


@pytest.mark.parametrize("change, message", CHANGES, ids=[next(iter(c)) for c, _ in CHANGES])
def test_resuming_with_other_settings_is_refused_by_name(tmp_path, change, message):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run("mala", out, kernel=stopped_after(make("mala"), 20))
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir() if p.name != ".lock")
    with pytest.raises(ValueError, match=f"cannot resume {out} with different settings: {message}"):
        run("mala", out, resume=True, **change)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir() if p.name != ".lock") == before


def test_resuming_with_another_kernel_or_chain_count_is_refused(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run("mala", out, kernel=stopped_after(make("mala"), 20))
    with pytest.raises(ValueError, match=r"kernel was 'MALA\(step_size=0.5, .*now 'HMC\("):
        run("mala", out, resume=True, kernel=make("hmc"))
    with pytest.raises(ValueError, match="n_chains was 6 when the run started, now 4"):
        samplers.sample(make("mala"), torch.zeros(4, D), out=out, resume=True, progress=False,
                        generator=torch.Generator().manual_seed(3), **SETTINGS)
    with pytest.raises(ValueError, match="generator was 'torch.Generator.cpu.'.*now 'global'"):
        samplers.sample(make("mala"), torch.zeros(CHAINS, D), out=out, resume=True,
                        progress=False, **SETTINGS)
    with pytest.raises(ValueError, match="pass resume=True to continue the run it holds"):
        run("mala", out)


def test_a_finished_run_resumed_is_returned_as_it_is(tmp_path, reference):
    out = tmp_path / "run"
    run("mala", out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = run("mala", out, resume=True, kernel=stopped_after(make("mala"), 0))  # takes no step
    assert again.complete and {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert_same(again.load(), reference["mala"])
    torch.testing.assert_close(again.state.x, reference["mala"].state.x, rtol=0, atol=0)


def test_resume_on_a_new_directory_starts_the_run(tmp_path, reference):
    assert_same(run("mala", tmp_path / "new", resume=True).load(), reference["mala"])
    with pytest.raises(ValueError, match="resume=True continues a streamed run; pass out="):
        run("mala", resume=True)


def test_a_corrupt_run_state_is_named_on_resume(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run("mala", out, kernel=stopped_after(make("mala"), 20))
    state = out / json.loads((out / "manifest.json").read_text())["state"]
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"cannot read run state {state}"):
        run("mala", out, resume=True)


def crash_campaign(kills, seed):
    """`stream_crash.py` in a subprocess: one JSON line per kernel."""
    proc = subprocess.run([sys.executable, str(CRASH), "--kernel", "mala", "flowmc", "--kills",
                           str(kills), "--seed", str(seed)], capture_output=True, text=True,
                          timeout=1200, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]


def assert_campaign(results, kills):
    for r in results:
        # Every kill was survived: each resumed run ended bit-identical, and after each kill
        # every committed chunk read back equal to the uninterrupted run's draws.
        assert r["kills_survived"] >= kills and r["runs_bit_identical"] == r["runs"] >= 1, r
        assert r["by_kind"]["in a write"] >= 1, r


def test_sigkilled_streamed_runs_resume_bit_identical_short():
    assert_campaign(crash_campaign(3, seed=1), 3)  # 6 kills in all


@pytest.mark.slow
def test_sigkilled_streamed_runs_resume_bit_identical_campaign():
    assert_campaign(crash_campaign(20, seed=2), 20)


def test_a_full_disk_at_any_write_is_named_and_the_run_resumes_once_space_is_freed(
        tmp_path, reference):
    """ENOSPC injected at each atomic write of a run in turn (chunks, run states, manifests)."""
    from samplers import rundir

    writes = []
    rundir.set_fault_hook(lambda point, path: writes.append(path) if point == "open" else None)
    try:
        run("mala", tmp_path / "count", chunk_size=10)
    finally:
        rundir.set_fault_hook(None)
    # The first manifest, 2 commits (start, end of warm-up) of state + manifest,
    # 2 chunks x (chunk, state, manifest), the closing manifest.
    assert len(writes) == 1 + 2 * 2 + 2 * 3 + 1
    for k in range(len(writes)):
        out = tmp_path / f"full-{k}"
        calls = [0]

        def full(point, path, k=k, calls=calls):
            if point == "write":
                calls[0] += 1
                if calls[0] == k + 1:
                    raise OSError(28, "No space left on device")

        rundir.set_fault_hook(full)
        try:
            with pytest.raises(OSError, match="No space left on device") as info:
                run("mala", out, chunk_size=10)
        finally:
            rundir.set_fault_hook(None)
        message = str(info.value)
        assert f"cannot write {out / writes[k].name}" in message and "\n" not in message
        assert ("previous version is intact" in message) == (writes[k].name == "manifest.json"
                                                            and k > 0)
        if (out / "manifest.json").exists():  # what was committed before the fault reads
            reader = samplers.open_trace(out)
            assert reader.n_draws == sum(c.n_draws for c in reader.chunks())
        assert_same(run("mala", out, resume=True, chunk_size=10).load(), reference["mala"])


def test_a_reader_polling_a_running_stream_always_sees_a_consistent_prefix(tmp_path, reference):
    import threading

    out = tmp_path / "run"
    slow = make("mala")
    step = slow.step

    def slower(state, generator=None):
        time.sleep(0.002)  # let the reader in between the writer's files
        return step(state, generator)

    slow.step = slower
    writer = threading.Thread(target=run, args=("mala", out), kwargs={"kernel": slow})
    writer.start()
    seen, polls = set(), 0
    while writer.is_alive() or polls == 0:
        if (out / "manifest.json").exists():
            reader = samplers.open_trace(out)
            if reader.files:
                part = reader.load()
                torch.testing.assert_close(part.samples,
                                           reference["mala"].samples[:, :part.n_draws],
                                           rtol=0, atol=0)
                seen.add(part.n_draws)
            polls += 1
    writer.join()
    assert polls > 10 and len(seen) >= 3, (polls, seen)

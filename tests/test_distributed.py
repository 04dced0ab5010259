"""samplers.distributed: chains sharded over 2 gloo processes started by torchrun (one launch,
every check below reads its JSON)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import samplers
from samplers.distributed import rank_generator, sample, shard_bounds
from tests.stats import moment_zscores

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    run = torchrun(str(tmp / "result.json"), str(tmp / "stream"))
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads((tmp / "result.json").read_text())


def torchrun(*args, nproc=2):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", str(nproc), str(ROOT / "tests" / "distributed_worker.py"),
                           *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def emulated_mala(world=2):
    """What N ranks must give: each block of chains run in this one process with its rank's
    generator, concatenated."""
    from tests.distributed_worker import gaussian

    x0 = torch.arange(63, dtype=torch.float32)[:, None].repeat(1, 2) / 63
    parts = []
    for r in range(world):
        a, b = shard_bounds(63, world, r)
        parts.append(samplers.sample(samplers.MALA(gaussian, 0.5), x0[a:b], 500, warmup=150,
                                     progress=False,
                                     generator=rank_generator(torch.Generator().manual_seed(7), r)))
    return torch.cat([p.samples for p in parts])


def test_every_chain_is_gathered_in_global_order_and_has_the_targets_moments(two_ranks):
    r = two_ranks
    assert r["world"] == 2 and r["mala_shape"] == [63, 500, 2]
    assert r["mala_block_sizes"] == [32, 31]
    assert r["mala_blocks_in_order"]  # rank 0's block first, then rank 1's, unchanged
    assert r["mala_identical_reruns"]  # same seed, same process count: same draws
    assert "on 2 ranks" in r["mala_kernel"]
    z = moment_zscores(torch.tensor(r["mala_samples"]), torch.tensor([1.0, -2.0]),
                       torch.diag(torch.tensor([0.25, 4.0])))
    assert np.abs(z).max() < 4.5, z


def test_two_ranks_equal_a_single_process_emulation_with_the_same_shard_generators(two_ranks):
    assert torch.equal(torch.tensor(two_ranks["mala_samples"]), emulated_mala().double())


def test_a_streamed_run_across_ranks_reads_back_as_one_run(two_ranks):
    r = two_ranks
    assert r["stream_type"] == "ShardedTrace" and r["stream_complete"]
    assert r["stream_equals_gathered"] and r["stream_chunks_equal"]


@pytest.mark.slow
def test_a_rank_killed_mid_run_stops_the_job_and_the_same_command_resumes_it_exactly(tmp_path):
    out = str(tmp_path / "run")
    crashed = torchrun("stream", out, "1", "3")  # rank 1 dies while committing its 4th chunk
    assert crashed.returncode != 0
    partial = samplers.open_trace(out)
    assert not partial.complete and 0 < partial.n_draws < 500
    resumed = torchrun("stream", out)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    run = samplers.open_trace(out)
    assert run.complete and torch.equal(run.load().samples, emulated_mala())


def test_flow_gradients_are_averaged_so_a_step_equals_one_on_the_union_of_batches(two_ranks):
    # Without the all-reduce each rank steps on its own batch (max difference ~1e-2).
    assert two_ranks["flow_step_max_diff"] < 1e-6


def test_flowmc_keeps_one_flow_on_every_rank_and_finds_both_modes(two_ranks):
    r = two_ranks
    assert r["flowmc_flows_identical"]
    assert r["flowmc_shape"] == [64, 400, 2]
    per_chain = np.asarray(r["flowmc_left_share_per_chain"])
    assert per_chain.min() > 0  # every chain (all started in the right mode) reached the left one
    se = per_chain.std(ddof=1) / np.sqrt(per_chain.size)  # chains are independent
    assert abs(r["flowmc_left_share"] - 0.25) < 4 * se + 1e-3, (r["flowmc_left_share"], se)


def test_pooled_warmup_kernels_are_refused_by_name(two_ranks):
    assert "ParallelTempering" in two_ranks["pt_refused"]
    assert "tune_schedule" in two_ranks["pt_refused"]


def test_without_a_process_group_it_is_samplers_sample():
    kernel = samplers.MALA(lambda x: -0.5 * x.pow(2).sum(-1), 0.5)
    a = sample(kernel, torch.zeros(8, 2), 50, generator=torch.Generator().manual_seed(0))
    b = samplers.sample(kernel, torch.zeros(8, 2), 50, progress=False,
                        generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.samples, b.samples)


def test_shards_cover_every_chain_once_and_rank_streams_differ():
    for n, world in ((10, 3), (7, 7), (64, 5)):
        bounds = [shard_bounds(n, world, r) for r in range(world)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds[:-1], bounds[1:], strict=True))
        sizes = [b - a for a, b in bounds]
        assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match="rank must be in 0..2 for world size 3; got 3"):
        shard_bounds(10, 3, 3)
    g = torch.Generator().manual_seed(5)
    state = g.get_state().clone()
    seeds = [rank_generator(g, r).initial_seed() for r in range(3)]
    assert len(set(seeds)) == 3 and torch.equal(g.get_state(), state)  # the source untouched
    assert rank_generator(torch.Generator().manual_seed(5), 1).initial_seed() == seeds[1]

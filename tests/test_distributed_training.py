"""`JointTrainer.fit` and `flowmc-ebm train` data-parallel over 2 gloo processes started by
torchrun (flowmc_ebm.training.parallel): one launch runs the command (twice), the one-step check
and a 50-iteration run that the checks below compare with single-process emulations."""

import json
import os
import signal
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from flowmc_ebm import cli
from flowmc_ebm.checkpoint import latest_checkpoint
from flowmc_ebm.commands.train import config_from_args
from flowmc_ebm.commands.train import make_data as target_draws
from flowmc_ebm.config import RunConfig
from flowmc_ebm.objectives.contrastive import contrastive_loss, flow_nll
from flowmc_ebm.trainer import JointTrainer
from flowmc_ebm.training import parallel
from samplers.distributed import rank_generator, shard_bounds
from tests.distributed_train_worker import (
    CLI_RESUMED_ITERATIONS,
    CLI_TRAIN,
    ITERATIONS,
    make_data,
    make_trainer,
    params,
)

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "distributed_train_worker.py"


def torchrun(*args, nproc=2, timeout=240):
    return start_torchrun(*args, nproc=nproc).wait(timeout)


def start_torchrun(*args, nproc=2):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return Launch(subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
         str(nproc), str(WORKER), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env, cwd=ROOT, start_new_session=True))


class Launch:
    """A torchrun launch running in the background; `wait` gives its ``returncode``, ``stdout``
    and ``stderr`` (killed after ``timeout`` seconds)."""

    def __init__(self, process):
        self.process = process

    def wait(self, timeout):
        try:
            self.stdout, self.stderr = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:  # torchrun and its workers: their process group
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.communicate()
            raise
        self.returncode = self.process.returncode
        return self


def free_ports(n):
    """``n`` TCP ports free now (for the worker's second and third process groups)."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [str(s.getsockname()[1]) for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    """The one torchrun launch of this module's fast checks and, computed here while it runs,
    the single-process emulations they are compared with."""
    tmp = tmp_path_factory.mktemp("dist_train")
    run = start_torchrun("checks", str(tmp / "result.json"), str(tmp / "checkpoints"),
                         *free_ports(3))
    try:
        emulations = {"worker": emulate(), **emulate_command()}
    finally:
        run.wait(timeout=240)
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads((tmp / "result.json").read_text())
    result["stdout"], result["stderr"] = run.stdout, run.stderr
    return result, tmp / "checkpoints", emulations


@pytest.fixture(scope="module")
def two_ranks(launch):
    return launch[:2]


@pytest.fixture(scope="module")
def emulated(launch):
    return launch[2]["worker"]


def command_config():
    """The RunConfig `CLI_TRAIN` describes."""
    args = cli.build_parser().parse_args([*CLI_TRAIN, "--out", "unused"])
    return config_from_args(args)


def emulate_command():
    """The command's run, resumed, emulated for 2 ranks and for 1 (what a plain process
    computes)."""
    config = command_config()
    _, data = target_draws(config)
    out = {}
    for world in (1, 2):
        trainer = JointTrainer.from_config(2, config.sampler, config.model, config.trainer)
        out[f"command_world{world}"] = emulate_trainer(trainer, data, world,
                                                       CLI_RESUMED_ITERATIONS)
    return out


def emulate(world=2, iterations=ITERATIONS):
    """`emulate_trainer` on the worker's trainer and data."""
    return emulate_trainer(make_trainer(), make_data(), world, iterations)


def emulate_trainer(t, data, world, iterations):
    """What `world` ranks must compute, in this one process: each rank's block of the pool and
    of each batch, advanced with that rank's generator; one step on the concatenated batch and
    negatives. Returns the parameters and the pool (float64) and the energy losses."""
    c = t.config
    data = data.to(t.device, next(t.energy.parameters()).dtype)
    gens = [rank_generator(torch.Generator().manual_seed(c.seed), r) for r in range(world)]
    p, m = c.pool_size // world, c.n_negatives // world
    pools = [t._draw_base(p, g) for g in gens]
    per_epoch = data.shape[0] // c.batch_size
    losses = []
    for i in range(iterations):
        epoch, pos = divmod(i, per_epoch)
        order = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(
            parallel.epoch_seed(c.seed, epoch)))
        batch = data[order[pos * c.batch_size:(pos + 1) * c.batch_size]]
        negatives = []
        for r in range(world):
            idx = torch.randperm(p, generator=gens[r])[:m] if m < p else slice(None)
            state = t.kernel.init(pools[r][idx])
            for _ in range(t.method.steps(c)):
                state, _ = t.kernel.step(state, gens[r])
            pools[r][idx] = state.x.detach()
            negatives.append(state.x.detach())
        neg = torch.cat(negatives)
        e = t.energy(torch.cat([batch, neg]))
        terms = contrastive_loss(e[:batch.shape[0]], e[batch.shape[0]:], c.energy_l2)
        t.opt_energy.zero_grad()
        terms.loss.backward()
        t.opt_energy.step()
        _, nll_neg = flow_nll(t.flow, batch, neg)
        t.opt_flow.zero_grad()
        nll_neg.backward()
        t.opt_flow.step()
        losses.append(float(terms.loss.detach()))
    return params(t).double(), torch.cat(pools).double(), losses


def test_one_step_equals_the_single_process_step_on_the_concatenated_batch(two_ranks):
    r, _ = two_ranks
    assert r["world"] == 2
    assert r["step_batch_rows"] == 12 and r["step_batch_distinct"] == 12  # blocks, no overlap
    assert r["step_moved"] > 1e-4  # the step did something
    assert r["step_max_diff"] < 1e-6, r["step_max_diff"]  # without the all-reduce: ~1e-2
    assert r["step_ranks_identical"]


def test_a_50_iteration_run_equals_the_single_process_emulation(two_ranks, emulated):
    r, _ = two_ranks
    want_params, want_pool, want_losses = emulated
    assert r["ranks_identical"]  # the networks never drift apart
    assert r["local_pool_rows"] == 16 and r["config_pool_size"] == 32  # global config after fit
    assert len(r["loss_energy"]) == ITERATIONS
    torch.testing.assert_close(torch.tensor(r["params"], dtype=torch.float64), want_params,
                               rtol=0, atol=1e-9)
    torch.testing.assert_close(torch.tensor(r["pool"], dtype=torch.float64), want_pool,
                               rtol=0, atol=1e-9)
    # History: the all-reduced record is the concatenated batch's loss.
    torch.testing.assert_close(torch.tensor(r["loss_energy"]), torch.tensor(want_losses),
                               rtol=0, atol=1e-9)


def test_the_rank0_checkpoint_holds_every_ranks_chains_and_generator(two_ranks, emulated):
    r, directory = two_ranks
    trainer = load(directory)
    assert trainer.iteration_ == ITERATIONS and trainer.config.pool_size == 32
    assert torch.equal(trainer.pool_, torch.tensor(r["pool"], dtype=torch.float64))
    saved = trainer._parallel_state
    assert saved["world"] == 2 and len(saved["generators"]) == 2
    assert not torch.equal(saved["generators"][0], saved["generators"][1])


def test_another_process_count_is_refused_by_name(two_ranks):
    _, directory = two_ranks
    trainer = load(directory)
    with pytest.raises(ValueError, match="cannot resume exactly in one process: the checkpoint "
                                         "was written by 2 processes"):
        trainer.fit(make_data(), n_iterations=1, progress=False)
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1,
                            timeout=timedelta(seconds=30))
    try:
        with pytest.raises(ValueError, match="cannot resume exactly with 1 processes: the "
                                             "checkpoint was written by 2 processes.*"
                                             "--nproc_per_node 2"):
            trainer.fit(make_data(), n_iterations=1, progress=False)
        one = make_trainer()
        one.fit(make_data(), n_iterations=1, progress=False)  # world 1 under a group: runs
        with pytest.raises(ValueError, match="trainer.batch_size = 13 is not a multiple of the 2"):
            _attach_as(make_trainer(batch_size=13), 2)
    finally:
        dist.destroy_process_group()
    assert one.iteration_ == 1


def _attach_as(trainer, world):
    """attach's size check for a world of ``world`` (the group here has one process)."""
    real = dist.get_world_size
    dist.get_world_size = lambda *a: world
    try:
        parallel.attach(trainer)
    finally:
        dist.get_world_size = real


def load(directory):
    fresh = make_trainer()
    return parallel.load(latest_checkpoint(directory), energy=fresh.energy, flow=fresh.flow)


def test_the_train_command_under_torchrun_trains_data_parallel_resumes_and_rank0_writes(launch):
    r, directory, emulations = launch
    out = directory.parent / "cli"
    assert [c["cli_code"] for c in r["cli"]] == [0, 0]
    assert [c["cli_resumed_code"] for c in r["cli"]] == [0, 0]
    assert not any(c["cli_group_left"] for c in r["cli"])  # the command destroyed its group
    for name in ["config.json", "history.json", "summary.json", "landscape.png"]:
        assert (out / name).is_file(), name
    assert r["stdout"].count(f"10 iterations -> {out}\n") == 1  # rank 0 alone prints
    assert r["stdout"].count(f"20 iterations -> {out}\n") == 1
    assert r["stdout"].count("flowmc-EBM: weight") == 2  # the run and its resumption
    saved = parallel.load(latest_checkpoint(out / "checkpoints"))
    assert saved.iteration_ == CLI_RESUMED_ITERATIONS and saved._parallel_state["world"] == 2
    assert r["stdout"].count(f"resuming from {out / 'checkpoints'}/iter-000010.pt") == 1
    # The whole pool, and the parameters, of a single-process emulation of 2 ranks for the 20
    # iterations (float32: a few ulps apart), so the resume at 10 continued exactly; a plain
    # one-process run is ~1e-2 away, so this tells them apart.
    saved_config = json.loads((out / "config.json").read_text())
    assert RunConfig.from_dict(saved_config) == command_config().replace(
        {"iterations": CLI_RESUMED_ITERATIONS})  # what was emulated
    want, want_pool, _ = emulations["command_world2"]
    got = params(saved).double()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(saved.pool_.double(), want_pool, rtol=0, atol=1e-5)
    one_process, _, _ = emulations["command_world1"]
    assert (got - one_process).abs().max() > 1e-3


def test_an_error_one_rank_meets_before_training_stops_every_rank_with_its_message(two_ranks):
    r, _ = two_ranks
    # --out is a file: rank 0 cannot make it; rank 1, which makes nothing, hears it from rank 0.
    assert [c["cli_failed_code"] for c in r["cli"]] == [2, 2]
    assert not any(c["cli_failed_group_left"] for c in r["cli"])
    assert "flowmc-ebm train: error: rank 0 of 2 stopped: " in r["stderr"]


def test_blocks_of_the_pool_and_batch_cover_everything_once():
    assert [shard_bounds(32, 2, r) for r in range(2)] == [(0, 16), (16, 32)]
    assert parallel.epoch_seed(3, 0) != parallel.epoch_seed(3, 1) != parallel.epoch_seed(4, 1)


@pytest.mark.slow
def test_a_rank_killed_mid_run_stops_the_job_and_the_run_resumes_from_its_checkpoint(
        tmp_path):
    emulated = emulate()
    directory = str(tmp_path / "checkpoints")
    crashed = torchrun("kill", str(tmp_path / "a.json"), directory, "25", timeout=120)
    assert crashed.returncode != 0  # no hang: torchrun stops rank 0 (gloo timeout 60 s)
    assert latest_checkpoint(directory).name == "iter-000020.pt"
    resumed = torchrun("kill", str(tmp_path / "b.json"), directory, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    r = json.loads((tmp_path / "b.json").read_text())
    assert r["resumed_from"] == 20
    torch.testing.assert_close(torch.tensor(r["params"], dtype=torch.float64), emulated[0],
                               rtol=0, atol=1e-9)
    torch.testing.assert_close(torch.tensor(r["pool"], dtype=torch.float64), emulated[1],
                               rtol=0, atol=1e-9)


@pytest.mark.slow
def test_torchrun_runs_the_command_module_itself(tmp_path):
    # The entry point users launch (`torchrun ... -m flowmc_ebm.cli train`), not cli.main from
    # a worker: the group is the command's own, from torchrun's environment.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = tmp_path / "run"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", "-m", "flowmc_ebm.cli", *CLI_TRAIN,
                          "--out", str(out)], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=240)
    assert run.returncode == 0, run.stderr[-4000:]
    assert run.stdout.count("flowmc-EBM: weight") == 1
    saved = parallel.load(latest_checkpoint(out / "checkpoints"))
    config = command_config()
    _, data = target_draws(config)
    trainer = JointTrainer.from_config(2, config.sampler, config.model, config.trainer)
    want, want_pool, _ = emulate_trainer(trainer, data, 2, config.n_iterations)
    torch.testing.assert_close(params(saved).double(), want, rtol=0, atol=1e-5)
    torch.testing.assert_close(saved.pool_.double(), want_pool, rtol=0, atol=1e-5)

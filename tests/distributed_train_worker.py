"""Run under ``torchrun --standalone --nproc_per_node N`` by tests/test_distributed_training.py:
`JointTrainer.fit` data-parallel (gloo); rank 0 writes what it measured as JSON. Not a test
module itself.

    distributed_train_worker.py checks OUT.json CKDIR P1 P2 P3   `flowmc-ebm train` (into
                                                          CKDIR/../cli, resumed there, then
                                                          failing), one step + a 50-iteration run
    distributed_train_worker.py kill OUT.json CKDIR K     50 iterations, rank 1 dies at K
                                                          (resumes from CKDIR if it holds a run)
"""

import copy
import json
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from flowmc_ebm import cli
from flowmc_ebm.checkpoint import latest_checkpoint, list_checkpoints
from flowmc_ebm.config import TrainerConfig
from flowmc_ebm.energies import MLPEnergy
from flowmc_ebm.flows import make_flow
from flowmc_ebm.objectives.contrastive import contrastive_loss, flow_nll
from flowmc_ebm.trainer import JointTrainer
from flowmc_ebm.training import parallel

ITERATIONS = 50

#: `flowmc-ebm train` as the CLI test runs it under torchrun (a tiny flowMC-EBM run).
CLI_TRAIN = ["train", "--target", "two_modes", "--sampler", "flowmc", "--iterations", "10",
             "--set", "trainer.pool_size=16", "--set", "trainer.batch_size=8",
             "--set", "trainer.n_negatives=8", "--set", "trainer.log_every=5",
             "--set", "trainer.eval_every=0", "--set", "model.energy_hidden=[16]",
             "--set", "model.flow_hidden=[8]", "--set", "trainer.n_particles=4",
             "--set", "n_data=64", "--no-progress"]
#: The length the command's run is resumed to.
CLI_RESUMED_ITERATIONS = 20


def make_trainer(**knobs):
    """Tiny float64 networks (identical on every rank: seeded alike)."""
    torch.manual_seed(0)
    energy = MLPEnergy(2, (16,)).double()
    flow = make_flow(2, transforms=2, hidden=(16,)).double()
    config = TrainerConfig(**{"pool_size": 32, "batch_size": 12, "n_negatives": 8,
                              "mcmc_steps": 3, "n_local": 2, "n_global": 1, "n_particles": 4,
                              "step_size": 0.1, "lr_energy": 1e-2, "lr_flow": 1e-2,
                              "log_every": 5, "eval_every": 0, "seed": 3, **knobs})
    return JointTrainer(energy, flow, "flowmc", config)


def make_data():
    g = torch.Generator().manual_seed(11)
    centers = torch.tensor([[-2.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    labels = (torch.rand(96, generator=g) < 0.7).long()
    return centers[labels] + 0.5 * torch.randn(96, 2, generator=g, dtype=torch.float64)


def params(trainer):
    return torch.cat([p.detach().flatten() for p in trainer._parameters()])


def gather(x):
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, x)
    return out


def one_step(result):
    """(a) one data-parallel step against one step on the concatenated batch and negatives."""
    trainer = make_trainer(n_negatives=32)  # every chain is a negative: the new pool
    reference = copy.deepcopy(trainer)
    seen = []
    handle = trainer.energy.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    trainer.fit(make_data(), n_iterations=1, progress=False)
    handle.remove()
    local_b = trainer.config.batch_size // dist.get_world_size()
    rows = [x for x in seen if x.shape[0] == local_b + trainer.pool_.shape[0]][-1]
    batches = gather(rows[:local_b].detach())
    negatives = gather(trainer.pool_.detach())
    all_params = gather(params(trainer))
    if dist.get_rank() != 0:
        return
    batch, neg = torch.cat(batches), torch.cat(negatives)
    r = reference
    e = r.energy(torch.cat([batch, neg]))
    terms = contrastive_loss(e[:batch.shape[0]], e[batch.shape[0]:], r.config.energy_l2)
    r.opt_energy.zero_grad()
    terms.loss.backward()
    r.opt_energy.step()
    _, nll_neg = flow_nll(r.flow, batch, neg)
    r.opt_flow.zero_grad()
    nll_neg.backward()
    r.opt_flow.step()
    result["step_batch_rows"] = batch.shape[0]
    result["step_batch_distinct"] = len({tuple(row.tolist()) for row in batch})
    result["step_max_diff"] = float((params(r) - all_params[0]).abs().max())
    result["step_moved"] = float((params(r) - params(make_trainer())).abs().max())
    result["step_ranks_identical"] = all(torch.equal(p, all_params[0]) for p in all_params)


def long_run(result, directory, kill_at=None):
    """(b)/(c) fit ITERATIONS iterations with checkpoints; rank 1 dies at ``kill_at``."""
    data = make_data()
    if list_checkpoints(directory):
        fresh = make_trainer()
        trainer = parallel.load(latest_checkpoint(directory), energy=fresh.energy, flow=fresh.flow)
        result["resumed_from"] = trainer.iteration_
    else:
        trainer = make_trainer()

    def die(t):
        if kill_at is not None and dist.get_rank() == 1 and t.iteration_ == kill_at:
            os._exit(9)

    trainer.fit(data, n_iterations=ITERATIONS - trainer.iteration_, progress=False,
                callbacks=[die], checkpoint_dir=directory, checkpoint_every=10)
    pools = gather(trainer.pool_)
    all_params = gather(params(trainer))
    if dist.get_rank() == 0:
        result["params"] = params(trainer).tolist()
        result["pool"] = torch.cat(pools).tolist()
        result["loss_energy"] = trainer.history_["loss_energy"]
        result["local_accept"] = trainer.history_["local_accept"]
        result["ranks_identical"] = all(torch.equal(p, all_params[0]) for p in all_params)
        result["local_pool_rows"] = trainer.pool_.shape[0]
        result["config_pool_size"] = trainer.config.pool_size


def new_rendezvous(port):
    """A fresh rendezvous for the next ``env://`` group of this launch, rank 0 hosting its store
    at ``port``: torchrun's own store serves one default group per process."""
    os.environ["TORCHELASTIC_USE_AGENT_STORE"] = "False"
    os.environ["MASTER_PORT"] = str(port)


def train_command(out, ports):
    """`flowmc-ebm train` run by torchrun's processes before any group exists (the command makes
    and destroys its own): into ``out``, then resumed there up to `CLI_RESUMED_ITERATIONS`, then
    into a path rank 0 cannot make a directory of (a file), which only rank 0 finds out."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    code = cli.main([*CLI_TRAIN, "--out", out])
    after = dist.is_initialized()
    new_rendezvous(ports[0])
    resumed = cli.main([*CLI_TRAIN, "--out", out, "--resume",
                        "--iterations", str(CLI_RESUMED_ITERATIONS)])
    blocked = Path(out).parent / "a-file"
    blocked.touch()
    new_rendezvous(ports[1])
    failed = cli.main([*CLI_TRAIN, "--out", str(blocked)])
    return {"cli_code": code, "cli_group_left": after, "cli_resumed_code": resumed,
            "cli_failed_code": failed, "cli_failed_group_left": dist.is_initialized()}


def main(mode, out, directory, *rest):
    torch.set_num_threads(1)
    command = {}
    if mode == "checks":
        command = train_command(str(Path(directory).parent / "cli"), rest[:2])
        new_rendezvous(rest[2])
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    result = {"world": dist.get_world_size(), "cli": gather(command)}
    if mode == "checks":
        one_step(result)
        long_run(result, directory)
    else:
        long_run(result, directory, kill_at=int(rest[0]) if rest else None)
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])

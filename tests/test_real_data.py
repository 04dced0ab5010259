"""The fitted tilt as flowMC's global proposal (`TrainerConfig.global_proposal = "tilt"`, #14).

The EBM's energy is exactly 0 at initialization, so the untrained model *is* its tilt; i-SIR with
proposals from the tilt then proposes from the target itself and accepts nearly every move
(N/(N+1) in expectation for N proposals), where the untrained sampler flow, proposing from N(0, I),
is accepted far less on data away from the origin. The test checks that the option proposes from
the tilt (global acceptance over the first iterations), and that the default kernel, run the same
way, does not reach it (the check fails for a kernel that proposes from the flow). The option
survives a checkpoint, and asking for it without a tilt is refused.
"""

import pytest
import torch

from flowmc_ebm.config import ModelConfig, TrainerConfig
from flowmc_ebm.training.joint import JointTrainer

MODEL = ModelConfig(energy_hidden=(16,), flow_transforms=2, flow_hidden=(16, 16))


def clusters() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    # Two separated clusters away from the origin, as whitened real data are not.
    return torch.cat([torch.randn(300, 2, generator=g) * 0.3 + torch.tensor([3.0, 0.0]),
                      torch.randn(100, 2, generator=g) * 0.3 + torch.tensor([0.0, 3.0])])


def config(**knobs) -> TrainerConfig:
    return TrainerConfig(**{"pool_size": 64, "batch_size": 32, "n_negatives": 32,
                            "mcmc_steps": 5, "n_particles": 16, "lr_energy": 1e-6,
                            "lr_flow": 1e-6, "tilt": "gmm", "log_every": 1, "eval_every": 0,
                            "seed": 0, **knobs})


def first_global_accept(trainer: JointTrainer, data: torch.Tensor) -> float:
    # lr 1e-6: the energy stays ~0 over these iterations, so the model stays the tilt.
    trainer.fit(data, n_iterations=3, progress=False)
    return float(torch.as_tensor(trainer.history_["global_accept"]).mean())


def test_tilt_proposal_is_accepted_on_the_untrained_model(tmp_path):
    data = clusters()
    flow_kernel = JointTrainer.from_config(2, "flowmc", model=MODEL, trainer=config())
    tilt_kernel = JointTrainer.from_config(2, "flowmc", model=MODEL,
                                           trainer=config(global_proposal="tilt"))
    accept_tilt = first_global_accept(tilt_kernel, data)
    accept_flow = first_global_accept(flow_kernel, data)
    assert tilt_kernel.tilt is not None and tilt_kernel.kernel.flow is tilt_kernel.tilt
    assert flow_kernel.kernel.flow is flow_kernel.flow
    # i-SIR from the target with 16 proposals: 16/17 = 0.94 expected; 96 chain-moves averaged.
    assert accept_tilt > 0.85, accept_tilt
    assert accept_flow < 0.6, accept_flow
    # Resumed from a checkpoint, the kernel proposes from the restored tilt again.
    loaded = JointTrainer.load(tilt_kernel.save(tmp_path / "t.pt"))
    assert loaded.config.global_proposal == "tilt"
    assert loaded.kernel.flow is loaded.tilt and loaded.tilt is not None


def test_a_tilt_proposal_without_a_tilt_is_refused():
    with pytest.raises(ValueError, match="global_proposal = 'tilt' proposes from a fitted tilt"):
        JointTrainer.from_config(2, "flowmc", model=MODEL,
                                 trainer=config(tilt="base", global_proposal="tilt"))

"""examples/real_data.py's training with the fitted tilt as flowMC's global proposal (#14).

The EBM's energy is exactly 0 at initialization, so the untrained model *is* its tilt; i-SIR with
proposals from the tilt then proposes from the target itself and accepts nearly every move
(N/(N+1) in expectation for N proposals), where the untrained sampler flow, proposing from N(0, I),
is accepted far less on data away from the origin. The test checks that `tilt_proposal_trainer`
proposes from the tilt (global acceptance over the first iterations), and that the flow kernel,
run the same way, does not reach it (the check fails for a kernel that proposes from the flow).
"""

import importlib.util
import sys
from pathlib import Path

import torch

from flowmc_ebm.config import ModelConfig, TrainerConfig
from flowmc_ebm.training.joint import JointTrainer

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "real_data.py"


def load_script():
    spec = importlib.util.spec_from_file_location("real_data_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def first_global_accept(trainer: JointTrainer, data: torch.Tensor) -> float:
    # lr 1e-6: the energy stays ~0 over these iterations, so the model stays the tilt.
    trainer.fit(data, n_iterations=3, progress=False)
    return float(torch.as_tensor(trainer.history_["global_accept"]).mean())


def test_tilt_proposal_is_accepted_on_the_untrained_model():
    real_data = load_script()
    g = torch.Generator().manual_seed(0)
    # Two separated clusters away from the origin, as whitened real data are not.
    data = torch.cat([torch.randn(300, 2, generator=g) * 0.3 + torch.tensor([3.0, 0.0]),
                      torch.randn(100, 2, generator=g) * 0.3 + torch.tensor([0.0, 3.0])])
    model = ModelConfig(energy_hidden=(16,), flow_transforms=2, flow_hidden=(16, 16))
    config = TrainerConfig(pool_size=64, batch_size=32, n_negatives=32, mcmc_steps=5,
                           n_particles=16, lr_energy=1e-6, lr_flow=1e-6, tilt="gmm", log_every=1,
                           eval_every=0, seed=0)
    flow_kernel = JointTrainer.from_config(2, "flowmc", model=model, trainer=config)
    tilt_kernel = real_data.tilt_proposal_trainer(
        JointTrainer.from_config(2, "flowmc", model=model, trainer=config), data, config)
    assert tilt_kernel.method.name == "flowmc-tiltprop"
    assert tilt_kernel.tilt is not None
    accept_tilt = first_global_accept(tilt_kernel, data)
    accept_flow = first_global_accept(flow_kernel, data)
    # i-SIR from the target with 16 proposals: 16/17 = 0.94 expected; 96 chain-moves averaged.
    assert accept_tilt > 0.85, accept_tilt
    assert accept_flow < 0.6, accept_flow

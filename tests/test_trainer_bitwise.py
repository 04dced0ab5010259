"""Bit-identical training across refactorings (#15): fixed-seed runs hashed before the redesign.

Each case trains a few iterations/steps from a fixed seed and hashes every parameter (energy,
flow, persistent chains, EMA averages) and the recorded losses. The expected hashes were recorded
from the code *before* the trainer was split into `flowmc_ebm.training` (at 059cabf), so
a later change that alters any bit of a run fails here. The hashes hold for one torch build on
one thread; on another torch version the test is skipped (it is a refactoring guard, not a
statement about torch).
"""

from __future__ import annotations

import hashlib
import math

import pytest
import torch

from flowmc_ebm.config import ModelConfig, TrainerConfig
from flowmc_ebm.targets import TwoModes

TORCH_RECORDED = "2.13.0+cpu"

EXPECTED = {
    "joint-flowmc": "706c9c0e49e31ac8",
    "joint-ula": "6cffac0a5ad42a5a",
    "joint-mala": "6e9d0e9445ecd431",
    "joint-nt": "6d0709d41d4c9469",
    "joint-flowmc-cosine": "6805b3696bd39201",
    "ebflow-ssm": "ee68f8df88644650",
    "energy-flow": "14fd0244b5ef0232",
}

pytestmark = pytest.mark.skipif(torch.__version__ != TORCH_RECORDED,
                                reason=f"hashes recorded with torch {TORCH_RECORDED}")


@pytest.fixture(autouse=True)
def _one_thread(_seed_and_threads):
    torch.set_num_threads(1)


def _digest(named) -> str:
    h = hashlib.sha256()
    for name, value in named:
        h.update(name.encode())
        if isinstance(value, torch.Tensor):
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
        else:
            h.update(repr(value).encode())
    return h.hexdigest()[:16]


def _joint(sampler: str, **knobs) -> str:
    from flowmc_ebm.trainer import JointTrainer

    target = TwoModes()
    data = target.sample(256, generator=torch.Generator().manual_seed(0))
    config = TrainerConfig(**{"pool_size": 64, "batch_size": 32, "n_negatives": 32,
                              "log_every": 3, "eval_every": 4, "seed": 5, **knobs})
    model = ModelConfig(energy_hidden=(16, 16), flow_transforms=2, flow_hidden=(16,))
    trainer = JointTrainer.from_config(2, sampler, model, config)
    trainer.fit(data, n_iterations=8, target=target, progress=False)
    named = [*(("energy." + k, v) for k, v in trainer.energy.state_dict().items()),
             *(("flow." + k, v) for k, v in trainer.flow.state_dict().items()),
             ("pool", trainer.pool_), ("generator", trainer.generator.get_state())]
    history = trainer.history_
    for key in ("loss_energy", "energy_gap", "flow_nll_neg", "flow_nll_data", "local_accept",
                "global_accept", "ebm_mode_weights"):
        named.append((key, [v if not (isinstance(v, float) and math.isnan(v)) else "nan"
                            for v in history[key]]))
    return _digest(named)


def _ebflow() -> str:
    from flowmc_ebm.ebflow import EBFlowTrainer, coupling_ebflow

    torch.manual_seed(1)
    trainer = EBFlowTrainer(coupling_ebflow(2, blocks=2, hidden=(16,)), "ssm", lr=1e-2,
                            grad_clip=5.0)
    data = TwoModes().sample(256, generator=torch.Generator().manual_seed(0))
    trainer.fit(data, steps=6, batch_size=32, generator=torch.Generator().manual_seed(2))
    return _digest([*trainer.model.state_dict().items(),
                    *(("ema." + k, v) for k, v in trainer.ema.average.state_dict().items()),
                    ("history", trainer.history_)])


def _energy_flow() -> str:
    from flowmc_ebm.sa_flow import EnergyFlowTrainer, SemiAutoregressiveFlow

    torch.manual_seed(1)
    trainer = EnergyFlowTrainer(SemiAutoregressiveFlow(2, blocks=2, hidden=(8,)), lr=1e-2)
    data = TwoModes().sample(256, generator=torch.Generator().manual_seed(0))
    trainer.fit(data, steps=6, batch_size=32, generator=torch.Generator().manual_seed(2))
    return _digest([*trainer.flow.state_dict().items(),
                    *(("ema." + k, v) for k, v in trainer.ema.state_dict().items()),
                    ("history", trainer.history_)])


CASES = {
    "joint-flowmc": lambda: _joint("flowmc"),
    "joint-ula": lambda: _joint("ula"),
    "joint-mala": lambda: _joint("mala"),
    "joint-nt": lambda: _joint("nt"),
    "joint-flowmc-cosine": lambda: _joint("flowmc", lr_decay="cosine", lr_decay_iterations=6),
    "ebflow-ssm": _ebflow,
    "energy-flow": _energy_flow,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fixed_seed_run_is_bit_identical_to_the_recorded_one(case):
    assert CASES[case]() == EXPECTED[case], (
        f"{case}: a fixed-seed run no longer reproduces the parameters recorded before the "
        f"#15 redesign")


if __name__ == "__main__":  # print the hashes (to record them)
    torch.set_num_threads(1)
    for name in sorted(CASES):
        print(f'    "{name}": "{CASES[name]()}",')

"""Methods as records (#15): a sampler-backed method is one `Method` and one test.

MALA-PCD is such a record; its test checks the one thing the record decides, bit for bit: the
negatives of an iteration are exactly a hand-run `samplers.MALA` of ``mcmc_steps`` steps from the
pool chains the iteration drew, on the model before its update. A record registered from outside
(HMC-PCD) trains with no other change.
"""

import math

import pytest
import torch

import samplers
from flowmc_ebm.config import ModelConfig, TrainerConfig
from flowmc_ebm.targets import TwoModes
from flowmc_ebm.training import METHODS, JointTrainer, Method, register

SMALL = ModelConfig(energy_hidden=(16, 16), flow_transforms=2, flow_hidden=(16,))
CONFIG = TrainerConfig(pool_size=64, batch_size=32, n_negatives=16, mcmc_steps=5, log_every=1)


@pytest.fixture(autouse=True)
def _one_thread(_seed_and_threads):
    torch.set_num_threads(1)


def test_mala_pcd_negatives_are_a_hand_run_mala_from_the_pool():
    data = TwoModes().sample(128, generator=torch.Generator().manual_seed(0))
    trainer = JointTrainer.from_config(2, "mala", SMALL, CONFIG)
    assert isinstance(trainer.kernel, samplers.MALA) and not METHODS["mala"].fresh_chains
    trainer.pool_ = trainer._draw_base(CONFIG.pool_size, trainer.generator)
    pool = trainer.pool_.clone()
    generator = torch.Generator().manual_seed(0)
    generator.set_state(trainer.generator.get_state())
    with torch.no_grad():  # the model the chains see: before this iteration's update
        frozen = JointTrainer.from_config(2, "mala", SMALL, CONFIG)
        frozen.energy.load_state_dict(trainer.energy.state_dict())
        frozen.flow.load_state_dict(trainer.flow.state_dict())
    trainer.fit(data, n_iterations=1, progress=False)

    torch.randperm(data.shape[0], generator=generator)  # the data order
    idx = torch.randperm(CONFIG.pool_size, generator=generator)[:CONFIG.n_negatives]
    kernel = samplers.MALA(frozen.log_prob, CONFIG.step_size)
    state, accept = kernel.init(pool[idx]), []
    for _ in range(CONFIG.mcmc_steps):
        state, info = kernel.step(state, generator)
        accept.append(info.accept_prob.mean())
    assert torch.equal(trainer.pool_[idx], state.x)
    assert not torch.equal(trainer.pool_[idx], pool[idx])  # the chains moved
    assert trainer.history_["local_accept"][0] == pytest.approx(float(torch.stack(accept).mean()))
    assert math.isnan(trainer.history_["global_accept"][0])


def test_a_method_registered_from_outside_trains_unchanged():
    record = register(Method("hmc-test", lambda log_prob, flow, c: samplers.HMC(
        log_prob, c.step_size, n_leapfrog=3)))
    try:
        data = TwoModes().sample(128, generator=torch.Generator().manual_seed(0))
        trainer = JointTrainer.from_config(2, "hmc-test", SMALL, CONFIG)
        assert trainer.method is record and isinstance(trainer.kernel, samplers.HMC)
        history = trainer.fit(data, n_iterations=3, progress=False)
        assert all(0 <= a <= 1 for a in history["local_accept"])
        assert all(math.isnan(a) for a in history["global_accept"])
    finally:
        del METHODS["hmc-test"]


def test_neg_mode_weights_count_the_iterations_negatives_not_the_pool():
    target = TwoModes()
    data = target.sample(128, generator=torch.Generator().manual_seed(0))
    trainer = JointTrainer.from_config(2, "mala", SMALL, CONFIG)
    trainer.pool_ = trainer._draw_base(CONFIG.pool_size, trainer.generator)
    generator = torch.Generator().manual_seed(0)
    generator.set_state(trainer.generator.get_state())
    trainer.fit(data, n_iterations=1, target=target, progress=False)

    torch.randperm(data.shape[0], generator=generator)  # the data order
    idx = torch.randperm(CONFIG.pool_size, generator=generator)[:CONFIG.n_negatives]
    share = lambda x: (torch.bincount(target.assign(x), minlength=2) / x.shape[0]).tolist()  # noqa: E731
    assert share(trainer.pool_) != share(trainer.pool_[idx])  # so the check below can tell them apart
    assert trainer.history_["neg_mode_weights"][0] == pytest.approx(share(trainer.pool_[idx]))


def test_a_registered_method_is_a_sampler_a_run_config_accepts():
    from flowmc_ebm.config import SAMPLERS, RunConfig, sampler_names

    assert SAMPLERS == sampler_names() == tuple(METHODS)  # one registry, no hand-kept list
    with pytest.raises(ValueError, match="sampler must be one of flowmc, ula, mala, nt; received"):
        RunConfig(sampler="hmc-run", iterations=2)
    register(Method("hmc-run", lambda log_prob, flow, c: samplers.HMC(log_prob, c.step_size)))
    try:
        assert RunConfig(sampler="hmc-run", iterations=2).sampler == "hmc-run"
    finally:
        del METHODS["hmc-run"]


def test_mcmc_steps_counts_moves_per_chain_for_every_method():
    # One meaning for every method: flowMC's cycle of n_local + n_global moves counts as that
    # many moves, a Langevin step as one.
    config = TrainerConfig(mcmc_steps=10, n_local=4, n_global=1)
    assert METHODS["flowmc"].steps(config) == 2
    assert METHODS["mala"].steps(config) == METHODS["ula"].steps(config) == 10
    assert METHODS["nt"].steps(config) == 10
    with pytest.raises(ValueError, match=r"mcmc_steps \(7\) must be a multiple of 5, the moves "
                                         r"one 'flowmc' kernel step makes"):
        METHODS["flowmc"].steps(TrainerConfig(mcmc_steps=7, n_local=4, n_global=1))

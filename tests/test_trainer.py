"""JointTrainer: the loop's contract, exact resumption, and clear errors on bad input."""

import math

import pytest
import torch

import samplers
from flowmc_ebm.config import ModelConfig, TrainerConfig
from flowmc_ebm.energies import MLPEnergy
from flowmc_ebm.evaluation import quadrature_mode_weights, sample_mode_weights
from flowmc_ebm.flows import base_distribution, make_flow
from flowmc_ebm.targets import FourModes, TwoModes
from flowmc_ebm.trainer import JointTrainer

SMALL = ModelConfig(energy_hidden=(32, 32), flow_hidden=(16, 16))


@pytest.fixture(autouse=True)
def _one_thread(_seed_and_threads):
    # Batches of tens of 2-D points: a second intra-op thread only adds contention, which on a
    # loaded 2-core machine slowed these tests 30-fold.
    torch.set_num_threads(1)


def small_trainer(sampler="flowmc", **knobs):
    config = TrainerConfig(**{"pool_size": 64, "batch_size": 32, "n_negatives": 32,
                              "log_every": 4, "eval_every": 5, **knobs})
    return JointTrainer.from_config(2, sampler, SMALL, config)


@pytest.fixture(scope="module")
def data():
    return TwoModes().sample(512, generator=torch.Generator().manual_seed(0))


def parameters(trainer):
    return [p.detach().clone() for p in [*trainer.energy.parameters(), *trainer.flow.parameters()]]


def test_model_flow_and_base_agree_at_the_start():
    trainer = small_trainer()
    x = torch.randn(16, 2)
    lam = base_distribution(trainer.flow)
    assert torch.equal(trainer.log_prob(x), lam.log_prob(x))  # E ≡ 0: the model is λ
    assert torch.allclose(trainer.flow().log_prob(x), lam.log_prob(x))  # identity flow


@pytest.mark.parametrize("sampler", ["flowmc", "ula", "mala", "nt"])
def test_fit_records_one_entry_per_iteration(data, sampler):
    trainer = small_trainer(sampler)
    history = trainer.fit(data, n_iterations=10, target=TwoModes(), progress=False)
    assert history["iteration"] == list(range(1, 11))
    for key in ["loss_energy", "energy_gap", "energy_pos", "energy_neg", "flow_nll_neg",
                "flow_nll_data", "local_accept", "global_accept", "elapsed", "neg_mode_weights"]:
        assert len(history[key]) == 10, key
    assert all(0 <= a <= 1 for a in history["local_accept"])
    has_global = sampler == "flowmc"
    assert all((0 <= a <= 1) if has_global else math.isnan(a) for a in history["global_accept"])
    assert all(math.isclose(sum(w), 1.0, abs_tol=1e-6) for w in history["neg_mode_weights"])
    # Quadrature of the EBM every eval_every = 5 iterations (2-D, known target).
    assert history["eval_iteration"] == [5, 10]
    assert all(math.isclose(sum(w), 1.0, abs_tol=1e-9) for w in history["ebm_mode_weights"])
    # Negatives carry no graph: nothing of the sampler or the flow reaches the energy's gradient.
    assert not trainer.pool_.requires_grad and trainer.pool_.grad_fn is None
    assert trainer.pool_.shape == (64, 2) and torch.isfinite(trainer.pool_).all()


def test_epochs_count_whole_batches(data):
    trainer = small_trainer(log_every=100)
    trainer.fit(data, epochs=1, progress=False)
    assert trainer.iteration_ == 512 // 32


def test_first_energy_step_is_the_contrastive_gradient(data):
    """One iteration by hand: the energy moves along ∇(mean E(x⁺) − mean E(x⁻)) only."""
    trainer = small_trainer(n_negatives=64, lr_energy=1e-3)
    reference = small_trainer(n_negatives=64, lr_energy=1e-3)
    batches = []
    next_batch = trainer._next_batch
    trainer._next_batch = lambda d: batches.append(next_batch(d)) or batches[-1]
    trainer.fit(data, n_iterations=1, progress=False)
    # All 64 chains were advanced, so the pool is this iteration's negatives.
    batch, negatives = batches[0], trainer.pool_
    energies = reference.energy(torch.cat([batch, negatives]))
    loss = energies[:32].mean() - energies[32:].mean()
    reference.opt_energy.zero_grad()
    loss.backward()
    reference.opt_energy.step()
    for p, q in zip(trainer.energy.parameters(), reference.energy.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-7)


def test_resume_is_bit_identical_to_one_run(data, tmp_path):
    straight = small_trainer(log_every=3)
    straight.fit(data, n_iterations=24, target=TwoModes(), progress=False)

    first = small_trainer(log_every=3)
    first.fit(data, n_iterations=12, target=TwoModes(), progress=False)
    path = first.save(tmp_path / "half.pt")
    del first
    second = JointTrainer.load(path)
    second.fit(data, n_iterations=12, target=TwoModes(), progress=False)

    for p, q in zip(parameters(straight), parameters(second), strict=True):
        assert torch.equal(p, q)
    assert torch.equal(straight.pool_, second.pool_)
    for key in ["loss_energy", "flow_nll_neg", "neg_mode_weights", "ebm_mode_weights"]:
        assert straight.history_[key] == second.history_[key], key
    # Both optimizers continue too: one more step each stays identical.
    straight.fit(data, n_iterations=1, progress=False)
    second.fit(data, n_iterations=1, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(parameters(straight), parameters(second),
                                                  strict=True))


def test_callbacks_state_wall_time_and_resumptions_survive_a_checkpoint(data, tmp_path):
    from flowmc_ebm.evaluation import ChainSnapshots

    straight, whole = small_trainer(), ChainSnapshots(16)
    straight.fit(data, n_iterations=16, callbacks=[whole], progress=False)

    first, half = small_trainer(), ChainSnapshots(16)
    first.fit(data, n_iterations=8, callbacks=[half], checkpoint_dir=tmp_path, progress=False)
    spent = first.elapsed_
    resumed, rest = JointTrainer.load_latest(tmp_path), ChainSnapshots(16)
    assert resumed.resumptions_ == 0 and resumed.elapsed_ == spent
    resumed.fit(data, n_iterations=8, callbacks=[rest], checkpoint_dir=tmp_path, progress=False)
    # The new callback got the first half's snapshots back, then took the second half's.
    assert rest.iterations == whole.iterations == [4, 8, 12, 16]
    assert all(torch.equal(a, b) for a, b in zip(rest.positions, whole.positions, strict=True))
    assert torch.equal(rest.chains(), whole.chains())
    assert resumed.resumptions_ == 1 and resumed.elapsed_ > spent
    assert JointTrainer.load_latest(tmp_path).resumptions_ == 1
    # A stateful callback of another class where the checkpoint holds a ChainSnapshots' state
    # (a plain function has no state to restore, and is just called).
    class Counter:
        def __call__(self, trainer):
            pass

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    with pytest.raises(ValueError, match="callback 0 is a .*Counter but the checkpoint holds "
                                         "the state of a ChainSnapshots"):
        JointTrainer.load_latest(tmp_path).fit(data, n_iterations=1, callbacks=[Counter()],
                                               progress=False)


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_learning_rates_follow_the_decay_and_resume_on_it(data, tmp_path, decay):
    knobs = dict(lr_decay=decay, lr_decay_iterations=16, lr_final_factor=0.1, lr_energy=0.02,
                 lr_flow=0.005, log_every=1, eval_every=0)
    seen = []
    trainer = small_trainer(**knobs)
    trainer.fit(data, n_iterations=20, progress=False, callbacks=(lambda t: seen.append(
        (t.iteration_, t.opt_energy.param_groups[0]["lr"], t.opt_flow.param_groups[0]["lr"])),))
    # The rate of iteration i (seen after it) is the one set before its step: factor(i - 1).
    for i, lr_e, lr_f in seen:
        t = min((i - 1) / 16, 1.0)
        shape = 0.5 * (1 + math.cos(math.pi * t)) if decay == "cosine" else 1 - t
        factor = 0.1 + 0.9 * shape
        assert lr_e == pytest.approx(0.02 * factor, rel=1e-12)
        assert lr_f == pytest.approx(0.005 * factor, rel=1e-12)
    assert seen[0][1] == pytest.approx(0.02) and seen[-1][1] == pytest.approx(0.002)
    # Halfway save and load continues on the same schedule, bit for bit.
    first = small_trainer(**knobs)
    first.fit(data, n_iterations=9, progress=False)
    second = JointTrainer.load(first.save(tmp_path / "half.pt"))
    second.fit(data, n_iterations=11, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(parameters(trainer), parameters(second),
                                                  strict=True))
    assert second.opt_energy.param_groups[0]["lr"] == trainer.opt_energy.param_groups[0]["lr"]


def test_a_decay_changes_training_and_none_leaves_the_rates_alone(data):
    constant = small_trainer(eval_every=0)
    constant.fit(data, n_iterations=6, progress=False)
    assert constant.opt_energy.param_groups[0]["lr"] == 0.01
    decayed = small_trainer(eval_every=0, lr_decay="linear", lr_decay_iterations=6)
    decayed.fit(data, n_iterations=6, progress=False)
    assert decayed.opt_energy.param_groups[0]["lr"] == pytest.approx(0.01 * (0.1 + 0.9 / 6))
    assert not all(torch.equal(p, q) for p, q in zip(parameters(constant), parameters(decayed),
                                                      strict=True))


def test_a_decay_without_its_length_is_refused():
    with pytest.raises(ValueError, match=r"trainer.lr_decay = 'cosine' needs "
                                         r"trainer.lr_decay_iterations >= 1.*received 0"):
        small_trainer(lr_decay="cosine")


def test_resume_with_modules_built_elsewhere(data, tmp_path):
    def build():
        torch.manual_seed(3)
        return MLPEnergy(2, (16,)), make_flow(2, transforms=2, hidden=(8,))

    energy, flow = build()
    trainer = JointTrainer(energy, flow, "ula", TrainerConfig(pool_size=32, batch_size=16,
                                                              n_negatives=16))
    trainer.fit(data, n_iterations=4, progress=False)
    with pytest.raises(ValueError, match="pass energy= and flow="):
        JointTrainer.load(trainer.save(tmp_path / "u.pt"))
    back = JointTrainer.load(tmp_path / "u.pt", *build())
    assert back.iteration_ == 4 and back.sampler == "ula"
    assert all(torch.equal(p, q) for p, q in zip(trainer.energy.parameters(),
                                                  back.energy.parameters(), strict=True))


def test_sampling_leaves_the_training_stream_alone(data):
    a, b = small_trainer(), small_trainer()
    a.fit(data, n_iterations=3, progress=False)
    b.fit(data, n_iterations=3, progress=False)
    draws = a.sample(20, n_steps=2)
    assert draws.shape == (20, 2) and torch.isfinite(draws).all()
    trace = a.sample(8, n_steps=3, return_trace=True)
    assert trace.samples.shape == (8, 3, 2)
    a.fit(data, n_iterations=3, progress=False)
    b.fit(data, n_iterations=3, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(parameters(a), parameters(b), strict=True))


def test_a_kernel_factory_is_a_sampler(data):
    trainer = small_trainer(lambda log_prob: samplers.HMC(log_prob, 0.05, 3), mcmc_steps=2)
    history = trainer.fit(data, n_iterations=4, progress=False)
    assert len(history["local_accept"]) == 4 and trainer.sampler is not None
    assert repr(trainer).startswith("JointTrainer(sampler='custom'")


def test_callbacks_run_every_log_interval_and_can_stop(data):
    seen = []

    def stop_at_eight(trainer):
        seen.append(trainer.iteration_)
        return trainer.iteration_ >= 8

    trainer = small_trainer(log_every=4)
    trainer.fit(data, n_iterations=20, callbacks=[stop_at_eight], progress=False)
    assert seen == [4, 8] and trainer.iteration_ == 8
    assert len(trainer.history_["loss_energy"]) == 8


def test_checkpoint_dir_holds_the_latest_state(data, tmp_path):
    trainer = small_trainer()
    trainer.fit(data, n_iterations=7, checkpoint_dir=tmp_path, checkpoint_every=3,
                progress=False)
    back = JointTrainer.load(tmp_path / "last.pt")
    assert back.iteration_ == 7 and torch.equal(back.pool_, trainer.pool_)


def test_quadrature_of_an_exact_density_gives_its_weights():
    for target in [TwoModes(), FourModes()]:
        w = quadrature_mode_weights(target.log_prob, target, n_grid=200)
        assert torch.allclose(w, target.weights.double(), atol=2e-3)
    x = TwoModes().sample(4000, generator=torch.Generator().manual_seed(1))
    w = sample_mode_weights(x, TwoModes())
    # Binomial standard error sqrt(p(1-p)/n) ≈ 0.0075; 4 of them.
    assert abs(w[TwoModes.top_right] - 2 / 3) < 4 * math.sqrt(2 / 9 / 4000)


# ----------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_data_is_refused_before_anything_changes(data, bad):
    trainer = small_trainer()
    before = parameters(trainer)
    poisoned = data.clone()
    poisoned[7, 1] = bad
    with pytest.raises(ValueError, match=r"NaN or infinite values in 1 of 512 rows \(first at "
                                         r"row 7\)"):
        trainer.fit(poisoned, n_iterations=2, progress=False)
    assert trainer.iteration_ == 0 and trainer.pool_ is None
    assert all(torch.equal(p, q) for p, q in zip(before, parameters(trainer), strict=True))


def test_data_of_the_wrong_dimension_is_refused(data, tmp_path):
    trainer = small_trainer()
    with pytest.raises(ValueError, match=r"shape \(n, 2\) for this 2-D energy; received shape "
                                         r"\(512, 3\)"):
        trainer.fit(torch.randn(512, 3), n_iterations=2, checkpoint_dir=tmp_path,
                    progress=False)
    with pytest.raises(ValueError, match=r"received shape \(512,\)"):
        trainer.fit(torch.randn(512), n_iterations=2, progress=False)
    with pytest.raises(TypeError, match="torch.Tensor"):
        trainer.fit(data.numpy(), n_iterations=2, progress=False)
    with pytest.raises(ValueError, match="fewer than batch_size 32"):
        trainer.fit(data[:10], n_iterations=2, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_mismatched_parts_are_refused(data):
    with pytest.raises(ValueError, match="energy expects dim 3 but the flow is on dim 2"):
        JointTrainer(MLPEnergy(3), make_flow(2))
    with pytest.raises(ValueError, match="target is 2-D but the model is 3-D"):
        JointTrainer.from_config(3).fit(torch.randn(100, 3), n_iterations=1, target=TwoModes(),
                                        progress=False)
    trainer = small_trainer()
    trainer.fit(data, n_iterations=1, progress=False)
    with pytest.raises(ValueError, match="fitted on 512 points .* received 256 points"):
        trainer.fit(data[:256], n_iterations=1, progress=False)


def test_unknown_sampler_and_options_are_named():
    with pytest.raises(ValueError, match=r"unknown sampler 'hmc'; expected one of flowmc, ula, "
                                         r"mala, nt"):
        small_trainer("hmc")
    with pytest.raises(TypeError, match="sampler must be a name"):
        small_trainer(3)
    with pytest.raises(TypeError, match="must return a samplers.Kernel; received str"):
        small_trainer(lambda log_prob: "mala")
    with pytest.raises(TypeError, match="unknown trainer option.*pool_sise"):
        JointTrainer.from_config(2).__class__(MLPEnergy(2), make_flow(2), pool_sise=3)
    with pytest.raises(ValueError, match=r"trainer.lr_energy must be > 0.0; received -1"):
        small_trainer(lr_energy=-1.0)
    with pytest.raises(ValueError, match="exactly one of n_iterations and epochs"):
        small_trainer().fit(torch.randn(64, 2), progress=False)

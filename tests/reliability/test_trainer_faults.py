"""Faults injected into `JointTrainer.fit`: a diverging EBM is restored and slowed down, or stopped
with a clear error; NaN never reaches a checkpoint; a truncated newest checkpoint is skipped."""

import math
import sys
import warnings

import pytest
import torch

from flowmc_ebm.checkpoint import (
    LATEST,
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
)
from flowmc_ebm.config import ModelConfig, TrainerConfig
from flowmc_ebm.targets import TwoModes
from flowmc_ebm.trainer import JointTrainer, TrainingDivergedError

SMALL = ModelConfig(energy_hidden=(16, 16), flow_hidden=(8,), flow_transforms=2)


def small_trainer(sampler="mala", **knobs):
    config = TrainerConfig(**{"pool_size": 64, "batch_size": 32, "n_negatives": 32,
                              "mcmc_steps": 5, "n_local": 4, "n_global": 1, "n_particles": 8,
                              "log_every": 5, "eval_every": 0, **knobs})
    return JointTrainer.from_config(2, sampler, SMALL, config)


@pytest.fixture(scope="module")
def data():
    return TwoModes().sample(256, generator=torch.Generator().manual_seed(0))


def poison(trainer, value, *, at, once, chains=True):
    """Make the energy return NaN (``value`` NaN) or ``value`` times its output from iteration
    ``at`` on (or only at the first call there). With ``chains`` the kernel's evaluations see it
    too (the kernel then refuses to start the chains); without, only the EBM's training pass."""
    fired = []
    training_rows = trainer.config.batch_size + trainer.config.n_negatives

    def hook(module, inputs, output):
        if not chains and inputs[0].shape[0] != training_rows:
            return None
        if trainer.iteration_ + 1 >= at and not (once and fired):
            fired.append(trainer.iteration_ + 1)
            return output * 0 + value if math.isnan(value) else output * value
        return None

    return trainer.energy.register_forward_hook(hook), fired


def all_finite(trainer):
    tensors = [*trainer.energy.parameters(), *trainer.flow.parameters(), trainer.pool_]
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def saved_tensors_finite(path):
    state = load_checkpoint(path, "joint-trainer")
    found = []

    def walk(x):
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            found.append(bool(torch.isfinite(x).all()))
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk({k: state[k] for k in ["energy", "flow", "opt_energy", "opt_flow", "pool"]})
    return len(found) > 10 and all(found)


@pytest.mark.parametrize("sampler, chains", [("mala", False), ("flowmc", False),
                                             ("mala", True), ("flowmc", True)])
def test_a_transient_nan_is_rolled_back_and_the_learning_rates_lowered(data, sampler, chains):
    trainer = small_trainer(sampler)
    handle, fired = poison(trainer, math.nan, at=13, once=True, chains=chains)
    history = trainer.fit(data, n_iterations=20, progress=False)
    handle.remove()
    assert fired == [13]
    (restart,) = history["restarts"]
    # Made at 13, seen at the check at 15 (log_every=5) or at once by the kernel; back to 10.
    assert restart["iteration"] == 13 and restart["restored_to"] == 10
    assert ("energies are NaN" if not chains else "log-density is NaN") in restart["reason"]
    assert restart["lr_energy"] == pytest.approx(0.005) and restart["lr_flow"] == pytest.approx(0.005)
    assert trainer.opt_energy.param_groups[0]["lr"] == pytest.approx(0.005)
    assert trainer.opt_flow.param_groups[0]["lr"] == pytest.approx(0.005)
    assert trainer.iteration_ == 20 and history["iteration"] == list(range(1, 21))
    assert all(len(history[k]) == 20 for k in ["loss_energy", "energy_gap", "elapsed"])
    assert all(math.isfinite(v) for v in history["loss_energy"])
    assert all_finite(trainer)


def test_chains_corrupted_between_checks_are_rolled_back(data):
    """NaN chains make the kernel refuse to start them before the guard's next check: that
    refusal is a divergence too, not a crash."""
    corrupted = []

    def corrupt_once(trainer):
        if not corrupted:
            corrupted.append(trainer.iteration_)
            trainer.pool_[3] = math.nan

    trainer = small_trainer("ula")
    history = trainer.fit(data, n_iterations=12, callbacks=[corrupt_once], progress=False)
    (restart,) = history["restarts"]
    assert corrupted == [5] and restart["restored_to"] == 5
    assert "persistent chains hold NaN or inf" in restart["reason"]
    assert trainer.iteration_ == 12 and all_finite(trainer)


def test_other_errors_inside_an_iteration_are_not_mistaken_for_divergence(data):
    trainer = small_trainer()

    def hook(module, inputs, output):
        if trainer.iteration_ == 2:
            raise ValueError("a genuine bug")
        return None

    trainer.energy.register_forward_hook(hook)
    with pytest.raises(ValueError, match="a genuine bug"):
        trainer.fit(data, n_iterations=5, progress=False)
    assert "restarts" not in trainer.history_


def test_the_roll_back_restores_the_exact_state(data):
    """Iterations 1..10 after a restart at 10 equal those of a clean run: the snapshot took no
    randomness and restored the generator, the chains and the data cursor."""
    clean = small_trainer()
    clean.fit(data, n_iterations=10, progress=False)
    faulty = small_trainer()
    handle, _ = poison(faulty, math.nan, at=12, once=True)
    faulty.fit(data, n_iterations=10, progress=False)
    faulty.fit(data, n_iterations=5, progress=False)  # diverges at 12, back to 10 and on to 15
    handle.remove()
    assert faulty.history_["restarts"][0]["restored_to"] == 10
    assert faulty.history_["loss_energy"][:10] == clean.history_["loss_energy"]
    # The same state at 10 with half the learning rates: a clean run lowered by hand at 10.
    for opt in (clean.opt_energy, clean.opt_flow):
        for group in opt.param_groups:
            group["lr"] *= 0.5
    clean.fit(data, n_iterations=5, progress=False)
    assert faulty.history_["loss_energy"] == clean.history_["loss_energy"]
    for p, q in zip(faulty._parameters(), clean._parameters(), strict=True):
        assert torch.equal(p, q)
    assert torch.equal(faulty.pool_, clean.pool_)


def test_a_persistent_explosion_stops_with_a_clear_error_and_no_nan_on_disk(data, tmp_path):
    trainer = small_trainer(max_restarts=2)
    handle, fired = poison(trainer, 1e6, at=9, once=False)
    with pytest.raises(TrainingDivergedError) as err:
        trainer.fit(data, n_iterations=30, checkpoint_dir=tmp_path, checkpoint_every=4,
                    progress=False)
    handle.remove()
    message = str(err.value)
    assert isinstance(err.value, RuntimeError)
    assert "diverged at iteration 9" in message and "exceeds trainer.max_abs_energy" in message
    assert "after 2 restart(s)" in message and "Try smaller trainer.lr_energy" in message
    assert len(trainer.history_["restarts"]) == 2
    # Left at the last good state, which is finite and can be saved.
    assert trainer.iteration_ == 8 and all_finite(trainer)
    assert len(trainer.history_["loss_energy"]) == 8
    files = [p for _, p in list_checkpoints(tmp_path)]
    assert [p.name for p in files] == ["iter-000008.pt", "iter-000004.pt"]
    for path in [*files, tmp_path / LATEST]:
        assert saved_tensors_finite(path), path
    assert trainer.save(tmp_path / "after.pt").is_file()


def test_a_huge_learning_rate_is_lowered_until_training_runs(data):
    trainer = small_trainer(lr_energy=100.0, restart_lr_factor=1e-3)
    history = trainer.fit(data, n_iterations=30, progress=False)
    (restart,) = history["restarts"]
    assert "max_abs_energy" in restart["reason"] and restart["restored_to"] == 0
    assert restart["lr_energy"] == pytest.approx(0.1)
    assert trainer.iteration_ == 30 and all_finite(trainer)
    assert max(abs(v) for v in history["energy_pos"]) < trainer.config.max_abs_energy


def test_a_restart_lowers_a_decaying_rate_and_the_decay_goes_on(data):
    trainer = small_trainer(lr_energy=100.0, restart_lr_factor=1e-3, lr_decay="linear",
                            lr_decay_iterations=30, lr_final_factor=0.5)
    history = trainer.fit(data, n_iterations=30, progress=False)
    (restart,) = history["restarts"]
    assert restart["restored_to"] == 0 and restart["lr_energy"] == pytest.approx(0.1)
    # After it: initial rate x restart factor x the decay at the last step (iteration 29 of 30).
    expected = 100.0 * 1e-3 * (0.5 + 0.5 * (1 - 29 / 30))
    assert trainer.opt_energy.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12)
    assert trainer.opt_flow.param_groups[0]["lr"] == pytest.approx(0.01 * 1e-3 * expected / 0.1)
    assert trainer.iteration_ == 30 and all_finite(trainer)


def test_a_huge_learning_rate_with_no_restarts_left_is_an_error(data):
    trainer = small_trainer(lr_energy=1e3, max_restarts=0)
    with pytest.raises(TrainingDivergedError, match=r"diverged at iteration \d+: \|mean energy\| "
                                                    r"= .* \(with trainer.max_restarts = 0\)"):
        trainer.fit(data, n_iterations=30, progress=False)
    assert trainer.iteration_ == 0 and all_finite(trainer)


def test_a_gradient_bound_is_a_divergence_too(data):
    trainer = small_trainer(max_grad_norm=1e-6, max_restarts=0)
    with pytest.raises(TrainingDivergedError, match=r"gradient norm .* exceeds "
                                                    r"trainer.max_grad_norm = 1e-06"):
        trainer.fit(data, n_iterations=5, progress=False)


@pytest.mark.parametrize("sampler", ["flowmc", "ula"])
def test_the_guard_reads_the_device_only_at_checks(data, monkeypatch, sampler):
    """No host transfer by the trainer inside an iteration: `.item()` and `.tolist()` called
    from trainer.py are refused there (Adam's own `.item()` on its CPU step counter is not a
    device sync), and the guard is read once per check (log_every and the end)."""
    trainer = small_trainer(sampler, log_every=5)
    inside, reads = [], []

    def refuse(name):
        original = getattr(torch.Tensor, name)

        def wrapped(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            ours = "flowmc_ebm/training/" in caller or caller.endswith("trainer.py")
            assert not (inside and ours), \
                f"Tensor.{name}() inside an iteration"
            return original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, wrapped)

    refuse("item")
    refuse("tolist")
    iteration, first_bad = trainer._iteration, trainer._first_bad

    def one_iteration(*args):
        inside.append(True)
        try:
            return iteration(*args)
        finally:
            inside.pop()

    def counted():
        reads.append(trainer.iteration_)
        return first_bad()

    monkeypatch.setattr(trainer, "_iteration", one_iteration)
    monkeypatch.setattr(trainer, "_first_bad", counted)
    trainer.fit(data, n_iterations=22, checkpoint_dir=None, progress=False)
    assert reads == [5, 10, 15, 20, 22]


def test_no_divergence_means_no_restarts_entry(data):
    trainer = small_trainer()
    history = trainer.fit(data, n_iterations=7, progress=False)
    assert "restarts" not in history and trainer.opt_energy.param_groups[0]["lr"] == 0.01


@pytest.mark.parametrize("where", ["parameter", "pool", "optimizer"])
def test_save_refuses_non_finite_state_and_leaves_the_old_file(data, tmp_path, where):
    trainer = small_trainer()
    trainer.fit(data, n_iterations=3, progress=False)
    path = trainer.save(tmp_path / "good.pt")
    before = path.read_bytes()
    with torch.no_grad():
        if where == "parameter":
            next(trainer.energy.parameters())[0, 0] = math.nan
        elif where == "pool":
            trainer.pool_[5, 1] = math.inf
        else:
            next(iter(trainer.opt_flow.state.values()))["exp_avg"].view(-1)[0] = math.nan
    name = {"parameter": r"energy\.", "pool": "pool", "optimizer": r"opt_flow\.state"}[where]
    with pytest.raises(ValueError, match=rf"refusing to write checkpoint .*good\.pt: {name}.* "
                                         r"NaN or inf"):
        trainer.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["good.pt"]


def test_only_the_newest_checkpoints_are_kept(data, tmp_path):
    trainer = small_trainer(keep_checkpoints=3)
    # Leftovers of a writer killed mid-write (see save_checkpoint, _point_latest) are cleared.
    (tmp_path / ".iter-000002.pt.k1lled.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / ".last.pt.999.link").write_bytes(b"")
    trainer.fit(data, n_iterations=11, checkpoint_dir=tmp_path, checkpoint_every=2, progress=False)
    # The directory's lock file stays (a lock on a deleted file would lock nothing).
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".lock", "iter-000008.pt", "iter-000010.pt", "iter-000011.pt", LATEST]
    assert (tmp_path / LATEST).read_bytes() == checkpoint_path(tmp_path, 11).read_bytes()
    assert JointTrainer.load(tmp_path / LATEST).iteration_ == 11
    assert latest_checkpoint(tmp_path) == checkpoint_path(tmp_path, 11)


def test_a_truncated_newest_checkpoint_is_skipped_with_a_warning(data, tmp_path):
    straight = small_trainer()
    straight.fit(data, n_iterations=14, progress=False)

    first = small_trainer()
    first.fit(data, n_iterations=12, checkpoint_dir=tmp_path, checkpoint_every=5, progress=False)
    newest = checkpoint_path(tmp_path, 12)
    newest.write_bytes(newest.read_bytes()[:1000])  # last.pt is the same file: truncated too
    with pytest.raises(ValueError, match=r"iter-000012\.pt is not a readable"):
        JointTrainer.load(newest)
    with pytest.warns(UserWarning, match=r"skipped a newer checkpoint: .*iter-000012\.pt is not "
                                         r"a readable flowmc-ebm checkpoint \(truncated"):
        resumed = JointTrainer.load_latest(tmp_path)
    assert resumed.iteration_ == 10 and checkpoint_path(tmp_path, 10).is_file()
    resumed.fit(data, n_iterations=4, checkpoint_dir=tmp_path, checkpoint_every=5, progress=False)
    for p, q in zip(straight._parameters(), resumed._parameters(), strict=True):
        assert torch.equal(p, q)
    assert straight.history_["loss_energy"] == resumed.history_["loss_energy"]
    # The corrupt file of the abandoned future is gone once the resumed run wrote a newer one.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".lock", "iter-000005.pt", "iter-000010.pt", "iter-000014.pt", LATEST]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert latest_checkpoint(tmp_path) == checkpoint_path(tmp_path, 14)


def test_a_directory_without_a_good_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no checkpoint in .*iter-NNNNNN\.pt"):
        latest_checkpoint(tmp_path)
    checkpoint_path(tmp_path, 5).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"no readable checkpoint in .*iter-000005\.pt is not a "
                                         r"readable"):
        latest_checkpoint(tmp_path)


@pytest.mark.parametrize("field, value, message", [
    ("restart_lr_factor", 1.0, r"trainer.restart_lr_factor must be < 1"),
    ("restart_lr_factor", 0.0, r"trainer.restart_lr_factor must be > 0.0"),
    ("max_abs_energy", -1.0, r"trainer.max_abs_energy must be > 0.0"),
    ("max_restarts", -1, r"trainer.max_restarts must be >= 0"),
    ("keep_checkpoints", 0, r"trainer.keep_checkpoints must be >= 1"),
])
def test_guard_settings_are_validated(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainerConfig(**{field: value})

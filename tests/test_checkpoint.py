"""Checkpoints are atomic, weights-only, and refuse what they did not write, naming the file."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from flowmc_ebm.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from flowmc_ebm.config import ModelConfig, TrainerConfig
from flowmc_ebm.targets import TwoModes
from flowmc_ebm.trainer import JointTrainer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread(_seed_and_threads):
    # Tiny models: a second intra-op thread only adds contention on a loaded 2-core machine.
    torch.set_num_threads(1)


def test_round_trip_keeps_tensors_and_plain_data(tmp_path):
    state = {"w": torch.arange(3.0), "nested": {"n": 3, "xs": [1.5, None]}, "name": "run"}
    path = save_checkpoint(state, tmp_path / "sub" / "a.pt", kind="test")
    back = load_checkpoint(path, kind="test")
    assert torch.equal(back["w"], state["w"])
    assert back["nested"] == state["nested"] and back["name"] == "run"
    assert back["format"] == FORMAT
    # Only the checkpoint itself is left: the temporary file was renamed, not copied.
    assert [p.name for p in path.parent.iterdir()] == ["a.pt"]


def test_truncated_file_is_a_clear_error_naming_it(tmp_path):
    path = save_checkpoint({"w": torch.randn(1000)}, tmp_path / "t.pt", kind="test")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"t\.pt is not a readable flowmc-ebm checkpoint"):
        load_checkpoint(path, kind="test")


def test_foreign_files_are_refused(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.ones(2)}, plain)
    with pytest.raises(ValueError, match=r"plain\.pt is not a flowmc-ebm checkpoint: expected "
                                         r"format .* without a format tag"):
        load_checkpoint(plain, kind="test")
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.pt is not a readable"):
        load_checkpoint(text, kind="test")


class Payload:
    """Stands for an arbitrary pickled object, which weights_only loading must not execute."""


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "obj.pt"
    torch.save({"format": FORMAT, "kind": "test", "obj": Payload()}, path)
    with pytest.raises(ValueError, match=r"obj\.pt is not a readable.*pickled"):
        load_checkpoint(path, kind="test")


def test_wrong_kind_and_missing_file(tmp_path):
    path = save_checkpoint({}, tmp_path / "k.pt", kind="other")
    with pytest.raises(ValueError, match=r"holds a 'other' checkpoint; expected 'test'"):
        load_checkpoint(path, kind="test")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt", kind="test")


def test_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint({"v": torch.tensor(1)}, tmp_path / "c.pt", kind="test")

    def broken_save(obj, f, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"v": torch.tensor(2)}, path, kind="test")
    monkeypatch.undo()
    assert load_checkpoint(path, kind="test")["v"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_bad_trainer_checkpoints_name_the_file_and_leave_it(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    before = foreign.read_bytes()
    with pytest.raises(ValueError, match="foreign.pt"):
        JointTrainer.load(foreign)
    other_kind = save_checkpoint({}, tmp_path / "kind.pt", kind="something-else")
    with pytest.raises(ValueError, match=r"kind\.pt holds a 'something-else' checkpoint"):
        JointTrainer.load(other_kind)
    assert foreign.read_bytes() == before


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    trainer = JointTrainer.from_config(2, model=ModelConfig(energy_hidden=(8,)))
    path = trainer.save(tmp_path / "small.pt")
    from flowmc_ebm.energies import MLPEnergy
    from flowmc_ebm.flows import make_flow

    with pytest.raises(ValueError, match=r"cannot restore a trainer from .*small\.pt"):
        JointTrainer.load(path, energy=MLPEnergy(2, (16,)), flow=make_flow(2))


CHILD = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from flowmc_ebm.config import ModelConfig, TrainerConfig
    from flowmc_ebm.targets import TwoModes
    from flowmc_ebm.trainer import JointTrainer
    target = TwoModes()
    data = target.sample(512, generator=torch.Generator().manual_seed(0))
    trainer = JointTrainer.from_config(
        2, "flowmc", ModelConfig(energy_hidden=(32, 32), flow_hidden=(16, 16)),
        TrainerConfig(pool_size=64, batch_size=32, n_negatives=32, log_every=5, eval_every=0))
    # Write constantly so that the kill is likely to land during a write.
    trainer.fit(data, n_iterations=100000, checkpoint_dir=sys.argv[1], checkpoint_every=1,
                progress=False)
""")


# Slow: a fresh interpreter importing torch (most of its ~27 s under load); the same is checked,
# more strictly (kills inside each step of a write, bit-identical resume), by the campaign in
# tests/reliability/test_interrupted.py, which forks its runs instead.
@pytest.mark.slow
def test_sigkill_mid_training_leaves_a_resumable_checkpoint(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    ckpt_dir = tmp_path / "ckpt"
    env = {**os.environ, "PYTHONPATH": str(REPO), "CI": "1"}
    child = subprocess.Popen([sys.executable, str(script), str(ckpt_dir)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (ckpt_dir / "last.pt").exists():
            assert child.poll() is None, child.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint within 60 s"
            time.sleep(0.05)
        time.sleep(1.5)  # let it train and rewrite the checkpoint many times
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL

    trainer = JointTrainer.load(ckpt_dir / "last.pt")
    assert trainer.iteration_ >= 1
    assert len(trainer.history_["iteration"]) == trainer.iteration_
    done = trainer.iteration_
    data = TwoModes().sample(512, generator=torch.Generator().manual_seed(0))
    trainer.fit(data, n_iterations=3, progress=False)
    assert trainer.iteration_ == done + 3
    assert all(torch.isfinite(p).all() for p in trainer.energy.parameters())


def test_trainer_config_round_trips_through_a_checkpoint(tmp_path):
    config = TrainerConfig(pool_size=32, batch_size=16, n_negatives=16, energy_l2=0.3, seed=7)
    trainer = JointTrainer.from_config(2, "mala", trainer=config)
    back = JointTrainer.load(trainer.save(tmp_path / "m.pt"))
    assert back.config == config and back.sampler == "mala"

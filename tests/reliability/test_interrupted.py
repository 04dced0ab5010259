"""Interrupted work: ``flowmc-ebm train`` killed with SIGKILL at random moments (after random
delays, and inside file writes through `samplers.rundir`'s fault hook) and resumed with the same
command line plus ``--resume`` ends bit-identical to an uninterrupted run of the same seed:
parameters, optimizers, chains, generator, history and summary (R-hat included), all but the
wall-clock fields; a truncated newest checkpoint is skipped, named, and the run resumes from the
one before; SIGINT/SIGTERM stop a run with a checkpoint and exit 130/143.

The campaign is `train_crash.py`. Starting Python and importing torch + flowmc-ebm costs 4-15 s
per process on a loaded 2-core machine, so the killed runs are forked from this process (which
imported the CLI once): each is a separate process running ``flowmc_ebm.cli.main(argv)``, exactly
what ``python -m flowmc_ebm.cli`` runs, and is killed like any other.
"""

import sys
from pathlib import Path

import pytest
import torch

from flowmc_ebm import cli
from flowmc_ebm.checkpoint import list_checkpoints, load_checkpoint
from flowmc_ebm.trainer import JointTrainer

sys.path.insert(0, str(Path(__file__).parent))
import train_crash  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def assert_campaign(result, kills):
    assert result["kills_survived"] == kills, result
    assert result["runs_bit_identical"] == result["runs"] and not result["differences"], result
    assert result["tracebacks"] == 0, result
    # The resumed runs say they were resumed (a process killed before its first checkpoint
    # leaves no trace of itself, so the count is at most the kills).
    assert all(0 < r <= kills for r in result["resumptions"]), result
    # Kills mid-training, not only in the final writes.
    assert min(result["newest_checkpoint_after_each_kill"]) < result["iterations"], result


def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path):
    # 4 kills (3 inside a file write) on 32-iteration runs. Shown to fail: with the callbacks'
    # state not restored on resume, "checkpoint callbacks" and "summary.json rhat" differ.
    assert_campaign(train_crash.campaign(4, seed=4, workdir=tmp_path, iterations=32,
                                         per_run=4), 4)


@pytest.mark.slow
def test_sigkill_campaign_train(tmp_path):
    # 24 kills over 3 runs of 96 iterations (the numbers in docs/reliability.md).
    assert_campaign(train_crash.campaign(24, seed=0, workdir=tmp_path, iterations=96,
                                         per_run=8), 24)


TINY = ["--set", "trainer.pool_size=32", "--set", "trainer.batch_size=16", "--set",
        "trainer.n_negatives=16", "--set", "trainer.log_every=5", "--set", "trainer.eval_every=0",
        "--set", "trainer.keep_checkpoints=3", "--set", "checkpoint_every=5",
        "--set", "model.energy_hidden=[8]", "--set", "model.flow_hidden=[8]",
        "--set", "n_data=128", "--no-progress"]


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_resume_skips_a_damaged_newest_checkpoint_and_names_it(tmp_path, capsys, damage):
    straight, run = tmp_path / "straight", tmp_path / "run"
    assert cli.main(["train", "--iterations", "30", "--out", str(straight), *TINY]) == 0
    assert cli.main(["train", "--iterations", "20", "--out", str(run), *TINY]) == 0
    newest_file = run / "checkpoints" / "iter-000020.pt"
    data = newest_file.read_bytes()
    newest_file.write_bytes(data[:len(data) // 3] if damage == "truncate"
                            else data[:100] + b"\0" * 64 + data[164:])
    capsys.readouterr()
    assert cli.main(["train", "--resume", "--iterations", "30", "--out", str(run),
                     "--no-progress"]) == 0
    captured = capsys.readouterr()
    (warning,) = captured.err.strip().splitlines()
    assert warning.startswith("warning: skipped a newer checkpoint: ")
    assert "iter-000020.pt is not a readable flowmc-ebm checkpoint" in warning
    assert "resuming from" in captured.out and "iter-000015.pt (iteration 15)" in captured.out
    a = JointTrainer.load(straight / "checkpoints" / "last.pt")
    b = JointTrainer.load(run / "checkpoints" / "last.pt")
    assert a.iteration_ == b.iteration_ == 30
    assert all(torch.equal(p, q) for p, q in zip(a._parameters(), b._parameters(), strict=True))
    assert torch.equal(a.pool_, b.pool_)
    assert a.history_["loss_energy"] == b.history_["loss_energy"]
    # The damaged file was replaced by a good one of the same number; three kept.
    assert [i for i, _ in list_checkpoints(run / "checkpoints")] == [30, 25, 20]
    assert load_checkpoint(newest_file, "joint-trainer")["iteration"] == 20


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_over(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--iterations", "6", "--out", str(run), *TINY]) == 0
    for path in (run / "checkpoints").iterdir():
        path.unlink()
    capsys.readouterr()
    assert cli.main(["train", "--resume", "--out", str(run), "--no-progress"]) == 0
    assert "the run starts again from iteration 0" in capsys.readouterr().err
    assert JointTrainer.load(run / "checkpoints" / "last.pt").iteration_ == 6

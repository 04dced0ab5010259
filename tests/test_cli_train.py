"""``flowmc-ebm train`` and ``demo``: files written, TOML configs validated, nothing written over."""

import json
import re

import pytest
import torch

from flowmc_ebm import cli
from flowmc_ebm.config import RunConfig, load_config
from flowmc_ebm.trainer import JointTrainer

TINY = ["--set", "trainer.pool_size=64", "--set", "trainer.batch_size=32",
        "--set", "trainer.n_negatives=32", "--set", "trainer.log_every=5",
        "--set", "trainer.eval_every=5", "--set", "model.energy_hidden=[16, 16]",
        "--set", "model.flow_hidden=[8]", "--set", "n_data=512", "--no-progress"]


@pytest.fixture(autouse=True)
def _one_thread(_seed_and_threads):
    # Tiny models: a second intra-op thread only adds contention on a loaded 2-core machine.
    torch.set_num_threads(1)


def test_train_writes_checkpoint_history_summary_and_figures(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--target", "two_modes", "--sampler", "ula", "--iterations", "20",
                     "--out", str(out), *TINY]) == 0
    for name in ["config.json", "checkpoints/last.pt", "history.json", "summary.json",
                 "landscape.png", "weights.png"]:
        assert (out / name).is_file(), name
    history = json.loads((out / "history.json").read_text())
    assert history["iteration"][-1] == 20 and history["global_accept"][0] is None  # NaN -> null
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sampler"] == "ula" and summary["truth"] == pytest.approx(2 / 3)
    assert "ula-EBM: weight" in capsys.readouterr().out
    assert JointTrainer.load(out / "checkpoints" / "last.pt").iteration_ == 20


def test_a_target_above_2d_gets_a_pair_plot_and_no_figures_means_none(tmp_path):
    import matplotlib.image

    out = tmp_path / "run"
    assert cli.main(["train", "--target", "high_dim", "--set", "target_options.dim=3",
                     "--sampler", "ula", "--iterations", "4", "--out", str(out), *TINY]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["model.png"]
    image = matplotlib.image.imread(out / "model.png")
    assert image.shape[0] > 400 and image.shape[1] > 400  # a 3 x 3 grid, not an empty canvas
    assert image[..., :3].std() > 0.05
    quiet = tmp_path / "quiet"
    assert cli.main(["train", "--target", "two_modes", "--sampler", "ula", "--iterations", "4",
                     "--out", str(quiet), "--no-figures", *TINY]) == 0
    assert not list(quiet.glob("*.png")) and (quiet / "summary.json").is_file()


def test_resume_continues_and_an_existing_run_is_not_written_over(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--iterations", "10", "--out", str(out), *TINY]
    assert cli.main(args) == 0
    checkpoint = out / "checkpoints" / "last.pt"
    before = checkpoint.read_bytes()
    assert cli.main(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert checkpoint.read_bytes() == before
    assert cli.main(["train", "--resume", "--iterations", "15", "--out", str(out),
                     "--no-progress"]) == 0
    trainer = JointTrainer.load(checkpoint)
    assert trainer.iteration_ == 15 and len(trainer.history_["iteration"]) == 15


def test_toml_config_and_flags(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('sampler = "mala"\niterations = 7\n[trainer]\nenergy_l2 = 0.1\n'
                      'pool_size = 64\nbatch_size = 32\nn_negatives = 32\n'
                      '[model]\nenergy_hidden = [8]\nflow_hidden = [8]\n')
    loaded = load_config(config)
    assert loaded.sampler == "mala" and loaded.trainer.energy_l2 == 0.1
    assert loaded.model.energy_hidden == (8,) and loaded.n_iterations == 7
    out = tmp_path / "run"
    assert cli.main(["train", "--config", str(config), "--alpha", "0.5", "--seed", "3",
                     "--out", str(out), "--no-progress"]) == 0
    saved = RunConfig.from_dict(json.loads((out / "config.json").read_text()))
    assert saved.trainer.energy_l2 == 0.5 and saved.trainer.seed == 3 and saved.data_seed == 3
    assert saved.sampler == "mala" and saved.trainer.pool_size == 64


@pytest.mark.parametrize("text, message", [
    ("[trainer]\npool_sise = 10\n", "unknown key trainer.pool_sise; known keys: pool_size"),
    ("[trainer]\nlr_energy = 'fast'\n", "trainer.lr_energy must be a number; received 'fast'"),
    ("[trainer]\nn_particles = 0\n", "trainer.n_particles must be >= 1; received 0"),
    ("[trainer]\nenergy_l2 = -0.1\n", "trainer.energy_l2 must be >= 0.0; received -0.1"),
    ("[model]\nenergy_hidden = 64\n", "model.energy_hidden must be a list of ints; received 64"),
    ("sampler = 'hmc'\n", "sampler must be one of flowmc, ula, mala, nt; received 'hmc'"),
    ("target = 'three_modes'\n", "target must be one of two_modes"),
    ("epochs = 1.5\n", "epochs must be an int; received 1.5"),
    ("trainer = 3\n", "trainer must be a table"),
    ("[trainer]\nmcmc_steps = 7\n", r"mcmc_steps \(7\) must be a multiple of n_local \+ n_global"),
    ("iterations = [\n", "not valid TOML"),
])
def test_bad_configs_name_the_field_and_write_nothing(tmp_path, capsys, text, message):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    out = tmp_path / "never"
    assert cli.main(["train", "--config", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "bad.toml" in err
    assert re.search(message, err), err
    assert not out.exists()


def test_bad_flags_are_clear_errors(tmp_path, capsys):
    out = tmp_path / "never"
    assert cli.main(["train", "--set", "trainer.seed", "--out", str(out)]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert cli.main(["train", "--set", "optimizer.lr=1", "--out", str(out)]) == 2
    assert "unknown key optimizer.lr" in capsys.readouterr().err
    assert cli.main(["train", "--resume", "--out", str(out)]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    # argparse rejects an unknown target name with its choices, on one line
    assert cli.main(["train", "--target", "three_modes", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'three_modes'" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_demo_quick_prints_both_tables_and_writes_figures(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--quick", "--jobs", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "MALA" in text and "FlowMC (MALA + i-SIR)" in text
    assert "flowMC-EBM" in text and "ULA-PCD" in text
    for name in ["landscapes.png", "weights.png", "summary.json", "flowmc.pt", "ula.pt"]:
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["ebm"]) == {"flowmc", "ula"} and len(summary["sampler_table"]) == 2


def test_a_decay_without_a_length_runs_over_the_whole_run(tmp_path):
    out = tmp_path / "run"
    assert cli.main(["train", "--target", "two_modes", "--sampler", "ula", "--iterations", "10",
                     "--out", str(out), "--set", "trainer.lr_decay='linear'", *TINY]) == 0
    trainer = JointTrainer.load(out / "checkpoints" / "last.pt")
    assert trainer.config.lr_decay_iterations == 10
    # The last step ran at the rate of iteration 9 of 10: 0.01 x (0.1 + 0.9 x 1/10).
    assert trainer.opt_energy.param_groups[0]["lr"] == pytest.approx(0.01 * 0.19, rel=1e-12)


def test_a_method_registered_at_runtime_is_a_sampler_choice(tmp_path, capsys):
    import samplers
    from flowmc_ebm.training.methods import METHODS, Method, register

    def parse(*flags):
        return cli.build_parser().parse_args(["train", "--out", str(tmp_path), *flags])

    with pytest.raises(SystemExit):
        parse("--sampler", "hmc-cli")
    assert "invalid choice: 'hmc-cli'" in capsys.readouterr().err
    register(Method("hmc-cli", lambda log_prob, flow, c: samplers.HMC(log_prob, c.step_size)))
    try:
        assert parse("--sampler", "hmc-cli").sampler == "hmc-cli"  # read when the parser is built
    finally:
        del METHODS["hmc-cli"]
    with pytest.raises(SystemExit):
        parse("--sampler", "hmc-cli")

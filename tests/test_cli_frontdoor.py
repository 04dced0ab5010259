"""The CLI as a new user meets it: --version, defaults in --help, flag errors that name the flag,
every listed target usable, --out a directory, --device checked, data files read safely."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import flowmc_ebm
import samplers
from flowmc_ebm.cli import main
from flowmc_ebm.commands import load_model
from flowmc_ebm.data import Standardization, read_points
from flowmc_ebm.targets import TARGETS

QUICK = ["--kernel", "mala", "--chains", "4", "--steps", "3", "--warmup", "1", "--no-progress"]


def test_version_and_defaults_in_help(capsys):
    with pytest.raises(SystemExit):
        from flowmc_ebm.cli import build_parser
        build_parser().parse_args(["--version"])
    assert capsys.readouterr().out.strip() == f"flowmc-ebm {flowmc_ebm.__version__}"
    assert main(["sample", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for default in ("(default: 256)", "(default: 1000)", "(default: flowmc)", "(default: cpu)"):
        assert default in text


@pytest.mark.parametrize("flag, value, message", [
    ("--chains", "0", "argument --chains: must be an int >= 1; received 0"),
    ("--steps", "-3", "argument --steps: must be an int >= 1; received -3"),
    ("--step-size", "0", "argument --step-size: must be a finite number > 0; received 0"),
    ("--device", "nonsense", "--device nonsense: not a device"),
])
def test_bad_values_are_one_line_naming_the_flag(flag, value, message, tmp_path, capsys):
    assert main(["sample", "--target", "two_modes", flag, value, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("name", list(TARGETS))
def test_every_listed_target_samples_or_says_what_it_needs(name, tmp_path, capsys):
    extra = {"high_dim": ["--dim", "4"],
             "gaussian_mixture": ["--target-option", "means=[[-2.0, 0.0], [2.0, 0.0]]",
                                  "--target-option", "covariances=[[[1.0, 0], [0, 1.0]],"
                                                     " [[1.0, 0], [0, 1.0]]]",
                                  "--target-option", "weights=[0.5, 0.5]"]}.get(name, [])
    if extra:  # without its options: one line naming them
        assert main(["sample", "--target", name, *QUICK, "--out", str(tmp_path / "x")]) == 2
        assert "needs" in capsys.readouterr().err
    assert main(["sample", "--target", name, *extra, *QUICK, "--out", str(tmp_path / name)]) == 0
    assert samplers.Trace.load(tmp_path / name / "trace.npz").samples.shape[:2] == (4, 3)


def test_read_points_csv_columns_and_hostile_files(tmp_path):
    csv = tmp_path / "points.csv"
    csv.write_text("x,label,y\n1,a,2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2, column 2: 'a' is not a number"):
        read_points(csv)
    csv.write_text("x,k,y\n1,0,2\n3,1,4\n5,0,8\n", encoding="utf-8")
    x, names = read_points(csv, columns="y,x")
    assert names == ["y", "x"] and x.tolist() == [[2, 1], [4, 3], [8, 5]]
    with pytest.raises(ValueError, match="has no column 'z'; its columns are x, k, y"):
        read_points(csv, columns="x,z")
    with pytest.raises(ValueError, match="above the read limit"):
        read_points(csv, max_bytes=8)
    bad = tmp_path / "objects.npy"
    np.save(bad, np.array([{"a": 1}, {"b": 2}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="never unpickled"):
        read_points(bad)
    pickled = tmp_path / "pickle.npy"
    pickled.write_bytes(pickle.dumps(np.ones((3, 2))))
    with pytest.raises(ValueError, match="bad magic"):
        read_points(pickled)
    np.savez(tmp_path / "two.npz", a=np.ones((3, 2)), b=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="holds 2 arrays"):
        read_points(tmp_path / "two.npz")
    assert read_points(tmp_path / "two.npz", key="b")[0].shape == (3, 2)
    nan = tmp_path / "nan.npy"
    np.save(nan, np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="first at row 1"):
        read_points(nan)


def test_standardization_round_trips_through_its_state():
    x = np.random.default_rng(0).normal([5.0, -3.0], [2.0, 0.5], size=(100, 2))
    std = Standardization.fit(x, ["a", "b"], "file.csv")
    z = std.transform(x)
    assert np.allclose(z.mean(0), 0) and np.allclose(z.std(0), 1)
    state = {"callbacks": [None, {"type": "Standardization", "state": std.state_dict()}]}
    again = Standardization.from_checkpoint(state)
    assert again.names == ["a", "b"] and np.allclose(again.inverse_transform(z), x)
    assert Standardization.from_checkpoint({"callbacks": [None]}) is None


TINY_TRAIN = ["--iterations", "4", "--set", "trainer.pool_size=64", "--set",
              "trainer.batch_size=32", "--set", "model.energy_hidden=[16]", "--set",
              "model.flow_hidden=[16]", "--no-progress"]


def test_train_on_a_csv_then_sample_the_model_in_data_units_then_diagnose(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal([10, -5], 0.5, (100, 2)), rng.normal([14, -3], 0.5, (100, 2))])
    csv = tmp_path / "points.csv"
    csv.write_text("id,h,w\n" + "".join(f"{i},{a},{b}\n" for i, (a, b) in enumerate(x)))
    run = tmp_path / "run"
    assert main(["train", "--data", str(csv), "--columns", "h,w", *TINY_TRAIN,
                 "--out", str(run)]) == 0
    assert (run / "model.png").stat().st_size > 0
    summary = __import__("json").loads((run / "summary.json").read_text())
    assert summary["data"] == str(csv) and summary["config"]["n_data"] == 200
    # Data a user brings: the estimator's defaults (mixture tilt, global moves from it) ...
    trainer_config = summary["config"]["trainer"]
    assert (trainer_config["tilt"], trainer_config["flowmc"]["global_proposal"]) == ("gmm", "tilt")
    model = load_model(run)
    # ... and importance sampling proposes from that tilt, in data units (near (12, -4), not 0).
    assert model.proposal is not model.flow
    assert abs(float(model.proposal.sample((2000,)).mean(0)[0]) - 12.0) < 0.5
    chosen = tmp_path / "chosen"
    assert main(["train", "--data", str(csv), "--columns", "h,w", *TINY_TRAIN, "--iterations",
                 "1", "--set", "trainer.tilt=base", "--no-figures", "--out", str(chosen)]) == 0
    chosen_config = __import__("json").loads((chosen / "config.json").read_text())["trainer"]
    assert (chosen_config["tilt"], chosen_config["flowmc"]["global_proposal"]) == ("base", "flow")
    chosen_model = load_model(chosen)
    assert chosen_model.proposal is chosen_model.flow
    out = tmp_path / "s"
    assert main(["sample", "--model", str(run), "--kernel", "mala", "--chains", "16",
                 "--steps", "5", "--warmup", "2", "--no-progress", "--out", str(out)]) == 0
    draws = samplers.Trace.load(out / "trace.npz").samples.reshape(-1, 2).numpy()
    # The chains start from the run's pool mapped back to data units, near the data, not 0.
    assert abs(draws[:, 0].mean() - 12.0) < 3.0 and abs(draws[:, 1].mean() + 4.0) < 3.0
    # Parallel tempering on the model, from a reference twice the run's chains' spread (data units).
    assert main(["sample", "--model", str(run), "--kernel", "pt", "--chains", "8", "--steps", "20",
                 "--warmup", "10", "--no-progress", "--out", str(tmp_path / "pt")]) == 0
    tempered = samplers.Trace.load(tmp_path / "pt" / "trace.npz").samples.reshape(-1, 2).numpy()
    assert abs(tempered[:, 0].mean() - 12.0) < 3.0 and abs(tempered[:, 1].mean() + 4.0) < 3.0
    report = tmp_path / "report"
    assert main(["diagnose", str(out / "trace.npz"), "--n-modes", "2", "--model", str(run),
                 "--importance", "--n-importance", "2000", "--out", str(report)]) == 0
    summary = __import__("json").loads((report / "summary.json").read_text())
    assert summary["importance"]["n"] == 2000 and "agree" in summary["comparison"]
    assert main(["diagnose", str(out / "trace.npz"), "--importance"]) == 2
    assert "--importance needs --model RUN" in capsys.readouterr().err
    assert main(["train", "--data", str(csv), "--columns", "h,nope", *TINY_TRAIN,
                 "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "--data" in err and "has no column 'nope'" in err and len(err.strip().splitlines()) == 1


def test_train_on_a_5d_npy_writes_a_pair_plot(tmp_path):
    np.save(tmp_path / "p.npy", np.random.default_rng(0).normal(size=(64, 5)) * 3 + 1)
    assert main(["train", "--data", str(tmp_path / "p.npy"), *TINY_TRAIN,
                 "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "model.png").stat().st_size > 0


def test_one_version_for_both_packages_and_they_ship_type_hints():
    from importlib import metadata
    from pathlib import Path

    assert samplers.__version__ == flowmc_ebm.__version__ == metadata.version("flowmc-ebm")
    for package in (samplers, flowmc_ebm):
        assert (Path(package.__file__).parent / "py.typed").is_file()


def test_sample_with_parallel_tempering_finds_every_mode_and_diagnose_draws_its_figure(tmp_path):
    # Chains from N(0, 3² I) on the eight Gaussians: PT from the CLI's broad reference visits all
    # eight modes within 150 steps, every chain changing mode (MALA, run the same way, leaves a
    # mode unvisited and chains that never move: both checks fail for it).
    out, report = tmp_path / "pt", tmp_path / "report"
    assert main(["sample", "--target", "eight_gaussians", "--kernel", "pt", "--chains", "8",
                 "--steps", "100", "--warmup", "50", "--no-progress", "--out", str(out)]) == 0
    trace = samplers.Trace.load(out / "trace.npz")
    assert {"swap_accept", "round_trips"} <= set(trace.stats)
    assert main(["diagnose", str(out / "trace.npz"), "--target", "eight_gaussians",
                 "--out", str(report)]) == 0
    summary = __import__("json").loads((report / "summary.json").read_text())
    hopping = summary["hopping"]
    assert hopping["n_modes"] == 8 and hopping["unvisited"] == [], hopping["unvisited"]
    assert min(hopping["transitions"]) > 0 and not hopping["stuck"]  # every chain changes mode
    assert (report / "tempering.png").stat().st_size > 0

"""Each example in examples/ runs end to end from the command line on a tiny budget.

These check that the scripts run and write what examples/README.md says they write, not their
numbers (those are the examples' business, recorded in docs/). Each runs as its own process, as a
user would run it, with one torch thread.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_example(script: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "MPLBACKEND": "Agg", "CI": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{script} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


def test_two_modes(tmp_path):
    # The quick config's networks and data at an eighth of its pool and batches: the script's
    # whole path (training both samplers, quadrature, tables, figures) at a smoke test's cost.
    config = tmp_path / "tiny.toml"
    config.write_text((ROOT / "examples/configs/two_modes_quick.toml").read_text()
                      .replace("n_data = 16384", "n_data = 2048")
                      .replace("pool_size = 1024", "pool_size = 128")
                      .replace("batch_size = 256", "batch_size = 64")
                      .replace("n_negatives = 256", "n_negatives = 64"))
    out = tmp_path / "two_modes"
    run_example("two_modes.py", "--config", str(config),
                "--samplers", "flowmc", "ula", "--alphas", "0.1", "--seeds", "0",
                "--iterations", "50", "--jobs", "1", "--out", str(out))
    results = json.loads((out / "results.json").read_text())
    assert {row["sampler"] for row in results["table"]} == {"flowmc", "ula"}
    assert all(0.0 <= row["weight_mean"] <= 1.0 for row in results["table"])
    for name in ("table.md", "weights_alpha0.1.png", "landscapes_alpha0.1.png"):
        assert (out / name).stat().st_size > 0


def test_diagnose_stuck_chains(tmp_path):
    result = run_example("diagnose_stuck_chains.py", "--out", str(tmp_path), "--chains", "32",
                         "--steps", "60", "--warmup", "40")
    assert "mala" in result.stdout.lower() and "flowmc" in result.stdout.lower()
    for sampler in ("mala", "flowmc"):
        summary = json.loads((tmp_path / sampler / "summary.json").read_text())
        assert summary


# The determinant-free and SAEF experiment scripts (#7): slow, to keep `make test` inside its
# 10 minutes on CI's 2 cores (~15 s each, most of it the subprocess's imports); the library code
# they drive is unit-tested in test_ebflow.py, test_sm_ebm.py and test_sa_flow.py.
@pytest.mark.slow
@pytest.mark.parametrize("script, args", [
    ("ebflow_digits.py", ["--steps", "10", "--toy-steps", "10"]),
    ("sm_mode_blindness.py", ["--seeds", "1", "--flow-seeds", "1", "--sm-steps", "10",
                              "--ebflow-steps", "10", "--flow-steps", "10"]),
])
def test_determinant_free_examples(tmp_path, script, args):
    run_example(script, *args, "--out", str(tmp_path))
    assert (tmp_path / "results.json").stat().st_size > 0
    assert (tmp_path / "table.md").read_text().count("|") > 4


def test_digits_mixture(tmp_path):
    run_example("digits_mixture.py", "--iterations", "6", "--seeds", "0", "--pool", "64",
                "--negatives", "32", "--batch", "32", "--log-every", "3", "--eval-chains", "16",
                "--eval-steps", "2", "--out", str(tmp_path))
    results = json.loads((tmp_path / "results.json").read_text())
    assert {r["method"] for r in results["runs"]} == {"flowmc", "ula"}
    assert all(abs(sum(r["fresh"]["weights"]) - 1) < 1e-9 for r in results["runs"])
    assert (tmp_path / "samples_flowmc_seed0.png").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.parametrize("part, args", [
    ("toys", ["--toy-steps", "5", "--seeds", "1"]),
    ("digits", ["--digit-steps", "3", "--digit-configs", "1:es", "8:ml"]),
])
def test_saef_experiment(tmp_path, part, args):
    run_example("saef_experiment.py", "--part", part, *args, "--out", str(tmp_path))
    assert json.loads((tmp_path / f"results_{part}.json").read_text())
    assert (tmp_path / f"table_{part}.md").read_text().count("|") > 4


def test_real_data(tmp_path):
    run_example("real_data.py", "--datasets", "digits147", "--methods", "floor", "gmm", "flowmc",
                "--seeds", "0", "--copies", "1", "--pca", "4", "--iterations", "4", "--pool", "64",
                "--negatives", "32", "--batch", "32", "--log-every", "2", "--eval-chains", "16",
                "--eval-steps", "6", "--eval-burn", "2", "--eval-thin", "1", "--is-draws", "200",
                "--out", str(tmp_path))
    runs = json.loads((tmp_path / "results.json").read_text())["digits147"]
    assert set(runs) == {"floor", "gmm", "flowmc-gmm"}
    for rows in runs.values():
        assert abs(sum(rows[0]["samples"]["weights"]) - 1) < 1e-9
    assert len(runs["flowmc-gmm"][0]["importance"]["weights"]) == 3
    assert (tmp_path / "samples_digits147_flowmc-gmm_seed0.png").stat().st_size > 0

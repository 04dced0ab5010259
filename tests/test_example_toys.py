"""Smoke test of examples/toys_2d.py: a tiny grid runs end to end and writes its tables."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "toys_2d.py"


@pytest.fixture(scope="module")
def toys():
    spec = importlib.util.spec_from_file_location("toys_2d", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY = ["--iterations", "6", "--evals", "2", "--eval-chains", "32",
        "--set", "trainer.log_every=2", "--set", "trainer.eval_every=0", "--set", "n_data=256",
        "--set", "trainer.pool_size=32", "--set", "trainer.batch_size=16",
        "--set", "trainer.n_negatives=16"]


def test_eval_iterations_lie_in_the_last_quarter_on_the_callback_grid(toys):
    assert toys.eval_iterations(800, 25, 4) == [650, 700, 750, 800]
    assert toys.eval_iterations(6, 2, 2) == [6]


def test_tiny_grid_writes_results_tables_and_figures(toys, tmp_path):
    out = tmp_path / "toys"
    argv = ["--targets", "four_modes", "--samplers", "flowmc", "nt", "--seeds", "0",
            "--out", str(out), "--figures", str(tmp_path / "fig"), *TINY]
    assert toys.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert {r["sampler"] for r in results["table"]} == {"flowmc", "nt"}
    for run in results["runs"]:
        assert abs(sum(run["w_ebm"]) - 1) < 1e-6
        for key in ("mse_init_ebm", "mse_neg_ebm", "mse_ebm_true", "log_density_error"):
            assert math.isfinite(run[key]) and run[key] >= 0
    flowmc = next(r for r in results["runs"] if r["sampler"] == "flowmc")
    assert "mse_flow_ebm" in flowmc
    table = (out / "table.md").read_text()
    assert "(a) init vs EBM" in table and "5.19e-04" in table
    assert (tmp_path / "fig" / "landscapes_four_modes.png").exists()
    # A second call reuses the finished runs instead of training again; the recheck re-evaluates
    # the final models with more chains and caches it per run.
    assert toys.main([*argv, "--recheck-chains", "64"]) == 0
    recheck = (out / "recheck.md").read_text()
    assert recheck.count("| four_modes |") == 2 and "floor (b)" in recheck
    record = json.loads((out / "runs" / "four_modes" / "flowmc_alpha0_seed0"
                         / "recheck_64.json").read_text())
    assert record["iteration"] == 6 and abs(sum(record["w_neg"]) - 1) < 1e-6
    final = next(r for r in results["runs"] if r["sampler"] == "flowmc")
    assert final["mse_ebm_true_final"] >= 0  # the last evaluation alone, beside the mean

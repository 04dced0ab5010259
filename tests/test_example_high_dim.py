"""Smoke test of examples/high_dim.py: a tiny grid runs end to end and writes its outputs.

The experiment itself (3 dims x 3 methods x 3 seeds) is in docs/results_high_dim.md; here only
that every method trains, is evaluated (R̂, ESS/s, IS mode weights) and aggregated, in seconds.
"""

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_example():
    spec = importlib.util.spec_from_file_location("high_dim_example", ROOT / "examples" / "high_dim.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_high_dim_example_tiny_grid(tmp_path):
    example = _load_example()
    config = tmp_path / "tiny.toml"
    config.write_text(
        'target = "high_dim"\nn_data = 256\niterations = 6\ncheckpoint_every = 3\n'
        "[target_options]\ndim = 4\n"
        "[model]\nenergy_hidden = [16]\nflow_transforms = 2\nflow_hidden = [16]\nbase_scale = 2.0\n"
        "[trainer]\npool_size = 16\nbatch_size = 16\nn_negatives = 16\nmcmc_steps = 5\n"
        "n_particles = 4\nstep_size = 0.05\neval_every = 0\nlog_every = 1\n",
        encoding="utf-8")
    out = tmp_path / "out"
    argv = ["--config", str(config), "--dims", "4", "--seeds", "0", "--samplers", "flowmc", "nt",
            "ula", "--unequal-dims", "4", "--unequal-samplers", "flowmc", "--chains", "16",
            "--eval-iterations", "6", "--is-samples", "256", "--out", str(out),
            "--figures-dir", str(tmp_path / "fig")]
    assert example.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == 4
    assert {(r["variant"], r["sampler"]) for r in results["table"]} == {
        ("equal", "flowmc"), ("equal", "nt"), ("equal", "ula"), ("unequal", "flowmc")}
    for run in results["runs"]:
        assert run["max_rhat"] is not None and math.isfinite(run["max_rhat"])
        assert abs(sum(run["is_weights"]) - 1) < 1e-6
        assert run["eval_draws"] == 6 and run["n_chains"] == 16
    unequal = next(r for r in results["runs"] if r["variant"] == "unequal")
    assert unequal["truth"] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert "| flowMC-EBM | 4 |" in (out / "table.md").read_text()
    assert (tmp_path / "fig" / "rhat_vs_dim.png").exists()
    assert (tmp_path / "fig" / "mode_weights.png").exists()
    # Finished runs are reused, not retrained.
    assert example.main(argv) == 0

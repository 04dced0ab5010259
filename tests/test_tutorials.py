"""Every python block of the tutorials under docs/tutorials/ runs as written, in a temp dir, and
leaves what the page says it does."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "docs" / "tutorials"


def _blocks(name: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (TUTORIALS / name).read_text(encoding="utf-8"), flags=re.S)


@pytest.mark.slow  # ~25 s on 2 loaded cores
def test_sample_a_density_runs_and_recovers_the_weights(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CI", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict = {"__name__": "tutorial"}
    for i, code in enumerate(_blocks("sample_a_density.md")):
        exec(compile(code, f"sample_a_density.md block {i + 1}", "exec"), namespace)
    occupancy = namespace["occupancy"]
    w, se = np.asarray(occupancy.weights, float), np.asarray(occupancy.se, float)
    truth = namespace["weights"].numpy().astype(float)
    # What the page claims: occupancy within 4 SE of the truth, every chain visited both modes,
    # the two weight estimators agree, the report flags nothing, and its figures exist.
    assert (np.abs(w - truth) <= 4 * se).all(), (w, se)
    rep = namespace["rep"]
    assert (np.asarray(rep.hopping.occupancy) > 0).all(), "a chain never visited a mode"
    assert rep.comparison.agree and not rep.warnings, (rep.comparison, rep.warnings)
    for png in ("mode_weights.png", "traces.png", "samples.png"):
        assert (tmp_path / "report" / png).stat().st_size > 0
    assert json.loads((tmp_path / "report" / "summary.json").read_text())


def _commands(name: str) -> list[list[str]]:
    """The ``flowmc-ebm ...`` lines of the page's bash blocks, as argument lists."""
    import shlex

    blocks = re.findall(r"```bash\n(.*?)```", (TUTORIALS / name).read_text(encoding="utf-8"),
                        flags=re.S)
    return [shlex.split(line)[1:] for block in blocks for line in block.splitlines()
            if line.startswith("flowmc-ebm ")]


@pytest.mark.slow  # ~3 min on 2 loaded cores: a 150-iteration training run and two samplings
def test_read_a_report_runs_and_reads_as_the_page_says(tmp_path, monkeypatch, capsys):
    from flowmc_ebm.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    commands = _commands("read_a_report.md")
    assert [c[0] for c in commands] == ["train", "sample", "diagnose", "sample", "diagnose"]
    for argv in commands:
        assert main(argv) == 0, argv
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    # What the page reads off each output. Training: a model with both modes, its weight of the
    # top-right mode within 0.15 of 2/3 (it swings by +-0.1 between evaluations).
    assert abs(summary["weight_mean"] - 2 / 3) < 0.15, summary["weight_mean"]
    for png in ("landscape.png", "weights.png"):
        assert (tmp_path / "run" / png).stat().st_size > 0
    # flowMC on the model: mixed, every chain hops, no suspects, no warnings, the two weight
    # estimators agree, and importance sampling's k-hat is below 0.7.
    good = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert good["metrics"]["max_rhat"] < 1.01 and not good["warnings"], good["warnings"]
    assert good["comparison"]["agree"] and not good["suspect_chains"]
    assert good["importance"]["pareto_k"] < 0.7
    assert sorted(good["figures"]) == ["mode_weights", "occupancy", "samples", "suspect_chains",
                                       "traces"]
    # MALA alone: stuck chains, and the report raises both alarms the page shows.
    bad = json.loads((tmp_path / "dm" / "summary.json").read_text())
    assert any(w.startswith("STUCK") for w in bad["warnings"]), bad["warnings"]
    assert any("have not mixed" in w for w in bad["warnings"]), bad["warnings"]
    assert bad["metrics"]["max_rhat"] > 1.1
    # log Z: importance sampling within 4 SE (+0.005 for the grid) of quadrature, k-hat < 0.7.
    namespace: dict = {"__name__": "tutorial"}
    for i, code in enumerate(_blocks("read_a_report.md")):
        exec(compile(code, f"read_a_report.md block {i + 1}", "exec"), namespace)
    est, grid_log_z = namespace["est"], namespace["grid_log_z"]
    assert est.pareto_k < 0.7 and namespace["grid"].edge_mass < 1e-6
    assert abs(est.log_z - grid_log_z) < 4 * est.se + 0.005, (est.log_z, est.se, grid_log_z)

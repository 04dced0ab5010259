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

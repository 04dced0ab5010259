"""Every python snippet of README.md runs as written, top to bottom in one namespace (the README
is read in order: later snippets use the `log_prob` and `trace` of the first)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_the_readme_has_snippets():
    assert len(SNIPPETS) >= 6


@pytest.mark.slow
def test_every_readme_snippet_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CI", "1")  # no progress bars
    namespace: dict = {"__name__": "readme"}
    for i, code in enumerate(SNIPPETS):
        try:
            exec(compile(code, f"README.md snippet {i + 1}", "exec"), namespace)
        except Exception as err:  # noqa: BLE001 - re-raised with the snippet named
            raise AssertionError(f"README snippet {i + 1} fails: {type(err).__name__}: {err}\n"
                                 f"{code}") from err
    # The snippets that sample leave a trace of finite draws (the last one is checked).
    trace = namespace["trace"]
    assert trace.samples.ndim == 3 and bool(torch.isfinite(trace.samples).all())

"""`flowmc-ebm sample` writes a trace that `flowmc-ebm diagnose` reads; user errors are one line."""

import json

import pytest

import samplers
from flowmc_ebm.cli import main


def test_sample_then_diagnose(tmp_path, capsys):
    trace_path = tmp_path / "t.npz"
    rc = main(["sample", "--target", "two_modes", "--kernel", "mala", "--chains", "8",
               "--steps", "40", "--warmup", "20", "--out", str(trace_path), "--no-progress"])
    assert rc == 0
    trace = samplers.Trace.load(trace_path)
    assert trace.samples.shape == (8, 40, 2)
    rc = main(["diagnose", str(trace_path), "--target", "two_modes", "--out", str(tmp_path / "r")])
    assert rc == 0
    assert "R-hat" in capsys.readouterr().out
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["metrics"]["max_rhat"] > 0
    assert (tmp_path / "r" / "samples.png").stat().st_size > 0


@pytest.mark.parametrize("argv, message", [
    (["diagnose", "missing.npz"], "no trace file at missing.npz"),
    (["sample", "--target", "nope", "--out", "t.npz"], "unknown target 'nope'"),
    (["sample", "--target", "two_modes", "--out", "no/such/dir/t.npz"], "does not exist"),
])
def test_user_errors_are_one_clear_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_diagnose_refuses_a_corrupt_trace(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    assert main(["diagnose", str(bad)]) == 2
    assert f"cannot read trace {bad}" in capsys.readouterr().err


def test_bad_flag_exits_nonzero(capsys):
    assert main(["sample", "--target", "two_modes", "--chains", "many", "--out", "t.npz"]) == 2
    err = capsys.readouterr().err
    assert "argument --chains: invalid int value: 'many'" in err and len(err.splitlines()) == 1

"""The sampling benchmark (bench/sampling_peers.py) runs end to end on a tiny budget.

Our adapters (FlowMC, MALA) and numpyro's NUTS are in the main venv and always run; the optional
peers (flowMC in JAX, torchebm) live in the benchmark's own venv and are skipped, with the reason,
where they are not importable. Nothing here checks the samplers' quality: the benchmark's numbers
are its own business; this checks that its budget accounting and reporting hold.
"""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from bench import sampling_peers
from bench.peers import flowmc_jax, numpyro_nuts, ours, torchebm_langevin
from bench.sampling_peers import Method, Mode, make_problems, run_problem

TINY = Mode("tiny", (4,), 4, 400)


@pytest.fixture(autouse=True)
def _one_thread():
    # The benchmark runs torch on one thread: small batched ops on a busy 2-core machine run
    # several times slower on two (threads wait for each other).
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="module")
def problem():
    return make_problems(TINY)[1]  # the 4-mode mixture in d = 4


@pytest.fixture(scope="module")
def runs(problem):
    torch.set_num_threads(1)
    return {"flowmc": ours.run_flowmc(problem),
            "strict": ours.run_flowmc(problem, ours.FlowMCConfig(strict=True)),
            "mala": ours.run_mala(problem)}


def _check_scored(row, problem):
    assert row["chains"] == problem.chains and row["draws"] >= 4
    assert row["grad_evals_per_chain"] <= problem.budget
    for key in ("mode_weight_error", "ess_coord_per_s", "max_rhat", "wall_s"):
        assert math.isfinite(row[key]), key
    assert 0 <= row["mode_weight_error"] <= 1


def test_every_method_starts_from_the_same_points():
    a, b = make_problems(TINY)[1], make_problems(TINY)[1]
    assert a.x0.equal(b.x0) and a.x0.shape == (TINY.chains, 4)


def test_our_adapters_spend_at_most_the_budget(problem, runs):
    flow, strict, mala = runs["flowmc"], runs["strict"], runs["mala"]
    # A FlowMC cycle: n_local MALA gradients + 1 at the global move's destination; i-SIR's
    # particles are gradient-free evaluations, counted apart.
    config = ours.FlowMCConfig()
    cycles = flow.config["warmup_cycles"] + flow.config["cycles"]
    assert flow.grad_evals == 1 + cycles * (config.n_local + 1)
    assert flow.logprob_evals == cycles * config.n_particles
    assert strict.grad_evals + strict.logprob_evals <= problem.budget
    assert mala.grad_evals == problem.budget and mala.logprob_evals == 0
    for run in (flow, strict, mala):
        assert run.samples.shape[::2] == (problem.chains, problem.dim)
        _check_scored(sampling_peers.score(run, problem.target), problem)


@pytest.mark.slow  # ~20 s, nearly all of it JAX compiling NUTS: the budget cut is a bench concern
def test_nuts_is_cut_at_the_budget(problem):
    run = numpyro_nuts.run_nuts(problem)
    assert not run.notes, run.notes  # the warm-up (a chunk of 25 draws) left room for draws
    assert problem.budget - 4 * 20 < run.grad_evals <= problem.budget  # cut within a few draws
    _check_scored(sampling_peers.score(run, problem.target), problem)


def test_report_has_ratios_skips_and_failures(problem, runs):
    def broken(p, done):
        raise RuntimeError("no such sampler")

    methods = (Method("flowmc", sampling_peers.OURS, lambda: None, lambda p, done: runs["flowmc"]),
               Method("mala", "MALA (ours)", lambda: None, lambda p, done: runs["mala"]),
               Method("absent", "absent", lambda: "not importable: absent", broken),
               Method("broken", "broken", lambda: None, broken))
    result = run_problem(problem, methods, log=lambda line: None)
    rows = {r["method"]: r for r in result["rows"]}
    assert rows[sampling_peers.OURS]["ratio_to_ours"]["wall_s"] == 1.0
    assert rows["MALA (ours)"]["ratio_to_ours"]["mode_weight_error"] > 0
    assert result["skipped"] == [{"method": "absent", "reason": "not importable: absent"}]
    assert result["failed"][0]["error"] == "RuntimeError: no such sampler"
    checks = sampling_peers.targets_met([result])[problem.name]
    assert set(checks["seed 0"]) == {"error_5x_smaller_than_MALA (ours)"}
    again = run_problem(dataclasses.replace(problem, seed=1), methods, log=lambda line: None)
    means = sampling_peers.targets_met([result, again])[problem.name]["mean over seeds"]
    assert means["error_5x_smaller_than_MALA (ours)"]["ratio"] > 0
    json.dumps(sampling_peers.json_safe(result), allow_nan=False)
    assert "| absent | skipped: not importable: absent |" in sampling_peers.markdown([result])


def test_a_mode_never_visited_has_no_indicator_ess(problem, runs):
    run = dataclasses.replace(runs["mala"])
    run.samples = np.broadcast_to(problem.target.means[0].numpy(), run.samples.shape).copy()
    row = sampling_peers.score(run, problem.target)
    assert not row["all_modes_visited"] and math.isnan(row["ess_mode"])


@pytest.mark.parametrize("peer", [
    pytest.param(flowmc_jax, marks=pytest.mark.slow, id="flowMC"),  # ~30 s of JIT compilation
    pytest.param(torchebm_langevin, id="torchebm"),
])
def test_optional_peer_runs_where_installed(peer, problem):
    reason = peer.unavailable()
    if reason is not None:
        pytest.skip(reason)
    if peer is flowmc_jax:
        run = flowmc_jax.run_flowmc_jax(problem)
    else:
        run = torchebm_langevin.run_langevin(problem, mala_step_size=0.5)
    _check_scored(sampling_peers.score(run, problem.target), problem)


def test_ebflow_step_benchmark_times_every_objective_on_the_given_device():
    from bench import ebflow_step

    result = ebflow_step.bench_dim(8, batch_size=4, rounds=2, steps=1, device="cpu")
    assert set(result["seconds_per_step"]) == set(ebflow_step.OBJECTIVES)
    assert all(len(times) == 2 and min(times) > 0 for times in result["all_round_times"].values())
    assert set(result["speedup_over_ml"]) == {"ssm", "dsm", "fdssm"}
    # Timed against the same batch on the same device: the ratio is ML's time over each one's.
    ml = result["seconds_per_step"]["ml"]
    for objective, ratio in result["speedup_over_ml"].items():
        assert math.isclose(ratio, ml / result["seconds_per_step"][objective])


def test_flow_cost_benchmark_times_every_flow_and_call_with_ratios_from_one_run():
    from bench import flow_cost

    # spline_compiled is left out: its Inductor compilation costs minutes on 2 cores, and the
    # compiled spline's agreement with the eager one is tests/test_spline.py's (slow) job.
    flows = tuple(f for f in flow_cost.FLOWS if f != "spline_compiled")
    assert set(flows) == {"realnvp", "zuko_nsf", "spline"}
    case = flow_cost.bench_case(4, 16, rounds=1, flows=flows)
    assert case["rounds"] == 1
    for name in flows:
        assert set(case["seconds"][name]) == set(flow_cost.CALLS)
        assert all(t > 0 for t in case["seconds"][name].values())
    assert set(case["ratio_to_realnvp"]) == {"zuko_nsf", "spline"}
    for name, ratios in case["ratio_to_realnvp"].items():
        for call, ratio in ratios.items():
            assert math.isclose(ratio, case["seconds"][name][call] / case["seconds"]["realnvp"][call])


# --- bench/tempering_peers.py (issue #12) -------------------------------------------------------

def _tempering():
    from bench import tempering_peers
    return tempering_peers, tempering_peers.suite_module()


def test_tempering_bench_counts_every_point_and_shares_the_suites_targets():
    tp, suite = _tempering()
    target = suite.targets()[1]  # three_4d
    counted = tp.Counted(target)
    x = torch.randn(5, 3, target.dim)
    assert counted(x).equal(target(x)) and counted.n == 15
    counted(x[0])
    assert counted.n == 18


def test_tempering_bench_jax_density_is_the_suites():
    pytest.importorskip("jax", reason="an install without JAX (a declared dependency, for numpyro "
                                      "models) cannot check the peers' JAX density")
    import jax
    import jax.numpy as jnp

    from bench.peers.blackjax_smc import jax_diag_mixture

    _, suite = _tempering()
    target = suite.targets()[2]  # eight_6d: unequal widths and weights
    x = 4 * torch.randn(64, target.dim, generator=torch.Generator().manual_seed(0))
    ours_lp = target(x).numpy()
    theirs = np.asarray(jax.vmap(jax_diag_mixture(target))(jnp.asarray(x.numpy())))
    np.testing.assert_allclose(theirs, ours_lp, rtol=1e-5, atol=1e-4)


def test_tempering_bench_ratios_and_goals():
    tp, _ = _tempering()

    def row(method, err, ess, log_z=None):
        return {"method": method, "mode_weight_error": err, "ess_mode_per_s": ess,
                "log_z": log_z, "log_z_error": None if log_z is None else abs(log_z),
                "log_z_se": None, "wall_s": 1.0, "target_evals": 100.0}

    runs = [{"target": "t", "rows": [row(tp.PT, 0.01, 100.0, 0.001), row(tp.SMC, 0.02, 40.0, -0.1),
                                     row(tp.MALA, 0.3, math.nan)]},
            {"target": "t", "rows": [row(tp.PT, 0.02, 100.0, 0.002), row(tp.SMC, 0.05, 60.0, 0.2),
                                     row(tp.MALA, 0.01, 500.0)]}]
    (s,) = tp.summary(runs)
    # Worst over seeds: PT 0.02, SMC 0.05, MALA 0.3 -> SMC is the best peer on error.
    assert s["best_error_peer"] == tp.SMC and s["error_ratio"] == pytest.approx(0.4)
    assert s["error_goal_met"]
    # MALA's mean ESS/s is NaN (a mode unvisited on one seed): the best ESS peer is SMC (50/s).
    assert s["best_ess_peer"] == tp.SMC and s["ess_ratio"] == pytest.approx(2.0)
    assert s["ess_goal_met"]
    assert s["log_z_ratio"] == pytest.approx(0.01)
    runs[1]["rows"][0]["mode_weight_error"] = 0.06  # PT now worse than SMC
    runs[1]["rows"][0]["ess_mode_per_s"] = 99.0  # and under 2x
    (s,) = tp.summary(runs)
    assert not s["error_goal_met"] and not s["ess_goal_met"]


@pytest.mark.slow  # two JIT compilations: ~60 s on the loaded 2-core machine
def test_tempering_bench_smc_adapter_spends_about_the_budget():
    pytest.importorskip("blackjax", reason="blackjax is only in the bench venv (.venv-bench, "
                                           "make bench), where its SMC peer runs")
    from bench.peers import blackjax_smc

    _, suite = _tempering()
    target = suite.targets()[0]
    config = blackjax_smc.SMCConfig(num_mcmc_steps=2, pilot_particles=64)
    run, extra = blackjax_smc.run_smc(target, 30_000, 0, config=config)
    assert run.samples.shape == (1, extra["particles"], target.dim)
    assert extra["particle_weights"].sum() == pytest.approx(1.0)
    assert math.isfinite(extra["log_z"]) and extra["smc_steps"] >= 1
    assert extra["pilot_evals"] < run.logprob_evals <= 1.5 * 30_000

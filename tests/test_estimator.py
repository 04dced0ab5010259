"""`FlowMCEBM`, the scikit-learn front door: conventions, and its log Z against exact answers."""

from __future__ import annotations

import math
import pickle
import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from flowmc_ebm import FlowMCEBM
from flowmc_ebm.diagnostics import grid_log_density, grid_quadrature
from flowmc_ebm.estimator import UnreliableNormalizerWarning
from flowmc_ebm.targets import TwoModes

TINY = {"n_iterations": 3, "pool_size": 32, "n_negatives": 16, "batch_size": 16,
        "energy_hidden": (16,), "flow_hidden": (16,), "flow_transforms": 2, "n_importance": 512,
        "sample_steps": 2}


class QuadraticEnergy(nn.Module):
    """``E(x) = ½ ‖L x‖²``: with the N(0, s² I) tilt, ``Z = det(I + s² LᵀL)^(-1/2)`` exactly."""

    def __init__(self, matrix: torch.Tensor) -> None:
        super().__init__()
        self.L = nn.Parameter(matrix.clone())
        self.dim = matrix.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (x @ self.L.T).square().sum(-1)

    def exact_log_z(self, base_scale: float) -> float:
        L = self.L.detach().double()
        eye = torch.eye(self.dim, dtype=torch.float64)
        return float(-0.5 * torch.logdet(eye + base_scale**2 * L.T @ L))


@pytest.fixture(scope="module")
def two_modes_fit():
    """A flowMC-EBM fitted briefly on TwoModes data: a non-trivial bimodal 2-D model."""
    target = TwoModes()
    data = target.sample(1024, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnreliableNormalizerWarning)
        ebm = FlowMCEBM(n_iterations=60, pool_size=256, batch_size=128, lr_energy=0.05,
                        energy_hidden=(32, 32), flow_hidden=(32, 32),
                        n_importance=40_000).fit(data)
    return target, data, ebm


def test_fit_returns_self_with_learned_attributes_and_answers_in_the_input_kind():
    X = np.random.default_rng(0).normal(size=(64, 3))
    ebm = FlowMCEBM(**TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreliableNormalizerWarning)
        assert ebm.fit(X) is ebm
        for name in ("energy_", "flow_", "history_", "log_normalizer_", "log_normalizer_se_",
                     "pareto_k_", "trainer_"):
            assert hasattr(ebm, name), name
        assert ebm.n_features_in_ == 3 and ebm.n_iterations_ == 3
        assert len(ebm.history_["loss_energy"]) == 3
        scores = ebm.score_samples(X)
        assert isinstance(scores, np.ndarray) and scores.shape == (64,) and np.isfinite(scores).all()
        assert ebm.score(X) == pytest.approx(scores.mean())
        assert ebm.sample(5).shape == (5, 3)

        t = torch.as_tensor(X, dtype=torch.float32)
        fitted = FlowMCEBM(**TINY).fit(t)
        assert isinstance(fitted.sample(4), torch.Tensor)
        out = fitted.score_samples(t)
        assert isinstance(out, torch.Tensor)
        # Same data and seed as a tensor or an array: the same model.
        np.testing.assert_allclose(out.numpy(), scores, rtol=1e-6, atol=1e-6)


def test_clone_get_params_set_params_and_pipeline_after_scaler():
    ebm = FlowMCEBM(method="ula", **TINY)
    params = ebm.get_params()
    assert params["method"] == "ula" and params["n_iterations"] == 3
    copy = clone(ebm)
    assert copy is not ebm and copy.get_params() == params
    copy.set_params(lr_energy=0.003)
    assert copy.lr_energy == 0.003 and ebm.lr_energy == 0.01

    X = np.random.default_rng(1).normal(10.0, 5.0, size=(64, 2))
    pipe = make_pipeline(StandardScaler(), FlowMCEBM(**TINY))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreliableNormalizerWarning)
        pipe.fit(X)
    assert pipe.score_samples(X).shape == (64,)
    # The estimator saw standardized rows, so its pool sits near the origin, not near 10.
    assert abs(float(pipe[-1].trainer_.pool_.mean())) < 2.0


def test_bad_inputs_name_what_was_expected():
    ebm = FlowMCEBM(**TINY)
    X = np.random.default_rng(0).normal(size=(32, 2))
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ebm.fit(bad)
    with pytest.raises(ValueError, match="method must be one of"):
        FlowMCEBM(method="hmc", **TINY).fit(X)
    with pytest.raises(ValueError, match="trainer_options may not set pool_size"):
        FlowMCEBM(trainer_options={"pool_size": 4}, **TINY).fit(X)
    with pytest.raises(ValueError, match="unknown trainer_options"):
        FlowMCEBM(trainer_options={"pool_sise": 4}, **TINY).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreliableNormalizerWarning)
        ebm.fit(X)
    with pytest.raises(ValueError, match="3 features.*expecting 2"):
        ebm.score_samples(np.zeros((4, 3)))


def test_log_z_matches_grid_quadrature_within_002_nats_in_2d(two_modes_fit):
    _, _, ebm = two_modes_fit
    grid = grid_log_density(ebm.trainer_.log_prob, 9.0, 400)
    assert grid.edge_mass < 1e-6  # the box holds the model's mass
    # The grid normalizes log p~; log Z is what it subtracted, read at the densest cell.
    k = int(np.argmax(grid.log_density))
    point = torch.as_tensor(grid.points[k:k + 1], dtype=torch.float32)
    with torch.no_grad():
        grid_log_z = float(ebm.trainer_.log_prob(point)) - float(grid.log_density.ravel()[k])
    assert ebm.log_normalizer_se_ < 0.007  # so 0.02 nats is about 3 SE or more: a real test
    assert ebm.pareto_k_ < 0.7
    assert abs(ebm.log_normalizer_ - grid_log_z) < 0.02
    # score_samples is that normalized density: it integrates to 1 on the grid.
    mass = np.exp(ebm.score_samples(grid.points.astype(np.float32))).sum() * grid.cell_area
    assert abs(math.log(mass)) < 0.02


def test_mode_weights_by_importance_agree_with_quadrature(two_modes_fit):
    target, _, ebm = two_modes_fit
    truth = grid_quadrature(ebm.trainer_.log_prob, target.assign, 9.0, 300).weights
    est = ebm.mode_weights(target.assign)
    assert est.weights.shape == (2,) and est.pareto_k < 0.7
    # 4 SE: a two-sided 6e-5 chance per mode of a false failure.
    assert np.all(np.abs(est.weights - truth) < 4 * est.se + 1e-3)
    chains = ebm.mode_weights(target.assign, method="chains", n_chains=64, n_steps=5)
    assert chains.weights.shape == (2,) and chains.weights.sum() == pytest.approx(1.0)


def test_log_z_matches_the_exact_z_of_a_gaussian_energy_in_10d():
    dim, scale = 10, 1.5
    g = torch.Generator().manual_seed(0)
    # Narrower than the tilt in three directions, as wide in the others.
    L = torch.zeros(dim, dim)
    L[:3] = 2.0 * torch.linalg.qr(torch.randn(dim, dim, generator=g))[0][:3]
    energy = QuadraticEnergy(L)
    data = torch.randn(512, dim, generator=g)
    # tilt="base": the exact Z above is that of the N(0, s² I) tilt (the default fits a mixture).
    ebm = FlowMCEBM(energy=energy, base_scale=scale, n_iterations=30, pool_size=256,
                    batch_size=128, flow_hidden=(32, 32), n_importance=40_000, tilt="base")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnreliableNormalizerWarning)
        ebm.fit(data)
    exact = ebm.energy_.exact_log_z(scale)  # of the trained parameters
    assert energy.L.data.equal(L)  # fit trained a copy, not the module passed in
    assert ebm.log_normalizer_se_ < 0.02
    assert abs(ebm.log_normalizer_ - exact) < 4 * ebm.log_normalizer_se_


class WideEnergy(nn.Module):
    """``E(x) = -½ a ‖x‖²``: with the N(0, I) tilt the model is N(0, I / (1 - a))."""

    def __init__(self, a: float, dim: int) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -0.5 * self.a * x.square().sum(-1)


def test_warns_when_the_flow_is_too_light_tailed_for_the_model():
    # The model N(0, I / 0.15) is far wider than the barely trained flow (about N(0, I)):
    # importance weights exp(0.425 ‖x‖²) have a Pareto tail of index about 0.85.
    dim = 4
    ebm = FlowMCEBM(energy=WideEnergy(0.85, dim), **{**TINY, "n_iterations": 1,
                                                     "lr_energy": 1e-8, "n_importance": 20_000})
    with pytest.warns(UnreliableNormalizerWarning, match="Pareto k-hat"):
        ebm.fit(torch.randn(64, dim))
    assert ebm.pareto_k_ > 0.7


def test_pickle_round_trip_keeps_the_model():
    X = np.random.default_rng(0).normal(size=(64, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreliableNormalizerWarning)
        ebm = FlowMCEBM(**TINY).fit(X)
    again = pickle.loads(pickle.dumps(ebm))
    np.testing.assert_array_equal(again.score_samples(X), ebm.score_samples(X))
    np.testing.assert_array_equal(again.sample(3), ebm.sample(3))


def test_scikit_learn_estimator_checks():
    from sklearn.utils.estimator_checks import check_estimator

    # All 41 checks of scikit-learn 1.9 apply to a density estimator and pass, but
    # check_array_api_input, which scikit-learn itself skips unless SCIPY_ARRAY_API is set (the
    # estimator takes NumPy or torch input, not the array API). One iteration of one flowMC cycle
    # per fit keeps the ~40 fits to seconds.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreliableNormalizerWarning)
        results = check_estimator(FlowMCEBM(**{**TINY, "n_iterations": 1, "mcmc_steps": 5}),
                                  on_fail=None, on_skip=None)
    failed = {r["check_name"]: r["exception"] for r in results if r["status"] == "failed"}
    assert not failed
    assert {r["check_name"] for r in results if r["status"] == "skipped"} <= {
        "check_array_api_input"}
    assert len(results) >= 40


def _far_clusters(n: int = 256) -> np.ndarray:
    """Two clusters around (10, -5) and (14, -3), 1 : 2: far from the flow's N(0, I) base."""
    rng = np.random.default_rng(3)
    first = rng.random(n) < 1 / 3
    centers = np.where(first[:, None], [10.0, -5.0], [14.0, -3.0])
    return centers + 0.6 * rng.normal(size=(n, 2))


def test_tilt_is_a_validated_parameter_passed_to_the_trainer_and_kept_by_clone_and_pickle():
    ebm = FlowMCEBM(tilt="gmm", **TINY)
    assert ebm.get_params()["tilt"] == "gmm" and clone(ebm).tilt == "gmm"
    assert FlowMCEBM(**TINY).get_params()["tilt"] == "auto"  # stored as given, resolved in fit
    assert clone(ebm).set_params(tilt="gaussian").tilt == "gaussian"
    X = _far_clusters()
    with pytest.raises(ValueError, match="tilt must be one of auto, base, gaussian, gmm, flow; "
                                         "received 'mixture'"):
        FlowMCEBM(tilt="mixture", **TINY).fit(X)
    with pytest.raises(ValueError, match="tilt='gmm' with method='nt'"):
        FlowMCEBM(method="nt", tilt="gmm", **TINY).fit(X)
    with pytest.raises(ValueError, match="trainer_options may not set tilt"):
        FlowMCEBM(trainer_options={"tilt": "gmm"}, **TINY).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreliableNormalizerWarning)  # 512 draws, 3 iterations
        ebm.fit(X)
    tilt = ebm.trainer_.tilt
    assert ebm.trainer_.config.tilt == "gmm"
    # With a tilt, flowMC's global moves propose from it, and importance sampling uses it
    # (defended by the flow's base); trainer_options can restore the flow proposal.
    assert ebm.trainer_.config.global_proposal == "tilt" and ebm.trainer_.kernel.flow is tilt
    assert ebm._proposal()[0] is tilt
    flow_prop = FlowMCEBM(tilt="gmm", trainer_options={"global_proposal": "flow"}, **TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreliableNormalizerWarning)
        flow_prop.fit(X)
    assert flow_prop.trainer_.kernel.flow is flow_prop.flow_
    assert flow_prop._proposal() == (flow_prop.flow_, flow_prop.trainer_.tilt)
    # "auto" resolves to the mixture for flowMC-EBM and to the base for NT-EBM.
    auto = {m: FlowMCEBM(method=m, **TINY) for m in ("flowmc", "nt")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreliableNormalizerWarning)
        for est in auto.values():
            est.fit(X)
    assert auto["flowmc"].trainer_.config.tilt == "gmm"
    assert auto["nt"].trainer_.config.tilt == "base"
    assert auto["nt"].trainer_.config.global_proposal == "flow"
    # BIC finds the two clusters, with their 1 : 2 masses.
    probs = np.sort(tilt.mixture_distribution.probs.numpy())
    np.testing.assert_allclose(probs, [1 / 3, 2 / 3], atol=0.07)
    # Pickling keeps the tilt, so the model is the same density (without it the copy would
    # fall back to the flow's base and score_samples would differ by tens of nats).
    again = pickle.loads(pickle.dumps(ebm))
    assert again.trainer_.tilt is not None
    np.testing.assert_allclose(again.score_samples(X), ebm.score_samples(X), rtol=1e-6)


def test_log_z_with_a_gmm_tilt_matches_quadrature_on_data_far_from_the_origin():
    # Unstandardized data 12 units from the origin: the barely trained flow proposes near
    # N(0, I), so log Z rests on the defensive half of the draws. With the tilt as that
    # component it covers the model; shown to fail with the flow's base there instead.
    X = _far_clusters()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnreliableNormalizerWarning)
        ebm = FlowMCEBM(tilt="gmm", defensive=0.5, **{**TINY, "n_importance": 8000}).fit(X)
    bounds = ((6.0, 18.0), (-9.0, 1.0))
    grid = grid_log_density(ebm.trainer_.log_prob, bounds, 300)
    assert grid.edge_mass < 1e-6
    k = int(np.argmax(grid.log_density))
    point = torch.as_tensor(grid.points[k:k + 1], dtype=torch.float32)
    with torch.no_grad():
        grid_log_z = float(ebm.trainer_.log_prob(point)) - float(grid.log_density.ravel()[k])
    assert ebm.pareto_k_ < 0.7 and ebm.log_normalizer_se_ < 0.0125
    assert abs(ebm.log_normalizer_ - grid_log_z) < 4 * ebm.log_normalizer_se_ + 0.005


def test_chain_mode_weights_run_500_cycles_by_default():
    from flowmc_ebm.estimator import CHAIN_CHECK_STEPS

    X = np.random.default_rng(0).normal(size=(64, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreliableNormalizerWarning)
        ebm = FlowMCEBM(**TINY).fit(X)
    centers = np.array([[-1.0, 0.0], [1.0, 0.0]])
    asked = []
    run = ebm.trainer_.sample

    def short(n, n_steps, **kwargs):  # records the steps asked for, runs 5 (500 take 20 s)
        asked.append(n_steps)
        return run(n, n_steps=5, **kwargs)

    ebm.trainer_.sample = short
    assert CHAIN_CHECK_STEPS >= 500
    est = ebm.mode_weights(centers, method="chains", n_chains=4)
    assert asked == [CHAIN_CHECK_STEPS] and est.n == 4 * 5
    ebm.mode_weights(centers, method="chains", n_chains=4, n_steps=7)
    ebm.set_params(sample_steps=800).mode_weights(centers, method="chains", n_chains=4)
    assert asked[1:] == [7, 800]
    with pytest.raises(ValueError, match="n_steps"):
        ebm.mode_weights(centers, method="chains", n_steps=0)

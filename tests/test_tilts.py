"""The EBM's tilt fitted to the data (`flowmc_ebm.training.tilts`) and its place in JointTrainer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowmc_ebm.config import ModelConfig, TrainerConfig
from flowmc_ebm.energies import FlowTiltedEnergy, TiltedEnergy
from flowmc_ebm.training import tilts
from flowmc_ebm.training.joint import JointTrainer

SMALL = ModelConfig(energy_hidden=(16, 16), flow_transforms=2, flow_hidden=(16,))


def _shifted_modes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two modes at x0 = 1 and x0 = 5 (weights 0.3, 0.7), far from the origin; and the labels."""
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, generator=g) < 0.7).long()
    x = torch.randn(n, 2, generator=g) * 0.5
    x[:, 0] += torch.where(labels == 1, 5.0, 1.0)
    return x, labels


def _small(sampler: str = "flowmc", **knobs) -> JointTrainer:
    config = TrainerConfig(**{"pool_size": 64, "batch_size": 32, "n_negatives": 32,
                              "log_every": 2, "eval_every": 0, "seed": 3, **knobs})
    return JointTrainer.from_config(2, sampler, SMALL, config)


def test_gaussian_tilt_has_the_datas_mean_and_covariance():
    x, _ = _shifted_modes(500, 0)
    lam = tilts.gaussian_tilt(x)
    ref = np.cov(x.numpy().T)
    assert np.allclose(lam.mean.numpy(), x.numpy().mean(0), atol=1e-6)
    # Only the ridge, 1e-4 of the mean variance, separates it from numpy's covariance.
    assert np.allclose(lam.covariance_matrix.numpy(), ref + 1e-4 * np.trace(ref) / 2 * np.eye(2),
                       atol=1e-5)


def test_flow_tilt_gives_each_mode_its_mass_where_the_base_does_not():
    """The reason for the tilt: its mass per mode is what the EBM starts from and is pulled to.

    Mode weights of 4000 draws, binomial SE <= 0.008; the fit is judged at 0.05 (6 SE), the
    base N(0, I) puts almost nothing on the far mode (0.7 in the data). A flow fitted with
    lr ~ 0 (a broken fit) stays N(0, I) and fails the first assertion.
    """
    x, _ = _shifted_modes(1000, 1)
    flow = tilts.flow_tilt(x, transforms=2, hidden=(32, 32), steps=400, lr=1e-2, seed=0)
    with torch.no_grad():
        draws = flow().sample((4000,))
    far = float((draws[:, 0] > 3.0).double().mean())
    assert abs(far - 0.7) < 0.05, far
    assert not any(p.requires_grad for p in flow.parameters())
    base = torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2))
    assert float((base.sample((4000,))[:, 0] > 3.0).double().mean()) < 0.01


def test_gmm_tilt_gives_each_mode_its_mass_and_picks_its_size_by_bic():
    """Two well-separated modes at 0.3 / 0.7: BIC picks 2 components, and their weights are the
    data's (600 points: binomial SE 0.019, judged at 0.06). A mixture forced to one component
    (the N(mean, cov) tilt) puts its peak between the modes and fails the first assertion."""
    x, labels = _shifted_modes(600, 5)
    lam = tilts.gmm_tilt(x, seed=0)
    probs = lam.mixture_distribution.probs
    assert probs.shape == (2,)
    far = float(probs[lam.component_distribution.loc[:, 0].argmax()])
    assert abs(far - float(labels.double().mean())) < 0.06, far
    one = tilts.gmm_tilt(x, 1)
    assert one.mixture_distribution.probs.shape == (1,)


def test_flow_tilt_is_reproducible_and_leaves_the_global_rng_alone():
    x, _ = _shifted_modes(200, 2)
    torch.manual_seed(7)
    before = torch.rand(1)
    torch.manual_seed(7)
    a = tilts.flow_tilt(x, transforms=2, hidden=(8,), steps=20, seed=4)
    after = torch.rand(1)
    b = tilts.flow_tilt(x, transforms=2, hidden=(8,), steps=20, seed=4)
    assert torch.equal(before, after)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_the_untrained_model_is_the_tilt_and_the_pool_starts_from_it():
    x, _ = _shifted_modes(256, 3)
    trainer = _small(tilt="flow", tilt_steps=30)
    assert trainer.tilt is None and isinstance(trainer.model, TiltedEnergy)  # not fitted yet
    trainer.fit(x, n_iterations=1, progress=False)
    assert isinstance(trainer.model, FlowTiltedEnergy)
    # flowMC's proposal flow started as a copy of the tilt (it has since taken one step).
    fresh = _small(tilt="flow", tilt_steps=30)
    tilts.install(fresh, trainer.tilt)
    for p, q in zip(fresh.flow.parameters(), trainer.tilt.parameters(), strict=True):
        assert torch.equal(p, q)
    with torch.no_grad():
        assert torch.allclose(fresh.log_prob(x[:8]), trainer.tilt().log_prob(x[:8]), atol=1e-5)
    # The pool starts as draws of the tilt: with the data's Gaussian (x0: mean 3.8, sd 1.9),
    # 64 chains average within 0.25 (1 SE) of 3.8 -- not near 0, where N(0, I) would put them.
    gaussian = _small(tilt="gaussian")
    gaussian.fit(x, n_iterations=1, progress=False)
    assert abs(float(gaussian.pool_[:, 0].mean()) - float(x[:, 0].mean())) < 1.0


def test_default_tilt_is_the_flows_base_as_before():
    trainer = _small()
    assert trainer.config.tilt == "base" and trainer.tilt is None
    x = torch.randn(5, 2)
    with torch.no_grad():
        assert torch.allclose(trainer.log_prob(x), trainer.flow.base().log_prob(x))


@pytest.mark.parametrize("kind", ["gaussian", "gmm", "flow"])
def test_a_checkpoint_keeps_the_tilt(tmp_path, kind):
    x, _ = _shifted_modes(256, 4)
    trainer = _small(tilt=kind, tilt_steps=20)
    trainer.fit(x, n_iterations=2, progress=False)
    path = trainer.save(tmp_path / "t.pt")
    loaded = JointTrainer.load(path)
    probe = x[:6]
    with torch.no_grad():
        assert torch.equal(loaded.log_prob(probe), trainer.log_prob(probe))
    loaded.fit(x, n_iterations=2, progress=False)
    trainer.fit(x, n_iterations=2, progress=False)
    assert torch.equal(loaded.pool_, trainer.pool_)


def test_bad_tilts_are_refused_with_what_was_expected():
    with pytest.raises(ValueError, match="tilts by its own flow"):
        _small("nt", tilt="flow")
    with pytest.raises(ValueError, match="must be one of|choices|expected one of"):
        TrainerConfig(tilt="wide")
    trainer = _small()
    wrong = torch.distributions.MultivariateNormal(torch.zeros(3), torch.eye(3))
    with pytest.raises(ValueError, match=r"event shape must be \(2,\).*\(3,\)"):
        tilts.install(trainer, wrong)
    with pytest.raises(TypeError, match="Distribution or a zuko Flow"):
        tilts.install(trainer, "gaussian")
    with pytest.raises(ValueError, match="NaN or infinite"):
        tilts.gaussian_tilt(torch.tensor([[0.0, 1.0], [float("nan"), 2.0]]))
    with pytest.raises(ValueError, match="unknown tilt 'wide'"):
        tilts.fit_tilt("wide", torch.zeros(4, 2))

"""Claims about EBFlow: its exact NLL is the standard flow NLL, it inverts, it trains without
determinants, and its normalizer cache follows the parameters."""

import math

import pytest
import torch

from flowmc_ebm.ebflow import (
    AffineCoupling,
    Conv1x1,
    Conv2dLinear,
    Dense,
    EBFlow,
    EBFlowTrainer,
    ExponentialMovingAverage,
    LinearLayer,
    LogitTransform,
    SmoothLeakyReLU,
    Squeeze,
    conv_ebflow,
    coupling_ebflow,
    dequantize,
    fully_connected_ebflow,
)


@pytest.fixture(autouse=True)
def _one_thread():
    # Runs after conftest's two-thread setting. These tensors are tiny: a second thread buys
    # nothing, and on a busy two-core machine its spinning made the tests 10-20x slower.
    torch.set_num_threads(1)


def _perturbed(model: EBFlow, seed: int, scale: float = 0.3) -> EBFlow:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator,
                                               dtype=parameter.dtype))
    return model


def _models():
    return {
        "fully_connected": _perturbed(fully_connected_ebflow(5).double(), seed=0),
        "fully_connected_2_blocks": _perturbed(fully_connected_ebflow(5, blocks=2).double(), seed=15),
        "coupling": _perturbed(coupling_ebflow(4, blocks=2, hidden=(16,)).double(), seed=1),
        "conv": _perturbed(conv_ebflow((2, 4, 4), blocks=2).double(), seed=11, scale=0.2),
    }


def standard_flow_log_prob(model: EBFlow, x: torch.Tensor) -> torch.Tensor:
    """log N(g(x); 0, I) + log|det ∂g/∂x|, the Jacobian built by autograd point by point."""
    values = []
    for point in x:
        def g(p):
            return model.transform(p.unsqueeze(0))[0].squeeze(0)
        z = g(point)
        jacobian = torch.autograd.functional.jacobian(g, point)
        log_base = -0.5 * z.square().sum() - 0.5 * len(point) * math.log(2 * math.pi)
        values.append(log_base + torch.linalg.slogdet(jacobian).logabsdet)
    return torch.stack(values)


@pytest.mark.parametrize("name", ["fully_connected", "fully_connected_2_blocks", "coupling", "conv"])
def test_exact_nll_equals_the_standard_maximum_likelihood_evaluation(name):
    model = _models()[name]
    x = torch.randn(6, model.dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    expected = standard_flow_log_prob(model, x)
    with torch.no_grad():
        cached = model.log_prob(x)
    torch.testing.assert_close(cached, expected)
    torch.testing.assert_close(model.log_prob(x).detach(), expected)  # the in-graph ML path
    torch.testing.assert_close(-model.energy(x).detach() - model.log_normalizer().detach(), expected)


@pytest.mark.parametrize("layer", [Conv2dLinear((2, 4, 3), 3), Conv2dLinear((1, 5, 5), 5),
                                   Conv1x1((3, 2, 2)), Squeeze((2, 4, 2))])
def test_convolution_log_det_and_inverse_match_the_autograd_jacobian(layer):
    layer = _perturbed(layer.double(), seed=12, scale=0.3) if list(layer.parameters()) else layer
    dim = math.prod(layer.shape)
    x = torch.randn(3, dim, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(lambda p: layer(p.unsqueeze(0))[0], x[0])
    if isinstance(layer, Conv2dLinear):
        torch.testing.assert_close(layer.dense(), jacobian)
        assert torch.count_nonzero(jacobian) < dim * dim  # a convolution, not a dense map
    torch.testing.assert_close(layer.log_abs_det().double(), torch.linalg.slogdet(jacobian).logabsdet)
    torch.testing.assert_close(layer.inverse(layer(x)), x)


def test_conv_model_starts_at_the_identity_and_its_normalizer_is_cached():
    model = conv_ebflow((1, 4, 4))
    x = torch.randn(5, 16)
    for layer in model.layers:
        if isinstance(layer, Conv2dLinear | Conv1x1):
            assert torch.equal(layer(x), x)
    assert model.linear_log_det().item() == 0.0
    model = _perturbed(model.double(), seed=14, scale=0.2)
    with torch.no_grad():
        first = model.log_normalizer()
        assert model.log_normalizer() is first
    torch.testing.assert_close(model.inverse(model.transform(x.double())[0]), x.double())


def test_coupling_density_integrates_to_one_and_sampling_matches_it():
    # Small enough a perturbation that the tails fit in the grid (the couplings scale by exp).
    model = _perturbed(coupling_ebflow(2, blocks=2, hidden=(16,)).double(), seed=4, scale=0.15)
    edges = torch.linspace(-15, 15, 1001, dtype=torch.float64)
    centers = 0.5 * (edges[1:] + edges[:-1])
    cell = (edges[1] - edges[0]) ** 2
    grid = torch.cartesian_prod(centers, centers)
    with torch.no_grad():
        density = model.log_prob(grid).exp() * cell
    assert abs(density.sum().item() - 1) < 1e-4
    quadrature_mean = (density.unsqueeze(1) * grid).sum(0)
    samples = model.sample(20_000, generator=torch.Generator().manual_seed(10))
    z = (samples.mean(0) - quadrature_mean) / (samples.std(0) / math.sqrt(len(samples)))
    assert z.abs().max() < 4.5, f"sample mean vs quadrature mean z-scores {z}"


def test_smooth_leaky_relu_newton_inverse_recovers_inputs_across_scales():
    layer = SmoothLeakyReLU(alpha=0.3)
    x = torch.cat([torch.linspace(-60, 60, 1001), 10 * torch.randn(1000)]).reshape(-1, 1)
    for dtype, tol in [(torch.float64, 1e-10), (torch.float32, 1e-5)]:
        y, _ = layer(x.to(dtype))
        torch.testing.assert_close(layer.inverse(y), x.to(dtype), atol=tol, rtol=tol)
    # And forward(inverse(y)) = y for targets that did not come from a forward pass.
    y = 20 * torch.randn(500, 3, dtype=torch.float64)
    torch.testing.assert_close(layer(layer.inverse(y))[0], y)


@pytest.mark.parametrize("layer", [SmoothLeakyReLU(), AffineCoupling(3, (8,), swap=True)])
def test_nonlinear_log_det_matches_the_autograd_jacobian(layer):
    layer = layer.double()
    if isinstance(layer, AffineCoupling):
        torch.nn.init.normal_(layer.net[-1].weight, std=0.5)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    _, log_det = layer(x)
    for point, value in zip(x, log_det, strict=True):
        jacobian = torch.autograd.functional.jacobian(lambda p: layer(p.unsqueeze(0))[0][0], point)
        torch.testing.assert_close(value, torch.linalg.slogdet(jacobian).logabsdet)
    torch.testing.assert_close(layer.inverse(layer(x)[0]), x)


def test_fully_connected_model_starts_at_minus_identity_and_inverts():
    model = fully_connected_ebflow(6)
    dense = [layer for layer in model.layers if isinstance(layer, LinearLayer)]
    assert len(dense) == 2 and all(torch.equal(d.weight, -torch.eye(6)) for d in dense)
    deeper = fully_connected_ebflow(6, blocks=3)  # 3 nonlinear layers between 4 dense ones
    assert [isinstance(layer, Dense) for layer in deeper.layers] == [True, False] * 3 + [True]
    model = _models()["fully_connected"]
    x = torch.randn(50, 5, dtype=torch.float64)
    torch.testing.assert_close(model.inverse(model.transform(x)[0]), x)


def test_log_normalizer_is_cached_while_frozen_and_refreshed_when_parameters_change():
    model = fully_connected_ebflow(4)
    _perturbed(model, seed=6)
    with torch.no_grad():
        first = model.log_normalizer()
        assert model.log_normalizer() is first  # reused: no new determinant
    trainer = EBFlowTrainer(model, "ssm", lr=0.05)
    trainer.step(torch.randn(16, 4))
    with torch.no_grad():
        after_step = model.log_normalizer()
    assert after_step is not first
    torch.testing.assert_close(after_step, -model.linear_log_det().detach())
    assert not torch.allclose(after_step, first)
    model.load_state_dict(_perturbed(fully_connected_ebflow(4), seed=7).state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model.log_normalizer(), -model.linear_log_det())


@pytest.mark.parametrize("blocks", [1, 2])
@pytest.mark.parametrize("objective", ["ssm", "dsm", "fdssm"])
def test_score_matching_steps_form_no_determinant(objective, blocks, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("score-matching training computed a determinant")

    model = fully_connected_ebflow(8, blocks=blocks)
    trainer = EBFlowTrainer(model, objective)
    monkeypatch.setattr(torch.linalg, "slogdet", refuse)
    before = [p.detach().clone() for p in model.parameters()]
    trainer.fit(torch.randn(64, 8) * 2 + 1, steps=3, batch_size=32)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_maximum_likelihood_step_does_use_the_determinant(monkeypatch):
    calls = []
    original = torch.linalg.slogdet
    monkeypatch.setattr(torch.linalg, "slogdet", lambda w: calls.append(1) or original(w))
    EBFlowTrainer(fully_connected_ebflow(3), "ml").step(torch.randn(8, 3))
    assert len(calls) == 2  # one per dense layer


def test_ema_warms_up_then_settles_at_its_decay():
    model = Dense(2)
    ema = ExponentialMovingAverage(model, decay=0.9)
    assert ema.decay_now() == pytest.approx(0.1)  # min(0.9, 1/10)
    with torch.no_grad():
        model.bias.fill_(1.0)
    ema.update(model)  # decay 0.1: average = 0.1·0 + 0.9·1
    torch.testing.assert_close(ema.average.bias, torch.full((2,), 0.9))
    for _ in range(200):
        ema.update(model)
    assert ema.decay_now() == 0.9
    torch.testing.assert_close(ema.average.bias, torch.ones(2))
    assert not any(p.requires_grad for p in ema.average.parameters())


def test_logit_transform_log_det_and_inverse():
    transform = LogitTransform(levels=17, alpha=0.05)
    x = dequantize(torch.randint(0, 17, (5, 3)), torch.Generator().manual_seed(8)).double()
    y, log_det = transform(x)
    torch.testing.assert_close(transform.inverse(y), x)
    for point, value in zip(x, log_det, strict=True):
        jacobian = torch.autograd.functional.jacobian(lambda p: transform(p.unsqueeze(0))[0][0],
                                                      point)
        torch.testing.assert_close(value, torch.linalg.slogdet(jacobian).logabsdet)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        fully_connected_ebflow(3).energy(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="blocks must be a positive int"):
        fully_connected_ebflow(3, blocks=0)
    with pytest.raises(ValueError, match="unknown objective"):
        EBFlowTrainer(fully_connected_ebflow(3), "nce")
    with pytest.raises(TypeError, match="LinearLayer or NonlinearLayer"):
        EBFlow(2, [torch.nn.Linear(2, 2)])


@pytest.mark.parametrize("objective", ["ssm", "ml"])
def test_the_flow_fitting_loop_leaves_the_losses_on_the_device_until_history_is_read(
        objective, monkeypatch):
    import sys

    calls = []
    for name in ("item", "tolist"):
        original = getattr(torch.Tensor, name)

        def wrapped(self, *args, _original=original, _name=name, **kwargs):
            if "flowmc_ebm" in sys._getframe(1).f_code.co_filename:
                calls.append(_name)
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, wrapped)
    trainer = EBFlowTrainer(fully_connected_ebflow(3), objective, grad_clip=1.0)
    trainer.fit(torch.randn(64, 3), steps=20, batch_size=16,
                generator=torch.Generator().manual_seed(0))
    assert calls == []  # no transfer per step (a loss.item() would make 20)
    assert len(trainer.history_) == 20 and calls == ["tolist"]  # one transfer, when read
    assert len(trainer.history_) == 20 and calls == ["tolist"]  # and not again

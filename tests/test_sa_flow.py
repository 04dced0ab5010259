"""Claims about the semi-autoregressive energy flow: block structure (K = 1 and K = D extremes),
the autoregressive Jacobian structure, a tractable density that equals the change of variables,
an energy loss that matches the Gaussian closed form (value and gradient), and training that fits
without ever touching the density."""

import math

import pytest
import torch

from flowmc_ebm.objectives.energy_score import energy_distance, energy_score, energy_score_loss
from flowmc_ebm.sa_flow import (
    AutoregressiveEnergyFlow,
    EnergyFlowTrainer,
    SemiAutoregressiveFlow,
    block_sizes,
    joint_energy_loss,
    semi_autoregressive_energy_loss,
)
from flowmc_ebm.sa_flow.losses import _blockwise_scores


def _perturb(module: torch.nn.Module, seed: int, scale: float = 0.3) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator,
                                               dtype=parameter.dtype))


def _flow(dim: int, blocks, seed: int = 0) -> SemiAutoregressiveFlow | AutoregressiveEnergyFlow:
    if blocks == "masked":  # K = D with one masked conditioner
        flow = AutoregressiveEnergyFlow(dim, layers=3, hidden=(24,), bins=6).double()
    else:
        flow = SemiAutoregressiveFlow(dim, blocks=blocks, layers=3, hidden=(12,), bins=6).double()
    _perturb(flow, seed)
    return flow


def test_block_sizes_and_sampling_shapes():
    assert block_sizes(7, 1) == [7]
    assert block_sizes(7, 7) == [1] * 7
    assert block_sizes(7, 3) == [3, 2, 2]
    with pytest.raises(ValueError):
        block_sizes(3, 4)
    with pytest.raises(ValueError):
        block_sizes(3, [1, 1])
    for blocks in (1, 3, 7):
        flow = _flow(7, blocks)
        assert flow.n_blocks == blocks
        assert flow.sample(5).shape == (5, 7)
        assert flow.rsample((2, 5)).shape == (2, 5, 7)
        assert flow().rsample((4, 3)).shape == (4, 3, 7)
        y = torch.randn(6, 7, dtype=torch.float64)
        assert flow.log_prob(y).shape == (6,)
        assert flow.conditional_transform(flow.noise((3, 6)), y).shape == (3, 6, 7)
        assert semi_autoregressive_energy_loss(flow, y, m=3, per_point=True).shape == (6,)


def test_extremes_k1_has_no_context_and_kd_generates_one_coordinate_at_a_time():
    one = _flow(4, 1)
    assert one.sizes == [4] and one.blocks[0].context == 0
    y = torch.randn(10, 4, dtype=torch.float64)
    # K = 1: the semi-autoregressive loss is the plain (joint) energy score, same noise.
    a = semi_autoregressive_energy_loss(one, y, m=3, generator=torch.Generator().manual_seed(5))
    b = joint_energy_loss(one, y, m=3, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)
    every = _flow(4, 4)
    assert every.sizes == [1, 1, 1, 1]
    assert [block.context for block in every.blocks] == [0, 1, 2, 3]
    masked = _flow(4, "masked")
    assert masked.sizes == [1, 1, 1, 1] and masked.starts == [0, 1, 2, 3]


def test_vectorized_one_dimensional_blocks_equal_the_blockwise_energy_scores():
    generator = torch.Generator().manual_seed(3)
    samples = torch.randn(4, 9, 5, generator=generator, dtype=torch.float64)
    y = torch.randn(9, 5, generator=generator, dtype=torch.float64)
    for beta in (0.5, 1.0, 1.7):
        fast = _blockwise_scores(samples, y, [0, 1, 2, 3, 4], [1] * 5, beta)
        slow = sum(energy_score(samples[..., i:i + 1], y[:, i:i + 1], beta) for i in range(5))
        torch.testing.assert_close(fast, slow)


def _jacobian(function, point):
    return torch.autograd.functional.jacobian(function, point)


@pytest.mark.parametrize("blocks", [1, 3, 7, "masked"])
def test_block_k_depends_only_on_earlier_blocks(blocks):
    flow = _flow(7, blocks, seed=len(str(blocks)))
    u = torch.randn(7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    jacobian = _jacobian(flow.transform, u)  # ∂x/∂u of ancestral sampling
    y = flow.transform(u).detach()
    noise = torch.randn(7, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    # ∂x/∂y of teacher-forced sampling: block k drawn given y's earlier blocks.
    forced = _jacobian(lambda point: flow.conditional_transform(noise[None], point[None])[0], y)
    for start, size in zip(flow.starts, flow.sizes, strict=True):
        rows = slice(start, start + size)
        later = jacobian[rows, start + size:]
        assert torch.count_nonzero(later) == 0                           # no later noise
        assert torch.count_nonzero(jacobian[rows, rows]) == size * size  # joint within a block
        if start > 0:
            assert (jacobian[rows, :start].abs() > 0).all()              # earlier blocks matter
        assert torch.count_nonzero(forced[rows, start:]) == 0            # own and later data: never
        if start > 0:
            assert (forced[rows, :start].abs() > 0).all()
        else:
            assert torch.count_nonzero(forced[rows]) == 0
    # The density is the change of variables with this (block-triangular) Jacobian.
    expected = (-0.5 * u.square().sum() - 3.5 * math.log(2 * math.pi)
                - torch.linalg.slogdet(jacobian).logabsdet)
    torch.testing.assert_close(flow.log_prob(y[None])[0].detach(), expected)
    torch.testing.assert_close(flow.inverse(y[None])[0][0].detach(), u)


def test_density_integrates_to_what_the_samples_put_in_the_box():
    # Moderate perturbation: sharper splines need a finer grid than a test can afford.
    flow = SemiAutoregressiveFlow(2, blocks=2, layers=3, hidden=(12,), bins=6).double()
    _perturb(flow, seed=3, scale=0.15)
    edges = torch.linspace(-10, 10, 601, dtype=torch.float64)
    centers = 0.5 * (edges[1:] + edges[:-1])
    grid = torch.cartesian_prod(centers, centers)
    with torch.no_grad():
        mass = flow.log_prob(grid).exp().sum() * (edges[1] - edges[0]) ** 2
    inside = (flow.sample(20000, torch.Generator().manual_seed(0)).abs() < 10).all(-1).double().mean()
    assert abs(mass.item() - 1) < 2e-3
    assert abs(mass.item() - inside.item()) < 3e-3


def _gaussian_crps(mu, sigma, y):
    """Energy score (β = 1) of N(μ, σ²) at y: σ [z(2Φ(z) − 1) + 2φ(z) − 1/√π]."""
    z = (y - mu) / sigma
    normal = torch.distributions.Normal(0.0, 1.0)
    return sigma * (z * (2 * normal.cdf(z) - 1) + 2 * normal.log_prob(z).exp() - 1 / math.sqrt(math.pi))


def _gaussian_conditionals(dim: int, blocks: int) -> SemiAutoregressiveFlow:
    """Splines left at the identity and random affine conditioners: each block is a Gaussian
    N(μ_k(x_<k), diag σ_k(x_<k)²) whose mean and scale depend on the earlier coordinates."""
    flow = SemiAutoregressiveFlow(dim, blocks=blocks, layers=2, hidden=(8,), bins=4).double()
    for index, block in enumerate(flow.blocks):
        if block.affine_net is None:
            with torch.no_grad():
                block.affine.copy_(torch.tensor([0.4] * block.size + [-0.3] * block.size))
        else:
            _perturb(block.affine_net, seed=10 + index, scale=0.8)
    return flow


def _closed_form(flow: SemiAutoregressiveFlow, y: torch.Tensor) -> torch.Tensor:
    total = y.new_zeros(())
    for block, start in zip(flow.blocks, flow.starts, strict=True):
        shift, log_scale = block._affine(y[:, :start])
        total = total + _gaussian_crps(shift, log_scale.exp(), y[:, start:start + 1]).sum(-1).mean()
    return total


@pytest.mark.parametrize(("dim", "blocks"), [(1, 1), (3, 3)])
def test_loss_and_its_gradient_match_the_gaussian_closed_form(dim, blocks):
    flow = _gaussian_conditionals(dim, blocks)
    y = torch.randn(400, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 1.5
    expected = _closed_form(flow, y)
    expected_grad = torch.autograd.grad(expected, list(flow.parameters()), allow_unused=True)
    generator = torch.Generator().manual_seed(1)
    values, grads = [], []
    for _ in range(60):
        loss = semi_autoregressive_energy_loss(flow, y, m=2, generator=generator)
        grad = torch.autograd.grad(loss, list(flow.parameters()), allow_unused=True)
        values.append(loss.detach())
        grads.append(torch.cat([g.flatten() for g, e in zip(grad, expected_grad, strict=True)
                                if e is not None]))
    values, grads = torch.stack(values), torch.stack(grads)
    z = (values.mean() - expected) / (values.std() / math.sqrt(len(values)))
    assert abs(z.item()) < 4.5, (values.mean().item(), expected.item())
    target = torch.cat([e.flatten() for e in expected_grad if e is not None])
    error = grads.std(0) / math.sqrt(len(grads))
    informative = error > 1e-10
    z_grad = (grads.mean(0) - target)[informative] / error[informative]
    assert z_grad.abs().max() < 4.5
    assert informative.sum() >= 2


@pytest.mark.parametrize(("loss", "blocks"),
                         [("autoregressive", 2), ("joint", 1), ("autoregressive", "masked")])
def test_training_by_the_energy_score_fits_a_correlated_gaussian(loss, blocks, monkeypatch):
    torch.manual_seed(0)
    if blocks == "masked":
        flow = AutoregressiveEnergyFlow(2, layers=2, hidden=(32,), bins=6)
    else:
        flow = SemiAutoregressiveFlow(2, blocks=blocks, layers=2, hidden=(32,), bins=6)

    def forbidden(*args, **kwargs):
        raise AssertionError("energy-score training must not invert the flow")

    monkeypatch.setattr(flow, "inverse", forbidden)
    chol = torch.tensor([[1.0, 0.0], [0.8, 0.6]])
    mean = torch.tensor([1.0, -1.0])

    def data(n, generator):
        return mean + torch.randn(n, 2, generator=generator) @ chol.mT

    held_out = data(2000, torch.Generator().manual_seed(99))
    trainer = EnergyFlowTrainer(flow, loss, m=2, lr=3e-3, ema_decay=0.99)

    def held_out_loss():
        with torch.no_grad():
            return trainer.loss(held_out, torch.Generator().manual_seed(7)).item()

    before = held_out_loss()
    trainer.fit(data, steps=300, batch_size=128, generator=torch.Generator().manual_seed(3))
    after = held_out_loss()
    assert after < before - 0.3, (before, after)
    samples = trainer.ema.average.sample(4000, torch.Generator().manual_seed(4))
    assert (samples.mean(0) - mean).abs().max() < 0.1
    # A 300-step fit: covariance entries within 0.15 (sampling error of a 4000-draw estimate ~0.03).
    torch.testing.assert_close(torch.cov(samples.T), chol @ chol.T, atol=0.15, rtol=0)
    assert energy_distance(samples, held_out).item() < 0.01
    monkeypatch.undo()
    assert energy_distance(data(4000, torch.Generator().manual_seed(5)), held_out).item() < 0.01


def test_energy_score_loss_accepts_the_flow_module():
    flow = SemiAutoregressiveFlow(3, blocks=3, hidden=(8,))
    loss = energy_score_loss(flow, torch.randn(16, 3), m=2)
    loss.backward()
    assert all(p.grad is not None for p in flow.parameters())

"""Claims about flowmc_ebm.energies: E ≡ 0 at init, one sign convention, tilts read live."""

import pytest
import torch
import zuko
from torch import nn
from torch.distributions import Independent, Normal

from flowmc_ebm.energies import (
    ConvEnergy,
    FlowTiltedEnergy,
    MLPEnergy,
    TiltedEnergy,
    log_density_from_energy,
)
from flowmc_ebm.flows import base_distribution, make_flow


class Quadratic(nn.Module):
    """E(x) = |x - c|^2 / 2, a reference energy with known log-densities."""

    def __init__(self, center: torch.Tensor) -> None:
        super().__init__()
        self.center = center

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (x - self.center).square().sum(-1)


def _standard_normal(dim: int) -> Independent:
    return Independent(Normal(torch.zeros(dim), torch.ones(dim)), 1)


def _perturb(module: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))


def test_energies_are_exactly_zero_at_initialization():
    torch.manual_seed(0)
    x = 3 * torch.randn(16, 5)
    images = torch.randn(16, 1, 8, 8)
    assert torch.equal(MLPEnergy(5)(x), torch.zeros(16))
    conv = ConvEnergy((1, 8, 8))
    assert torch.equal(conv(images), torch.zeros(16))
    assert torch.equal(conv(images.reshape(16, 64)), torch.zeros(16))


@pytest.mark.parametrize("make", [lambda: MLPEnergy(4), lambda: ConvEnergy((1, 2, 2))])
def test_zero_initialized_energy_still_learns(make):
    # Zeroing only the last layer leaves that layer a nonzero gradient, so training can start.
    energy = make()
    x = torch.randn(8, 4)
    (energy(x) * x.sum(-1)).sum().backward()
    last = energy.net[-1]
    assert last.weight.grad.abs().sum() > 0


def test_conv_energy_handles_a_non_square_image_shape():
    energy = ConvEnergy((3, 5, 7), channels=(4, 8, 8))
    _perturb(energy, seed=1)
    images = torch.randn(2, 3, 5, 7)
    torch.testing.assert_close(energy(images), energy(images.reshape(2, 105)))


def test_wrong_input_shape_is_rejected_naming_both_shapes():
    with pytest.raises(ValueError, match=r"\(n, 3\); received \(4, 2\)"):
        MLPEnergy(3)(torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"\(n, 1, 8, 8\) or \(n, 64\); received \(4, 63\)"):
        ConvEnergy()(torch.zeros(4, 63))
    with pytest.raises(ValueError, match=r"\(n, 2\); received \(4, 3\)"):
        TiltedEnergy(MLPEnergy(2), _standard_normal(2)).log_prob(torch.zeros(4, 3))


def test_log_density_is_minus_energy():
    energy = torch.tensor([-1.0, 0.0, 2.5])
    assert torch.equal(log_density_from_energy(energy), -energy)


def test_tilt_by_base_gives_minus_energy_plus_log_base():
    center = torch.tensor([1.0, -1.0])
    base = _standard_normal(2)
    model = TiltedEnergy(Quadratic(center), base)
    x = torch.randn(10, 2, requires_grad=True)
    expected = (
        -0.5 * (x - center).square().sum(-1)
        - 0.5 * x.square().sum(-1)
        - torch.log(torch.tensor(2 * torch.pi))
    )
    torch.testing.assert_close(model.log_prob(x), expected)
    torch.testing.assert_close(model(x), expected)
    torch.testing.assert_close(model.energy(x), 0.5 * (x - center).square().sum(-1))
    (grad,) = torch.autograd.grad(model.log_prob(x).sum(), x)
    torch.testing.assert_close(grad, -(x - center) - x)


def test_untrained_tilted_model_is_the_flow_base_not_the_flow():
    flow = make_flow(3, kind="realnvp", base_scale=2.0)
    _perturb(flow.transform, seed=2)
    model = TiltedEnergy(MLPEnergy(3), flow)
    x = torch.randn(20, 3)
    torch.testing.assert_close(model.log_prob(x), base_distribution(flow).log_prob(x))
    assert not torch.allclose(model.log_prob(x), flow().log_prob(x))


def _diag_normal_log_prob(x: torch.Tensor, scale: float) -> torch.Tensor:
    return Independent(Normal(torch.zeros(2), torch.full((2,), scale)), 1).log_prob(x)


def test_tilt_reads_the_base_at_call_time():
    flow = make_flow(2, base_scale=1.0)
    through_flow = TiltedEnergy(MLPEnergy(2), flow)
    through_lazy_base = TiltedEnergy(MLPEnergy(2), flow.base)
    x = torch.randn(5, 2)

    with torch.no_grad():
        flow.base.scale.fill_(3.0)
    torch.testing.assert_close(through_lazy_base.log_prob(x), _diag_normal_log_prob(x, 3.0))

    flow.base = zuko.lazy.UnconditionalDistribution(
        zuko.distributions.DiagNormal, torch.zeros(2), torch.full((2,), 0.5), buffer=True
    )
    torch.testing.assert_close(through_flow.log_prob(x), _diag_normal_log_prob(x, 0.5))


def test_flow_tilt_gives_minus_energy_plus_current_flow_log_density():
    flow = make_flow(2, kind="nsf")
    energy = Quadratic(torch.tensor([0.5, 0.0]))
    model = FlowTiltedEnergy(energy, flow)
    x = torch.randn(12, 2)
    torch.testing.assert_close(model.log_prob(x), -energy(x) + base_distribution(flow).log_prob(x))
    _perturb(flow.transform, seed=3)
    torch.testing.assert_close(model.log_prob(x), -energy(x) + flow().log_prob(x))


def test_reference_with_per_coordinate_log_prob_is_rejected():
    model = TiltedEnergy(MLPEnergy(2), Normal(torch.zeros(2), torch.ones(2)))
    with pytest.raises(ValueError, match="one value per point"):
        model.log_prob(torch.zeros(4, 2))

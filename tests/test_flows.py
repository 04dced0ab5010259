"""Claims about flowmc_ebm.flows: identity at init, configurable base, fast two-way sampling."""


import pytest
import torch
from torch import nn

from flowmc_ebm.flows import FLOW_KINDS, base_distribution, make_flow


@pytest.mark.parametrize("kind", FLOW_KINDS)
@pytest.mark.parametrize("dim", [1, 2, 5])
def test_flow_starts_as_its_base(kind, dim):
    torch.manual_seed(0)
    flow = make_flow(dim, kind=kind, base_scale=1.5)
    # Points well outside the spline domain [-5, 5] too: identity must hold everywhere.
    x = 4 * torch.randn(256, dim)
    torch.testing.assert_close(
        flow().log_prob(x), base_distribution(flow).log_prob(x), atol=1e-5, rtol=0
    )
    z = torch.randn(256, dim)
    torch.testing.assert_close(flow().transform(z), z, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_without_identity_init_the_flow_is_not_its_base(kind):
    # Guards the test above against passing vacuously.
    torch.manual_seed(0)
    flow = make_flow(3, kind=kind, identity_init=False)
    x = torch.randn(64, 3)
    assert not torch.allclose(flow().log_prob(x), base_distribution(flow).log_prob(x), atol=1e-3)


def test_base_is_an_untrained_gaussian_of_the_requested_scale():
    flow = make_flow(4, base_scale=2.5)
    base = base_distribution(flow)
    torch.testing.assert_close(base.mean, torch.zeros(4))
    torch.testing.assert_close(base.stddev, torch.full((4,), 2.5))
    assert base.event_shape == (4,)
    assert list(flow.base.parameters()) == []


@pytest.mark.parametrize("kind", ["nsf", "maf"])
def test_sampling_in_50d_takes_two_passes_per_transform(kind):
    torch.manual_seed(0)
    flow = make_flow(50, kind=kind, transforms=4)
    calls = []
    conditioners = [m.hyper for m in flow.transform.modules() if hasattr(m, "hyper")]
    for conditioner in conditioners:
        conditioner.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        x = flow().sample((1024,))
    assert x.shape == (1024, 50)
    # Autoregressive zuko flows would make 50 passes per transform (seconds in 50-D); coupling
    # makes at most 2. Counting passes, not seconds, keeps the check independent of machine load.
    assert len(calls) <= 2 * len(conditioners)


@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_rsample_is_differentiable_in_the_flow_parameters(kind):
    torch.manual_seed(0)
    flow = make_flow(3, kind=kind)
    x, log_q = flow().rsample_and_log_prob((32,))
    (x.square().sum() + log_q.sum()).backward()
    last_layers = [m.hyper[-1] for m in flow.transform.modules() if hasattr(m, "hyper")]
    assert last_layers
    assert all(layer.weight.grad is not None for layer in last_layers)
    assert all(torch.isfinite(layer.weight.grad).all() for layer in last_layers)
    assert sum(layer.weight.grad.abs().sum() for layer in last_layers) > 0


def test_extra_options_reach_zuko():
    flow = make_flow(4, kind="nsf", bins=5, activation=nn.ELU)
    assert any(isinstance(m, nn.ELU) for m in flow.modules())
    assert flow.transform.transforms[0].shapes == [(5,), (5,), (4,)]


def test_unknown_kind_is_rejected_listing_known_ones():
    with pytest.raises(ValueError, match="known kinds: realnvp, nsf, maf"):
        make_flow(2, kind="glow")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dim": 0}, "dim"),
        ({"dim": 2, "transforms": 0}, "transforms"),
        ({"dim": 2, "base_scale": 0.0}, "base_scale"),
    ],
)
def test_bad_sizes_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_flow(**kwargs)


def test_base_distribution_needs_a_zuko_flow():
    with pytest.raises(TypeError, match="zuko Flow"):
        base_distribution(nn.Linear(2, 2))

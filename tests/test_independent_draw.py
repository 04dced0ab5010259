"""`samplers.independent.draw`'s one-pass path for zuko coupling flows (#19): the draws are the
ones ``sample`` gives from the same generator, bit for bit, and their log-density is the flow's
``log_prob`` of them to float rounding; other distributions take the plain path."""

from __future__ import annotations

import pytest
import torch
import zuko
from torch.distributions import MultivariateNormal

from samplers.independent import _coupling_layers, draw, resolve


def _plain(dist, shape, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad(), torch.random.fork_rng():
        torch.set_rng_state(g.get_state())
        y = dist.sample(shape)
        return y, dist.log_prob(y), torch.get_rng_state()


@pytest.mark.parametrize("dim, randmask", [(5, False), (6, False), (7, True)])
def test_coupling_flow_draws_match_sample_and_log_prob(dim, randmask):
    torch.manual_seed(dim)
    # zuko's random initialization: every coupling is a genuinely nonlinear map.
    flow = zuko.flows.RealNVP(dim, transforms=3, hidden_features=(16, 16), randmask=randmask)
    dist = resolve(flow)
    assert _coupling_layers(dist) is not None
    g = torch.Generator().manual_seed(3)
    y, log_q = draw(flow, (4, 50), g)
    y_ref, log_q_ref, state_ref = _plain(dist, (4, 50), 3)
    assert torch.equal(y, y_ref)  # the same draws, bit for bit
    assert torch.equal(g.get_state(), state_ref)  # and the generator advanced alike
    assert log_q.shape == (4, 50)
    # float32 rounding of a density of magnitude ~10: far below any MC error.
    torch.testing.assert_close(log_q, log_q_ref, rtol=0, atol=1e-4)
    assert (log_q - log_q_ref).abs().max() < 1e-3 * log_q_ref.abs().mean()


def test_other_distributions_take_the_plain_path():
    q = MultivariateNormal(torch.zeros(3), 2.0 * torch.eye(3))
    assert _coupling_layers(q) is None
    y, log_q = draw(q, (20,), torch.Generator().manual_seed(1))
    y_ref, log_q_ref, _ = _plain(q, (20,), 1)
    assert torch.equal(y, y_ref) and torch.equal(log_q, log_q_ref)


@pytest.mark.parametrize("kind", ["maf", "nsf"])
def test_other_zuko_flows_draw_with_their_log_density_in_one_pass(kind):
    # MAF and flowmc_ebm's spline flow: zuko's rsample_and_log_prob (one pass through the inverse
    # with its log-determinant) instead of sample + log_prob. Same generator, same draws; log q
    # is the flow's log_prob of the draws to float rounding.
    from flowmc_ebm.flows import make_flow

    torch.manual_seed(0)
    flow = zuko.flows.MAF(3, transforms=2) if kind == "maf" else make_flow(4, "nsf", transforms=2)
    with torch.no_grad():  # off the identity, so the check is not trivial
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    dist = resolve(flow)
    assert _coupling_layers(dist) is None
    g = torch.Generator().manual_seed(1)
    start = g.get_state()
    y, log_q = draw(flow, (4, 50), g)
    assert not torch.equal(g.get_state(), start)  # the draws came from the generator
    y2, _ = draw(flow, (4, 50), torch.Generator().manual_seed(1))
    assert torch.equal(y, y2)
    with torch.no_grad():
        exact = dist.log_prob(y)
    torch.testing.assert_close(log_q, exact, rtol=0, atol=1e-4)
    assert (y - y.mean((0, 1))).abs().mean() > 0.1  # real draws, not a constant

"""Between-mode mixing: MALA alone keeps a wrong split of chains; FlowMC recovers the weights."""

import pytest
import torch
import zuko

import samplers

MEANS = torch.tensor([[4.0, 0.0], [-4.0, 0.0]])  # unit variances: the modes are 8 sd apart
WEIGHTS = torch.tensor([2 / 3, 1 / 3])


def log_prob(x):
    return torch.logsumexp(-0.5 * (x.unsqueeze(1) - MEANS).pow(2).sum(-1) + WEIGHTS.log(), 1)


def _start(generator):
    # As a user who does not know the modes: most chains in the lighter mode, a quarter broad.
    light = MEANS[1] + torch.randn(192, 2, generator=generator)
    broad = 5.0 * torch.randn(64, 2, generator=generator)
    return torch.cat([light, broad])


def heavy_weight(trace):
    return (trace.samples[..., 0] > 0).double().mean().item()


@pytest.mark.slow
def test_mala_alone_keeps_the_wrong_split():
    g = torch.Generator().manual_seed(0)
    trace = samplers.sample(samplers.MALA(log_prob, 0.5), _start(g), 1000, warmup=300,
                            progress=False, generator=g)
    assert abs(heavy_weight(trace) - 2 / 3) > 0.3
    # Hardly any chain reaches the far half of the other mode (2 sd beyond the midpoint).
    x = trace.samples[..., 0]
    crossed = (x.max(1).values > 2) & (x.min(1).values < -2)
    assert crossed.double().mean() < 0.02


@pytest.mark.slow
def test_flowmc_recovers_mode_weights():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    flow = zuko.flows.RealNVP(2, transforms=4)
    kernel = samplers.FlowMC(log_prob, flow, n_local=2, flow_lr=1e-2, batch_size=1024)
    trace = samplers.sample(kernel, _start(g), 300, warmup=250, progress=False, generator=g)
    assert abs(heavy_weight(trace) - 2 / 3) < 0.02
    assert trace.stats["global_accept_prob"].mean() > 0.5

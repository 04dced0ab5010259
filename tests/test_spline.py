"""Claims about flowmc_ebm.spline: a normalized density, an exact inverse, the right log-det,
zuko's spline raw parameter for raw parameter, identity at init, and it trains."""

import math

import pytest
import torch
import zuko
from zuko.transforms import MonotonicRQSTransform

from flowmc_ebm import spline as spline_module
from flowmc_ebm.flows import base_distribution, make_flow
from flowmc_ebm.spline import (
    SplineCouplingTransform,
    rq_coupling_spline,
    rq_coupling_spline_inverse,
    rq_spline,
    rq_spline_inverse,
    zuko_layout,
)
from flowmc_ebm.targets import EightGaussians

K = 8  # bins


def _perturbed(dim: int, scale: float, seed: int = 0, dtype=torch.float32, **kwargs):
    """An nsf flow moved well off the identity, so that every check meets a real spline."""
    torch.manual_seed(seed)
    flow = make_flow(dim, "nsf", transforms=3, hidden=(16, 16), **kwargs).to(dtype)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for parameter in flow.transform.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator, dtype=dtype))
    return flow


def _zuko_spline(phi: torch.Tensor, bound: float = 5.0) -> MonotonicRQSTransform:
    return MonotonicRQSTransform(phi[..., :K], phi[..., K : 2 * K], phi[..., 2 * K :], bound=bound)


def test_density_integrates_to_one_in_2d():
    flow = _perturbed(2, scale=0.2)
    # The base N(0, 1) leaves < 1e-13 of its mass outside [-8, 8]^2 and the spline is the
    # identity beyond [-5, 5]; trapezoid rule on a 601^2 grid.
    grid = torch.linspace(-8, 8, 601, dtype=torch.float64)
    x = torch.cartesian_prod(grid, grid)
    with torch.no_grad():
        density = flow().log_prob(x.float()).double().exp().reshape(601, 601)
    mass = torch.trapezoid(torch.trapezoid(density, grid, dim=1), grid)
    assert abs(mass.item() - 1) < 2e-3
    # The check is sensitive: without the log-determinant the "density" is far from normalized.
    with torch.no_grad():
        z = flow().transform(x.float())
        no_ladj = base_distribution(flow).log_prob(z).double().exp().reshape(601, 601)
    assert abs(torch.trapezoid(torch.trapezoid(no_ladj, grid, dim=1), grid).item() - 1) > 0.05


def test_density_integrates_to_one_in_8d_by_importance_sampling():
    flow = _perturbed(8, scale=0.1, seed=3)
    proposal = torch.distributions.Independent(
        torch.distributions.Normal(torch.zeros(8), torch.full((8,), 1.3)), 1
    )
    torch.manual_seed(4)
    x = proposal.sample((100_000,))
    with torch.no_grad():
        w = (flow().log_prob(x) - proposal.log_prob(x)).double().exp()
        z = flow().transform(x)
        w_no_ladj = (base_distribution(flow).log_prob(z) - proposal.log_prob(x)).double().exp()
    estimate, mcse = w.mean().item(), (w.std() / math.sqrt(len(w))).item()
    assert abs(estimate - 1) < 4 * mcse, (estimate, mcse)
    # Power: the same estimate without the log-determinant is many standard errors off.
    assert abs(w_no_ladj.mean().item() - 1) > 6 * mcse


def test_samples_and_their_log_density_agree_with_log_prob():
    flow = _perturbed(6, scale=0.15, seed=5)
    with torch.no_grad():
        x, log_q = flow().rsample_and_log_prob((512,))
        torch.testing.assert_close(log_q, flow().log_prob(x), atol=2e-4, rtol=0)


def test_inverse_is_exact_in_float64_and_float32_round_off_in_float32():
    generator = torch.Generator().manual_seed(0)
    phi = 0.5 * torch.randn(100_000, 3 * K - 1, generator=generator, dtype=torch.float64)
    x = 2 * torch.randn(100_000, generator=generator, dtype=torch.float64)
    y, ladj = rq_spline(x, phi)
    x_back, ladj_inv = rq_spline_inverse(y, phi)
    assert (x_back - x).abs().max() < 1e-12
    assert (ladj + ladj_inv).abs().max() < 1e-12
    # float32: the error in x is the output's round-off divided by the slope, so we bound the
    # backward error |x_back - x| * f'(x) by a few dozen ulps of the spline's range [-B, B].
    y32, _ = rq_spline(x.float(), phi.float())
    x32, _ = rq_spline_inverse(y32, phi.float())
    backward_error = (x32.double() - x).abs() * ladj.exp()
    assert backward_error.max() < 64 * torch.finfo(torch.float32).eps * 5.0
    flow = _perturbed(5, scale=0.15)
    points = torch.randn(1000, 5)
    with torch.no_grad():
        torch.testing.assert_close(flow().transform.inv(flow().transform(points)), points,
                                   atol=2e-5, rtol=0)


@pytest.mark.parametrize("dim", [5, 6])  # odd: index split; even: strided split
def test_log_det_equals_autograd_jacobian(dim):
    flow = _perturbed(dim, scale=0.3, dtype=torch.float64)
    transform = flow().transform
    x = 1.5 * torch.randn(16, dim, dtype=torch.float64)
    z, ladj = transform.call_and_ladj(x)
    jac = torch.stack([torch.autograd.functional.jacobian(transform, p) for p in x])
    torch.testing.assert_close(ladj, torch.linalg.slogdet(jac)[1], atol=1e-10, rtol=0)
    inverse = transform.inv
    x_back, ladj_inv = inverse.call_and_ladj(z.detach())
    jac_inv = torch.stack([torch.autograd.functional.jacobian(inverse, p) for p in z.detach()])
    torch.testing.assert_close(x_back, x)
    torch.testing.assert_close(ladj_inv, torch.linalg.slogdet(jac_inv)[1], atol=1e-10, rtol=0)


def test_hand_written_backward_matches_finite_differences():
    generator = torch.Generator().manual_seed(1)
    phi = torch.randn(6, 3, 3 * K - 1, generator=generator, dtype=torch.float64)
    x = 2.5 * torch.randn(6, 3, generator=generator, dtype=torch.float64)
    x[0, 0] = 7.0  # outside [-B, B]: the identity
    phi.requires_grad_(True)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p, v: rq_spline(v, p), (phi, x))
    assert torch.autograd.gradcheck(lambda p, v: rq_spline_inverse(v, p), (phi, x))


def test_bin_major_pairs_give_the_per_element_spline_and_its_gradients():
    # The coupling passes (raw_wh (n, 2K, h), raw_d (n, K - 1, h)), bins on dimension -2;
    # the same numbers as zuko's per-element layout (n, h, 3K - 1), values and gradients.
    generator = torch.Generator().manual_seed(3)
    phi = torch.randn(3, 3, 3 * K - 1, generator=generator, dtype=torch.float64)
    x = 2.5 * torch.randn(3, 3, generator=generator, dtype=torch.float64)
    x[1, 2] = -6.0  # outside [-B, B]
    pair = (phi[..., : 2 * K].transpose(-1, -2), phi[..., 2 * K :].transpose(-1, -2))
    for spline in (rq_spline, rq_spline_inverse):
        for a, b in zip(spline(x, pair), spline(x, phi), strict=True):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    wh, d = (p.detach().clone().requires_grad_(True) for p in pair)
    assert torch.autograd.gradcheck(lambda a, b, v: rq_spline(v, (a, b)), (wh, d, x))
    assert torch.autograd.gradcheck(lambda a, b, v: rq_spline_inverse(v, (a, b)), (wh, d, x))


def _coupling_case(h: int = 3, n: int = 3, seed: int = 4):
    """A coupling's bin-major parameters ``(n, (3K - 1) h)`` and inputs, float64, one input
    outside [-B, B] (the identity there)."""
    generator = torch.Generator().manual_seed(seed)
    phi = torch.randn(n, (3 * K - 1) * h, generator=generator, dtype=torch.float64)
    x = 2.5 * torch.randn(n, h, generator=generator, dtype=torch.float64)
    x[0, 0] = 7.0
    return phi.requires_grad_(True), x.requires_grad_(True)


def _per_element(x, phi):
    """The autograd version: rq_spline on the same parameters, log-det summed."""
    h = x.shape[-1]
    pair = (phi[..., : 2 * K * h].unflatten(-1, (2 * K, h)),
            phi[..., 2 * K * h :].unflatten(-1, (K - 1, h)))
    y, ladj = rq_spline(x, pair)
    return y, ladj.sum(-1)


def test_fused_spline_and_its_analytic_backward_equal_the_autograd_version():
    phi, x = _coupling_case()
    y, ladj = rq_coupling_spline(x, phi)
    y_ref, ladj_ref = _per_element(x, phi)
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(ladj, ladj_ref, atol=1e-12, rtol=0)
    g_y, g_l = torch.randn_like(y), torch.randn_like(ladj)
    grads = torch.autograd.grad((y, ladj), (phi, x), (g_y, g_l))
    grads_ref = torch.autograd.grad((y_ref, ladj_ref), (phi, x), (g_y, g_l))
    for a, b in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    assert torch.autograd.gradcheck(lambda p, v: rq_coupling_spline(v, p), (phi, x))
    # Second derivatives (a score-matching loss of a flow's density needs them) are exact.
    phi, x = _coupling_case(h=2, n=2)
    assert torch.autograd.gradgradcheck(lambda p, v: rq_coupling_spline(v, p), (phi, x),
                                        fast_mode=True)


def test_gradcheck_of_the_fused_spline_fails_with_a_wrong_backward(monkeypatch):
    # Guards the test above: a backward whose raw-slope gradients are 1 % off is caught.
    phi, x = _coupling_case()
    right = spline_module._backward_math

    def wrong(*args):
        grad_phi, g_x = right(*args)
        grad_phi[..., 2 * K * x.shape[-1] :] *= 1.01
        return grad_phi, g_x

    monkeypatch.setattr(spline_module, "_backward_math", wrong)
    assert not torch.autograd.gradcheck(lambda p, v: rq_coupling_spline(v, p), (phi, x),
                                        raise_exception=False)


def test_fused_inverse_inverts_and_matches_the_autograd_inverse():
    phi, x = _coupling_case(h=4, n=64, seed=6)
    with torch.no_grad():
        y, ladj = rq_coupling_spline(x, phi)
        x_back, ladj_inv = rq_coupling_spline_inverse(y, phi)  # the no-autograd pass
    torch.testing.assert_close(x_back, x.detach(), atol=1e-12, rtol=0)
    torch.testing.assert_close(ladj_inv, -ladj, atol=1e-12, rtol=0)
    x_grad, ladj_grad = rq_coupling_spline_inverse(y, phi)  # phi requires grad: autograd path
    torch.testing.assert_close(x_grad, x_back, atol=1e-12, rtol=0)
    torch.testing.assert_close(ladj_grad, ladj_inv, atol=1e-12, rtol=0)
    assert ladj_grad.requires_grad


@pytest.mark.slow  # torch.compile of three functions: ~1-2 min on a CPU
def test_compiled_spline_equals_the_eager_one():
    torch.manual_seed(0)
    phi = torch.randn(256, (3 * K - 1) * 16, requires_grad=True)
    x = 2 * torch.randn(256, 16, requires_grad=True)
    outs = {}
    for compiled in (False, True):
        y, ladj = rq_coupling_spline(x, phi, compiled=compiled)
        grads = torch.autograd.grad((y.sum() + ladj.sum()), (phi, x))
        with torch.no_grad():
            inverse = rq_coupling_spline_inverse(y, phi, compiled=compiled)
        outs[compiled] = (y, ladj, *grads, *inverse)
    for a, b in zip(outs[False], outs[True], strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("bound", [5.0, 2.0])
def test_spline_equals_zukos_monotonic_rqs_given_the_same_parameters(bound):
    generator = torch.Generator().manual_seed(2)
    phi = 1.5 * torch.randn(50_000, 3 * K - 1, generator=generator, dtype=torch.float64)
    x = bound * 0.7 * torch.randn(50_000, generator=generator, dtype=torch.float64)
    # float64, so that the comparison is of the maps, not of two round-off patterns.
    reference = _zuko_spline(phi, bound)
    y, ladj = rq_spline(x, phi, bound=bound)
    y_zuko, ladj_zuko = reference.call_and_ladj(x)
    torch.testing.assert_close(y, y_zuko, atol=1e-12, rtol=0)
    torch.testing.assert_close(ladj, ladj_zuko, atol=1e-9, rtol=0)
    torch.testing.assert_close(rq_spline_inverse(y_zuko, phi, bound=bound)[0],
                               reference.inv(y_zuko), atol=1e-9, rtol=0)
    # float32: equal up to the output's round-off.
    y32, ladj32 = rq_spline(x.float(), phi.float(), bound=bound)
    y32_zuko, ladj32_zuko = _zuko_spline(phi.float(), bound).call_and_ladj(x.float())
    torch.testing.assert_close(y32, y32_zuko, atol=64 * bound * 1.2e-7, rtol=0)


def test_coupling_equals_zukos_coupling_with_the_same_weights():
    torch.manual_seed(0)
    dim, mask = 7, torch.tensor([0, 1, 1, 0, 1, 0, 0], dtype=bool)
    ours = SplineCouplingTransform(dim, mask=mask, hidden_features=(16,))
    theirs = zuko.flows.GeneralCouplingTransform(
        dim, mask=mask, univariate=MonotonicRQSTransform, shapes=[(K,), (K,), (K - 1,)],
        hidden_features=(16,),
    )
    order = zuko_layout(int((~mask).sum()), K)
    with torch.no_grad():
        for a, b in zip(ours.hyper, theirs.hyper, strict=True):
            if hasattr(a, "weight"):
                b.weight.copy_(a.weight)
                b.bias.copy_(a.bias)
        theirs.hyper[-1].weight.copy_(ours.hyper[-1].weight[order])
        theirs.hyper[-1].bias.copy_(ours.hyper[-1].bias[order])
    x = 2 * torch.randn(256, dim)
    with torch.no_grad():
        y, ladj = ours().call_and_ladj(x)
        y_zuko, ladj_zuko = theirs().call_and_ladj(x)
        torch.testing.assert_close(y, y_zuko, atol=1e-4, rtol=0)
        torch.testing.assert_close(ladj, ladj_zuko, atol=1e-3, rtol=0)
        torch.testing.assert_close(ours().inv(y), theirs().inv(y_zuko), atol=1e-3, rtol=0)


@pytest.mark.parametrize("dim", [7, 32])
def test_untrained_flow_is_its_base(dim):
    flow = make_flow(dim, "nsf", base_scale=1.3)
    x = 3 * torch.randn(128, dim)
    with torch.no_grad():
        torch.testing.assert_close(flow().log_prob(x), base_distribution(flow).log_prob(x),
                                   atol=1e-5, rtol=1e-6)
        x, log_q = flow().rsample_and_log_prob((128,))
        torch.testing.assert_close(log_q, base_distribution(flow).log_prob(x), atol=1e-5,
                                   rtol=1e-6)


def _fit(flow, data: torch.Tensor, held_out: torch.Tensor, steps: int) -> float:
    optimizer = torch.optim.Adam(flow.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = data[torch.randint(len(data), (128,), generator=generator)]
        optimizer.zero_grad()
        (-flow().log_prob(batch).mean()).backward()
        optimizer.step()
    with torch.no_grad():
        return -flow().log_prob(held_out).mean().item()


def test_trains_on_eight_gaussians_as_well_as_zukos_nsf():
    target = EightGaussians()
    data = target.sample(4096, torch.Generator().manual_seed(1)) * 2
    held_out = target.sample(4096, torch.Generator().manual_seed(2)) * 2
    torch.manual_seed(0)
    ours = make_flow(2, "nsf", transforms=4, hidden=(32, 32))
    torch.manual_seed(0)
    theirs = zuko.flows.NSF(2, transforms=4, passes=2, hidden_features=(32, 32))
    steps = 150
    nll_ours, nll_theirs = _fit(ours, data, held_out, steps), _fit(theirs, data, held_out, steps)
    untrained = -base_distribution(ours).log_prob(held_out).mean().item()
    # Training did something (the base's NLL is ~3.4 nats here) ...
    assert nll_ours < untrained - 0.8, (nll_ours, untrained)
    # ... and at equal steps ours is no worse than zuko's coupling NSF (0.05 nats of slack
    # for the different optimization paths of two differently laid-out networks).
    assert nll_ours < nll_theirs + 0.05, (nll_ours, nll_theirs)


def test_bad_parameters_are_rejected_with_what_was_expected():
    with pytest.raises(ValueError, match=r"3 \* bins - 1"):
        rq_spline(torch.zeros(3), torch.zeros(3, 10))
    with pytest.raises(ValueError, match="bins must be an int >= 2"):
        SplineCouplingTransform(4, bins=1)
    with pytest.raises(ValueError, match="slope"):
        SplineCouplingTransform(4, slope=0.0)
    with pytest.raises(ValueError, match="mask must be a boolean vector of 4"):
        SplineCouplingTransform(4, mask=[True, True, True, True])
    with pytest.raises(ValueError, match="4 coordinates"):
        SplineCouplingTransform(4)()(torch.zeros(2, 3))

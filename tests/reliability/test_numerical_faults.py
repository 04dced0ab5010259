"""Numerical faults, injected into every kernel: a target whose log-density is NaN or ±inf on part
of the space, a target whose gradient is NaN or inf there (log-density finite), and a proposal or
flow whose log-density underflows to −inf there.

Each fault is switched on for some chains only (``BAD``) and only on the half-space ``x0 > EDGE``;
every chain starts outside it. What must hold:

- no NaN or inf ever reaches a draw, its log-density or a per-step stat;
- a move the fault makes meaningless is refused and counted in ``stats["invalid"]``, so a faulty
  chain's draws never sit in the faulty region (where the kernel can only enter through such a move);
- chains without the fault are untouched: bit for bit the draws of a run without any fault, because
  faults stay inside their own chain's row of every batched computation; a faulty chain too is
  identical to the fault-free run up to the first step where it met the fault.
"""

import pytest
import torch
from torch.distributions import (
    AffineTransform,
    Distribution,
    Independent,
    Normal,
    Transform,
    TransformedDistribution,
    constraints,
)

import samplers

N_CHAINS, N_STEPS, EDGE = 8, 40, 0.5
BAD = torch.tensor([1, 4, 6])
KERNELS = ["ula", "mala", "hmc", "imh", "isir", "flowmc", "latent"]
GRADIENT_FREE = {"imh", "isir"}  # never evaluate the target's gradient


def faulty(x):
    """Per-row flag ``(rows,)``: the row belongs to a chain in ``BAD`` and lies in ``x0 > EDGE``.

    Batches are ``(n, *event)`` with one row per chain, or, for i-SIR's candidates, ``k * n`` rows
    (particle-major), so a row's chain is its index modulo ``N_CHAINS``; a proposal is also scored
    on ``(k, n, *event)`` batches, where the chain is the second-to-last batch index.
    """
    rows = torch.arange(x.shape[-2] if x.ndim == 3 else x.shape[0]) % N_CHAINS
    if x.ndim == 3:
        rows = rows.expand(x.shape[:2])
    return torch.isin(rows, BAD) & (x[..., 0] > EDGE)


def gaussian(x):
    return -0.5 * x.flatten(1).pow(2).sum(1)


def broken_value(value):
    def log_prob(x):
        return torch.where(faulty(x), value, gaussian(x))
    return log_prob


def broken_gradient(kind):
    def log_prob(x):
        # Value 0, gradient NaN (0 · ∞) or +inf (d sqrt(u)/du at u = 0), on faulty rows only.
        # The square root is taken on faulty rows only: where() passes a zero gradient to the
        # other rows' branch, and 0 · ∞ there would be NaN too.
        f = faulty(x)
        u = x[:, 1] * 0.0 if kind == "nan" else x[:, 1] - x[:, 1].detach()
        return gaussian(x) + torch.where(f, torch.sqrt(torch.where(f, u, 1.0)), 0.0)
    return log_prob


class Underflow(Distribution):
    """``base`` whose log-density underflows to −inf on faulty rows, as a flow's does far out."""

    arg_constraints: dict = {}

    def __init__(self, base, on=True):
        self.base, self.on = base, on
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    def sample(self, sample_shape=()):
        return self.base.sample(sample_shape)

    def log_prob(self, x):
        lp = self.base.log_prob(x)
        return torch.where(faulty(x), -torch.inf, lp) if self.on else lp


class Collapse(Transform):
    """The identity map whose log|det| underflows to −inf on faulty rows (a flow that squashes)."""

    domain = codomain = constraints.real_vector
    bijective = True

    def __init__(self, on=True):
        super().__init__()
        self.on = on

    def __eq__(self, other):
        return isinstance(other, Collapse) and other.on == self.on

    def _call(self, z):
        return z

    def _inverse(self, x):
        return x

    def log_abs_det_jacobian(self, z, x):
        zero = torch.zeros(z.shape[:-1], dtype=z.dtype)
        return torch.where(faulty(z), -torch.inf, zero) if self.on else zero


def proposal(underflow=False):
    return Underflow(Independent(Normal(torch.zeros(2), 1.5 * torch.ones(2)), 1), on=underflow)


def latent_flow(underflow=False):
    base = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)
    return TransformedDistribution(base, [AffineTransform(0.0, 1.2), Collapse(underflow)])


def make(name, log_prob, underflow=False):
    return {
        "ula": lambda: samplers.ULA(log_prob, 0.3),
        "mala": lambda: samplers.MALA(log_prob, 0.5),
        "hmc": lambda: samplers.HMC(log_prob, 0.3, n_leapfrog=3),
        "imh": lambda: samplers.IndependentMH(log_prob, proposal(underflow)),
        "isir": lambda: samplers.ISIR(log_prob, proposal(underflow), n_particles=4),
        "flowmc": lambda: samplers.FlowMC(log_prob, proposal(underflow), n_local=2, n_particles=4,
                                          train=False, local_step_size=0.5),
        "latent": lambda: samplers.Latent(log_prob, latent_flow(underflow)),
    }[name]()


def run(kernel, warmup=0):
    x0 = torch.zeros(N_CHAINS, 2)
    x0[:, 0] = -1.0
    return samplers.sample(kernel, x0, N_STEPS, warmup=warmup, progress=False,
                           generator=torch.Generator().manual_seed(3))


def assert_refused_counted_and_contained(trace, clean, fault_blocks_region=True):
    """The claims of the module docstring, on a faulty run and its fault-free twin."""
    assert torch.isfinite(trace.samples).all() and torch.isfinite(trace.log_prob).all()
    for name, value in trace.stats.items():
        assert torch.isfinite(value.double()).all(), f"stats[{name!r}] holds NaN or inf"
    good = torch.ones(N_CHAINS, dtype=torch.bool)
    good[BAD] = False
    torch.testing.assert_close(trace.samples[good], clean.samples[good], rtol=0, atol=0)
    torch.testing.assert_close(trace.log_prob[good], clean.log_prob[good], rtol=0, atol=0)
    assert (trace.stats["invalid"][good] == clean.stats["invalid"][good]).all()
    invalid = trace.stats["invalid"] > clean.stats["invalid"]
    for c in BAD.tolist():
        met = invalid[c].nonzero()
        assert len(met) > 0, f"chain {c} never met the fault: the test would prove nothing"
        first = int(met[0, 0])
        torch.testing.assert_close(trace.samples[c, :first], clean.samples[c, :first], rtol=0, atol=0)
        if fault_blocks_region:
            assert (trace.samples[c, :, 0] <= EDGE).all(), f"chain {c} entered the faulty region"


@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("value", [torch.nan, -torch.inf, torch.inf], ids=["nan", "-inf", "+inf"])
def test_non_finite_log_density_is_refused_counted_and_kept_to_its_chains(name, value):
    assert_refused_counted_and_contained(run(make(name, broken_value(value))), run(make(name, gaussian)))


@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("kind", ["nan", "inf"])
def test_non_finite_gradient_is_refused_counted_and_kept_to_its_chains(name, kind):
    trace = run(make(name, broken_gradient(kind)))
    clean = run(make(name, gaussian))
    if name in GRADIENT_FREE:  # the gradient is never taken: nothing may change
        torch.testing.assert_close(trace.samples, clean.samples, rtol=0, atol=0)
        assert (trace.stats["invalid"] == clean.stats["invalid"]).all()
    else:
        assert_refused_counted_and_contained(trace, clean)


@pytest.mark.parametrize("name", ["imh", "isir", "flowmc", "latent"])
def test_proposal_density_underflow_is_refused_counted_and_kept_to_its_chains(name):
    trace = run(make(name, gaussian, underflow=True))
    clean = run(make(name, gaussian))
    # FlowMC's local MALA may walk into the region (the target is fine there); only its global
    # moves are refused, and a chain sitting where q underflowed must then stay put, with finite
    # stats.
    assert_refused_counted_and_contained(trace, clean, fault_blocks_region=name != "flowmc")


def test_ula_stays_in_place_on_a_nan_gradient_and_counts_it():
    """ULA has no MH step: a move to a point whose gradient is NaN must be refused outright."""
    kernel = samplers.ULA(broken_gradient("nan"), 0.3)
    state = kernel.init(torch.tensor([[0.4, 0.0]]).repeat(N_CHAINS, 1))
    refusals = 0
    for _ in range(20):
        new, info = kernel.step(state, torch.Generator().manual_seed(refusals))
        refused = info.invalid.bool()
        assert torch.equal(new.x[refused], state.x[refused])
        assert not info.accepted[refused].any() and info.accepted[~refused].all()
        assert torch.isfinite(new.grad).all()
        refusals += int(refused.sum())
        state = new
    assert refusals > 0


@pytest.mark.parametrize("name", ["ula", "mala", "hmc", "flowmc", "latent"])
def test_start_where_the_gradient_is_not_finite_is_a_value_error(name):
    """From a NaN gradient every gradient-based proposal is NaN: the chain would never move."""
    x0 = torch.zeros(N_CHAINS, 2)
    x0[:, 0] = 1.0  # chains in BAD start inside the faulty region
    with pytest.raises(ValueError, match=r"gradient of log_prob at x0 is not finite for 3 of 8 "
                                         r"chains \(first at chain 1\)"):
        make(name, broken_gradient("nan")).init(x0)


def trained_flowmc(log_prob):
    import zuko

    return samplers.FlowMC(log_prob, zuko.flows.RealNVP(2, transforms=2), n_local=2, n_particles=4,
                           batch_size=64, local_step_size=0.5)


@pytest.mark.parametrize("name", ["mala", "hmc", "flowmc", "flowmc-trained", "latent"])
def test_warmup_with_faults_keeps_step_sizes_and_the_flow_finite(name):
    log_prob = broken_value(torch.nan)
    kernel = trained_flowmc(log_prob) if name == "flowmc-trained" else make(name, log_prob)
    trace = run(kernel, warmup=30)
    assert torch.isfinite(trace.samples).all()
    h = trace.stats["step_size"]
    assert torch.isfinite(h).all() and (h > 0).all()
    if name == "flowmc-trained":
        assert torch.isfinite(kernel.flow_losses).all()
        assert all(torch.isfinite(p).all() for p in kernel.flow.parameters())

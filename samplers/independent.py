"""Global moves from a proposal distribution: independent Metropolis–Hastings and i-SIR.

A proposal is a `torch.distributions.Distribution` over one event (``sample((n,))`` gives
``(n, *event)``, ``log_prob`` gives ``(n,)``), or a module whose call returns one (zuko's
convention for a trainable flow; it is called at every step, so a flow being trained is seen as it
is now). Proposals for all chains are drawn and scored in one batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Distribution

from ._checks import check_float_log_prob, check_log_prob_fn, check_positive_int, evaluate, initial_state
from .base import Info, Kernel, LogProb, State
from .proposal import event_view, finite_rows, mh_accept

Proposal = Distribution | Callable[[], Distribution]


def check_proposal(proposal: object) -> None:
    if not (isinstance(proposal, Distribution) or callable(proposal)):
        raise TypeError(
            "proposal must be a torch.distributions.Distribution or a module whose call returns "
            f"one (e.g. a zuko flow); got {type(proposal).__name__}"
        )


def resolve(proposal: Proposal) -> Distribution:
    dist = proposal if isinstance(proposal, Distribution) else proposal()
    if not isinstance(dist, Distribution):
        raise TypeError(f"calling the proposal must return a torch.distributions.Distribution; "
                        f"got {type(dist).__name__}")
    return dist


def check_proposal_matches(proposal: Proposal, x: Tensor, checked: tuple | None) -> tuple:
    """The proposal must draw events of ``x``'s shape, dtype and device: one draw tells, taken with
    the global RNG forked so the run's randomness is untouched. ``checked`` is what an earlier call
    accepted; the same again is not redrawn (a trainer re-inits its chains every iteration).

    Returns:
        the accepted ``(event shape, dtype, device)``, to pass back as ``checked`` next time.
    """
    key = (x.shape[1:], x.dtype, x.device)
    if key == checked:
        return key
    dist = resolve(proposal)
    with torch.no_grad(), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        y = dist.sample((1,))
    if y.shape[1:] != x.shape[1:]:
        raise ValueError(f"the proposal's events must have the chains' event shape "
                         f"{tuple(x.shape[1:])}; it draws {tuple(y.shape[1:])}")
    if y.dtype != x.dtype or y.device != x.device:
        raise TypeError(f"the proposal must draw on the chains' dtype and device ({x.dtype}, "
                        f"{x.device}); it draws ({y.dtype}, {y.device}). Move one to the other, "
                        "e.g. flow.to(x0) or x0.to(dtype)")
    return key


def _strided(idx: Tensor) -> slice | None:
    """``idx`` as a slice of the last axis when it is an arithmetic progression (zuko's
    alternating coupling masks), else None. CPU only: on a GPU the check would sync."""
    if idx.device.type != "cpu" or idx.numel() == 0:
        return None
    first = int(idx[0])
    step = int(idx[1] - idx[0]) if idx.numel() > 1 else 1
    if step < 1 or not torch.equal(idx, first + step * torch.arange(idx.numel())):
        return None
    return slice(first, first + step * (idx.numel() - 1) + 1, step)


def _coupling_layers(dist: Distribution) -> list | None:
    """The coupling layers of a zuko flow made only of coupling transforms (zuko's RealNVP),
    or None for any other distribution."""
    try:
        from zuko.distributions import NormalizingFlow
        from zuko.transforms import ComposedTransform, CouplingTransform
    except ImportError:  # pragma: no cover - zuko is a dependency
        return None
    if not isinstance(dist, NormalizingFlow):
        return None
    t = dist.transform
    layers = list(t.transforms) if isinstance(t, ComposedTransform) else [t]
    if isinstance(t, ComposedTransform) and t.domain_dim != 1:
        return None
    if not layers or not all(type(layer) is CouplingTransform for layer in layers):
        return None
    return layers


def _coupling_draw(dist: Distribution, layers: list, shape: tuple[int, ...]
                   ) -> tuple[Tensor, Tensor]:
    """Draws of a coupling flow and their log-density in one inverse pass: each layer's
    conditioner runs once, and its elementwise map gives both ``x_b = m⁻¹(y_b)`` and the forward
    log-determinant at ``x_b``. zuko's own ``rsample_and_log_prob`` runs every conditioner twice
    (its inverse's log-determinant calls the layer again) and indexes the halves by gathering;
    here alternating halves are strided views. The draws are the ones ``sample`` gives (same
    base draws, same operations); the log-density is ``log_prob`` of them up to float rounding
    (the base density is taken at the drawn ``z``, not at the draw mapped forwards again)."""
    z = dist.base.rsample(shape) if dist.base.has_rsample else dist.base.sample(shape)
    h, acc = z, torch.zeros((), dtype=z.dtype, device=z.device)
    for layer in reversed(layers):
        ia, ib = _strided(layer.idx_a), _strided(layer.idx_b)
        if ia is None or ib is None:
            a, b = layer.split(h)
        else:
            a, b = h[..., ia], h[..., ib]
        m = layer.meta(a)
        x_b = m.inv(b)
        acc = acc + m.log_abs_det_jacobian(x_b, b)
        if ia is None or ib is None:
            h = layer.merge(a, x_b, h.shape)
        else:
            out = h.new_empty(h.shape)
            out[..., ia] = a
            out[..., ib] = x_b
            h = out
    if dist.reinterpreted > 0:
        acc = acc.sum(tuple(range(-dist.reinterpreted, 0)))
    return h, dist.base.log_prob(z) + acc


def _sample_and_log_prob(dist: Distribution, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """``shape`` draws and their log-density. A zuko coupling flow gives both in one inverse
    pass (`_coupling_draw`), where ``log_prob`` on the draws would run the whole flow a second
    time, forwards; any other distribution draws, then scores."""
    layers = _coupling_layers(dist)
    if layers is not None:
        return _coupling_draw(dist, layers, shape)
    try:
        from zuko.distributions import NormalizingFlow
    except ImportError:  # pragma: no cover - zuko is a dependency
        NormalizingFlow = ()
    if isinstance(dist, NormalizingFlow):
        # Any other zuko flow (flowmc_ebm's spline couplings, MAF): zuko's one pass through the
        # inverse with its log-determinant (2x faster than sample + log_prob for the spline flow
        # at d = 32, n = 1024; equal to log_prob of the draws to float rounding).
        return dist.rsample_and_log_prob(shape)
    y = dist.sample(shape)
    return y, dist.log_prob(y)


def draw(proposal: Proposal, shape: tuple[int, ...],
         generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Draw ``shape`` points and their proposal log-density, without gradients.

    torch distributions draw from the global RNG. With an explicit generator we lend its state to
    the global RNG for the draw and take the advanced state back, so "same generator, same chain"
    holds without a host-device sync. The generator must live on the device the proposal samples on.

    The log-density of a zuko coupling flow's draws comes from the same pass as the draws (see
    `_coupling_draw`); it equals ``log_prob`` of the draws up to float rounding.
    """
    dist = resolve(proposal)
    with torch.no_grad():
        if generator is None:
            return _sample_and_log_prob(dist, shape)
        cuda = generator.device.type == "cuda"
        with torch.random.fork_rng(devices=[generator.device] if cuda else []):
            if cuda:
                torch.cuda.set_rng_state(generator.get_state(), generator.device)
            else:
                torch.set_rng_state(generator.get_state())
            out = _sample_and_log_prob(dist, shape)
            generator.set_state(torch.cuda.get_rng_state(generator.device) if cuda
                                else torch.get_rng_state())
        return out


def _move(state: State, x: Tensor, lp: Tensor, grad: Tensor | None, moved: Tensor) -> State:
    """The new state: ``x``, ``lp`` (and ``grad``) where a chain moved, the old values elsewhere."""
    m = event_view(moved, x)
    return state.replace(x=torch.where(m, x, state.x), log_prob=torch.where(moved, lp, state.log_prob),
                         grad=None if state.grad is None else torch.where(m, grad, state.grad))


class _ProposalKernel(Kernel):
    """What both independence kernels share: a log-density, a proposal, and the check at `init`
    that the proposal's event shape matches the chains'."""

    def __init__(self, log_prob: LogProb, proposal: Proposal):
        check_log_prob_fn(log_prob)
        check_proposal(proposal)
        self.log_prob = log_prob
        self.proposal = proposal
        self._matched: tuple | None = None

    def init(self, x: Tensor) -> State:
        state = initial_state(self.log_prob, x, grad=False)
        check_float_log_prob(state.log_prob)
        self._matched = check_proposal_matches(self.proposal, state.x, self._matched)
        return state


class IndependentMH(_ProposalKernel):
    """Independent Metropolis–Hastings: propose ``y ~ q`` regardless of ``x``, accept with
    ``min(1, p(y) q(x) / (p(x) q(y)))``.

    With ``q`` equal to the target every move is accepted.

    Args:
        log_prob: batched unnormalized log-density.
        proposal: a `Distribution`, or a module returning one when called (a zuko flow).

    Example:
        >>> q = torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2))
        >>> kernel = IndependentMH(q.log_prob, q)
        >>> state, info = kernel.step(kernel.init(torch.zeros(5, 2)))
        >>> bool(info.accepted.all())
        True
    """

    def step(self, state: State, generator: torch.Generator | None = None) -> tuple[State, Info]:
        n = state.x.shape[0]
        y, log_q_y = draw(self.proposal, (n,), generator)
        with torch.no_grad():
            log_q_x = resolve(self.proposal).log_prob(state.x)
        # A chain that carries a gradient (FlowMC's local MALA) gets it in the same pass.
        lp, g = evaluate(self.log_prob, y, grad=state.grad is not None)
        log_ratio = lp - state.log_prob + log_q_x - log_q_y
        if g is not None:
            # A chain whose kernel needs gradients must never land where the gradient is not
            # finite (its next local step would be NaN): that is outside the support, a rejection.
            log_ratio = torch.where(finite_rows(g), log_ratio, torch.nan)
        accepted, accept_prob, invalid = mh_accept(log_ratio, generator)
        new = _move(state, y, lp, g, accepted)
        return new, Info(accept_prob, accepted, None, invalid)

    def __repr__(self) -> str:
        return f"IndependentMH(proposal={type(self.proposal).__name__})"


class ISIR(_ProposalKernel):
    """Iterated sampling-importance-resampling (Andrieu, Lee & Vihola 2018).

    Each chain keeps its current point and draws ``n_particles`` fresh ones from ``q``; it then
    moves to one of the ``n_particles + 1`` candidates chosen with probability proportional to the
    importance weight ``p/q``. This leaves ``p`` invariant. ``Info.accept_prob`` is the probability
    that a new particle was chosen; ``Info.extras["isir_ess"]`` is the ESS of the candidates'
    normalized weights (between 1 and ``n_particles + 1``).

    Args:
        log_prob: batched unnormalized log-density.
        proposal: a `Distribution`, or a module returning one when called (a zuko flow).
        n_particles: fresh proposals per chain per step.

    Example:
        >>> q = torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2))
        >>> kernel = ISIR(q.log_prob, q, n_particles=8)
        >>> state, info = kernel.step(kernel.init(torch.zeros(5, 2)))
        >>> info.extras["isir_ess"].shape
        torch.Size([5])
    """

    def __init__(self, log_prob: LogProb, proposal: Proposal, n_particles: int = 16):
        check_positive_int(n_particles, "n_particles")
        super().__init__(log_prob, proposal)
        self.n_particles = n_particles

    def step(self, state: State, generator: torch.Generator | None = None) -> tuple[State, Info]:
        n, k = state.x.shape[0], self.n_particles
        event = state.x.shape[1:]
        y, log_q_y = draw(self.proposal, (k, n), generator)  # (k, n, *event), (k, n)
        with torch.no_grad():
            log_q_x = resolve(self.proposal).log_prob(state.x)
        lp_y, _ = evaluate(self.log_prob, y.reshape(k * n, *event), grad=False)
        lp_y = lp_y.view(k, n)
        valid = torch.isfinite(lp_y) & torch.isfinite(log_q_y) & torch.isfinite(y).flatten(2).all(2)
        log_w_new = torch.where(valid, lp_y - log_q_y, -torch.inf)
        log_w_cur = torch.nan_to_num(state.log_prob - log_q_x, nan=-torch.inf)
        log_w = torch.cat([log_w_cur.unsqueeze(0), log_w_new], 0)  # (k + 1, n), current first
        # If every weight is -inf (a proposal that cannot reach x), keep the current point.
        log_w[0] = torch.where(torch.isinf(log_w).all(0), 0.0, log_w[0])
        probs = torch.softmax(log_w, 0)
        u = torch.rand(log_w.shape, generator=generator, device=log_w.device, dtype=log_w.dtype)
        gumbel = -torch.log(-torch.log(u.clamp_min(torch.finfo(u.dtype).tiny)))
        j = torch.argmax(log_w + gumbel, 0)  # (n,), 0 = stay
        moved = j > 0
        pick = (j - 1).clamp_min(0)
        idx = pick.view(1, n, *([1] * len(event))).expand(1, n, *event)
        x_new = torch.gather(y, 0, idx).squeeze(0)
        lp_new = torch.gather(lp_y, 0, pick.view(1, n)).squeeze(0)
        # Gradients only at the n chosen points, not at all k * n candidates; a chain that stayed
        # keeps its own (torch.where below), so the batch needs no host sync to skip it.
        g_new = None if state.grad is None else evaluate(self.log_prob, x_new, grad=True)[1]
        invalid = (~valid).sum(0).to(torch.int32)
        if g_new is not None:
            # A chosen point whose gradient is not finite is refused (the chain stays) and counted:
            # as in MALA, such points are outside the support. Refusing after the choice keeps
            # i-SIR reversible with respect to the target restricted to finite gradients, because
            # the other candidates' weights enter the choice symmetrically in x and the new point.
            bad_grad = moved & ~finite_rows(g_new)
            moved = moved & ~bad_grad
            invalid = invalid + bad_grad.to(torch.int32)
        new = _move(state, x_new, lp_new, g_new, moved)
        ess = 1.0 / probs.square().sum(0)
        info = Info(1.0 - probs[0], moved, None, invalid, {"isir_ess": ess})
        return new, info

    def __repr__(self) -> str:
        return f"ISIR(n_particles={self.n_particles})"

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


def draw(proposal: Proposal, shape: tuple[int, ...],
         generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Draw ``shape`` points and their proposal log-density, without gradients.

    torch distributions draw from the global RNG. With an explicit generator we lend its state to
    the global RNG for the draw and take the advanced state back, so "same generator, same chain"
    holds without a host-device sync. The generator must live on the device the proposal samples on.
    """
    dist = resolve(proposal)
    with torch.no_grad():
        if generator is None:
            y = dist.sample(shape)
        else:
            cuda = generator.device.type == "cuda"
            with torch.random.fork_rng(devices=[generator.device] if cuda else []):
                if cuda:
                    torch.cuda.set_rng_state(generator.get_state(), generator.device)
                else:
                    torch.set_rng_state(generator.get_state())
                y = dist.sample(shape)
                generator.set_state(torch.cuda.get_rng_state(generator.device) if cuda
                                    else torch.get_rng_state())
        return y, dist.log_prob(y)


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

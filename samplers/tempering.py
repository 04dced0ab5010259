"""Non-reversible parallel tempering (Syed, Bouchard-Côté, Deligiannidis & Doucet 2022).

Each user chain owns a ladder of ``K`` replicas on the path ``π_β ∝ reference^(1−β) · target^β``,
``0 = β_0 < … < β_{K−1} = 1``. One step: every replica with ``β > 0`` takes a local step (MALA by
default) in one batch, the ``β = 0`` replica is replaced by an exact draw from the reference, and
neighbouring replicas swap positions with the deterministic even/odd (DEO) pattern: even pairs on
even steps, odd pairs on odd steps. A swap between ``β_k`` and ``β_{k+1}`` is accepted with
probability ``min(1, exp((β_{k+1} − β_k)(ℓ(x_k) − ℓ(x_{k+1}))))``, ``ℓ = log target − log reference``.

Warm-up tunes the schedule in rounds of doubling length from the swap rejection rates (see
`samplers.schedule`), chooses ``K`` from the barrier unless it is given, and tunes each replica's
step size; then everything is frozen and the ``β = 1`` replicas are an exact MCMC for the target.
The stepping-stone identity turns the same replicas into an estimate of ``log Z`` with a standard
error (`ParallelTempering.log_normalizer`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution

from ._checks import check_log_prob_fn, check_positions, check_positive_int, check_step_size
from .base import Info, Kernel, LogProb, State
from .independent import draw, resolve
from .mode_search import Basins, ModeMixture, find_basins
from .proposal import event_view, mh_accept
from .schedule import optimal_schedule, replicas_for_barrier
from .stepping_stone import ImportanceSums, SteppingStoneSums
from .tempered_path import PathMALA, PathState, TemperedPath, mix, path_state

KernelFactory = Callable[[LogProb], Kernel]


@dataclass
class TemperingState(State):
    """A `State` whose ``x``/``log_prob`` are the ``β = 1`` replicas ``(n, *event)``/``(n,)``, the
    part a `Trace` stores, plus the whole ladder (slot-major: ``(K, n, ...)``).

    Attributes beyond `State`'s:
        local: the local kernel's state over slots ``1..K−1``, rows ``(k−1)·n + chain``.
        ladder: positions at every slot ``(K, n, *event)``.
        log_target, log_ref: the two log-densities there ``(K, n)``.
        grad_target, grad_ref: their gradients ``(K, n, *event)`` (``None`` without gradients).
        phase: per replica, 1 once it has visited the reference, 2 once it then reached the target
            ``(K, n)``; it travels with the replica through swaps.
        round_trips: reference → target → reference trips completed per chain ``(n,)``.
        swap_sum, swap_count: summed swap acceptance probabilities and attempts per pair ``(K−1,)``.
        pair_sum: the summed acceptance probabilities per pair and chain ``(K−1, n)``.
        invalid_sum: swaps refused because a log-density or gradient was not finite ``(K−1,)``.
        stones: the stepping-stone sums since the counters were reset.
        importance: importance-sampling sums of the fresh reference draws (an independent log Z).
        basin_hits: draws of the β = 1 replicas in each basin the mode search found ``(M,)``
            (``None`` without a search), since the search during warm-up, then since warm-up.
        count: steps taken in all (its parity chooses even or odd swaps).
        local_info: the last local step's `Info`, which the warm-up feeds to the local kernel.
    """

    local: State | None = None
    ladder: Tensor | None = None
    log_target: Tensor | None = None
    log_ref: Tensor | None = None
    grad_target: Tensor | None = None
    grad_ref: Tensor | None = None
    phase: Tensor | None = None
    round_trips: Tensor | None = None
    swap_sum: Tensor | None = None
    swap_count: Tensor | None = None
    pair_sum: Tensor | None = None
    invalid_sum: Tensor | None = None
    stones: SteppingStoneSums | None = None
    importance: ImportanceSums | None = None
    basin_hits: Tensor | None = None
    count: int = 0
    local_info: Info | None = None


@dataclass
class TemperingWarmup:
    local: Any  # the local kernel's warm-up state
    round: int  # rounds completed
    round_len: int  # steps in the current round
    in_round: int  # steps taken in the current round
    history: list[dict]  # per round: betas, rejection, barrier
    searched: bool = False  # the mode search has run


def swap_log_ratio(delta_beta: Tensor, ell_low: Tensor, ell_high: Tensor) -> Tensor:
    """Log acceptance ratio of swapping the replicas at ``β_k`` and ``β_{k+1}``:
    ``(β_{k+1} − β_k)(ℓ(x_k) − ℓ(x_{k+1}))`` with ``ℓ = log target − log reference``, each ``(K−1, n)``
    (``delta_beta`` broadcasts)."""
    return delta_beta * (ell_low - ell_high)


def _sample(reference, n: int, generator: torch.Generator | None) -> Tensor:
    """``n`` draws of the reference, without the log-density `independent.draw` also computes
    (the step evaluates the reference at them anyway, with its gradient)."""
    dist = resolve(reference)
    with torch.no_grad():
        if generator is None:
            return dist.sample((n,))
        cuda = generator.device.type == "cuda"
        with torch.random.fork_rng(devices=[generator.device] if cuda else []):
            if cuda:
                torch.cuda.set_rng_state(generator.get_state(), generator.device)
            else:
                torch.set_rng_state(generator.get_state())
            y = dist.sample((n,))
            generator.set_state(torch.cuda.get_rng_state(generator.device) if cuda
                                else torch.get_rng_state())
        return y


def _expand(t: Tensor, like: Tensor) -> Tensor:
    return t.view(*t.shape, *([1] * (like.ndim - t.ndim)))


class ParallelTempering(Kernel):
    """Non-reversible parallel tempering between ``reference`` (β = 0) and the target (β = 1).

    Args:
        log_prob: the target's batched unnormalized log-density ``(n, *event) -> (n,)``.
        reference: a normalized `torch.distributions.Distribution` over one event (``sample((n,))``
            gives ``(n, *event)``, ``log_prob`` gives ``(n,)``), broad enough to cover every mode;
            or a module whose call returns one (a flow). ``log_normalizer`` assumes it normalized.
        n_replicas: ``K``, replicas per chain; ``None`` chooses it from the barrier during warm-up
            (starting from 12).
        betas: an initial schedule ``(K,)`` from 0 to 1; default ``β_k = (k/(K−1))^3``, dense near
            the reference where a broad reference meets a narrow target.
        local: a factory ``log_prob -> Kernel`` for the local moves at ``β > 0``; it is called once
            with the tempered log-density of the whole ladder. Default: MALA with per-replica step
            sizes tuned in warm-up.
        local_step_size: initial step size of the default MALA.
        tune_schedule: tune the schedule during warm-up (rounds of 32, 64, 128, … steps).
        first_round: length of the first warm-up round.
        mode_search: starts of the mode search run at the first warm-up step (3/4 drawn from
            ``reference``, 1/4 around the chains; 600 steps of batched gradient ascent each, see
            `samplers.mode_search`); 0 turns it off. The basins it finds are used to build the
            reference (``adapt_reference``) and to check, after the run, that the β = 1 replicas
            visit every one of them (`check`).
        adapt_reference: temper from `ModeMixture` (a Gaussian mixture on the basins found, with
            share ``base_weight`` of ``reference``) instead of ``reference`` alone. Frozen after
            the search: the kernel stays exact at β = 1 and log Z stays valid.
        base_weight: the user reference's share of the adapted reference.

    After a run: ``kernel.betas`` ``(K,)``, ``kernel.swap_accept_rates`` ``(K−1,)``,
    ``kernel.barrier`` (Λ), ``kernel.round_trip_rate`` (round trips per chain per 1000 steps),
    ``kernel.log_normalizer()`` (``(log Z, SE)``) describe the post-warm-up draws;
    ``kernel.basins`` (what the mode search found), ``kernel.check()`` (warnings: basins the β = 1
    replicas do not visit, importance sampling finding more mass than stepping stone) and
    ``kernel.missing_mass`` (whether there are any) say whether to trust them. The same warnings
    are raised (`warnings.warn`) at the end of warm-up and by ``log_normalizer``.

    Example:
        >>> from torch.distributions import Independent, Normal
        >>> target = lambda x: torch.logsumexp(torch.stack(
        ...     [-0.5 * (x - 4).pow(2).sum(-1), -0.5 * (x + 4).pow(2).sum(-1)]), 0)
        >>> ref = Independent(Normal(torch.zeros(2), 6 * torch.ones(2)), 1)
        >>> kernel = ParallelTempering(target, ref, n_replicas=6)
        >>> import samplers
        >>> trace = samplers.sample(kernel, torch.zeros(4, 2), 200, warmup=100, progress=False)
        >>> trace.samples.shape, kernel.betas.shape
        (torch.Size([4, 200, 2]), torch.Size([6]))
    """

    def __init__(self, log_prob: LogProb, reference: Distribution | Callable[[], Distribution],
                 n_replicas: int | None = None, betas: Tensor | None = None,
                 local: KernelFactory | None = None, local_step_size: float = 0.1,
                 tune_schedule: bool = True, first_round: int = 32, mode_search: int = 1024,
                 adapt_reference: bool = True, base_weight: float = 0.1):
        check_log_prob_fn(log_prob)
        if isinstance(reference, Distribution):
            if not (hasattr(reference, "log_prob") and hasattr(reference, "sample")):
                raise TypeError("reference must have sample and log_prob")
        elif not callable(reference):
            raise TypeError(
                "reference must be a torch.distributions.Distribution with sample and log_prob (e.g. "
                "Independent(Normal(zeros(d), 5 * ones(d)), 1)) or a module whose call returns one; "
                f"got {type(reference).__name__}")
        check_step_size(local_step_size, "local_step_size")
        check_positive_int(first_round, "first_round", minimum=2)
        if n_replicas is not None:
            check_positive_int(n_replicas, "n_replicas", minimum=2)
        if betas is not None:
            betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
            if betas.numel() < 2:
                raise ValueError(f"betas must hold at least 2 inverse temperatures (K >= 2); "
                                 f"got {betas.numel()}")
            if not (betas[0] == 0 and betas[-1] == 1 and bool((betas.diff() > 0).all())):
                raise ValueError(f"betas must increase strictly from 0 to 1; got {betas.tolist()}")
            if n_replicas is not None and n_replicas != betas.numel():
                raise ValueError(f"n_replicas={n_replicas} but betas has {betas.numel()} entries")
        if not isinstance(mode_search, int) or isinstance(mode_search, bool) or mode_search < 0:
            raise ValueError(f"mode_search must be a number of starts >= 0 (0: no search); "
                             f"got {mode_search!r}")
        if not 0.0 < float(base_weight) < 1.0:
            raise ValueError(f"base_weight must lie in (0, 1); got {base_weight!r}")
        if local is not None and not callable(local):
            raise TypeError(f"local must be a factory log_prob -> Kernel; got {type(local).__name__}")
        self.log_prob = log_prob
        self.reference = reference
        self.user_reference = reference
        self.mode_search = mode_search
        self.adapt_reference = adapt_reference
        self.base_weight = float(base_weight)
        self.basins: Basins | None = None
        self.fixed_replicas = n_replicas is not None or betas is not None
        k = betas.numel() if betas is not None else (n_replicas or 12)
        self._betas = betas if betas is not None else torch.linspace(0, 1, k, dtype=torch.float64) ** 3
        self.tune_schedule = tune_schedule
        self.first_round = first_round
        self.local_step_size = local_step_size
        self.path = TemperedPath(log_prob, reference)
        self.local = (PathMALA(self.path, local_step_size) if local is None
                      else local(self.path.log_prob))
        if not isinstance(self.local, Kernel):
            raise TypeError(f"local(log_prob) must return a samplers Kernel; "
                            f"got {type(self.local).__name__}")
        self.history: list[dict] = []
        self.last_state: TemperingState | None = None

    @property
    def betas(self) -> Tensor:
        """The schedule ``(K,)`` (float64, CPU)."""
        return self._betas.clone()

    @property
    def n_replicas(self) -> int:
        return self._betas.numel()

    def _set_rows(self, n: int, like: Tensor) -> Tensor:
        """The schedule on the chains' device; the path's rows (slots 1..K−1) get their β's."""
        b = self._betas.to(device=like.device, dtype=like.dtype)
        self.path.row_beta = b[1:].repeat_interleave(n)
        return b

    def _check_reference(self, x: Tensor) -> None:
        dist = resolve(self.reference)
        with torch.no_grad(), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            y = dist.sample((2,))
            # The shape first: with argument validation off (torch's global switch), a reference
            # of the wrong shape fails inside log_prob with a broadcasting RuntimeError instead.
            if y.shape[1:] != x.shape[1:]:
                raise ValueError(f"the reference must draw events of the chains' shape "
                                 f"{tuple(x.shape[1:])}; it draws {tuple(y.shape[1:])} (a product "
                                 "of d Normals needs Independent(Normal(loc, scale), 1))")
            try:
                lp = dist.log_prob(x[:2])
            except NotImplementedError as e:
                raise TypeError(f"the reference ({type(dist).__name__}) must implement log_prob; "
                                "parallel tempering needs its density") from e
        if lp.shape != (min(2, x.shape[0]),):
            raise ValueError(f"reference.log_prob must return one value per chain; for x of shape "
                             f"{tuple(x[:2].shape)} it returned shape {tuple(lp.shape)} (wrap a "
                             "product of Normals in Independent(..., 1))")
        if y.dtype != x.dtype or y.device != x.device:
            raise TypeError(f"the reference must draw on the chains' dtype and device ({x.dtype}, "
                            f"{x.device}); it draws ({y.dtype}, {y.device})")

    # -- state ---------------------------------------------------------------------------------

    def _local_state(self, s: TemperingState, b: Tensor, step_size: Tensor | None) -> State:
        """The local kernel's state over slots 1..K−1, rebuilt from the ladder's components."""
        x = s.ladder[1:].reshape(-1, *s.ladder.shape[2:])
        lt, lr, gt, gr = (None if t is None else t[1:].reshape(-1, *t.shape[2:])
                          for t in (s.log_target, s.log_ref, s.grad_target, s.grad_ref))
        rows = self.path.row_beta
        if isinstance(s.local, PathState) or (s.local is None and isinstance(self.local, PathMALA)):
            return path_state(rows, x, lt, lr, gt, gr, step_size)
        g = None if gt is None else mix(event_view(rows, x), gr, gt)
        base = s.local if s.local is not None else State(x, mix(rows, lr, lt), g, step_size)
        return base.replace(x=x, log_prob=mix(rows, lr, lt), grad=g, step_size=step_size)

    def _fresh_counters(self, s: TemperingState, hits: bool = True) -> TemperingState:
        """Counters reset; the basin visits too unless ``hits`` is False (between warm-up rounds
        they keep counting, so the end of warm-up can check them)."""
        k, n = s.log_target.shape
        dev = s.log_target.device
        z = torch.zeros(k - 1, dtype=torch.float64, device=dev)
        basin_hits = s.basin_hits
        if hits or basin_hits is None:
            basin_hits = (None if self.basins is None
                          else torch.zeros(self.basins.n, dtype=torch.int64, device=dev))
        return s.replace(round_trips=torch.zeros(n, dtype=torch.int64, device=dev),
                         phase=torch.zeros(k, n, dtype=torch.int8, device=dev),
                         swap_sum=z, swap_count=z.clone(), invalid_sum=z.clone(),
                         pair_sum=torch.zeros(k - 1, n, dtype=torch.float64, device=dev),
                         stones=SteppingStoneSums.zeros(k - 1, n, dev),
                         importance=ImportanceSums.zeros(n, dev), basin_hits=basin_hits)

    def init(self, x: Tensor) -> TemperingState:
        x = check_positions(x)
        self._check_reference(x)
        n, k = x.shape[0], self.n_replicas
        # Slot 0 is redrawn from the reference at every step before any swap, so it can start at
        # x0 like the others (init takes no generator, and must not touch the global RNG).
        ladder = x.unsqueeze(0).expand(k, *x.shape).clone()
        b = self._set_rows(n, x)
        local = self.local.init(ladder[1:].reshape(-1, *x.shape[1:]))
        lt, lr, gt, gr = self.path.components(x, local.grad is not None)

        def rep(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.unsqueeze(0).expand(k, *t.shape).clone()

        s = TemperingState(x=x, log_prob=lt, ladder=ladder, log_target=rep(lt), log_ref=rep(lr),
                           grad_target=rep(gt), grad_ref=rep(gr), local=local)
        s = self._fresh_counters(s)
        s.local = self._local_state(s, b, local.step_size)
        self.last_state = s
        return s

    # -- one step ------------------------------------------------------------------------------

    def step(self, state: TemperingState, generator: torch.Generator | None = None
             ) -> tuple[TemperingState, Info]:
        s = state
        k, n = s.log_target.shape
        event = s.ladder.shape[2:]
        b = self._set_rows(n, s.x)
        grad = s.grad_target is not None
        if isinstance(self.local, PathMALA) and isinstance(s.local, PathState):
            # Slot 0's fresh draws are evaluated in the local step's batch (one call, one backward).
            fresh = _sample(self.reference, n, generator)
            local, linfo, c0 = self.local.step_with(s.local, generator, fresh)
        else:
            local, linfo = self.local.step(s.local, generator)
            fresh = _sample(self.reference, n, generator)
            c0 = self.path.components(fresh, grad) if isinstance(local, PathState) else None
        ladder = torch.cat([fresh.unsqueeze(0), local.x.view(k - 1, n, *event)])
        if isinstance(local, PathState):  # the local kernel kept the components: slot 0's are c0
            cl = (local.log_target, local.log_ref, local.grad_target, local.grad_ref)
            lt, lr, gt, gr = (None if a is None else torch.cat([a.unsqueeze(0), r.view(k - 1, *a.shape)])
                              for a, r in zip(c0, cl, strict=True))
        else:
            lt, lr, gt, gr = self.path.components(ladder.reshape(-1, *event), grad)
            lt, lr = lt.view(k, n), lr.view(k, n)
            gt = None if gt is None else gt.view(ladder.shape)
            gr = None if gr is None else gr.view(ladder.shape)

        # DEO swaps: pairs (k, k+1) with k of the step's parity, all at once.
        ell = lt - lr
        importance = s.importance.add(ell[0])  # slot 0 is a fresh reference draw until the swaps
        db = (b[1:] - b[:-1]).unsqueeze(1)  # (K−1, 1)
        log_ratio = swap_log_ratio(db, ell[:-1], ell[1:])
        ok = torch.isfinite(ell)
        if gt is not None:
            # A replica must never land where its gradient is not finite (its local step would be
            # NaN forever after): such a swap is a rejection, counted as invalid.
            ok = ok & torch.isfinite(gt).flatten(2).all(2) & torch.isfinite(gr).flatten(2).all(2)
        log_ratio = torch.where(ok[:-1] & ok[1:], log_ratio, torch.nan)
        active = (torch.arange(k - 1, device=s.x.device) % 2 == s.count % 2).unsqueeze(1)
        acc, prob, bad = mh_accept(log_ratio.reshape(-1), generator)
        acc = acc.view(k - 1, n) & active
        prob = torch.where(active, prob.view(k - 1, n), 0.0)
        bad = bad.view(k - 1, n) * active

        up = torch.zeros(k, n, dtype=torch.long, device=s.x.device)
        up[:-1] += acc.long()
        up[1:] -= acc.long()
        perm = torch.arange(k, device=s.x.device).unsqueeze(1) + up  # slot k takes slot perm[k]

        def permute(t: Tensor | None) -> Tensor | None:
            if t is None:
                return None
            return torch.gather(t, 0, perm.view(k, n, *([1] * (t.ndim - 2))).expand_as(t))

        ladder, lt, lr, gt, gr, phase = map(permute, (ladder, lt, lr, gt, gr, s.phase))
        # Round trips: a replica arriving at the reference after reaching the target completes one.
        round_trips = s.round_trips + (phase[0] == 2).long()
        phase = phase.clone()
        phase[0] = 1
        phase[-1] = torch.where(phase[-1] == 1, 2, phase[-1]).to(phase.dtype)
        pair_sum = s.pair_sum + prob.double()
        swap_count = s.swap_count + active.squeeze(1).double() * n
        extras = {"swap_accept": prob.sum(0) / active.sum().clamp_min(1),
                  # Per pair (chains, K−1): each chain's mean swap acceptance probability of that
                  # pair since warm-up (or the round's start), like the cumulative round trips.
                  "swap_accept_pairs": (pair_sum / (swap_count / n).clamp_min(1).unsqueeze(1)
                                        ).T.to(s.x.dtype),
                  "round_trips": round_trips.to(s.x.dtype)}
        basin_hits = s.basin_hits
        if self.basins is not None and basin_hits is not None:
            where = self.basins.assign(ladder[-1])
            basin_hits = basin_hits + torch.bincount(where, minlength=self.basins.n)
            extras["basin"] = where.to(s.x.dtype)

        new = TemperingState(x=ladder[-1], log_prob=lt[-1], ladder=ladder, log_target=lt,
                             log_ref=lr, grad_target=gt, grad_ref=gr, phase=phase,
                             round_trips=round_trips,
                             swap_sum=s.swap_sum + prob.double().sum(1),
                             swap_count=swap_count, pair_sum=pair_sum,
                             invalid_sum=s.invalid_sum + bad.double().sum(1),
                             stones=s.stones.add(db.squeeze(1), lt - lr), importance=importance,
                             basin_hits=basin_hits, count=s.count + 1, local=local, local_info=linfo)
        new.local = self._local_state(new, b, local.step_size)
        top = slice((k - 2) * n, (k - 1) * n)
        invalid = linfo.invalid.view(k - 1, n).sum(0) + bad.sum(0).to(torch.int32)
        info = Info(linfo.accept_prob[top], linfo.accepted[top] | acc[-1],
                    None if linfo.step_size is None else linfo.step_size[top],
                    invalid.to(torch.int32), extras)
        self.last_state = new
        return new, info

    # -- warm-up -------------------------------------------------------------------------------

    def warmup_init(self, state: TemperingState) -> TemperingWarmup:
        return TemperingWarmup(self.local.warmup_init(state.local), 0, self.first_round, 0, [])

    def warmup_update(self, wstate: TemperingWarmup, state: TemperingState, info: Info,
                      generator: torch.Generator | None = None
                      ) -> tuple[TemperingWarmup, TemperingState]:
        if not wstate.searched:
            wstate.searched = True
            if self.mode_search:
                state = self._search(state, generator)
                wstate.local = self.local.warmup_init(state.local)
                wstate.in_round = 0
                return wstate, state
        wstate.local, local = self.local.warmup_update(wstate.local, state.local, state.local_info,
                                                       generator)
        state = state.replace(local=local)
        wstate.in_round += 1
        if wstate.in_round < wstate.round_len or not self.tune_schedule:
            return wstate, state
        # End of a round: a new schedule from this round's rejection rates, then a fresh round.
        rejection = (1.0 - state.swap_sum / state.swap_count.clamp_min(1)).cpu().numpy()
        old = self._betas.numpy()
        barrier = float(rejection.sum())
        k = self.n_replicas
        if not self.fixed_replicas and wstate.round < 3:
            k = replicas_for_barrier(barrier)
        new_betas = torch.as_tensor(optimal_schedule(old, rejection, k), dtype=torch.float64)
        wstate.history.append({"betas": old.tolist(), "rejection": rejection.tolist(),
                               "barrier": barrier, "steps": wstate.round_len})
        state = self._reschedule(state, new_betas)
        wstate.local = self.local.warmup_init(state.local)
        wstate.round += 1
        wstate.round_len *= 2
        wstate.in_round = 0
        return wstate, state

    def _reschedule(self, s: TemperingState, new_betas: Tensor) -> TemperingState:
        """Move the ladder onto ``new_betas``: each new slot takes the positions of the old slot
        with the nearest β, and a step size interpolated in log scale over β."""
        old = self._betas
        k, n = s.log_target.shape
        src = (new_betas.unsqueeze(1) - old.unsqueeze(0)).abs().argmin(1)
        src[0], src[-1] = 0, k - 1
        src = src.to(s.x.device)

        def take(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[src].clone()

        h = s.local.step_size
        new_h = None
        if h is not None:
            log_h = h.view(k - 1, n).log().double().cpu().numpy()
            ob, nb = old[1:].numpy(), new_betas[1:].numpy()
            interp = np.stack([np.interp(nb, ob, log_h[:, c]) for c in range(n)], 1)
            new_h = torch.as_tensor(np.exp(interp), dtype=h.dtype, device=h.device).reshape(-1)
        self._betas = new_betas
        t = s.replace(ladder=take(s.ladder), log_target=take(s.log_target), log_ref=take(s.log_ref),
                      grad_target=take(s.grad_target), grad_ref=take(s.grad_ref))
        t = self._fresh_counters(t, hits=False)
        b = self._set_rows(n, s.x)
        t.local = self._local_state(t, b, new_h)
        self.last_state = t
        return t

    def warmup_final(self, wstate: TemperingWarmup, state: TemperingState) -> TemperingState:
        self.history = wstate.history
        for message in self._unvisited(state, "during warm-up"):
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        local = self.local.warmup_final(wstate.local, state.local)
        state = self._fresh_counters(state.replace(local=local))
        self.last_state = state
        return state

    # -- the mode search -----------------------------------------------------------------------

    def _search(self, state: TemperingState, generator: torch.Generator | None) -> TemperingState:
        """Find the basins from 3/4 reference draws and 1/4 draws around the chains (twice their
        spread); with ``adapt_reference`` the ladder is then moved onto `ModeMixture`."""
        x1 = state.ladder[-1]
        n, event = x1.shape[0], x1.shape[1:]
        n_ref = self.mode_search - self.mode_search // 4
        ref_draws = draw(self.user_reference, (n_ref,), generator)[0]
        flat = x1.reshape(n, -1)
        max_scale = float(ref_draws.reshape(n_ref, -1).std(0).max())
        sd = (flat.std(0) if n > 1 else torch.zeros_like(flat[0])).clamp_min(1e-2 * max_scale)
        noise = torch.randn(self.mode_search // 4, flat.shape[1], generator=generator,
                            device=flat.device, dtype=flat.dtype)
        near = (flat.mean(0) + 2 * sd * noise).view(-1, *event)
        starts = torch.cat([ref_draws, near])
        try:
            self.basins = find_basins(self.log_prob, starts, max_scale)
        except RuntimeError as e:  # a target autograd cannot differentiate
            warnings.warn(f"the mode search needs the target's gradient and could not get it "
                          f"({e}); tempering from the reference alone, without the basin check "
                          "(pass mode_search=0 to silence this)", RuntimeWarning, stacklevel=3)
            return state
        if self.basins is None:
            warnings.warn("the mode search found no finite optimum: tempering from the reference "
                          "alone, without the basin check", RuntimeWarning, stacklevel=3)
            return state
        if self.adapt_reference:
            self._use_basins()
        return self._recompute(state)

    def _use_basins(self) -> None:
        self.reference = ModeMixture(self.basins, self.user_reference, self.base_weight)
        self.path.reference = self.reference

    def _recompute(self, s: TemperingState) -> TemperingState:
        """Both log-densities of the whole ladder again (after the reference changed), counters
        reset, the local state rebuilt with its step sizes."""
        k, n = s.log_target.shape
        event = s.ladder.shape[2:]
        grad = s.grad_target is not None
        lt, lr, gt, gr = self.path.components(s.ladder.reshape(-1, *event), grad)
        t = s.replace(log_target=lt.view(k, n), log_ref=lr.view(k, n),
                      grad_target=None if gt is None else gt.view(s.ladder.shape),
                      grad_ref=None if gr is None else gr.view(s.ladder.shape))
        t = self._fresh_counters(t)
        t.local = self._local_state(t, self._set_rows(n, s.x), s.local.step_size)
        self.last_state = t
        return t

    # -- is the answer trustworthy -------------------------------------------------------------

    def _unvisited(self, s: TemperingState, when: str) -> list[str]:
        """A basin the search found (a proper mode, Laplace weight >= 0.01) in which the β = 1
        replicas spent less than a tenth of its Laplace weight."""
        if self.basins is None or s.basin_hits is None:
            return []
        hits = s.basin_hits.double().cpu()
        total = float(hits.sum())
        if total == 0:
            return []
        w = self.basins.weights.double().cpu()
        frac = hits / total
        bad = self.basins.proper.cpu() & (w >= 0.01) & (frac < 0.1 * w)
        if not bool(bad.any()):
            return []
        idx = bad.nonzero().flatten().tolist()
        where = ", ".join(f"basin {i} (Laplace weight {float(w[i]):.3f}, β = 1 share "
                          f"{float(frac[i]):.4f}, at {self._short(i)})" for i in idx)
        return [f"parallel tempering: the mode search found basins the β = 1 replicas do not "
                f"populate {when}: {where}. Mode weights and log Z miss their mass; tempering "
                "from the found modes (adapt_reference=True) or a longer run may help."]

    def _short(self, i: int) -> str:
        loc = self.basins.loc[i].cpu()
        top = loc.abs().argsort(descending=True)[:3].tolist()
        coords = ", ".join(f"x[{j}] = {float(loc[j]):.2f}" for j in sorted(top))
        return coords + (", others smaller" if loc.numel() > 3 else "")

    def check(self, state: TemperingState | None = None) -> list[str]:
        """Warnings about the post-warm-up draws, empty if there is no evidence of mass the
        ladder misses: (1) a basin the mode search found that the β = 1 replicas populate at less
        than a tenth of its Laplace weight; (2) importance sampling from the reference
        (`importance_log_normalizer`) finding more mass than stepping stone by over 4 combined SEs
        (and over 0.05)."""
        s = self._state(state)
        messages = self._unvisited(s, "after warm-up")
        if s.importance is not None and s.importance.steps > 0:
            lz_is, se_is = s.importance.estimate()
            lz_ss, se_ss = s.stones.estimate()
            gap = lz_is - lz_ss
            tol = 4 * math.sqrt(se_is**2 + se_ss**2)
            if math.isfinite(gap) and math.isfinite(tol) and gap > max(tol, 0.05):
                messages.append(
                    f"parallel tempering: importance sampling from the reference gives log Z = "
                    f"{lz_is:.3f} ± {se_is:.3f}, stepping stone {lz_ss:.3f} ± {se_ss:.3f}: the "
                    "reference finds mass the β = 1 replicas do not reach; mode weights and log Z "
                    "from the ladder are not to be trusted.")
        return messages

    @property
    def missing_mass(self) -> bool:
        """True when `check` has a warning about the post-warm-up draws."""
        return bool(self.check())

    def importance_log_normalizer(self, state: TemperingState | None = None,
                                  chains: Tensor | slice | None = None) -> tuple[float, float]:
        """``(log Z, SE)`` by importance sampling from the reference's fresh draws at β = 0 since
        warm-up: independent of the ladder, good when the (adapted) reference is close to the
        target, low (never high, on average) when it misses mass."""
        return self._state(state).importance.estimate(chains)

    def params_state_dict(self) -> dict[str, Any]:
        out = super().params_state_dict()
        if self.basins is not None:
            out["basins"] = {k: v.detach().clone() for k, v in self.basins.to_plain().items()}
        return out

    def load_params_state_dict(self, saved: dict[str, Any]) -> bool:
        restored = super().load_params_state_dict(saved)
        if "basins" in saved:
            self.basins = Basins(**saved["basins"])
            if self.adapt_reference:
                self._use_basins()
            restored = True
        return restored

    # -- what the run measured -----------------------------------------------------------------

    def _state(self, state: TemperingState | None) -> TemperingState:
        s = state if state is not None else self.last_state
        if s is None:
            raise RuntimeError("no run yet: call samplers.sample(kernel, x0, ...) first")
        return s

    def swap_accept_rates(self, state: TemperingState | None = None) -> Tensor:
        """Mean swap acceptance probability of each neighbouring pair ``(K−1,)`` since warm-up."""
        s = self._state(state)
        return (s.swap_sum / s.swap_count.clamp_min(1)).cpu()

    @property
    def barrier(self) -> float:
        """The global communication barrier Λ: the sum of the pairs' swap rejection rates."""
        return float((1.0 - self.swap_accept_rates()).sum())

    @property
    def round_trip_rate(self) -> float:
        """Round trips (reference → target → reference) per chain per 1000 steps since warm-up."""
        s = self._state(None)
        return 1000.0 * float(s.round_trips.double().mean()) / max(s.stones.steps, 1)

    def log_normalizer(self, state: TemperingState | None = None,
                       chains: Tensor | slice | None = None) -> tuple[float, float]:
        """``(log Z, standard error)`` of the target by stepping stone (see
        `samplers.stepping_stone`), relative to the reference, which must be normalized, from the
        draws since warm-up. ``chains`` selects a subset of the chains (independent ladders), e.g.
        to check the error bar over repeats. The SE is NaN with fewer than 16 (block, chain) units.
        """
        for message in self.check(state):
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        return self._state(state).stones.estimate(chains)

    def __repr__(self) -> str:
        return (f"ParallelTempering(n_replicas={self.n_replicas}, local={self.local!r}, "
                f"reference={type(self.reference).__name__})")

"""FlowMC: local MCMC steps interleaved with global moves proposed by a normalizing flow that
learns from the chains (Gabrié, Rotskoff & Vanden-Eijnden 2022; Wong, Gabrié & Foreman-Mackey 2023).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ._checks import check_log_prob_fn, check_positive_int, check_step_size
from .base import Info, Kernel, LogProb, State
from .independent import (
    ISIR,
    IndependentMH,
    Proposal,
    check_proposal,
    check_proposal_matches,
    resolve,
)
from .mala import MALA


@dataclass
class FlowMCWarmup:
    local: object  # the local kernel's own warm-up state
    replay: Tensor | None  # (replay_steps, n, *event) ring buffer of chain positions
    filled: int  # how many slots of the ring buffer hold positions
    count: int  # warm-up steps seen
    optimizer: torch.optim.Optimizer | None
    losses: list[Tensor]  # the flow's training loss per optimizer step, kept on device


class FlowMC(Kernel):
    """``n_local`` local steps, then ``n_global`` global moves from a normalizing flow.

    The local kernel (MALA by default) explores within a mode; the flow proposes jumps between
    modes through independent MH (``global_move="imh"``) or i-SIR (``"isir"``, ``n_particles`` per
    chain), both exact for any fixed flow. During warm-up (`samplers.sample` with ``warmup > 0``)
    the local step sizes are tuned and the flow is trained by maximum likelihood on a replay window
    of the chains' recent positions; after warm-up both are frozen, so production draws come from
    a fixed Markov kernel that leaves the target invariant.

    After warm-up, ``kernel.flow_losses`` holds the flow's negative log-likelihood on the replay
    window at each optimizer step (CPU tensor), to check that the flow learned.

    One `step` is one cycle. Its `Info` reports the global move (``accept_prob``, ``accepted``) and,
    in ``extras``, ``local_accept_prob`` and ``global_accept_prob`` (and ``isir_ess`` for i-SIR).

    Args:
        log_prob: batched unnormalized log-density ``(n, *event) -> (n,)``.
        flow: a module whose call returns a `Distribution` (a zuko flow), or a fixed `Distribution`
            (then ``train`` must be False).
        local: the local kernel; default ``MALA(log_prob, local_step_size)``.
        n_local: local steps per cycle.
        global_move: ``"isir"`` or ``"imh"``.
        n_global: global moves per cycle.
        n_particles: i-SIR proposals per chain.
        train: train the flow during warm-up.
        flow_lr: Adam learning rate for the flow.
        train_steps: optimizer steps per warm-up cycle.
        batch_size: positions per optimizer step, drawn from the replay window.
        replay_steps: how many recent cycles of positions the replay window keeps.
        local_step_size: initial step size of the default MALA.

    Example:
        >>> import zuko
        >>> target = lambda x: -0.5 * x.pow(2).sum(-1)
        >>> kernel = FlowMC(target, zuko.flows.RealNVP(2, transforms=2), n_local=2)
        >>> state, info = kernel.step(kernel.init(torch.randn(16, 2)))
        >>> sorted(info.extras)
        ['global_accept_prob', 'isir_ess', 'local_accept_prob']
    """

    def __init__(self, log_prob: LogProb, flow: Proposal, local: Kernel | None = None,
                 n_local: int = 4, global_move: str = "isir", n_global: int = 1,
                 n_particles: int = 16, train: bool = True, flow_lr: float = 1e-3,
                 train_steps: int = 1, batch_size: int = 1024, replay_steps: int = 32,
                 local_step_size: float = 0.01):
        check_log_prob_fn(log_prob)
        check_proposal(flow)
        check_positive_int(n_local, "n_local", minimum=0)
        check_positive_int(n_global, "n_global", minimum=0)
        for value, name in [(train_steps, "train_steps"), (batch_size, "batch_size"),
                            (replay_steps, "replay_steps")]:
            check_positive_int(value, name)
        check_step_size(flow_lr, "flow_lr")
        if global_move not in ("isir", "imh"):
            raise ValueError(f"global_move must be 'isir' or 'imh'; got {global_move!r}")
        if local is not None and not isinstance(local, Kernel):
            raise TypeError(f"local must be a samplers Kernel; got {type(local).__name__}")
        if train and not (isinstance(flow, nn.Module) and any(True for _ in flow.parameters())):
            raise TypeError("train=True needs a flow that is an nn.Module with parameters; "
                            f"got {type(flow).__name__} (pass train=False for a fixed proposal)")
        self.log_prob = log_prob
        self.flow = flow
        self.local = local if local is not None else MALA(log_prob, local_step_size)
        self.n_local, self.n_global = n_local, n_global
        self.global_move = global_move
        self.globl = (ISIR(log_prob, flow, n_particles) if global_move == "isir"
                      else IndependentMH(log_prob, flow))
        self.train = train
        self.flow_lr, self.train_steps = flow_lr, train_steps
        self.batch_size, self.replay_steps = batch_size, replay_steps
        self.flow_losses: Tensor | None = None
        self._matched: tuple | None = None

    def init(self, x: Tensor) -> State:
        state = self.local.init(x)
        self._matched = check_proposal_matches(self.flow, state.x, self._matched)
        return state

    def step(self, state: State, generator: torch.Generator | None = None) -> tuple[State, Info]:
        zero = torch.zeros_like(state.log_prob)
        local_acc, global_acc, ess = zero, zero, zero
        invalid = torch.zeros(state.x.shape[0], dtype=torch.int32, device=state.x.device)
        accepted = torch.zeros_like(invalid, dtype=torch.bool)
        for _ in range(self.n_local):
            state, info = self.local.step(state, generator)
            local_acc = local_acc + info.accept_prob
            invalid = invalid + info.invalid
        for _ in range(self.n_global):
            state, info = self.globl.step(state, generator)
            global_acc = global_acc + info.accept_prob
            accepted = accepted | info.accepted
            invalid = invalid + info.invalid
            if "isir_ess" in info.extras:
                ess = ess + info.extras["isir_ess"]
        extras = {"local_accept_prob": local_acc / max(self.n_local, 1),
                  "global_accept_prob": global_acc / max(self.n_global, 1)}
        if self.global_move == "isir":
            extras["isir_ess"] = ess / max(self.n_global, 1)
        info = Info(extras["global_accept_prob"], accepted, state.step_size, invalid, extras)
        return state, info

    def warmup_init(self, state: State) -> FlowMCWarmup:
        optimizer = (torch.optim.Adam(self.flow.parameters(), lr=self.flow_lr) if self.train
                     else None)
        replay = (state.x.new_empty((self.replay_steps, *state.x.shape)) if self.train else None)
        return FlowMCWarmup(self.local.warmup_init(state), replay, 0, 0, optimizer, [])

    def warmup_update(self, wstate: FlowMCWarmup, state: State, info: Info,
                      generator: torch.Generator | None = None) -> tuple[FlowMCWarmup, State]:
        if self.n_local > 0:
            local_info = Info(info.extras["local_accept_prob"], info.accepted, info.step_size,
                              info.invalid)
            wstate.local, state = self.local.warmup_update(wstate.local, state, local_info,
                                                           generator)
        if self.train:
            wstate.replay[wstate.count % self.replay_steps] = state.x
            wstate.filled = min(wstate.filled + 1, self.replay_steps)
            for _ in range(self.train_steps):
                wstate.losses.append(self.fit_step(wstate, state, generator))
        wstate.count += 1
        return wstate, state

    def fit_step(self, wstate: FlowMCWarmup, state: State,
                 generator: torch.Generator | None = None) -> Tensor:
        """One maximum-likelihood step of the flow on a minibatch of the replay window."""
        pool = wstate.replay[: wstate.filled].reshape(-1, *state.x.shape[1:])
        idx = torch.randint(0, pool.shape[0], (min(self.batch_size, pool.shape[0]),),
                            device=pool.device, generator=generator)
        loss = -resolve(self.flow).log_prob(pool[idx]).mean()
        wstate.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # A non-finite loss (a far outlier early in warm-up) must not poison the flow, and checking
        # it would cost a host sync: zero such gradients instead.
        params = [p for p in self.flow.parameters() if p.grad is not None]
        for p in params:
            p.grad.nan_to_num_(0.0, 0.0, 0.0)
        nn.utils.clip_grad_norm_(params, 10.0)
        wstate.optimizer.step()
        return loss.detach()

    def warmup_final(self, wstate: FlowMCWarmup, state: State) -> State:
        if wstate.losses:
            self.flow_losses = torch.stack(wstate.losses).cpu()
        return self.local.warmup_final(wstate.local, state)

    def params_state_dict(self) -> dict:
        return {**super().params_state_dict(), "flow_losses": self.flow_losses}

    def load_params_state_dict(self, saved: dict) -> bool:
        reshaped = super().load_params_state_dict(saved)
        self.flow_losses = saved.get("flow_losses")
        return reshaped

    def load_warmup_state_dict(self, saved, state: State) -> FlowMCWarmup:
        wstate = super().load_warmup_state_dict(saved, state)
        wstate.losses = [loss.to(state.x.device) for loss in wstate.losses]
        return wstate

    def __repr__(self) -> str:
        return (f"FlowMC(local={self.local!r}, n_local={self.n_local}, "
                f"global_move={self.global_move!r}, n_global={self.n_global})")

"""The two gradient steps of one `JointTrainer` iteration and the record they leave.

- `energy_step`: one Adam step of the EBM on the contrastive loss ``mean E(x⁺) − mean E(x⁻)
  [+ α (mean E⁺² + mean E⁻²)]`` of a data batch and the (detached) negatives;
- `flow_step`: one Adam step of the flow on its negative log-likelihood of the negatives or of
  the data (what the method's ``flow_fits`` says);
- `iteration_record`: what the iteration leaves for ``history_`` and the divergence guard.

Nothing here reads a value on the host: every number stays a device tensor until the next check
(see `flowmc_ebm.training.guard`).

Example:
    >>> energy = MLPEnergy(2, (8,))
    >>> opt = torch.optim.Adam(energy.parameters(), lr=1e-2)
    >>> step = energy_step(energy, opt, torch.randn(4, 2), torch.randn(6, 2), energy_l2=0.0)
    >>> step.e_pos.shape, step.e_neg.shape, step.grad_norm.shape
    (torch.Size([4]), torch.Size([6]), torch.Size([]))
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import zuko
from torch import Tensor, nn

from flowmc_ebm.energies import MLPEnergy  # noqa: F401  (the doctest above uses it)
from flowmc_ebm.objectives.contrastive import ContrastiveTerms, contrastive_loss, flow_nll
from flowmc_ebm.training import guard

__all__ = ["EnergyStep", "FlowStep", "energy_step", "flow_step", "iteration_record"]


class EnergyStep(NamedTuple):
    """What `energy_step` computed: the loss terms, the energies ``(n⁺,)``, ``(n⁻,)`` and both
    together ``(n⁺ + n⁻,)``, and the gradient norm before the step (all on the device)."""

    terms: ContrastiveTerms
    e_pos: Tensor
    e_neg: Tensor
    energies: Tensor
    grad_norm: Tensor


class FlowStep(NamedTuple):
    """What `flow_step` computed: the flow's NLL of the batch and of the negatives, the loss it
    stepped on (one of the two) and its gradient norm (all on the device)."""

    nll_data: Tensor
    nll_neg: Tensor
    loss: Tensor
    grad_norm: Tensor


def energy_step(energy: nn.Module, opt: torch.optim.Optimizer, batch: Tensor,
                negatives: Tensor, energy_l2: float) -> EnergyStep:
    """One Adam step of ``energy`` on the contrastive loss of ``batch`` ``(n⁺, dim)`` against
    ``negatives`` ``(n⁻, dim)``."""
    # One forward pass for both sets: the same network, so the same cost as two.
    energies = energy(torch.cat([batch, negatives]))
    e_pos, e_neg = energies[:batch.shape[0]], energies[batch.shape[0]:]
    terms = contrastive_loss(e_pos, e_neg, energy_l2)
    opt.zero_grad(set_to_none=True)
    terms.loss.backward()
    norm = guard.grad_norm(energy)
    opt.step()
    return EnergyStep(terms, e_pos, e_neg, energies, norm)


def flow_step(flow: zuko.lazy.Flow, opt: torch.optim.Optimizer, batch: Tensor,
              negatives: Tensor, fits: str) -> FlowStep:
    """One Adam step of ``flow`` on its NLL of ``fits`` (``"negatives"`` or ``"data"``); the
    NLL of both sets is computed in one pass and recorded."""
    nll_data, nll_neg = flow_nll(flow, batch, negatives)
    loss = nll_data if fits == "data" else nll_neg
    opt.zero_grad(set_to_none=True)
    loss.backward()
    norm = guard.grad_norm(flow)
    opt.step()
    return FlowStep(nll_data, nll_neg, loss, norm)


def iteration_record(e: EnergyStep, f: FlowStep, local: Tensor, globl: Tensor,
                     negatives: Tensor, target: Any = None) -> dict[str, Any]:
    """The iteration's entries of ``history_`` (device scalars, flushed at the next check), its
    ``guard`` record, and with a ``target`` the share of the negatives in each of its modes."""
    record = {"loss_energy": e.terms.loss.detach(), "energy_gap": e.terms.gap.detach(),
              "energy_pos": e.e_pos.detach().mean(), "energy_neg": e.e_neg.detach().mean(),
              "flow_nll_neg": f.nll_neg.detach(), "flow_nll_data": f.nll_data.detach(),
              "local_accept": local, "global_accept": globl,
              "guard": guard.record(e.e_pos, e.e_neg, e.energies, e.grad_norm, f.loss,
                                    f.grad_norm, negatives)}
    if target is not None:
        labels = target.assign(negatives)
        record["neg_mode_weights"] = torch.bincount(
            labels, minlength=target.n_modes).to(negatives.dtype) / labels.shape[0]
    return record

"""The divergence guard: device-side records, their one-transfer check, snapshot and restart.

Every iteration stacks a few numbers on the device (`record`): the EBM's ``|mean E|``, both
gradient norms, the flow's loss, whether energies and chains are finite. Nothing is read on the
host until a check (`first_bad`, one transfer for all pending iterations). A record out of range
sends the trainer back to its last good `snapshot` with lower learning rates (`restart`), or
raises `TrainingDivergedError` once ``max_restarts`` are spent. A kernel that meets a NaN it
cannot reject raises `samplers.NonFiniteError`; the trainer treats it as a divergence
(`is_divergence`), by type, never by message text.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn

import samplers
from flowmc_ebm.training.schedule import scheduled_rates, set_rate

__all__ = ["COLUMNS", "TrainingDivergedError", "first_bad", "grad_norm", "is_divergence",
           "reason", "record", "refuse_non_finite", "restart", "restore", "snapshot"]

#: Columns of one iteration's guard record (kept on the device until a check).
COLUMNS = ("abs_mean_energy", "energy_grad_norm", "flow_loss", "flow_grad_norm",
           "energies_finite", "negatives_finite")


class TrainingDivergedError(RuntimeError):
    """The EBM kept diverging after ``max_restarts`` restarts from its last good state.

    The trainer is left at that last good state (finite, saveable); the message says at which
    iteration, what went out of range, and what to try.
    """


def grad_norm(module: nn.Module) -> Tensor:
    """The 2-norm of all of ``module``'s gradients, on the device (no host sync)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros((), device=next(module.parameters()).device)
    return torch.nn.utils.get_total_norm(grads, error_if_nonfinite=False)


def record(e_pos: Tensor, e_neg: Tensor, energies: Tensor, energy_grad_norm: Tensor,
           flow_loss: Tensor, flow_grad_norm: Tensor, negatives: Tensor) -> Tensor:
    """One iteration's guard record, a float64 ``(len(COLUMNS),)`` tensor on the device."""
    return torch.stack([v.to(torch.float64) for v in (
        torch.maximum(e_pos.detach().mean().abs(), e_neg.detach().mean().abs()),
        energy_grad_norm, flow_loss.detach(), flow_grad_norm,
        torch.isfinite(energies.detach()).all(), torch.isfinite(negatives).all())])


def is_divergence(err: BaseException) -> bool:
    """A sampler refusing non-finite chains or log-densities: the model diverged."""
    return isinstance(err, samplers.NonFiniteError)


def reason(g: dict[str, float], config) -> str | None:
    """What went out of range in one iteration's guard record, or None."""
    if not g["energies_finite"] or not math.isfinite(g["abs_mean_energy"]):
        return "the energies are NaN or infinite"
    if g["abs_mean_energy"] > config.max_abs_energy:
        return (f"|mean energy| = {g['abs_mean_energy']:.4g} exceeds trainer.max_abs_energy"
                f" = {config.max_abs_energy:.4g}")
    if not math.isfinite(g["energy_grad_norm"]):
        return "the energy's gradient is NaN or infinite"
    if g["energy_grad_norm"] > config.max_grad_norm:
        return (f"the energy's gradient norm {g['energy_grad_norm']:.4g} exceeds "
                f"trainer.max_grad_norm = {config.max_grad_norm:.4g}")
    if not (math.isfinite(g["flow_loss"]) and math.isfinite(g["flow_grad_norm"])):
        return "the flow's loss or gradient is NaN or infinite"
    if not g["negatives_finite"]:
        return "the chains (negatives) hold NaN or infinite values"
    return None


def first_bad(trainer) -> tuple[int, str] | None:
    """The first pending iteration out of range (or the current state, if its parameters or
    chains hold NaN/inf) and why, or None; one host transfer."""
    k = len(COLUMNS)
    pending = trainer._pending
    guard = (torch.stack([r["guard"] for r in pending]) if pending
             else torch.zeros((0, k), dtype=torch.float64, device=trainer.device))
    params_finite = torch.stack([torch.isfinite(p).all() for p in trainer._parameters()]).all()
    pool_finite = (torch.isfinite(trainer.pool_).all() if trainer.pool_ is not None
                   else torch.ones((), dtype=torch.bool, device=trainer.device))
    tail = torch.stack([params_finite, pool_finite]).to(guard.dtype)
    values = torch.cat([guard.flatten(), tail]).tolist()
    n = guard.shape[0]
    first = trainer.iteration_ - n + 1
    for i in range(n):
        why = reason(dict(zip(COLUMNS, values[i * k:(i + 1) * k], strict=True)), trainer.config)
        if why is not None:
            return first + i, why
    if not (values[-2] and values[-1]):
        what = "the network parameters" if not values[-2] else "the persistent chains"
        return trainer.iteration_, f"{what} hold NaN or inf values"
    return None


def snapshot(trainer) -> dict[str, Any]:
    """An in-memory copy of everything `fit` changes (no randomness is drawn)."""
    def tensors(sd: dict) -> dict:
        return {k: v.detach().clone() if isinstance(v, Tensor) else copy.deepcopy(v)
                for k, v in sd.items()}
    return {
        "energy": tensors(trainer.energy.state_dict()),
        "flow": tensors(trainer.flow.state_dict()),
        "opt_energy": copy.deepcopy(trainer.opt_energy.state_dict()),
        "opt_flow": copy.deepcopy(trainer.opt_flow.state_dict()),
        "generator": trainer.generator.get_state(),
        "pool": None if trainer.pool_ is None else trainer.pool_.clone(),
        "order": trainer._order,  # replaced, never modified in place
        "cursor": trainer._cursor,
        "iteration": trainer.iteration_,
        "history": {k: len(v) for k, v in trainer.history_.items() if k != "restarts"},
    }


def restore(trainer, good: dict[str, Any]) -> None:
    """Put ``trainer`` back to the `snapshot` ``good`` (which stays intact)."""
    trainer.energy.load_state_dict(good["energy"])
    trainer.flow.load_state_dict(good["flow"])
    # The optimizers keep the tensors they are given: copies, so the snapshot stays intact.
    trainer.opt_energy.load_state_dict(copy.deepcopy(good["opt_energy"]))
    trainer.opt_flow.load_state_dict(copy.deepcopy(good["opt_flow"]))
    trainer.generator.set_state(good["generator"])
    trainer.pool_ = None if good["pool"] is None else good["pool"].clone()
    trainer._order, trainer._cursor = good["order"], good["cursor"]
    trainer.iteration_ = good["iteration"]
    history = trainer.history_
    for key in list(history):
        if key == "restarts":
            continue
        if key in good["history"]:
            del history[key][good["history"][key]:]
        else:
            del history[key]
    trainer._pending = []


def restart(trainer, iteration: int, why: str) -> None:
    """The restart policy: back to the last good state with lower learning rates, or
    `TrainingDivergedError` once ``config.max_restarts`` restarts are spent."""
    c, good = trainer.config, trainer._good
    restarts = trainer.history_.get("restarts", [])
    lr_energy = trainer.opt_energy.param_groups[0]["lr"]
    lr_flow = trainer.opt_flow.param_groups[0]["lr"]
    restore(trainer, good)
    if len(restarts) >= c.max_restarts:
        tried = (f"after {len(restarts)} restart(s) from the last good state with learning "
                 f"rates lowered to lr_energy={lr_energy:.3g}, lr_flow={lr_flow:.3g}"
                 if restarts else "with trainer.max_restarts = 0")
        raise TrainingDivergedError(
            f"training diverged at iteration {iteration}: {why} ({tried}); the trainer is "
            f"back at iteration {good['iteration']}, its last good state. Try smaller "
            f"trainer.lr_energy / trainer.lr_flow or trainer.step_size, a positive "
            f"trainer.energy_l2, or more trainer.max_restarts")
    if c.lr_decay == "none":
        lr_energy, lr_flow = lr_energy * c.restart_lr_factor, lr_flow * c.restart_lr_factor
    else:  # the schedule's rate at the restored iteration, lowered once more
        lr_energy, lr_flow = scheduled_rates(c, good["iteration"], len(restarts) + 1)
    set_rate((trainer.opt_energy, trainer.opt_flow), (lr_energy, lr_flow))
    trainer.history_["restarts"] = [*restarts, {
        "iteration": iteration, "restored_to": good["iteration"], "reason": why,
        "lr_energy": lr_energy, "lr_flow": lr_flow}]


def refuse_non_finite(trainer, path) -> None:
    """A checkpoint never holds NaN or inf weights, optimizer moments or chains."""
    parts: list[tuple[str, Any]] = [
        *((f"energy.{k}", v) for k, v in trainer.energy.state_dict().items()),
        *((f"flow.{k}", v) for k, v in trainer.flow.state_dict().items()),
        ("pool", trainer.pool_)]
    for name, opt in (("opt_energy", trainer.opt_energy), ("opt_flow", trainer.opt_flow)):
        for i, state in opt.state_dict()["state"].items():
            parts.extend((f"{name}.state.{i}.{k}", v) for k, v in state.items())
    tensors = [(k, v) for k, v in parts if isinstance(v, Tensor) and v.is_floating_point()]
    if not tensors:
        return
    finite = torch.stack([torch.isfinite(v).all() for _, v in tensors]).tolist()
    bad = [k for (k, _), ok in zip(tensors, finite, strict=True) if not ok]
    if bad:
        raise ValueError(f"refusing to write checkpoint {path}: {', '.join(bad[:3])}"
                         f"{' and more' if len(bad) > 3 else ''} hold NaN or inf values "
                         f"(a diverged model); existing checkpoints are left as they were")

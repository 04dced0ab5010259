"""A `JointTrainer` as plain data and back: what `JointTrainer.save` writes and `load` reads.

`state_dict` holds everything a run needs to continue exactly (networks, optimizers, tilt,
generator, chains, data order, history, callback states), as tensors, numbers, strings, lists
and dicts only, so the file loads with ``torch.load(weights_only=True)``. `restore` rebuilds the
trainer from it: through `JointTrainer.from_config` when the networks were built that way, else
around the modules the caller passes. The file format itself (atomic writes, the kind tag,
corrupt-file errors) is `flowmc_ebm.checkpoint`'s.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import zuko
from torch import nn

from flowmc_ebm.checkpoint import load_checkpoint
from flowmc_ebm.config import ModelConfig, TrainerConfig
from flowmc_ebm.training import run, tilts
from flowmc_ebm.training.run import CHECKPOINT_KIND

__all__ = ["restore", "state_dict"]


def state_dict(trainer) -> dict[str, Any]:
    """Everything ``trainer`` needs to continue, as plain data (pending records flushed first)."""
    trainer._flush()
    model_config = trainer.model_config
    return {
        "config": asdict(trainer.config),
        "model_config": None if model_config is None else
        {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(model_config).items()},
        "dim": trainer.dim,
        "sampler": trainer._sampler_name(),
        "energy": trainer.energy.state_dict(),
        "flow": trainer.flow.state_dict(),
        "tilt": tilts.tilt_state(trainer.tilt),
        "opt_energy": trainer.opt_energy.state_dict(),
        "opt_flow": trainer.opt_flow.state_dict(),
        "generator": trainer.generator.get_state(),
        "pool": trainer.pool_,
        "order": trainer._order,
        "cursor": trainer._cursor,
        "n_data": trainer._n_data,
        "iteration": trainer.iteration_,
        "elapsed": trainer._elapsed,
        "history": trainer.history_,
        "resumptions": trainer.resumptions_,
        "callbacks": run.callback_states(trainer),
    }


def restore(cls, path: str | Path, energy: nn.Module | None = None,
            flow: zuko.lazy.Flow | None = None, sampler: Any = None,
            map_location: torch.device | str | None = None):
    """The trainer of class ``cls`` saved at ``path`` (see `JointTrainer.load` for the
    arguments); every failure to rebuild it is a ValueError naming the file."""
    if map_location is None:
        map_location = next(energy.parameters()).device if energy is not None else "cpu"
    state = load_checkpoint(path, CHECKPOINT_KIND, map_location=map_location)
    try:
        config = TrainerConfig(**state["config"])
        name = state["sampler"]
        if sampler is None:
            if name == "custom":
                raise ValueError("it was trained with a custom kernel factory; pass the same "
                                 "factory as sampler=")
            sampler = name
        model_config = (ModelConfig(**state["model_config"])
                        if state["model_config"] is not None else None)
        if energy is None or flow is None:
            if model_config is None:
                raise ValueError("its networks were not built by JointTrainer.from_config; "
                                 "pass energy= and flow= modules of the saved architecture")
            trainer = cls.from_config(state["dim"], sampler, model_config, config,
                                      device=map_location)
        else:
            trainer = cls(energy, flow, sampler, config, model_config=model_config)
        if state.get("tilt") is not None:
            tilts.install(trainer, tilts.restore_tilt(state["tilt"], state["dim"],
                                                      trainer.model_config))
        trainer.energy.load_state_dict(state["energy"])
        trainer.flow.load_state_dict(state["flow"])
        trainer.opt_energy.load_state_dict(state["opt_energy"])
        trainer.opt_flow.load_state_dict(state["opt_flow"])
        trainer.generator.set_state(state["generator"].cpu())
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
        raise ValueError(f"cannot restore a trainer from {path}: {message}") from None
    trainer.pool_ = state["pool"]
    trainer._order, trainer._cursor = state["order"], state["cursor"]
    trainer._n_data = state["n_data"]
    trainer.iteration_ = state["iteration"]
    trainer._elapsed = state["elapsed"]
    trainer.history_ = state["history"]
    trainer.resumptions_ = state.get("resumptions", 0)
    trainer._callback_states = state.get("callbacks", [])
    trainer._loaded = True
    return trainer

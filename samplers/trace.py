"""`Trace`: the draws of a run, in ArviZ's ``(chains, draws, *event)`` order, with per-step stats."""

from __future__ import annotations

import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

_FORMAT = "flowmc-ebm-trace-v1"


@dataclass
class Trace:
    """Draws from ``samplers.sample``.

    Attributes:
        samples: ``(chains, draws, *event)``, on the CPU.
        log_prob: ``(chains, draws)``: the target's unnormalized log-density at each draw.
        stats: per-step per-chain figures, each ``(chains, draws)`` (``accept_prob``, ``accepted``,
            ``step_size``, ``invalid`` and the kernel's extras).
        wall_time: seconds spent on the post-warm-up steps, or ``None``.
        warmup: warm-up steps run before the first draw.
        thin: steps between two stored draws.
        kernel: a description of the kernel.
        state: the kernel's final state (not saved), to continue a run.
    """

    samples: Tensor
    log_prob: Tensor
    stats: dict[str, Tensor] = field(default_factory=dict)
    wall_time: float | None = None
    warmup: int = 0
    thin: int = 1
    kernel: str = ""
    state: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.samples.ndim < 3:
            raise ValueError("Trace.samples must have shape (chains, draws, *event); "
                             f"got {tuple(self.samples.shape)}")
        if self.log_prob.shape != self.samples.shape[:2]:
            raise ValueError(f"Trace.log_prob must have shape {tuple(self.samples.shape[:2])}; "
                             f"got {tuple(self.log_prob.shape)}")
        for name, value in self.stats.items():
            if value.shape != self.samples.shape[:2]:
                raise ValueError(f"Trace.stats[{name!r}] must have shape "
                                 f"{tuple(self.samples.shape[:2])}; got {tuple(value.shape)}")

    @property
    def n_chains(self) -> int:
        return self.samples.shape[0]

    @property
    def n_draws(self) -> int:
        return self.samples.shape[1]

    @property
    def event_shape(self) -> torch.Size:
        return self.samples.shape[2:]

    def save(self, path: str | os.PathLike) -> Path:
        """Write to ``path`` (``.npz``, no pickle) atomically: a temp file renamed over the target,
        so an interrupted save never leaves a half-written file in place of a good one."""
        path = Path(path)
        arrays = {"samples": self.samples.numpy(), "log_prob": self.log_prob.numpy(),
                  "format": np.array(_FORMAT), "kernel": np.array(self.kernel),
                  "wall_time": np.array(np.nan if self.wall_time is None else self.wall_time),
                  "warmup": np.array(self.warmup), "thin": np.array(self.thin)}
        arrays.update({f"stats/{k}": v.numpy() for k, v in self.stats.items()})
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Trace:
        """Read a trace written by `save`. Refuses pickled content; names the file on any fault."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                if "format" not in data.files or str(data["format"]) != _FORMAT:
                    raise ValueError("not a flowmc-ebm trace (no or unknown 'format' entry)")
                stats = {k.split("/", 1)[1]: torch.from_numpy(data[k])
                         for k in data.files if k.startswith("stats/")}
                wall = float(data["wall_time"])
                return cls(torch.from_numpy(data["samples"]), torch.from_numpy(data["log_prob"]),
                           stats, None if np.isnan(wall) else wall, int(data["warmup"]),
                           int(data["thin"]), str(data["kernel"]))
        except FileNotFoundError:
            raise
        except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(f"cannot read trace {path}: {err}") from err

    def to_arviz(self, var_name: str = "x"):
        """An ArviZ `InferenceData` (arviz < 1) or `DataTree` (arviz >= 1) with the draws in
        ``posterior[var_name]`` and ``lp`` plus every stat in ``sample_stats``."""
        import arviz as az

        sample_stats = {"lp": self.log_prob.numpy()}
        sample_stats.update({k: v.numpy() for k, v in self.stats.items()})
        return az.from_dict(posterior={var_name: self.samples.numpy()}, sample_stats=sample_stats)

    def __repr__(self) -> str:
        return (f"Trace(chains={self.n_chains}, draws={self.n_draws}, event={tuple(self.event_shape)},"
                f" kernel={self.kernel!r}, stats={sorted(self.stats)})")

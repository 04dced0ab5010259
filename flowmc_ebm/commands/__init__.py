"""The ``flowmc-ebm`` subcommands, one module each, and what they share: the checks of output
paths and flag values, the target registry as flags, devices, and a trained run as a model in
the data's units."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DEVICE_HELP", "TrainedModel", "check_device", "check_output_file", "load_model",
           "make_output_directory", "make_target", "nonnegative_int", "positive_float",
           "positive_int", "target_help"]

DEVICE_HELP = "where tensors live: cpu, cuda, cuda:1, mps (checked before any work)"


def positive_int(text: str) -> int:
    """argparse type: an int >= 1 (argparse names the flag in its one-line error)."""
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """argparse type: an int >= 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be an int >= {low}; received {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0; received {text}")
    return value


def check_device(name: str, flag: str = "--device") -> Any:
    """``torch.device(name)``, refused in one line if it is not a device or not available here."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"{flag} {name}: not a device; expected cpu, cuda, cuda:N or mps") from None
    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{flag} {name}: not available on this machine ({first})") from None
    return device


def target_help() -> str:
    """``--target``'s help: every name of the registry (`flowmc_ebm.targets.TARGETS`)."""
    from flowmc_ebm.targets import TARGETS

    return (f"named target: {', '.join(TARGETS)} (high_dim takes --dim; gaussian_mixture takes "
            "--target-option means=..., covariances=..., weights=...)")


def make_target(name: str, dim: int | None = None, options: list[str] = (),
                flag: str = "--target") -> Any:
    """The target ``name`` of the registry, built with ``--dim`` and ``--target-option`` values.

    Raises:
        ValueError, TypeError: in one line naming the flag: an unknown name, a bad option, or
            a target that needs options it was not given (they are listed).
    """
    import inspect

    from flowmc_ebm.config import parse_overrides
    from flowmc_ebm.targets import TARGETS, get_target

    kwargs = parse_overrides(list(options))
    bad = [k for k in kwargs if "." in k]
    if bad:
        raise ValueError(f"--target-option {bad[0]}: a target option is a plain keyword")
    if dim is not None:
        kwargs["dim"] = dim
    key = name.lower().replace("-", "").replace("_", "")
    cls = next((c for n, c in TARGETS.items() if n.replace("_", "") == key), None)
    if cls is None:
        return get_target(name, **kwargs)  # its own "unknown target" message
    needed = [p.name for p in inspect.signature(cls).parameters.values()
              if p.default is inspect.Parameter.empty and p.kind == p.POSITIONAL_OR_KEYWORD
              and p.name not in kwargs]
    if needed:
        how = ", ".join("--dim N" if n == "dim" else f"--target-option {n}=..." for n in needed)
        raise ValueError(f"{flag} {name} needs {how}")
    try:
        return get_target(name, **kwargs)
    except TypeError as err:
        raise TypeError(f"{flag} {name}: {err}") from None


def _file_in_the_way(path: Path) -> Path | None:
    """The first existing non-directory among ``path`` and its parents, if any."""
    for part in [path, *path.parents]:
        if part.exists():
            return None if part.is_dir() else part
    return None


def make_output_directory(path: str | Path, flag: str = "--out") -> Path:
    """Create output directory ``path`` (and its parents), or raise a one-line `OSError`.

    Raises:
        NotADirectoryError: ``path`` or one of its parents is a regular file.
        PermissionError: it cannot be created or written.
    """
    path = Path(path)
    blocker = _file_in_the_way(path)
    if blocker is not None:
        raise NotADirectoryError(f"{flag} {path}: {blocker} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise type(err)(f"{flag} {path}: cannot create the directory: "
                        f"{err.strerror or err}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"{flag} {path}: the directory is not writable")
    return path


def check_output_file(path: str | Path, flag: str = "--out") -> Path:
    """Check that file ``path`` can be written: its directory exists and is writable.

    Raises:
        FileNotFoundError, NotADirectoryError, PermissionError, IsADirectoryError: naming the path.
    """
    path = Path(path)
    parent = path.parent
    blocker = _file_in_the_way(parent)
    if blocker is not None:
        raise NotADirectoryError(f"{flag} {path}: {blocker} is a file, not a directory")
    if not parent.is_dir():
        raise FileNotFoundError(f"{flag} {path}: output directory {parent} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"{flag} {path}: is a directory; expected a file path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"{flag} {path}: directory {parent} is not writable")
    return path


@dataclass
class TrainedModel:
    """A `JointTrainer` checkpoint as a density in the data's units.

    Attributes:
        path: the checkpoint read.
        trainer: the restored `JointTrainer` (it works in standardized units).
        standardization: the `flowmc_ebm.data.Standardization` of a ``train --data`` run, or
            None (the trainer's units are the data's).
        flow: a copy of the trained flow, composed with the standardization so it proposes in
            data units (a zuko flow: `samplers.FlowMC` may go on training it).
        pool: the persistent chains, in data units.
        proposal: the importance proposal in data units: the tilt for a run whose global moves
            proposed from it (``trainer.global_proposal = "tilt"``: the flow then learned from
            chains it did not move), else ``flow``.
    """

    path: Path
    trainer: Any
    standardization: Any
    flow: Any
    pool: Any
    proposal: Any = None

    @property
    def dim(self) -> int:
        return int(self.trainer.dim)

    def log_prob(self, x: Any) -> Any:
        """Unnormalized log-density of data-unit points: ``log p̃((x − m) / s) − Σ log s``."""
        std = self.standardization
        if std is None:
            return self.trainer.log_prob(x)
        return self.trainer.log_prob(std.transform(x)) - std.log_det()


def load_model(run: str | Path, device: Any = "cpu", flag: str = "--model") -> TrainedModel:
    """The model of a ``train`` run: ``RUN/checkpoints``' newest readable checkpoint, or a file.

    Raises:
        FileNotFoundError, ValueError: in one line naming the flag and the path.
    """
    import copy

    import torch
    import zuko

    from flowmc_ebm.checkpoint import latest_checkpoint, load_checkpoint
    from flowmc_ebm.data import Standardization
    from flowmc_ebm.training import JointTrainer, tilts

    run = Path(run)
    if run.is_dir():
        directory = run / "checkpoints" if (run / "checkpoints").is_dir() else run
        try:
            path = latest_checkpoint(directory)
        except (FileNotFoundError, ValueError) as err:
            raise type(err)(f"{flag} {run}: no readable checkpoint ({err})") from None
    elif run.is_file():
        path = run
    else:
        raise FileNotFoundError(f"{flag} {run}: no such run directory or checkpoint file")
    try:
        trainer = JointTrainer.load(path, map_location=device)
        state = load_checkpoint(path, "joint-trainer", map_location="cpu")
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{flag} {run}: {err}") from None
    std = Standardization.from_checkpoint(state)
    flow = copy.deepcopy(trainer.flow)
    pool = trainer.pool_ if trainer.pool_ is not None else flow().sample((1024,))
    pool = pool.detach().to(device)
    if std is not None:
        if std.dim != trainer.dim:
            raise ValueError(f"{flag} {run}: its standardization is {std.dim}-D but the model "
                             f"is {trainer.dim}-D")
        mean = torch.as_tensor(std.mean, dtype=pool.dtype, device=device)
        scale = torch.as_tensor(std.scale, dtype=pool.dtype, device=device)
        # zuko's transforms map data to latent: standardize first, then the trained layers.
        to_z = zuko.lazy.UnconditionalTransform(torch.distributions.AffineTransform,
                                                -mean / scale, 1 / scale, event_dim=1,
                                                buffer=True)
        layers = getattr(flow.transform, "transforms", [flow.transform])
        flow = zuko.lazy.Flow([to_z, *layers], flow.base).to(device)
        pool = std.inverse_transform(pool)
    proposal = flow
    if tilts.global_proposal(trainer) is trainer.tilt:  # the run's moves proposed from its tilt
        tilt = trainer.tilt() if isinstance(trainer.tilt, zuko.lazy.Flow) else trainer.tilt
        proposal = tilt if std is None else torch.distributions.TransformedDistribution(
            tilt, torch.distributions.AffineTransform(mean, scale, event_dim=1))
    return TrainedModel(path, trainer, std, flow, pool, proposal)

"""Dataclass configs for training runs, loadable from TOML and validated field by field.

Three records: `ModelConfig` (the energy network and the flow), `TrainerConfig` (the knobs of
`flowmc_ebm.trainer.JointTrainer`) and `RunConfig` (a whole run: target, sampler, length, and the
two others as ``[model]`` and ``[trainer]`` tables). Every field is checked when a record is built,
from Python or from TOML: an unknown key, a value of the wrong type or one out of range raises an
error that names the field, what it expects and what it received.

Example:
    >>> config = RunConfig.from_dict({"sampler": "ula", "trainer": {"energy_l2": 0.1}})
    >>> config.trainer.energy_l2, config.model.flow_transforms
    (0.1, 4)
    >>> RunConfig.from_dict({"trainer": {"pool_sise": 10}})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown key trainer.pool_sise; known keys: pool_size, ...
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowmc_ebm.config_fields import group_table, read_table, spec, ungroup_table, validate
from flowmc_ebm.targets import TARGETS as _TARGET_REGISTRY

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["SAMPLERS", "TARGETS", "TRAINER_GROUPS", "ModelConfig", "RunConfig", "TrainerConfig",  # noqa: F822
           "load_config", "parse_overrides", "sampler_names"]

#: Target names: the keys of the one registry, `flowmc_ebm.targets.TARGETS`.
TARGETS = tuple(_TARGET_REGISTRY)


def sampler_names() -> tuple[str, ...]:
    """The names a run's ``sampler`` may take: the keys of the one method registry,
    `flowmc_ebm.training.methods.METHODS` (a method registered there is a sampler here too)."""
    # Imported here: flowmc_ebm.training imports this module.
    from flowmc_ebm.training.methods import METHODS

    return tuple(METHODS)


def __getattr__(name: str) -> Any:
    # ``SAMPLERS``, read when asked for, so it lists the methods registered by then.
    if name == "SAMPLERS":
        return sampler_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: The sub-tables of ``[trainer]`` and the `TrainerConfig` fields each holds. The fields stay
#: attributes of `TrainerConfig` (``config.n_local``); only the TOML/JSON form is grouped, and
#: the old flat keys (``[trainer] n_local = 4``) still load.
TRAINER_GROUPS: dict[str, tuple[str, ...]] = {
    "flowmc": ("n_local", "n_global", "global_move", "n_particles", "global_proposal"),
    "guard": ("max_abs_energy", "max_grad_norm", "max_restarts", "restart_lr_factor"),
    "schedule": ("lr_decay", "lr_decay_iterations", "lr_final_factor"),
}
_GROUP_OF = {key: group for group, keys in TRAINER_GROUPS.items() for key in keys}


@dataclass
class ModelConfig:
    """The energy network and the flow a run builds.

    Attributes:
        energy_hidden: hidden widths of the `MLPEnergy`.
        flow_kind: ``"realnvp"``, ``"nsf"`` or ``"maf"`` (see `flowmc_ebm.flows.make_flow`).
        flow_transforms: coupling layers of the flow.
        flow_hidden: hidden widths of each coupling's conditioner.
        base_scale: standard deviation of the flow's Gaussian base ``λ`` (the EBM's tilt).
    """

    energy_hidden: tuple[int, ...] = spec((128, 128), low=1)
    flow_kind: str = spec("realnvp", choices=("realnvp", "nsf", "maf"))
    flow_transforms: int = spec(4, low=1)
    flow_hidden: tuple[int, ...] = spec((64, 64), low=1)
    base_scale: float = spec(1.0, low=0.0, low_open=True)

    def __post_init__(self) -> None:
        validate(self, "model")

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        return read_table(cls, data, "model")


@dataclass
class TrainerConfig:
    """The knobs of `JointTrainer`; defaults are the paper's two-mode settings.

    In TOML (and in a run's ``config.json``) the knobs of one concern sit in a sub-table of
    ``[trainer]`` (`TRAINER_GROUPS`): ``[trainer.flowmc]`` ``n_local``, ``n_global``,
    ``global_move``, ``n_particles``, ``global_proposal``; ``[trainer.guard]`` ``max_abs_energy``,
    ``max_grad_norm``, ``max_restarts``, ``restart_lr_factor``; ``[trainer.schedule]``
    ``lr_decay``, ``lr_decay_iterations``, ``lr_final_factor``. They stay attributes of this
    record (``config.n_local``) and keyword arguments of its constructor, and the old flat keys
    (``[trainer] n_local = 4``) still load; a key in the wrong sub-table is refused in one line
    naming its place.

    Attributes:
        pool_size: persistent chains kept between iterations.
        batch_size: data points per EBM step.
        n_negatives: chains taken from the pool, advanced and used as negatives per iteration.
        mcmc_steps: MCMC moves per chain per iteration, for every method: a ULA, MALA or
            latent-MALA step is one move, as is each local or global move of ``"flowmc"``, which
            runs them as cycles of ``n_local`` local then ``n_global`` global moves (10 = 2 ×
            (4 MALA + 1 i-SIR)), so it must be a multiple of ``n_local + n_global``.
        n_local, n_global: flowMC's schedule within a cycle.
        global_move: ``"isir"`` or ``"imh"``.
        n_particles: i-SIR proposals per chain per global move.
        global_proposal: what flowMC's global moves propose from: ``"flow"`` (the sampler's flow,
            trained on the chains: the paper's; the default) or ``"tilt"`` (the fitted tilt,
            frozen; needs a ``tilt`` other than ``"base"``). With a data-fitted tilt the EBM stays
            near it, so the tilt is accepted ~97 % of the time where the flow, learning from a
            pool that rarely changes class, is accepted 10-30 %; on real data this removed most
            of the class-weight error (`docs/results_real_data.md`). `FlowMCEBM` defaults to it.
        step_size: Langevin step of MALA/ULA (and of latent MALA for NT-EBM); fixed, not adapted,
            so every method spends the same budget on the same kernel.
        lr_energy, lr_flow: Adam learning rates (the initial ones when ``lr_decay`` is set).
        lr_decay: ``"none"`` (constant rates), ``"cosine"`` or ``"linear"``: both rates decay from
            their initial values to ``lr_final_factor`` times those over ``lr_decay_iterations``
            iterations, then stay there. A decay quiets the EBM's late jitter (its mode weights
            swing with the noise of each step's negatives at a constant rate).
        lr_decay_iterations: length of the decay; 0 means the run's length
            (`RunConfig.n_iterations`, filled in by ``flowmc-ebm train``); a `JointTrainer` built
            directly needs it set when ``lr_decay`` is not ``"none"``.
        lr_final_factor: the rates' final fraction of their initial values, in (0, 1].
        energy_l2: ``α`` of the regularizer ``α (mean E(x⁺)² + mean E(x⁻)²)``.
        tilt: the EBM's tilt ``λ`` (`flowmc_ebm.training.tilts`): ``"base"`` (the flow's base, the
            paper's; the default, so earlier runs are unchanged), ``"gaussian"`` (the data's mean
            and covariance), ``"gmm"`` (a Gaussian mixture fitted to the data, its size by BIC:
            the one to use on data a user brings, `docs/results_real_data.md`) or ``"flow"`` (a
            flow fitted to the data by maximum likelihood, frozen); fitted at the first `fit`.
            NT-EBM takes only ``"base"``.
        tilt_steps: maximum-likelihood steps of a ``"flow"`` tilt.
        seed: seeds the trainer's generator (data order, pool, MCMC).
        log_every: iterations between two conversions of the history to Python numbers.
        eval_every: iterations between two quadrature estimates of the EBM's mode weights
            (2-D and a known target only; 0 turns them off).
        max_abs_energy: divergence guard: ``|mean E|`` of the data or of the negatives above this
            counts as a diverging EBM (as do NaN/inf energies, losses, gradients or chains).
        max_grad_norm: divergence guard: an energy gradient norm above this counts as diverging.
        max_restarts: how many times a diverging run is restored to its last good state (with
            lower learning rates) before `TrainingDivergedError` is raised; 0 raises at once.
        restart_lr_factor: both learning rates are multiplied by this (in (0, 1)) at a restart.
        keep_checkpoints: numbered checkpoints (``iter-NNNNNN.pt``) kept in a checkpoint
            directory; older ones are deleted after a newer one is written.
    """

    pool_size: int = spec(1024, low=1)
    batch_size: int = spec(64, low=1)
    n_negatives: int = spec(64, low=1)
    mcmc_steps: int = spec(10, low=1)
    n_local: int = spec(4, low=0)
    n_global: int = spec(1, low=0)
    global_move: str = spec("isir", choices=("isir", "imh"))
    n_particles: int = spec(32, low=1)
    global_proposal: str = spec("flow", choices=("flow", "tilt"))
    step_size: float = spec(0.01, low=0.0, low_open=True)
    lr_energy: float = spec(0.01, low=0.0, low_open=True)
    lr_flow: float = spec(0.01, low=0.0, low_open=True)
    lr_decay: str = spec("none", choices=("none", "cosine", "linear"))
    lr_decay_iterations: int = spec(0, low=0)
    lr_final_factor: float = spec(0.1, low=0.0, low_open=True)
    energy_l2: float = spec(0.0, low=0.0)
    tilt: str = spec("base", choices=("base", "gaussian", "gmm", "flow"))
    tilt_steps: int = spec(1000, low=1)
    seed: int = spec(0, low=0)
    log_every: int = spec(50, low=1)
    eval_every: int = spec(50, low=0)
    max_abs_energy: float = spec(1e4, low=0.0, low_open=True)
    max_grad_norm: float = spec(1e5, low=0.0, low_open=True)
    max_restarts: int = spec(3, low=0)
    restart_lr_factor: float = spec(0.5, low=0.0, low_open=True)
    keep_checkpoints: int = spec(3, low=1)

    def __post_init__(self) -> None:
        validate(self, "trainer")
        if self.restart_lr_factor >= 1:
            raise ValueError(f"trainer.restart_lr_factor must be < 1 (it lowers the learning "
                             f"rates); received {self.restart_lr_factor!r}")
        if self.lr_final_factor > 1:
            raise ValueError(f"trainer.lr_final_factor must be <= 1 (the rates decay); received "
                             f"{self.lr_final_factor!r}")
        if self.n_negatives > self.pool_size:
            raise ValueError(f"trainer.n_negatives ({self.n_negatives}) must be at most "
                             f"trainer.pool_size ({self.pool_size})")
        if self.n_local + self.n_global == 0:
            raise ValueError("trainer.n_local + trainer.n_global must be at least 1; received 0")

    def flowmc_cycles(self) -> int:
        """flowMC cycles per iteration: ``mcmc_steps / (n_local + n_global)``, a whole number."""
        cycle = self.n_local + self.n_global
        if self.mcmc_steps % cycle:
            raise ValueError(f"trainer.mcmc_steps ({self.mcmc_steps}) must be a multiple of "
                             f"n_local + n_global ({cycle}) so flowMC runs whole cycles")
        return self.mcmc_steps // cycle

    def lr_factor(self, iteration: int) -> float:
        """The learning rates' multiplier at ``iteration`` (before that iteration's step):
        `flowmc_ebm.training.schedule.lr_factor` with this record's ``[trainer.schedule]``.

        Example:
            >>> c = TrainerConfig(lr_decay="cosine", lr_decay_iterations=100, lr_final_factor=0.1)
            >>> [round(c.lr_factor(i), 3) for i in (0, 50, 100, 200)]
            [1.0, 0.55, 0.1, 0.1]
        """
        # Imported here: flowmc_ebm.training imports this module.
        from flowmc_ebm.training.schedule import lr_factor

        return lr_factor(self.lr_decay, iteration, self.lr_decay_iterations, self.lr_final_factor)

    @classmethod
    def from_dict(cls, data: dict) -> TrainerConfig:
        """From a ``[trainer]`` table: grouped (``[trainer.flowmc]``, ``[trainer.guard]``,
        ``[trainer.schedule]``; see `TRAINER_GROUPS`) or with the old flat keys.

        Example:
            >>> grouped = TrainerConfig.from_dict({"seed": 1, "flowmc": {"n_local": 9}})
            >>> grouped == TrainerConfig.from_dict({"seed": 1, "n_local": 9})
            True
        """
        flat = ungroup_table(data, TRAINER_GROUPS, "trainer", _TRAINER_FIELDS)
        return read_table(cls, flat, "trainer", tuple(TRAINER_GROUPS))


@dataclass
class RunConfig:
    """A whole training run, as ``flowmc-ebm train`` reads it from TOML.

    Attributes:
        target: a name of `flowmc_ebm.targets.get_target`.
        sampler: ``"flowmc"``, ``"ula"``, ``"mala"`` or ``"nt"``.
        n_data: training points drawn from the target.
        data_seed: seed of those draws (kept apart from the trainer's seed, so methods compared
            on one seed see the same data).
        epochs: passes over the data; ignored when ``iterations`` > 0.
        iterations: EBM steps; 0 means ``epochs × (n_data // batch_size)``.
        checkpoint_every: iterations between two checkpoints.
        target_options: keyword arguments of the target's constructor, as a
            ``[target_options]`` table (e.g. ``dim = 16`` and ``weights = [0.1, 0.2, 0.3, 0.4]``
            for ``"high_dim"``); checked by building the target.
        model, trainer: the ``[model]`` and ``[trainer]`` tables.

    Example:
        >>> RunConfig(epochs=2).n_iterations
        512
    """

    target: str = spec("two_modes", choices=TARGETS)
    sampler: str = spec("flowmc")  # one of `sampler_names()`, checked in __post_init__
    n_data: int = spec(16384, low=1)
    data_seed: int = spec(0, low=0)
    epochs: int = spec(75, low=0)
    iterations: int = spec(0, low=0)
    checkpoint_every: int = spec(500, low=1)
    target_options: dict = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def __post_init__(self) -> None:
        validate(self, "")
        if self.sampler not in sampler_names():
            raise ValueError(f"sampler must be one of {', '.join(sampler_names())}; received "
                             f"{self.sampler!r}")
        for key, cls in _NESTED.items():
            if not isinstance(getattr(self, key), cls):
                raise TypeError(f"{key} must be a {cls.__name__}; received "
                                f"{type(getattr(self, key)).__name__}")
        self.make_target()
        if self.n_iterations < 1:
            raise ValueError("a run needs epochs >= 1 or iterations >= 1; received epochs="
                             f"{self.epochs}, iterations={self.iterations}")
        if self.sampler == "flowmc":
            self.trainer.flowmc_cycles()
        if self.n_data < self.trainer.batch_size:
            raise ValueError(f"n_data ({self.n_data}) must be at least trainer.batch_size "
                             f"({self.trainer.batch_size})")

    def make_target(self) -> Any:
        """The target this run trains on: ``get_target(target, **target_options)``.

        Raises:
            TypeError, ValueError: ``target_options`` is not a table, or the target refuses it
                (the message names ``target_options``).
        """
        from flowmc_ebm.targets import get_target

        if not isinstance(self.target_options, dict):
            raise TypeError(f"target_options must be a table (dict); received "
                            f"{type(self.target_options).__name__}")
        try:
            return get_target(self.target, **self.target_options)
        except TypeError as err:
            raise TypeError(f"target_options {self.target_options!r} do not fit target "
                            f"{self.target!r}: {err}") from None
        except ValueError as err:
            raise ValueError(f"target_options {self.target_options!r} do not fit target "
                             f"{self.target!r}: {err}") from None

    @property
    def n_iterations(self) -> int:
        """EBM steps the run takes."""
        if self.iterations > 0:
            return self.iterations
        return self.epochs * (self.n_data // self.trainer.batch_size)

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        return read_table(cls, data, "")

    def to_dict(self) -> dict:
        """Plain types only (tuples as lists): the form TOML, JSON and checkpoints hold."""
        def plain(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            return list(value) if isinstance(value, tuple) else value
        data = plain(dataclasses.asdict(self))
        data["trainer"] = group_table(data["trainer"], TRAINER_GROUPS)
        return data

    def replace(self, overrides: dict[str, Any]) -> RunConfig:
        """A copy with dotted keys overridden, e.g. ``{"trainer.seed": 3, "epochs": 2}``."""
        data = self.to_dict()
        for key, value in overrides.items():
            *parents, last = key.split(".")
            if parents == ["trainer"] and last in _GROUP_OF:  # the old flat spelling
                parents.append(_GROUP_OF[last])
            node = data
            for part in parents:
                if not isinstance(node.get(part), dict):
                    raise ValueError(f"unknown key {key}; tables are: {', '.join(_NESTED)}")
                node = node[part]
            node[last] = value
        return RunConfig.from_dict(data)


_NESTED: dict[str, type] = {"model": ModelConfig, "trainer": TrainerConfig}
_TRAINER_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainerConfig))


def load_config(path: str | Path) -> RunConfig:
    """Read a `RunConfig` from a TOML file.

    Args:
        path: a ``.toml`` file with top-level `RunConfig` keys and optional ``[model]`` and
            ``[trainer]`` tables (the latter with ``[trainer.flowmc]``, ``[trainer.guard]``,
            ``[trainer.schedule]``, see `TrainerConfig`).

    Raises:
        OSError: the file cannot be read.
        ValueError: it is not valid TOML, or a key is unknown or a value out of range (the message
            names the file and the field).
        TypeError: a value has the wrong type.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML: {err}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text (UTF-8) TOML file") from None
    try:
        return RunConfig.from_dict(data)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{path}: {err}") from None


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Command-line overrides ``KEY=VALUE`` as a dict for `RunConfig.replace`.

    Values are read as TOML; one that is not valid TOML (a bare word) is taken as a string.

    Example:
        >>> parse_overrides(["trainer.seed=3", "sampler=ula", "model.flow_hidden=[32, 32]"])
        {'trainer.seed': 3, 'sampler': 'ula', 'model.flow_hidden': [32, 32]}
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"an override must read KEY=VALUE; received {item!r}")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value.strip()
    return out

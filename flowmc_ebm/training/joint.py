"""`JointTrainer`: an EBM trained by contrastive maximum likelihood on persistent chains, and the
flow that helps those chains mix trained beside it (Grenioux, Moulines & Gabrié 2023).

This file is the loop; what varies between methods is a record of `flowmc_ebm.training.methods`,
the divergence guard is `flowmc_ebm.training.guard`, the learning-rate decay
`flowmc_ebm.training.schedule`.

One iteration:

1. take ``n_negatives`` chains from the persistent pool and advance them ``mcmc_steps`` moves on
   the current model (``"flowmc"``: MALA moves and i-SIR/IMH moves proposed by the flow);
2. write them back to the pool;
3. one Adam step of the energy on ``mean E(x⁺) − mean E(x⁻) [+ α (mean E⁺² + mean E⁻²)]``;
4. one Adam step of the flow on its negative log-likelihood of the negatives (of the data for
   NT-EBM).

The negatives are detached: no gradient of the flow or of the sampler reaches the energy.

The model is ``log p̃(x) = −E(x) + log λ(x)`` with ``λ`` the flow's Gaussian base. ``E ≡ 0`` and an
identity flow at the start make model, flow and ``λ`` agree, so the pool starts as exact draws from
the model. The baselines run in the same loop with the same model and budget: ``"ula"`` (ULA-PCD,
the paper's ULA-EBM), ``"mala"`` (MALA-PCD) and ``"nt"`` (NT-EBM: MALA on the flow's latent space,
the energy tilting the full flow density, the flow fitted to the data).

Example:
    >>> from flowmc_ebm.targets import TwoModes
    >>> target = TwoModes()
    >>> data = target.sample(512, generator=torch.Generator().manual_seed(0))
    >>> trainer = JointTrainer.from_config(2, "flowmc", trainer=TrainerConfig(pool_size=128))
    >>> history = trainer.fit(data, n_iterations=20, target=target, progress=False)
    >>> len(history["loss_energy"]), trainer.sample(8, n_steps=2).shape
    (20, torch.Size([8, 2]))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
import zuko
from torch import Tensor, nn
from torch.distributions import Distribution

import samplers
from flowmc_ebm._checks import check_points, check_positive_int, iteration_count
from flowmc_ebm.checkpoint import latest_checkpoint, save_checkpoint
from flowmc_ebm.config import ModelConfig, TrainerConfig
from flowmc_ebm.energies import FlowTiltedEnergy, MLPEnergy
from flowmc_ebm.flows import base_distribution, make_flow
from flowmc_ebm.training import guard, persist, run, tilts, updates
from flowmc_ebm.training.guard import TrainingDivergedError
from flowmc_ebm.training.methods import Method, advance, get_method
from flowmc_ebm.training.run import CHECKPOINT_KIND as _CHECKPOINT_KIND
from flowmc_ebm.training.run import TrainingInterrupted
from flowmc_ebm.training.schedule import scheduled_rates, set_rate
from samplers.independent import draw

__all__ = ["Callback", "JointTrainer", "TrainingDivergedError", "TrainingInterrupted",
           "latest_checkpoint"]

KernelFactory = Callable[[Callable[[Tensor], Tensor]], samplers.Kernel]
#: Called every ``log_every`` iterations, after the history is brought up to date; returning
#: True stops training there. One with ``state_dict()``/``load_state_dict()`` has its state
#: kept in checkpoints (see `flowmc_ebm.training.run`).
Callback = Callable[["JointTrainer"], Any]


class JointTrainer:
    """Joint training of an energy-based model and the normalizing flow that samples it.

    Args:
        energy: the energy network ``E: (n, dim) -> (n,)`` (an ``nn.Module``; `MLPEnergy` starts
            at ``E ≡ 0``).
        flow: a zuko flow on ``R^dim`` (see `flowmc_ebm.flows.make_flow`); its base ``λ`` is the
            tilt, and it proposes flowMC's global moves.
        sampler: ``"flowmc"`` (flowMC-EBM), ``"ula"`` (ULA-PCD), ``"mala"`` (MALA-PCD), ``"nt"``
            (NT-EBM), or a kernel factory ``log_prob -> samplers.Kernel`` run ``mcmc_steps`` times
            per iteration on the tilted model.
        config: the knobs (pool, batch, negatives, MCMC schedule, learning rates, ``α``, seed);
            defaults are the paper's two-mode settings.
        model_config: how ``energy`` and ``flow`` were built, when by `from_config`; a checkpoint
            keeps it so `load` can rebuild them.
        tilt: the EBM's tilt ``λ`` instead of the flow's base: a ``Distribution`` or a frozen
            zuko flow (see `flowmc_ebm.training.tilts`); or leave it None and set
            ``config.tilt`` to have one fitted to the data at the first `fit`.
        **knobs: `TrainerConfig` fields overriding ``config``, e.g. ``energy_l2=0.1``.

    Attributes:
        model: the tilted model whose ``log_prob`` the chains sample.
        tilt: the tilt when it is not the flow's base (else None).
        kernel: the `samplers.Kernel` advancing the chains.
        pool_: the persistent chains ``(pool_size, dim)`` (None before the first `fit`).
        iteration_: iterations done so far.
        history_: per-iteration records (see `fit`).
        elapsed_: seconds spent in `fit`, summed over the processes of a resumed run (the work
            a killed process did after its last checkpoint is not counted: it was redone).
        resumptions_: times the run was continued from a checkpoint (`load`, then `fit`).
    """

    def __init__(self, energy: nn.Module, flow: zuko.lazy.Flow,
                 sampler: str | KernelFactory = "flowmc", config: TrainerConfig | None = None,
                 *, model_config: ModelConfig | None = None,
                 tilt: Distribution | zuko.lazy.Flow | None = None, **knobs: Any) -> None:
        if not isinstance(energy, nn.Module) or not any(True for _ in energy.parameters()):
            raise TypeError("energy must be an nn.Module with parameters mapping (n, dim) to (n,); "
                            f"received {type(energy).__name__}")
        if not isinstance(flow, zuko.lazy.Flow):
            raise TypeError(f"flow must be a zuko Flow (e.g. from flowmc_ebm.flows.make_flow); "
                            f"received {type(flow).__name__}")
        config = config if config is not None else TrainerConfig()
        if not isinstance(config, TrainerConfig):
            raise TypeError(f"config must be a TrainerConfig; received {type(config).__name__}")
        known = {f.name for f in fields(TrainerConfig)}
        unknown = sorted(set(knobs) - known)
        if unknown:
            raise TypeError(f"unknown trainer option(s) {', '.join(unknown)}; known: "
                            f"{', '.join(sorted(known))}")
        self.config = TrainerConfig(**{**asdict(config), **knobs})
        event = base_distribution(flow).event_shape
        if len(event) != 1:
            raise ValueError(f"the flow's base must have a 1-D event shape (dim,); received "
                             f"{tuple(event)}")
        self.dim = int(event[0])
        energy_dim = getattr(energy, "dim", self.dim)
        if energy_dim != self.dim:
            raise ValueError(f"the energy expects dim {energy_dim} but the flow is on dim "
                             f"{self.dim}")
        self.energy, self.flow = energy, flow
        self.model_config = model_config
        self.device = next(energy.parameters()).device
        self.sampler = sampler
        self.method: Method = get_method(sampler)
        self.model = self.method.tilt(energy, flow)
        self.kernel = self.method.kernel(self.model.log_prob, flow, self.config)
        self._steps = self.method.steps(self.config)
        self.pool_: Tensor | None = None
        self.tilt: Distribution | zuko.lazy.Flow | None = None  # None: the flow's base
        if tilt is not None:
            tilts.install(self, tilt)
        elif self.config.tilt != "base" and self.method.tilt is FlowTiltedEnergy:
            raise ValueError(f"trainer.tilt = {self.config.tilt!r}: the {self.method.name!r} "
                             f"method tilts by its own flow fitted to the data; use 'base'")
        if self.config.global_proposal == "tilt" and tilt is None and self.config.tilt == "base":
            raise ValueError("trainer.global_proposal = 'tilt' proposes from a fitted tilt; set "
                             "trainer.tilt to 'gaussian', 'gmm' or 'flow' (it is 'base')")
        self.config.lr_factor(0)  # a decay without a length is refused here, not mid-run
        self.opt_energy = torch.optim.Adam(energy.parameters(), lr=self.config.lr_energy)
        self.opt_flow = torch.optim.Adam(flow.parameters(), lr=self.config.lr_flow)
        self.generator = torch.Generator(device=self.device).manual_seed(self.config.seed)
        self.iteration_ = 0
        self.history_: dict[str, list] = {}
        self._order: Tensor | None = None  # this epoch's permutation of the data
        self._cursor = 0  # next position in it
        self._n_data: int | None = None
        self._elapsed = 0.0  # seconds of fit() before this process, for resumed runs
        self._pending: list[dict[str, Any]] = []
        self._good: dict[str, Any] | None = None  # last state that passed the divergence guard
        self._resumed_at: int | None = None
        self.resumptions_ = 0
        self._loaded = False  # from a checkpoint, not yet resumed (see run.resume)
        self._callbacks: tuple = ()  # those of the fit in progress
        self._callback_states: list = []  # their states at the last checkpoint or fit

    # ----------------------------------------------------------------------------- construction

    @classmethod
    def from_config(cls, dim: int, sampler: str | KernelFactory = "flowmc",
                    model: ModelConfig | None = None, trainer: TrainerConfig | None = None,
                    device: torch.device | str | None = None) -> JointTrainer:
        """Build an `MLPEnergy` and a flow from ``model`` and a trainer around them.

        The networks are initialized from ``trainer.seed`` without touching the global RNG, so a
        run is reproducible from its configs alone.

        Args:
            dim: the data dimension.
            sampler: as in `JointTrainer`.
            model: the networks (default `ModelConfig()`).
            trainer: the knobs (default `TrainerConfig()`).
            device: where the networks live (default CPU).
        """
        model = model if model is not None else ModelConfig()
        trainer = trainer if trainer is not None else TrainerConfig()
        check_positive_int(dim, "dim")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(trainer.seed)
            energy = MLPEnergy(dim, model.energy_hidden)
            flow = make_flow(dim, kind=model.flow_kind, transforms=model.flow_transforms,
                             hidden=model.flow_hidden, base_scale=model.base_scale)
        return cls(energy.to(device), flow.to(device), sampler, trainer, model_config=model)

    # ---------------------------------------------------------------------------------- model

    def log_prob(self, x: Tensor) -> Tensor:
        """Unnormalized log-density of the model, ``−E(x) + log λ(x)`` (NT-EBM: ``+ log q(x)``).

        Args:
            x: points ``(n, dim)``.

        Returns:
            ``(n,)``, differentiable in ``x`` and in the parameters.
        """
        return self.model.log_prob(x)

    def sample(self, n: int, n_steps: int = 100, generator: torch.Generator | None = None,
               return_trace: bool = False) -> Tensor | samplers.Trace:
        """Draw from the model by running the trainer's kernel from the persistent chains.

        Chains start from the pool (or from ``λ`` before training). The training generator is left
        alone, so sampling between two `fit` calls does not change the run.

        Args:
            n: chains.
            n_steps: kernel steps (for ``"flowmc"`` a step is a whole cycle of local and global
                moves).
            generator: randomness; default a generator seeded with ``config.seed + 1``.
            return_trace: return the whole `samplers.Trace` instead of the final positions.

        Returns:
            Final positions ``(n, dim)``, or the trace ``(n, n_steps, dim)``.
        """
        check_positive_int(n, "n")
        if generator is None:
            generator = torch.Generator(device=self.device).manual_seed(self.config.seed + 1)
        if self.pool_ is None:
            x0 = self._draw_base(n, generator)
        else:
            idx = torch.randint(0, self.pool_.shape[0], (n,), generator=generator,
                                device=self.device)
            x0 = self.pool_[idx]
        trace = samplers.sample(self.kernel, x0, n_steps, progress=False, generator=generator)
        return trace if return_trace else trace.samples[:, -1].to(self.device)

    def _draw_base(self, n: int, generator: torch.Generator) -> Tensor:
        x, _ = draw(self.tilt if self.tilt is not None else base_distribution(self.flow), (n,),
                    generator)
        return x

    def _draw_flow(self, n: int) -> Tensor:
        x, _ = draw(self.flow, (n,), self.generator)
        return x

    # ---------------------------------------------------------------------------------- fit

    def _check_data(self, data: Any, name: str = "data") -> Tensor:
        data = check_points(data, self.dim, name)
        if data.shape[0] < self.config.batch_size:
            raise ValueError(f"{name} has {data.shape[0]} points, fewer than batch_size "
                             f"{self.config.batch_size}")
        if self._n_data is not None and data.shape[0] != self._n_data:
            raise ValueError(f"this trainer was fitted on {self._n_data} points and resumes "
                             f"through their order; received {data.shape[0]} points")
        return data.detach().to(device=self.device, dtype=next(self.energy.parameters()).dtype)

    def fit(self, data: Tensor, n_iterations: int | None = None, *, epochs: int | None = None,
            target: Any = None, callbacks: Sequence[Callback] = (),
            checkpoint_dir: str | Path | None = None, checkpoint_every: int = 500,
            progress: bool = True) -> dict[str, list]:
        """Train for ``n_iterations`` more iterations (or ``epochs`` passes over ``data``).

        Calling `fit` again, or on a trainer from `load`, with the same data continues exactly
        where it stopped.

        Args:
            data: training points ``(n, dim)``, finite.
            n_iterations: iterations to run; or
            epochs: passes over the data, ``n // batch_size`` iterations each.
            target: optional known target (``assign``, ``n_modes``, ``dim``): the history then
                has the negatives' mode weights each iteration and, in 2-D, the EBM's own mode
                weights by quadrature every ``eval_every`` iterations.
            callbacks: called as ``callback(trainer)`` every ``log_every`` iterations; one
                returning True stops training. The state of one with ``state_dict()`` and
                ``load_state_dict()`` goes into checkpoints and comes back on resume.
            checkpoint_dir: if given, a numbered checkpoint ``iter-NNNNNN.pt`` is written
                there (atomically) every ``checkpoint_every`` iterations and at the end, and
                ``last.pt`` made the newest; only the ``config.keep_checkpoints`` newest numbered
                files are kept. Only states that passed the divergence guard are written.
                The directory is locked for the whole call (one writer at a time), and
                SIGINT/SIGTERM stop training after the current iteration with a checkpoint
                (`TrainingInterrupted`; see `flowmc_ebm.training.run`).
            checkpoint_every: iterations between checkpoints.
            progress: show a progress bar (never when the ``CI`` variable is set).

        Returns:
            `history_`: lists with one entry per iteration under ``iteration``,
            ``loss_energy``, ``energy_gap`` (mean E⁺ − mean E⁻), ``energy_pos``, ``energy_neg``,
            ``flow_nll_neg``, ``flow_nll_data``, ``local_accept``, ``global_accept`` (NaN for
            kernels without global moves), ``elapsed`` (seconds), and with a target
            ``neg_mode_weights`` (the share of the iteration's negatives in each mode); in 2-D
            with a target, one entry per evaluation under ``eval_iteration`` and ``ebm_mode_weights``; after a
            divergence, one entry per restart under ``restarts`` (a dict: ``iteration`` where
            it was detected, ``restored_to``, ``reason``, the new ``lr_energy`` and ``lr_flow``).

        Divergence guard (`flowmc_ebm.training.guard`): each iteration's device-side record is
        checked at each history flush, before each checkpoint and at the end, in one transfer;
        out of range (``config.max_abs_energy``, ``config.max_grad_norm``, NaN or inf), the
        trainer goes back to its last good state (networks, optimizers, chains, generator,
        data order, history) with both learning rates times ``config.restart_lr_factor``.
        Callbacks only see checked states (after a restart, the restored iterations again).

        Raises:
            ValueError, TypeError: bad data (NaN/inf, wrong dimension, too few points), a target
                of another dimension, bad iteration counts; nothing is trained or written then.
            TrainingDivergedError: it diverged again after ``config.max_restarts`` restarts; the
                trainer is left at its last good state, and checkpoints on disk are all good.
            samplers.rundir.RunDirectoryLocked: another process is writing ``checkpoint_dir``
                (nothing was trained or written).
            TrainingInterrupted: a signal stopped it; the trainer and the checkpoint just
                written are at ``err.iteration``.
        """
        data = self._check_data(data)
        total = iteration_count(n_iterations, epochs, data.shape[0] // self.config.batch_size)
        if target is not None and getattr(target, "dim", self.dim) != self.dim:
            raise ValueError(f"target is {target.dim}-D but the model is {self.dim}-D")
        check_positive_int(checkpoint_every, "checkpoint_every")
        for callback in callbacks:
            if not callable(callback):
                raise TypeError(f"callbacks must be callables; received {type(callback).__name__}")

        if self.pool_ is None and self.tilt is None and self.config.tilt != "base":
            tilts.install(self, tilts.fit_tilt(self.config.tilt, data, seed=self.config.seed,
                                               model_config=self.model_config,
                                               steps=self.config.tilt_steps))
        run.fit_loop(self, data, total, target, callbacks, checkpoint_dir, checkpoint_every,
                     progress)
        return self.history_

    # ------------------------------------------------------------------------------ one step

    @property
    def elapsed_(self) -> float:
        return self._elapsed

    def _check(self) -> bool:
        """Check the pending records (one transfer); True if all passed (they are then flushed
        and the state becomes the new good snapshot), else restore the last good state and lower
        the learning rates (or raise `TrainingDivergedError`)."""
        bad = self._first_bad()
        if bad is not None:
            guard.restart(self, *bad)
            return False
        self._flush()
        self._good = guard.snapshot(self)
        return True

    def _first_bad(self) -> tuple[int, str] | None:
        return guard.first_bad(self)

    def _parameters(self) -> list[Tensor]:
        return [*self.energy.parameters(), *self.flow.parameters()]

    def _sampler_name(self) -> str:
        return self.method.name

    def _next_batch(self, data: Tensor) -> Tensor:
        b = self.config.batch_size
        if self._order is None or self._cursor + b > self._order.shape[0]:
            self._order = torch.randperm(data.shape[0], generator=self.generator,
                                         device=self.device)
            self._cursor = 0
        idx = self._order[self._cursor:self._cursor + b]
        self._cursor += b
        return data[idx]

    def _iteration(self, data: Tensor, target: Any) -> dict[str, Any]:
        """One iteration (see the module docstring); its record stays on the device."""
        c = self.config
        if c.lr_decay != "none":
            set_rate((self.opt_energy, self.opt_flow),
                     scheduled_rates(c, self.iteration_, len(self.history_.get("restarts", []))))
        batch = self._next_batch(data)
        idx = (torch.randperm(c.pool_size, generator=self.generator,
                              device=self.device)[:c.n_negatives]
               if c.n_negatives < c.pool_size else slice(None))
        # NT-EBM's chains are short-run from the flow (Nijkamp et al. 2022): the flow, fitted to
        # the data, moves faster than persistent latent chains could follow.
        start = self._draw_flow(c.n_negatives) if self.method.fresh_chains else self.pool_[idx]
        negatives, local, globl = advance(self.method, self.kernel, start, self._steps,
                                          self.generator)
        self.pool_[idx] = negatives
        e = updates.energy_step(self.energy, self.opt_energy, batch, negatives, c.energy_l2)
        f = updates.flow_step(self.flow, self.opt_flow, batch, negatives, self.method.flow_fits)
        return updates.iteration_record(e, f, local, globl, negatives, target)

    def _flush(self) -> None:
        run.flush(self)

    # ---------------------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Everything a run needs to continue, as plain data (see `flowmc_ebm.training.persist`)."""
        return persist.state_dict(self)

    def save(self, path: str | Path) -> Path:
        """Write a checkpoint atomically (temporary file, fsync, rename).

        Example:
            >>> import tempfile
            >>> trainer = JointTrainer.from_config(2)
            >>> path = trainer.save(Path(tempfile.mkdtemp()) / "run.pt")
            >>> JointTrainer.load(path).iteration_
            0
        """
        guard.refuse_non_finite(self, path)
        return save_checkpoint(self.state_dict(), path, kind=_CHECKPOINT_KIND)

    @classmethod
    def load(cls, path: str | Path, energy: nn.Module | None = None,
             flow: zuko.lazy.Flow | None = None, sampler: str | KernelFactory | None = None,
             map_location: torch.device | str | None = None) -> JointTrainer:
        """A trainer restored from `save`, ready to `fit` on from where it stopped.

        Args:
            path: the checkpoint.
            energy: the energy module of the saved architecture; needed only when the trainer
                was not built by `from_config` (otherwise it is rebuilt from the checkpoint).
            flow: the flow of the saved architecture; likewise.
            sampler: needed only for a trainer saved with a custom kernel factory.
            map_location: device to load onto (default: that of ``energy``, else CPU).

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file is truncated, corrupt, foreign, or does not fit the modules.
        """
        return persist.restore(cls, path, energy, flow, sampler, map_location)

    @classmethod
    def load_latest(cls, directory: str | Path, **kwargs: Any) -> JointTrainer:
        """`load` the newest checkpoint of ``directory`` that reads (see `latest_checkpoint`)."""
        return cls.load(latest_checkpoint(directory, _CHECKPOINT_KIND), **kwargs)

    def __repr__(self) -> str:
        return (f"JointTrainer(sampler={self._sampler_name()!r}, dim={self.dim}, "
                f"iteration={self.iteration_}, kernel={self.kernel!r})")

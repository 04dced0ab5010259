"""`FlowMCEBM`: a flowMC-EBM as a scikit-learn density estimator, with normalized log-densities.

The estimator wraps `flowmc_ebm.training.JointTrainer`: `fit` trains the energy and its flow on
the rows of ``X``; `score_samples` returns the *normalized* log-density ``log p̃(x) − log Z``,
where ``log Z`` is estimated once after training by importance sampling with the trained flow as
the proposal (defensively mixed with the flow's Gaussian base, so mass the flow missed still
shows up in the weights). ``log Z`` comes with its delta-method standard error and the Pareto
k̂ of the log-weights (ArviZ's ``psislw``); above 0.7 the estimate, and so every normalized
density, is not to be trusted and a `UnreliableNormalizerWarning` says so.

Scikit-learn's conventions hold: parameters are stored as given and checked in `fit`; `fit`
returns ``self``; learned attributes end in ``_``; `sklearn.base.clone`, ``get_params`` and
``set_params`` work, so the estimator sits at the end of a `Pipeline` (e.g. after a
`StandardScaler`: the densities are then those of the scaled data). ``X`` may be a NumPy array
or a torch tensor; `sample` and `score_samples` answer in the kind `fit` received.

Example:
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(256, 2))
    >>> ebm = FlowMCEBM(n_iterations=15, mcmc_steps=5, pool_size=64).fit(X)
    >>> ebm.score_samples(X[:3]).shape, ebm.sample(4, n_steps=5).shape
    ((3,), (4, 2))
    >>> bool(abs(ebm.log_normalizer_) < 1.0)
    True
"""

from __future__ import annotations

import warnings
from dataclasses import fields
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import Tensor, nn

from flowmc_ebm._checks import check_positive_int
from flowmc_ebm.config import SAMPLERS, ModelConfig, TrainerConfig
from flowmc_ebm.diagnostics.normalizer import LogNormalizer, importance_log_normalizer
from flowmc_ebm.diagnostics.weights import (
    KHAT_THRESHOLD,
    ModeWeights,
    importance_mode_weights,
    mode_weights,
)
from flowmc_ebm.flows import base_distribution, make_flow
from flowmc_ebm.training import JointTrainer, tilts
from flowmc_ebm.training.tilts import TILTS

__all__ = ["CHAIN_CHECK_STEPS", "FlowMCEBM", "LogNormalizer", "UnreliableNormalizerWarning",
           "importance_log_normalizer"]

#: `TrainerConfig` fields the estimator sets from its own parameters (not via ``trainer_options``).
_OWN_KNOBS = ("pool_size", "batch_size", "n_negatives", "mcmc_steps", "lr_energy", "lr_flow",
              "lr_decay", "lr_decay_iterations", "energy_l2", "tilt", "seed")

#: Flowmc cycles `mode_weights(method="chains")` runs by default. #14 read one real-data EBM
#: twice with 128 chains x 100 cycles: the two readings differed by 2.6 times their standard
#: error (short chains that rarely change mode understate it); 500-cycle chains agreed with
#: importance sampling within 1-2 standard errors.
CHAIN_CHECK_STEPS = 500


class UnreliableNormalizerWarning(UserWarning):
    """The importance-sampling ``log Z`` has Pareto k̂ > 0.7: normalized densities are unreliable."""


class FlowMCEBM(DensityMixin, BaseEstimator):
    """An energy-based model trained by flowMC-EBM (or a baseline), as a density estimator.

    Args:
        method: ``"flowmc"`` (flowMC-EBM), ``"ula"`` (ULA-PCD), ``"mala"`` (MALA-PCD) or
            ``"nt"`` (NT-EBM).
        energy: an energy network ``(n, d) -> (n,)`` (an ``nn.Module`` with parameters), copied
            at each `fit`; None builds an `MLPEnergy` of widths ``energy_hidden``.
        flow: a zuko flow on ``R^d``, copied at each `fit`; None builds one with
            `flowmc_ebm.flows.make_flow` from ``flow_kind``, ``flow_transforms``, ``flow_hidden``
            and ``base_scale``.
        energy_hidden: widths of the default `MLPEnergy` (see `flowmc_ebm.config.ModelConfig`).
        flow_kind: kind of the default flow (``"realnvp"``, ...; see `flowmc_ebm.flows.make_flow`).
        flow_transforms: transforms of the default flow.
        flow_hidden: hidden widths of the default flow's networks.
        base_scale: scale of the default flow's Gaussian base.
        n_iterations: EBM steps; None means ``epochs`` passes over the data.
        epochs: passes over the data (``n // batch_size`` steps each) when ``n_iterations`` is
            None.
        batch_size: data points per step (capped at the number of rows).
        pool_size: persistent chains (see `flowmc_ebm.config.TrainerConfig`).
        n_negatives: chains advanced per step.
        mcmc_steps: MCMC moves per chain per iteration (a flowMC cycle is ``n_local + n_global``
            moves, so with the default 4 + 1 it must be a multiple of 5; a ULA or MALA step is
            one move); see `flowmc_ebm.config.TrainerConfig`.
        lr_energy: Adam learning rate of the energy.
        lr_flow: Adam learning rate of the flow.
        lr_decay: ``"cosine"``, ``"linear"`` or ``"none"``, over the whole run.
        energy_l2: ``α`` of the energy regularizer.
        tilt: the EBM's tilt ``λ`` in ``log p̃ = −E + log λ`` (`flowmc_ebm.training.tilts`):
            ``"auto"`` (the default: ``"gmm"``, or ``"base"`` for NT-EBM), ``"base"`` (the flow's
            Gaussian base, the paper's), ``"gaussian"``, ``"gmm"`` (a Gaussian mixture fitted to
            the data, its size by BIC) or ``"flow"``; fitted to ``X`` at `fit`. With a tilt other
            than ``"base"``, flowMC-EBM's global moves propose from the tilt
            (``TrainerConfig.global_proposal = "tilt"``; ``trainer_options={"global_proposal":
            "flow"}`` restores the paper's flow proposal): on real data these two settings took
            the class weights to within 0.03 (`docs/results_real_data.md`). The importance sampling
            of ``log Z`` and of the mode weights proposes from what the global moves proposed
            from (the tilt, defended by the flow's base; with the flow proposal: the flow,
            defended by the tilt). NT-EBM (``method="nt"``) takes only ``"base"``.
        trainer_options: other `TrainerConfig` fields, e.g. ``{"step_size": 0.05}``.
        n_importance: importance draws for ``log Z`` after training.
        defensive: share of those drawn from the flow's Gaussian base instead of the flow.
        sample_steps: kernel steps `sample` runs by default from the persistent chains.
        device: where the networks live (default CPU).
        random_state: seed of the networks, the data order, the chains and ``log Z``'s draws
            (an int; None means 0, so a fit is reproducible by default).
        progress: show a progress bar while training.

    Attributes:
        energy_: the trained energy network.
        flow_: the trained flow.
        trainer_: the `JointTrainer` (persistent chains ``trainer_.pool_``).
        history_: the trainer's per-iteration records (see `JointTrainer.fit`).
        log_normalizer_: importance-sampling estimate of ``log Z`` of ``exp(log p̃)``.
        log_normalizer_se_: its standard error.
        pareto_k_: Pareto k̂ of the importance log-weights (> 0.7: do not trust ``log Z``).
        importance_ess_: Kish effective sample size of those weights.
        n_features_in_: the data dimension.
        n_iterations_: EBM steps taken.

    Example:
        >>> from sklearn.pipeline import make_pipeline
        >>> from sklearn.preprocessing import StandardScaler
        >>> X = np.random.default_rng(0).normal(3.0, 2.0, size=(128, 2))
        >>> pipe = make_pipeline(StandardScaler(), FlowMCEBM(n_iterations=15, mcmc_steps=5,
        ...                                                    pool_size=64))
        >>> pipe.fit(X).score_samples(X).shape
        (128,)
    """

    def __init__(self, method: str = "flowmc", *, energy: nn.Module | None = None,
                 flow: nn.Module | None = None, energy_hidden: tuple[int, ...] = (128, 128),
                 flow_kind: str = "realnvp", flow_transforms: int = 4,
                 flow_hidden: tuple[int, ...] = (64, 64), base_scale: float = 1.0,
                 n_iterations: int | None = None, epochs: int = 20, batch_size: int = 64,
                 pool_size: int = 1024, n_negatives: int = 64, mcmc_steps: int = 10,
                 lr_energy: float = 0.01, lr_flow: float = 0.01, lr_decay: str = "cosine",
                 energy_l2: float = 0.0, tilt: str = "auto", trainer_options: dict[str, Any] | None = None,
                 n_importance: int = 20_000, defensive: float = 0.1, sample_steps: int = 100,
                 device: str | None = None, random_state: int | None = 0,
                 progress: bool = False) -> None:
        self.method = method
        self.energy = energy
        self.flow = flow
        self.energy_hidden = energy_hidden
        self.flow_kind = flow_kind
        self.flow_transforms = flow_transforms
        self.flow_hidden = flow_hidden
        self.base_scale = base_scale
        self.n_iterations = n_iterations
        self.epochs = epochs
        self.batch_size = batch_size
        self.pool_size = pool_size
        self.n_negatives = n_negatives
        self.mcmc_steps = mcmc_steps
        self.lr_energy = lr_energy
        self.lr_flow = lr_flow
        self.lr_decay = lr_decay
        self.energy_l2 = energy_l2
        self.tilt = tilt
        self.trainer_options = trainer_options
        self.n_importance = n_importance
        self.defensive = defensive
        self.sample_steps = sample_steps
        self.device = device
        self.random_state = random_state
        self.progress = progress

    # ------------------------------------------------------------------------------- fitting

    def fit(self, X: Any, y: Any = None) -> FlowMCEBM:
        """Train the EBM and its flow on the rows of ``X``, then estimate ``log Z``.

        Args:
            X: ``(n, d)`` NumPy array, array-like or torch tensor, finite.
            y: ignored (scikit-learn's signature).

        Returns:
            self.

        Raises:
            ValueError, TypeError: bad data (NaN/inf, not 2-D, no rows) or a bad parameter
                (the message names it).
            TrainingDivergedError: training diverged beyond the trainer's restarts.
        """
        self._torch_input = isinstance(X, Tensor)
        data = self._validate(X, reset=True)
        n, dim = data.shape
        if self.method not in SAMPLERS:
            raise ValueError(f"method must be one of {', '.join(SAMPLERS)}; received "
                             f"{self.method!r}")
        batch = min(self._positive("batch_size"), n)
        total = self.n_iterations
        if total is None:
            total = self._positive("epochs") * max(n // batch, 1)
        elif isinstance(total, bool) or not isinstance(total, int) or total < 1:
            raise ValueError(f"n_iterations must be a positive int or None; received {total!r}")
        for name in ("n_importance", "sample_steps"):
            self._positive(name, minimum=2 if name == "n_importance" else 1)
        if not isinstance(self.tilt, str) or self.tilt not in ("auto", *TILTS):
            raise ValueError(f"tilt must be one of auto, {', '.join(TILTS)}; received "
                             f"{self.tilt!r}")
        if self.tilt not in ("auto", "base") and self.method == "nt":
            raise ValueError(f"tilt={self.tilt!r} with method='nt': NT-EBM tilts by its own flow "
                             "fitted to the data; use tilt='base'")
        tilt = self.tilt if self.tilt != "auto" else ("base" if self.method == "nt" else "gmm")
        if not isinstance(self.defensive, (int, float)) or not 0.0 <= self.defensive < 1.0:
            raise ValueError(f"defensive must be a share in [0, 1); received {self.defensive!r}")
        options = dict(self.trainer_options or {})
        clash = sorted(set(options) & set(_OWN_KNOBS))
        if clash:
            raise ValueError(f"trainer_options may not set {', '.join(clash)}: they are "
                             "parameters of FlowMCEBM itself")
        known = {f.name for f in fields(TrainerConfig)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown trainer_options {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(known - set(_OWN_KNOBS)))}")
        if self.method == "flowmc" and tilt != "base":
            options.setdefault("global_proposal", "tilt")
        seed = 0 if self.random_state is None else self.random_state
        config = TrainerConfig(pool_size=self.pool_size, batch_size=batch,
                               n_negatives=min(self.n_negatives, self.pool_size),
                               mcmc_steps=self.mcmc_steps, lr_energy=self.lr_energy,
                               lr_flow=self.lr_flow, lr_decay=self.lr_decay,
                               lr_decay_iterations=total, energy_l2=self.energy_l2,
                               tilt=tilt, seed=seed, **options)
        self.trainer_ = self._build_trainer(dim, config)
        data = data.to(self.trainer_.device)
        self.trainer_.fit(data, n_iterations=total, progress=self.progress)
        self.energy_ = self.trainer_.energy
        self.flow_ = self.trainer_.flow
        self.history_ = self.trainer_.history_
        self.n_iterations_ = self.trainer_.iteration_
        self._set_log_normalizer(self.estimate_log_normalizer(random_state=seed))
        return self

    def _build_trainer(self, dim: int, config: TrainerConfig) -> JointTrainer:
        import copy

        model = ModelConfig(energy_hidden=tuple(self.energy_hidden), flow_kind=self.flow_kind,
                            flow_transforms=self.flow_transforms,
                            flow_hidden=tuple(self.flow_hidden), base_scale=self.base_scale)
        if self.energy is None and self.flow is None:
            return JointTrainer.from_config(dim, self.method, model, config, device=self.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            built = JointTrainer.from_config(dim, self.method, model, config) \
                if self.energy is None or self.flow is None else None
            energy = copy.deepcopy(self.energy) if self.energy is not None else built.energy
            flow = copy.deepcopy(self.flow) if self.flow is not None else make_flow(
                dim, kind=self.flow_kind, transforms=self.flow_transforms,
                hidden=tuple(self.flow_hidden), base_scale=self.base_scale)
        if self.device is not None:
            energy, flow = energy.to(self.device), flow.to(self.device)
        return JointTrainer(energy, flow, self.method, config)

    def _positive(self, name: str, minimum: int = 1) -> int:
        return check_positive_int(getattr(self, name), name, minimum)

    def _validate(self, X: Any, reset: bool) -> Tensor:
        if isinstance(X, Tensor):
            X = X.detach().cpu().numpy()
        X = validate_data(self, X, reset=reset, dtype=[np.float64, np.float32])
        return torch.tensor(np.asarray(X, dtype=np.float32))

    # ------------------------------------------------------------------------------ log Z

    def estimate_log_normalizer(self, n: int | None = None, *,
                                random_state: int | None = None) -> LogNormalizer:
        """Estimate ``log Z`` of the trained model by importance sampling with its flow.

        `fit` calls this once and keeps the result in ``log_normalizer_``,
        ``log_normalizer_se_`` and ``pareto_k_``; call it again with a larger ``n`` for a
        smaller standard error (the attributes are updated).

        Args:
            n: proposals (default ``n_importance``).
            random_state: seed of the draws (default ``random_state``).

        Warns:
            UnreliableNormalizerWarning: Pareto k̂ > 0.7.
        """
        check_is_fitted(self, "trainer_")
        n = self.n_importance if n is None else n
        seed = (self.random_state or 0) if random_state is None else random_state
        proposal, reference = self._proposal()
        est = importance_log_normalizer(self.trainer_.log_prob, proposal, n,
                                        reference=reference, defensive=self.defensive or 0.1,
                                        seed=seed)
        if not est.pareto_k <= KHAT_THRESHOLD:
            warnings.warn(f"log Z by importance sampling has Pareto k-hat {est.pareto_k:.2f} > "
                          f"{KHAT_THRESHOLD}: the flow is a poor proposal for the trained EBM, "
                          f"so log Z ({est.log_z:.3f} ± {est.se:.3f}) and every normalized "
                          "density (score_samples, score) are unreliable; train longer or "
                          "raise n_importance", UnreliableNormalizerWarning, stacklevel=2)
        self._set_log_normalizer(est)
        return est

    def _proposal(self) -> tuple[Any, Any]:
        """The importance proposal (`flowmc_ebm.training.tilts.global_proposal`: the flow, or the
        tilt where flowMC's global moves proposed from it) and its defensive component: the tilt
        behind the flow when there is one, else the flow's (broad) base."""
        trainer, base = self.trainer_, base_distribution(self.flow_)
        proposal = tilts.global_proposal(trainer)
        if self.defensive == 0:
            return proposal, None
        if proposal is trainer.tilt or trainer.tilt is None:
            return proposal, base
        return proposal, trainer.tilt

    def _set_log_normalizer(self, est: LogNormalizer) -> None:
        self.log_normalizer_ = est.log_z
        self.log_normalizer_se_ = est.se
        self.pareto_k_ = est.pareto_k
        self.importance_ess_ = est.ess

    # ---------------------------------------------------------------------------- answers

    def score_samples(self, X: Any) -> np.ndarray | Tensor:
        """Normalized log-density ``log p̃(x) − log Z`` of each row of ``X``.

        Returns:
            ``(n,)``: a float64 NumPy array, or a tensor when ``X`` is a tensor. Its error is
            that of ``log Z`` (``log_normalizer_se_``), the same for every row.
        """
        check_is_fitted(self, "trainer_")
        as_tensor = isinstance(X, Tensor)
        x = self._validate(X, reset=False).to(self.trainer_.device)
        with torch.no_grad():
            values = torch.cat([self.trainer_.log_prob(chunk) for chunk in x.split(65_536)]) \
                if x.shape[0] else x.new_zeros(0)
        out = values.double() - self.log_normalizer_
        return out if as_tensor else out.cpu().numpy()

    def score(self, X: Any, y: Any = None) -> float:
        """Mean normalized log-likelihood of the rows of ``X`` (nats per point)."""
        return float(self.score_samples(X).mean())

    def sample(self, n_samples: int = 1, *, n_steps: int | None = None,
               random_state: int | None = None) -> np.ndarray | Tensor:
        """Draws from the trained EBM: the trainer's kernel run from the persistent chains.

        Args:
            n_samples: draws (independent chains).
            n_steps: kernel steps per chain (default ``sample_steps``).
            random_state: seed (default ``random_state + 1``, apart from training's).

        Returns:
            ``(n_samples, d)``, a NumPy array or (when `fit` got a tensor) a tensor.
        """
        check_is_fitted(self, "trainer_")
        if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or \
                n_samples < 1:
            raise ValueError(f"n_samples must be a positive int; received {n_samples!r}")
        steps = self.sample_steps if n_steps is None else n_steps
        seed = ((self.random_state or 0) + 1) if random_state is None else random_state
        generator = torch.Generator(device=self.trainer_.device).manual_seed(seed)
        x = self.trainer_.sample(int(n_samples), n_steps=steps, generator=generator).detach()
        return x if getattr(self, "_torch_input", False) else x.cpu().numpy()

    def mode_weights(self, assign: Any, *, method: str = "importance", n: int | None = None,
                     n_chains: int = 256, n_steps: int | None = None, level: float = 0.95,
                     random_state: int | None = None) -> ModeWeights:
        """Mass of each mode (or class, cluster) under the trained EBM, with standard errors.

        Read the weights with ``method="importance"`` (the default) and use ``"chains"`` as a
        check. Importance draws are independent, so their standard error holds whenever the
        Pareto k̂ is below 0.7. Chains that rarely change mode understate theirs: in #14 two
        readings of one real-data EBM by 128 chains x 100 flowMC cycles differed by 2.6 times
        their standard error, while 500-cycle chains agreed with importance sampling
        (`docs/results_real_data.md`).

        Args:
            assign: what maps points to modes: centers ``(K, d)``, a callable
                ``x[n, d] -> labels`` such as ``classifier.predict``, or `FittedModes`.
            method: ``"importance"`` (self-normalized importance sampling with the flow,
                defensively mixed with the tilt or the flow's base: the estimator of ``log Z``)
                or ``"chains"`` (occupancy of ``n_chains`` chains run ``n_steps`` kernel steps
                from the pool).
            n: importance draws (default ``n_importance``).
            n_chains: chains of ``"chains"``.
            n_steps: kernel steps of ``"chains"`` (a flowMC step is a whole cycle of local and
                global moves); default `CHAIN_CHECK_STEPS` (500), or ``sample_steps`` if larger.
            level: coverage of the intervals.
            random_state: seed.

        Returns:
            `flowmc_ebm.diagnostics.ModeWeights` (weights, se, interval; ``pareto_k`` for
            importance sampling).
        """
        check_is_fitted(self, "trainer_")
        seed = (self.random_state or 0) if random_state is None else random_state
        if method == "importance":
            proposal, reference = self._proposal()
            return importance_mode_weights(
                self.trainer_.log_prob, proposal, assign,
                self.n_importance if n is None else n, level=level, seed=seed,
                reference=reference, defensive=self.defensive or 0.1)
        if method == "chains":
            steps = max(self.sample_steps, CHAIN_CHECK_STEPS) if n_steps is None else n_steps
            check_positive_int(steps, "n_steps")
            check_positive_int(n_chains, "n_chains")
            generator = torch.Generator(device=self.trainer_.device).manual_seed(seed + 1)
            trace = self.trainer_.sample(n_chains, n_steps=steps, generator=generator,
                                         return_trace=True)
            return mode_weights(trace, assign, level=level)
        raise ValueError(f"method must be 'importance' or 'chains'; received {method!r}")

    # ------------------------------------------------------------------------------ pickling

    def __getstate__(self) -> dict[str, Any]:
        # The trainer's kernel holds closures pickle cannot write: keep its plain state instead.
        state = self.__dict__.copy()
        trainer = state.pop("trainer_", None)
        if trainer is not None:
            state["_trainer_state"] = {"config": trainer.config, "pool": trainer.pool_,
                                       "iteration": trainer.iteration_, "tilt": trainer.tilt}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        saved = state.pop("_trainer_state", None)
        self.__dict__.update(state)
        if saved is not None:
            trained_flow = {k: v.clone() for k, v in self.flow_.state_dict().items()}
            trainer = JointTrainer(self.energy_, self.flow_, self.method, saved["config"],
                                   tilt=saved.get("tilt"))
            # Installing a "flow" tilt starts flowMC's flow as a copy of it: put the trained back.
            self.flow_.load_state_dict(trained_flow)
            trainer.pool_ = saved["pool"]
            trainer.iteration_ = saved["iteration"]
            trainer.history_ = self.history_
            self.trainer_ = trainer

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.non_deterministic = False
        return tags


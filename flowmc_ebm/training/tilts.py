"""The EBM's tilt ``λ`` in ``log p̃(x) = −E(x) + log λ(x)``, fitted to the data a user brings.

The paper tilts by the flow's base, ``λ = N(0, I)``. On toy targets centred at the origin that is
harmless; on real data it is not. The energy starts at ``E ≡ 0``, so the untrained model *is* the
tilt, and the energy-L2 term ``α (E⁺² + E⁻²)`` keeps pulling the model back toward it: whatever
mass the tilt gives each class, the EBM must undo by an energy offset that the penalty resists. On
digits 0/1 mixed 3:1 the N(0, I) base favours the 0s by about e^1.3 and flowMC-EBM ended at 0.85
for the 0s (truth 0.75; `docs/results_digits.md`). A Gaussian with the
data's mean and covariance does not help there: after whitening it *is* N(0, I). The tilt needs
nearly the right mass per mode and a smooth density (MALA has to move on it). A Gaussian mixture
fitted by EM has both; a flow fitted by maximum likelihood has the mass but, on dequantized
copies of few images, learns a rough density on which MALA's acceptance fell to 1e-4. Measured
(`docs/results_real_data.md`): the mixture tilt takes flowMC-EBM from 0.115 to a median 0.035
off on the worst class, but the EBM stays near its tilt rather than correcting it, and a
GaussianMixture fitted directly is still closer.

Kinds (`TrainerConfig.tilt`):

- ``"base"``: the flow's own base (the paper's; the default, so earlier runs are unchanged).
- ``"gaussian"``: ``N(mean, cov)`` of the data (a ridge of ``1e-4 · mean variance`` on the
  diagonal).
- ``"gmm"``: a full-covariance Gaussian mixture fitted by EM, its size chosen by BIC among 1..10
  (scikit-learn's `GaussianMixture`): the setting to use on real data.
- ``"flow"``: a flow of the model's architecture fitted to the data by maximum likelihood (Adam,
  cosine-decayed, ``tilt_steps`` steps), then frozen. With ``"flowmc"`` the sampler's flow starts
  as a copy of it, so the global moves are good from the first iteration.

Example:
    >>> data = torch.randn(256, 2) * 3 + 1
    >>> lam = fit_tilt("gaussian", data)
    >>> [round(v, 1) for v in lam.mean.tolist()] == [round(v, 1) for v in data.mean(0).tolist()]
    True
    >>> model = tilted_model(lambda x: torch.zeros(x.shape[0]), lam)
    >>> torch.allclose(model.log_prob(data[:3]), lam.log_prob(data[:3]))
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import zuko
from torch import Tensor
from torch.distributions import Categorical, Distribution, MixtureSameFamily, MultivariateNormal

from flowmc_ebm._checks import check_positive_int
from flowmc_ebm.energies import FlowTiltedEnergy, TiltedEnergy
from flowmc_ebm.flows import make_flow

__all__ = ["TILTS", "fit_tilt", "flow_tilt", "gaussian_tilt", "global_proposal", "gmm_tilt", "install",
           "restore_tilt", "tilt_state", "tilted_model"]

#: The kinds `fit_tilt` builds (``"base"`` builds nothing: the flow's base is the tilt).
TILTS = ("base", "gaussian", "gmm", "flow")


def _check(data: Any) -> Tensor:
    if not isinstance(data, Tensor) or data.ndim != 2 or not data.is_floating_point():
        shape = tuple(data.shape) if isinstance(data, Tensor) else type(data).__name__
        raise ValueError(f"a tilt is fitted to floating-point data of shape (n, dim); received "
                         f"{shape}")
    if data.shape[0] < 2:
        raise ValueError(f"a tilt needs at least 2 data points; received n_samples = {data.shape[0]}")
    if not bool(torch.isfinite(data).all()):
        raise ValueError("a tilt cannot be fitted to data with NaN or infinite values")
    return data.detach()


def gaussian_tilt(data: Tensor) -> MultivariateNormal:
    """``N(mean, cov)`` of ``data (n, dim)``, with a small ridge so a flat direction is no error.

    Example:
        >>> gaussian_tilt(torch.randn(100, 3)).event_shape
        torch.Size([3])
    """
    data = _check(data)
    cov = torch.atleast_2d(torch.cov(data.T))
    ridge = 1e-4 * cov.diagonal().mean().clamp_min(1e-12)
    eye = torch.eye(data.shape[1], dtype=data.dtype, device=data.device)
    return MultivariateNormal(data.mean(0), covariance_matrix=cov + ridge * eye)


def gmm_tilt(data: Tensor, n_components: int = 0, *, max_components: int = 10,
             seed: int = 0) -> MixtureSameFamily:
    """A Gaussian mixture fitted to ``data (n, dim)`` by EM (scikit-learn's `GaussianMixture`,
    full covariances), as a torch distribution.

    Args:
        n_components: the number of components; 0 picks it by BIC among 1..``max_components``.
        seed: EM's initialization.

    Example:
        >>> x = torch.cat([torch.randn(300, 2) - 4, torch.randn(100, 2) + 4])
        >>> lam = gmm_tilt(x, seed=0)
        >>> lam.mixture_distribution.probs.shape[0], round(float(lam.mixture_distribution.probs.max()), 2)
        (2, 0.75)
    """
    from sklearn.mixture import GaussianMixture

    data = _check(data)
    check_positive_int(n_components, "n_components (0: chosen by BIC)", minimum=0)
    x = data.double().cpu().numpy()
    sizes = [n_components] if n_components else range(1, max(1, min(max_components, len(x) // 2)) + 1)
    fits = [GaussianMixture(k, covariance_type="full", n_init=2, random_state=seed).fit(x)
            for k in sizes]
    best = min(fits, key=lambda g: g.bic(x))
    like = {"dtype": data.dtype, "device": data.device}
    return MixtureSameFamily(
        Categorical(probs=torch.as_tensor(best.weights_, **like)),
        MultivariateNormal(torch.as_tensor(best.means_, **like),
                           covariance_matrix=torch.as_tensor(best.covariances_, **like)))


def flow_tilt(data: Tensor, *, kind: str = "realnvp", transforms: int = 4,
              hidden: Sequence[int] = (64, 64), steps: int = 1000, lr: float = 3e-3,
              batch_size: int = 256, seed: int = 0) -> zuko.lazy.Flow:
    """A flow fitted to ``data (n, dim)`` by maximum likelihood, then frozen.

    Adam from ``lr``, cosine-decayed to 0 over ``steps`` minibatches of ``batch_size`` drawn with
    replacement. The initialization and the batches come from ``seed`` alone; the global RNG is
    left as it was.

    Returns:
        A zuko flow (``flow()`` is a ``Distribution``) whose parameters need no gradient.

    Example:
        >>> flow = flow_tilt(torch.randn(200, 2) + 5, hidden=(8,), transforms=2, steps=50)
        >>> flow().log_prob(torch.zeros(1, 2)).shape, any(p.requires_grad for p in flow.parameters())
        (torch.Size([1]), False)
    """
    data = _check(data)
    check_positive_int(steps, "steps")
    generator = torch.Generator(device=data.device).manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        flow = make_flow(data.shape[1], kind=kind, transforms=transforms, hidden=hidden)
    flow = flow.to(device=data.device, dtype=data.dtype)
    opt = torch.optim.Adam(flow.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        idx = torch.randint(0, data.shape[0], (batch_size,), generator=generator,
                            device=data.device)
        loss = -flow().log_prob(data[idx]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
    return flow.requires_grad_(False)


def fit_tilt(kind: str, data: Tensor, *, model_config: Any = None, steps: int = 1000,
             seed: int = 0) -> Distribution | zuko.lazy.Flow | None:
    """The tilt of ``kind`` (see `TILTS`) fitted to ``data``; None for ``"base"``.

    Args:
        kind: ``"base"``, ``"gaussian"`` or ``"flow"``.
        data: ``(n, dim)``.
        model_config: a `ModelConfig` whose flow architecture a ``"flow"`` tilt takes (so the
            sampler's flow can start as a copy of it); default that of `ModelConfig()`.
        steps: maximum-likelihood steps of a ``"flow"`` tilt.
        seed: its initialization and batches.
    """
    if kind == "base":
        return None
    if kind == "gaussian":
        return gaussian_tilt(data)
    if kind == "gmm":
        return gmm_tilt(data, seed=seed)
    if kind == "flow":
        if model_config is None:
            from flowmc_ebm.config import ModelConfig

            model_config = ModelConfig()
        return flow_tilt(data, kind=model_config.flow_kind,
                         transforms=model_config.flow_transforms,
                         hidden=model_config.flow_hidden, steps=steps, seed=seed)
    raise ValueError(f"unknown tilt {kind!r}; expected one of {', '.join(TILTS)}")


def tilted_model(energy: Callable[[Tensor], Tensor],
                 tilt: Distribution | zuko.lazy.Flow) -> TiltedEnergy | FlowTiltedEnergy:
    """``−E(x) + log λ(x)`` for a tilt that is a ``Distribution`` or a (frozen) zuko flow."""
    if isinstance(tilt, zuko.lazy.Flow):
        return FlowTiltedEnergy(energy, tilt)
    if isinstance(tilt, Distribution):
        return TiltedEnergy(energy, tilt)
    raise TypeError(f"a tilt must be a torch Distribution or a zuko Flow; received "
                    f"{type(tilt).__name__}")


def tilt_state(tilt: Distribution | zuko.lazy.Flow | None) -> dict[str, Any] | None:
    """The tilt as plain tensors for a checkpoint (`restore_tilt` reads it back)."""
    if tilt is None:
        return None
    if isinstance(tilt, zuko.lazy.Flow):
        return {"kind": "flow", "state": tilt.state_dict()}
    if isinstance(tilt, MultivariateNormal):
        return {"kind": "gaussian", "loc": tilt.loc, "covariance": tilt.covariance_matrix}
    if isinstance(tilt, MixtureSameFamily) and isinstance(tilt.component_distribution,
                                                          MultivariateNormal):
        return {"kind": "gmm", "probs": tilt.mixture_distribution.probs,
                "loc": tilt.component_distribution.loc,
                "covariance": tilt.component_distribution.covariance_matrix}
    raise ValueError(f"a checkpoint can keep a Gaussian or a flow tilt; this trainer's tilt is a "
                     f"{type(tilt).__name__} (pass it again as tilt= to JointTrainer.load)")


def restore_tilt(state: dict[str, Any] | None, dim: int,
                 model_config: Any = None) -> Distribution | zuko.lazy.Flow | None:
    """The tilt of a `tilt_state`, a flow rebuilt with ``model_config``'s architecture."""
    if state is None:
        return None
    if state["kind"] == "gaussian":
        return MultivariateNormal(state["loc"], covariance_matrix=state["covariance"])
    if state["kind"] == "gmm":
        return MixtureSameFamily(Categorical(probs=state["probs"]),
                                 MultivariateNormal(state["loc"],
                                                    covariance_matrix=state["covariance"]))
    if model_config is None:
        raise ValueError("a flow tilt is rebuilt from the model config; this checkpoint has none")
    flow = make_flow(dim, kind=model_config.flow_kind, transforms=model_config.flow_transforms,
                     hidden=model_config.flow_hidden)
    flow.load_state_dict(state["state"])
    return flow.requires_grad_(False)


def global_proposal(trainer: Any) -> Any:
    """What ``trainer``'s global moves propose from: its tilt where ``trainer.global_proposal`` is
    ``"tilt"`` and a tilt is installed, else its sampler flow. The importance readings of a
    trained model (``log Z``, mode weights) propose from the same: where the moves came from the
    tilt, the flow learned from chains it did not move."""
    if trainer.tilt is not None and trainer.config.global_proposal == "tilt":
        return trainer.tilt
    return trainer.flow


def install(trainer: Any, tilt: Distribution | zuko.lazy.Flow) -> None:
    """Make ``tilt`` the EBM's tilt in ``trainer`` (a `JointTrainer` not yet trained).

    The model becomes ``−E + log tilt``, the kernel is rebuilt on it, the pool will start as
    draws from the tilt (the untrained model exactly), and with ``"flowmc"`` a flow tilt of the
    same architecture as the sampler's flow is copied into it.

    Raises:
        ValueError: NT-EBM (its tilt is its own flow, fitted to the data), a trainer that has
            already started, or a tilt of another dimension.
        TypeError: a tilt that is neither a ``Distribution`` nor a zuko flow.
    """
    if trainer.method.tilt is FlowTiltedEnergy:
        raise ValueError(f"the {trainer.method.name!r} method tilts the energy by its own flow "
                         f"fitted to the data; it takes no other tilt (tilt must be 'base')")
    if trainer.pool_ is not None:
        raise ValueError("the tilt is set before training starts; this trainer already has chains")
    model = tilted_model(trainer.energy, tilt)
    event = (tilt() if isinstance(tilt, zuko.lazy.Flow) else tilt).event_shape
    if tuple(event) != (trainer.dim,):
        raise ValueError(f"the tilt's event shape must be ({trainer.dim},) for this "
                         f"{trainer.dim}-D model; received {tuple(event)}")
    trainer.tilt = tilt
    trainer.model = model
    trainer.kernel = trainer.method.kernel(model.log_prob, global_proposal(trainer), trainer.config)
    if trainer.method.name == "flowmc" and isinstance(tilt, zuko.lazy.Flow):
        try:
            trainer.flow.load_state_dict(tilt.state_dict())
        except RuntimeError:
            pass  # another architecture: the sampler's flow learns on its own, as without a tilt

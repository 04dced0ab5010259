"""ArviZ, imported quietly and called on `(chains, draws, dim)` arrays: one value per dimension.

Every R-hat, ESS, MCSE and Pareto k-hat in the diagnostics comes from here, so the numbers are
ArviZ's own. Arrays go through `arviz.convert_to_dataset`, the entry point ArviZ keeps across
its 0.x (InferenceData) and 1.x (DataTree) lines.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import numpy as np


@functools.cache
def _load() -> Any:
    # Imported on first use, not with the package: ArviZ (with xarray, pandas and scipy.stats)
    # takes about 2.5 s to import, which every CLI call (`flowmc-ebm --version` included) and
    # every `import flowmc_ebm` would pay before doing anything.
    with warnings.catch_warnings():
        # arviz 0.2x announces its 1.0 refactor on import; our users did not ask for that notice.
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

    return arviz


def __getattr__(name: str) -> Any:
    # `_arviz.az` is the arviz module, loaded on first access.
    if name == "az":
        return _load()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _per_dim(stat, x: np.ndarray, **kwargs) -> np.ndarray:
    with warnings.catch_warnings():
        # "More chains than draws": our layout is often many short chains, and the array is
        # already (chains, draws, dim) by construction, so the guess ArviZ warns about is moot.
        warnings.filterwarnings("ignore", message="More chains", category=UserWarning)
        dataset = _load().convert_to_dataset({"x": x})
    # Constant draws (e.g. a mode indicator no chain ever leaves) give 0/0 inside ArviZ: NaN is
    # the right answer there and numpy's warning would only be noise.
    with np.errstate(divide="ignore", invalid="ignore"):
        out = stat(dataset, **kwargs)["x"]
    return np.asarray(out, dtype=float).reshape(x.shape[2])


def rhat(x: np.ndarray) -> np.ndarray:
    """Rank-normalized split R-hat (max of bulk and folded), `(chains, draws, dim) -> (dim,)`."""
    return _per_dim(_load().rhat, x, method="rank")


def ess(x: np.ndarray, method: str) -> np.ndarray:
    """ArviZ ESS with `method` in {"bulk", "tail", "mean"}, `(chains, draws, dim) -> (dim,)`."""
    return _per_dim(_load().ess, x, method=method)


def mcse_mean(x: np.ndarray) -> np.ndarray:
    """Monte Carlo standard error of the mean, `(chains, draws, dim) -> (dim,)`."""
    return _per_dim(_load().mcse, x, method="mean")


def pareto_khat(log_weights: np.ndarray) -> float:
    """Pareto k-hat of importance log-weights `(n,)` from ArviZ's `psislw`."""
    with warnings.catch_warnings():
        # ArviZ warns when k-hat > 0.7; callers report k-hat themselves.
        warnings.simplefilter("ignore", UserWarning)
        _, khat = _load().psislw(np.asarray(log_weights, dtype=float))
    return float(khat)

"""Which mode a point belongs to: given assignments, nearest centers, or modes fitted by sklearn.

An *assign* is anything the mode diagnostics accept to label points with a mode index in
`0..K-1`:

- a callable `x[n, dim] -> labels[n]` (a target's `assign`; tensor or numpy output);
- an array of centers `(K, dim)`, each point going to its nearest center (Euclidean);
- the result of `fit_modes`, when the modes are not known;
- for chains only, integer labels already computed, shaped `(chains, draws)` (an integer
  array of any other shape is read as centers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from flowmc_ebm.diagnostics._chains import chains_tensor, points_tensor


class FittedModes:
    """Modes found by clustering, usable as an `assign`: `fitted(x)` labels points.

    Modes are numbered by their centers in lexicographic order (first coordinate first), so
    the same data give the same numbering whatever the clustering's internal order.

    Attributes:
        centers_: `(K, dim)` array of mode centers (component means or cluster centroids).
        weights_: `(K,)` fraction of the fitted points in each mode.
        model_: the fitted scikit-learn estimator.
        method: "gmm" or "kmeans".
    """

    def __init__(self, model: Any, method: str, data: np.ndarray):
        centers = model.means_ if method == "gmm" else model.cluster_centers_
        order = np.lexsort(centers.T[::-1])
        # rank[k] = position of sklearn's component k once centers are sorted
        self._rank = np.argsort(order)
        self.model_ = model
        self.method = method
        self.centers_ = centers[order]
        self.weights_ = np.bincount(self._rank[model.predict(data)], minlength=len(order)) / len(data)

    @property
    def n_modes(self) -> int:
        return self.centers_.shape[0]

    def __call__(self, x: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Mode index of each point: `(n, dim) -> (n,)`, a LongTensor for tensor input."""
        points = np.asarray(torch.as_tensor(x).detach().cpu(), dtype=np.float64)
        labels = self._rank[self.model_.predict(points)]
        return torch.from_numpy(labels) if isinstance(x, torch.Tensor) else labels

    def __repr__(self) -> str:
        return f"FittedModes(method={self.method!r}, n_modes={self.n_modes})"


def fit_modes(
    samples_or_data: Any,
    n_modes: int,
    method: str = "gmm",
    *,
    seed: int = 0,
    max_points: int = 20_000,
) -> FittedModes:
    """Find `n_modes` modes by clustering with scikit-learn, for when the modes are unknown.

    Args:
        samples_or_data: points `(n, dim)`, or chains `(chains, draws, *event)` / a Trace whose
            draws are pooled.
        n_modes: how many modes to look for.
        method: "gmm" (full-covariance Gaussian mixture, best when modes differ in shape or
            size) or "kmeans" (nearest-centroid cells).
        seed: random state of the clustering.
        max_points: at most this many points (a seeded random subset) are used for fitting.

    Returns:
        A `FittedModes`, usable as `assign` anywhere in the diagnostics.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> data = np.concatenate([rng.normal(-4, 1, (300, 2)), rng.normal(4, 1, (100, 2))])
        >>> modes = fit_modes(data, 2)
        >>> modes.centers_.round().tolist(), modes.weights_.tolist()
        ([[-4.0, -4.0], [4.0, 4.0]], [0.75, 0.25])
    """
    from sklearn.cluster import KMeans
    from sklearn.mixture import GaussianMixture

    if method not in ("gmm", "kmeans"):
        raise ValueError(f"method must be 'gmm' or 'kmeans'; received {method!r}.")
    data = points_tensor(samples_or_data, name="samples_or_data").to(torch.float64).numpy()
    if not 1 <= n_modes <= len(data):
        raise ValueError(f"n_modes must be in [1, {len(data)}] (the number of points); received {n_modes}.")
    if len(data) > max_points:
        data = data[np.random.default_rng(seed).choice(len(data), max_points, replace=False)]
    if method == "gmm":
        model = GaussianMixture(n_modes, covariance_type="full", n_init=3, random_state=seed)
    else:
        model = KMeans(n_modes, n_init=10, random_state=seed)
    return FittedModes(model.fit(data), method, data)


def mode_labels(points: Any, assign: Any, n_modes: int | None = None) -> np.ndarray:
    """Mode index of each point.

    Args:
        points: `(n, dim)` tensor or array.
        assign: a callable, an array of centers `(K, dim)`, or a `FittedModes` (see module doc).
        n_modes: if given, labels outside `0..n_modes-1` are an error.

    Returns:
        int64 array `(n,)`.

    Example:
        >>> import numpy as np
        >>> mode_labels(np.array([[-3.0, 0.0], [2.5, 1.0]]), np.array([[-3.0, 0], [3.0, 0]]))
        array([0, 1])
    """
    x = points_tensor(points, name="points")
    labels = _labeller(assign)(x)
    if labels.shape != (x.shape[0],):
        raise ValueError(
            f"assign must map points (n, dim) to labels (n,); for n={x.shape[0]} it returned "
            f"shape {labels.shape}."
        )
    _check_range(labels, n_modes)
    return labels


def chain_labels(samples: Any, assign: Any, n_modes: int | None = None) -> np.ndarray:
    """Mode index of every draw, `(chains, draws, *event) -> (chains, draws)` int64.

    `assign` may also be integer labels `(chains, draws)` computed before, returned as is
    after checks.
    """
    x = chains_tensor(samples)
    chains, draws = x.shape[:2]
    if _is_label_array(assign, (chains, draws)):
        labels = np.asarray(torch.as_tensor(assign).cpu(), dtype=np.int64)
        _check_range(labels, n_modes)
        return labels
    return mode_labels(x.reshape(chains * draws, -1), assign, n_modes).reshape(chains, draws)


def infer_n_modes(assign: Any, labels: np.ndarray, n_modes: int | None = None) -> int:
    """K from, in order: `n_modes`, the assign's own count of modes, the largest label + 1."""
    if n_modes is not None:
        return int(n_modes)
    if isinstance(assign, FittedModes):
        return assign.n_modes
    if not callable(assign) and not _is_label_array(assign, labels.shape):
        return int(np.asarray(torch.as_tensor(assign).cpu()).shape[0])
    return int(labels.max()) + 1


def _labeller(assign: Any) -> Callable[[torch.Tensor], np.ndarray]:
    if callable(assign):
        return lambda x: np.asarray(torch.as_tensor(assign(x)).detach().cpu(), dtype=np.int64)
    centers = np.asarray(torch.as_tensor(assign).detach().cpu(), dtype=np.float64)
    if centers.ndim != 2:
        raise ValueError(f"assign as centers must be shaped (K, dim); received shape {centers.shape}.")
    return lambda x: _nearest(x.to(torch.float64).numpy(), centers)


def _nearest(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    if x.shape[1] != centers.shape[1]:
        raise ValueError(f"centers have dim {centers.shape[1]} but points have dim {x.shape[1]}.")
    # |x - c|^2 up to the per-point constant |x|^2, without an (n, K, dim) intermediate.
    dist = (centers**2).sum(1)[None, :] - 2.0 * x @ centers.T
    return dist.argmin(1).astype(np.int64)


def _is_label_array(assign: Any, shape: tuple[int, ...]) -> bool:
    # Integer arrays shaped like the chains are labels; any other array holds centers.
    if isinstance(assign, torch.Tensor):
        return not assign.is_floating_point() and tuple(assign.shape) == tuple(shape)
    if isinstance(assign, np.ndarray):
        return np.issubdtype(assign.dtype, np.integer) and assign.shape == tuple(shape)
    return False


def _check_range(labels: np.ndarray, n_modes: int | None) -> None:
    if labels.size and labels.min() < 0:
        raise ValueError(f"mode labels must be >= 0; assign returned {labels.min()}.")
    if n_modes is not None and labels.size and labels.max() >= n_modes:
        raise ValueError(f"mode labels must be < n_modes={n_modes}; assign returned {labels.max()}.")

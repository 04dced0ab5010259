"""Did the chains mix, and how much mass does each mode carry? With error bars.

- `mixing`: R-hat, bulk/tail ESS, ESS per second, MCSE, autocorrelation time, acceptance
  (all from ArviZ).
- `mode_weights` (chain occupancy) and `importance_mode_weights` (the flow as proposal): two
  independent estimates of the mode weights; `compare_mode_weights` says whether they agree.
- `importance_log_normalizer`: log Z of an unnormalized density, with its SE and Pareto k-hat.
- `mode_hopping`: transitions, round trips and stuck chains.
- `fit_modes`: modes by clustering when none are known.
- `grid`: the one 2-D grid quadrature (`grid_quadrature`, `grid_mode_weights`) for model mass.
- `metrics`: the numbers of Grenioux et al. (2023).
- `report`: all of the above as a table, figures and a JSON summary.

Every function takes a `samplers.Trace` or a plain array / tensor `(chains, draws, *event)`.
"""

from flowmc_ebm.diagnostics.grid import (
    GridDensity,
    GridWeights,
    grid_log_density,
    grid_mode_weights,
    grid_quadrature,
)
from flowmc_ebm.diagnostics.hopping import (
    ModeHopping,
    StuckChainsWarning,
    UnvisitedModesWarning,
    mode_hopping,
)
from flowmc_ebm.diagnostics.metrics import log_density_error, mode_weight_mse
from flowmc_ebm.diagnostics.mixing import RHAT_THRESHOLD, MixingSummary, max_rhat, mixing
from flowmc_ebm.diagnostics.modes import FittedModes, fit_modes, mode_labels
from flowmc_ebm.diagnostics.normalizer import LogNormalizer, importance_log_normalizer
from flowmc_ebm.diagnostics.report import Report, report
from flowmc_ebm.diagnostics.weights import (
    KHAT_THRESHOLD,
    ModeWeightComparison,
    ModeWeights,
    broad_reference,
    compare_mode_weights,
    importance_mode_weights,
    mode_weights,
)

__all__ = [
    "KHAT_THRESHOLD",
    "RHAT_THRESHOLD",
    "FittedModes",
    "GridDensity",
    "GridWeights",
    "LogNormalizer",
    "MixingSummary",
    "ModeHopping",
    "ModeWeightComparison",
    "ModeWeights",
    "Report",
    "StuckChainsWarning",
    "broad_reference",
    "UnvisitedModesWarning",
    "compare_mode_weights",
    "fit_modes",
    "grid_log_density",
    "grid_mode_weights",
    "grid_quadrature",
    "importance_log_normalizer",
    "importance_mode_weights",
    "log_density_error",
    "max_rhat",
    "mixing",
    "mode_hopping",
    "mode_labels",
    "mode_weight_mse",
    "mode_weights",
    "report",
]

"""flowmc-ebm: energy-based models trained with flow-assisted MCMC, and diagnostics of mixing and
mode weights.

The MCMC kernels live in the sibling package `samplers` (usable on any torch log-density); this
package holds the models (`targets`, `energies`, `flows`), the training (`training`, `objectives`),
the answers (`diagnostics`, `plots`, the ``flowmc-ebm`` CLI) and the scikit-learn front door
(`FlowMCEBM`: fit, normalized ``score_samples``, ``sample``).
"""

from importlib import metadata as _metadata

from flowmc_ebm import diagnostics
from flowmc_ebm.energies import ConvEnergy, FlowTiltedEnergy, MLPEnergy, TiltedEnergy
from flowmc_ebm.flows import make_flow
from flowmc_ebm.targets import (
    EightGaussians,
    FourModes,
    GaussianMixture,
    HighDimMixture,
    Rings,
    TwoModes,
    get_target,
)
from flowmc_ebm.trainer import JointTrainer, TrainingDivergedError


def __getattr__(name: str):
    # The estimator imports scikit-learn (about 2 s with scipy); it loads when first asked for,
    # so `import flowmc_ebm` and every CLI call that never uses it do not pay for it.
    if name == "FlowMCEBM":
        from flowmc_ebm.estimator import FlowMCEBM

        return FlowMCEBM
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


try:
    __version__ = _metadata.version("flowmc-ebm")
except _metadata.PackageNotFoundError:  # pragma: no cover - a source tree never installed
    __version__ = "0+unknown"

__all__ = ["ConvEnergy", "EightGaussians", "FlowMCEBM", "FlowTiltedEnergy", "FourModes",
           "GaussianMixture", "HighDimMixture", "JointTrainer", "MLPEnergy", "Rings", "TiltedEnergy",
           "TrainingDivergedError", "TwoModes", "__version__", "diagnostics", "get_target",
           "make_flow"]

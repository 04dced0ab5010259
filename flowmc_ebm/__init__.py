"""flowmc-ebm: energy-based models trained with flow-assisted MCMC, and diagnostics of mixing and
mode weights.

The MCMC kernels live in the sibling package `samplers` (usable on any torch log-density); this
package holds the models (`targets`, `energies`, `flows`), the training (`trainer`, `objectives`)
and the answers (`diagnostics`, `plots`, the ``flowmc-ebm`` CLI).
"""

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

__version__ = "0.1.0"

__all__ = ["ConvEnergy", "EightGaussians", "FlowTiltedEnergy", "FourModes", "GaussianMixture",
           "HighDimMixture", "JointTrainer", "MLPEnergy", "Rings", "TiltedEnergy", "TwoModes", "diagnostics",
           "TrainingDivergedError", "get_target", "make_flow"]

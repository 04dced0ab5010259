"""Compatibility alias: the trainer lives in `flowmc_ebm.training` (see docs/architecture.md).

``from flowmc_ebm.trainer import JointTrainer`` keeps working; new code imports from
`flowmc_ebm.training`.
"""

from flowmc_ebm.checkpoint import latest_checkpoint
from flowmc_ebm.training.guard import TrainingDivergedError
from flowmc_ebm.training.joint import Callback, JointTrainer

__all__ = ["Callback", "JointTrainer", "TrainingDivergedError", "latest_checkpoint"]

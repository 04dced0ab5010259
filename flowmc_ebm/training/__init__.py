"""Training an EBM beside its flow: the loop (`joint`), the methods as records (`methods`), the
divergence guard (`guard`), the learning-rate decay (`schedule`) and the one flow-fitting loop
(`flow_fitting`) that EBFlow and the energy flows share."""

from flowmc_ebm.training.guard import TrainingDivergedError
from flowmc_ebm.training.joint import Callback, JointTrainer
from flowmc_ebm.training.methods import METHODS, Method, register

__all__ = ["METHODS", "Callback", "JointTrainer", "Method", "TrainingDivergedError", "register"]

"""EBFlow: a normalizing flow trained as an energy-based model, without Jacobian determinants.

Chao et al. (NeurIPS 2023, "Training Energy-Based Normalizing Flow with Score-Matching
Objectives"). A flow ``g`` maps data to a standard normal latent; its linear layers'
log-determinants do not depend on ``x`` and form the normalizer, its nonlinear layers' are cheap.
Score matching sees only ``∇ₓE``, so training costs ``O(D²L)`` per step instead of maximum
likelihood's ``O(D³L)``; the exact NLL is recovered afterwards by adding ``log Z`` back.

- `layers`: the linear and nonlinear layers;
- `model`: :class:`EBFlow` and the paper's architectures (`fully_connected_ebflow`,
  `coupling_ebflow`, `conv_ebflow`);
- `trainer`: :class:`EBFlowTrainer`, score matching or maximum likelihood on the shared minibatch
  loop (:mod:`flowmc_ebm.training.flow_fitting`, which also holds the EMA);
- the preprocessing ("match after preprocessing": dequantize, logit, bits per dimension) is
  :mod:`flowmc_ebm.preprocessing`; its names stay importable from here.

Example:
    >>> model = fully_connected_ebflow(4)
    >>> x = torch.randn(8, 4)
    >>> trainer = EBFlowTrainer(model, "ssm").fit(x, steps=3, batch_size=8)
    >>> with torch.no_grad():
    ...     nll = -trainer.ema.average.log_prob(x)
    >>> nll.shape
    torch.Size([8])
"""

import torch  # noqa: F401  (the doctest above uses it)

from flowmc_ebm.ebflow.layers import (
    AffineCoupling,
    Conv1x1,
    Conv2dLinear,
    Dense,
    LinearLayer,
    NonlinearLayer,
    SmoothLeakyReLU,
    Squeeze,
)
from flowmc_ebm.ebflow.model import EBFlow, conv_ebflow, coupling_ebflow, fully_connected_ebflow
from flowmc_ebm.ebflow.trainer import TRAINING_OBJECTIVES, EBFlowTrainer
from flowmc_ebm.preprocessing import LogitTransform, bits_per_dim, dequantize, minibatches
from flowmc_ebm.training.flow_fitting import ExponentialMovingAverage

__all__ = [
    "AffineCoupling",
    "Conv1x1",
    "Conv2dLinear",
    "Dense",
    "EBFlow",
    "EBFlowTrainer",
    "ExponentialMovingAverage",
    "LinearLayer",
    "LogitTransform",
    "NonlinearLayer",
    "SmoothLeakyReLU",
    "Squeeze",
    "TRAINING_OBJECTIVES",
    "bits_per_dim",
    "conv_ebflow",
    "coupling_ebflow",
    "dequantize",
    "fully_connected_ebflow",
    "minibatches",
]

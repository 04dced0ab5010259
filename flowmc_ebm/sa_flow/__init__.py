"""Semi-autoregressive energy flows: flows trained only through their samples, by the energy score.

Si et al. (ICML 2023, "Semi-Autoregressive Energy Flows"). The coordinates are split into ``K``
contiguous blocks ``B_1, …, B_K``. Block ``k`` is generated *jointly* from its own noise
``u_k ~ N(0, I)`` and the blocks before it:

    x_{B_k} = f_k(u_k; x_{B_<k}),

so ``K = 1`` is a non-autoregressive flow (one joint map ``x = f(u)``) and ``K = D`` a fully
autoregressive one (one coordinate at a time). Here each ``f_k`` is a stack of monotone
rational-quadratic spline layers (zuko's :class:`~zuko.transforms.MonotonicRQSTransform`), coupled
within the block (half the block's coordinates and the context set the splines of the other half)
and followed by a context-dependent affine map; the conditioners start at zero, so the flow starts
as ``N(0, I)``.

Training uses the energy score of :mod:`flowmc_ebm.objectives.energy_score` only — no Jacobian
determinant and no inverse is ever formed; gradients reach the parameters through ``m >= 2``
reparameterized samples per data point. Two losses:

- ``"autoregressive"`` (Si et al.'s semi-autoregressive energy objective): for each block the
  energy score of the conditional ``p(x_{B_k} | y_{B_<k})`` — the *data's* earlier blocks as
  context, so all blocks are scored in one parallel pass — at the observation ``y_{B_k}``, summed
  over blocks. A sum of strictly proper conditional scores is strictly proper for the joint. For
  ``K = 1`` it is the plain energy score.
- ``"joint"``: the energy score of ancestral (joint) samples against ``y`` in all ``D`` dimensions.

Because every ``f_k`` happens to be invertible in ``u_k``, the density is tractable,
``log p(x) = Σ_k [log N(u_k) − log|det ∂f_k/∂u_k|]`` (block-triangular Jacobian); it is used to
*report* the NLL (and for a maximum-likelihood reference), never by the energy-score training.

Files: `blocks` (the block split and one block's spline map), `models` (the two flows),
`losses` (the energy-score objectives), `trainer` (:class:`EnergyFlowTrainer`).

Example:
    >>> flow = SemiAutoregressiveFlow(4, blocks=2, hidden=(16,))
    >>> y = torch.randn(8, 4)
    >>> loss = semi_autoregressive_energy_loss(flow, y, m=2)
    >>> loss.backward()
    >>> flow.sample(5).shape, flow.log_prob(y).shape
    (torch.Size([5, 4]), torch.Size([8]))
"""

import torch  # noqa: F401  (the doctest above uses it)

from flowmc_ebm.sa_flow.blocks import block_sizes
from flowmc_ebm.sa_flow.losses import joint_energy_loss, semi_autoregressive_energy_loss
from flowmc_ebm.sa_flow.models import AutoregressiveEnergyFlow, SemiAutoregressiveFlow
from flowmc_ebm.sa_flow.trainer import ENERGY_LOSSES, EnergyFlowTrainer

__all__ = [
    "ENERGY_LOSSES",
    "AutoregressiveEnergyFlow",
    "EnergyFlowTrainer",
    "SemiAutoregressiveFlow",
    "block_sizes",
    "joint_energy_loss",
    "semi_autoregressive_energy_loss",
]

"""Issue #13 item 7: the samplers fail early, with a message that says what is wrong."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import samplers


def test_a_log_prob_with_no_gradient_path_is_named_before_autograd_fails():
    int_lp = lambda x: (-x.square().sum(-1)).long()  # noqa: E731
    numpy_lp = lambda x: torch.from_numpy(-np.square(x.detach().numpy()).sum(-1))  # noqa: E731
    for lp, why in ((int_lp, "int64"), (numpy_lp, "no gradient path")):
        with pytest.raises(TypeError, match=why):
            samplers.MALA(lp, 0.1).init(torch.zeros(3, 2))


def test_independent_mh_refuses_an_integer_log_density():
    q = torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2))
    kernel = samplers.IndependentMH(lambda x: q.log_prob(x).round().long(), q)
    with pytest.raises(TypeError, match="floating-point.*int64"):
        kernel.init(torch.zeros(3, 2))


def test_the_generator_is_validated():
    kernel = samplers.MALA(lambda x: -x.square().sum(-1), 0.1)
    with pytest.raises(TypeError, match="generator must be a torch.Generator.*int"):
        samplers.sample(kernel, torch.zeros(3, 2), 10, progress=False, generator=0)

import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    # Tests are seeded one by one so each can run alone. One thread: the tensors here are small,
    # and on a loaded two-core machine a second intra-op thread made tests up to 10x slower.
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield

import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    # Tests are seeded one by one so each can run alone; two threads match CI's two cores.
    torch.manual_seed(0)
    torch.set_num_threads(2)
    yield

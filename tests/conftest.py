"""Shared test settings: deterministic seeds, one intra-op thread, CPU whatever the machine has.

One thread: the tests' tiny convolutions and matmuls run 10-20x slower with two OpenMP threads on a
busy 2-core machine (threads wait for each other), and results do not depend on the thread count.
"""

import os

import pytest

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(n)

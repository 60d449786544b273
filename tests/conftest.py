"""Shared test settings: deterministic seeds; tests run on the CPU whatever the machine has."""

import os

import pytest

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)
    yield

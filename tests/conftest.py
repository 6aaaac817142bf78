"""Shared test setup: one intra-op thread per process (the CI machine has 2 shared cores)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

# Set COMPRESS_FULL=1 to run the `slow` cases at full size; CI runs them short.
FULL = os.environ.get("COMPRESS_FULL") == "1"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield

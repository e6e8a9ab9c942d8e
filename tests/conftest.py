"""Test-session set-up shared by every test file.

Without a CUDA device the Triton kernels can only run in Triton's interpreter (numpy behind
it), and Triton reads TRITON_INTERPRET when the kernels are first decorated: set it here,
before any test module imports rlmodule_fast, so the triton backend is testable on CPU
tensors. Under ``auto`` CPU inputs still go to the cpp backend; triton runs only where a test
asks for it (``backend="triton"`` or RLMODULE_FAST_BACKEND=triton).
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


import sys

import pytest


@pytest.fixture(autouse=True, scope="module")
def _no_ray_session_leaks():
    """A test module that starts Ray (RLlib's Algorithm.build() does it implicitly) must not leave
    it running for the next module, whose own ``ray.init`` would fail."""
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


@pytest.fixture(autouse=True, scope="module")
def _no_env_leaks():
    """Environment variables a test module sets leak into every later subprocess: restore them."""
    before = dict(os.environ)
    yield
    for k in set(os.environ) - set(before):
        del os.environ[k]
    for k, v in before.items():
        if os.environ.get(k) != v:
            os.environ[k] = v

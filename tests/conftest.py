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


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch intra-op thread for a test module, as RLlib's env-runner actors run
    (OMP_NUM_THREADS=1): on a busy machine two intra-op threads stall small convs for
    milliseconds. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _triton_device_params() -> list:
    import rlmodule_fast as rf

    tri = rf.backend_info()["triton"]
    return [
        pytest.param("cpu", id="cpu", marks=pytest.mark.skipif(
            not tri.get("interpreter"), reason="CPU tensors need the Triton interpreter (TRITON_INTERPRET=1)")),
        pytest.param("cuda", id="cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
            not torch.cuda.is_available(), reason="no CUDA device")]),
    ]


@pytest.fixture(params=_triton_device_params())
def triton_device(request, monkeypatch):
    """The device a Triton test runs on ("cpu" under TRITON_INTERPRET=1, "cuda" where present),
    with RLMODULE_FAST_BACKEND=triton for the test."""
    monkeypatch.setenv("RLMODULE_FAST_BACKEND", "triton")
    return request.param

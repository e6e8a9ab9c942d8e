"""pytest-benchmark suite for the CPU policy step: torch eager vs the cpp backend, side by side.

    pytest bench/bench_cpu.py --benchmark-only [--benchmark-group-by=param:B]

Model: obs 4 -> [256, 256] tanh -> 2 logits, categorical (see bench/cpu_table.py, which prints
the same comparison as a median/ratio table). Each case runs single-threaded
(torch.set_num_threads(1); the cpp backend follows torch's thread count) and with torch's default
thread count.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rlmodule_fast as rf  # noqa: E402
from cpu_table import build, torch_eager_step  # noqa: E402

pytestmark = pytest.mark.skipif(not rf.backend_info()["cpp"]["available"], reason="cpp backend unavailable")

DEFAULT_THREADS = torch.get_num_threads()


@pytest.fixture(scope="module")
def model():
    from rlmodule_fast.fastpath import PolicyPlan

    seq, layers = build()
    return seq, PolicyPlan(layers, backend="cpp")


@pytest.fixture(params=[1, DEFAULT_THREADS] if DEFAULT_THREADS > 1 else [1], ids=lambda n: f"T{n}")
def threads(request):
    prev = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(prev)


@pytest.mark.parametrize("provider", ["torch-eager", "cpp-plan", "cpp-raw"])
@pytest.mark.parametrize("B", [1, 16, 256, 4096])
def test_policy_step(benchmark, model, threads, provider, B):
    seq, plan = model
    obs = torch.randn(B, 4)
    benchmark.group = f"policy-step-B{B}-T{threads}"
    if provider == "torch-eager":
        benchmark(torch_eager_step, seq, obs)
    elif provider == "cpp-plan":
        benchmark(plan.step, obs)
    else:
        o = obs.numpy()
        benchmark(plan.impl._net.step, o, B, 4, (None, None, None, None), False, False, None)

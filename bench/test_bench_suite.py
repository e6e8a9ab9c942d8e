"""pytest-benchmark suite over THE case registry of ``rlmodule-fast-bench``
(``rlmodule_fast.bench.cases``), for regression tracking across versions.

    pytest bench/test_bench_suite.py --benchmark-only                     # every case, all providers
    pytest bench/test_bench_suite.py --benchmark-only -k "policy_step and B1"
    pytest bench/test_bench_suite.py --benchmark-only --benchmark-autosave  # keep a history
    pytest-benchmark compare                                              # compare saved runs

Ids are ``<op>-<config>-B<batch>-<provider>`` (e.g. ``policy_step-CartPole-B1-cpp``); benchmarks
are grouped per case, so each group shows the providers side by side. A provider that cannot
run here (triton without CUDA, rllib without ray, ort without onnxruntime, ...) is skipped with
its reason. torch.compile cases compile on first use (seconds each): deselect them with ``-k "not torch-compile"``.
torch runs with one thread (``RLMODULE_FAST_BENCH_THREADS`` overrides), as the CLI's default.
Not collected by the default test run (``testpaths = ["tests"]``).
"""
from __future__ import annotations

import os

import pytest
import torch

from rlmodule_fast.bench import cases as C

_CTX = C.Context(device="cuda" if torch.cuda.is_available() else "cpu", quick=False)
_PARAMS = [pytest.param(case, p, id=f"{case.id}-{p}") for case in C.cases() for p in case.providers]


@pytest.fixture(scope="module", autouse=True)
def _threads():
    prev = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("RLMODULE_FAST_BENCH_THREADS", "1")))
    yield
    torch.set_num_threads(prev)


@pytest.mark.parametrize("case,provider", _PARAMS)
def test_case(benchmark, case, provider):
    try:
        b = case.build(provider, _CTX)
    except C.Unavailable as e:
        pytest.skip(str(e))
    benchmark.group = case.id
    benchmark.extra_info.update(provider=provider, op=case.op, config=case.config, batch=case.batch,
                                device=_CTX.device, note=b.note)

    def call():
        r = b.fn()
        if b.cuda:
            torch.cuda.synchronize()
        return r

    with torch.no_grad(), b.ctx():
        benchmark(call)

"""``rlmodule_fast.bench.timing``: the pause between interleaved provider blocks (``quiesce``)
waits for other threads' spinning to end, and ``measure(settle=True)`` uses it. Never timings
of a provider."""
from __future__ import annotations

import os
import threading
import time

import pytest

from rlmodule_fast.bench.timing import Bench, measure, quiesce

LINUX_PROC = os.path.isdir("/proc/self/task")


def _spin(seconds: float) -> threading.Thread:
    """A thread that busy-waits for ``seconds`` (what an idle ORT / OpenMP worker does)."""
    def run():
        end = time.perf_counter() + seconds
        x = 0
        while time.perf_counter() < end:
            x += 1
    t = threading.Thread(target=run)
    t.start()
    return t


@pytest.mark.skipif(not LINUX_PROC, reason="quiesce reads /proc/self/task")
def test_quiesce_waits_for_a_spinning_thread_then_returns():
    t = _spin(0.12)
    waited = quiesce(max_s=2.0)
    t.join()
    assert waited >= 0.08, f"returned after {waited * 1e3:.0f} ms while another thread still spun"
    assert quiesce(max_s=2.0) < 0.1  # nothing spins now: one or two windows


@pytest.mark.skipif(not LINUX_PROC, reason="quiesce reads /proc/self/task")
def test_quiesce_gives_up_after_max_s():
    t = _spin(0.6)
    waited = quiesce(max_s=0.05)
    t.join()
    assert 0.05 <= waited < 0.3


def test_measure_settles_before_each_block(monkeypatch):
    calls = []
    import rlmodule_fast.bench.timing as T

    monkeypatch.setattr(T, "quiesce", lambda: calls.append("q") or 0.0)
    benches = {"a": Bench(lambda: calls.append("a")), "b": Bench(lambda: calls.append("b"))}
    res = measure(benches, budget_s=0.0, blocks=2, warmup=0, settle=True)
    assert {k: res[k]["host"]["blocks"] for k in res} == {"a": 2, "b": 2}
    timed = calls[calls.index("q"):]  # after calibration: quiesce, an untimed call, the block
    assert timed == ["q", "a", "a", "q", "b", "b"] * 2
    calls.clear()
    measure(benches, budget_s=0.0, blocks=2, warmup=0, settle=False)
    assert "q" not in calls

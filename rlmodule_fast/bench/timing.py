"""Clocks for ``rlmodule-fast-bench``: medians of per-call latency, measured in repeated blocks.

Three clocks (ARCHITECTURE / STYLE: "device time, host wall-clock latency of the whole call,
and graph-replay time"):

- ``host``: ``time.perf_counter_ns`` around a block of N calls of the whole Python call (on CUDA
  the block ends with ``torch.cuda.synchronize()``, so the work is included), divided by N.
- ``device``: CUDA events around the same block (GPU time of the launches), CUDA only.
- ``graph``: the call captured once in a ``torch.cuda.CUDAGraph`` and replayed, CUDA only and
  only for calls that do no host work (``Bench.graphable``).

Providers of one case are measured *interleaved*: block 1 of every provider, then block 2 of
every provider, ... so a load change on a noisy machine hits all of them alike. The reported
figure is the median over blocks of the mean per-call time in a block.

With more than one torch thread, each block starts only once the previous provider's worker
threads have gone idle (``quiesce``): ONNX Runtime's intra-op pool keeps spinning for tens of
milliseconds after a ``run`` returns (measured ~45 ms here; ORT spins ~1M pause instructions
before it blocks), so without the pause the next provider's block shares a core with that
spinner, and a 2-thread figure measured right after ORT loses up to half its second core.
"""
from __future__ import annotations

import contextlib
import glob
import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Optional

CLOCKS = ("host", "device", "graph")


@dataclass
class Bench:
    """One provider's callable for one case.

    fn: the zero-argument call that is timed (always under ``torch.no_grad()``, as env runners
    call the policy). context: a factory of a context manager entered
    around every timed block (e.g. an environment variable), never inside the timed call.
    graphable: fn only launches CUDA work (no host sync, no numpy), so it may be graph-captured.
    note: shown in the JSON (e.g. a torch.compile compile time).
    """

    fn: Callable[[], object]
    context: Optional[Callable[[], ContextManager]] = None
    graphable: bool = False
    cuda: bool = False
    note: str = ""
    extra: dict = field(default_factory=dict)

    def ctx(self) -> ContextManager:
        return self.context() if self.context is not None else contextlib.nullcontext()


def _sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


def _calibrate(b: Bench, budget_s: float, blocks: int, warmup: int) -> int:
    """Calls per block so that one block lasts about budget_s / blocks (at least 1)."""
    with b.ctx():
        for _ in range(warmup):
            b.fn()
        _sync(b.cuda)
        ones = []
        for _ in range(3):
            t0 = time.perf_counter()
            b.fn()
            _sync(b.cuda)
            ones.append(time.perf_counter() - t0)
    one = max(statistics.median(ones), 1e-7)
    return int(min(max(1, budget_s / blocks / one), 1_000_000))


def _others_cpu_ns(me: int) -> Optional[int]:
    """CPU time (ns) used so far by this process's threads other than ``me`` (Linux
    /proc/self/task/*/schedstat), or None where that is not readable."""
    total, seen = 0, False
    for path in glob.glob("/proc/self/task/*/schedstat"):
        if path.split("/")[4] == str(me):
            continue
        try:
            with open(path) as f:
                total += int(f.read().split()[0])
            seen = True
        except (OSError, ValueError, IndexError):  # a thread that just exited
            continue
    return total if seen else (0 if os.path.isdir("/proc/self/task") else None)


def quiesce(*, window_s: float = 0.01, idle_ns: int = 500_000, max_s: float = 0.25) -> float:
    """Sleep until this process's other threads stay (almost) idle for one window: the idle
    worker threads of thread pools (ONNX Runtime's spin for tens of ms after a run; OpenMP's and
    ours for less) have parked, so the next timed block does not share a core with them.
    A window counts as idle when the other threads used under ``idle_ns`` of CPU in it. Gives up
    after ``max_s`` (threads that never idle); without /proc it sleeps ``window_s`` once.
    Returns the seconds waited."""
    me = threading.get_native_id()
    t0 = time.perf_counter()
    prev = _others_cpu_ns(me)
    if prev is None:
        time.sleep(window_s)
        return time.perf_counter() - t0
    while True:
        time.sleep(window_s)
        cur = _others_cpu_ns(me)
        if cur - prev < idle_ns or time.perf_counter() - t0 >= max_s:
            return time.perf_counter() - t0
        prev = cur


def measure(benches: dict, *, budget_s: float = 0.2, blocks: int = 7, warmup: int = 3,
            clocks: tuple = ("host",), settle: Optional[bool] = None) -> dict:
    """Measure every provider of one case, interleaved.

    benches: {provider: Bench}. Returns {provider: {clock: result}} with result either
    {"median_us", "min_us", "q1_us", "q3_us", "calls_per_block", "blocks"} or
    {"na": reason} (the call raised, or the clock does not apply to it).
    ``budget_s`` is the time each provider spends per clock (all blocks together).
    ``settle``: call ``quiesce()`` before every host block (None: when there are several providers
    and torch runs more than one thread, the case where other runtimes' pools spin).
    """
    import torch

    if settle is None:
        settle = len(benches) > 1 and torch.get_num_threads() > 1

    out: dict = {name: {} for name in benches}
    live = {}
    for name, b in benches.items():
        try:
            with torch.no_grad():
                live[name] = (b, _calibrate(b, budget_s, blocks, warmup))
        except Exception as e:  # a provider failing here is reported, never fatal
            for c in clocks:
                out[name][c] = {"na": f"{type(e).__name__}: {_first_line(e)}"}
    if "host" in clocks:
        samples: dict = {name: [] for name in live}
        with torch.no_grad():
            for _ in range(blocks):
                for name, (b, n) in live.items():
                    fn = b.fn
                    with b.ctx():
                        if settle:
                            quiesce()
                            fn()  # untimed: caches and this provider's own workers warm again
                            _sync(b.cuda)
                        t0 = time.perf_counter_ns()
                        for _ in range(n):
                            fn()
                        _sync(b.cuda)
                        samples[name].append((time.perf_counter_ns() - t0) / n / 1e3)
        for name, s in samples.items():
            out[name]["host"] = _summary(s, live[name][1])
    for clock in ("device", "graph"):
        if clock not in clocks:
            continue
        for name, (b, n) in live.items():
            if not b.cuda:
                out[name][clock] = {"na": "CPU call (no CUDA work to time)"}
                continue
            if clock == "graph" and not b.graphable:
                out[name][clock] = {"na": "does host work per call (not capturable)"}
                continue
            try:
                with torch.no_grad(), b.ctx():
                    s = _device_blocks(b, n, blocks) if clock == "device" else _graph_blocks(b, n, blocks)
                out[name][clock] = _summary(s, n)
            except Exception as e:
                out[name][clock] = {"na": f"{type(e).__name__}: {_first_line(e)}"}
    return out


def _device_blocks(b: Bench, n: int, blocks: int) -> list:
    import torch

    res = []
    for _ in range(blocks):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            b.fn()
        end.record()
        end.synchronize()
        res.append(start.elapsed_time(end) * 1e3 / n)
    return res


def _graph_blocks(b: Bench, n: int, blocks: int) -> list:
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            b.fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        b.fn()
    res = []
    for _ in range(blocks):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            g.replay()
        end.record()
        end.synchronize()
        res.append(start.elapsed_time(end) * 1e3 / n)
    return res


def _summary(samples: list, calls: int) -> dict:
    s = sorted(samples)
    q = statistics.quantiles(s, n=4) if len(s) >= 2 else [s[0], s[0], s[0]]
    return {"median_us": statistics.median(s), "min_us": s[0], "q1_us": q[0], "q3_us": q[2],
            "calls_per_block": calls, "blocks": len(s)}


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else "")[:200]


def median_us(fn: Callable[[], object], *, min_time_s: float = 0.2, blocks: int = 7, warmup: int = 3) -> float:
    """Median over ``blocks`` blocks of the mean per-call host latency (microseconds) of ``fn()``."""
    r = measure({"fn": Bench(fn)}, budget_s=min_time_s, blocks=blocks, warmup=warmup)["fn"]["host"]
    if "na" in r:
        raise RuntimeError(r["na"])
    return r["median_us"]

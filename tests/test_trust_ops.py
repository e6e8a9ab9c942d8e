"""Trust in the ops layer: each test pins a defect class found by review (it failed before the
fix it names) across every place the class can show up.

- numpy dtypes compared by value (a float32 array that went through pickle is float32);
- the C++ thread pool survives fork() while a multi-threaded step runs, and shrinks / is capped;
- the one-shot ops' pack cache is bounded in bytes, holds the caller's objects only weakly, and
  is never stale (writes through ``.data`` or a numpy view are seen);
- zero-row batches: empty outputs of the right shapes and dtypes on every backend, every op;
- ELU near 0-: expm1, not exp(x) - 1 (C++);
- Triton: a NaN log-std raises even with clipping; categorical logp/entropy at logits ~1e4.
"""
from __future__ import annotations

import gc
import os
import pickle
import subprocess
import sys
import textwrap
import weakref

import numpy as np
import pytest
import torch

import rlmodule_fast as rf
from rlmodule_fast.ops import reference as ref

INFO = rf.backend_info()
CPP = INFO["cpp"]
needs_cpp = pytest.mark.skipif(not CPP["available"], reason=f"cpp backend unavailable: {CPP['reason']}")
if CPP["available"]:
    from rlmodule_fast import _C
    from rlmodule_fast.ops import cpp as cpp_ops

ISAS = [i for i in ("sse2", "avx2", "avx512") if CPP.get("available") and
        ["sse2", "avx2", "avx512"].index(i) <= ["sse2", "avx2", "avx512"].index(CPP["best_isa"])]


def _triton_cpu_ok() -> bool:
    if not INFO["triton"]["available"]:
        return False
    from rlmodule_fast.ops import triton as tri
    return tri.interpreted()


TRITON_CPU = _triton_cpu_ok()
needs_triton_cpu = pytest.mark.skipif(not TRITON_CPU, reason="triton on CPU tensors needs TRITON_INTERPRET=1")
# numpy warnings from the interpreter on masked (padding) lanes, which are never stored
triton_warnings = [pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning"),
                   pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
                   pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")]


def _on_triton(f):
    for m in [needs_triton_cpu, *triton_warnings]:
        f = m(f)
    return f


# ----------------------------------------------------------------------- 1. dtypes by value

def _unpickled(a: np.ndarray) -> np.ndarray:
    """``a`` after a round trip through pickle protocol 5 (Ray's; multiprocessing queues pickle
    too): an equal dtype that is not numpy's builtin dtype object."""
    b = pickle.loads(pickle.dumps(a, protocol=5))
    assert b.dtype == a.dtype
    return b


def _policy_spec(keep, obs=6, hidden=16, n_act=4, lstm=None):
    """A _C.Policy spec over torch tensors (kept alive in ``keep``): tanh MLP [obs -> hidden],
    optional LSTM (hidden -> lstm), categorical head."""
    g = torch.Generator().manual_seed(0)

    def lin(i, o):
        w, b = torch.randn(o, i, generator=g) / i ** 0.5, torch.randn(o, generator=g) * 0.1
        keep.extend([w, b])
        return (w.data_ptr(), o, i, i, b.data_ptr(), 1)

    rnn = None
    lat = hidden
    if lstm:
        wi, wh = torch.randn(4 * lstm, hidden, generator=g) * 0.2, torch.randn(4 * lstm, lstm, generator=g) * 0.2
        bi = torch.randn(4 * lstm, generator=g) * 0.1
        keep.extend([wi, wh, bi])
        rnn = (0, hidden, lstm, wi.data_ptr(), hidden, wh.data_ptr(), lstm, bi.data_ptr(), 0)
        lat = lstm
    return dict(obs_dim=obs, actor_mlp=[lin(obs, hidden)], actor_acts=[1], actor_rnn=rnn, critic_on=False,
                critic_mlp=[], critic_acts=[], critic_rnn=None, pi=[lin(lat, n_act)], pi_acts=[0],
                vf=[lin(lat, 1)], vf_acts=[0], dist=0, action_sizes=[n_act], log_std_clip=-1.0, free_log_std=[])


@needs_cpp
def test_policy_step_accepts_unpickled_float32_obs_and_states():
    keep: list = []
    net = _C.Policy(_policy_spec(keep, lstm=8))
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((5, 6)).astype(np.float32)
    h, c = (rng.standard_normal((5, 8)).astype(np.float32) for _ in range(2))
    want = net.step(obs, 0, 0, (h, c, None, None), True, True, None)
    got = net.step(_unpickled(obs), 0, 0, (_unpickled(h), _unpickled(c), None, None), True, True, None)
    for a, b in zip(want, got):
        if a is not None:
            np.testing.assert_array_equal(a, b)
    # by value means by value: float64 and byte-swapped float32 are still refused
    for bad in (obs.astype(np.float64), obs.astype(">f4")):
        with pytest.raises(ValueError, match="obs: expected a float32 array"):
            net.step(bad, 0, 0, (h, c, None, None), True, False, None)
    with pytest.raises(ValueError, match="state h: expected a contiguous float32 array"):
        net.step(obs, 0, 0, (h.astype(">f4"), c, None, None), True, False, None)


@needs_cpp
def test_ops_accept_unpickled_arrays():
    rng = np.random.default_rng(1)
    x = _unpickled(rng.standard_normal((20, 5)).astype(np.float32))
    w = _unpickled(rng.standard_normal((7, 5)).astype(np.float32))
    b = _unpickled(rng.standard_normal(7).astype(np.float32))
    y = rf.ops.fused_mlp(x, [w], [b], None, "tanh", backend="cpp")
    np.testing.assert_allclose(y, np.tanh(x @ w.T + b), rtol=1e-5, atol=1e-6)
    a, lp = rf.ops.sample_categorical(_unpickled(rng.standard_normal((4, 3)).astype(np.float32)), backend="cpp")
    assert a.shape == (4,) and lp.dtype == np.float32
    a, lp = rf.ops.sample_diag_gaussian(_unpickled(rng.standard_normal((4, 6)).astype(np.float32)), backend="cpp")
    assert a.shape == (4, 3) and lp.dtype == np.float32


# ----------------------------------------------------------------------- 2./3. thread pool

_FORK_SCRIPT = textwrap.dedent(r'''
    import os, sys, threading, time
    import numpy as np
    from rlmodule_fast import _C

    N_FORKS = int(sys.argv[1])
    rng = np.random.default_rng(0)
    I, H, B = 64, 256, 4096  # big enough that a step runs a while on several threads
    W1 = (rng.standard_normal((H, I)) / 8).astype(np.float32)
    W2 = (rng.standard_normal((H, H)) / 16).astype(np.float32)
    b = np.zeros(H, np.float32)
    x = rng.standard_normal((B, I)).astype(np.float32)
    layers = [(W1.ctypes.data, H, I, I, b.ctypes.data, 1), (W2.ctypes.data, H, H, H, b.ctypes.data, 1)]
    mlp = _C.PackedMLP(layers, [1, 1])

    def step(rows):
        y = np.empty((rows, H), np.float32)
        mlp.forward(x.ctypes.data, rows, I, y.ctypes.data, H)
        return y

    _C.set_num_threads(4)
    want = step(B)
    stop = threading.Event()

    def hammer():  # multi-threaded steps back to back while the main thread forks
        while not stop.is_set():
            step(B)

    t = threading.Thread(target=hammer)
    t.start()
    pids = []
    for i in range(N_FORKS):
        time.sleep(0.002 * (i % 5))
        pid = os.fork()
        if pid == 0:
            try:
                _C.set_num_threads(3 if i % 2 else 2)
                ok = _C.get_num_threads() == (3 if i % 2 else 2)
                ok = ok and np.array_equal(step(B), want)
                _C.set_num_threads(1)
                ok = ok and np.array_equal(step(B), want)
                os._exit(0 if ok else 3)
            except BaseException:
                os._exit(4)
        pids.append(pid)
    stop.set()
    t.join()
    bad = []
    deadline = time.time() + 60
    for pid in pids:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
                    bad.append((pid, status))
                break
            if time.time() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                bad.append((pid, "hung"))
                break
            time.sleep(0.01)
    print("BAD", bad, flush=True)
    os._exit(1 if bad else 0)
''')


@needs_cpp
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_fork_while_a_multithreaded_step_runs():
    """Forking while another thread is inside a multi-threaded step, then changing the thread
    count in the child and stepping: every child finishes, with the right numbers (a child
    used to inherit the pool's locked job mutex and hang)."""
    r = subprocess.run([sys.executable, "-c", _FORK_SCRIPT, "12"], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, f"stdout: {r.stdout[-2000:]}\nstderr: {r.stderr[-2000:]}"


_FORK_OPS_SCRIPT = textwrap.dedent(r'''
    import os, sys
    import torch
    import rlmodule_fast as rf
    from rlmodule_fast import _C
    torch.set_num_threads(3)
    x, w = torch.randn(300, 16), torch.randn(32, 16)
    want = rf.ops.fused_mlp(x, [w], [None], backend="cpp")
    assert _C.get_num_threads() == 3
    pid = os.fork()
    if pid == 0:
        got = rf.ops.fused_mlp(x, [w], [None], backend="cpp")  # re-applies torch's count
        os._exit(0 if torch.equal(got, want) and _C.get_num_threads() == 3 and _C.pool_workers() == 2 else 3)
    _, status = os.waitpid(pid, 0)
    sys.exit(os.WEXITSTATUS(status))
''')


@needs_cpp
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forked_child_gets_its_thread_count_back():
    r = subprocess.run([sys.executable, "-c", _FORK_OPS_SCRIPT], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def _os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


@needs_cpp
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs /proc")
def test_thread_pool_is_capped_and_shrinks():
    hw = os.cpu_count() or 1
    assert _C.max_threads() == max(64, 4 * hw)
    with pytest.raises(ValueError, match=r"num_threads: expected 1 \.\.\."):
        _C.set_num_threads(_C.max_threads() + 1)
    x, w = torch.randn(500, 8), torch.randn(16, 8)
    want = ref.fused_mlp(x, [w], [None], None, "tanh")  # (before counting: torch may start its threads)
    base = _os_threads() - _C.pool_workers()
    try:
        _C.set_num_threads(_C.max_threads())
        assert _C.pool_workers() == _C.max_threads() - 1
        assert _os_threads() == base + _C.max_threads() - 1
        torch.testing.assert_close(torch.from_numpy(_run_packed(x, w)), want, atol=2e-6, rtol=1e-5)
        _C.set_num_threads(2)  # the surplus workers are joined
        assert _C.get_num_threads() == 2 and _C.pool_workers() == 1
        assert _os_threads() == base + 1
        torch.testing.assert_close(torch.from_numpy(_run_packed(x, w)), want, atol=2e-6, rtol=1e-5)
        _C.set_num_threads(1)
        assert _C.pool_workers() == 0 and _os_threads() == base
        _C.set_num_threads(5)  # and grows again
        assert _C.pool_workers() == 4 and _os_threads() == base + 4
        torch.testing.assert_close(torch.from_numpy(_run_packed(x, w)), want, atol=2e-6, rtol=1e-5)
    finally:
        cpp_ops._threads_seen[0] = 0
        cpp_ops.sync_threads()


def _run_packed(x, w):
    xs, ws = x.numpy(), w.numpy()
    y = np.empty((xs.shape[0], ws.shape[0]), np.float32)
    m = _C.PackedMLP([(ws.ctypes.data, ws.shape[0], ws.shape[1], ws.shape[1], 0, 1)], [1])
    m.forward(xs.ctypes.data, xs.shape[0], xs.shape[1], y.ctypes.data, ws.shape[0])
    return y


# ----------------------------------------------------------------------- 4. the pack cache

@pytest.fixture
def fresh_cache():
    c = cpp_ops._pack_cache
    c._entries.clear()
    if hasattr(c, "clear"):
        c.clear()
    old = getattr(c, "max_bytes", None), getattr(c, "min_bytes", None)
    c.min_bytes = 0  # cache even the small test nets
    yield c
    c.max_bytes, c.min_bytes = old
    c._entries.clear()
    if hasattr(c, "clear"):
        c.clear()


def _n_entries(cache) -> int:
    gc.collect()
    return len(cache) if hasattr(type(cache), "__len__") else len(cache._entries)


def _writes():
    """Ways to change a weight in place. The two no version counter sees are followed by the
    documented ``clear_pack_cache()`` when they write a weight matrix (biases are compared by
    value on every call, so those need nothing)."""
    def inplace(t, v):
        with torch.no_grad():
            t.copy_(v)

    def data(t, v):
        t.data.copy_(v)
        if t.dim() == 2:
            cpp_ops.clear_pack_cache()

    def numpy_view(t, v):
        t.detach().numpy()[...] = v.numpy()
        if t.dim() == 2:
            cpp_ops.clear_pack_cache()

    def new_data(t, v):
        t.data = v.clone()  # a new storage: its data pointer moves

    return [inplace, data, numpy_view, new_data]


@needs_cpp
@pytest.mark.parametrize("write", _writes(), ids=lambda f: f.__name__)
@pytest.mark.parametrize("what", ["weight", "bias"])
def test_fused_mlp_cache_never_stale(write, what, fresh_cache):
    torch.manual_seed(0)
    l1, l2 = torch.nn.Linear(5, 40), torch.nn.Linear(40, 3)
    x = torch.randn(30, 5)  # > GEMV_ROWS: the packed (cached) path

    def check():
        with torch.no_grad():
            got = rf.ops.fused_mlp(x, [l1.weight, l2.weight], [l1.bias, l2.bias], "tanh", backend="cpp")
            want = ref.fused_mlp(x, [l1.weight, l2.weight], [l1.bias, l2.bias], "tanh")
        torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)

    check()
    check()
    assert _n_entries(fresh_cache) == 1
    t = l1.weight if what == "weight" else l2.bias
    for k in range(3):
        write(t, torch.randn(t.shape) * (k + 1))
        check()
    # a single element, through a numpy view (no version bump, no new tensor)
    t.detach().numpy().reshape(-1)[-1] = 7.0
    if what == "weight":
        cpp_ops.clear_pack_cache()
    check()
    t.data.view(-1)[0] = -0.0 if t.view(-1)[0] == 0 else 0.0  # a sign of zero is a change too
    if what == "weight":
        cpp_ops.clear_pack_cache()
    check()


@needs_cpp
def test_numpy_weights_are_compared_by_value(fresh_cache):
    """numpy weights have no version counter: the cache compares them with its copy every call."""
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((40, 5)).astype(np.float32), rng.standard_normal((3, 40)).astype(np.float32)
    b1, b2 = np.zeros(40, np.float32), np.zeros(3, np.float32)
    x = rng.standard_normal((30, 5)).astype(np.float32)

    def check():
        got = rf.ops.fused_mlp(x, [w1, w2], [b1, b2], "tanh", backend="cpp")
        want = ref.fused_mlp(torch.from_numpy(x), [torch.from_numpy(w1), torch.from_numpy(w2)],
                             [torch.from_numpy(b1), torch.from_numpy(b2)], "tanh").numpy()
        np.testing.assert_allclose(got, want, atol=2e-6, rtol=1e-5)

    check()
    check()
    assert _n_entries(fresh_cache) == 1
    w1[3, 2] += 1.0
    check()


@needs_cpp
@pytest.mark.parametrize("write", _writes(), ids=lambda f: f.__name__)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_rnn_cache_never_stale(write, cell, fresh_cache):
    torch.manual_seed(1)
    mod = (torch.nn.LSTMCell if cell == "lstm" else torch.nn.GRUCell)(6, 5)
    x, h, c = torch.randn(4, 6), torch.randn(4, 5), torch.randn(4, 5)

    def check():
        with torch.no_grad():
            if cell == "lstm":
                got = rf.ops.lstm_step(x, h, c, mod.weight_ih, mod.weight_hh, mod.bias_ih + mod.bias_hh, backend="cpp")
                want = mod(x, (h, c))
                torch.testing.assert_close(got[1], want[1], atol=2e-6, rtol=1e-5)
                got, want = got[0], want[0]
            else:
                got = rf.ops.gru_step(x, h, mod.weight_ih, mod.weight_hh, mod.bias_ih, mod.bias_hh, backend="cpp")
                want = mod(x, h)
        torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)

    check()
    check()
    assert _n_entries(fresh_cache) == 1  # the fresh b_ih + b_hh of every call still hits
    for t in (mod.weight_ih, mod.weight_hh, mod.bias_hh):
        write(t, torch.randn(t.shape))
        check()


@needs_cpp
def test_cache_holds_the_callers_objects_weakly(fresh_cache):
    cell = torch.nn.LSTMCell(8, 16)
    x, h, c = torch.randn(3, 8), torch.randn(3, 16), torch.randn(3, 16)
    refs = []
    with torch.no_grad():
        for _ in range(5):
            b = cell.bias_ih + cell.bias_hh  # the documented pattern: a fresh temporary per call
            rf.ops.lstm_step(x, h, c, cell.weight_ih, cell.weight_hh, b, backend="cpp")
            refs.append(weakref.ref(b))
            del b
    gc.collect()
    assert all(r() is None for r in refs), "the cache kept a bias temporary alive"
    assert _n_entries(fresh_cache) == 1
    w_ref = weakref.ref(cell.weight_ih)
    lin = torch.nn.Linear(8, 40)
    rf.ops.fused_mlp(torch.randn(20, 8), [lin.weight], [lin.bias], backend="cpp")
    lin_ref = weakref.ref(lin.weight)
    assert _n_entries(fresh_cache) == 2
    del cell, lin
    gc.collect()
    assert w_ref() is None and lin_ref() is None, "the cache kept the caller's weights alive"
    assert _n_entries(fresh_cache) == 0 and fresh_cache.nbytes == 0  # and dropped their entries


@needs_cpp
def test_cache_is_bounded_in_bytes(fresh_cache):
    fresh_cache.max_bytes = 1 << 20
    fits = (1 << 20) // (4 * (2 * 256 * 128 + 256))  # LSTM 64 -> 64: 4H x (I + H) floats twice, 4H bias
    x = torch.randn(16, 64)
    cells = [torch.nn.LSTMCell(64, 64) for _ in range(12)]
    h = torch.zeros(16, 64)
    with torch.no_grad():
        for i, cell in enumerate(cells):
            got = rf.ops.lstm_step(x, h, h, cell.weight_ih, cell.weight_hh, cell.bias_ih + cell.bias_hh, backend="cpp")
            torch.testing.assert_close(got[0], cell(x, (h, h))[0], atol=2e-6, rtol=1e-5)
            assert _n_entries(fresh_cache) == min(i + 1, fits)
            assert fresh_cache.nbytes <= fresh_cache.max_bytes
    # an object larger than the bound is never cached (those calls pack per call), still right
    big = torch.nn.LSTMCell(64, 300)
    hb = torch.zeros(16, 300)
    with torch.no_grad():
        before = fresh_cache.nbytes
        got = rf.ops.lstm_step(x, hb, hb, big.weight_ih, big.weight_hh, None, backend="cpp")
        torch.testing.assert_close(got[0], ref.lstm_step(x, hb, hb, big.weight_ih, big.weight_hh, None)[0],
                                   atol=2e-6, rtol=1e-5)
        assert fresh_cache.nbytes == before
    # the default bound
    assert cpp_ops._PackCache().max_bytes == 64 << 20 or os.environ.get(cpp_ops.CACHE_ENV)


@needs_cpp
def test_cache_sizes_match_the_packed_objects():
    g = torch.Generator().manual_seed(0)
    for widths in ([5, 40, 3], [64, 256, 256, 8], [7, 33]):
        ws = [torch.randn(o, i, generator=g) for i, o in zip(widths[:-1], widths[1:])]
        descs = [(w.data_ptr(), w.shape[0], w.shape[1], w.shape[1], 0, 1) for w in ws]
        assert _C.PackedMLP(descs, [1] * len(ws), True).nbytes == cpp_ops._mlp_nbytes(descs)
    for kind, gates in ((0, 4), (1, 3)):
        for I, H in ((3, 5), (64, 64), (33, 130)):
            wi, wh = torch.randn(gates * H, I, generator=g), torch.randn(gates * H, H, generator=g)
            d = (kind, I, H, wi.data_ptr(), I, wh.data_ptr(), H, 0, 0)
            assert _C.PackedRNN(d, True).nbytes == cpp_ops._rnn_nbytes(kind, I, H)


@needs_cpp
def test_packed_same_is_exact():
    """_C's reuse check: bit for bit, weights and biases, every layer."""
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(40, 9, generator=g), torch.randn(3, 40, generator=g)]
    bs = [torch.randn(40, generator=g), None]
    descs = lambda: [(w.data_ptr(), w.shape[0], w.shape[1], w.shape[1], b.data_ptr() if b is not None else 0, 1)
                     for w, b in zip(ws, bs)]  # noqa: E731
    for keep_rows in (False, True):
        p = _C.PackedMLP(descs(), [1, 0], keep_rows)
        assert p.same(descs(), [1, 0]) and not p.same(descs(), [2, 0])
        for t in (ws[0], ws[1], bs[0]):
            for new in (float("nan"), -0.0, 1e-45):
                old = float(t.view(-1)[-1])
                t.view(-1)[-1] = new
                assert not p.same(descs(), [1, 0]), (keep_rows, new)
                p.repack(descs(), [1, 0])
                assert p.same(descs(), [1, 0])
                t.view(-1)[-1] = old
                p.repack(descs(), [1, 0])


# ----------------------------------------------------------------------- 5. zero rows

_BACKENDS = [pytest.param("torch", id="torch"),
             pytest.param("cpp", id="cpp", marks=needs_cpp),
             pytest.param("triton", id="triton", marks=[needs_triton_cpu, *triton_warnings])]


def _zero_row_cases(dt, numpy_in, wide):
    I, H, A = (40, 130, 70) if wide else (5, 3, 4)

    def z(*s):
        t = torch.zeros(*s, dtype=dt)
        return t.numpy() if numpy_in else t

    def zt(*s):  # non-contiguous zero-row input
        t = torch.zeros(*reversed(s), dtype=dt).t()
        return t.numpy() if numpy_in else t

    return {
        "fused_mlp": (lambda be: rf.ops.fused_mlp(z(0, I), [z(H, I), z(2, H)], [z(H), z(2)], backend=be),
                      [((0, 2), dt)]),
        "fused_mlp_nobias_noncontig": (lambda be: rf.ops.fused_mlp(zt(0, I), [z(H, I)], [None], "relu", "tanh", backend=be),
                                       [((0, H), dt)]),
        "sample_categorical": (lambda be: rf.ops.sample_categorical(z(0, A), backend=be),
                               [((0,), torch.int64), ((0,), dt)]),
        "sample_categorical_det": (lambda be: rf.ops.sample_categorical(zt(0, A), True, backend=be),
                                   [((0,), torch.int64), ((0,), dt)]),
        "sample_diag_gaussian": (lambda be: rf.ops.sample_diag_gaussian(z(0, 2 * A), backend=be),
                                 [((0, A), dt), ((0,), dt)]),
        "sample_diag_gaussian_det": (lambda be: rf.ops.sample_diag_gaussian(z(0, 2 * A), True, backend=be),
                                     [((0, A), dt), ((0,), dt)]),
        "lstm_step": (lambda be: rf.ops.lstm_step(z(0, I), z(0, H), z(0, H), z(4 * H, I), z(4 * H, H), z(4 * H), backend=be),
                      [((0, H), dt), ((0, H), dt)]),
        "lstm_step_nobias": (lambda be: rf.ops.lstm_step(zt(0, I), zt(0, H), z(0, H), z(4 * H, I), z(4 * H, H), None, backend=be),
                             [((0, H), dt), ((0, H), dt)]),
        "gru_step": (lambda be: rf.ops.gru_step(z(0, I), z(0, H), z(3 * H, I), z(3 * H, H), z(3 * H), z(3 * H), backend=be),
                     [((0, H), dt)]),
        "gru_step_nobias": (lambda be: rf.ops.gru_step(z(0, I), zt(0, H), z(3 * H, I), z(3 * H, H), None, None, backend=be),
                            [((0, H), dt)]),
    }


def _np_dtype(dt):
    return torch.empty(0, dtype=dt).numpy().dtype


@pytest.mark.parametrize("backend", _BACKENDS)
@pytest.mark.parametrize("wide", [False, True], ids=["small", "wide"])
@pytest.mark.parametrize("numpy_in", [False, True], ids=["tensor", "numpy"])
@pytest.mark.parametrize("dt", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_zero_rows_every_op(backend, wide, numpy_in, dt):
    for name, (call, want) in _zero_row_cases(dt, numpy_in, wide).items():
        out = call(backend)
        outs = out if isinstance(out, tuple) else (out,)
        assert len(outs) == len(want), name
        for o, (shape, odt) in zip(outs, want):
            if numpy_in:
                assert isinstance(o, np.ndarray), (name, type(o))
                assert o.dtype == _np_dtype(odt) and o.shape == shape, (name, o.dtype, o.shape)
            else:
                assert isinstance(o, torch.Tensor), (name, type(o))
                assert o.dtype == odt and tuple(o.shape) == shape, (name, o.dtype, tuple(o.shape))


@pytest.mark.parametrize("backend", _BACKENDS)
def test_zero_rows_still_check_arguments(backend):
    """A zero-row batch is no excuse for wrong weights: the same named errors as with rows."""
    z = torch.zeros
    with pytest.raises((ValueError, TypeError), match="weights"):
        rf.ops.fused_mlp(z(0, 5), [z(7, 6)], [None], backend=backend)
    with pytest.raises((ValueError, TypeError), match="w_ih"):
        rf.ops.lstm_step(z(0, 5), z(0, 3), z(0, 3), z(12, 6), z(12, 3), None, backend=backend)
    with pytest.raises((ValueError, TypeError), match="b_ih"):
        rf.ops.gru_step(z(0, 5), z(0, 3), z(9, 5), z(9, 3), z(10), None, backend=backend)
    with pytest.raises((ValueError, TypeError), match="logits"):
        rf.ops.sample_categorical(z(0, 0), backend=backend)


@pytest.mark.parametrize("backend", _BACKENDS)
@pytest.mark.parametrize("B", [0, 3])
def test_numpy_negative_strides_every_backend(backend, B):
    """Reversed numpy views (negative strides) are copied, not refused (torch.from_numpy
    refuses them): the same results as contiguous inputs, on every backend."""
    rng = np.random.default_rng(B)
    x = rng.standard_normal((B, 5)).astype(np.float32)[::-1]
    w = rng.standard_normal((6, 5)).astype(np.float32)[::-1]
    b = rng.standard_normal(6).astype(np.float32)[::-1]
    got = rf.ops.fused_mlp(x, [w], [b], None, "tanh", backend=backend)
    np.testing.assert_allclose(got, np.tanh(x @ w.T + b), rtol=1e-5, atol=1e-6)
    H = 2
    wi = rng.standard_normal((4 * H, 5)).astype(np.float32)[:, ::-1]
    wh = rng.standard_normal((4 * H, H)).astype(np.float32)[::-1]
    h = np.zeros((B, H), np.float32)
    got = rf.ops.lstm_step(x, h, h, wi, wh, None, backend=backend)
    want = ref.lstm_step(*(torch.from_numpy(a.copy()) for a in (x, h, h, wi, wh)), None)
    for g, wnt in zip(got, want):
        np.testing.assert_allclose(g, wnt.numpy(), rtol=1e-5, atol=1e-6)


@needs_cpp
def test_zero_rows_packed_mlp_and_policy():
    m = cpp_ops.PackedMLP([torch.randn(7, 5)], [torch.randn(7)])
    assert tuple(m(torch.zeros(0, 5)).shape) == (0, 7)
    assert m(np.zeros((0, 5), np.float64)).dtype == np.float64
    keep: list = []
    net = _C.Policy(_policy_spec(keep, lstm=8))
    out = net.step(np.zeros((0, 6), np.float32), 0, 0, (None,) * 4, False, True, None)
    assert out[0].shape == (0, 4) and out[1].shape == (0,) and out[3].shape == (0,) and out[4].shape == (0, 8)


# ----------------------------------------------------------------------- 6. ELU near 0-

@needs_cpp
@pytest.mark.parametrize("B", [7, 300], ids=["gemv", "packed"])
@pytest.mark.parametrize("isa", ISAS)
def test_elu_near_zero_is_accurate(isa, B):
    """ELU(x) = expm1(x) for x < 0: exp(x) - 1 loses every digit as x -> 0- (100% relative
    error at -1e-8). Hidden and output activations, every ISA, both fused_mlp paths."""
    _C.set_isa(isa)
    try:
        g = torch.Generator().manual_seed(0)
        x = -torch.rand(B, 32, generator=g, dtype=torch.float64) * 1e-3
        x[:, :8] = -torch.logspace(-12, 0, B * 8, dtype=torch.float64).reshape(B, 8)
        x[:, 8] = -0.35 - torch.rand(B, generator=g, dtype=torch.float64) * 1e-3  # the branch point
        x = x.float()
        eye = torch.eye(32)
        for args in (([eye], [None], None, "elu"), ([eye, eye], [None, None], "elu", None)):
            got = rf.ops.fused_mlp(x, *args, backend="cpp").double()
            want = torch.special.expm1(x.double())
            rel = ((got - want).abs() / want.abs()).max().item()
            assert rel < 4e-7, f"{isa}: max relative error {rel:.3g}"
        # and the tails: -inf -> -1, NaN stays NaN, large negative -> -1 (one input per row)
        t = torch.tensor([float("-inf"), float("nan"), -100.0, -20.0] * B).reshape(-1, 1)[:B]
        got = rf.ops.fused_mlp(t, [torch.ones(1, 1)], [None], None, "elu", backend="cpp")[:, 0]
        want = torch.special.expm1(t[:, 0])
        assert torch.equal(got.isnan(), want.isnan())
        torch.testing.assert_close(got[~want.isnan()], want[~want.isnan()])
    finally:
        _C.set_isa(_C.best_isa())


# ----------------------------------------------------------------------- 7. triton numerics

def _gauss_policy(free: bool, clip=0.5):
    from types import SimpleNamespace
    torch.manual_seed(0)
    lins = lambda ws: [torch.nn.Linear(a, b) for a, b in zip(ws[:-1], ws[1:])]  # noqa: E731
    enc = SimpleNamespace(mlp=lins([7, 16]), activation="tanh", rnn=None)
    return SimpleNamespace(actor=enc, critic=None, pi=lins([16, 3 if free else 6]), vf=lins([16, 1]),
                           head_activation="relu", dist="diag_gaussian", action_sizes=[3], log_std_clip=clip,
                           free_log_std=torch.nn.Parameter(torch.zeros(3)) if free else None)


@_on_triton
@pytest.mark.parametrize("det", [True, False], ids=["det", "sample"])
@pytest.mark.parametrize("free", [False, True], ids=["head_log_std", "free_log_std"])
@pytest.mark.parametrize("kernel", ["regs", "staged"])
def test_triton_policy_nan_log_std_raises_despite_clip(free, det, kernel, monkeypatch):
    from rlmodule_fast.fastpath.triton_plan import TritonPolicyPlan
    from rlmodule_fast.kernels import mlp
    if kernel == "staged":
        monkeypatch.setattr(mlp, "REG_MAX_WIDTH", 16)  # force the staged kernel on small widths
    L = _gauss_policy(free)
    plan = TritonPolicyPlan(L)
    x = torch.randn(5, 7)
    plan.step(x, deterministic=det)  # finite: fine
    with torch.no_grad():
        if free:
            L.free_log_std[1] = float("nan")
        else:
            L.pi[-1].bias[4] = float("nan")  # one log-std entry of every row
    with pytest.raises(ValueError, match=r"action_dist_inputs.*NaN"):
        plan.step(x, deterministic=det)
    # an infinite log-std is clamped to the bound, as torch.clamp does: no error
    with torch.no_grad():
        if free:
            L.free_log_std[1] = float("inf")
        else:
            L.pi[-1].bias[4] = float("inf")
    out = plan.step(x, deterministic=det)
    assert out["action_dist_inputs"][:, 4].eq(L.log_std_clip).all()
    assert torch.isfinite(out["actions"]).all()


@_on_triton
def test_triton_categorical_logp_and_entropy_at_large_logits():
    """log_softmax as (x - max) - log(sum), never x - (max + log(sum)) in float32."""
    from rlmodule_fast.kernels import sampling
    g = torch.Generator().manual_seed(0)
    for shift in (1e4, -3e4, 1e6):
        logits = (torch.randn(64, 6, generator=g) * 3 + shift).float()
        lsm = torch.log_softmax(logits.double(), -1)
        for det in (True, False):
            a, lp, flag, ent = sampling.sample_categorical(logits, det, entropy=True)
            assert int(flag) == 0
            want = lsm.gather(-1, a[:, None])[:, 0]
            assert (lp.double() - want).abs().max().item() < 2e-6, shift
            went = -(lsm.exp() * lsm).sum(-1)
            assert (ent.double() - went).abs().max().item() < 2e-6, shift
        a, lp = rf.ops.sample_categorical(logits, backend="triton")
        assert (lp.double() - lsm.gather(-1, a[:, None])[:, 0]).abs().max().item() < 2e-6


@_on_triton
@pytest.mark.parametrize("dist", ["categorical", "multi_categorical"])
def test_triton_policy_logp_at_large_logits(dist):
    from types import SimpleNamespace

    from rlmodule_fast.fastpath.triton_plan import TritonPolicyPlan
    torch.manual_seed(0)
    sizes = [5] if dist == "categorical" else [3, 4]
    lins = lambda ws: [torch.nn.Linear(a, b) for a, b in zip(ws[:-1], ws[1:])]  # noqa: E731
    L = SimpleNamespace(actor=SimpleNamespace(mlp=lins([7, 16]), activation="tanh", rnn=None), critic=None,
                        pi=lins([16, sum(sizes)]), vf=None, head_activation="relu", dist=dist, action_sizes=sizes,
                        log_std_clip=None, free_log_std=None)
    with torch.no_grad():
        L.pi[-1].bias.add_(1e4)
    out = TritonPolicyPlan(L).step(torch.randn(33, 7))
    d, a = out["action_dist_inputs"].double(), out["actions"]
    cols = a if a.dim() == 2 else a[:, None]
    want, lo = 0.0, 0
    for j, n in enumerate(sizes):
        want = want + torch.log_softmax(d[:, lo:lo + n], -1).gather(-1, cols[:, j:j + 1])[:, 0]
        lo += n
    assert (out["action_logp"].double() - want).abs().max().item() < 4e-6

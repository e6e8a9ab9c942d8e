"""The Triton backend's RNG streams and its graph-capturable (``check=False``) mode.

Under Triton's interpreter on CPU tensors (TRITON_INTERPRET=1, tests/conftest.py), or compiled on
a GPU: 64-bit Philox key + 64-bit counter (draws never repeat in practice, a fixed seed
reproduces), and ``check=False`` calls that never sync with the host (the error flag and the
Philox counter stay on the device), as CUDA-graph capture needs. The ``cuda``-marked test
captures and replays a real CUDA graph.
"""
from types import SimpleNamespace

import pytest
import torch

import rlmodule_fast as rf
from rlmodule_fast.fastpath.triton_plan import TritonPolicyPlan
from rlmodule_fast.ops import triton as tri

ok, why = tri.status()
pytestmark = [
    pytest.mark.skipif(not ok, reason=f"triton backend unavailable: {why}"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]

DEVICES = [
    pytest.param("cpu", id="cpu", marks=pytest.mark.skipif(
        not tri.interpreted(), reason="CPU tensors need the interpreter (TRITON_INTERPRET=1)")),
    pytest.param("cuda", id="cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="no CUDA device")]),
]


def _sampling():
    from rlmodule_fast.kernels import sampling

    return sampling


def _lins(widths, device):
    return [torch.nn.Linear(a, b).to(device) for a, b in zip(widths[:-1], widths[1:])]


def _policy(dist, device, hidden=(16,)):
    sizes = {"categorical": [5], "multi_categorical": [3, 4], "diag_gaussian": [3]}[dist]
    npi = {"categorical": 5, "multi_categorical": 7, "diag_gaussian": 6}[dist]
    enc = SimpleNamespace(mlp=_lins([7, *hidden], device), activation="tanh", rnn=None)
    return SimpleNamespace(actor=enc, critic=None, pi=_lins([hidden[-1], npi], device),
                           vf=_lins([hidden[-1], 1], device), head_activation="relu", dist=dist,
                           action_sizes=sizes, log_std_clip=None, free_log_std=None)


@pytest.fixture
def fresh_graph_state():
    tri._rng_states.clear()
    tri._error_flags.clear()
    yield
    tri._rng_states.clear()
    tri._error_flags.clear()


class _NoHostSync:
    """Makes every device->host read of a tensor raise while active (item, int, bool, tolist,
    numpy, cpu): the check=False path must not call any of them."""

    NAMES = ("item", "__int__", "__bool__", "__float__", "tolist", "numpy", "cpu")

    def __init__(self, monkeypatch):
        self.mp = monkeypatch

    def __enter__(self):
        def boom(name):
            def f(*a, **k):
                raise AssertionError(f"host sync: Tensor.{name} called in a check=False call")
            return f

        for n in self.NAMES:
            self.mp.setattr(torch.Tensor, n, boom(n))
        return self

    def __exit__(self, *exc):
        self.mp.undo()
        return False


# ----------------------------------------------------------------------------- item 1: 64-bit streams

@pytest.mark.parametrize("device", DEVICES)
def test_seed_draw_is_128_bits_and_calls_differ(device):
    sampling = _sampling()
    draws = torch.stack([sampling.draw_seed(device) for _ in range(8)]).cpu()
    assert draws.shape == (8, 2) and draws.dtype == torch.int64
    assert (draws.abs() > 2**31).any(), "the key/counter use the full 64-bit range"
    assert len({tuple(r) for r in draws.tolist()}) == 8
    logits = torch.zeros(64, 16, device=device)  # uniform: every action equally likely
    a1, _, _ = sampling.sample_categorical(logits)
    a2, _, _ = sampling.sample_categorical(logits)
    assert not torch.equal(a1, a2)
    g = torch.zeros(32, 8, device=device)
    e1, _, _ = sampling.sample_diag_gaussian(g)
    e2, _, _ = sampling.sample_diag_gaussian(g)
    assert not torch.equal(e1, e2)


@pytest.mark.parametrize("device", DEVICES)
def test_fixed_seed_reproduces(device):
    sampling = _sampling()
    logits = torch.zeros(64, 16, device=device)
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        outs.append((sampling.sample_categorical(logits)[0], sampling.sample_diag_gaussian(
            torch.zeros(16, 6, device=device))[0]))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize("device", DEVICES)
def test_every_word_of_key_and_counter_matters(device):
    """Same (key, counter) -> same draw; flipping the high half of the key or of the counter (bits
    a 31-bit seed never had) -> a different draw."""
    sampling = _sampling()
    x = torch.zeros(8, 32, device=device)
    base = torch.tensor([0x1234_5678_9ABC_DEF0, 7], dtype=torch.int64, device=device)
    draw = lambda st: sampling.sample_diag_gaussian(x, seed=st)[0]  # noqa: E731
    ref = draw(base)
    assert torch.equal(ref, draw(base.clone()))
    for delta in ([1 << 40, 0], [0, 1], [0, 1 << 40]):
        assert not torch.equal(ref, draw(base + torch.tensor(delta, device=device)))


# ----------------------------------------------------------------------------- item 2: check=False

@pytest.mark.parametrize("device", DEVICES)
def test_check_false_sampler_has_no_host_sync_and_advances_the_counter(device, monkeypatch,
                                                                      fresh_graph_state):
    logits = torch.zeros(32, 9, device=device)
    g = torch.zeros(32, 8, device=device)
    tri.sample_categorical(logits, check=False)  # warm-up: draws the key outside the "graph"
    st = tri.rng_state(device)
    c0 = int(st[1])
    with _NoHostSync(monkeypatch):
        a1, _ = tri.sample_categorical(logits, check=False)
        a2, _ = tri.sample_categorical(logits, check=False)
        n1, _ = tri.sample_diag_gaussian(g, check=False)
        n2, _ = tri.sample_diag_gaussian(g, check=False)
        tri.sample_categorical(logits, True, check=False)  # deterministic: no counter step
    assert int(st[1]) == c0 + 4
    assert not torch.equal(a1, a2) and not torch.equal(n1, n2)
    assert tri.last_error(device) == 0
    tri.raise_if_error(device)  # nothing to raise


@pytest.mark.parametrize("device", DEVICES)
def test_check_false_sets_the_flag_and_raise_if_error_raises(device, monkeypatch, fresh_graph_state):
    bad = torch.zeros(4, 6, device=device)
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):  # default: unchanged behaviour
        tri.sample_categorical(bad)
    tri.rng_state(device)
    with _NoHostSync(monkeypatch):
        tri.sample_categorical(bad, check=False)  # no raise, no sync
    assert tri.last_error(device) == 1
    with _NoHostSync(monkeypatch):
        tri.sample_diag_gaussian(bad, check=False)
    assert tri.last_error(device) == 3  # bits accumulate
    with pytest.raises(ValueError, match="logits .*mean_logstd.*NaN or inf"):
        tri.raise_if_error(device)
    assert tri.last_error(device) == 0  # reset on the device
    tri.raise_if_error(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["fused", "sequence"])
@pytest.mark.parametrize("dist", ["categorical", "multi_categorical", "diag_gaussian"])
def test_policy_step_check_false(dist, mode, device, monkeypatch, fresh_graph_state):
    from rlmodule_fast.kernels import mlp

    if mode == "sequence":
        monkeypatch.setattr(mlp, "fused_tile_plan", lambda widths: None)  # one kernel per piece
    torch.manual_seed(0)
    plan = TritonPolicyPlan(_policy(dist, device))
    assert plan.mode == mode
    x = torch.randn(24, 7, device=device)
    plan.step(x, check=False, compute_value=True)  # warm-up (packs weights, draws the key)
    st = tri.rng_state(device)
    c0 = int(st[1])
    with _NoHostSync(monkeypatch):
        o1 = plan.step(x, check=False, compute_value=True)
        o2 = plan.step(x, check=False, compute_value=True)
    n_draws = 2 if dist == "multi_categorical" and mode == "sequence" else 1
    assert int(st[1]) == c0 + 2 * n_draws
    assert not torch.equal(o1["actions"], o2["actions"])
    assert tri.last_error(device) == 0
    # same result as the checked step for everything that is not random
    chk = plan.step(x, compute_value=True)
    torch.testing.assert_close(chk["action_dist_inputs"], o1["action_dist_inputs"])
    torch.testing.assert_close(chk["vf_preds"], o1["vf_preds"])
    # NaN weights -> NaN distribution inputs -> flag bit, raised later
    with torch.no_grad():
        plan.pi[-1].bias[0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        plan.step(x)
    with _NoHostSync(monkeypatch):
        plan.step(x, check=False)
    expect = 4 if mode == "fused" else (2 if dist == "diag_gaussian" else 1)
    assert tri.last_error(device) == expect
    with pytest.raises(ValueError, match="NaN or inf"):
        tri.raise_if_error(device)


@pytest.mark.parametrize("device", DEVICES)
def test_graph_mode_reproduces_under_manual_seed(device, fresh_graph_state):
    logits = torch.zeros(32, 9, device=device)
    rf.ops.sample_categorical(logits, backend="triton")  # loads the backend into the dispatcher
    runs = []
    for _ in range(2):
        rf.manual_seed(77)  # drops the persistent state: the key is redrawn from torch's generator
        runs.append([tri.sample_categorical(logits, check=False)[0] for _ in range(3)])
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    assert not torch.equal(runs[0][0], runs[0][1])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_graph_capture_and_replay_draws_fresh_numbers(fresh_graph_state):
    torch.manual_seed(0)
    plan = TritonPolicyPlan(_policy("categorical", "cuda"))
    x = torch.randn(256, 7, device="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm-up: compiles the kernels, packs, draws the key
        for _ in range(2):
            plan.step(x, check=False, compute_value=True)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = plan.step(x, check=False, compute_value=True)
    seen = []
    for _ in range(3):
        g.replay()
        torch.cuda.synchronize()
        seen.append(out["actions"].clone())
    assert not torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])
    eager = plan.step(x, compute_value=True)
    torch.testing.assert_close(eager["vf_preds"], out["vf_preds"])
    assert tri.last_error("cuda") == 0
    x.fill_(float("nan"))  # the captured input buffer: NaN obs -> NaN logits at the next replay
    g.replay()
    assert tri.last_error("cuda") == 4
    with pytest.raises(ValueError):
        tri.raise_if_error("cuda")

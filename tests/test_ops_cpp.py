"""The cpp backend's ops against the torch reference (rlmodule_fast/ops/reference.py).

Tolerances are calibrated: the cpp float32 result may differ from the float64 reference by at
most a small multiple of the error torch itself makes computing the same thing in float32.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import rlmodule_fast as rf
from rlmodule_fast.ops import reference as ref

CPP = rf.backend_info()["cpp"]
pytestmark = pytest.mark.skipif(not CPP["available"], reason=f"cpp backend unavailable: {CPP['reason']}")

if CPP["available"]:
    from rlmodule_fast import _C
    from rlmodule_fast.ops import cpp as cpp_ops

ACTS = ["tanh", "relu", "silu", "elu", "linear"]
ISAS = [i for i in ("sse2", "avx2", "avx512") if CPP.get("available") and
        ["sse2", "avx2", "avx512"].index(i) <= ["sse2", "avx2", "avx512"].index(CPP["best_isa"])]


@pytest.fixture
def isa(request):
    """Run a test under one instruction set, then restore the best one."""
    _C.set_isa(request.param)
    yield request.param
    _C.set_isa(_C.best_isa())


def _mlp(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    ws, bs = [], []
    for i, o in zip(sizes[:-1], sizes[1:]):
        lin = torch.nn.Linear(i, o)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(o, i, generator=g) / i**0.5)
            lin.bias.copy_(torch.randn(o, generator=g) * 0.3)
        ws.append(lin.weight)
        bs.append(lin.bias)
    return ws, bs


def _check_close(got, x, ws, bs, act, out_act):
    """got (float32 math) vs the float64 reference, relative to torch's own float32 error."""
    x64 = torch.as_tensor(np.asarray(x) if isinstance(x, np.ndarray) else x).double()
    r64 = ref.fused_mlp(x64, [w.double() for w in ws], [None if b is None else b.double() for b in bs], act, out_act)
    r32 = ref.fused_mlp(x64.float(), [w.float() for w in ws], [None if b is None else b.float() for b in bs], act, out_act)
    got_t = torch.as_tensor(got).double()
    assert got_t.shape == r64.shape
    err = (got_t - r64).abs().max().item() if got_t.numel() else 0.0
    torch_err = (r32.double() - r64).abs().max().item() if r64.numel() else 0.0
    assert err <= 8 * torch_err + 2e-6, f"cpp error {err:.3g} vs torch float32 error {torch_err:.3g}"


# ------------------------------------------------------------------------------- fused_mlp

@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("B", [1, 3, 17, 63, 129])
def test_fused_mlp_matches_reference(B, act):
    ws, bs = _mlp([5, 63, 17, 3], seed=B)
    x = torch.randn(B, 5, generator=torch.Generator().manual_seed(B)) * 2
    out_act = {"tanh": None, "relu": "tanh", "silu": "relu", "elu": "elu", "linear": "silu"}[act]
    y = rf.ops.fused_mlp(x, ws, bs, act, out_act, backend="cpp")
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
    _check_close(y, x, ws, bs, act, out_act)


@pytest.mark.parametrize("out_act", [None, "tanh", "relu", "silu", "swish", "elu", "linear"])
def test_fused_mlp_output_activation(out_act):
    ws, bs = _mlp([7, 33, 5], seed=1)
    x = torch.randn(17, 7)
    _check_close(rf.ops.fused_mlp(x, ws, bs, "tanh", out_act, backend="cpp"), x, ws, bs, "tanh", out_act)


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("B", [1, 2, 5, 7, 13, 49, 300])
def test_fused_mlp_every_isa(isa, B):
    ws, bs = _mlp([3, 65, 31, 2], seed=2)
    x = torch.randn(B, 3)
    for act in ACTS:
        _check_close(rf.ops.fused_mlp(x, ws, bs, act, "tanh", backend="cpp"), x, ws, bs, act, "tanh")


def test_fused_mlp_large_inputs_saturate():
    ws, bs = _mlp([4, 9], seed=3)
    x = torch.tensor([[1e4, -1e4, 50.0, -50.0], [0.0, 1e-6, -1e-6, 3.0]])
    for act in ACTS:
        y = rf.ops.fused_mlp(x, [w * 10 for w in ws], [b for b in bs], act, act, backend="cpp")
        assert torch.isfinite(y).all()
        _check_close(y, x, [w * 10 for w in ws], bs, act, act)


def test_fused_mlp_noncontiguous_float64_numpy():
    ws, bs = _mlp([6, 19, 4], seed=4)
    base = torch.randn(6, 40)
    x_t = base.t()[::2]  # [20, 6], column stride != 1
    assert not x_t.is_contiguous()
    _check_close(rf.ops.fused_mlp(x_t, ws, bs, "elu", backend="cpp"), x_t, ws, bs, "elu", None)
    x_slice = torch.randn(20, 10)[:, 2:8]  # row stride 10, unit column stride: used in place
    _check_close(rf.ops.fused_mlp(x_slice, ws, bs, "silu", backend="cpp"), x_slice, ws, bs, "silu", None)
    w_nc = [ws[0].t().contiguous().t(), ws[1]]  # transposed storage
    assert not w_nc[0].is_contiguous()
    _check_close(rf.ops.fused_mlp(x_slice, w_nc, bs, "relu", backend="cpp"), x_slice, ws, bs, "relu", None)
    # float64 in -> float64 out (computed in float32)
    y64 = rf.ops.fused_mlp(x_slice.double(), [w.double() for w in ws], [b.double() for b in bs], "tanh", backend="cpp")
    assert y64.dtype == torch.float64
    _check_close(y64, x_slice, ws, bs, "tanh", None)
    # numpy in -> numpy out, weights as numpy too
    xn = x_slice.numpy().copy()
    yn = rf.ops.fused_mlp(xn, [w.detach().numpy() for w in ws], [b.detach().numpy() for b in bs], "tanh", backend="cpp")
    assert isinstance(yn, np.ndarray) and yn.dtype == np.float32
    _check_close(yn, x_slice, ws, bs, "tanh", None)
    # leading dims and no biases
    x3 = torch.randn(2, 3, 6)
    y3 = rf.ops.fused_mlp(x3, ws, [None, None], "tanh", backend="cpp")
    assert y3.shape == (2, 3, 4)
    _check_close(y3.reshape(6, 4), x3.reshape(6, 6), ws, [None, None], "tanh", None)
    # empty batch
    assert rf.ops.fused_mlp(torch.zeros(0, 6), ws, bs, "tanh", backend="cpp").shape == (0, 4)


@pytest.mark.parametrize(
    "case, match",
    [
        ("in_dim", r"weights\[0\]: expected shape \[H_0, 6\], got \(8, 5\)"),
        ("chain", r"weights\[1\]: expected shape \[H_1, 8\], got \(4, 7\)"),
        ("bias", r"biases\[1\]: expected shape \[4\], got \(5,\)"),
        ("nbias", r"biases: expected 2 entries"),
        ("empty", r"weights: expected a non-empty list"),
        ("act", r"activation: unknown activation 'gelu'"),
        ("out_act", r"output_activation: unknown activation 'softmax'"),
        ("dtype", r"x: expected dtype float32 or float64, got torch.int64"),
        ("scalar", r"x: expected shape \[B, I\], got \(\)"),
    ],
)
def test_fused_mlp_bad_arguments(case, match):
    ws = [torch.randn(8, 6), torch.randn(4, 8)]
    bs = [torch.randn(8), torch.randn(4)]
    x = torch.randn(3, 6)
    act, out_act = "tanh", None
    if case == "in_dim":
        ws[0] = torch.randn(8, 5)
    elif case == "chain":
        ws[1] = torch.randn(4, 7)
    elif case == "bias":
        bs[1] = torch.randn(5)
    elif case == "nbias":
        bs = bs[:1]
    elif case == "empty":
        ws, bs = [], []
    elif case == "act":
        act = "gelu"
    elif case == "out_act":
        out_act = "softmax"
    elif case == "dtype":
        x = torch.ones(3, 6, dtype=torch.int64)
    elif case == "scalar":
        x = torch.tensor(1.0)
    with pytest.raises(ValueError, match=match):
        rf.ops.fused_mlp(x, ws, bs, act, out_act, backend="cpp")


# ------------------------------------------------------------------------------- PackedMLP

def test_packed_mlp_matches_and_sees_inplace_updates():
    lins = [torch.nn.Linear(5, 33), torch.nn.Linear(33, 3)]
    ws, bs = [l.weight for l in lins], [l.bias for l in lins]
    mlp = cpp_ops.PackedMLP(ws, bs, "silu", "tanh")
    x = torch.randn(65, 5)
    _check_close(mlp(x), x, ws, bs, "silu", "tanh")
    opt = torch.optim.SGD([p for l in lins for p in l.parameters()], lr=0.5)
    loss = torch.nn.Sequential(lins[0], torch.nn.SiLU(), lins[1])(x).pow(2).sum()
    loss.backward()
    opt.step()  # in place: bumps _version
    _check_close(mlp(x), x, ws, bs, "silu", "tanh")
    lins[1].load_state_dict({"weight": torch.randn(3, 33), "bias": torch.randn(3)})
    _check_close(mlp(x), x, ws, bs, "silu", "tanh")
    _check_close(mlp(x[:1]), x[:1], ws, bs, "silu", "tanh")
    xn = x.numpy()[:7]
    assert isinstance(mlp(xn), np.ndarray)
    with pytest.raises(ValueError, match=r"x: expected shape \[B, 5\], got \(3, 4\)"):
        mlp(torch.randn(3, 4))


# ------------------------------------------------------------------------------- sampling

@pytest.mark.parametrize("B", [1, 3, 17, 63, 129])
@pytest.mark.parametrize("A", [1, 2, 7])
def test_categorical_logp_exact_and_deterministic(B, A):
    logits = torch.randn(B, A) * 3
    a, lp = rf.ops.sample_categorical(logits, backend="cpp")
    assert a.dtype == torch.int64 and a.shape == (B,) and lp.shape == (B,)
    assert ((a >= 0) & (a < A)).all()
    ref_lp = torch.log_softmax(logits.double(), -1).gather(-1, a[:, None])[:, 0]
    torch.testing.assert_close(lp.double(), ref_lp, atol=2e-6, rtol=2e-6)
    ad, lpd = rf.ops.sample_categorical(logits, True, backend="cpp")
    ra, rlp = ref.sample_categorical(logits, True)
    assert torch.equal(ad, ra)
    torch.testing.assert_close(lpd, rlp, atol=2e-6, rtol=2e-6)


def test_categorical_chi_square():
    scipy_stats = pytest.importorskip("scipy.stats")
    torch.manual_seed(123)
    probs = torch.tensor([0.05, 0.1, 0.2, 0.3, 0.35, 0.0001])
    logits = probs.log().expand(40000, 6)
    a, _ = rf.ops.sample_categorical(logits, backend="cpp")
    counts = torch.bincount(a, minlength=6).double().numpy()
    expected = probs.double().numpy() / probs.sum().item() * 40000
    p = scipy_stats.chisquare(counts, expected).pvalue
    assert p > 1e-4, (counts, expected, p)
    # rows differ per row too: two very different rows in one batch
    lg = torch.tensor([[10.0, 0.0, 0.0], [0.0, 0.0, 10.0]]).repeat(2000, 1)
    a, _ = rf.ops.sample_categorical(lg, backend="cpp")
    assert (a[0::2] == 0).float().mean() > 0.99 and (a[1::2] == 2).float().mean() > 0.99


def test_categorical_float64_numpy_noncontiguous():
    lg = torch.randn(5, 11).double()[:, ::2]
    a, lp = rf.ops.sample_categorical(lg, backend="cpp")
    assert lp.dtype == torch.float64
    torch.testing.assert_close(lp, torch.log_softmax(lg, -1).gather(-1, a[:, None])[:, 0], atol=2e-6, rtol=0)
    an, lpn = rf.ops.sample_categorical(lg.float().numpy(), backend="cpp")
    assert isinstance(an, np.ndarray) and an.dtype == np.int64 and isinstance(lpn, np.ndarray)


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_categorical_nonfinite_raises(bad):
    lg = torch.zeros(4, 3)
    lg[2, 1] = float(bad)
    with pytest.raises(ValueError, match=r"logits: contains NaN or inf \(row 2\)"):
        rf.ops.sample_categorical(lg, backend="cpp")
    with pytest.raises(ValueError, match="logits: contains NaN or inf"):
        rf.ops.sample_categorical(lg, True, backend="cpp")
    with pytest.raises(ValueError, match=r"logits: expected shape \[B, A\]"):
        rf.ops.sample_categorical(torch.zeros(2, 3, 4), backend="cpp")


def test_samplers_reproducible_under_seeds():
    lg = torch.randn(64, 5)
    ml = torch.randn(64, 6)

    def run():
        out = [rf.ops.sample_categorical(lg, backend="cpp")[0], rf.ops.sample_diag_gaussian(ml, backend="cpp")[0]]
        torch.rand(3)  # torch's own draws in between change nothing in the fused stream
        out.append(rf.ops.sample_categorical(lg, backend="cpp")[0])
        return out

    torch.manual_seed(7)  # a new torch seed re-keys the stream
    first = run()
    rf.manual_seed(7)     # the same seed again: rf.manual_seed restarts the stream
    second = run()
    for x, y in zip(first, second):
        assert torch.equal(x, y)
    assert not torch.equal(first[0], first[2])
    torch.manual_seed(8)
    other = run()
    assert not all(torch.equal(x, y) for x, y in zip(first, other))


@pytest.mark.parametrize("A", [1, 3, 8])
def test_diag_gaussian_moments_and_logp(A):
    torch.manual_seed(A)
    mean = torch.randn(A)
    log_std = torch.randn(A) * 0.5
    ml = torch.cat([mean, log_std]).expand(20000, 2 * A)
    act, lp = rf.ops.sample_diag_gaussian(ml, backend="cpp")
    assert act.shape == (20000, A) and lp.shape == (20000,)
    std = log_std.exp()
    n = act.shape[0]
    assert ((act.mean(0) - mean).abs() < 5 * std / n**0.5).all()
    assert ((act.std(0) / std - 1).abs() < 5 * (0.5 / n) ** 0.5 * 2).all()
    ref_lp = torch.distributions.Normal(mean.double(), std.double()).log_prob(act.double()).sum(-1)
    torch.testing.assert_close(lp.double(), ref_lp, atol=5e-5, rtol=1e-5)
    ad, lpd = rf.ops.sample_diag_gaussian(ml[:3], True, backend="cpp")
    ra, rlp = ref.sample_diag_gaussian(ml[:3], True)
    torch.testing.assert_close(ad, ra)
    torch.testing.assert_close(lpd, rlp, atol=1e-5, rtol=1e-6)


def test_diag_gaussian_bad_inputs():
    with pytest.raises(ValueError, match=r"mean_logstd: expected shape \[B, 2A\]"):
        rf.ops.sample_diag_gaussian(torch.zeros(3, 5), backend="cpp")
    ml = torch.zeros(3, 4)
    ml[1, 3] = float("nan")
    with pytest.raises(ValueError, match=r"mean_logstd: contains NaN or inf \(row 1\)"):
        rf.ops.sample_diag_gaussian(ml, backend="cpp")
    a, lp = rf.ops.sample_diag_gaussian(np.zeros((2, 4)), backend="cpp")
    assert isinstance(a, np.ndarray) and a.dtype == np.float64


# ------------------------------------------------------------------------------- LSTM / GRU

def _tol(got, want, want32):
    err = (got.double() - want).abs().max().item()
    terr = (want32.double() - want).abs().max().item()
    assert err <= 8 * terr + 2e-6, f"error {err:.3g} vs torch float32 {terr:.3g}"


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("B,I,H", [(1, 3, 17), (17, 5, 1), (63, 7, 33), (129, 1, 65)])
def test_lstm_step_many_steps(isa, B, I, H):
    torch.manual_seed(B + H)
    cell = torch.nn.LSTMCell(I, H)
    cell64 = torch.nn.LSTMCell(I, H).double()
    cell64.load_state_dict({k: v.double() for k, v in cell.state_dict().items()})
    h = c = torch.zeros(B, H)
    h64 = c64 = torch.zeros(B, H, dtype=torch.float64)
    b = cell.bias_ih + cell.bias_hh
    for t in range(12):
        x = torch.randn(B, I) * 2
        h32, c32 = cell(x, (h64.float(), c64.float()))
        h64, c64 = cell64(x.double(), (h64, c64))
        h, c = rf.ops.lstm_step(x, h, c, cell.weight_ih, cell.weight_hh, b, backend="cpp")
        _tol(h, h64, h32)
        _tol(c, c64, c32)


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("B,I,H", [(1, 3, 17), (17, 5, 1), (63, 7, 33), (129, 1, 65)])
def test_gru_step_many_steps(isa, B, I, H):
    torch.manual_seed(B * H)
    cell = torch.nn.GRUCell(I, H)
    cell64 = torch.nn.GRUCell(I, H).double()
    cell64.load_state_dict({k: v.double() for k, v in cell.state_dict().items()})
    h = torch.zeros(B, H)
    h64 = torch.zeros(B, H, dtype=torch.float64)
    for t in range(12):
        x = torch.randn(B, I) * 2
        h32 = cell(x, h64.float())
        h64 = cell64(x.double(), h64)
        h = rf.ops.gru_step(x, h, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh, backend="cpp")
        _tol(h, h64, h32)


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_rnn_step_rows_equal_single_rows_bitwise(isa, kind):
    """Row tiling never changes a row's result: a batch step equals each row stepped alone, bit
    for bit, for every tail of the register tile (B mod 6 / 3) and an odd number of 32-column
    panels (H=70: LSTM 9 panels, GRU [r|z] 5); B=61 spans two row blocks of 48."""
    torch.manual_seed(7)
    I, H = 37, 70
    cell = torch.nn.LSTMCell(I, H) if kind == "lstm" else torch.nn.GRUCell(I, H)

    def step(x, h, c):
        if kind == "lstm":
            return rf.ops.lstm_step(x, h, c, cell.weight_ih, cell.weight_hh, cell.bias_ih + cell.bias_hh,
                                    backend="cpp")
        return (rf.ops.gru_step(x, h, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh, backend="cpp"),)

    for B in list(range(2, 14)) + [16, 61]:
        x, h, c = torch.randn(B, I), torch.randn(B, H), torch.randn(B, H)
        whole = step(x, h, c)
        for r in range(B):
            one = step(x[r:r + 1], h[r:r + 1], c[r:r + 1])
            for w, o in zip(whole, one):
                assert torch.equal(w[r:r + 1], o), f"B={B} row {r}: batch step differs from the row alone"


def test_rnn_steps_no_bias_numpy_float64_and_bad_shapes():
    torch.manual_seed(0)
    x, h, c = torch.randn(4, 3), torch.randn(4, 9), torch.randn(4, 9)
    wi, wh = torch.randn(36, 3), torch.randn(36, 9)
    rh, rc = ref.lstm_step(x, h, c, wi, wh, None)
    gh, gc = rf.ops.lstm_step(x.numpy(), h.numpy(), c.numpy(), wi.numpy(), wh.numpy(), None, backend="cpp")
    assert isinstance(gh, np.ndarray)
    np.testing.assert_allclose(gh, rh.numpy(), atol=2e-6)
    np.testing.assert_allclose(gc, rc.numpy(), atol=2e-6)
    g = rf.ops.gru_step(x.double(), h.double(), wi[:27].double(), wh[:27].double(), None, None, backend="cpp")
    assert g.dtype == torch.float64
    torch.testing.assert_close(g, ref.gru_step(x.double(), h.double(), wi[:27].double(), wh[:27].double(), None, None),
                               atol=2e-6, rtol=0)
    with pytest.raises(ValueError, match=r"w_ih: expected shape \[4H, I\] = \[36, 3\], got \(36, 4\)"):
        rf.ops.lstm_step(x, h, c, torch.randn(36, 4), wh, None, backend="cpp")
    with pytest.raises(ValueError, match=r"c: expected shape \[4, 9\], got \(4, 8\)"):
        rf.ops.lstm_step(x, h, torch.randn(4, 8), wi, wh, None, backend="cpp")
    with pytest.raises(ValueError, match=r"b_hh: expected shape \[27\], got \(26,\)"):
        rf.ops.gru_step(x, h, wi[:27], wh[:27], None, torch.randn(26), backend="cpp")
    with pytest.raises(ValueError, match=r"h: expected shape \[4, H\], got \(5, 9\)"):
        rf.ops.gru_step(x, torch.randn(5, 9), wi[:27], wh[:27], None, None, backend="cpp")


def test_backend_info_reports_cpp():
    info = rf.backend_info()["cpp"]
    assert info["available"] and info["isa"] in ("sse2", "avx2", "avx512")
    assert set(info["ops"]) == {"fused_mlp", "sample_categorical", "sample_diag_gaussian", "lstm_step", "gru_step",
                                "policy_step", "conv2d_nhwc", "qnet_step"}


@pytest.mark.parametrize("act", ACTS)
def test_fused_mlp_propagates_nan(act):
    ws, bs = _mlp([4, 37, 3], seed=5)
    for B in (1, 9):
        x = torch.randn(B, 4)
        x[B // 2, 1] = float("nan")
        y = rf.ops.fused_mlp(x, ws, bs, act, act, backend="cpp")
        r = ref.fused_mlp(x, ws, bs, act, act)
        assert torch.equal(torch.isnan(y), torch.isnan(r))


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("K", [64, 67, 130])
def test_fused_mlp_narrow_output_layers(isa, K):
    """Output layers of <= 8 units take the dot-product path: every N, K with and without tails."""
    x = torch.randn(131, 5)
    for N in (1, 2, 3, 7, 8, 9):
        ws, bs = _mlp([5, K, N], seed=N)
        for B in (5, 131):
            _check_close(rf.ops.fused_mlp(x[:B], ws, bs, "tanh", "silu", backend="cpp"), x[:B], ws, bs, "tanh", "silu")


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("B", [7, 13, 131])
def test_packed_mlp_wide_k_runs_k_blocked_with_the_one_pass_bits(isa, B):
    """A layer whose packed weights exceed the cache budget (here 2100 x 97: 4 panels of 32,
    268800 floats) runs K in chunks continuing each output's sum in order: the same bits as the
    one-pass product of a block too small to be chunked (row by row), and the reference's values."""
    ws, bs = _mlp([2100, 97, 40], seed=B)
    x = torch.randn(B, 2100, generator=torch.Generator().manual_seed(B))
    mlp = cpp_ops.PackedMLP(ws, bs, "tanh", "silu")
    y = mlp(x)
    _check_close(y, x, ws, bs, "tanh", "silu")
    for r in (0, B // 2, B - 1):  # one row: the unchunked path
        assert torch.equal(mlp(x[r:r + 1])[0], y[r]), f"row {r}"


# ------------------------------------------------------------------ hardening (bugs-cpp.md)
# The raw bindings take data pointers: a check they miss is a segfault, which would kill pytest.
# So the bad calls run in ONE child interpreter, case after case, each printing its outcome;
# a case that kills the child shows up as "died" (with the signal) instead of a clean exception.

_RAW_PRELUDE = r'''
import json, sys
import numpy as np
from rlmodule_fast import _C
x = np.zeros((4, 8), np.float32); y = np.zeros((64, 64), np.float32)
w = np.ones((8, 8), np.float32); b = np.zeros(8, np.float32)
px, py, pw, pb = (a.ctypes.data for a in (x, y, w, b))
L = (pw, 8, 8, 8, pb, 1)
def spec(**kw):
    s = dict(obs_dim=8, actor_mlp=[L], actor_acts=[1], actor_rnn=None, critic_on=False, critic_mlp=[],
             critic_acts=[], critic_rnn=None, pi=[L], pi_acts=[0], vf=None, vf_acts=[], dist=0,
             action_sizes=[8], log_std_clip=-1.0, free_log_std=[])
    s.update(kw)
    return s
CASES = json.loads(sys.argv[1])
for cid, code, _ in CASES:
    print("START", cid, flush=True)
    try:
        exec(code)
        print("RESULT", cid, "ok", "", flush=True)
    except Exception as e:
        print("RESULT", cid, type(e).__name__, str(e).replace("\n", " "), flush=True)
'''

# (id, code, expected: "ok" or (exception type, regex))
_RAW_CASES = [
    # fused_mlp, GEMV branch (B <= 12) and packed branch (B > 12): the same checks
    ("mlp-gemv-negative-N", "_C.fused_mlp(px, 2, 8, 8, [(pw, -5, 8, 8, pb, 1)], [0], py, 8)", ("ValueError", r"fused_mlp: layers\[0\]\.N")),
    ("mlp-packed-negative-N", "_C.fused_mlp(px, 20, 8, 8, [(pw, -5, 8, 8, pb, 1)], [0], py, 64)", ("ValueError", r"layers\[0\]\.N")),
    ("mlp-gemv-null-weight", "_C.fused_mlp(px, 2, 8, 8, [(0, 8, 8, 8, pb, 1)], [0], py, 8)", ("ValueError", r"layers\[0\]\.weight: null")),
    ("mlp-packed-null-weight", "_C.fused_mlp(px, 20, 8, 8, [(0, 8, 8, 8, pb, 1)], [0], py, 64)", ("ValueError", r"layers\[0\]\.weight: null")),
    ("mlp-gemv-null-x", "_C.fused_mlp(0, 2, 8, 8, [L], [0], py, 8)", ("ValueError", r"fused_mlp: x: null")),
    ("mlp-gemv-null-y", "_C.fused_mlp(px, 2, 8, 8, [L], [0], 0, 8)", ("ValueError", r"fused_mlp: y: null")),
    ("mlp-packed-null-x", "_C.fused_mlp(0, 20, 8, 8, [L], [0], py, 64)", ("ValueError", r"x: null")),
    ("mlp-gemv-act-99", "_C.fused_mlp(px, 2, 8, 8, [L], [99], py, 8)", ("ValueError", r"acts\[0\]: unknown activation code 99")),
    ("mlp-packed-act-99", "_C.fused_mlp(px, 20, 8, 8, [L], [99], py, 64)", ("ValueError", r"acts\[0\]: unknown activation code 99")),
    ("mlp-gemv-act-negative", "_C.fused_mlp(px, 2, 8, 8, [L], [-1], py, 8)", ("ValueError", r"acts\[0\]")),
    ("mlp-gemv-ldx-0", "_C.fused_mlp(px, 2, 8, 0, [L], [0], py, 8)", ("ValueError", r"ldx: expected >= 8")),
    ("mlp-gemv-ldy-small", "_C.fused_mlp(px, 2, 8, 8, [L], [0], py, 3)", ("ValueError", r"ldy: expected >= 8")),
    ("mlp-packed-ldy-negative", "_C.fused_mlp(px, 20, 8, 8, [L], [0], py, -64)", ("ValueError", r"ldy: expected >= 8")),
    ("mlp-gemv-ldw-small", "_C.fused_mlp(px, 2, 8, 8, [(pw, 8, 8, 2, pb, 1)], [0], py, 8)", ("ValueError", r"layers\[0\]\.ldw")),
    ("mlp-gemv-chain", "_C.fused_mlp(px, 2, 8, 8, [L, (pw, 8, 4, 8, pb, 1)], [0, 0], py, 8)", ("ValueError", r"layers\[1\]\.K: expected 8")),
    ("mlp-gemv-input-size", "_C.fused_mlp(px, 2, 7, 8, [L], [0], py, 8)", ("ValueError", r"layers\[0\]\.K: expected 7")),
    ("mlp-gemv-negative-B", "_C.fused_mlp(px, -1, 8, 8, [L], [0], py, 8)", ("ValueError", r"fused_mlp: B: expected >= 0")),
    ("mlp-bias-stride-negative", "_C.fused_mlp(px, 2, 8, 8, [(pw, 8, 8, 8, pb, -1)], [0], py, 8)", ("ValueError", r"bias_stride")),
    ("mlp-huge-N", "_C.fused_mlp(px, 2, 8, 8, [(pw, 2**31 - 1, 8, 8, pb, 1)], [0], py, 2**40)", ("ValueError", r"layers\[0\]\.N: expected a size")),
    ("mlp-acts-length", "_C.fused_mlp(px, 2, 8, 8, [L], [0, 0], py, 8)", ("ValueError", r"1 layers but 2 activations")),
    ("mlp-B0-null-ok", "_C.fused_mlp(0, 0, 8, 8, [L], [0], 0, 8)", "ok"),
    # PackedMLP
    ("packedmlp-null-x", "_C.PackedMLP([L], [0]).forward(0, 2, 8, py, 8)", ("ValueError", r"PackedMLP\.forward: x: null")),
    ("packedmlp-null-y", "_C.PackedMLP([L], [0]).forward(px, 2, 8, 0, 8)", ("ValueError", r"PackedMLP\.forward: y: null")),
    ("packedmlp-ldx", "_C.PackedMLP([L], [0]).forward(px, 2, 3, py, 8)", ("ValueError", r"ldx: expected >= 8")),
    ("packedmlp-act", "_C.PackedMLP([L], [7])", ("ValueError", r"PackedMLP: acts\[0\]: unknown activation code 7")),
    ("packedmlp-ldw", "_C.PackedMLP([(pw, 8, 8, 1, pb, 1)], [0])", ("ValueError", r"ldw: expected >= K = 8")),
    ("packedmlp-empty", "_C.PackedMLP([], [])", ("ValueError", r"at least one layer")),
    # rnn_step / PackedRNN
    ("rnn-null-weights", "_C.rnn_step((0, 8, 2, 0, 8, 0, 2, 0, 0), px, 1, 8, px, 2, px, 2, py, py)", ("ValueError", r"rnn_step: rnn\.w_ih: null")),
    ("rnn-null-whh", "_C.rnn_step((1, 8, 2, pw, 8, 0, 2, 0, 0), px, 1, 8, px, 2, 0, 0, py, 0)", ("ValueError", r"rnn\.w_hh: null")),
    ("lstm-null-c", "_C.rnn_step((0, 8, 2, pw, 8, pw, 2, 0, 0), px, 1, 8, px, 2, 0, 0, py, 0)", ("ValueError", r"rnn_step: c: null")),
    ("lstm-null-c_out", "_C.rnn_step((0, 8, 2, pw, 8, pw, 2, 0, 0), px, 1, 8, px, 2, px, 2, py, 0)", ("ValueError", r"c_out: null")),
    ("rnn-null-x", "_C.rnn_step((1, 8, 2, pw, 8, pw, 2, 0, 0), 0, 1, 8, px, 2, 0, 0, py, 0)", ("ValueError", r"rnn_step: x: null")),
    ("rnn-null-h_out", "_C.rnn_step((1, 8, 2, pw, 8, pw, 2, 0, 0), px, 1, 8, px, 2, 0, 0, 0, 0)", ("ValueError", r"h_out: null")),
    ("rnn-negative-B", "_C.rnn_step((1, 8, 2, pw, 8, pw, 2, 0, 0), px, -1, 8, px, 2, 0, 0, py, 0)", ("ValueError", r"B: expected >= 0")),
    ("rnn-ldwih", "_C.rnn_step((1, 8, 2, pw, 3, pw, 2, 0, 0), px, 1, 8, px, 2, 0, 0, py, 0)", ("ValueError", r"ldw_ih: expected >= I = 8")),
    ("rnn-ldwhh", "_C.rnn_step((1, 8, 2, pw, 8, pw, 1, 0, 0), px, 1, 8, px, 2, 0, 0, py, 0)", ("ValueError", r"ldw_hh: expected >= H = 2")),
    ("rnn-ldx", "_C.rnn_step((1, 8, 2, pw, 8, pw, 2, 0, 0), px, 1, 4, px, 2, 0, 0, py, 0)", ("ValueError", r"ldx: expected >= 8")),
    ("rnn-kind", "_C.rnn_step((5, 8, 2, pw, 8, pw, 2, 0, 0), px, 1, 8, px, 2, 0, 0, py, 0)", ("ValueError", r"rnn\.kind")),
    ("rnn-huge-H", "_C.rnn_step((0, 8, 2**30, pw, 8, pw, 2**30, 0, 0), px, 1, 8, px, 2**30, px, 2**30, py, py)", ("ValueError", r"rnn\.H: expected a size")),
    ("gru-c-ignored-ok", "_C.rnn_step((1, 8, 2, pw, 8, pw, 2, 0, 0), px, 1, 8, px, 2, 0, 0, py, 0)", "ok"),
    ("packedrnn-lstm-null-c", "_C.PackedRNN((0, 8, 2, pw, 8, pw, 2, 0, 0)).step(px, 1, 8, px, 2, 0, 0, py, 0)", ("ValueError", r"PackedRNN\.step: c: null")),
    ("packedrnn-null-weight", "_C.PackedRNN((0, 8, 2, 0, 8, pw, 2, 0, 0))", ("ValueError", r"PackedRNN: rnn\.w_ih: null")),
    # samplers
    ("categorical-null-logits", "_C.sample_categorical(0, 2, 4, 4, True, py, py)", ("ValueError", r"sample_categorical: logits: null")),
    ("categorical-null-actions", "_C.sample_categorical(px, 2, 4, 4, True, 0, py)", ("ValueError", r"actions: null")),
    ("categorical-null-logp", "_C.sample_categorical(px, 2, 4, 4, False, py, 0)", ("ValueError", r"logp: null")),
    ("categorical-ld", "_C.sample_categorical(px, 2, 4, 3, True, py, py)", ("ValueError", r"ldlogits: expected >= 4")),
    ("gaussian-2A-overflow", "_C.sample_diag_gaussian(px, 1, 2**30, 2**31, True, py, py)", ("ValueError", r"sample_diag_gaussian: A: expected a size")),
    ("gaussian-ld", "_C.sample_diag_gaussian(px, 2, 4, 7, True, py, py)", ("ValueError", r"ldmean_logstd: expected >= 8")),
    ("gaussian-null-logp", "_C.sample_diag_gaussian(px, 2, 4, 8, True, py, 0)", ("ValueError", r"logp: null")),
    ("gaussian-negative-B", "_C.sample_diag_gaussian(px, -2, 4, 8, True, py, py)", ("ValueError", r"B: expected >= 0")),
    # rng, threads
    ("threads-huge", "_C.set_num_threads(10**6)", ("ValueError", r"num_threads: expected 1 \.\.\. \d+")),
    ("threads-zero", "_C.set_num_threads(0)", ("ValueError", r"num_threads")),
    # Policy
    ("policy-null-obs", "_C.Policy(spec()).step(0, 2, 8, (None,) * 4, True, False, None)", ("ValueError", r"Policy\.step: obs: null")),
    ("policy-ldobs", "_C.Policy(spec()).step(px, 2, 4, (None,) * 4, True, False, None)", ("ValueError", r"ldobs: expected >= 8")),
    ("policy-negative-B", "_C.Policy(spec()).step(px, -3, 8, (None,) * 4, True, False, None)", ("ValueError", r"B: expected >= 0")),
    ("policy-null-out", "_C.Policy(spec()).step(px, 2, 8, (None,) * 4, True, False, (py, 0, py, 0, 0, 0, 0, 0))", ("ValueError", r"out: null")),
    ("policy-act", "_C.Policy(spec(actor_acts=[42]))", ("ValueError", r"Policy: acts\[0\]: unknown activation code 42")),
    ("policy-null-weight", "_C.Policy(spec(pi=[(0, 8, 8, 8, 0, 1)]))", ("ValueError", r"Policy: pi\[0\]\.weight: null")),
    ("policy-obs-dim", "_C.Policy(spec(obs_dim=-8))", ("ValueError", r"Policy: obs_dim")),
    ("policy-rnn-null", "_C.Policy(spec(actor_rnn=(1, 8, 2, pw, 8, 0, 2, 0, 0), pi=[(pw, 8, 2, 8, 0, 1)]))", ("ValueError", r"actor_rnn\.w_hh: null")),
    ("policy-action-size", "_C.Policy(spec(action_sizes=[-8]))", ("ValueError", r"action_sizes")),
    ("policy-B0-null-ok", "_C.Policy(spec()).step(0, 0, 8, (None,) * 4, True, False, None)", "ok"),
]


@pytest.fixture(scope="module")
def raw_outcomes():
    """{case id: (exception type | "ok", message)} from one child interpreter; a case that kills
    the child maps to ("died", signal/status), and the cases after it are retried in a fresh one."""
    import json
    import subprocess
    import sys

    todo = [list(c[:2]) + [None] for c in _RAW_CASES]
    got = {}
    while todo:
        r = subprocess.run([sys.executable, "-c", _RAW_PRELUDE, json.dumps(todo)], capture_output=True, text=True,
                           timeout=120)
        started = None
        for line in r.stdout.splitlines():
            parts = line.split(" ", 3)
            if parts[0] == "START":
                started = parts[1]
            elif parts[0] == "RESULT":
                got[parts[1]] = (parts[2], parts[3] if len(parts) > 3 else "")
                started = None
        if started is None:
            break
        got[started] = ("died", f"returncode {r.returncode}: {r.stderr.strip()[-300:]}")
        ids = [c[0] for c in todo]
        todo = todo[ids.index(started) + 1:]
    return got


@pytest.mark.parametrize("cid, code, expected", _RAW_CASES, ids=[c[0] for c in _RAW_CASES])
def test_raw_bindings_reject_bad_arguments(raw_outcomes, cid, code, expected):
    """Every binding checks what it can see (null pointers, sizes, leading dims, codes) and raises
    a ValueError naming the function and argument -- never a crash or a silent success."""
    import re

    kind, msg = raw_outcomes.get(cid, ("missing", "no outcome recorded"))
    assert kind != "died", f"{code} crashed the interpreter: {msg}"
    if expected == "ok":
        assert kind == "ok", f"{code} raised {kind}: {msg}"
    else:
        assert kind == expected[0] and re.search(expected[1], msg), f"{code}: got {kind}: {msg!r}, want {expected}"


def test_sync_threads_clamps_torch_count(monkeypatch):
    """torch's thread count is a hint: beyond _C.max_threads() it is clamped, not an error."""
    assert _C.max_threads() >= 64
    with pytest.raises(ValueError, match=r"num_threads: expected 1 \.\.\."):
        _C.set_num_threads(_C.max_threads() + 1)
    monkeypatch.setattr(cpp_ops, "_MAX_THREADS", 3)
    monkeypatch.setattr(cpp_ops.torch, "get_num_threads", lambda: 10**6)
    monkeypatch.setattr(cpp_ops, "_threads_seen", [0])
    try:
        if not cpp_ops._ENV_THREADS:
            assert cpp_ops.sync_threads() == 3 and _C.get_num_threads() == 3
    finally:
        monkeypatch.undo()
        cpp_ops._threads_seen[0] = 0
        cpp_ops.sync_threads()


# silu / sigmoid where exp(-z) overflows: torch gives -0.0 (silu) and 0 (sigmoid)
_EXTREMES = [-3.67e36, -1e30, -3e38, -100.0, -88.5, -87.5, -20.0, 0.5, 3e38, float("inf"), float("-inf"), float("nan")]


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("B", [12, 30], ids=["gemv", "packed"])
@pytest.mark.parametrize("where", ["output", "hidden"])
def test_silu_extreme_inputs_match_torch(isa, B, where):
    x = torch.tensor(_EXTREMES).repeat(3)[:B].reshape(B, 1)  # one value per row: no 0 * inf mixing
    ws, bs = [torch.ones(1, 1)], [torch.zeros(1)]
    if where == "hidden":  # silu on a hidden layer, then the identity
        ws, bs = [torch.ones(1, 1), torch.ones(1, 1)], [torch.zeros(1), torch.zeros(1)]
        got = rf.ops.fused_mlp(x, ws, bs, "silu", None, backend="cpp")
        want = ref.fused_mlp(x, ws, bs, "silu", None)
    else:
        got = rf.ops.fused_mlp(x, ws, bs, None, "silu", backend="cpp")
        want = ref.fused_mlp(x, ws, bs, None, "silu")
    assert torch.equal(torch.isnan(got), torch.isnan(want)), (got.flatten(), want.flatten())
    inf = torch.isinf(want)
    assert torch.equal(got[inf], want[inf])
    fin = torch.isfinite(want)
    assert torch.all((got[fin] - want[fin]).abs() <= 1e-30 + 1e-6 * want[fin].abs())
    big = (x.flatten() < -1e10) & torch.isfinite(x.flatten())
    assert torch.all(got.flatten()[big] == 0)  # -0.0 like torch, not O(1) garbage


@pytest.mark.parametrize("isa", ISAS, indirect=True)
def test_lstm_sigmoid_gates_extreme_inputs(isa):
    """LSTM gates through the vector sigmoid with huge finite pre-activations (+-1e36)."""
    torch.manual_seed(0)
    for H in (4, 16, 17):
        x = torch.tensor([[1e36], [-1e36], [3.0]])
        h, c = torch.zeros(3, H), torch.randn(3, H)
        wi, wh = torch.randn(4 * H, 1), torch.randn(4 * H, H)
        gh, gc = rf.ops.lstm_step(x, h, c, wi, wh, None, backend="cpp")
        rh, rc = ref.lstm_step(x, h, c, wi, wh, None)
        torch.testing.assert_close(gh, rh, atol=1e-5, rtol=0)
        torch.testing.assert_close(gc, rc, atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("H", [4, 17])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_gru_step_infinite_input_matches_reference(isa, H, bias):
    """+-inf inputs: r, z saturate to 0/1, n_x = +-inf, n = +-1, h' finite (torch's answer, no NaN)."""
    torch.manual_seed(0)
    for v in (float("-inf"), float("inf")):
        x = torch.tensor([[v], [v], [0.5]])
        h = torch.randn(3, H) * 0.5
        wi, wh = torch.randn(3 * H, 1), torch.randn(3 * H, H)
        bi, bh = (torch.randn(3 * H), torch.randn(3 * H)) if bias else (None, None)
        got = rf.ops.gru_step(x, h, wi, wh, bi, bh, backend="cpp")
        want = ref.gru_step(x, h, wi, wh, bi, bh)
        assert not torch.isnan(want).any()
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_policy_step_gru_refuses_infinite_obs():
    """An infinite observation could saturate the GRU to a finite action: the policy step refuses
    it, naming the row (the GRU body's handling of infinite inputs is pinned by
    test_gru_step_infinite_input_matches_reference)."""
    from rlmodule_fast.fastpath import EncoderLayers, PolicyLayers, PolicyPlan

    torch.manual_seed(0)
    gru = torch.nn.GRU(2, 5, batch_first=True)
    L = PolicyLayers(actor=EncoderLayers([], "tanh", gru), critic=None, pi=[torch.nn.Linear(5, 3)], vf=None,
                     head_activation="relu", dist="categorical", action_sizes=[3], log_std_clip=None)
    plan = PolicyPlan(L, backend="cpp")
    obs = torch.tensor([[0.5, 0.3], [float("inf"), -1.0], [0.1, 0.2]])
    with pytest.raises(ValueError, match=r"obs: contains NaN or inf \(row 1\)"):
        plan.step(obs, {"h": torch.randn(3, 5) * 0.3}, deterministic=True)


# the adapter is the only guard of buffer extents: odd arrays are converted or refused
def test_adapter_odd_numpy_arrays_are_converted():
    ws, bs = _mlp([6, 9, 4], seed=3)
    x = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    want = rf.ops.fused_mlp(x, ws, bs, "tanh", backend="cpp")
    variants = {
        "big-endian": x.astype(">f4"),
        "negative-strides": x[::-1].copy()[::-1],
        "read-only": np.frombuffer(x.tobytes(), np.float32).reshape(5, 6),
        "fortran": np.asfortranarray(x),
        "unaligned": np.frombuffer(b"\0" + x.tobytes(), np.float32, offset=1, count=30).reshape(5, 6),
    }
    for name, v in variants.items():
        np.testing.assert_array_equal(rf.ops.fused_mlp(v, ws, bs, "tanh", backend="cpp"), want, err_msg=name)
    a, lp = rf.ops.sample_categorical(x.astype(">f8")[::-1], deterministic=True, backend="cpp")
    np.testing.assert_array_equal(a, np.argmax(x[::-1], axis=1))


@pytest.mark.parametrize("case", ["int-numpy", "object-numpy", "float16-numpy", "sparse", "empty-features", "list"])
def test_adapter_refuses_unusable_arrays(case):
    ws, bs = _mlp([6, 4], seed=1)
    x = {
        "int-numpy": np.ones((3, 6), np.int32),
        "object-numpy": np.array([[object()] * 6] * 3, dtype=object),
        "float16-numpy": np.ones((3, 6), np.float16),
        "sparse": torch.eye(6)[:3].to_sparse(),
        "empty-features": torch.zeros(3, 0),
        "list": [[0.0] * 6] * 3,
    }[case]
    with pytest.raises(ValueError, match=r"^x: "):
        rf.ops.fused_mlp(x, ws if case != "empty-features" else [torch.ones(4, 0)], bs, "tanh", backend="cpp")


def test_adapter_weight_row_strides():
    """Single-row weights with any row stride and overlapping (expanded) rows are handled, never
    handed over with ldw < K."""
    x = torch.randn(3, 5)
    col = torch.randn(5, 1)
    w_row = col.t()  # [1, 5], strides (1, 1)
    w_exp = torch.randn(1, 5).expand(4, 5)  # [4, 5], row stride 0
    b_exp = torch.randn(1).expand(4)  # stride 0 bias: broadcast, in bounds
    for ws, bs in (([w_row], [None]), ([w_exp, w_row[:, :4]], [b_exp, None])):
        for B in (3, 20):
            xb = torch.randn(B, 5)
            got = rf.ops.fused_mlp(xb, ws, bs, "tanh", backend="cpp")
            _check_close(got, xb, ws, bs, "tanh", None)
    assert x.shape == (3, 5)


def test_diag_gaussian_vectorised_normals_agree_across_isas_and_are_normal():
    """The Box-Muller middle stage runs in SIMD (vmath.h box_muller): every ISA draws the same
    numbers for a seed (up to float rounding), and the draws are N(0, 1) (KS test, pairs too)."""
    from scipy import stats

    x = torch.zeros(6000, 2 * 5)
    draws = []
    try:
        for isa_name in ISAS:
            _C.set_isa(isa_name)
            rf.manual_seed(11)
            draws.append(rf.ops.sample_diag_gaussian(x, backend="cpp")[0])
    finally:
        _C.set_isa(_C.best_isa())
    for d in draws[1:]:
        assert (d - draws[0]).abs().max().item() <= 1e-5
    a = draws[-1].double().numpy()
    assert stats.kstest(a.reshape(-1), "norm").pvalue > 1e-4
    r2 = a[:, 0] ** 2 + a[:, 1] ** 2  # a Box-Muller pair: chi2(2) radius, uniform angle
    assert stats.kstest(r2, "chi2", args=(2,)).pvalue > 1e-4
    assert stats.kstest(np.arctan2(a[:, 1], a[:, 0]), "uniform", args=(-np.pi, 2 * np.pi)).pvalue > 1e-4


# --------------------------------------------------------------------- one-shot ops' pack cache

@pytest.mark.parametrize("B", [1, 16, 129], ids=lambda b: f"B{b}")
def test_fused_mlp_cache_sees_in_place_updates_and_new_tensors(B):
    torch.manual_seed(0)
    l1, l2 = torch.nn.Linear(5, 33), torch.nn.Linear(33, 3)
    x = torch.randn(B, 5)
    ws, bs = [l1.weight, l2.weight], [l1.bias, l2.bias]

    def check():
        with torch.no_grad():
            got = rf.ops.fused_mlp(x, ws, bs, "tanh", backend="cpp")
            torch.testing.assert_close(got, ref.fused_mlp(x, ws, bs, "tanh"), atol=2e-5, rtol=1e-4)

    check()
    check()  # cached
    with torch.no_grad():
        l1.weight.mul_(-0.5)  # in place: version moves
    check()
    for _ in range(3):  # a fresh bias tensor per call, same values pattern: never a stale hit
        bs = [l1.bias * 0 + torch.randn(33), l2.bias]
        check()


def test_lstm_step_cache_sees_in_place_updates():
    torch.manual_seed(1)
    cell = torch.nn.LSTMCell(6, 5)
    x, h, c = torch.randn(4, 6), torch.randn(4, 5), torch.randn(4, 5)
    for _ in range(2):
        with torch.no_grad():
            b = cell.bias_ih + cell.bias_hh
            got = rf.ops.lstm_step(x, h, c, cell.weight_ih, cell.weight_hh, b, backend="cpp")
            want = cell(x, (h, c))
            torch.testing.assert_close(got[0], want[0], atol=2e-5, rtol=1e-4)
            torch.testing.assert_close(got[1], want[1], atol=2e-5, rtol=1e-4)
            cell.weight_hh.add_(0.3)

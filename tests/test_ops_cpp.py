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


def test_samplers_reproducible_under_torch_manual_seed():
    lg = torch.randn(64, 5)
    ml = torch.randn(64, 6)

    def run():
        out = [rf.ops.sample_categorical(lg, backend="cpp")[0], rf.ops.sample_diag_gaussian(ml, backend="cpp")[0]]
        torch.rand(3)  # interleaved torch random ops re-key deterministically
        out.append(rf.ops.sample_categorical(lg, backend="cpp")[0])
        return out

    torch.manual_seed(7)
    first = run()
    torch.manual_seed(7)
    second = run()
    for x, y in zip(first, second):
        assert torch.equal(x, y)
    assert not torch.equal(first[0], first[2]) or not torch.equal(first[1], run()[1])
    rf.manual_seed(11)
    third = run()
    rf.manual_seed(11)
    fourth = run()
    for x, y in zip(third, fourth):
        assert torch.equal(x, y)
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
    assert set(info["ops"]) == {"fused_mlp", "sample_categorical", "sample_diag_gaussian", "lstm_step", "gru_step"}


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

"""The triton backend's ops against the torch reference, called through ``rf.ops.<op>(...,
backend="triton")`` so the dispatcher is exercised.

Without a GPU the kernels run in Triton's interpreter on CPU tensors: tests/conftest.py sets
TRITON_INTERPRET=1 before anything imports the kernels (only when no CUDA device is present, so
a GPU machine runs the compiled kernels). Tests marked ``cuda`` run the same checks compiled on
CUDA tensors and skip elsewhere. Grids are kept small: the interpreter costs milliseconds per
program instance.
"""
import os

import numpy as np
import pytest
import torch

import rlmodule_fast as rf
from rlmodule_fast.ops import reference as ref
from rlmodule_fast.ops import triton as tri
from rlmodule_fast.fastpath.triton_plan import TritonPolicyPlan

ok, why = tri.status()
pytestmark = [
    pytest.mark.skipif(not ok, reason=f"triton backend unavailable: {why}"),
    # numpy warnings from the interpreter on masked (padding) lanes, which are never stored
    pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]

_CPU_OK = ok and tri.interpreted()
DEVICES = [
    pytest.param("cpu", id="cpu", marks=pytest.mark.skipif(
        not _CPU_OK, reason="CPU tensors need the Triton interpreter (TRITON_INTERPRET=1)")),
    pytest.param("cuda", id="cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="no CUDA device")]),
]
ACTS = ["tanh", "relu", "silu", "elu", "linear"]


def _linears(widths, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    ws, bs = [], []
    for i, o in zip(widths[:-1], widths[1:]):
        bound = 1.0 / i ** 0.5
        ws.append((torch.rand(o, i, generator=g) * 2 - 1) * bound)
        bs.append((torch.rand(o, generator=g) * 2 - 1) * bound if bias else None)
    return ws, bs


def _calibrated_close(out, x64, ws, bs, act, out_act, factor=8.0, floor=2e-6):
    """|triton - float64 reference| <= factor * |torch float32 - float64 reference| + floor."""
    exact = ref.fused_mlp(x64, [w.double() for w in ws], [None if b is None else b.double() for b in bs],
                          act, out_act)
    f32 = ref.fused_mlp(x64.float(), ws, bs, act, out_act).double()
    scale = exact.abs().max().item() + 1.0
    tol = factor * (f32 - exact).abs().max().item() + floor * scale
    err = (out.double().cpu() - exact).abs().max().item()
    assert err <= tol, f"max error {err:.3g} > calibrated tolerance {tol:.3g}"


# ----------------------------------------------------------------------------- status / dispatch

def test_status_is_honest():
    info = rf.backend_info()["triton"]
    assert info["available"] is True and info["reason"] == ""
    assert set(info["ops"]) >= {"fused_mlp", "sample_categorical", "sample_diag_gaussian",
                                "lstm_step", "gru_step", "policy_step", "qnet_step"}
    assert info["interpreter"] == tri.interpreted()
    if info["interpreter"]:
        assert "TRITON_INTERPRET" in info["device"]


def test_dispatch_picks_triton_explicitly():
    assert rf.ops.dispatch.choose("fused_mlp", "triton", torch.zeros(1)) == "triton"


# ----------------------------------------------------------------------------- fused_mlp

MLP_CASES = [  # (B, widths)
    (1, [5, 17, 3]),
    (3, [17, 33, 33, 5]),
    (17, [33, 64, 17]),
    (63, [64, 64, 64, 1]),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("B,widths", MLP_CASES,
                         ids=[f"B{b}-W{'x'.join(map(str, w))}" for b, w in MLP_CASES])
def test_fused_mlp_matches_reference(B, widths, act, device):
    ws, bs = _linears(widths, seed=B)
    x64 = torch.randn(B, widths[0], dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2
    out_act = "tanh" if act == "linear" else None
    with torch.no_grad():
        out = rf.ops.fused_mlp(x64.float().to(device), [w.to(device) for w in ws],
                               [b.to(device) for b in bs], act, out_act, backend="triton")
    assert out.shape == (B, widths[-1]) and out.dtype == torch.float32
    _calibrated_close(out, x64, ws, bs, act, out_act)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("widths", [[9, 200, 150, 6], [7, 300, 4]], ids=["split256", "per-layer300"])
def test_fused_mlp_wide_paths(widths, device):
    """Widths padding to 256 (two register halves) and beyond 256 (one kernel per layer)."""
    ws, bs = _linears(widths)
    x64 = torch.randn(5, widths[0], dtype=torch.float64)
    out = rf.ops.fused_mlp(x64.float().to(device), [w.to(device) for w in ws],
                           [b.to(device) for b in bs], "silu", "elu", backend="triton")
    _calibrated_close(out, x64, ws, bs, "silu", "elu")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("act", ["tanh", "elu"])
@pytest.mark.parametrize("B,widths", MLP_CASES, ids=[f"B{b}-W{'x'.join(map(str, w))}" for b, w in MLP_CASES])
def test_fused_mlp_staged_kernel(B, widths, act, device, monkeypatch):
    """The staged one-launch kernel (tiled layers through scratch), forced on small widths."""
    from rlmodule_fast.kernels import mlp

    monkeypatch.setattr(mlp, "REG_MAX_WIDTH", 16)
    assert mlp.fused_tile_plan(widths)[1] == "staged" or max(widths) <= 16
    ws, bs = _linears(widths, seed=B)
    x64 = torch.randn(B, widths[0], dtype=torch.float64) * 2
    out = rf.ops.fused_mlp(x64.float().to(device), [w.to(device) for w in ws],
                           [b.to(device) for b in bs], act, "silu", backend="triton")
    _calibrated_close(out, x64, ws, bs, act, "silu")


@pytest.mark.parametrize("device", DEVICES)
def test_fused_mlp_no_bias_noncontiguous_float64_numpy(device):
    widths = [17, 33, 5]
    ws, _ = _linears(widths, bias=False)
    bs = [None, None]
    base = torch.randn(17, 40, dtype=torch.float64)
    x64 = base[:, 3:37:2]  # non-contiguous [17, 17]
    ws_nc = [w.t().contiguous().t() for w in ws]  # column-major weights
    out = rf.ops.fused_mlp(x64.to(device), [w.to(device) for w in ws_nc], bs, "relu", backend="triton")
    assert out.dtype == torch.float64
    _calibrated_close(out, x64, ws, bs, "relu", None)
    if device == "cpu":
        out_np = rf.ops.fused_mlp(x64.numpy(), [w.numpy() for w in ws], bs, "relu", backend="triton")
        assert isinstance(out_np, np.ndarray)
        np.testing.assert_allclose(out_np, out.numpy(), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_fused_mlp_half_inputs(dtype, device):
    ws, bs = _linears([17, 33, 5])
    x = torch.randn(3, 17).to(dtype)
    out = rf.ops.fused_mlp(x.to(device), [w.to(device) for w in ws], [b.to(device) for b in bs],
                           "tanh", backend="triton")
    assert out.dtype == dtype
    expect = ref.fused_mlp(x.float(), ws, bs, "tanh")
    torch.testing.assert_close(out.float().cpu(), expect, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("device", DEVICES)
def test_fused_mlp_sees_in_place_weight_updates(device):
    lin1, lin2 = torch.nn.Linear(5, 17).to(device), torch.nn.Linear(17, 3).to(device)
    x = torch.randn(3, 5, device=device)
    with torch.no_grad():
        args = ([lin1.weight, lin2.weight], [lin1.bias, lin2.bias], "tanh")
        first = rf.ops.fused_mlp(x, *args, backend="triton")
        lin1.weight.mul_(-2.0)  # optimizer-style in-place update: the packed copy must refresh
        lin2.bias.add_(1.0)
        second = rf.ops.fused_mlp(x, *args, backend="triton")
        expect = ref.fused_mlp(x, *args)
    torch.testing.assert_close(second, expect, atol=2e-6, rtol=1e-5)
    assert not torch.allclose(first, second)


def test_fused_mlp_bad_arguments():
    ws, bs = _linears([5, 17, 3])
    x = torch.randn(4, 5)
    with pytest.raises(ValueError, match=r"weights\[1\].*\[H_1, 17\].*\(3, 16\)"):
        rf.ops.fused_mlp(x, [ws[0], torch.zeros(3, 16)], bs, backend="triton")
    with pytest.raises(ValueError, match=r"biases\[0\]"):
        rf.ops.fused_mlp(x, ws, [torch.zeros(2), bs[1]], backend="triton")
    with pytest.raises(ValueError, match=r"x: expected shape \[B, I\]"):
        rf.ops.fused_mlp(torch.randn(5), ws, bs, backend="triton")
    with pytest.raises(ValueError, match="activation"):
        rf.ops.fused_mlp(x, ws, bs, "gelu", backend="triton")


# ----------------------------------------------------------------------------- categorical

CAT_CASES = [(1, 1), (3, 5), (17, 17), (63, 33), (64, 64)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B,A", CAT_CASES, ids=[f"B{b}-A{a}" for b, a in CAT_CASES])
def test_categorical_logp_exact_and_deterministic(B, A, device):
    logits = (torch.randn(B, A) * 3).to(device)
    actions, logp = rf.ops.sample_categorical(logits, backend="triton")
    assert actions.dtype == torch.int64 and actions.shape == (B,) and logp.shape == (B,)
    assert bool(((actions >= 0) & (actions < A)).all())
    expect = torch.log_softmax(logits, -1).gather(-1, actions[:, None])[:, 0]
    torch.testing.assert_close(logp, expect, atol=1e-6, rtol=1e-6)
    det_a, det_logp = rf.ops.sample_categorical(logits, deterministic=True, backend="triton")
    ref_a, ref_logp = ref.sample_categorical(logits, deterministic=True)
    assert torch.equal(det_a, ref_a)
    torch.testing.assert_close(det_logp, ref_logp, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_categorical_chi_square(device):
    from scipy import stats

    probs = torch.tensor([0.05, 0.1, 0.15, 0.3, 0.4])
    n = 4096
    logits = probs.log().expand(n, 5).contiguous().to(device) + 7.0  # shift-invariant
    torch.manual_seed(1234)
    actions, logp = rf.ops.sample_categorical(logits, backend="triton")
    counts = torch.bincount(actions.cpu(), minlength=5).double().numpy()
    expected = probs.double().numpy() / probs.double().sum().item() * n
    p = stats.chisquare(counts, expected).pvalue
    assert p > 1e-3, f"chi-square p={p:.2g}, counts {counts}"
    torch.testing.assert_close(logp.cpu(), probs.log()[actions.cpu()], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_categorical_entropy_kernel(device):
    from rlmodule_fast.kernels import sampling

    logits = (torch.randn(17, 33) * 2).to(device)
    logits[3, 5:] = -1e4  # near-degenerate row
    _, _, flag, ent = sampling.sample_categorical(logits, entropy=True)
    expect = torch.distributions.Categorical(logits=logits).entropy()
    torch.testing.assert_close(ent, expect, atol=2e-5, rtol=1e-5)
    assert int(flag.item()) == 0


@pytest.mark.parametrize("device", DEVICES)
def test_samplers_reproducible_under_torch_and_rf_seeds(device):
    logits = torch.zeros(64, 7, device=device)
    ms = torch.zeros(64, 6, device=device)
    torch.manual_seed(7)
    a1, _ = rf.ops.sample_categorical(logits, backend="triton")
    g1, _ = rf.ops.sample_diag_gaussian(ms, backend="triton")
    torch.manual_seed(7)
    a2, _ = rf.ops.sample_categorical(logits, backend="triton")
    g2, _ = rf.ops.sample_diag_gaussian(ms, backend="triton")
    assert torch.equal(a1, a2) and torch.equal(g1, g2)
    rf.manual_seed(8)
    a3, _ = rf.ops.sample_categorical(logits, backend="triton")
    rf.manual_seed(8)
    a4, _ = rf.ops.sample_categorical(logits, backend="triton")
    assert torch.equal(a3, a4) and not torch.equal(a1, a3)
    a5, _ = rf.ops.sample_categorical(logits, backend="triton")  # the stream moves on
    assert not torch.equal(a4, a5)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_samplers_reject_non_finite(bad, device):
    logits = torch.randn(17, 5, device=device)
    logits[16, 4] = bad
    with pytest.raises(ValueError, match="logits"):
        rf.ops.sample_categorical(logits, backend="triton")
    ms = torch.randn(17, 6, device=device)
    ms[2, 4] = bad
    with pytest.raises(ValueError, match="mean_logstd"):
        rf.ops.sample_diag_gaussian(ms, backend="triton")


@pytest.mark.parametrize("device", DEVICES)
def test_categorical_logp_gradient(device):
    logits = torch.randn(17, 5, device=device, requires_grad=True)
    actions, logp = rf.ops.sample_categorical(logits, backend="triton")
    logp.sum().backward()
    expect = torch.autograd.grad(
        torch.log_softmax(logits, -1).gather(-1, actions[:, None]).sum(), logits)[0]
    torch.testing.assert_close(logits.grad, expect)


def test_categorical_numpy_and_leading_dims():
    if not _CPU_OK:
        pytest.skip("numpy inputs are CPU: interpreter only")
    logits = np.random.default_rng(0).normal(size=(3, 4, 5)).astype(np.float32)
    actions, logp = rf.ops.sample_categorical(logits, deterministic=True, backend="triton")
    assert isinstance(actions, np.ndarray) and actions.shape == (3, 4)
    np.testing.assert_array_equal(actions, logits.argmax(-1))


# ----------------------------------------------------------------------------- diag gaussian

GAUSS_CASES = [(1, 1), (3, 3), (17, 5), (63, 17), (64, 33)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B,A", GAUSS_CASES, ids=[f"B{b}-A{a}" for b, a in GAUSS_CASES])
def test_gaussian_logp_exact_and_deterministic(B, A, device):
    ms = torch.randn(B, 2 * A).to(device)
    actions, logp = rf.ops.sample_diag_gaussian(ms, backend="triton")
    assert actions.shape == (B, A) and logp.shape == (B,)
    mean, log_std = ms.chunk(2, -1)
    expect = torch.distributions.Normal(mean, log_std.exp()).log_prob(actions).sum(-1)
    torch.testing.assert_close(logp, expect, atol=2e-5, rtol=1e-5)
    det_a, det_logp = rf.ops.sample_diag_gaussian(ms, deterministic=True, backend="triton")
    ref_a, ref_logp = ref.sample_diag_gaussian(ms, deterministic=True)
    torch.testing.assert_close(det_a, ref_a, atol=0, rtol=0)
    torch.testing.assert_close(det_logp, ref_logp, atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_gaussian_moments(device):
    from scipy import stats

    n, A = 4096, 3
    mean = torch.tensor([0.5, -2.0, 10.0])
    log_std = torch.tensor([0.0, -1.0, 1.5])
    ms = torch.cat([mean, log_std]).expand(n, 2 * A).contiguous().to(device)
    torch.manual_seed(99)
    actions, _ = rf.ops.sample_diag_gaussian(ms, backend="triton")
    z = ((actions.cpu() - mean) / log_std.exp()).double()
    assert z.mean(0).abs().max() < 4.5 / n ** 0.5
    assert (z.std(0) - 1).abs().max() < 4.5 / (2 * n) ** 0.5
    for j in range(A):
        assert stats.kstest(z[:, j].numpy(), "norm").pvalue > 1e-3
    # independence of the dims (counter-based RNG must not repeat across columns or rows)
    corr = np.corrcoef(z.numpy().T)
    assert np.abs(corr - np.eye(A)).max() < 5 / n ** 0.5


def test_gaussian_bad_shape():
    with pytest.raises(ValueError, match="even"):
        rf.ops.sample_diag_gaussian(torch.zeros(3, 5), backend="triton")


@pytest.mark.parametrize("device", DEVICES)
def test_gaussian_reparameterised_gradient(device):
    ms = torch.randn(3, 4, device=device, requires_grad=True)
    actions, logp = rf.ops.sample_diag_gaussian(ms, backend="triton")
    (actions.sum() + logp.sum()).backward()
    mean, log_std = ms.detach().chunk(2, -1)
    eps = (actions.detach() - mean) / log_std.exp()
    expect = torch.cat([torch.ones_like(mean), eps * log_std.exp() - 1.0], -1)
    torch.testing.assert_close(ms.grad, expect, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- recurrent steps

RNN_CASES = [(1, 5, 17), (3, 17, 5), (17, 33, 64), (63, 64, 33)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B,I,H", RNN_CASES, ids=[f"B{b}-I{i}-H{h}" for b, i, h in RNN_CASES])
def test_lstm_step_matches_lstmcell_over_steps(B, I, H, device):
    torch.manual_seed(B + I + H)
    cell = torch.nn.LSTMCell(I, H).to(device)
    xs = torch.randn(4, B, I, device=device)
    h = torch.randn(B, H, device=device)
    c = torch.randn(B, H, device=device)
    with torch.no_grad():
        b = cell.bias_ih + cell.bias_hh
        h_ref, c_ref = h, c
        for t in range(4):
            h, c = rf.ops.lstm_step(xs[t], h, c, cell.weight_ih, cell.weight_hh, b, backend="triton")
            h_ref, c_ref = cell(xs[t], (h_ref, c_ref))
            torch.testing.assert_close(h, h_ref, atol=2e-6, rtol=1e-5)
            torch.testing.assert_close(c, c_ref, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B,I,H", RNN_CASES, ids=[f"B{b}-I{i}-H{h}" for b, i, h in RNN_CASES])
def test_gru_step_matches_grucell_over_steps(B, I, H, device):
    torch.manual_seed(B * I + H)
    cell = torch.nn.GRUCell(I, H).to(device)
    xs = torch.randn(4, B, I, device=device)
    h = torch.randn(B, H, device=device)
    with torch.no_grad():
        h_ref = h
        for t in range(4):
            h = rf.ops.gru_step(xs[t], h, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh,
                                backend="triton")
            h_ref = cell(xs[t], h_ref)
            torch.testing.assert_close(h, h_ref, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_rnn_steps_match_sequence_modules(device):
    """Single-step kernels carried over T steps == nn.LSTM / nn.GRU over the sequence (batch_first)."""
    torch.manual_seed(3)
    B, T, I, H = 3, 6, 17, 33
    lstm = torch.nn.LSTM(I, H, batch_first=True).to(device)
    gru = torch.nn.GRU(I, H, batch_first=True).to(device)
    x = torch.randn(B, T, I, device=device)
    with torch.no_grad():
        seq_l, (hl, cl) = lstm(x)
        seq_g, hg = gru(x)
        h = torch.zeros(B, H, device=device)
        c = torch.zeros(B, H, device=device)
        hgru = torch.zeros(B, H, device=device)
        b = lstm.bias_ih_l0 + lstm.bias_hh_l0
        for t in range(T):
            h, c = rf.ops.lstm_step(x[:, t], h, c, lstm.weight_ih_l0, lstm.weight_hh_l0, b,
                                    backend="triton")
            hgru = rf.ops.gru_step(x[:, t], hgru, gru.weight_ih_l0, gru.weight_hh_l0,
                                   gru.bias_ih_l0, gru.bias_hh_l0, backend="triton")
            torch.testing.assert_close(h, seq_l[:, t], atol=2e-6, rtol=1e-5)
            torch.testing.assert_close(hgru, seq_g[:, t], atol=2e-6, rtol=1e-5)
        torch.testing.assert_close(c, cl[0], atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_rnn_steps_no_bias_noncontiguous(device):
    B, I, H = 5, 17, 17
    w_ih4 = torch.randn(4 * H, I, device=device).t().contiguous().t() * 0.3
    w_hh4 = torch.randn(4 * H, H, device=device) * 0.3
    x = torch.randn(B, 2 * I, device=device)[:, ::2]
    h = torch.randn(B, H, device=device)
    c = torch.randn(B, H, device=device)
    h1, c1 = rf.ops.lstm_step(x, h, c, w_ih4, w_hh4, None, backend="triton")
    h2, c2 = ref.lstm_step(x, h, c, w_ih4, w_hh4, None)
    torch.testing.assert_close(h1, h2, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(c1, c2, atol=2e-6, rtol=1e-5)
    w_ih3, w_hh3 = w_ih4[: 3 * H], w_hh4[: 3 * H]
    torch.testing.assert_close(rf.ops.gru_step(x, h, w_ih3, w_hh3, None, None, backend="triton"),
                               ref.gru_step(x, h, w_ih3, w_hh3, None, None), atol=2e-6, rtol=1e-5)


def test_rnn_steps_bad_arguments_and_grad_refusal():
    x, h, c = torch.zeros(3, 5), torch.zeros(3, 4), torch.zeros(3, 4)
    with pytest.raises(ValueError, match=r"w_ih: expected shape \[16, 5\]"):
        rf.ops.lstm_step(x, h, c, torch.zeros(12, 5), torch.zeros(16, 4), None, backend="triton")
    with pytest.raises(ValueError, match=r"c: expected shape \[3, 4\]"):
        rf.ops.lstm_step(x, h, torch.zeros(3, 5), torch.zeros(16, 5), torch.zeros(16, 4), None,
                         backend="triton")
    with pytest.raises(ValueError, match=r"b_hh: expected shape \[12\]"):
        rf.ops.gru_step(x, h, torch.zeros(12, 5), torch.zeros(12, 4), None, torch.zeros(16),
                        backend="triton")
    cell = torch.nn.GRUCell(5, 4)
    with pytest.raises(RuntimeError, match="forward-only"):
        rf.ops.gru_step(x, h, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh,
                        backend="triton")


# ----------------------------------------------------------------------------- policy step

from types import SimpleNamespace  # noqa: E402


def _lins(widths, device):
    return [torch.nn.Linear(a, b).to(device) for a, b in zip(widths[:-1], widths[1:])]


def _policy(dist, shared, device, hidden=(33, 17), head=(16,), obs=7, rnn=None, cell=20):
    """A PolicyLayers-shaped description (fastpath.PolicyLayers is read duck-typed)."""
    sizes = {"categorical": [5], "multi_categorical": [3, 4, 2], "diag_gaussian": [3],
             "free_gaussian": [3]}[dist]
    npi = {"categorical": 5, "multi_categorical": 9, "diag_gaussian": 6, "free_gaussian": 3}[dist]

    def enc():
        if rnn is None:
            return SimpleNamespace(mlp=_lins([obs, *hidden], device), activation="tanh", rnn=None)
        mod = (torch.nn.LSTM if rnn == "lstm" else torch.nn.GRU)(hidden[-1], cell, batch_first=True)
        return SimpleNamespace(mlp=_lins([obs, *hidden], device), activation="tanh", rnn=mod.to(device))

    lat = cell if rnn else hidden[-1]
    return SimpleNamespace(
        actor=enc(), critic=None if shared else enc(), pi=_lins([lat, *head, npi], device),
        vf=_lins([lat, *head, 1], device), head_activation="relu",
        dist="diag_gaussian" if dist == "free_gaussian" else dist, action_sizes=sizes,
        log_std_clip=0.5 if "gaussian" in dist else None,
        free_log_std=torch.nn.Parameter(torch.randn(3, device=device)) if dist == "free_gaussian" else None)


def _ref_policy(L, x, state):
    """The float64 truth (ops.reference.policy_step) in x's dtype: (dist_inputs, vf, state_out)."""
    r = ref.policy_step(L, x, state, deterministic=True, compute_value=True)
    cast = lambda t: t.to(x.dtype)  # noqa: E731
    so = r.get("state_out")
    if so is not None:
        so = {k: ({kk: cast(vv) for kk, vv in v.items()} if isinstance(v, dict) else cast(v)) for k, v in so.items()}
    return cast(r["action_dist_inputs"]), cast(r["vf_preds"]), so


def _check_logp(L, out):
    d, a, lp = out["action_dist_inputs"], out["actions"], out["action_logp"]
    if L.dist == "diag_gaussian":
        mean, log_std = d.chunk(2, -1)
        expect = torch.distributions.Normal(mean, log_std.exp()).log_prob(a).sum(-1)
    else:
        expect, lo = 0.0, 0
        cols = a if a.dim() == 2 else a[:, None]
        for j, n in enumerate(L.action_sizes):
            expect = expect + torch.log_softmax(d[:, lo:lo + n], -1).gather(-1, cols[:, j:j + 1])[:, 0]
            lo += n
    torch.testing.assert_close(lp, expect, atol=2e-5, rtol=1e-5)


POLICY_DISTS = ["categorical", "multi_categorical", "diag_gaussian", "free_gaussian"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kernel", ["regs", "staged"])
@pytest.mark.parametrize("B", [1, 17, 63], ids=lambda b: f"B{b}")
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "separate"])
@pytest.mark.parametrize("dist", POLICY_DISTS)
def test_policy_plan_one_launch_matches_reference(dist, shared, B, kernel, device, monkeypatch):
    from rlmodule_fast.kernels import mlp

    if kernel == "staged":
        if B == 17:
            pytest.skip("interpreter time: B1 and B63 cover the staged kernel")
        monkeypatch.setattr(mlp, "REG_MAX_WIDTH", 16)  # force the staged kernel on small widths
    torch.manual_seed(B)
    L = _policy(dist, shared, device)
    plan = TritonPolicyPlan(L)
    assert plan.mode == "fused"
    x = torch.randn(B, 7, device=device)
    with torch.no_grad():
        p, v, _ = _ref_policy(L, x, None)
    det = plan.step(x, deterministic=True, compute_value=True)
    torch.testing.assert_close(det["action_dist_inputs"], p, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(det["vf_preds"], v, atol=2e-6, rtol=1e-5)
    d = det["action_dist_inputs"]  # deterministic actions: exactly the mode of our own inputs
    if L.dist == "diag_gaussian":
        torch.testing.assert_close(det["actions"], d[:, :3], atol=0, rtol=0)
    else:
        lo, want = 0, []
        for n in L.action_sizes:
            want.append(d[:, lo:lo + n].argmax(-1))
            lo += n
        want = want[0] if dist == "categorical" else torch.stack(want, -1)
        assert torch.equal(det["actions"], want)
    _check_logp(L, det)
    torch.manual_seed(11)
    out = plan.step(x)
    assert "vf_preds" not in out and "state_out" not in out
    _check_logp(L, out)
    if dist != "multi_categorical":  # same seed + same counters as the standalone samplers
        from rlmodule_fast.kernels import sampling

        torch.manual_seed(11)
        fn = sampling.sample_categorical if dist == "categorical" else sampling.sample_diag_gaussian
        a, lp, _ = fn(out["action_dist_inputs"])
        assert torch.equal(a, out["actions"])
        torch.testing.assert_close(lp, out["action_logp"], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kernel", ["regs", "staged"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "separate"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_policy_plan_recurrent_over_steps(kind, shared, kernel, device, monkeypatch):
    from rlmodule_fast.kernels import mlp

    if kernel == "staged":
        monkeypatch.setattr(mlp, "REG_MAX_WIDTH", 16)
    torch.manual_seed(5)
    L = _policy("categorical", shared, device, hidden=(17,), rnn=kind, cell=20)
    plan = TritonPolicyPlan(L)
    assert plan.mode == "recurrent"
    B = 3
    state = ref_state = None
    for t in range(3):
        x = torch.randn(B, 7, device=device)
        out = plan.step(x, state, deterministic=True, compute_value=True)
        with torch.no_grad():
            if ref_state is None:
                z = {"h": torch.zeros(B, 20, device=device)}
                if kind == "lstm":
                    z["c"] = torch.zeros(B, 20, device=device)
                ref_state = z if shared else {"actor": z, "critic": {k: v.clone() for k, v in z.items()}}
            p, v, ref_state = _ref_policy(L, x, ref_state)
        torch.testing.assert_close(out["action_dist_inputs"], p, atol=2e-6, rtol=1e-5)
        torch.testing.assert_close(out["vf_preds"], v, atol=2e-6, rtol=1e-5)
        flat = lambda s: {f"{k}.{kk}": vv for k, vv0 in s.items() for kk, vv in  # noqa: E731
                          (vv0.items() if isinstance(vv0, dict) else [("", vv0)])}
        got, want = flat(out["state_out"]), flat(ref_state)
        assert got.keys() == want.keys()
        for k in got:
            torch.testing.assert_close(got[k], want[k], atol=2e-6, rtol=1e-5)
        state = out["state_out"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("hidden,mode", [((200, 130), "fused"), ((300,), "sequence")],
                         ids=["split256-fused", "wide300-sequence"])
def test_policy_plan_wide_nets(hidden, mode, device):
    torch.manual_seed(2)
    for dist in ("multi_categorical", "diag_gaussian"):
        L = _policy(dist, False, device, hidden=hidden, head=())
        plan = TritonPolicyPlan(L)
        assert plan.mode == mode
        x = torch.randn(5, 7, device=device)
        out = plan.step(x, deterministic=True, compute_value=True)
        with torch.no_grad():
            p, v, _ = _ref_policy(L, x, None)
        torch.testing.assert_close(out["action_dist_inputs"], p, atol=5e-6, rtol=1e-5)
        torch.testing.assert_close(out["vf_preds"], v, atol=5e-6, rtol=1e-5)
        _check_logp(L, out)
        _check_logp(L, plan.step(x))


@pytest.mark.parametrize("device", DEVICES)
def test_policy_plan_multi_categorical_chi_square(device):
    from scipy import stats

    L = _policy("multi_categorical", True, device, hidden=(17,), head=())
    with torch.no_grad():
        for lin in L.actor.mlp + L.pi:
            lin.weight.zero_()
        L.pi[-1].bias.copy_(torch.tensor([0.0, 1.0, 2.0, 0.5, -1.0, 0.0, 1.5, 0.3, -0.3]))
    n = 2048
    torch.manual_seed(0)
    out = TritonPolicyPlan(L).step(torch.randn(n, 7, device=device))
    lo = 0
    for j, k in enumerate(L.action_sizes):
        probs = torch.softmax(L.pi[-1].bias.detach()[lo:lo + k].double().cpu(), 0).numpy()
        counts = torch.bincount(out["actions"][:, j].cpu(), minlength=k).double().numpy()
        assert stats.chisquare(counts, probs / probs.sum() * n).pvalue > 1e-3, (j, counts)
        lo += k


@pytest.mark.parametrize("device", DEVICES)
def test_policy_plan_sees_weight_updates_and_rejects_nan(device):
    L = _policy("categorical", True, device)
    plan = TritonPolicyPlan(L)
    x = torch.randn(3, 7, device=device)
    before = plan.step(x, deterministic=True)["action_dist_inputs"]
    with torch.no_grad():
        L.pi[-1].bias.add_(1.0)
        p, _, _ = _ref_policy(L, x, None)
    after = plan.step(x, deterministic=True)["action_dist_inputs"]
    torch.testing.assert_close(after, p, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(after, before + 1.0, atol=2e-6, rtol=1e-5)
    with torch.no_grad():
        L.actor.mlp[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        plan.step(x)


def test_policy_plan_bad_arguments():
    if not _CPU_OK:
        pytest.skip("CPU tensors: interpreter only")
    L = _policy("categorical", True, "cpu")
    plan = TritonPolicyPlan(L)
    with pytest.raises(ValueError, match=r"obs: expected shape \[B, 7\]"):
        plan.step(torch.zeros(3, 6))
    L.vf = None
    with pytest.raises(ValueError, match="compute_value"):
        TritonPolicyPlan(L).step(torch.zeros(3, 7), compute_value=True)
    L2 = _policy("categorical", True, "cpu")
    L2.action_sizes = [4]
    with pytest.raises(ValueError, match="pi: last layer has 5 outputs"):
        TritonPolicyPlan(L2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("act", ACTS)
def test_fused_mlp_propagates_nan_like_torch(act, device):
    ws, bs = _linears([5, 17, 3])
    x = torch.randn(3, 5)
    x[1, 2] = float("nan")
    out = rf.ops.fused_mlp(x.to(device), [w.to(device) for w in ws], [b.to(device) for b in bs], act,
                           backend="triton").cpu()
    expect = ref.fused_mlp(x, ws, bs, act)
    assert torch.equal(out.isnan(), expect.isnan())


# ----------------------------------------------------------------------------- real PPO modules

PPO_CASES = {
    "discrete-shared": (lambda gym: gym.spaces.Discrete(3), {}),
    "discrete-separate-relu": (lambda gym: gym.spaces.Discrete(4),
                               {"vf_share_layers": False, "fcnet_activation": "relu",
                                "head_fcnet_hiddens": [16]}),
    "multidiscrete-separate": (lambda gym: gym.spaces.MultiDiscrete([3, 2]), {"vf_share_layers": False}),
    "box-shared": (lambda gym: gym.spaces.Box(-1, 1, (2,)), {}),
    "box-free-log-std": (lambda gym: gym.spaces.Box(-1, 1, (3,)), {"free_log_std": True,
                                                                   "vf_share_layers": False}),
    "lstm-shared": (lambda gym: gym.spaces.Discrete(3), {"use_lstm": True, "lstm_cell_size": 16}),
    "gru-separate": (lambda gym: gym.spaces.Box(-1, 1, (2,)), {"use_gru": True, "lstm_cell_size": 16,
                                                               "vf_share_layers": False}),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", sorted(PPO_CASES))
def test_fastpath_triton_plan_matches_ppo_module(case, device, monkeypatch):
    """fastpath.PolicyPlan(module.policy_layers(), backend="triton") against the module's own
    torch forward (RLMODULE_FAST_BACKEND=torch) and compute_values."""
    gym = pytest.importorskip("gymnasium")
    from rlmodule_fast.fastpath import PolicyPlan
    from rlmodule_fast.ppo import PPOCatalog, PPOTorchRLModule

    make_act, extra = PPO_CASES[case]
    obs_space = gym.spaces.Box(-1.0, 1.0, (5,), np.float32)
    torch.manual_seed(0)
    mc = {"fcnet_hiddens": [32, 17], **extra}
    m = PPOTorchRLModule(observation_space=obs_space, action_space=make_act(gym), model_config=mc,
                         catalog_class=PPOCatalog).to(device)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    plan = PolicyPlan(m.policy_layers(), backend="triton")
    monkeypatch.setenv("RLMODULE_FAST_BACKEND", "torch")
    B = 3
    recurrent = m.is_stateful()
    state = None
    if recurrent:
        init = m.get_initial_state()

        def batched(s):
            return {k: (batched(v) if isinstance(v, dict) else v.to(device).expand(B, *v.shape).clone())
                    for k, v in s.items()}
        state = batched(init)
    for t in range(2 if recurrent else 1):
        obs = torch.rand(B, 5, device=device) * 2 - 1
        batch = {"obs": obs[:, None] if recurrent else obs}
        if recurrent:
            batch["state_in"] = state
        with torch.no_grad():
            want = m.forward_inference(batch)
            values = m.compute_values(batch)
        got = plan.step(obs, None if not recurrent else state, deterministic=True, compute_value=True)
        wd = want["action_dist_inputs"].reshape(B, -1)
        torch.testing.assert_close(got["action_dist_inputs"], wd, atol=2e-6, rtol=1e-5)
        torch.testing.assert_close(got["vf_preds"], values.reshape(B), atol=2e-6, rtol=1e-5)
        if recurrent:
            flat_w = {k: v for k, v in want["state_out"].items()}
            for k, v in flat_w.items():
                if isinstance(v, dict):
                    for kk, vv in v.items():
                        torch.testing.assert_close(got["state_out"][k][kk], vv.reshape(B, -1),
                                                   atol=2e-6, rtol=1e-5)
                else:
                    torch.testing.assert_close(got["state_out"][k], v.reshape(B, -1), atol=2e-6, rtol=1e-5)
            state = want["state_out"]
        _check_logp(m.policy_layers(), got)


# ----------------------------------------------------------------------------- exact RNG replay

def _philox_uniform(key: int, counter: int, offsets: np.ndarray) -> np.ndarray:
    """numpy replay of the kernels' uniform draw (``sampling._rng_uniform``) for int32 offsets:
    Philox4x32-10 with Triton's constants, key (k0, k1) = the 64-bit key, counter (c0, c1, c2,
    c3) = (offset, counter low, counter high, 0), and ``tl.rand``'s uint -> [0, 1) conversion."""
    M = np.uint64(0xFFFFFFFF)
    key, counter = key & (2**64 - 1), counter & (2**64 - 1)
    c0 = offsets.astype(np.uint64) & M
    c1 = np.full_like(c0, counter & 0xFFFFFFFF)
    c2 = np.full_like(c0, counter >> 32)
    c3 = np.zeros_like(c0)
    k0 = np.uint64(key & 0xFFFFFFFF)
    k1 = np.uint64(key >> 32)
    A, B = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
    for _ in range(10):
        _c0, _c2 = c0, c2
        c0 = ((B * _c2) >> np.uint64(32)) ^ c1 ^ k0
        c2 = ((A * _c0) >> np.uint64(32)) ^ c3 ^ k1
        c1 = (B * _c2) & M
        c3 = (A * _c0) & M
        k0 = (k0 + np.uint64(0x9E3779B9)) & M
        k1 = (k1 + np.uint64(0xBB67AE85)) & M
    x = c0.astype(np.uint32).view(np.int32).astype(np.int64)
    x = np.where(x < 0, -x - 1, x)
    return x.astype(np.float32) * np.float32(4.6566127342e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_categorical_equals_gumbel_max_in_torch_for_the_same_seed(device):
    """The kernel's draw is exactly argmax(logits - log(-log(u))) with u = Philox(key, (b*A + a,
    counter)), replayed here in numpy; (key, counter) is what torch's generator yields after
    torch.manual_seed."""
    from rlmodule_fast.kernels import sampling

    B, A = 63, 17
    logits = torch.randn(B, A) * 2
    torch.manual_seed(21)
    actions, _ = rf.ops.sample_categorical(logits.to(device), backend="triton")
    torch.manual_seed(21)
    key, counter = sampling.draw_seed("cpu" if device == "cpu" else device).tolist()
    u = torch.from_numpy(_philox_uniform(key, counter, np.arange(B * A).reshape(B, A)))
    u = u.clamp_min(torch.finfo(torch.float32).tiny)
    expect = torch.argmax(logits - torch.log(-torch.log(u)), dim=-1)
    assert torch.equal(actions.cpu(), expect)


# ----------------------------------------------------------------------------- compiled (AOT) check

_AOT_SCRIPT = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from rlmodule_fast.kernels import mlp, policy_step, rnn, sampling

def build(fn, consts, types=None, num_warps=4):
    types = types or {}
    sig = {n: ("constexpr" if n in consts else types.get(n, "*fp32" if n.endswith("_ptr") else "i32"))
           for n in fn.arg_names}
    k = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": num_warps})
    assert k.asm["cubin"], fn.__name__
    print(fn.__name__, "shared", k.metadata.shared)

P = "tf32x3"
build(mlp._fused_mlp_fwd_kernel, dict(L=2, D=16, HIDDEN_ACT=1, OUT_ACT=4, PRECISION=P, BLOCK_B=16))
build(mlp._fused_mlp_staged_fwd_kernel, dict(L=2, D=32, HIDDEN_ACT=3, OUT_ACT=0, PRECISION=P,
      BLOCK_B=16, BN=32, BK=16), {"dims_ptr": "*i32"})
build(rnn._gru_step_fwd_kernel, dict(HAS_BIH=True, HAS_BHH=False, PRECISION=P, BLOCK_B=16,
      BLOCK_H=32, BLOCK_KI=32, BLOCK_KH=32))
build(policy_step._policy_step_staged_fwd_kernel, dict(
      N_ENC=1, PI0=1, N_PI_HID=0, PI_OUT=1, PI_LS=2, C0=3, N_CRIT=1, V0=4, N_VF_HID=0, VF_OUT=4,
      ENC_ACT=1, CRIT_ACT=1, HEAD_ACT=2, DIST=2, NSEG=1, FREE_LOG_STD=False, CLIP=True, SHARED=False,
      COMPUTE_VALUE=True, DETERMINISTIC=False, D=32, NP=16, PRECISION=P, BLOCK_B=16, BN=32, BK=16,
      VF_SLOT=0, NORM_MASK=0, LN_W=66), {"dims_ptr": "*i32", "seg_ptr": "*i32", "seed_ptr": "*i64",
      "flag_ptr": "*i32", "log_std_clip": "fp32"})
# layer norms (fcnet_use_layernorm / head_fcnet_use_layernorm): every packed layer normed, both variants
for _fn, _D, _NP in ((policy_step._policy_step_staged_fwd_kernel, 128, 16), (policy_step._policy_step_fwd_kernel, 32, 32)):
    build(_fn, dict(
          N_ENC=2, PI0=2, N_PI_HID=1, PI_OUT=3, PI_LS=3, C0=4, N_CRIT=2, V0=6, N_VF_HID=1, VF_OUT=7,
          ENC_ACT=1, CRIT_ACT=3, HEAD_ACT=2, DIST=1, NSEG=2, FREE_LOG_STD=False, CLIP=False, SHARED=False,
          COMPUTE_VALUE=True, DETERMINISTIC=False, D=_D, NP=_NP, PRECISION=P, BLOCK_B=16, BN=min(64, _D),
          BK=32, VF_SLOT=0, NORM_MASK=0b11111111, LN_W=2 * _D + 2), {"dims_ptr": "*i32", "seg_ptr": "*i32",
          "seed_ptr": "*i64", "flag_ptr": "*i32", "log_std_clip": "fp32", "act_ptr": "*i64"})
build(mlp._layernorm_act_fwd_kernel, dict(HAS_G=True, HAS_B=False, ACT=3, BLOCK_M=16, BLOCK_N=64), {"eps": "fp32"})
build(sampling._sample_categorical_fwd_kernel, dict(DETERMINISTIC=False, HAS_ENTROPY=True,
      CHECK=True, BLOCK_B=16, BLOCK_A=16, ERR=1), {"actions_ptr": "*i64", "flag_ptr": "*i32",
      "seed_ptr": "*i64"})
build(sampling._sample_diag_gaussian_fwd_kernel, dict(DETERMINISTIC=False, CHECK=True,
      BLOCK_B=16, BLOCK_A=16, ERR=2), {"flag_ptr": "*i32", "seed_ptr": "*i64"})
print("AOT-OK")
"""


def test_kernels_compile_for_sm90_without_a_gpu():
    """The interpreter does not run Triton's compiler: compile a few kernels ahead of time for
    sm_90 (TTIR -> PTX -> cubin with the bundled ptxas), in a subprocess without the
    interpreter, so frontend/type errors of the compiled path show up on a CPU-only machine."""
    import subprocess
    import sys

    try:
        import triton.backends.nvidia  # noqa: F401
    except ImportError as e:
        pytest.skip(f"triton's NVIDIA backend is not importable: {e}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    r = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "AOT-OK" in r.stdout, r.stderr[-3000:]


@pytest.mark.parametrize("device", DEVICES)
def test_zero_batch_everywhere(device):
    ws, bs = _linears([5, 17, 3])
    x = torch.zeros(0, 5, device=device)
    assert rf.ops.fused_mlp(x, [w.to(device) for w in ws], [b.to(device) for b in bs],
                            backend="triton").shape == (0, 3)
    a, lp = rf.ops.sample_categorical(torch.zeros(0, 4, device=device), backend="triton")
    assert a.shape == (0,) and lp.shape == (0,)
    a, lp = rf.ops.sample_diag_gaussian(torch.zeros(0, 4, device=device), backend="triton")
    assert a.shape == (0, 2) and lp.shape == (0,)
    out = TritonPolicyPlan(_policy("multi_categorical", False, device)).step(
        torch.zeros(0, 7, device=device), compute_value=True)
    assert out["actions"].shape == (0, 3) and out["vf_preds"].shape == (0,)


# ----------------------------------------------------------------------------- register pressure

_SPILL_SCRIPT = r"""
import json, os, subprocess, sys, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.backends.nvidia.compiler import get_ptxas
from rlmodule_fast.kernels import policy_step

try:
    ptxas = get_ptxas(90).path
except TypeError:  # older triton: get_ptxas() without the arch
    ptxas = get_ptxas().path
T = {"dims_ptr": "*i32", "seg_ptr": "*i32", "seed_ptr": "*i64", "flag_ptr": "*i32",
     "log_std_clip": "fp32", "act_ptr": "*fp32"}
rows = []
for staged, D in ((False, 64), (True, 256)):
    fn = policy_step._policy_step_staged_fwd_kernel if staged else policy_step._policy_step_fwd_kernel
    for dist in (0, 1, 2):
        for shared in (True, False):
            meta = dict(D=D, DIST=dist)
            bb = policy_step.block_rows(meta, 4096, staged)
            c = dict(N_ENC=2, PI0=2, N_PI_HID=0, PI_OUT=2, PI_LS=3 if dist == 2 else 2,
                     C0=4, N_CRIT=0 if shared else 2, V0=4 if shared else 6, N_VF_HID=0,
                     VF_OUT=4 if shared else 6, ENC_ACT=1, CRIT_ACT=1, HEAD_ACT=1, DIST=dist,
                     NSEG=3 if dist == 1 else 1, FREE_LOG_STD=False, CLIP=dist == 2,
                     SHARED=shared, COMPUTE_VALUE=True, DETERMINISTIC=False, D=D,
                     NP=16 if staged else D, PRECISION="tf32x3", BLOCK_B=bb,
                     BN=min(64, D), BK=32, VF_SLOT=2 if shared else 0, NORM_MASK=0, LN_W=2 * D + 2)
            types = dict(T, act_ptr="*fp32" if dist == 2 else "*i64")
            sig = {n: ("constexpr" if n in c else types.get(n, "*fp32" if n.endswith("_ptr") else "i32"))
                   for n in fn.arg_names}
            k = triton.compile(ASTSource(fn, sig, c), target=GPUTarget("cuda", 90, 32),
                               options={"num_warps": 4})
            with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
                f.write(k.asm["ptx"])
            r = subprocess.run([ptxas, "-v", "--gpu-name", "sm_90a", f.name, "-o", os.devnull],
                               capture_output=True, text=True)
            os.unlink(f.name)
            out = r.stdout + r.stderr
            import re
            regs = re.search(r"Used (\d+) registers", out)
            spill = re.search(r"(\d+) bytes spill stores", out)
            rows.append(dict(staged=staged, D=D, dist=dist, shared=shared, block_b=bb,
                             rc=r.returncode, n_regs=int(regs.group(1)) if regs else None,
                             spill_bytes=int(spill.group(1)) if spill else None,
                             log=out[-300:] if r.returncode else ""))
print("SPILLS-JSON", json.dumps(rows))
"""


def test_policy_kernels_do_not_spill_on_sm90():
    """Compile the policy-step kernels (register D=64 and staged D=256; categorical,
    multi-categorical, Gaussian; shared / separate critic; value head on) for sm_90 without a
    GPU, at the block sizes the host launcher picks, and check with triton's ptxas (-v) that
    none spills and none exceeds 255 registers."""
    import json
    import subprocess
    import sys

    try:
        from triton.backends.nvidia.compiler import get_ptxas  # noqa: F401
    except ImportError as e:
        pytest.skip(f"triton's NVIDIA backend is not importable: {e}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    r = subprocess.run([sys.executable, "-c", _SPILL_SCRIPT], env=env, capture_output=True,
                       text=True, timeout=600)
    if r.returncode != 0 or "SPILLS-JSON" not in r.stdout:
        if "ptxas" in r.stderr and ("not found" in r.stderr or "No such file" in r.stderr):
            pytest.skip(f"compile for sm_90 unavailable: {r.stderr[-300:]}")
        raise AssertionError(r.stderr[-3000:])
    rows = json.loads(r.stdout.split("SPILLS-JSON", 1)[1])
    bad = [row for row in rows if row["rc"] != 0 or row["spill_bytes"] is None
           or row["spill_bytes"] > 0 or row["n_regs"] > 255]
    assert not bad, bad

"""Property tests (hypothesis) over every public op and every backend.

For random batch sizes (0, 1, odd, large), widths, dtypes (float16/32/64, int, bool), layouts
(contiguous, transposed storage, sliced, expanded, every other row), kinds (torch tensor /
numpy array) and contents (NaN, inf, huge values), each call of ``rf.ops.<op>(..., backend=b)``
either

- equals the torch reference (``ops/reference.py``, run in float64) within a calibrated
  tolerance: a small multiple of the error torch itself makes computing the same thing in the
  backend's compute dtype (float32; float16 for half inputs), or
- raises ``ValueError`` / ``TypeError`` whose message names the offending argument.

NaN/inf logits are an error for the samplers (house rule). Stochastic draws are checked for
range and for logp == the reference log-probability of the action drawn (distributional checks
live in the per-backend test files). The triton backend runs under the interpreter on CPU here
(slow), so it gets fewer, smaller examples.

Regressions found by the fuzzer are pinned by the small tests at the bottom; known gaps by
``xfail(strict=True)`` tests, which turn into failures when fixed, so the marker gets removed.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rlmodule_fast as rf
from rlmodule_fast.ops import reference as ref

INFO = rf.backend_info()
BACKENDS = [b for b in ("torch", "cpp", "triton") if INFO[b]["available"]]
FAST = {"torch": 60, "cpp": 60, "triton": 12}  # examples per test and backend
SMALL = {"torch": False, "cpp": False, "triton": True}
ACTS = ["tanh", "relu", "silu", "elu", "linear"]
FLOATS = (torch.float32, torch.float64)

# argument names the ops use (an error must name one of them)
NAMES = {
    "fused_mlp": ("x", "weights", "biases", "activation", "output_activation"),
    "sample_categorical": ("logits",),
    "sample_diag_gaussian": ("mean_logstd",),
    "lstm_step": ("x", "h", "c", "w_ih", "w_hh", "b"),
    "gru_step": ("x", "h", "w_ih", "w_hh", "b_ih", "b_hh"),
    "conv2d_nhwc": ("x", "weight", "bias", "stride", "pad", "activation", "scale"),
}


def _settings(backend):
    return settings(max_examples=FAST[backend], deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


# ----------------------------------------------------------------------------------- strategies

@st.composite
def batches(draw, small=False):
    if small:
        return draw(st.sampled_from([0, 1, 2, 3, 17]))
    return draw(st.sampled_from([0, 1, 2, 3, 5, 13, 17, 48, 49, 63, 129, 300]))


@st.composite
def widths(draw, small=False, lo=1):
    return draw(st.sampled_from([w for w in ([1, 2, 3, 7, 17] if small else [1, 2, 3, 8, 17, 33, 63, 64, 65, 129])
                                 if w >= lo]))


@st.composite
def contents(draw, shape, special=True, scale=1.0):
    """float64 numpy data of ``shape``; sometimes NaN/inf/huge entries or a huge scale."""
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shape) * scale
    kind = draw(st.sampled_from(["plain"] * 6 + (["nan", "inf", "huge", "tiny"] if special else [])))
    if a.size and kind != "plain":
        k = rng.integers(0, a.size)
        a.reshape(-1)[k] = {"nan": np.nan, "inf": draw(st.sampled_from([np.inf, -np.inf])),
                            "huge": draw(st.sampled_from([1e30, -1e30, 3e38])), "tiny": 1e-42}[kind]
    return a, kind


@st.composite
def arrays(draw, shape, dtype=None, special=True, scale=1.0):
    """(value, info): a tensor or numpy array holding random data in a random layout/dtype."""
    a, kind = draw(contents(shape, special, scale))
    if dtype is None:
        dtype = draw(st.sampled_from([torch.float32] * 5 + [torch.float64] * 2 + [torch.float16, torch.int64,
                                                                                torch.int32, torch.bool]))
    t = torch.from_numpy(a)
    with np.errstate(all="ignore"):
        t = t.to(dtype) if dtype != torch.bool else t > 0
    layout = draw(st.sampled_from(["contiguous", "contiguous", "transposed", "sliced", "expanded", "every_other"]))
    if layout == "transposed" and t.dim() == 2:
        t = t.t().contiguous().t()
    elif layout == "sliced" and t.dim() >= 1:
        big = torch.zeros(*t.shape[:-1], t.shape[-1] * 2 + 3, dtype=t.dtype)
        big[..., 2:2 + t.shape[-1]] = t
        t = big[..., 2:2 + t.shape[-1]]
    elif layout == "expanded" and t.dim() == 2 and t.shape[0] > 0:
        t = t[:1].expand(*t.shape)
    elif layout == "every_other" and t.dim() >= 1 and t.shape[0] > 0:
        t = t.repeat_interleave(2, dim=0)[::2]
    as_numpy = draw(st.booleans())
    if as_numpy:
        if layout == "expanded" and t.dim() == 2 and t.shape[0] > 0:
            v = np.broadcast_to(t[:1].numpy(), tuple(t.shape))
        else:
            v = t.numpy()
    else:
        v = t
    return v, {"dtype": dtype, "layout": layout, "numpy": as_numpy, "kind": kind}


# ----------------------------------------------------------------------------------- checking

def _t64(v):
    return torch.as_tensor(np.asarray(v) if isinstance(v, np.ndarray) else v).double()


def _valid_dtype(info, backend):
    ok = FLOATS + ((torch.float16,) if backend in ("torch", "triton") else ())
    return info["dtype"] in ok


def _low(dtypes):
    """The compute dtype whose rounding the tolerance is calibrated to."""
    return torch.float16 if torch.float16 in dtypes else torch.float32


def _assert_named_error(exc, op):
    msg = str(exc)
    assert isinstance(exc, (ValueError, TypeError)), f"{type(exc).__name__}: {msg}"
    assert any(n in msg for n in NAMES[op]), f"error does not name an argument of {op}: {msg!r}"


def _close(got, ref64, ref_low, what="result"):
    """got vs float64 reference; tolerance calibrated to torch's own error in the low dtype."""
    g = _t64(got)
    assert tuple(g.shape) == tuple(ref64.shape), f"{what}: shape {tuple(g.shape)} != {tuple(ref64.shape)}"
    if not g.numel():
        return
    r = ref64
    low = ref_low.double()
    fin = torch.isfinite(r) & torch.isfinite(low)
    # where the float64 reference is NaN the backend must give NaN too (NaN propagates)
    assert torch.isnan(g[torch.isnan(r)]).all(), f"{what}: NaN in the reference not propagated"
    # where the low-precision computation breaks down (overflow), there is no answer to hold to
    torch_err = (low[fin] - r[fin]).abs().max().item() if fin.any() else 0.0
    scale = 1 + r[fin].abs().max().item() if fin.any() else 1.0
    eps = torch.finfo(ref_low.dtype).eps
    err = (g[fin] - r[fin]).abs().max().item() if fin.any() else 0.0
    assert err <= 8 * torch_err + 16 * eps * scale, \
        f"{what}: error {err:.3g} vs torch's own {ref_low.dtype} error {torch_err:.3g} (scale {scale:.3g})"


def _call(op, backend, *args):
    return getattr(rf.ops, op)(*args, backend=backend)


# ----------------------------------------------------------------------------------- fused_mlp

@st.composite
def mlp_case(draw, small):
    B, I = draw(batches(small)), draw(widths(small))
    depth = draw(st.integers(1, 3))
    sizes = [I] + [draw(widths(small)) for _ in range(depth)]
    x, xi = draw(arrays((B, I), scale=draw(st.sampled_from([1.0, 1.0, 1.0, 1e3]))))
    ws, bs, infos = [], [], [xi]
    for i, o in zip(sizes[:-1], sizes[1:]):
        bad = draw(st.integers(0, 9)) == 0
        w, wi = draw(arrays((o, i), dtype=None if bad else torch.float32, special=False, scale=1 / math.sqrt(i)))
        ws.append(w)
        infos.append(wi)
        if draw(st.integers(0, 4)) == 0:
            bs.append(None)
        else:
            b, bi = draw(arrays((o,), dtype=None if bad else torch.float32, special=False, scale=0.3))
            bs.append(b)
            infos.append(bi)
    act = draw(st.sampled_from(ACTS))
    out_act = draw(st.sampled_from([None, None] + ACTS))
    return x, ws, bs, act, out_act, infos


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_mlp_property(backend):
    @_settings(backend)
    @given(case=mlp_case(SMALL[backend]))
    def prop(case):
        x, ws, bs, act, out_act, infos = case
        dtypes = [i["dtype"] for i in infos]
        # mixed float dtypes: the cpp backend converts (documented); the others may convert or refuse
        all_valid = all(_valid_dtype(i, backend) for i in infos)
        try:
            got = _call("fused_mlp", backend, x, ws, bs, act, out_act)
        except Exception as e:  # noqa: BLE001
            _assert_named_error(e, "fused_mlp")
            assert not all_valid or backend != "cpp", f"cpp refused a valid input: {e}"
            return
        if backend == "torch" and not all_valid:
            return
        assert all_valid, f"accepted an input with dtypes {dtypes}"
        assert isinstance(got, np.ndarray) == isinstance(x, np.ndarray), "result kind differs from x's"
        low = _low(dtypes)
        r64 = ref.fused_mlp(_t64(x), [_t64(w) for w in ws], [None if b is None else _t64(b) for b in bs], act, out_act)
        with np.errstate(all="ignore"):
            rl = ref.fused_mlp(_t64(x).to(low), [_t64(w).to(low) for w in ws],
                               [None if b is None else _t64(b).to(low) for b in bs], act, out_act)
        _close(got, r64, rl, f"fused_mlp[{backend}]")
    prop()


# ----------------------------------------------------------------------------------- samplers

@st.composite
def logits_case(draw, small, gauss):
    B, A = draw(batches(small)), draw(widths(small))
    shape = (B, 2 * A) if gauss else (B, A)
    scale = draw(st.sampled_from([1.0, 1.0, 10.0, 1e30])) if not gauss else 1.0
    x, info = draw(arrays(shape, scale=scale))
    return x, info, draw(st.booleans())


def _has_nonfinite(x):
    t = _t64(x)
    return t.numel() and not torch.isfinite(t).all().item()


@pytest.mark.parametrize("backend", BACKENDS)
def test_sample_categorical_property(backend):
    @_settings(backend)
    @given(case=logits_case(SMALL[backend], False))
    def prop(case):
        x, info, det = case
        valid = _valid_dtype(info, backend)
        bad_values = valid and _has_nonfinite(x)
        try:
            actions, logp = _call("sample_categorical", backend, x, det)
        except Exception as e:  # noqa: BLE001
            _assert_named_error(e, "sample_categorical")
            assert not valid or bad_values, f"refused a valid input: {e}"
            return
        if backend == "torch" and not valid:
            return
        assert valid and not bad_values, f"accepted {info} (non-finite: {bad_values})"
        lg = _t64(x)
        a = torch.as_tensor(actions)
        assert a.dtype == torch.int64 and tuple(a.shape) == (lg.shape[0],)
        if lg.shape[0]:
            assert ((a >= 0) & (a < lg.shape[1])).all()
        lsm = torch.log_softmax(lg, -1)
        if det:
            assert torch.equal(lg.gather(1, a[:, None])[:, 0], lg.max(1).values), "argmax"
        want = lsm.gather(1, a[:, None])[:, 0] if lg.shape[0] else torch.zeros(0, dtype=torch.float64)
        low = _low([info["dtype"]])
        want_low = torch.log_softmax(lg.to(low), -1).gather(1, a[:, None])[:, 0] if lg.shape[0] else want.to(low)
        _close(logp, want, want_low, f"sample_categorical[{backend}] logp")
    prop()


@pytest.mark.parametrize("backend", BACKENDS)
def test_sample_diag_gaussian_property(backend):
    @_settings(backend)
    @given(case=logits_case(SMALL[backend], True))
    def prop(case):
        x, info, det = case
        valid = _valid_dtype(info, backend)
        bad_values = valid and _has_nonfinite(x)
        try:
            actions, logp = _call("sample_diag_gaussian", backend, x, det)
        except Exception as e:  # noqa: BLE001
            _assert_named_error(e, "sample_diag_gaussian")
            assert not valid or bad_values, f"refused a valid input: {e}"
            return
        if backend == "torch" and not valid:
            return
        assert valid and not bad_values, f"accepted {info}"
        ml = _t64(x)
        A = ml.shape[1] // 2
        mean, ls = ml[:, :A], ml[:, A:]
        act = _t64(actions)
        assert tuple(act.shape) == (ml.shape[0], A)
        if det:
            low = _low([info["dtype"]])
            _close(actions, mean, mean.to(low), f"sample_diag_gaussian[{backend}] mode")
        # logp is the reference log-density of the action actually drawn
        if ls.numel() and ls.abs().max().item() > 30:
            return  # std under/overflows: the draw is the mean or inf; logp is checked in the per-backend tests
        d = torch.distributions.Normal(mean, ls.exp())
        want = d.log_prob(act).sum(-1)
        low = _low([info["dtype"]])
        eps = ((act - mean) / ls.exp()).abs().max().item() if act.numel() else 0.0
        dl = torch.distributions.Normal(mean.to(low).float(), ls.to(low).float().exp())
        want_low = dl.log_prob(act.to(low).float()).sum(-1).to(low)
        # an action far in the tail, or a mean so large that mean + std * eps rounds to mean,
        # no longer determines the eps drawn: logp cannot be recomputed from it
        big = mean.abs().max().item() / max(ls.exp().min().item(), 1e-30) if mean.numel() else 0.0
        if eps < 50 and big < 1e4:
            _close(logp, want, want_low, f"sample_diag_gaussian[{backend}] logp")
    prop()


# ----------------------------------------------------------------------------------- rnn steps

@st.composite
def rnn_case(draw, small, gates):
    B, I, H = draw(batches(small)), draw(widths(small)), draw(widths(small))
    x, xi = draw(arrays((B, I)))
    h, hi = draw(arrays((B, H), special=False))
    c, ci = draw(arrays((B, H), special=False))
    bad = draw(st.integers(0, 9)) == 0
    wd = None if bad else torch.float32
    wih, wi = draw(arrays((gates * H, I), dtype=wd, special=False, scale=1 / math.sqrt(I)))
    whh, wh = draw(arrays((gates * H, H), dtype=wd, special=False, scale=1 / math.sqrt(H)))
    b1, b1i = draw(arrays((gates * H,), dtype=wd, special=False, scale=0.3))
    b2, b2i = draw(arrays((gates * H,), dtype=wd, special=False, scale=0.3))
    if draw(st.integers(0, 4)) == 0:
        b1 = b1i = None
    if draw(st.integers(0, 4)) == 0:
        b2 = b2i = None
    wrong = draw(st.sampled_from([None] * 8 + ["h_rows", "w_cols", "c_width"]))
    if wrong == "h_rows":
        h = h[:-1] if B else np.zeros((1, H), np.float32)
    elif wrong == "w_cols":
        whh = whh[:, :-1] if H > 1 else np.zeros((gates * H, 2), np.float32)
    elif wrong == "c_width":
        c = np.zeros((B, H + 1), np.float32)
    infos = [i for i in (xi, hi, ci, wi, wh, b1i, b2i) if i is not None]
    return x, h, c, wih, whh, b1, b2, infos, wrong


def _rnn_prop(backend, op):
    gates = 4 if op == "lstm_step" else 3

    @_settings(backend)
    @given(case=rnn_case(SMALL[backend], gates))
    def prop(case):
        x, h, c, wih, whh, b1, b2, infos, wrong = case
        if op == "gru_step":
            infos = infos[:2] + infos[3:]  # c is not an argument
        dtypes = [i["dtype"] for i in infos]
        valid = (wrong is None or (op == "gru_step" and wrong == "c_width")) and all(
            _valid_dtype(i, backend) for i in infos)
        args = (x, h, c, wih, whh, b1) if op == "lstm_step" else (x, h, wih, whh, b1, b2)
        try:
            got = _call(op, backend, *args)
        except Exception as e:  # noqa: BLE001
            _assert_named_error(e, op)
            assert not valid or backend != "cpp" or len(set(dtypes)) > 1, f"cpp refused a valid input: {e}"
            return
        if backend == "torch" and not valid:
            return
        assert valid, f"accepted an invalid input (dtypes {dtypes}, wrong {wrong})"
        low = _low(dtypes)
        f = getattr(ref, op)
        targs = [None if a is None else _t64(a) for a in args]
        r64 = f(*targs)
        with np.errstate(all="ignore"):
            rl = f(*[None if a is None else a.to(low) for a in targs])
        if op == "lstm_step":
            _close(got[0], r64[0], rl[0], f"{op}[{backend}] h")
            _close(got[1], r64[1], rl[1], f"{op}[{backend}] c")
        else:
            _close(got, r64, rl, f"{op}[{backend}]")
    prop()


@pytest.mark.parametrize("backend", BACKENDS)
def test_lstm_step_property(backend):
    _rnn_prop(backend, "lstm_step")


@pytest.mark.parametrize("backend", BACKENDS)
def test_gru_step_property(backend):
    _rnn_prop(backend, "gru_step")


# ----------------------------------------------------------------------------------- conv2d_nhwc

@st.composite
def conv_case(draw, small):
    """Random images, filters, strides and pads, sometimes invalid (a kernel larger than the
    padded image, a negative pad, a zero stride, a channel mismatch, a bad dtype)."""
    B = draw(st.sampled_from([0, 1, 2, 3] if small else [0, 1, 2, 3, 5, 9]))
    H, W = draw(st.sampled_from([1, 2, 3, 5, 8])), draw(st.sampled_from([1, 2, 4, 7, 9]))
    C = draw(st.sampled_from([1, 2, 3, 5] if small else [1, 2, 3, 4, 7, 16]))
    Co = draw(st.sampled_from([1, 3, 16, 17] if small else [1, 2, 5, 16, 17, 33, 64, 70]))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    wrong = draw(st.sampled_from([None] * 8 + ["stride", "pad", "channels", "kernel"]))
    stride = draw(st.sampled_from([1, 2, 3, (1, 2), (3, 1)]))
    pad = tuple(draw(st.integers(0, 2)) for _ in range(4))
    if wrong == "stride":
        stride = draw(st.sampled_from([0, -1, (1, 0), (2, 2, 2), 1.5]))
    elif wrong == "pad":
        pad = draw(st.sampled_from([(0, 0, -1, 0), (1, 1), 4097, (0, 0, 0, 0.5)]))
    elif wrong == "kernel":
        kh = H + pad[2] + pad[3] + 1
    if wrong is None and (H + pad[2] + pad[3] < kh or W + pad[0] + pad[1] < kw):
        wrong = "kernel"  # drawn too large for the padded image
    xdtype = draw(st.sampled_from([torch.float32] * 4 + [torch.float64, torch.uint8, torch.int64, torch.bool]))
    if xdtype == torch.uint8:
        a = np.random.default_rng(draw(st.integers(0, 2**31 - 1))).integers(0, 256, (B, H, W, C)).astype(np.uint8)
        x = a if draw(st.booleans()) else torch.from_numpy(a)
        xi = {"dtype": torch.uint8, "layout": "contiguous", "numpy": isinstance(x, np.ndarray), "kind": "plain"}
    else:
        x, xi = draw(arrays((B, H, W, C), dtype=xdtype))
    wC = C + 1 if wrong == "channels" else C
    bad_w = draw(st.integers(0, 9)) == 0
    w, wi = draw(arrays((Co, wC, kh, kw), dtype=None if bad_w else torch.float32, special=False,
                        scale=1 / math.sqrt(wC * kh * kw)))
    b, bi = (None, None) if draw(st.integers(0, 3)) == 0 else draw(
        arrays((Co,), dtype=None if bad_w else torch.float32, special=False, scale=0.3))
    act = draw(st.sampled_from(ACTS))
    scale = draw(st.sampled_from([None, None, 1 / 255, 2.0]))
    infos = [xi, wi] + ([bi] if bi is not None else [])
    return x, w, b, stride, pad, act, scale, infos, wrong


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv2d_nhwc_property(backend):
    @_settings(backend)
    @given(case=conv_case(SMALL[backend]))
    def prop(case):
        x, w, b, stride, pad, act, scale, infos, wrong = case
        dtypes = [i["dtype"] for i in infos]
        valid = wrong is None and infos[0]["dtype"] in (torch.float32, torch.float64, torch.uint8) and all(
            i["dtype"] in FLOATS for i in infos[1:])
        try:
            got = rf.ops.conv2d_nhwc(x, w, b, stride, pad, act, scale=scale, backend=backend)
        except Exception as e:  # noqa: BLE001
            _assert_named_error(e, "conv2d_nhwc")
            assert not valid, f"{backend} refused a valid input: {e}"
            return
        assert valid, f"accepted an invalid input (dtypes {dtypes}, wrong {wrong})"
        x64 = _t64(x)
        targs = (_t64(w), None if b is None else _t64(b))
        r64 = ref.conv2d_nhwc(x64, *targs, stride, pad, act, scale)
        with np.errstate(all="ignore"):
            rl = ref.conv2d_nhwc(x64.float(), *(None if a is None else a.float() for a in targs), stride, pad, act,
                                 scale)
        _close(got, r64, rl, f"conv2d_nhwc[{backend}]")
    prop()


# ----------------------------------------------------------------------------------- known gaps

def test_torch_backend_names_bad_arguments():
    with pytest.raises((ValueError, TypeError), match="x"):
        rf.ops.fused_mlp(torch.ones(3, 4, dtype=torch.int64), [torch.randn(5, 4)], [None], backend="torch")
    with pytest.raises((ValueError, TypeError), match="logits"):
        rf.ops.sample_categorical(torch.zeros(3, 0), backend="torch")


@pytest.mark.skipif("cpp" not in BACKENDS, reason="cpp backend unavailable")
def test_cpp_negative_strides_numpy():
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)[::-1]
    w = torch.randn(5, 4)
    got = rf.ops.fused_mlp(x, [w], [None], "tanh", backend="cpp")
    torch.testing.assert_close(torch.as_tensor(got), ref.fused_mlp(torch.as_tensor(x.copy()), [w], [None], "tanh"))


@pytest.mark.skipif("cpp" not in BACKENDS, reason="cpp backend unavailable")
def test_cpp_silu_of_huge_negative():
    x = torch.full((3, 8), -3.67e36)
    got = rf.ops.fused_mlp(x, [torch.eye(8)], [None], None, "silu", backend="cpp")
    assert got.abs().max().item() < 1e-6


@pytest.mark.skipif("cpp" not in BACKENDS, reason="cpp backend unavailable")
def test_cpp_gru_infinite_input():
    g = torch.Generator().manual_seed(0)
    x = torch.tensor([[float("-inf")]])
    h = torch.zeros(1, 4)
    wi, wh = torch.randn(12, 1, generator=g), torch.randn(12, 4, generator=g)
    got = rf.ops.gru_step(x, h, wi, wh, None, None, backend="cpp")
    torch.testing.assert_close(got, ref.gru_step(x, h, wi, wh, None, None))


@pytest.mark.skipif("cpp" not in BACKENDS, reason="cpp backend unavailable")
def test_cpp_zero_width_input():
    with pytest.raises(ValueError, match="x"):
        rf.ops.fused_mlp(torch.zeros(3, 0), [torch.zeros(5, 0)], [None], backend="cpp")

"""The ``torch`` backend: the reference ops behind argument checks.

numpy in, numpy out; tensors in, tensors out. Every argument must be a floating-point tensor or
array of the documented shape (ValueError/TypeError naming it otherwise); weights and biases are
used in x's dtype.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from . import reference

OPS = frozenset({"fused_mlp", "sample_categorical", "sample_diag_gaussian", "lstm_step", "gru_step", "conv2d_nhwc"})


def status() -> tuple[bool, str]:
    return True, ""


def details() -> dict:
    return {"version": torch.__version__}


def _tensor(a, what: str, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    if isinstance(a, np.ndarray):
        if a.dtype.kind != "f":
            raise TypeError(f"{what}: expected a floating-point array, got dtype {a.dtype}")
        a = torch.from_numpy(np.ascontiguousarray(a) if not a.flags.writeable or any(s < 0 for s in a.strides) else a)
    elif not isinstance(a, torch.Tensor):
        raise TypeError(f"{what}: expected a torch tensor or numpy array, got {type(a).__name__}")
    if not a.dtype.is_floating_point:
        raise TypeError(f"{what}: expected a floating-point dtype, got {a.dtype}")
    return a if dtype is None else a.to(dtype)


def _shape(t: torch.Tensor, what: str, expected: Sequence[Optional[int]], legend: str) -> None:
    if t.dim() != len(expected) or any(e is not None and e != s for e, s in zip(expected, t.shape)):
        raise ValueError(f"{what}: expected shape {legend}, got {tuple(t.shape)}")


def _result(out, is_numpy: bool):
    if not is_numpy:
        return out
    return tuple(o.numpy() for o in out) if isinstance(out, tuple) else out.numpy()


def fused_mlp(x, weights, biases, activation="tanh", output_activation=None):
    is_numpy = isinstance(x, np.ndarray)
    xt = _tensor(x, "x")
    _shape(xt, "x", (None, None), "[B, I]")
    weights, biases = list(weights), list(biases)
    if not weights or len(biases) != len(weights):
        raise ValueError(f"weights/biases: expected equally long non-empty lists, got {len(weights)} and {len(biases)}")
    ws, bs, width = [], [], xt.shape[1]
    for i, (w, b) in enumerate(zip(weights, biases)):
        wt = _tensor(w, f"weights[{i}]", xt.dtype)
        _shape(wt, f"weights[{i}]", (None, width), f"[H_{i}, {width}]")
        ws.append(wt)
        if b is not None:
            b = _tensor(b, f"biases[{i}]", xt.dtype)
            _shape(b, f"biases[{i}]", (wt.shape[0],), f"[{wt.shape[0]}]")
        bs.append(b)
        width = wt.shape[0]
    return _result(reference.fused_mlp(xt, ws, bs, activation, output_activation), is_numpy)


def _logits(a, what: str, even: bool = False) -> torch.Tensor:
    t = _tensor(a, what)
    _shape(t, what, (None, None), "[B, 2A]" if even else "[B, A]")
    if t.shape[1] == 0 or (even and t.shape[1] % 2):
        raise ValueError(f"{what}: expected shape {'[B, 2A] with A >= 1' if even else '[B, A] with A >= 1'}, "
                         f"got {tuple(t.shape)}")
    return t


def sample_categorical(logits, deterministic=False, mask=None):
    t = _logits(logits, "logits")
    m = None
    if mask is not None:
        m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
        _shape(m, "action_mask", tuple(t.shape), f"[B, A] = {list(t.shape)}")
    return _result(reference.sample_categorical(t, deterministic, mask=m), isinstance(logits, np.ndarray))


def sample_diag_gaussian(mean_logstd, deterministic=False):
    t = _logits(mean_logstd, "mean_logstd", even=True)
    return _result(reference.sample_diag_gaussian(t, deterministic), isinstance(mean_logstd, np.ndarray))


def _rnn_args(x, h, w_ih, w_hh, gates: int):
    xt = _tensor(x, "x")
    _shape(xt, "x", (None, None), "[B, I]")
    B, I = xt.shape
    ht = _tensor(h, "h", xt.dtype)
    _shape(ht, "h", (B, None), f"[{B}, H]")
    H = ht.shape[1]
    wi = _tensor(w_ih, "w_ih", xt.dtype)
    _shape(wi, "w_ih", (gates * H, I), f"[{gates}H, I] = [{gates * H}, {I}]")
    wh = _tensor(w_hh, "w_hh", xt.dtype)
    _shape(wh, "w_hh", (gates * H, H), f"[{gates}H, H] = [{gates * H}, {H}]")
    return xt, ht, wi, wh, H


def _bias(b, what: str, n: int, dtype):
    if b is None:
        return None
    t = _tensor(b, what, dtype)
    _shape(t, what, (n,), f"[{n}]")
    return t


def lstm_step(x, h, c, w_ih, w_hh, b):
    xt, ht, wi, wh, H = _rnn_args(x, h, w_ih, w_hh, 4)
    ct = _tensor(c, "c", xt.dtype)
    _shape(ct, "c", tuple(ht.shape), f"[{ht.shape[0]}, {H}]")
    out = reference.lstm_step(xt, ht, ct, wi, wh, _bias(b, "b", 4 * H, xt.dtype))
    return _result(out, isinstance(x, np.ndarray))


def gru_step(x, h, w_ih, w_hh, b_ih, b_hh):
    xt, ht, wi, wh, H = _rnn_args(x, h, w_ih, w_hh, 3)
    out = reference.gru_step(xt, ht, wi, wh, _bias(b_ih, "b_ih", 3 * H, xt.dtype), _bias(b_hh, "b_hh", 3 * H, xt.dtype))
    return _result(out, isinstance(x, np.ndarray))


def conv2d_nhwc(x, weight, bias, stride, pad, activation, scale=None):
    from .conv import norm_pad, norm_stride, out_size

    is_numpy = isinstance(x, np.ndarray)
    if is_numpy and x.dtype == np.uint8:
        xt = torch.from_numpy(np.ascontiguousarray(x))
    elif isinstance(x, torch.Tensor) and x.dtype == torch.uint8:
        xt = x
    else:
        xt = _tensor(x, "x")
    _shape(xt, "x", (None, None, None, None), "[B, H, W, C]")
    dt = xt.dtype if xt.dtype.is_floating_point else torch.float32
    w = _tensor(weight, "weight", dt)
    _shape(w, "weight", (None, xt.shape[3], None, None), f"[Cout, {xt.shape[3]}, kh, kw]")
    b = _bias(bias, "bias", w.shape[0], dt)
    stride, pad = norm_stride(stride), norm_pad(pad)
    out_size(xt.shape[1], xt.shape[2], w.shape[2], w.shape[3], stride, pad)
    if scale is not None and not (isinstance(scale, (int, float)) and np.isfinite(scale)):
        raise ValueError(f"scale: expected None or a finite number, got {scale!r}")
    return _result(reference.conv2d_nhwc(xt, w, b, stride, pad, activation, scale), is_numpy)

"""Triton recurrent steps: one LSTM step and one GRU step, both matmuls and the gate math fused.

Shape legend: B batch, I input features, H hidden units; G gates (LSTM 4: i, f, g, o;
GRU 3: r, z, n). Weights in ``nn.LSTMCell`` / ``nn.GRUCell`` layout: w_ih [G*H, I],
w_hh [G*H, H] (read through their strides, never copied).

Each program owns BLOCK_B rows and BLOCK_H hidden units and accumulates the G gate tiles of
those units over the input and the hidden state (x @ w_ih^T + h @ w_hh^T), then applies the
gate nonlinearities and writes h' (and c') directly: the [B, G*H] gate pre-activations that
``nn.LSTMCell`` materialises in global memory never leave registers.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .mlp import _tanh


@triton.jit
def _gate_tiles_acc(acc0, acc1, acc2, acc3, a_ptr, w_ptr, rows, rn, B, K, H,
                    stride_ab, stride_ak, stride_wn, stride_wk,
                    G: tl.constexpr, PRECISION: tl.constexpr,
                    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc_g += a[rows, :K] @ w[g*H + rn, :K]^T for g < G (acc3 untouched when G == 3)."""
    rk = tl.arange(0, BLOCK_K)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        a = tl.load(a_ptr + rows[:, None] * stride_ab + kk[None, :] * stride_ak,
                    mask=(rows[:, None] < B) & (kk[None, :] < K), other=0.0).to(tl.float32)
        wmask = (rn[None, :] < H) & (kk[:, None] < K)
        wbase = w_ptr + rn[None, :] * stride_wn + kk[:, None] * stride_wk
        acc0 = tl.dot(a, tl.load(wbase, mask=wmask, other=0.0).to(tl.float32), acc0,
                      input_precision=PRECISION)
        acc1 = tl.dot(a, tl.load(wbase + H * stride_wn, mask=wmask, other=0.0).to(tl.float32),
                      acc1, input_precision=PRECISION)
        acc2 = tl.dot(a, tl.load(wbase + 2 * H * stride_wn, mask=wmask, other=0.0).to(tl.float32),
                      acc2, input_precision=PRECISION)
        if G == 4:
            acc3 = tl.dot(a, tl.load(wbase + 3 * H * stride_wn, mask=wmask, other=0.0).to(tl.float32),
                          acc3, input_precision=PRECISION)
    return acc0, acc1, acc2, acc3


@triton.jit
def _lstm_step_fwd_kernel(
    x_ptr, h_ptr, c_ptr, wih_ptr, whh_ptr, b_ptr, h_out_ptr, c_out_ptr,
    B, I, H,
    stride_xb, stride_xi, stride_hb, stride_hh, stride_cb, stride_ch,
    stride_wih_n, stride_wih_k, stride_whh_n, stride_whh_k,
    stride_ob, stride_oh,
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_KI: tl.constexpr, BLOCK_KH: tl.constexpr,
):
    """h' = sig(o) * tanh(c'), c' = sig(f) * c + sig(i) * tanh(g); outputs [B, H] contiguous-ish."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rn = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    zero = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    ai, af, ag, ao = _gate_tiles_acc(zero, zero, zero, zero, x_ptr, wih_ptr, rows, rn, B, I, H,
                                     stride_xb, stride_xi, stride_wih_n, stride_wih_k,
                                     4, PRECISION, BLOCK_B, BLOCK_KI)
    ai, af, ag, ao = _gate_tiles_acc(ai, af, ag, ao, h_ptr, whh_ptr, rows, rn, B, H, H,
                                     stride_hb, stride_hh, stride_whh_n, stride_whh_k,
                                     4, PRECISION, BLOCK_B, BLOCK_KH)
    nmask = rn < H
    if HAS_BIAS:
        ai += tl.load(b_ptr + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
        af += tl.load(b_ptr + H + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
        ag += tl.load(b_ptr + 2 * H + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
        ao += tl.load(b_ptr + 3 * H + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
    mask = (rows[:, None] < B) & nmask[None, :]
    c = tl.load(c_ptr + rows[:, None] * stride_cb + rn[None, :] * stride_ch, mask=mask,
                other=0.0).to(tl.float32)
    c_new = tl.sigmoid(af) * c + tl.sigmoid(ai) * _tanh(ag)
    h_new = tl.sigmoid(ao) * _tanh(c_new)
    offs = rows[:, None] * stride_ob + rn[None, :] * stride_oh
    tl.store(h_out_ptr + offs, h_new.to(h_out_ptr.dtype.element_ty), mask=mask)
    tl.store(c_out_ptr + offs, c_new.to(c_out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gru_step_fwd_kernel(
    x_ptr, h_ptr, wih_ptr, whh_ptr, bih_ptr, bhh_ptr, h_out_ptr,
    B, I, H,
    stride_xb, stride_xi, stride_hb, stride_hh,
    stride_wih_n, stride_wih_k, stride_whh_n, stride_whh_k,
    stride_ob, stride_oh,
    HAS_BIH: tl.constexpr, HAS_BHH: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_KI: tl.constexpr, BLOCK_KH: tl.constexpr,
):
    """r = sig(x W_ir + b_ir + h W_hr + b_hr), z likewise, n = tanh(x W_in + b_in + r*(h W_hn + b_hn)),
    h' = (1 - z) * n + z * h."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rn = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    zero = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    ir, iz, in_, _u = _gate_tiles_acc(zero, zero, zero, zero, x_ptr, wih_ptr, rows, rn, B, I, H,
                                      stride_xb, stride_xi, stride_wih_n, stride_wih_k,
                                      3, PRECISION, BLOCK_B, BLOCK_KI)
    hr, hz, hn, _u = _gate_tiles_acc(zero, zero, zero, zero, h_ptr, whh_ptr, rows, rn, B, H, H,
                                     stride_hb, stride_hh, stride_whh_n, stride_whh_k,
                                     3, PRECISION, BLOCK_B, BLOCK_KH)
    nmask = rn < H
    if HAS_BIH:
        ir += tl.load(bih_ptr + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
        iz += tl.load(bih_ptr + H + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
        in_ += tl.load(bih_ptr + 2 * H + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
    if HAS_BHH:
        hr += tl.load(bhh_ptr + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
        hz += tl.load(bhh_ptr + H + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
        hn += tl.load(bhh_ptr + 2 * H + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
    mask = (rows[:, None] < B) & nmask[None, :]
    h = tl.load(h_ptr + rows[:, None] * stride_hb + rn[None, :] * stride_hh, mask=mask,
                other=0.0).to(tl.float32)
    r = tl.sigmoid(ir + hr)
    z = tl.sigmoid(iz + hz)
    n = _tanh(in_ + r * hn)
    h_new = (1.0 - z) * n + z * h
    tl.store(h_out_ptr + rows[:, None] * stride_ob + rn[None, :] * stride_oh,
             h_new.to(h_out_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- host launchers

def _grid_blocks(B: int, I: int, H: int):
    """(BLOCK_B, BLOCK_H, BLOCK_KI, BLOCK_KH, grid, num_warps). Both configurations are free of
    register spills on sm_90 with tf32x3 (AOT-compiled: 16x32x32/4 warps -> 188 registers,
    32x64x32/8 warps -> 252 registers)."""
    if B >= 32 and H >= 64:
        bb, bh, nw = 32, 64, 8
    else:
        bb, bh, nw = 16, 32, 4
    return bb, bh, 32, 32, (triton.cdiv(B, bb), triton.cdiv(H, bh)), nw


def lstm_step(x, h, c, w_ih, w_hh, b, precision: str = "ieee"):
    """x [B, I], h/c [B, H], w_ih [4H, I], w_hh [4H, H], b [4H] or None -> (h' [B, H], c' [B, H])."""
    import torch

    B, I = x.shape
    H = h.shape[1]
    h_out = torch.empty((B, H), dtype=h.dtype, device=x.device)
    c_out = torch.empty((B, H), dtype=c.dtype, device=x.device)
    if B == 0 or H == 0:
        return h_out, c_out
    bb, bh, bki, bkh, grid, nw = _grid_blocks(B, I, H)
    _lstm_step_fwd_kernel[grid](
        x, h, c, w_ih, w_hh, b if b is not None else x, h_out, c_out, B, I, H,
        x.stride(0), x.stride(1), h.stride(0), h.stride(1), c.stride(0), c.stride(1),
        w_ih.stride(0), w_ih.stride(1), w_hh.stride(0), w_hh.stride(1),
        h_out.stride(0), h_out.stride(1),
        HAS_BIAS=b is not None, PRECISION=precision,
        BLOCK_B=bb, BLOCK_H=bh, BLOCK_KI=bki, BLOCK_KH=bkh, num_warps=nw,
    )
    return h_out, c_out


def gru_step(x, h, w_ih, w_hh, b_ih, b_hh, precision: str = "ieee"):
    """x [B, I], h [B, H], w_ih [3H, I], w_hh [3H, H], b_ih/b_hh [3H] or None -> h' [B, H]."""
    import torch

    B, I = x.shape
    H = h.shape[1]
    h_out = torch.empty((B, H), dtype=h.dtype, device=x.device)
    if B == 0 or H == 0:
        return h_out
    bb, bh, bki, bkh, grid, nw = _grid_blocks(B, I, H)
    _gru_step_fwd_kernel[grid](
        x, h, w_ih, w_hh, b_ih if b_ih is not None else x, b_hh if b_hh is not None else x,
        h_out, B, I, H,
        x.stride(0), x.stride(1), h.stride(0), h.stride(1),
        w_ih.stride(0), w_ih.stride(1), w_hh.stride(0), w_hh.stride(1),
        h_out.stride(0), h_out.stride(1),
        HAS_BIH=b_ih is not None, HAS_BHH=b_hh is not None, PRECISION=precision,
        BLOCK_B=bb, BLOCK_H=bh, BLOCK_KI=bki, BLOCK_KH=bkh, num_warps=nw,
    )
    return h_out

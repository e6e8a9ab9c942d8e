"""Triton policy step: encoder MLP, pi head, distribution inputs, sampling (and the value head,
through a shared or separate critic encoder) for BLOCK_B rows in ONE kernel.

Shape legend: B batch, I actor-input features (the observation, or the RNN's h' for recurrent
policies), IC critic-input features, D padded width of every packed layer, NL pi outputs
(categorical: logits; multi-categorical: all segments' logits; Gaussian: A means), A action
columns (categorical 1, multi-categorical NSEG, Gaussian A dims).

An env-runner step at batch 1..1024 through a small policy is launch- and latency-bound: the
torch module runs ~15 kernels (linears, activations, log_softmax, rand, argmax, gather, the
value head). Here each observation row is read once, every activation stays in registers
(``kernels.mlp._dense_tile``), and only the distribution inputs, actions, logp (and value)
are written. Weights are packed once per weight version by the host plan into one
[L, D, D] buffer (transposed, zero-padded; see ``kernels.mlp.pack_mlp``); layer indices are
constexpr, so every layer loop is unrolled.

RNG: the counters are those of ``kernels.sampling`` (row * NL + column for categorical logits,
row * A + column for Gaussian noise), so for the same seed tensor the fused step draws exactly
what the standalone samplers draw from its distribution inputs.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .mlp import _dense_tile, _load_rows
from .sampling import _categorical_row_block

DIST_CODES = {"categorical": 0, "multi_categorical": 1, "diag_gaussian": 2}


@triton.jit
def _layers(h0, h1, w_ptr, b_ptr, FIRST: tl.constexpr, N: tl.constexpr, ACT: tl.constexpr,
            DH: tl.constexpr, D: tl.constexpr, SPLIT: tl.constexpr, PRECISION: tl.constexpr):
    for l in tl.static_range(N):
        h0, h1 = _dense_tile(h0, h1, w_ptr + (FIRST + l) * D * D, b_ptr + (FIRST + l) * D,
                             DH, D, SPLIT, ACT, PRECISION)
    return h0, h1


@triton.jit
def _policy_step_fwd_kernel(
    x_ptr, xc_ptr, w_ptr, b_ptr, logstd_ptr, seg_ptr, seed_ptr,
    dist_ptr, act_ptr, logp_ptr, value_ptr, flag_ptr,
    B, I, IC, NL, A, log_std_clip,
    stride_xb, stride_xi, stride_cb, stride_ci,
    N_ENC: tl.constexpr, PI0: tl.constexpr, N_PI_HID: tl.constexpr, PI_OUT: tl.constexpr,
    PI_LS: tl.constexpr, C0: tl.constexpr, N_CRIT: tl.constexpr, V0: tl.constexpr,
    N_VF_HID: tl.constexpr, VF_OUT: tl.constexpr,
    ENC_ACT: tl.constexpr, CRIT_ACT: tl.constexpr, HEAD_ACT: tl.constexpr,
    DIST: tl.constexpr, NSEG: tl.constexpr, FREE_LOG_STD: tl.constexpr, CLIP: tl.constexpr,
    SHARED: tl.constexpr, COMPUTE_VALUE: tl.constexpr, DETERMINISTIC: tl.constexpr,
    D: tl.constexpr, SPLIT: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr,
):
    """x [B, I] -> dist [B, NL or 2A], actions [B, A] (int64) or [B, A] float, logp [B],
    value [B] (COMPUTE_VALUE); critic input xc [B, IC] when not SHARED."""
    DH: tl.constexpr = D // SPLIT
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    cols = tl.arange(0, DH)

    # actor encoder -> latent (kept for a shared value head)
    h0 = _load_rows(x_ptr, rows, B, I, stride_xb, stride_xi, 0, DH)
    h1 = h0
    if SPLIT == 2:
        h1 = _load_rows(x_ptr, rows, B, I, stride_xb, stride_xi, DH, DH)
    h0, h1 = _layers(h0, h1, w_ptr, b_ptr, 0, N_ENC, ENC_ACT, DH, D, SPLIT, PRECISION)
    lat0, lat1 = h0, h1

    # pi head
    p0, p1 = _layers(h0, h1, w_ptr, b_ptr, PI0, N_PI_HID, HEAD_ACT, DH, D, SPLIT, PRECISION)
    out, _u = _dense_tile(p0, p1, w_ptr + PI_OUT * D * D, b_ptr + PI_OUT * D, DH, D, SPLIT, 0,
                          PRECISION)
    seed = tl.load(seed_ptr)
    if DIST == 2:
        valid = row_ok[:, None] & (cols[None, :] < A)
        if FREE_LOG_STD:
            ls = tl.zeros((BLOCK_B, DH), dtype=tl.float32) + tl.load(
                logstd_ptr + cols, mask=cols < A, other=0.0).to(tl.float32)[None, :]
        else:
            ls, _u = _dense_tile(p0, p1, w_ptr + PI_LS * D * D, b_ptr + PI_LS * D, DH, D, SPLIT, 0,
                                 PRECISION)
        if CLIP:
            ls = tl.minimum(tl.maximum(ls, -log_std_clip), log_std_clip)
        bad = valid & ((out != out) | (tl.abs(out) == float("inf"))
                       | (ls != ls) | (tl.abs(ls) == float("inf")))
        dbase = dist_ptr + rows[:, None] * (2 * A)
        tl.store(dbase + cols[None, :], out, mask=valid)
        tl.store(dbase + A + cols[None, :], ls, mask=valid)
        if DETERMINISTIC:
            eps = tl.zeros((BLOCK_B, DH), dtype=tl.float32)
        else:
            eps = tl.randn(seed, rows[:, None] * A + cols[None, :])
        act = out + tl.exp(ls) * eps
        lp = tl.sum(tl.where(valid, -0.5 * eps * eps - ls - 0.9189385332046727, 0.0), axis=1)
        tl.store(act_ptr + rows[:, None] * A + cols[None, :], act, mask=valid)
        tl.store(logp_ptr + rows, lp, mask=row_ok)
    else:
        valid = row_ok[:, None] & (cols[None, :] < NL)
        bad = valid & ((out != out) | (tl.abs(out) == float("inf")))
        tl.store(dist_ptr + rows[:, None] * NL + cols[None, :], out, mask=valid)
        if DIST == 0:
            x = tl.where(valid, out, float("-inf"))
            a, lp, _l, _s = _categorical_row_block(x, cols, valid, seed, rows, NL, DETERMINISTIC)
            tl.store(act_ptr + rows, a.to(tl.int64), mask=row_ok)
        else:
            lp = tl.zeros((BLOCK_B,), dtype=tl.float32)
            for s in tl.static_range(NSEG):
                lo = tl.load(seg_ptr + s)
                hi = tl.load(seg_ptr + s + 1)
                seg_valid = valid & (cols[None, :] >= lo) & (cols[None, :] < hi)
                x = tl.where(seg_valid, out, float("-inf"))
                a, lps, _l, _s = _categorical_row_block(x, cols, seg_valid, seed, rows, NL,
                                                         DETERMINISTIC)
                lp += lps
                tl.store(act_ptr + rows * NSEG + s, (a - lo).to(tl.int64), mask=row_ok)
        tl.store(logp_ptr + rows, lp, mask=row_ok)
    tl.atomic_max(flag_ptr, tl.max(tl.max(bad.to(tl.int32), axis=1), axis=0))

    # value head (on the shared latent, or through the critic encoder)
    if COMPUTE_VALUE:
        if SHARED:
            v0, v1 = lat0, lat1
        else:
            v0 = _load_rows(xc_ptr, rows, B, IC, stride_cb, stride_ci, 0, DH)
            v1 = v0
            if SPLIT == 2:
                v1 = _load_rows(xc_ptr, rows, B, IC, stride_cb, stride_ci, DH, DH)
            v0, v1 = _layers(v0, v1, w_ptr, b_ptr, C0, N_CRIT, CRIT_ACT, DH, D, SPLIT, PRECISION)
        v0, v1 = _layers(v0, v1, w_ptr, b_ptr, V0, N_VF_HID, HEAD_ACT, DH, D, SPLIT, PRECISION)
        vo, _u = _dense_tile(v0, v1, w_ptr + VF_OUT * D * D, b_ptr + VF_OUT * D, DH, D, SPLIT, 0,
                             PRECISION)
        tl.store(value_ptr + rows, tl.sum(tl.where(cols[None, :] == 0, vo, 0.0), axis=1),
                 mask=row_ok)


# ----------------------------------------------------------------------------- host launcher

def policy_step(x, xc, w_packed, b_packed, meta: dict, *, seed, log_std=None, seg=None,
                deterministic: bool = False, compute_value: bool = False, out=None):
    """Launch ``_policy_step_fwd_kernel``.

    ``meta``: the constexpr layer table and sizes built by the host plan (keys N_ENC, PI0,
    N_PI_HID, PI_OUT, PI_LS, C0, N_CRIT, V0, N_VF_HID, VF_OUT, ENC_ACT, CRIT_ACT, HEAD_ACT, DIST, NSEG,
    FREE_LOG_STD, CLIP, SHARED, D, SPLIT, NL, A, log_std_clip, PRECISION).
    Returns (dist [B, NL | 2A] f32, actions, logp [B] f32, value [B] f32 or None, flag [1] i32).
    """
    import torch

    B, I = x.shape
    dev = x.device
    dist_code = meta["DIST"]
    NL, A = meta["NL"], meta["A"]
    dist = torch.empty((B, 2 * A if dist_code == 2 else NL), dtype=torch.float32, device=dev)
    if dist_code == 2:
        actions = torch.empty((B, A), dtype=torch.float32, device=dev)
    elif dist_code == 1:
        actions = torch.empty((B, meta["NSEG"]), dtype=torch.int64, device=dev)
    else:
        actions = torch.empty((B,), dtype=torch.int64, device=dev)
    logp = torch.empty((B,), dtype=torch.float32, device=dev)
    value = torch.empty((B,), dtype=torch.float32, device=dev) if compute_value else None
    flag = torch.zeros((1,), dtype=torch.int32, device=dev)
    if B == 0:
        return dist, actions, logp, value, flag
    xc = x if xc is None else xc
    D, split = meta["D"], meta["SPLIT"]
    block_b = min(32 if D * split > 128 else 64, max(16, triton.next_power_of_2(B)))
    _policy_step_fwd_kernel[(triton.cdiv(B, block_b),)](
        x, xc, w_packed, b_packed, log_std if log_std is not None else flag,
        seg if seg is not None else flag, seed,
        dist, actions, logp, value if value is not None else logp, flag,
        B, I, xc.shape[1], NL, A, float(meta["log_std_clip"]),
        x.stride(0), x.stride(1), xc.stride(0), xc.stride(1),
        N_ENC=meta["N_ENC"], PI0=meta["PI0"], N_PI_HID=meta["N_PI_HID"], PI_OUT=meta["PI_OUT"],
        PI_LS=meta["PI_LS"], C0=meta["C0"], N_CRIT=meta["N_CRIT"], V0=meta["V0"],
        N_VF_HID=meta["N_VF_HID"], VF_OUT=meta["VF_OUT"],
        ENC_ACT=meta["ENC_ACT"], CRIT_ACT=meta["CRIT_ACT"], HEAD_ACT=meta["HEAD_ACT"],
        DIST=dist_code, NSEG=meta["NSEG"], FREE_LOG_STD=meta["FREE_LOG_STD"], CLIP=meta["CLIP"],
        SHARED=meta["SHARED"], COMPUTE_VALUE=bool(compute_value),
        DETERMINISTIC=bool(deterministic), D=D, SPLIT=split, PRECISION=meta["PRECISION"],
        BLOCK_B=block_b, num_warps=4 if D <= 64 else 8,
    )
    return dist, actions, logp, value, flag

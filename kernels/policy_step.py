"""Triton policy step: encoder MLP, pi head, distribution inputs, sampling (and the value head,
through a shared or separate critic encoder) for BLOCK_B rows in ONE kernel.

Shape legend: B batch, I actor-input features (the observation, or the RNN's h' for recurrent
policies), IC critic-input features, D padded width of every packed layer, NL pi outputs
(categorical: logits; multi-categorical: all segments' logits; Gaussian: A means), A action
columns (categorical 1, multi-categorical NSEG, Gaussian A dims), NP padded head width.
Distributions (DIST, ops/codes.py): 0 categorical, 1 multi-categorical, 2 diagonal Gaussian,
3 SAC's tanh-squashed Gaussian (actions in [-1, 1], exact logp with the tanh Jacobian).

An env-runner step at batch 1..1024 through a small policy is launch- and latency-bound: the
torch module runs ~15 kernels (linears, activations, log_softmax, rand, argmax, gather, the
value head). Here each observation row is read once and only the distribution inputs,
actions, logp (and value) are written. Weights are packed once per weight version by the host
plan into one [L, D, D] buffer (transposed, zero-padded; ``kernels.mlp.pack_mlp``); layer
indices are constexpr, so the layer loops are unrolled. Two variants:

- ``_policy_step_fwd_kernel`` (D <= 64): every activation tile stays in registers.
- ``_policy_step_staged_fwd_kernel`` (D <= 256, e.g. RLlib's default [256, 256]): hidden
  layers are tiled GEMMs through this program's four scratch slots (L1/L2-resident, written
  and re-read by the same CTA), the head outputs come back into registers for the sampling.

Layer norms (``fcnet_use_layernorm`` / ``head_fcnet_use_layernorm``): bit l of the constexpr
NORM_MASK marks packed layer l as normed between its bias and its activation; gamma, beta, N and
eps come from ``ln_ptr`` (``kernels.mlp.pack_norms``: [L, LN_W = 2D + 2]). The register variant
normalises the tile in registers; the staged one writes the pre-activations to its scratch slot
and normalises from there (``kernels.mlp._dense_staged_ln``). NORM_MASK = 0 compiles to the
kernels without norms.

RNG: ``seed_ptr`` is the int64 [2] (key, counter) Philox state of ``kernels.sampling`` and the
element offsets are its (row * NL + column for categorical logits, row * A + column for Gaussian
noise), so for the same state tensor the fused step draws exactly what the standalone samplers
draw from its distribution inputs. Non-finite distribution inputs OR ERR_POLICY into flag.

Action masking (HAS_MASK, categorical kinds): mask [B, NL] of 0/1; masked logits are stored as
RLlib's FLOAT_MIN and excluded from the draw and the log-softmax (exactly what FLOAT_MIN logits
give: their exp underflows to 0); a row (segment) with nothing allowed, or a value other than
0/1, ORs ERR_MASK into flag.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..ops.codes import DISTRIBUTIONS
from .mlp import _dense_staged, _dense_staged_ln, _dense_tile, _dense_tile_ln, _layernorm_tile, _load_rows, _tanh
from .sampling import (_FLOAT_MIN, ERR_POLICY, _categorical_row_block, _ERR_MASK, _load_action_mask,
                       _none_allowed, _rng_normal)

_ERR_POLICY = tl.constexpr(ERR_POLICY)  # a jit-visible global must be constexpr

#: PolicyLayers.dist -> the kernels' DIST constexpr (ops/codes.py: _C's codes, mirrored).
DIST_CODES = DISTRIBUTIONS


@triton.jit
def _policy_tail(out, ls, rows, row_ok, cols, rng_ptr, seg_ptr, dist_ptr, act_ptr, logp_ptr, flag_ptr,
                 NL, A, log_std_clip, mask_ptr, stride_mb,
                 DIST: tl.constexpr, NSEG: tl.constexpr, CLIP: tl.constexpr,
                 DETERMINISTIC: tl.constexpr, BLOCK_B: tl.constexpr, NP: tl.constexpr,
                 HAS_MASK: tl.constexpr):
    """Distribution inputs -> stores of dist, actions, logp; non-finite inputs set flag.

    out: [BLOCK_B, NP] logits (categorical) or means (Gaussian); ls: [BLOCK_B, NP] log-stds.
    HAS_MASK (categorical kinds): mask [B, NL] (row stride stride_mb), see the module doc.
    DIST 3 (SAC's squashed Gaussian): dist gets the raw log-std; the draw uses it clamped to
    [-5, 2] (RLlib's TorchSquashedGaussian), actions tanh(u), logp minus the tanh Jacobian."""
    if DIST == 3:
        valid = row_ok[:, None] & (cols[None, :] < A)
        # every non-finite input is an error here (the clamp would hide an infinite log-std)
        bad = valid & ((out != out) | (tl.abs(out) == float("inf")) | (ls != ls) | (tl.abs(ls) == float("inf")))
        dbase = dist_ptr + rows[:, None] * (2 * A)
        tl.store(dbase + cols[None, :], out, mask=valid)
        tl.store(dbase + A + cols[None, :], ls, mask=valid)
        lsc = tl.minimum(tl.maximum(ls, -5.0), 2.0)
        if DETERMINISTIC:
            eps = tl.zeros((BLOCK_B, NP), dtype=tl.float32)
        else:
            eps = _rng_normal(rng_ptr, rows[:, None] * A + cols[None, :])
        u = out + tl.exp(lsc) * eps
        x = -2.0 * u  # log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))
        softplus = tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))
        log_det = 2.0 * (0.6931471805599453 - u - softplus)
        lp = tl.sum(tl.where(valid, -0.5 * eps * eps - lsc - 0.9189385332046727 - log_det, 0.0), axis=1)
        tl.store(act_ptr + rows[:, None] * A + cols[None, :], _tanh(u), mask=valid)
    elif DIST == 2:
        valid = row_ok[:, None] & (cols[None, :] < A)
        # NaN is checked before the clamp: max/min may return the non-NaN operand (they do on
        # the GPU), which would turn a NaN log-std into the clip bound and a finite action. An
        # infinite log-std is clamped to the bound, as torch.clamp (the reference) does.
        ls_nan = ls != ls
        if CLIP:
            ls = tl.where(ls_nan, ls, tl.minimum(tl.maximum(ls, -log_std_clip), log_std_clip))
        bad = valid & ((out != out) | (tl.abs(out) == float("inf"))
                       | ls_nan | (tl.abs(ls) == float("inf")))
        dbase = dist_ptr + rows[:, None] * (2 * A)
        tl.store(dbase + cols[None, :], out, mask=valid)
        tl.store(dbase + A + cols[None, :], ls, mask=valid)
        if DETERMINISTIC:
            eps = tl.zeros((BLOCK_B, NP), dtype=tl.float32)
        else:
            eps = _rng_normal(rng_ptr, rows[:, None] * A + cols[None, :])
        act = out + tl.exp(ls) * eps
        lp = tl.sum(tl.where(valid, -0.5 * eps * eps - ls - 0.9189385332046727, 0.0), axis=1)
        tl.store(act_ptr + rows[:, None] * A + cols[None, :], act, mask=valid)
    else:
        valid = row_ok[:, None] & (cols[None, :] < NL)
        bad = valid & ((out != out) | (tl.abs(out) == float("inf")))
        allowed = valid
        if HAS_MASK:
            allowed, mbad = _load_action_mask(mask_ptr, rows, cols, valid, stride_mb, 1)
            allowed = allowed & valid
            out = tl.where(allowed | (~valid), out, _FLOAT_MIN)
            merr = tl.max(tl.max(mbad.to(tl.int32), axis=1), axis=0)
            if DIST == 0:
                merr = tl.maximum(merr, tl.max(_none_allowed(allowed, valid, row_ok), axis=0))
            else:
                for s in tl.static_range(NSEG):
                    seg_in = valid & (cols[None, :] >= tl.load(seg_ptr + s)) & (cols[None, :] < tl.load(seg_ptr + s + 1))
                    merr = tl.maximum(merr, tl.max(_none_allowed(allowed, seg_in, row_ok), axis=0))
            tl.atomic_or(flag_ptr, merr * _ERR_MASK)
        tl.store(dist_ptr + rows[:, None] * NL + cols[None, :], out, mask=valid)
        if DIST == 0:
            x = tl.where(allowed, out, float("-inf"))
            a, lp, _l, _s = _categorical_row_block(x, cols, allowed, rng_ptr, rows, NL, DETERMINISTIC)
            tl.store(act_ptr + rows, a.to(tl.int64), mask=row_ok)
        else:
            lp = tl.zeros((BLOCK_B,), dtype=tl.float32)
            for s in tl.static_range(NSEG):
                lo = tl.load(seg_ptr + s)
                hi = tl.load(seg_ptr + s + 1)
                seg_valid = allowed & (cols[None, :] >= lo) & (cols[None, :] < hi)
                x = tl.where(seg_valid, out, float("-inf"))
                a, lps, _l, _s = _categorical_row_block(x, cols, seg_valid, rng_ptr, rows, NL,
                                                         DETERMINISTIC)
                lp += lps
                tl.store(act_ptr + rows * NSEG + s, (a - lo).to(tl.int64), mask=row_ok)
    tl.store(logp_ptr + rows, lp, mask=row_ok)
    tl.atomic_or(flag_ptr, tl.max(tl.max(bad.to(tl.int32), axis=1), axis=0) * _ERR_POLICY)


@triton.jit
def _layers(h, w_ptr, b_ptr, FIRST: tl.constexpr, N: tl.constexpr, ACT: tl.constexpr,
            D: tl.constexpr, PRECISION: tl.constexpr, ln_ptr, NORM_MASK: tl.constexpr, LN_W: tl.constexpr):
    """N packed layers from FIRST; layer j has a layer norm when bit j of NORM_MASK is set."""
    for l in tl.static_range(N):
        h = _dense_tile_ln(h, w_ptr + (FIRST + l) * D * D, b_ptr + (FIRST + l) * D, ln_ptr + (FIRST + l) * LN_W,
                           D, ACT, PRECISION, (NORM_MASK >> (FIRST + l)) & 1)
    return h


@triton.jit
def _policy_step_fwd_kernel(
    x_ptr, xc_ptr, w_ptr, b_ptr, dims_ptr, scratch_ptr, logstd_ptr, seg_ptr, seed_ptr,
    dist_ptr, act_ptr, logp_ptr, value_ptr, flag_ptr, mask_ptr,
    B, I, IC, NL, A, log_std_clip,
    stride_xb, stride_xi, stride_cb, stride_ci, stride_mb,
    N_ENC: tl.constexpr, PI0: tl.constexpr, N_PI_HID: tl.constexpr, PI_OUT: tl.constexpr,
    PI_LS: tl.constexpr, C0: tl.constexpr, N_CRIT: tl.constexpr, V0: tl.constexpr,
    N_VF_HID: tl.constexpr, VF_OUT: tl.constexpr,
    ENC_ACT: tl.constexpr, CRIT_ACT: tl.constexpr, HEAD_ACT: tl.constexpr,
    DIST: tl.constexpr, NSEG: tl.constexpr, FREE_LOG_STD: tl.constexpr, CLIP: tl.constexpr,
    SHARED: tl.constexpr, COMPUTE_VALUE: tl.constexpr, DETERMINISTIC: tl.constexpr,
    D: tl.constexpr, NP: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr,
    BN: tl.constexpr, BK: tl.constexpr, VF_SLOT: tl.constexpr,
    ln_ptr, NORM_MASK: tl.constexpr, LN_W: tl.constexpr, HAS_MASK: tl.constexpr = False,
):
    """Register-tile variant (D <= 64): x [B, I] -> dist [B, NL | 2A], actions, logp [B],
    value [B] (COMPUTE_VALUE); critic input xc [B, IC] when not SHARED. (dims_ptr, scratch_ptr,
    NP, BN, BK, VF_SLOT: unused here, shared signature with the staged variant.)"""
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    cols = tl.arange(0, D)
    h = _load_rows(x_ptr, rows, B, I, stride_xb, stride_xi, D)
    lat = _layers(h, w_ptr, b_ptr, 0, N_ENC, ENC_ACT, D, PRECISION, ln_ptr, NORM_MASK, LN_W)
    p = _layers(lat, w_ptr, b_ptr, PI0, N_PI_HID, HEAD_ACT, D, PRECISION, ln_ptr, NORM_MASK, LN_W)
    out = _dense_tile_ln(p, w_ptr + PI_OUT * D * D, b_ptr + PI_OUT * D, ln_ptr + PI_OUT * LN_W, D, 0, PRECISION,
                         (NORM_MASK >> PI_OUT) & 1)
    if DIST >= 2:  # Gaussians: the log-std half (its own packed layer) or the free log-std
        if FREE_LOG_STD:
            ls = tl.zeros((BLOCK_B, D), dtype=tl.float32) + tl.load(
                logstd_ptr + cols, mask=cols < A, other=0.0).to(tl.float32)[None, :]
        else:
            ls = _dense_tile(p, w_ptr + PI_LS * D * D, b_ptr + PI_LS * D, D, 0, PRECISION)
    else:
        ls = out
    _policy_tail(out, ls, rows, row_ok, cols, seed_ptr, seg_ptr, dist_ptr, act_ptr, logp_ptr, flag_ptr,
                 NL, A, log_std_clip, mask_ptr, stride_mb, DIST, NSEG, CLIP, DETERMINISTIC, BLOCK_B, D,
                 HAS_MASK)
    if COMPUTE_VALUE:
        if SHARED:
            v = lat
        else:
            v = _load_rows(xc_ptr, rows, B, IC, stride_cb, stride_ci, D)
            v = _layers(v, w_ptr, b_ptr, C0, N_CRIT, CRIT_ACT, D, PRECISION, ln_ptr, NORM_MASK, LN_W)
        v = _layers(v, w_ptr, b_ptr, V0, N_VF_HID, HEAD_ACT, D, PRECISION, ln_ptr, NORM_MASK, LN_W)
        vo = _dense_tile_ln(v, w_ptr + VF_OUT * D * D, b_ptr + VF_OUT * D, ln_ptr + VF_OUT * LN_W, D, 0, PRECISION,
                            (NORM_MASK >> VF_OUT) & 1)
        tl.store(value_ptr + rows, tl.sum(tl.where(cols[None, :] == 0, vo, 0.0), axis=1), mask=row_ok)


@triton.jit
def _dense_to_regs(src_ptr, s_b, s_k, src_rows, src_ok, K, w_ptr, b_ptr,
                   D: tl.constexpr, NP: tl.constexpr, PRECISION: tl.constexpr,
                   BLOCK_B: tl.constexpr, BK: tl.constexpr):
    """A head's output layer into registers: src[:, :K] @ w[:K, :NP] + b[:NP] -> [BLOCK_B, NP]."""
    rk = tl.arange(0, BK)
    rn = tl.arange(0, NP)
    acc = tl.zeros((BLOCK_B, NP), dtype=tl.float32)
    for k0 in range(0, K, BK):
        kk = k0 + rk
        a = tl.load(src_ptr + src_rows[:, None] * s_b + kk[None, :] * s_k,
                    mask=src_ok[:, None] & (kk[None, :] < K), other=0.0).to(tl.float32)
        w = tl.load(w_ptr + kk[:, None] * D + rn[None, :])
        acc = tl.dot(a, w, acc, input_precision=PRECISION)
    return acc + tl.load(b_ptr + rn)[None, :]


@triton.jit
def _staged_chain(src, s_b, s_k, src_rows, src_ok, K0, scr, local, all_rows, w_ptr, b_ptr, dims_ptr,
                  FIRST: tl.constexpr, N: tl.constexpr, SLOT0: tl.constexpr, ACT: tl.constexpr,
                  D: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr,
                  BN: tl.constexpr, BK: tl.constexpr, ln_ptr, NORM_MASK: tl.constexpr, LN_W: tl.constexpr):
    """N staged layers from src (K0 input columns) ping-ponging through slots SLOT0, SLOT0 + 1.
    The result is in slot SLOT0 + (N - 1) % 2 (nothing happens for N == 0). Layer j has a layer
    norm (``_dense_staged_ln``) when bit j of NORM_MASK is set."""
    for l in tl.static_range(N):
        n_out = tl.load(dims_ptr + 2 * (FIRST + l) + 1)
        dst = scr + (SLOT0 + l % 2) * BLOCK_B * D
        if l == 0:
            s_src, s_sb, s_sk, s_rows, s_ok, k_in = src, s_b, s_k, src_rows, src_ok, K0
        else:
            s_src, s_sb, s_sk, s_rows, s_ok = scr + (SLOT0 + (l - 1) % 2) * BLOCK_B * D, D, 1, local, all_rows
            k_in = tl.load(dims_ptr + 2 * (FIRST + l))
        if (NORM_MASK >> (FIRST + l)) & 1:
            _dense_staged_ln(s_src, s_sb, s_sk, s_rows, s_ok, k_in, dst, D, local, all_rows, n_out,
                             w_ptr + (FIRST + l) * D * D, b_ptr + (FIRST + l) * D, n_out,
                             ln_ptr + (FIRST + l) * LN_W, D, ACT, PRECISION, BLOCK_B, BN, BK)
        else:
            _dense_staged(s_src, s_sb, s_sk, s_rows, s_ok, k_in, dst, D, local, all_rows, n_out,
                          w_ptr + (FIRST + l) * D * D, b_ptr + (FIRST + l) * D, n_out,
                          D, ACT, PRECISION, BLOCK_B, BN, BK)
        tl.debug_barrier()


@triton.jit
def _policy_step_staged_fwd_kernel(
    x_ptr, xc_ptr, w_ptr, b_ptr, dims_ptr, scratch_ptr, logstd_ptr, seg_ptr, seed_ptr,
    dist_ptr, act_ptr, logp_ptr, value_ptr, flag_ptr, mask_ptr,
    B, I, IC, NL, A, log_std_clip,
    stride_xb, stride_xi, stride_cb, stride_ci, stride_mb,
    N_ENC: tl.constexpr, PI0: tl.constexpr, N_PI_HID: tl.constexpr, PI_OUT: tl.constexpr,
    PI_LS: tl.constexpr, C0: tl.constexpr, N_CRIT: tl.constexpr, V0: tl.constexpr,
    N_VF_HID: tl.constexpr, VF_OUT: tl.constexpr,
    ENC_ACT: tl.constexpr, CRIT_ACT: tl.constexpr, HEAD_ACT: tl.constexpr,
    DIST: tl.constexpr, NSEG: tl.constexpr, FREE_LOG_STD: tl.constexpr, CLIP: tl.constexpr,
    SHARED: tl.constexpr, COMPUTE_VALUE: tl.constexpr, DETERMINISTIC: tl.constexpr,
    D: tl.constexpr, NP: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr,
    BN: tl.constexpr, BK: tl.constexpr, VF_SLOT: tl.constexpr,
    ln_ptr, NORM_MASK: tl.constexpr, LN_W: tl.constexpr, HAS_MASK: tl.constexpr = False,
):
    """Staged variant (D <= 256). dims: int32 [2L] = (K_pad, N_pad) per packed layer; scratch:
    [programs, 4, BLOCK_B, D] f32. Slots 0/1: actor encoder; 2/3: pi hidden, then the critic
    encoder; the value head's hidden layers use VF_SLOT, VF_SLOT + 1: the pair not holding
    its input (2 when SHARED, else 0)."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    local = tl.arange(0, BLOCK_B)
    row_ok = rows < B
    all_rows = local < BLOCK_B
    cols = tl.arange(0, NP)
    scr = scratch_ptr + pid * (4 * BLOCK_B * D)

    _staged_chain(x_ptr, stride_xb, stride_xi, rows, row_ok, I, scr, local, all_rows, w_ptr, b_ptr,
                  dims_ptr, 0, N_ENC, 0, ENC_ACT, D, PRECISION, BLOCK_B, BN, BK, ln_ptr, NORM_MASK, LN_W)
    if N_ENC == 0:
        lat, lat_b, lat_k, lat_rows, lat_ok, lat_K = x_ptr, stride_xb, stride_xi, rows, row_ok, I
    else:
        lat, lat_b, lat_k, lat_rows, lat_ok = scr + ((N_ENC - 1) % 2) * BLOCK_B * D, D, 1, local, all_rows
        lat_K = tl.load(dims_ptr + 2 * (N_ENC - 1) + 1)
    _staged_chain(lat, lat_b, lat_k, lat_rows, lat_ok, lat_K, scr, local, all_rows, w_ptr, b_ptr,
                  dims_ptr, PI0, N_PI_HID, 2, HEAD_ACT, D, PRECISION, BLOCK_B, BN, BK, ln_ptr, NORM_MASK, LN_W)
    if N_PI_HID == 0:
        p, p_b, p_k, p_rows, p_ok, p_K = lat, lat_b, lat_k, lat_rows, lat_ok, lat_K
    else:
        p, p_b, p_k, p_rows, p_ok = scr + (2 + (N_PI_HID - 1) % 2) * BLOCK_B * D, D, 1, local, all_rows
        p_K = tl.load(dims_ptr + 2 * (PI0 + N_PI_HID - 1) + 1)
    out = _dense_to_regs(p, p_b, p_k, p_rows, p_ok, p_K, w_ptr + PI_OUT * D * D, b_ptr + PI_OUT * D,
                         D, NP, PRECISION, BLOCK_B, BK)
    if (NORM_MASK >> PI_OUT) & 1:
        out = _layernorm_tile(out, ln_ptr + PI_OUT * LN_W, NP, D)
    if DIST >= 2:  # Gaussians: the log-std half (its own packed layer) or the free log-std
        if FREE_LOG_STD:
            ls = tl.zeros((BLOCK_B, NP), dtype=tl.float32) + tl.load(
                logstd_ptr + cols, mask=cols < A, other=0.0).to(tl.float32)[None, :]
        else:
            ls = _dense_to_regs(p, p_b, p_k, p_rows, p_ok, p_K, w_ptr + PI_LS * D * D,
                                b_ptr + PI_LS * D, D, NP, PRECISION, BLOCK_B, BK)
    else:
        ls = out
    _policy_tail(out, ls, rows, row_ok, cols, seed_ptr, seg_ptr, dist_ptr, act_ptr, logp_ptr, flag_ptr,
                 NL, A, log_std_clip, mask_ptr, stride_mb, DIST, NSEG, CLIP, DETERMINISTIC, BLOCK_B, NP,
                 HAS_MASK)

    if COMPUTE_VALUE:
        tl.debug_barrier()  # the pi head's reads of slots 2/3 are done before they are rewritten
        if SHARED:
            v, v_b, v_k, v_rows, v_ok, v_K = lat, lat_b, lat_k, lat_rows, lat_ok, lat_K
        else:
            _staged_chain(xc_ptr, stride_cb, stride_ci, rows, row_ok, IC, scr, local, all_rows,
                          w_ptr, b_ptr, dims_ptr, C0, N_CRIT, 2, CRIT_ACT, D, PRECISION,
                          BLOCK_B, BN, BK, ln_ptr, NORM_MASK, LN_W)
            if N_CRIT == 0:
                v, v_b, v_k, v_rows, v_ok, v_K = xc_ptr, stride_cb, stride_ci, rows, row_ok, IC
            else:
                v, v_b, v_k, v_rows, v_ok = scr + (2 + (N_CRIT - 1) % 2) * BLOCK_B * D, D, 1, local, all_rows
                v_K = tl.load(dims_ptr + 2 * (C0 + N_CRIT - 1) + 1)
        _staged_chain(v, v_b, v_k, v_rows, v_ok, v_K, scr, local, all_rows, w_ptr, b_ptr,
                      dims_ptr, V0, N_VF_HID, VF_SLOT, HEAD_ACT, D, PRECISION, BLOCK_B, BN, BK, ln_ptr, NORM_MASK, LN_W)
        if N_VF_HID > 0:
            v, v_b, v_k, v_rows, v_ok = scr + (VF_SLOT + (N_VF_HID - 1) % 2) * BLOCK_B * D, D, 1, local, all_rows
            v_K = tl.load(dims_ptr + 2 * (V0 + N_VF_HID - 1) + 1)
        vo = _dense_to_regs(v, v_b, v_k, v_rows, v_ok, v_K, w_ptr + VF_OUT * D * D,
                            b_ptr + VF_OUT * D, D, 16, PRECISION, BLOCK_B, BK)
        if (NORM_MASK >> VF_OUT) & 1:
            vo = _layernorm_tile(vo, ln_ptr + VF_OUT * LN_W, 16, D)
        c16 = tl.arange(0, 16)
        tl.store(value_ptr + rows, tl.sum(tl.where(c16[None, :] == 0, vo, 0.0), axis=1), mask=row_ok)


# ----------------------------------------------------------------------------- host launcher

def layer_dims(weights, device):
    """int32 [2L]: (K_pad, N_pad) of every packed layer, rounded up to multiples of 16."""
    import torch

    vals = []
    for w in weights:
        vals += [(int(w.shape[1]) + 15) // 16 * 16, (int(w.shape[0]) + 15) // 16 * 16]
    return torch.tensor(vals, dtype=torch.int32, device=device)


def block_rows(meta: dict, B: int, staged: bool) -> int:
    """Rows per program, per variant, chosen so that no variant spills on sm_90 (ptxas -v,
    tests/test_triton_ops.py::test_policy_kernels_do_not_spill_on_sm90): 32 rows for the staged
    variant (221-246 registers), 16 for the D=64 register variant (at 32 rows, triton 3.9,
    value head on: Gaussian shared 255 registers + 244 B spill stores, multi-categorical
    shared 255 + 336 B, categorical shared 255 + 0 B; at 16 rows Gaussian uses 168-180)."""
    cap = 32
    if not staged and meta["D"] >= 64:
        cap = 16
    return min(cap, max(16, triton.next_power_of_2(max(int(B), 1))))


def policy_step(x, xc, w_packed, b_packed, dims, meta: dict, *, seed, log_std=None, seg=None,
                deterministic: bool = False, compute_value: bool = False, flag=None, ln=None, mask=None):
    """Launch the policy kernel (register variant for D <= REG_MAX_WIDTH, staged otherwise).

    ``meta``: the constexpr layer table and sizes built by the host plan (keys N_ENC, PI0,
    N_PI_HID, PI_OUT, PI_LS, C0, N_CRIT, V0, N_VF_HID, VF_OUT, ENC_ACT, CRIT_ACT, HEAD_ACT, DIST,
    NSEG, FREE_LOG_STD, CLIP, SHARED, D, NL, A, log_std_clip, PRECISION).
    ``seed``: int64 [2] (key, counter) Philox state (any tensor when deterministic); ``flag``:
    an int32 [1] device tensor to OR the error bit into (fresh zeros when None).
    ``ln``: the packed norm table (``kernels.mlp.pack_norms``) when ``meta["NORM_MASK"]`` is not 0.
    ``mask``: None or a float32 [B, NL] action mask with unit column stride (categorical kinds).
    Returns (dist [B, NL | 2A] f32, actions, logp [B] f32, value [B] f32 or None, flag [1] i32).
    """
    import torch

    from .mlp import REG_MAX_WIDTH

    B, I = x.shape
    dev = x.device
    dist_code = meta["DIST"]
    NL, A = meta["NL"], meta["A"]
    gauss = dist_code in (DIST_CODES["diag_gaussian"], DIST_CODES["squashed_gaussian"])
    dist = torch.empty((B, 2 * A if gauss else NL), dtype=torch.float32, device=dev)
    if gauss:
        actions = torch.empty((B, A), dtype=torch.float32, device=dev)
    elif dist_code == 1:
        actions = torch.empty((B, meta["NSEG"]), dtype=torch.int64, device=dev)
    else:
        actions = torch.empty((B,), dtype=torch.int64, device=dev)
    logp = torch.empty((B,), dtype=torch.float32, device=dev)
    value = torch.empty((B,), dtype=torch.float32, device=dev) if compute_value else None
    if flag is None:
        flag = torch.zeros((1,), dtype=torch.int32, device=dev)
    if B == 0:
        return dist, actions, logp, value, flag
    xc = x if xc is None else xc
    D = meta["D"]
    staged = D > REG_MAX_WIDTH
    block_b = block_rows(meta, B, staged)
    grid = (triton.cdiv(B, block_b),)
    if staged:
        kernel = _policy_step_staged_fwd_kernel
        scratch = torch.empty((grid[0], 4, block_b, D), dtype=torch.float32, device=dev)
        NP = max(16, triton.next_power_of_2(A if gauss else NL))
    else:
        kernel = _policy_step_fwd_kernel
        scratch, NP = flag, D
    kernel[grid](
        x, xc, w_packed, b_packed, dims, scratch, log_std if log_std is not None else flag,
        seg if seg is not None else flag, seed,
        dist, actions, logp, value if value is not None else logp, flag,
        mask if mask is not None else flag,
        B, I, xc.shape[1], NL, A, float(meta["log_std_clip"]),
        x.stride(0), x.stride(1), xc.stride(0), xc.stride(1), mask.stride(0) if mask is not None else 0,
        N_ENC=meta["N_ENC"], PI0=meta["PI0"], N_PI_HID=meta["N_PI_HID"], PI_OUT=meta["PI_OUT"],
        PI_LS=meta["PI_LS"], C0=meta["C0"], N_CRIT=meta["N_CRIT"], V0=meta["V0"],
        N_VF_HID=meta["N_VF_HID"], VF_OUT=meta["VF_OUT"],
        ENC_ACT=meta["ENC_ACT"], CRIT_ACT=meta["CRIT_ACT"], HEAD_ACT=meta["HEAD_ACT"],
        DIST=dist_code, NSEG=meta["NSEG"], FREE_LOG_STD=meta["FREE_LOG_STD"], CLIP=meta["CLIP"],
        SHARED=meta["SHARED"], COMPUTE_VALUE=bool(compute_value),
        DETERMINISTIC=bool(deterministic), D=D, NP=NP, PRECISION=meta["PRECISION"],
        BLOCK_B=block_b, BN=min(64, D), BK=32, VF_SLOT=2 if meta["SHARED"] else 0,
        ln_ptr=ln if ln is not None else flag, NORM_MASK=int(meta.get("NORM_MASK", 0)), LN_W=2 * D + 2,
        HAS_MASK=mask is not None, num_warps=4,
    )
    return dist, actions, logp, value, flag

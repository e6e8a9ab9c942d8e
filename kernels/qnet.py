"""Triton DQN step: encoder MLP, advantage / Q head, [dueling value head], dueling combine or
distributional expectation, action mask, argmax, epsilon coin and random action for BLOCK_B rows
in ONE kernel (the CUDA twin of csrc/qnet.h).

Shape legend: B batch, I observation features, D padded width of every packed layer, A actions,
N atoms (distributional Q; 1 = expectation), NP padded head width (>= A * N, a power of two).

An env-runner step of a DQN module in torch is ~12 launches (linears, activations, mean, add,
argmax, rand, randint, where) with host round trips for the epsilon schedule; here each
observation row is read once and only Q-values, actions and logp are written. Weights are packed
once per weight version by the host plan into one [L, D, D] buffer (``kernels.mlp.pack_mlp``);
layer indices are constexpr. Two variants, as the policy kernels (``kernels.policy_step``):

Layer norms (``fcnet_use_layernorm``): the policy kernels' ``NORM_MASK`` / norm table (one bit per
packed layer), through the same layer helpers.

- ``_qnet_step_fwd_kernel`` (D <= 64): every activation tile stays in registers.
- ``_qnet_step_staged_fwd_kernel`` (D <= 256, e.g. RLlib's default [256, 256]): hidden layers are
  tiled GEMMs through this program's four scratch slots; the head outputs come back to registers.

RNG: ``rng_ptr`` is the int64 [2] (key, counter) Philox state of ``kernels.sampling``; row r uses
element offsets 2r (the epsilon coin: u < epsilon) and 2r + 1 (the random action: the
floor(u * n_valid)-th valid action). Non-finite Q-values OR ERR_QNET into flag.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .mlp import _dense_tile, _load_rows
from .policy_step import _dense_to_regs, _layers, _staged_chain
from .sampling import _rng_uniform

#: error bit of non-finite Q-values (next to kernels.sampling's ERR_LOGITS, ERR_GAUSSIAN, ERR_POLICY)
ERR_QNET = 8
_ERR_QNET = tl.constexpr(ERR_QNET)
FLOAT_MIN = -3.4e38  # RLlib's FLOAT_MIN: the Q-value of a masked action
_FLOAT_MIN = tl.constexpr(FLOAT_MIN)  # a jit-visible global must be constexpr


@triton.jit
def _qnet_tail(out, v, rows, row_ok, cols, z_ptr, mask_ptr, rng_ptr, q_ptr, act_ptr, logp_ptr, flag_ptr,
               A, eps, NATOMS: tl.constexpr, DUELING: tl.constexpr, HAS_MASK: tl.constexpr,
               EXPLORE: tl.constexpr, BLOCK_B: tl.constexpr, NP: tl.constexpr):
    """Head outputs -> stores of q [B, A], actions [B], logp [B].

    out: [BLOCK_B, NP] advantage / Q head outputs (A * NATOMS valid columns); v: [BLOCK_B] values."""
    if NATOMS == 1:
        q = out
        if DUELING:
            mean = tl.sum(tl.where(cols[None, :] < A, out, 0.0), axis=1) / A
            q = (out - mean[:, None]) + v[:, None]
    else:
        q = tl.zeros((BLOCK_B, NP), dtype=tl.float32)
        for a in range(0, A):
            seg = (cols >= a * NATOMS) & (cols < a * NATOMS + NATOMS)
            x = tl.where(seg[None, :], out, float("-inf"))
            m = tl.max(x, axis=1)
            e = tl.where(seg[None, :], tl.exp(x - m[:, None]), 0.0)
            zz = tl.load(z_ptr + (cols - a * NATOMS), mask=seg, other=0.0)
            qa = tl.sum(e * zz[None, :], axis=1) / tl.sum(e, axis=1)
            q = tl.where(cols[None, :] == a, qa[:, None], q)
    valid = row_ok[:, None] & (cols[None, :] < A)
    bad = valid & ((q != q) | (tl.abs(q) == float("inf")))
    tl.atomic_or(flag_ptr, tl.max(tl.max(bad.to(tl.int32), axis=1), axis=0) * _ERR_QNET)
    ok = valid
    if HAS_MASK:
        mk = tl.load(mask_ptr + rows[:, None] * A + cols[None, :], mask=valid, other=0.0)
        ok = valid & (mk != 0.0)
        q = tl.where(valid & (mk == 0.0), _FLOAT_MIN, q)
    tl.store(q_ptr + rows[:, None] * A + cols[None, :], q, mask=valid)
    xq = tl.where(ok, q, float("-inf"))
    mx = tl.max(xq, axis=1)
    act = tl.argmax(xq, axis=1, tie_break_left=True)
    if EXPLORE:
        coin = _rng_uniform(rng_ptr, rows * 2)
        u = _rng_uniform(rng_ptr, rows * 2 + 1)
        okn = ok.to(tl.int32)
        nvalid = tl.sum(okn, axis=1)
        k = tl.minimum((u * nvalid.to(tl.float32)).to(tl.int32), nvalid - 1)
        cums = tl.cumsum(okn, axis=1)
        rand = tl.min(tl.where(ok & (cums == (k + 1)[:, None]), cols[None, :], NP), axis=1)
        act = tl.where(coin < eps, rand, act)
    mx = tl.where(row_ok, mx, 0.0)
    s = tl.sum(tl.where(valid, tl.exp(q - mx[:, None]), 0.0), axis=1)
    s = tl.where(row_ok, s, 1.0)  # rows past B: no log(0)
    qa = tl.sum(tl.where(cols[None, :] == act[:, None], q, 0.0), axis=1)
    tl.store(act_ptr + rows, act.to(tl.int64), mask=row_ok)
    tl.store(logp_ptr + rows, (qa - mx) - tl.log(s), mask=row_ok)


@triton.jit
def _qnet_step_fwd_kernel(
    x_ptr, w_ptr, b_ptr, dims_ptr, scratch_ptr, z_ptr, mask_ptr, rng_ptr,
    q_ptr, act_ptr, logp_ptr, flag_ptr,
    B, I, A, eps, stride_xb, stride_xi,
    N_ENC: tl.constexpr, AF0: tl.constexpr, N_AF_HID: tl.constexpr, AF_OUT: tl.constexpr,
    V0: tl.constexpr, N_VF_HID: tl.constexpr, VF_OUT: tl.constexpr,
    ENC_ACT: tl.constexpr, HEAD_ACT: tl.constexpr, NATOMS: tl.constexpr, DUELING: tl.constexpr,
    HAS_MASK: tl.constexpr, EXPLORE: tl.constexpr,
    D: tl.constexpr, NP: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr,
    BN: tl.constexpr, BK: tl.constexpr, ln_ptr, NORM_MASK: tl.constexpr, LN_W: tl.constexpr,
):
    """Register-tile variant (D <= 64, NP == D). (dims_ptr, scratch_ptr, BN, BK: unused here,
    shared signature with the staged variant.)"""
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    cols = tl.arange(0, D)
    h = _load_rows(x_ptr, rows, B, I, stride_xb, stride_xi, D)
    lat = _layers(h, w_ptr, b_ptr, 0, N_ENC, ENC_ACT, D, PRECISION, ln_ptr, NORM_MASK, LN_W)
    p = _layers(lat, w_ptr, b_ptr, AF0, N_AF_HID, HEAD_ACT, D, PRECISION, ln_ptr, NORM_MASK, LN_W)
    out = _dense_tile(p, w_ptr + AF_OUT * D * D, b_ptr + AF_OUT * D, D, 0, PRECISION)
    v = tl.zeros((BLOCK_B,), dtype=tl.float32)
    if DUELING:
        if NATOMS == 1:
            hv = _layers(lat, w_ptr, b_ptr, V0, N_VF_HID, HEAD_ACT, D, PRECISION, ln_ptr, NORM_MASK, LN_W)
            vo = _dense_tile(hv, w_ptr + VF_OUT * D * D, b_ptr + VF_OUT * D, D, 0, PRECISION)
            v = tl.sum(tl.where(cols[None, :] == 0, vo, 0.0), axis=1)
    _qnet_tail(out, v, rows, row_ok, cols, z_ptr, mask_ptr, rng_ptr, q_ptr, act_ptr, logp_ptr, flag_ptr,
               A, eps, NATOMS, DUELING, HAS_MASK, EXPLORE, BLOCK_B, D)


@triton.jit
def _qnet_step_staged_fwd_kernel(
    x_ptr, w_ptr, b_ptr, dims_ptr, scratch_ptr, z_ptr, mask_ptr, rng_ptr,
    q_ptr, act_ptr, logp_ptr, flag_ptr,
    B, I, A, eps, stride_xb, stride_xi,
    N_ENC: tl.constexpr, AF0: tl.constexpr, N_AF_HID: tl.constexpr, AF_OUT: tl.constexpr,
    V0: tl.constexpr, N_VF_HID: tl.constexpr, VF_OUT: tl.constexpr,
    ENC_ACT: tl.constexpr, HEAD_ACT: tl.constexpr, NATOMS: tl.constexpr, DUELING: tl.constexpr,
    HAS_MASK: tl.constexpr, EXPLORE: tl.constexpr,
    D: tl.constexpr, NP: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr,
    BN: tl.constexpr, BK: tl.constexpr, ln_ptr, NORM_MASK: tl.constexpr, LN_W: tl.constexpr,
):
    """Staged variant (D <= 256). dims: int32 [2L] = (K_pad, N_pad) per packed layer; scratch:
    [programs, 4, BLOCK_B, D] f32. Slots 0/1: encoder; 2/3: advantage head hidden layers, then
    the value head's (after a barrier)."""
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
                  dims_ptr, AF0, N_AF_HID, 2, HEAD_ACT, D, PRECISION, BLOCK_B, BN, BK, ln_ptr, NORM_MASK, LN_W)
    if N_AF_HID == 0:
        p, p_b, p_k, p_rows, p_ok, p_K = lat, lat_b, lat_k, lat_rows, lat_ok, lat_K
    else:
        p, p_b, p_k, p_rows, p_ok = scr + (2 + (N_AF_HID - 1) % 2) * BLOCK_B * D, D, 1, local, all_rows
        p_K = tl.load(dims_ptr + 2 * (AF0 + N_AF_HID - 1) + 1)
    out = _dense_to_regs(p, p_b, p_k, p_rows, p_ok, p_K, w_ptr + AF_OUT * D * D, b_ptr + AF_OUT * D,
                         D, NP, PRECISION, BLOCK_B, BK)
    v = tl.zeros((BLOCK_B,), dtype=tl.float32)
    if DUELING:
        if NATOMS == 1:
            tl.debug_barrier()  # the advantage head's reads of slots 2/3 are done before they are rewritten
            _staged_chain(lat, lat_b, lat_k, lat_rows, lat_ok, lat_K, scr, local, all_rows, w_ptr, b_ptr,
                          dims_ptr, V0, N_VF_HID, 2, HEAD_ACT, D, PRECISION, BLOCK_B, BN, BK, ln_ptr, NORM_MASK,
                          LN_W)
            if N_VF_HID == 0:
                hv, hv_b, hv_k, hv_rows, hv_ok, hv_K = lat, lat_b, lat_k, lat_rows, lat_ok, lat_K
            else:
                hv, hv_b, hv_k, hv_rows, hv_ok = scr + (2 + (N_VF_HID - 1) % 2) * BLOCK_B * D, D, 1, local, all_rows
                hv_K = tl.load(dims_ptr + 2 * (V0 + N_VF_HID - 1) + 1)
            vo = _dense_to_regs(hv, hv_b, hv_k, hv_rows, hv_ok, hv_K, w_ptr + VF_OUT * D * D,
                                b_ptr + VF_OUT * D, D, 16, PRECISION, BLOCK_B, BK)
            c16 = tl.arange(0, 16)
            v = tl.sum(tl.where(c16[None, :] == 0, vo, 0.0), axis=1)
    _qnet_tail(out, v, rows, row_ok, cols, z_ptr, mask_ptr, rng_ptr, q_ptr, act_ptr, logp_ptr, flag_ptr,
               A, eps, NATOMS, DUELING, HAS_MASK, EXPLORE, BLOCK_B, NP)


# ----------------------------------------------------------------------------- host launcher

def qnet_block_rows(meta: dict, B: int, staged: bool, NP: int) -> int:
    """Rows per program: the policy kernels' choice (``policy_step.block_rows``), halved to 16 for
    a distributional head of NP >= 128 columns (at 32 rows: 255 registers + 44 B spill stores on
    sm_90, staged, 2 x 51 atoms, masked; tests/test_dqn_triton.py compiles these for sm_90)."""
    from .policy_step import block_rows

    bb = block_rows(meta, B, staged)
    return min(bb, 16) if meta["NATOMS"] > 1 and NP >= 128 else bb


def qnet_step(x, w_packed, b_packed, dims, meta: dict, *, seed, z=None, mask=None, epsilon: float = 0.0,
              explore: bool = False, flag=None, ln=None):
    """Launch the DQN step kernel (register variant for D <= REG_MAX_WIDTH, staged otherwise).

    ``x`` [B, I] float32 on the device; ``meta``: the constexpr layer table of the host plan
    (N_ENC, AF0, N_AF_HID, AF_OUT, V0, N_VF_HID, VF_OUT, ENC_ACT, HEAD_ACT, NATOMS, DUELING, D, A,
    PRECISION); ``seed``: int64 [2] Philox state; ``z``: the support [N] (NATOMS > 1); ``mask``:
    float32 [B, A] of 0 / 1 or None; ``explore``: draw the epsilon coin and random action; ``ln``:
    the packed norm table (``kernels.mlp.pack_norms``) when meta["NORM_MASK"] names normed layers
    (hidden and encoder layers only: the heads' output layers have none).
    Returns (q [B, A] f32, actions [B] int64, logp [B] f32, flag [1] i32).
    """
    import torch

    from .mlp import REG_MAX_WIDTH

    B, I = x.shape
    A, D = meta["A"], meta["D"]
    dev = x.device
    q = torch.empty((B, A), dtype=torch.float32, device=dev)
    actions = torch.empty((B,), dtype=torch.int64, device=dev)
    logp = torch.empty((B,), dtype=torch.float32, device=dev)
    if flag is None:
        flag = torch.zeros((1,), dtype=torch.int32, device=dev)
    if B == 0:
        return q, actions, logp, flag
    if 2 * B >= 2**31:
        raise ValueError(f"qnet_step: B = {B} rows exceed the int32 Philox offsets (split the batch)")
    staged = D > REG_MAX_WIDTH
    NP = max(16, triton.next_power_of_2(A * meta["NATOMS"])) if staged else D
    block_b = qnet_block_rows(meta, B, staged, NP)
    grid = (triton.cdiv(B, block_b),)
    if staged:
        kernel = _qnet_step_staged_fwd_kernel
        scratch = torch.empty((grid[0], 4, block_b, D), dtype=torch.float32, device=dev)
    else:
        kernel = _qnet_step_fwd_kernel
        scratch = flag
    kernel[grid](
        x, w_packed, b_packed, dims if dims is not None else flag, scratch,
        z if z is not None else q, mask if mask is not None else q, seed,
        q, actions, logp, flag,
        B, I, A, float(epsilon), x.stride(0), x.stride(1),
        N_ENC=meta["N_ENC"], AF0=meta["AF0"], N_AF_HID=meta["N_AF_HID"], AF_OUT=meta["AF_OUT"],
        V0=meta["V0"], N_VF_HID=meta["N_VF_HID"], VF_OUT=meta["VF_OUT"],
        ENC_ACT=meta["ENC_ACT"], HEAD_ACT=meta["HEAD_ACT"], NATOMS=meta["NATOMS"], DUELING=meta["DUELING"],
        HAS_MASK=mask is not None, EXPLORE=bool(explore),
        D=D, NP=NP, PRECISION=meta["PRECISION"], BLOCK_B=block_b, BN=min(64, D), BK=32,
        ln_ptr=ln if ln is not None else flag, NORM_MASK=int(meta.get("NORM_MASK", 0)), LN_W=2 * D + 2, num_warps=4,
    )
    return q, actions, logp, flag

"""Triton kernels for the MLP: a linear layer with bias + activation fused into the epilogue,
and the whole small MLP in ONE kernel.

Shape legend: B batch, I input features, H hidden units (per layer), O output features,
L number of linear layers, D padded width (power of two >= 16, the same for every layer of
the packed net), K reduction width of one linear layer, N its output width.

Memory traffic and launches are the reason for these kernels. A policy MLP at batch 1..4096
is tiny (a few hundred KB of weights); launched one layer at a time it is bound by launches and
by the round trip of every hidden activation through global memory.

- ``_fused_mlp_fwd_kernel`` (padded width D <= 64): reads each input row once, keeps the
  [BLOCK_B, D] activation tile in registers through all L layers, writes only the output.
- ``_fused_mlp_staged_fwd_kernel`` (D <= 256, e.g. RLlib's default [256, 256]): still one
  launch; each layer is a tiled GEMM whose [BLOCK_B, D] output goes to a per-program scratch
  slot that the same CTA reads back at once (L1/L2), so registers hold only a [BLOCK_B, BN]
  accumulator. (A register tile of D = 128 or 256 spills on sm_90: checked by AOT compiles.)
- ``_linear_act_fwd_kernel``: the general tiled GEMM (any size, any strides, weights read in
  ``nn.Linear``'s [N, K] layout without a copy), for wider nets and for the training forward,
  where it also stores the pre-activation that the backward needs.

Activations are passed as constexpr codes (``ACT_CODES``); all of them map 0 to 0, which is
what makes zero padding of the packed weights exact.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..ops.codes import ACTIVATIONS

#: Activation name -> constexpr code used by every kernel here (ops/codes.py: _C's codes, mirrored).
ACT_CODES = ACTIVATIONS

#: Widest padded layer that ``_fused_mlp_fwd_kernel`` keeps in registers: a [D, D] float32
#: weight tile beyond 64 spills on sm_90 (checked with AOT compiles: D=64, BLOCK_B=64, 4 warps,
#: tf32x3 -> 197 registers, no stack; D=128 -> 255 registers + stack). Up to MAX_FUSED_WIDTH
#: ``_fused_mlp_staged_fwd_kernel`` runs the whole net in one launch; beyond, one per layer.
REG_MAX_WIDTH = 64
MAX_FUSED_WIDTH = 256


@triton.jit
def _tanh(x):
    # No tanh in tl.math (and libdevice does not run in the interpreter): exp-based with a
    # Taylor branch near 0, where 1 - 2/(e^2x + 1) loses relative precision.
    ax = tl.abs(x)
    t = tl.exp(-2.0 * ax)
    big = (1.0 - t) / (1.0 + t)
    x2 = x * x
    small = ax * (1.0 + x2 * (-0.3333333333333333 + x2 * (0.13333333333333333
                  + x2 * (-0.05396825396825397 + x2 * 0.021869488536155203))))
    r = tl.where(ax < 0.125, small, big)
    return tl.where(x < 0, -r, r)


@triton.jit
def _expm1(x):
    ax = tl.abs(x)
    small = x * (1.0 + x * (0.5 + x * (0.16666666666666666 + x * (0.041666666666666664
                 + x * 0.008333333333333333))))
    return tl.where(ax < 0.03125, small, tl.exp(x) - 1.0)


@triton.jit
def _activate(x, ACT: tl.constexpr):
    if ACT == 1:
        x = _tanh(x)
    elif ACT == 2:  # NaN must propagate as in torch.relu (fmax would turn it into 0)
        x = tl.maximum(x, 0.0, propagate_nan=tl.PropagateNan.ALL)
    elif ACT == 3:
        x = x * tl.sigmoid(x)
    elif ACT == 4:
        x = tl.where(x > 0, x, _expm1(x))
    return x


@triton.jit
def _linear_act_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, z_ptr,
    M, N, K,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_ym, stride_yn,
    ACT: tl.constexpr, HAS_BIAS: tl.constexpr, STORE_Z: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y[M, N] = act(x[M, K] @ w[N, K]^T + b[N]); z (same layout as y) = the pre-activation."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        a = tl.load(x_ptr + rm[:, None] * stride_xm + kk[None, :] * stride_xk,
                    mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0).to(tl.float32)
        w = tl.load(w_ptr + rn[None, :] * stride_wn + kk[:, None] * stride_wk,
                    mask=(rn[None, :] < N) & (kk[:, None] < K), other=0.0).to(tl.float32)
        acc = tl.dot(a, w, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    out_mask = (rm[:, None] < M) & (rn[None, :] < N)
    offs = rm[:, None] * stride_ym + rn[None, :] * stride_yn
    if STORE_Z:
        tl.store(z_ptr + offs, acc, mask=out_mask)
    y = _activate(acc, ACT)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _dense_tile(h, w_ptr, b_ptr, D: tl.constexpr, ACT: tl.constexpr, PRECISION: tl.constexpr):
    """One packed layer on a register tile: h [BLOCK_B, D] -> act(h @ w + b) [BLOCK_B, D].

    w_ptr points at a [D, D] block laid out [k, n] (already transposed), b_ptr at [D]."""
    rk = tl.arange(0, D)
    w = tl.load(w_ptr + rk[:, None] * D + rk[None, :])
    a = tl.dot(h, w, input_precision=PRECISION)
    a += tl.load(b_ptr + rk)[None, :]
    return _activate(a, ACT)


@triton.jit
def _layernorm_tile(a, ln_ptr, W: tl.constexpr, D: tl.constexpr):
    """nn.LayerNorm of a [BLOCK_B, W] tile of pre-activations that are zero past the layer's N
    columns: mean and biased variance over the N columns, eps inside the square root, then
    gamma and beta (zero past N, so the padded columns stay 0). ln_ptr points at the layer's row
    of the packed norm table (``pack_norms``): [gamma (D), beta (D), N, eps] float32."""
    cols = tl.arange(0, W)
    n = tl.load(ln_ptr + 2 * D)
    eps = tl.load(ln_ptr + 2 * D + 1)
    mean = tl.sum(a, axis=1) / n
    d = tl.where(cols[None, :].to(tl.float32) < n, a - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) / n + eps)
    g = tl.load(ln_ptr + cols, mask=cols < D, other=0.0)
    b = tl.load(ln_ptr + D + cols, mask=cols < D, other=0.0)
    return d * rstd[:, None] * g[None, :] + b[None, :]


@triton.jit
def _dense_tile_ln(h, w_ptr, b_ptr, ln_ptr, D: tl.constexpr, ACT: tl.constexpr, PRECISION: tl.constexpr,
                   NORM: tl.constexpr):
    """``_dense_tile`` with an optional layer norm (NORM) between the bias and the activation."""
    rk = tl.arange(0, D)
    w = tl.load(w_ptr + rk[:, None] * D + rk[None, :])
    a = tl.dot(h, w, input_precision=PRECISION)
    a += tl.load(b_ptr + rk)[None, :]
    if NORM:
        a = _layernorm_tile(a, ln_ptr, D, D)
    return _activate(a, ACT)


@triton.jit
def _load_rows(ptr, rows, B, C, stride_b, stride_c, D: tl.constexpr):
    cols = tl.arange(0, D)
    return tl.load(ptr + rows[:, None] * stride_b + cols[None, :] * stride_c,
                   mask=(rows[:, None] < B) & (cols[None, :] < C), other=0.0).to(tl.float32)


@triton.jit
def _fused_mlp_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    B, I, O,
    stride_xb, stride_xi, stride_yb, stride_yo,
    L: tl.constexpr, D: tl.constexpr,
    HIDDEN_ACT: tl.constexpr, OUT_ACT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    """The whole MLP for BLOCK_B rows: x [B, I] -> y [B, O] through L packed layers.

    w: [L, D, D] float32, w[l, k, n] = W_l[n, k] zero-padded; b: [L, D] zero-padded. The
    [BLOCK_B, D] activation tile stays in registers from the first layer to the last."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    h = _load_rows(x_ptr, rows, B, I, stride_xb, stride_xi, D)
    for l in tl.static_range(L - 1):
        h = _dense_tile(h, w_ptr + l * D * D, b_ptr + l * D, D, HIDDEN_ACT, PRECISION)
    h = _dense_tile(h, w_ptr + (L - 1) * D * D, b_ptr + (L - 1) * D, D, OUT_ACT, PRECISION)
    cols = tl.arange(0, D)
    tl.store(y_ptr + rows[:, None] * stride_yb + cols[None, :] * stride_yo,
             h.to(y_ptr.dtype.element_ty), mask=(rows[:, None] < B) & (cols[None, :] < O))


@triton.jit
def _dense_staged(src_ptr, s_b, s_k, src_rows, src_row_ok, K,
                  dst_ptr, d_b, dst_rows, dst_mask_rows, N_STORE,
                  w_ptr, b_ptr, N,
                  D: tl.constexpr, ACT: tl.constexpr, PRECISION: tl.constexpr,
                  BLOCK_B: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """One packed layer for BLOCK_B rows, tiled: dst[:, :N] = act(src[:, :K] @ w[:K, :N] + b).

    src/dst are global (the input/output, or this program's L2-resident scratch slot); only a
    [BLOCK_B, BN] accumulator and [BK, BN] weight chunks live in registers, so any width works
    without spilling. Columns >= N_STORE are not written (the output's true width)."""
    rk = tl.arange(0, BK)
    rn = tl.arange(0, BN)
    for n0 in range(0, N, BN):
        acc = tl.zeros((BLOCK_B, BN), dtype=tl.float32)
        for k0 in range(0, K, BK):
            kk = k0 + rk
            a = tl.load(src_ptr + src_rows[:, None] * s_b + kk[None, :] * s_k,
                        mask=src_row_ok[:, None] & (kk[None, :] < K), other=0.0).to(tl.float32)
            w = tl.load(w_ptr + kk[:, None] * D + (n0 + rn)[None, :])
            acc = tl.dot(a, w, acc, input_precision=PRECISION)
        acc += tl.load(b_ptr + n0 + rn)[None, :]
        acc = _activate(acc, ACT)
        cols = n0 + rn
        tl.store(dst_ptr + dst_rows[:, None] * d_b + cols[None, :],
                 acc.to(dst_ptr.dtype.element_ty),
                 mask=dst_mask_rows[:, None] & (cols[None, :] < N_STORE))


@triton.jit
def _dense_staged_ln(src_ptr, s_b, s_k, src_rows, src_row_ok, K,
                     dst_ptr, d_b, dst_rows, dst_mask_rows, N_STORE,
                     w_ptr, b_ptr, N, ln_ptr,
                     D: tl.constexpr, ACT: tl.constexpr, PRECISION: tl.constexpr,
                     BLOCK_B: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """``_dense_staged`` with a layer norm before the activation: the pre-activations go to dst
    first (all N columns: dst must be a scratch slot of width D), then two passes over dst give
    each row's mean and variance, and a third writes act(norm(x) * gamma + beta). The same CTA
    reads back what it wrote, with a barrier between passes (and between a tile's read and its
    rewrite: the load and store layouts may give an element to different threads)."""
    rk = tl.arange(0, BK)
    rn = tl.arange(0, BN)
    n = tl.load(ln_ptr + 2 * D)
    eps = tl.load(ln_ptr + 2 * D + 1)
    s = tl.zeros((BLOCK_B,), dtype=tl.float32)
    for n0 in range(0, N, BN):
        acc = tl.zeros((BLOCK_B, BN), dtype=tl.float32)
        for k0 in range(0, K, BK):
            kk = k0 + rk
            a = tl.load(src_ptr + src_rows[:, None] * s_b + kk[None, :] * s_k,
                        mask=src_row_ok[:, None] & (kk[None, :] < K), other=0.0).to(tl.float32)
            w = tl.load(w_ptr + kk[:, None] * D + (n0 + rn)[None, :])
            acc = tl.dot(a, w, acc, input_precision=PRECISION)
        acc += tl.load(b_ptr + n0 + rn)[None, :]
        s += tl.sum(acc, axis=1)
        cols = n0 + rn
        tl.store(dst_ptr + dst_rows[:, None] * d_b + cols[None, :], acc,
                 mask=dst_mask_rows[:, None] & (cols[None, :] < N_STORE))
    mean = s / n
    tl.debug_barrier()
    ss = tl.zeros((BLOCK_B,), dtype=tl.float32)
    for n0 in range(0, N, BN):
        cols = n0 + rn
        x = tl.load(dst_ptr + dst_rows[:, None] * d_b + cols[None, :],
                    mask=dst_mask_rows[:, None] & (cols[None, :] < N_STORE), other=0.0)
        d = tl.where(cols[None, :].to(tl.float32) < n, x - mean[:, None], 0.0)
        ss += tl.sum(d * d, axis=1)
    rstd = 1.0 / tl.sqrt(ss / n + eps)
    for n0 in range(0, N, BN):
        cols = n0 + rn
        ptrs = dst_ptr + dst_rows[:, None] * d_b + cols[None, :]
        msk = dst_mask_rows[:, None] & (cols[None, :] < N_STORE)
        x = tl.load(ptrs, mask=msk, other=0.0)
        g = tl.load(ln_ptr + cols)
        b = tl.load(ln_ptr + D + cols)
        y = _activate((x - mean[:, None]) * rstd[:, None] * g[None, :] + b[None, :], ACT)
        tl.debug_barrier()
        tl.store(ptrs, y, mask=msk)


@triton.jit
def _fused_mlp_staged_fwd_kernel(
    x_ptr, w_ptr, b_ptr, dims_ptr, y_ptr, scratch_ptr,
    B, I, O,
    stride_xb, stride_xi, stride_yb,
    L: tl.constexpr, D: tl.constexpr, HIDDEN_ACT: tl.constexpr, OUT_ACT: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):
    """The whole MLP in one launch for wider nets (D up to 256): every layer a tiled GEMM over
    BLOCK_B rows whose activations go through this program's two scratch slots [2, BLOCK_B, D]
    (written and re-read by the same CTA: L1/L2, never a second launch).

    dims: int32 [L + 1] padded widths (multiples of 16): [I_pad, H_1_pad, ..., O_pad]."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    local = tl.arange(0, BLOCK_B)
    row_ok = rows < B
    all_rows = local < BLOCK_B
    scratch = scratch_ptr + pid * (2 * BLOCK_B * D)
    for l in tl.static_range(L):
        N = tl.load(dims_ptr + l + 1)
        K = tl.load(dims_ptr + l)
        if l == 0:
            src, s_b, s_k, src_rows, src_ok, K = x_ptr, stride_xb, stride_xi, rows, row_ok, I
        else:
            src, s_b, s_k, src_rows, src_ok = scratch + ((l - 1) % 2) * BLOCK_B * D, D, 1, local, all_rows
        if l == L - 1:
            _dense_staged(src, s_b, s_k, src_rows, src_ok, K, y_ptr, stride_yb, rows, row_ok, O,
                          w_ptr + l * D * D, b_ptr + l * D, N,
                          D, OUT_ACT, PRECISION, BLOCK_B, BN, BK)
        else:
            _dense_staged(src, s_b, s_k, src_rows, src_ok, K, scratch + (l % 2) * BLOCK_B * D, D,
                          local, all_rows, N, w_ptr + l * D * D, b_ptr + l * D, N,
                          D, HIDDEN_ACT, PRECISION, BLOCK_B, BN, BK)
            tl.debug_barrier()


# ----------------------------------------------------------------------------- host launchers

def _pow2_at_least_16(n: int) -> int:
    return max(16, triton.next_power_of_2(int(n)))


def _block_b(B: int) -> int:
    return min(64, _pow2_at_least_16(B))


def fused_tile_plan(widths) -> tuple[int, str] | None:
    """(D, kind) for the one-kernel MLP over layer widths [I, H_1, ..., O]: kind "regs" (the
    activation tile in registers, D <= REG_MAX_WIDTH) or "staged" (tiled layers through an
    L2-resident scratch, D <= MAX_FUSED_WIDTH); None when wider (one kernel per layer)."""
    d = _pow2_at_least_16(max(widths))
    if d <= REG_MAX_WIDTH:
        return d, "regs"
    if d <= MAX_FUSED_WIDTH:
        return d, "staged"
    return None


def padded_dims(widths, device):
    """int32 [L + 1] tensor of the widths rounded up to multiples of 16 (the staged kernels'
    per-layer loop bounds)."""
    import torch

    return torch.tensor([(int(w) + 15) // 16 * 16 for w in widths], dtype=torch.int32, device=device)


def pack_mlp(weights, biases, D: int, device=None, out=None):
    """Pack nn.Linear weights ([N, K] each) into ([L, D, D] transposed, [L, D]) float32, zero-padded.

    ``out`` = (w, b) buffers to refill in place (their shapes must match)."""
    import torch

    L = len(weights)
    device = device if device is not None else weights[0].device
    if out is None:
        w = torch.zeros((L, D, D), dtype=torch.float32, device=device)
        b = torch.zeros((L, D), dtype=torch.float32, device=device)
    else:
        w, b = out
        w.zero_()
        b.zero_()
    with torch.no_grad():
        for l, (wl, bl) in enumerate(zip(weights, biases)):
            n, k = wl.shape
            w[l, :k, :n].copy_(wl.detach().t())
            if bl is not None:
                b[l, :n].copy_(bl.detach())
    return w, b


def pack_norms(norms, D: int, device):
    """The packed norm table of a packed net: float32 [L, 2D + 2], row l = [gamma (D), beta (D),
    N, eps] of layer l's nn.LayerNorm (zeros for a layer without one; gamma / beta zero past N;
    a LayerNorm without affine weights packs ones / zeros). ``norms``: one entry per packed
    layer, None or an nn.LayerNorm. Returns (table, mask): bit l of the int mask is set when
    layer l has a norm (the kernels' NORM_MASK constexpr)."""
    import torch

    t = torch.zeros((max(len(norms), 1), 2 * D + 2), dtype=torch.float32, device=device)
    mask = 0
    with torch.no_grad():
        for l, ln in enumerate(norms):
            if ln is None:
                continue
            n = int(ln.normalized_shape[0])
            t[l, :n] = ln.weight.detach().float() if ln.weight is not None else 1.0
            if ln.bias is not None:
                t[l, D:D + n] = ln.bias.detach().float()
            t[l, 2 * D] = float(n)
            t[l, 2 * D + 1] = float(ln.eps)
            mask |= 1 << l
    return t, mask


@triton.jit
def _layernorm_act_fwd_kernel(x_ptr, g_ptr, b_ptr, y_ptr, M, N, eps, stride_xm, stride_ym,
                              HAS_G: tl.constexpr, HAS_B: tl.constexpr, ACT: tl.constexpr,
                              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """y[M, N] = act(layer_norm(x[M, N]) * g + b), one [BLOCK_M, BLOCK_N >= N] tile per program."""
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.arange(0, BLOCK_N)
    msk = (rm[:, None] < M) & (rn[None, :] < N)
    x = tl.load(x_ptr + rm[:, None] * stride_xm + rn[None, :], mask=msk, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / N
    d = tl.where(rn[None, :] < N, x - mean[:, None], 0.0)
    y = d * (1.0 / tl.sqrt(tl.sum(d * d, axis=1) / N + eps))[:, None]
    if HAS_G:
        y = y * tl.load(g_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        y = y + tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    y = _activate(y, ACT)
    tl.store(y_ptr + rm[:, None] * stride_ym + rn[None, :], y.to(y_ptr.dtype.element_ty), mask=msk)


def layernorm_act(x, ln, act: int, out_dtype=None):
    """Launch ``_layernorm_act_fwd_kernel``: x [M, N] (unit column stride) -> act(ln(x)) [M, N]
    for an nn.LayerNorm ``ln`` over N (the per-layer path of nets too wide for one kernel)."""
    import torch

    M, N = x.shape
    y = torch.empty((M, N), dtype=out_dtype or x.dtype, device=x.device)
    if M == 0:
        return y
    x = x if x.stride(1) == 1 else x.contiguous()
    BLOCK_N = _pow2_at_least_16(N)
    BLOCK_M = max(1, min(16, 4096 // BLOCK_N))
    g = ln.weight.detach() if ln.weight is not None else None
    b = ln.bias.detach() if ln.bias is not None else None
    _layernorm_act_fwd_kernel[(triton.cdiv(M, BLOCK_M),)](
        x, g if g is not None else x, b if b is not None else x, y, M, N, float(ln.eps),
        x.stride(0), y.stride(0), HAS_G=g is not None, HAS_B=b is not None, ACT=act,
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, num_warps=4,
    )
    return y


def fused_mlp_packed(x, w_packed, b_packed, out_features: int, hidden_act: int, out_act: int,
                     precision: str = "ieee", out=None):
    """Launch ``_fused_mlp_fwd_kernel``: x [B, I] (any float dtype, any strides) -> [B, O]."""
    import torch

    B, I = x.shape
    L, D, _ = w_packed.shape
    y = out if out is not None else torch.empty((B, out_features), dtype=x.dtype, device=x.device)
    if B == 0:
        return y
    BLOCK_B = _block_b(B)
    grid = (triton.cdiv(B, BLOCK_B),)
    _fused_mlp_fwd_kernel[grid](
        x, w_packed, b_packed, y, B, I, out_features,
        x.stride(0), x.stride(1), y.stride(0), y.stride(1),
        L=L, D=D, HIDDEN_ACT=hidden_act, OUT_ACT=out_act, PRECISION=precision,
        BLOCK_B=BLOCK_B, num_warps=4,
    )
    return y


def linear_act(x, w, b, act: int, precision: str = "ieee", store_preact: bool = False,
               out_dtype=None):
    """Launch ``_linear_act_fwd_kernel``: x [M, K], w [N, K], b [N] or None -> y [M, N] (and z).

    Returns y, or (y, z) with ``store_preact`` (z float32)."""
    import torch

    M, K = x.shape
    N = w.shape[0]
    y = torch.empty((M, N), dtype=out_dtype or x.dtype, device=x.device)
    z = torch.empty((M, N), dtype=torch.float32, device=x.device) if store_preact else y
    if M == 0 or N == 0:
        return (y, z) if store_preact else y
    BLOCK_M = min(64, _pow2_at_least_16(M))
    BLOCK_N = min(64, _pow2_at_least_16(N))
    BLOCK_K = min(32, _pow2_at_least_16(K))  # 64x64x32, 4 warps, tf32x3: 192 registers, no spill
    grid = (triton.cdiv(M, BLOCK_M), triton.cdiv(N, BLOCK_N))
    _linear_act_fwd_kernel[grid](
        x, w, b if b is not None else y, y, z, M, N, K,
        x.stride(0), x.stride(1), w.stride(0), w.stride(1), y.stride(0), y.stride(1),
        ACT=act, HAS_BIAS=b is not None, STORE_Z=store_preact, PRECISION=precision,
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K,
    )
    return (y, z) if store_preact else y


def fused_mlp_staged(x, w_packed, b_packed, dims, out_features: int, hidden_act: int, out_act: int,
                     precision: str = "ieee", out=None):
    """Launch ``_fused_mlp_staged_fwd_kernel``: x [B, I] -> [B, O] (one launch, any D)."""
    import torch

    B, I = x.shape
    L, D, _ = w_packed.shape
    y = out if out is not None else torch.empty((B, out_features), dtype=x.dtype, device=x.device)
    if B == 0:
        return y
    BLOCK_B = _block_b(B)
    grid = (triton.cdiv(B, BLOCK_B),)
    scratch = torch.empty((grid[0], 2, BLOCK_B, D), dtype=torch.float32, device=x.device)
    _fused_mlp_staged_fwd_kernel[grid](
        x, w_packed, b_packed, dims, y, scratch, B, I, out_features,
        x.stride(0), x.stride(1), y.stride(0),
        L=L, D=D, HIDDEN_ACT=hidden_act, OUT_ACT=out_act, PRECISION=precision,
        BLOCK_B=BLOCK_B, BN=min(64, D), BK=32, num_warps=4,
    )
    return y

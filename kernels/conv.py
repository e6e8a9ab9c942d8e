"""Triton kernel for a conv2d layer on channels-last images: an implicit GEMM (no im2col buffer),
zero padding, input scaling (uint8 frames), bias and activation fused.

Shape legend: B batch, H, W input image, C input channels, Ho, Wo output, N = Cout filters,
kh, kw kernel, sh, sw stride, pad = (left, right, top, bottom); GEMM view M = B * Ho * Wo output
pixels, K = kh * kw * C with k = (ky * kw + kx) * C + c (the order an NHWC image stores a
receptive field, so consecutive k of one pixel are mostly contiguous in memory).

Why one kernel: a policy CNN layer at B = 1..256 is small; an im2col copy would move kh * kw
times the image through global memory, and separate pad / scale / bias / activation passes
would each round-trip the activations. Here each program gathers its [BLOCK_M, BLOCK_K] input
tile straight from the (unpadded) image, masking the padding, and multiplies it with a
[BLOCK_K, BLOCK_N] tile of the filters packed once as [K, N] (``pack_filters``). The output is
written through strides, so the last layer of a stack can write the flattened features in
either HWC or CHW order at no cost.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .mlp import ACT_CODES, _activate

__all__ = ["ACT_CODES", "pack_filters", "conv2d_nhwc", "block_sizes"]


@triton.jit
def _conv2d_nhwc_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    M, H, W, C, Ho, Wo, N, K,
    sxb, sxh, sxw, sxc, syb, syh, syw, syc,
    scale,
    KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PT: tl.constexpr, PL: tl.constexpr,
    ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y[b, oy, ox, n] = act(bias[n] + sum_k xpad[b, oy*SH + ky, ox*SW + kx, c] * w[k, n])."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = rm < M
    n_ok = rn < N
    hw = Ho * Wo
    bi = (rm // hw).to(tl.int64)
    pix = rm % hw
    oy = pix // Wo
    ox = pix % Wo
    iy0 = oy * SH - PT
    ix0 = ox * SW - PL
    xrow = x_ptr + bi * sxb
    kwc = KW * C
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        k_ok = kk < K
        ky = kk // kwc
        rem = kk % kwc
        kx = rem // C
        ci = rem % C
        iy = iy0[:, None] + ky[None, :]
        ix = ix0[:, None] + kx[None, :]
        ok = m_ok[:, None] & k_ok[None, :] & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
        a = tl.load(xrow[:, None] + iy * sxh + ix * sxw + ci[None, :] * sxc, mask=ok, other=0).to(tl.float32)
        if HAS_SCALE:
            a = a * scale
        w = tl.load(w_ptr + kk[:, None] * N + rn[None, :], mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, w, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0)[None, :]
    y = _activate(acc, ACT)
    offs = (bi * syb + oy * syh + ox * syw)[:, None] + rn[None, :] * syc
    tl.store(y_ptr + offs, y, mask=m_ok[:, None] & n_ok[None, :])


def pack_filters(weight: torch.Tensor) -> torch.Tensor:
    """nn.Conv2d weight [N, C, kh, kw] -> contiguous float32 [K, N], k = (ky * kw + kx) * C + c."""
    N, C, kh, kw = weight.shape
    return weight.detach().permute(2, 3, 1, 0).reshape(kh * kw * C, N).to(torch.float32).contiguous()


def block_sizes(M: int, N: int, K: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K): N tiles up to 64 filters, M tiles of 64 pixels (fewer for tiny
    layers), K steps of 32 for 16-wide N tiles and of 16 beyond (the gathered [BLOCK_M, BLOCK_K]
    input tile's 64-bit addresses cost registers: 64x64x32 with tf32x3 needs 254 on sm_90,
    64x64x16 179, no spills either way: tests/test_conv.py); powers of two >= 16 (tl.dot)."""
    bn = max(16, min(64, triton.next_power_of_2(N)))
    bm = 64 if M >= 64 else max(16, triton.next_power_of_2(M))
    bk = 32 if (K >= 32 and bn <= 16) else 16
    return bm, bn, bk


def conv2d_nhwc(x: torch.Tensor, w_packed: torch.Tensor, bias, kh: int, kw: int, stride, pad, act: int,
                precision: str, scale=None, out: torch.Tensor = None, chw: bool = False) -> torch.Tensor:
    """One layer. x: [B, H, W, C] (any strides; float or uint8), w_packed: [kh*kw*C, N] float32
    (``pack_filters``), bias: [N] float32 or None, stride (sh, sw), pad (l, r, t, b), act: an
    ``ACT_CODES`` value, scale: None or a float applied to x after the cast. Returns out
    ([B, Ho, Wo, N] float32, fresh unless given); ``chw``: out is [B, N * Ho * Wo] and holds
    each image's NCHW flattening (a stack's last layer feeding a channels-first flatten)."""
    B, H, W, C = x.shape
    N = w_packed.shape[1]
    sh, sw = stride
    pl, pr, pt, pb = pad
    Ho, Wo = (H + pt + pb - kh) // sh + 1, (W + pl + pr - kw) // sw + 1
    K = kh * kw * C
    if out is None:
        out = torch.empty((B, N * Ho * Wo) if chw else (B, Ho, Wo, N), dtype=torch.float32, device=x.device)
    if chw:
        sy = (N * Ho * Wo, Wo, 1, Ho * Wo)
    else:
        sy = (Ho * Wo * N, Wo * N, N, 1)
    M = B * Ho * Wo
    if M == 0:
        return out
    bm, bn, bk = block_sizes(M, N, K)
    grid = (triton.cdiv(M, bm), triton.cdiv(N, bn))
    _conv2d_nhwc_fwd_kernel[grid](
        x, w_packed, bias if bias is not None else w_packed, out,
        M, H, W, C, Ho, Wo, N, K,
        *x.stride(), *sy,
        float(scale) if scale is not None else 1.0,
        KW=kw, SH=sh, SW=sw, PT=pt, PL=pl,
        ACT=act, HAS_BIAS=bias is not None, HAS_SCALE=scale is not None, PRECISION=precision,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=4,
    )
    return out

"""Argument rules of ``conv2d_nhwc`` shared by every backend and by ``fastpath.layers``: stride
and padding normalised once, output size, RLlib's "same" padding. No backend code here.

Shape legend: B batch, H, W image, C = Cin channels, Cout filters, kh, kw kernel, sh, sw stride,
pad = (left, right, top, bottom) as ``nn.ZeroPad2d``; Ho, Wo output.
"""
from __future__ import annotations

import math
from numbers import Integral

MAX_KERNEL = 1 << 12  # kernel size, stride and each padding side (csrc/bindings.cpp kMaxKernel)


def _int(v, what: str, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, Integral) or not lo <= int(v) <= MAX_KERNEL:
        raise ValueError(f"{what}: expected an integer in [{lo}, {MAX_KERNEL}], got {v!r}")
    return int(v)


def norm_stride(stride, what: str = "stride") -> tuple[int, int]:
    """int or (sh, sw), each >= 1 -> (sh, sw)."""
    if isinstance(stride, (tuple, list)):
        if len(stride) != 2:
            raise ValueError(f"{what}: expected an int or (sh, sw), got {stride!r}")
        return _int(stride[0], what, 1), _int(stride[1], what, 1)
    s = _int(stride, what, 1)
    return s, s


def norm_pad(pad, what: str = "pad") -> tuple[int, int, int, int]:
    """int (all four sides) or (left, right, top, bottom), each >= 0 (``nn.ZeroPad2d``'s order)."""
    if pad is None:
        return 0, 0, 0, 0
    if isinstance(pad, (tuple, list)):
        if len(pad) != 4:
            raise ValueError(f"{what}: expected an int or (left, right, top, bottom), got {pad!r}")
        return tuple(_int(p, what, 0) for p in pad)  # type: ignore[return-value]
    p = _int(pad, what, 0)
    return p, p, p, p


def out_size(H: int, W: int, kh: int, kw: int, stride, pad, what: str = "x") -> tuple[int, int]:
    """(Ho, Wo) of a conv over an H x W image; ValueError when the padded image is smaller than
    the kernel."""
    sh, sw = norm_stride(stride)
    pl, pr, pt, pb = norm_pad(pad)
    Hp, Wp = H + pt + pb, W + pl + pr
    if Hp < kh or Wp < kw:
        raise ValueError(f"{what}: padded image {Hp}x{Wp} is smaller than the kernel {kh}x{kw}")
    return (Hp - kh) // sh + 1, (Wp - kw) // sw + 1


def same_padding(H: int, W: int, kh: int, kw: int, stride) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    """RLlib's "same" padding (rllib/models/torch/misc.py ``same_padding``): out = ceil(in / s),
    total = (out - 1) * s + k - in, left/top = total // 2, right/bottom = the rest. Returns
    ((left, right, top, bottom), (Ho, Wo)). RLlib can produce a negative total (k < s), which
    ``nn.ZeroPad2d`` turns into cropping; that is refused here (ValueError)."""
    sh, sw = norm_stride(stride)
    Ho, Wo = math.ceil(H / sh), math.ceil(W / sw)
    ph, pw = (Ho - 1) * sh + kh - H, (Wo - 1) * sw + kw - W
    if ph < 0 or pw < 0:
        raise ValueError(f"same padding: kernel {kh}x{kw} smaller than stride {sh}x{sw} crops the image (RLlib's "
                         "ZeroPad2d with negative padding); not supported")
    return (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), (Ho, Wo)

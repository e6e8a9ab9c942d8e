"""``rf.ops.conv2d_nhwc`` on every backend against the float64 torch reference (F.pad + F.conv2d
on NCHW), tolerances calibrated against torch's own float32 error; argument errors; every ISA.

Shape legend: B batch, H, W image, C channels, Co filters, k kernel, s stride.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import rlmodule_fast as rf
from rlmodule_fast.ops import reference as ref
from rlmodule_fast.ops.conv import same_padding

INFO = rf.backend_info()
CPP = INFO["cpp"]
BACKENDS = [b for b in ("cpp", "triton") if "conv2d_nhwc" in INFO[b]["ops"]]
ISAS = [i for i in ("sse2", "avx2", "avx512") if CPP.get("available") and
        ["sse2", "avx2", "avx512"].index(i) <= ["sse2", "avx2", "avx512"].index(CPP["best_isa"])]


def _layer(C, Co, k, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    kh, kw = (k, k) if isinstance(k, int) else k
    conv = torch.nn.Conv2d(C, Co, (kh, kw), bias=bias)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(Co, C, kh, kw, generator=g) / (C * kh * kw) ** 0.5)
        if bias:
            conv.bias.copy_(torch.randn(Co, generator=g) * 0.3)
    return conv.requires_grad_(False)  # the Triton op is forward-only


def _check(got, x, w, b, s, pad, act, scale=None):
    """got vs the float64 reference; error <= 8x torch's float32 error + 2e-6."""
    xt = torch.as_tensor(x)
    x64 = xt.double()  # uint8 too: exact
    r64 = ref.conv2d_nhwc(x64, w.double(), None if b is None else b.double(), s, pad, act, scale)
    x32 = xt.float()
    r32 = ref.conv2d_nhwc(x32, w.float(), None if b is None else b.float(), s, pad, act, scale)
    g = torch.as_tensor(got).double()
    assert g.shape == r64.shape, (g.shape, r64.shape)
    err = (g - r64).abs().max().item() if g.numel() else 0.0
    terr = (r32.double() - r64).abs().max().item() if g.numel() else 0.0
    assert err <= 8 * terr + 2e-6, f"error {err:.3g} vs torch float32 {terr:.3g}"


CASES = [  # B, H, W, C, Co, k, s, pad
    (1, 10, 10, 1, 16, 5, 2, "same"),
    (3, 9, 7, 3, 5, 3, 2, (1, 0, 2, 1)),
    (2, 7, 11, 2, 33, (3, 2), (1, 2), 0),
    (1, 12, 12, 4, 17, 4, 2, "same"),
    (5, 6, 6, 7, 64, 3, 1, "same"),
    (1, 5, 5, 3, 40, 5, 1, (4, 4, 4, 4)),   # some outputs see only padding: act(bias)
    (2, 8, 8, 16, 96, 2, 2, (0, 1, 0, 1)),   # three 32-wide panels (a pair and one)
]


def _pad(case):
    B, H, W, C, Co, k, s, pad = case
    if pad == "same":
        kh, kw = (k, k) if isinstance(k, int) else k
        pad, _ = same_padding(H, W, kh, kw, s)
    return pad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}-{c[1]}x{c[2]}x{c[3]}-Co{c[4]}-k{c[5]}-s{c[6]}")
@pytest.mark.parametrize("act", ["relu", "tanh", "silu", "elu", "linear"])
def test_conv_matches_reference(backend, case, act):
    B, H, W, C, Co, k, s, _ = case
    pad = _pad(case)
    conv = _layer(C, Co, k, seed=H + Co)
    x = torch.randn(B, H, W, C, generator=torch.Generator().manual_seed(1))
    y = rf.ops.conv2d_nhwc(x, conv.weight, conv.bias, s, pad, act, backend=backend)
    assert y.dtype == torch.float32 and y.is_contiguous()
    _check(y, x, conv.weight, conv.bias, s, pad, act)


@pytest.mark.skipif(not CPP["available"], reason="cpp backend unavailable")
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[4], CASES[6]], ids=str)
def test_conv_every_isa(isa, case):
    from rlmodule_fast import _C

    B, H, W, C, Co, k, s, _ = case
    pad = _pad(case)
    conv = _layer(C, Co, k, seed=3)
    x = torch.randn(B, H, W, C)
    _C.set_isa(isa)
    try:
        y = rf.ops.conv2d_nhwc(x, conv.weight, conv.bias, s, pad, "elu", backend="cpp")
    finally:
        _C.set_isa(_C.best_isa())
    _check(y, x, conv.weight, conv.bias, s, pad, "elu")


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv_uint8_scaled_no_bias(backend):
    conv = _layer(4, 16, 4, bias=False)
    x = torch.randint(0, 256, (3, 13, 11, 4), dtype=torch.uint8)
    pad, _ = same_padding(13, 11, 4, 4, 2)
    y = rf.ops.conv2d_nhwc(x, conv.weight, None, 2, pad, "relu", scale=1 / 255, backend=backend)
    assert y.dtype == torch.float32
    _check(y, x, conv.weight, None, 2, pad, "relu", scale=1 / 255)
    y2 = rf.ops.conv2d_nhwc(x.numpy(), conv.weight, None, 2, pad, "relu", backend=backend)  # uint8, no scale
    assert isinstance(y2, np.ndarray) and y2.dtype == np.float32
    _check(torch.from_numpy(y2), x, conv.weight, None, 2, pad, "relu")


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv_float64_numpy_noncontiguous(backend):
    conv = _layer(3, 20, 3)
    base = torch.randn(2, 9, 8, 6, dtype=torch.float64)
    x = base[:, :, :, ::2]  # non-contiguous channels
    w = conv.weight.detach().double().permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)  # odd strides
    y = rf.ops.conv2d_nhwc(x, w, conv.bias.double(), (2, 1), (1, 1, 0, 2), "tanh", backend=backend)
    assert y.dtype == torch.float64
    _check(y, x, w, conv.bias, (2, 1), (1, 1, 0, 2), "tanh")
    yn = rf.ops.conv2d_nhwc(x.numpy(), w.numpy(), conv.bias.detach().numpy(), (2, 1), (1, 1, 0, 2), "tanh",
                            backend=backend)
    assert isinstance(yn, np.ndarray) and yn.dtype == np.float64
    np.testing.assert_allclose(yn, y.numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv_sees_weight_updates_and_zero_batch(backend):
    conv = _layer(2, 48, 3)  # large enough for the pack cache
    x = torch.randn(2, 6, 6, 2)
    y0 = rf.ops.conv2d_nhwc(x, conv.weight, conv.bias, 1, 1, "linear", backend=backend)
    with torch.no_grad():
        conv.weight.mul_(-2.0)
        conv.bias.add_(1.0)
    y1 = rf.ops.conv2d_nhwc(x, conv.weight, conv.bias, 1, 1, "linear", backend=backend)
    _check(y1, x, conv.weight, conv.bias, 1, 1, "linear")
    assert not torch.allclose(y0, y1)
    y = rf.ops.conv2d_nhwc(torch.zeros(0, 6, 6, 2), conv.weight, conv.bias, 1, 1, "relu", backend=backend)
    assert y.shape == (0, 6, 6, 48)


@pytest.mark.parametrize("backend", ["torch"] + BACKENDS)
@pytest.mark.parametrize("kw,match", [
    (dict(x=torch.zeros(2, 5, 5)), r"x: expected shape \[B, H, W, C\]"),
    (dict(weight=torch.zeros(4, 2, 3, 3)), r"weight: expected shape \[Cout, 3, kh, kw\]"),
    (dict(bias=torch.zeros(5)), r"bias: expected shape \[4\]"),
    (dict(stride=0), r"stride: expected an integer in \[1, 4096\], got 0"),
    (dict(stride=(1, 2, 3)), r"stride: expected an int or \(sh, sw\)"),
    (dict(pad=(1, 1, -1, 0)), r"pad: expected an integer in \[0, 4096\], got -1"),
    (dict(pad=(1, 1)), r"pad: expected an int or \(left, right, top, bottom\)"),
    (dict(x=torch.zeros(1, 2, 2, 3)), r"x: padded image 2x2 is smaller than the kernel 3x3"),
    (dict(activation="gelu"), r"activation: unknown activation 'gelu'"),
    (dict(scale=float("nan")), r"scale: expected None or a finite number"),
])
def test_conv_bad_arguments(backend, kw, match):
    args = dict(x=torch.zeros(1, 5, 5, 3), weight=torch.zeros(4, 3, 3, 3), bias=torch.zeros(4), stride=1,
                pad=0, activation="relu")
    kw = dict(kw)
    scale = kw.pop("scale", None)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        rf.ops.conv2d_nhwc(**args, scale=scale, backend=backend)


def test_same_padding_matches_rllib():
    rllib_misc = pytest.importorskip("ray.rllib.models.torch.misc")
    for H, W, k, s in [(84, 84, 8, 4), (84, 84, 4, 2), (21, 21, 4, 2), (11, 11, 11, 1), (42, 42, 4, 2),
                       (10, 10, 5, 2), (96, 96, 11, 2), (7, 9, 3, 2), (11, 11, 3, 1)]:
        want_pad, want_out = rllib_misc.same_padding((H, W), k, s)
        assert same_padding(H, W, k, k, s) == (tuple(want_pad), tuple(want_out))


def test_backend_info_lists_conv():
    assert "conv2d_nhwc" in INFO["torch"]["ops"]
    if CPP["available"]:
        assert "conv2d_nhwc" in CPP["ops"]


_CONV_SPILL_SCRIPT = r"""
import json, os, re, subprocess, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.backends.nvidia.compiler import get_ptxas
from rlmodule_fast.kernels import conv

try:
    ptxas = get_ptxas(90).path
except TypeError:  # older triton: get_ptxas() without the arch
    ptxas = get_ptxas().path
fn = conv._conv2d_nhwc_fwd_kernel
rows = []
# the block sizes the launcher picks for RLlib's stacks (84x84x4: N = 16 ... 256, K = 64 ... 3872)
for M, N, K, xty in ((1764, 16, 64, "*u8"), (441, 32, 256, "*fp32"), (121, 64, 512, "*fp32"),
                     (36, 128, 1024, "*fp32"), (121, 256, 3872, "*fp32"), (7, 5, 9, "*fp32")):
    bm, bn, bk = conv.block_sizes(M, N, K)
    c = dict(KW=4, SH=2, SW=2, PT=1, PL=1, ACT=2, HAS_BIAS=True, HAS_SCALE=xty == "*u8",
             PRECISION="tf32x3", BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
    sig = {n: ("constexpr" if n in c else (xty if n == "x_ptr" else "*fp32" if n.endswith("_ptr")
                                          else "fp32" if n == "scale" else "i32"))
           for n in fn.arg_names}
    k = triton.compile(ASTSource(fn, sig, c), target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(k.asm["ptx"])
    r = subprocess.run([ptxas, "-v", "--gpu-name", "sm_90a", f.name, "-o", os.devnull], capture_output=True, text=True)
    os.unlink(f.name)
    out = r.stdout + r.stderr
    regs = re.search(r"Used (\d+) registers", out)
    spill = re.search(r"(\d+) bytes spill stores", out)
    rows.append(dict(M=M, N=N, K=K, x=xty, block=(bm, bn, bk), rc=r.returncode,
                     n_regs=int(regs.group(1)) if regs else None,
                     spill_bytes=int(spill.group(1)) if spill else None, log=out[-300:] if r.returncode else ""))
print("SPILLS-JSON", json.dumps(rows))
"""


def test_conv_kernel_compiles_for_sm90_without_spills():
    """Compile the Triton conv kernel for sm_90 (no GPU needed: Triton's ptxas) at the block sizes
    the launcher picks for RLlib's stacks (uint8 and float32 input): no spills, <= 255 registers."""
    import json
    import os
    import subprocess
    import sys

    try:
        from triton.backends.nvidia.compiler import get_ptxas  # noqa: F401
    except ImportError as e:
        pytest.skip(f"triton's NVIDIA backend is not importable: {e}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    r = subprocess.run([sys.executable, "-c", _CONV_SPILL_SCRIPT], env=env, capture_output=True, text=True,
                       timeout=600)
    if r.returncode != 0 or "SPILLS-JSON" not in r.stdout:
        if "ptxas" in r.stderr and ("not found" in r.stderr or "No such file" in r.stderr):
            pytest.skip(f"compile for sm_90 unavailable: {r.stderr[-300:]}")
        raise AssertionError(r.stderr[-3000:])
    rows = json.loads(r.stdout.split("SPILLS-JSON", 1)[1])
    print(rows)
    bad = [row for row in rows if row["rc"] != 0 or row["spill_bytes"] is None
           or row["spill_bytes"] > 0 or row["n_regs"] > 255]
    assert not bad, bad


@pytest.mark.skipif(not CPP["available"], reason="cpp backend unavailable")
@pytest.mark.parametrize("B", [1, 3])
def test_conv_threads_bitwise_equal(B):
    """B=1 splits a large layer's output rows over the pool, B >= threads splits images: the
    result never depends on the thread count (each pixel's sum runs in one fixed order)."""
    conv = _layer(8, 40, 3, seed=11)
    x = torch.randn(B, 31, 29, 8)
    old = torch.get_num_threads()
    outs = []
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            outs.append(rf.ops.conv2d_nhwc(x, conv.weight, conv.bias, 1, 1, "silu", backend="cpp"))
    finally:
        torch.set_num_threads(old)
    for y in outs[1:]:
        assert torch.equal(y, outs[0])
    _check(outs[0], x, conv.weight, conv.bias, 1, 1, "silu")

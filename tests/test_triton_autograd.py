"""Gradients of the triton ``fused_mlp`` (its autograd Function: Triton forward, torch backward)
against the torch reference, through ``rf.ops.fused_mlp(..., backend="triton")``.

TRITON_INTERPRET=1 is set before the kernels are imported when no CUDA device is present (see
tests/conftest.py); tests marked ``cuda`` run the same checks compiled.
"""
import pytest
import torch

import rlmodule_fast as rf
from rlmodule_fast.ops import reference as ref
from rlmodule_fast.ops import triton as tri

ok, why = tri.status()
pytestmark = pytest.mark.skipif(not ok, reason=f"triton backend unavailable: {why}")
_CPU_OK = ok and tri.interpreted()
DEVICES = [
    pytest.param("cpu", id="cpu", marks=pytest.mark.skipif(
        not _CPU_OK, reason="CPU tensors need the Triton interpreter (TRITON_INTERPRET=1)")),
    pytest.param("cuda", id="cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="no CUDA device")]),
]
ACTS = ["tanh", "relu", "silu", "elu", "linear"]
CASES = [(1, [5, 17, 3]), (17, [33, 64, 17, 5]), (63, [17, 33, 1])]


def _net(widths, device, dtype=torch.float32, bias=True, seed=0):
    torch.manual_seed(seed)
    return [torch.nn.Linear(i, o, bias=bias).to(device=device, dtype=dtype)
            for i, o in zip(widths[:-1], widths[1:])]


def _grads(layers, x, act, out_act, backend):
    ws = [l.weight for l in layers]
    bs = [l.bias for l in layers]
    if backend == "reference":
        y = ref.fused_mlp(x, ws, bs, act, out_act)
    else:
        y = rf.ops.fused_mlp(x, ws, bs, act, out_act, backend=backend)
    g = torch.linspace(-1, 1, y.numel(), dtype=y.dtype, device=y.device).reshape(y.shape)
    params = [x] + ws + [b for b in bs if b is not None]
    return y, torch.autograd.grad((y * g).sum(), params)


def _rel_rms(a, b):
    return ((a - b).double().pow(2).mean().sqrt() / (b.double().pow(2).mean().sqrt() + 1e-12)).item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("B,widths", CASES, ids=[f"B{b}-W{'x'.join(map(str, w))}" for b, w in CASES])
def test_fused_mlp_gradients_match_reference(B, widths, act, device):
    """Triton forward+backward vs the float64 reference; tolerance calibrated on torch float32."""
    layers = _net(widths, device)
    layers64 = _net(widths, device, torch.float64)
    x = torch.randn(B, widths[0], device=device, requires_grad=True)
    x64 = x.detach().double().requires_grad_(True)
    out_act = "tanh" if act == "linear" else None
    y, grads = _grads(layers, x, act, out_act, "triton")
    y32, grads32 = _grads(layers, x, act, out_act, "reference")
    y64, grads64 = _grads(layers64, x64, act, out_act, "reference")
    assert y.requires_grad and y.dtype == torch.float32
    for name, a, a32, a64 in zip(["y"] + [f"grad{i}" for i in range(len(grads))],
                                 (y, *grads), (y32, *grads32), (y64, *grads64)):
        err, err32 = _rel_rms(a, a64), _rel_rms(a32, a64)
        assert err <= 8 * err32 + 1e-6, f"{name}: rel-RMS {err:.3g} vs torch-f32 {err32:.3g}"


@pytest.mark.parametrize("device", DEVICES)
def test_fused_mlp_gradients_no_bias_and_frozen_input(device):
    layers = _net([17, 33, 5], device, bias=False)
    x = torch.randn(3, 17, device=device)  # no grad for x: only the weights get one
    y = rf.ops.fused_mlp(x, [l.weight for l in layers], [None, None], "elu", backend="triton")
    y.square().sum().backward()
    got = [l.weight.grad.clone() for l in layers]
    for l in layers:
        l.weight.grad = None
    ref.fused_mlp(x, [l.weight for l in layers], [None, None], "elu").square().sum().backward()
    for g, l in zip(got, layers):
        torch.testing.assert_close(g, l.weight.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_fused_mlp_training_step_matches_reference(device):
    """Two SGD steps through the triton forward track the reference (weights shared, not copied)."""
    widths = [9, 33, 33, 4]
    a, b = _net(widths, device), _net(widths, device)
    opt_a = torch.optim.SGD([p for l in a for p in l.parameters()], lr=0.1)
    opt_b = torch.optim.SGD([p for l in b for p in l.parameters()], lr=0.1)
    x = torch.randn(17, 9, device=device)
    target = torch.randn(17, 4, device=device)
    for _ in range(2):
        for layers, opt, backend in ((a, opt_a, "triton"), (b, opt_b, "reference")):
            opt.zero_grad()
            ws, bs = [l.weight for l in layers], [l.bias for l in layers]
            y = (rf.ops.fused_mlp(x, ws, bs, "tanh", backend="triton") if backend == "triton"
                 else ref.fused_mlp(x, ws, bs, "tanh"))
            (y - target).square().mean().backward()
            opt.step()
    for la, lb in zip(a, b):
        torch.testing.assert_close(la.weight, lb.weight, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(la.bias, lb.bias, atol=1e-6, rtol=1e-5)
    with torch.no_grad():  # the inference path sees the updated weights too
        torch.testing.assert_close(
            rf.ops.fused_mlp(x, [l.weight for l in a], [l.bias for l in a], "tanh", backend="triton"),
            ref.fused_mlp(x, [l.weight for l in b], [l.bias for l in b], "tanh"), atol=2e-6, rtol=1e-5)

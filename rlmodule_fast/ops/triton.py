"""The ``triton`` backend adapter: checks arguments and launches the Triton kernels of
``rlmodule_fast.kernels`` on CUDA tensors -- or on CPU tensors when the kernels were built
under ``TRITON_INTERPRET=1`` (Triton's interpreter: slow, for tests on machines without a GPU).

Numerics: every kernel computes in float32, matmuls as 3xTF32 on GPU by default (about float32
accuracy on tensor cores; ``set_matmul_precision`` / ``set_allow_tf32``); float16/bfloat16/
float64 inputs are accepted (float64 is computed in float32) and the outputs come back in the
input's dtype. Samplers draw their Philox seed from torch's generator of the input's
device (``torch.manual_seed`` reproduces a run). ``fused_mlp`` is differentiable (an autograd
Function: Triton forward, torch backward); the samplers' logp is differentiable w.r.t. the
inputs; ``lstm_step`` / ``gru_step`` are forward-only and refuse inputs that need a gradient.
"""
from __future__ import annotations


import math
import os
import weakref
from typing import Optional, Sequence

import torch

from .reference import canonical_activation

# "policy_step" is run by fastpath.triton_plan.TritonPolicyPlan (through fastpath.PolicyPlan), not here;
# "qnet_step" (a DQN module's epsilon-greedy step) by fastpath.qnet_triton_plan.TritonQNetPlan.
OPS: frozenset = frozenset({"fused_mlp", "sample_categorical", "sample_diag_gaussian",
                            "lstm_step", "gru_step", "policy_step", "conv2d_nhwc", "qnet_step"})

#: tl.dot input precision. "tf32x3" (default) splits each float32 operand into two TF32 parts
#: and runs three tensor-core MMAs: about float32 accuracy at tensor-core speed. "ieee" is the
#: exact FMA path (on sm_90 it spills registers badly), "tf32" one MMA (~1e-3 relative error).
#: The interpreter ignores it (numpy float32 matmul).
_precision = "tf32x3"
PRECISIONS = ("tf32x3", "ieee", "tf32")


def set_matmul_precision(precision: str) -> None:
    """Choose the kernels' matmul precision: "tf32x3" (default), "ieee" or "tf32"."""
    global _precision
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    _precision = precision


def set_allow_tf32(flag: bool) -> None:
    """Let the kernels' matmuls use plain TF32 on GPU (fastest, ~1e-3 relative error), or go
    back to the default "tf32x3". Plans built before the call keep their precision."""
    set_matmul_precision("tf32" if flag else "tf32x3")


def _kernels():
    from ..kernels import mlp, rnn, sampling  # noqa: F401  (import = build of the jit objects)

    return mlp, sampling, rnn


def _interpret_env() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def _kernels_loaded() -> bool:
    import sys

    return "rlmodule_fast.kernels.mlp" in sys.modules


def rebuild_kernels() -> None:
    """Re-create every Triton kernel object (``importlib.reload`` of the kernel modules).

    Triton decides compiled vs interpreted when a function is decorated: its own library
    (tl.sigmoid, tl.rand, ...) when ``triton`` is first imported, ours when the kernel modules
    are. A test session that sets TRITON_INTERPRET=1 after our kernels (but not triton) were
    imported calls this, then lets the dispatcher re-ask ``status()``."""
    import importlib

    from ..kernels import mlp, policy_step, rnn, sampling

    for mod in (mlp, sampling, rnn, policy_step):  # dependency order: helpers first
        importlib.reload(mod)


def interpreted() -> bool:
    """True when both triton's library and our kernels are built for Triton's interpreter
    (TRITON_INTERPRET=1 set before triton and rlmodule_fast's kernels were imported)."""
    if not _kernels_loaded() and not _interpret_env():
        return False  # decide without importing triton (a later TRITON_INTERPRET=1 still works)
    mlp = _kernels()[0]
    import triton.language.standard as tls

    return all(type(f).__name__ == "InterpretedFunction"
               for f in (mlp._fused_mlp_fwd_kernel, tls.sigmoid))


def status() -> tuple[bool, str]:
    """(usable, reason). Usable on CUDA devices, or on CPU tensors under TRITON_INTERPRET=1.

    Imports triton only when it can be usable, so that asking early (``rf.backend_info()``)
    does not fix the compiled/interpreted choice before a test sets TRITON_INTERPRET."""
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed"
    cuda = torch.cuda.is_available()
    if not cuda and not _interpret_env() and not _kernels_loaded():
        return False, ("no CUDA device (torch.cuda.is_available() is False) and TRITON_INTERPRET is "
                       "not set (set TRITON_INTERPRET=1 before triton is imported to run the kernels "
                       "on CPU tensors in Triton's interpreter, slowly)")
    try:
        _kernels()
    except Exception as e:  # pragma: no cover - a broken triton install
        return False, f"importing the Triton kernels failed: {type(e).__name__}: {e}"
    if interpreted() or cuda:
        return True, ""
    if _interpret_env():
        return False, ("TRITON_INTERPRET=1 was set after triton (or rlmodule_fast's kernels) had been "
                       "imported, so they are compiled kernels, and there is no CUDA device: set it "
                       "before anything imports triton")
    return False, "no CUDA device (torch.cuda.is_available() is False) and TRITON_INTERPRET is not set"


def details() -> dict:
    """Backend-specific facts for ``rf.backend_info()``."""
    try:
        import triton

        version = triton.__version__
    except ImportError:
        return {"device": None, "interpreter": False}
    interp = interpreted()
    cuda = torch.cuda.is_available()
    if interp:
        device = "cpu (Triton interpreter, TRITON_INTERPRET=1: CPU tensors, slow; tests only)"
    elif cuda:
        device = f"cuda ({torch.cuda.get_device_name()})"
    else:
        device = None
    return {"device": device, "interpreter": interp, "version": version,
            "matmul_precision": _precision}


def manual_seed(seed: int) -> None:
    """Eager calls draw their Philox state from torch's generator of the input's device, which
    ``rf.manual_seed`` / ``torch.manual_seed`` seed. Graph-mode calls (``check=False``) use one
    persistent state per device: drop them, so that the next graph-mode call draws a new key
    from the (just seeded) torch generator -- a fixed seed reproduces both modes."""
    _rng_states.clear()


# ----------------------------------------------------------------------------- graph mode

#: per device: int32 [1] error flag the ``check=False`` calls OR their error bits into
_error_flags: dict = {}
#: per device: int64 [2] (key, counter) Philox state of the ``check=False`` calls
_rng_states: dict = {}

_ERR_WHAT = ((1, "logits (sample_categorical)"), (2, "mean_logstd (sample_diag_gaussian)"),
             (4, "action_dist_inputs (policy step)"))


def _dev_key(device) -> str:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return str(device)


def error_flag(device="cuda") -> torch.Tensor:
    """The persistent int32 [1] device flag that ``check=False`` calls on ``device`` write
    (bits: 1 categorical logits, 2 Gaussian inputs, 4 policy-step distribution inputs were
    NaN/inf). The same storage for the whole process: safe to capture in a CUDA graph."""
    k = _dev_key(device)
    f = _error_flags.get(k)
    if f is None:
        f = _error_flags[k] = torch.zeros((1,), dtype=torch.int32, device=k)
    return f


def rng_state(device="cuda") -> torch.Tensor:
    """The persistent int64 [2] (key, counter) Philox state of ``check=False`` calls on
    ``device``: the key is drawn once from torch's generator, the counter advanced on the device
    after every launch (a captured graph draws fresh numbers at each replay). Call it (or make one
    ``check=False`` call) before capturing, so that the key is drawn outside the graph."""
    k = _dev_key(device)
    st = _rng_states.get(k)
    if st is None:
        from ..kernels import sampling

        st = _rng_states[k] = sampling.draw_seed(k)
        st[1:].zero_()
    return st


def last_error(device="cuda") -> int:
    """The error bits accumulated by ``check=False`` calls on ``device`` (reads the flag: one
    4-byte device->host copy, a sync -- call it outside graph capture). 0 = no error."""
    k = _dev_key(device)
    f = _error_flags.get(k)
    return 0 if f is None else int(f.item())


def raise_if_error(device="cuda", *, reset: bool = True) -> None:
    """Raise the ValueError a checked call would have raised if any ``check=False`` call on
    ``device`` since the last reset saw NaN/inf inputs; ``reset`` clears the flag (on the
    device) either way."""
    bits = last_error(device)
    if reset and bits:
        _error_flags[_dev_key(device)].zero_()
    if bits & 8:
        raise ValueError("action_mask: a row with every action masked, or a value other than 0/1 "
                         "(reported by a check=False call)")
    if bits:
        what = ", ".join(w for b, w in _ERR_WHAT if bits & b) or f"error bits {bits}"
        raise ValueError(f"{what}: contains NaN or inf (reported by a check=False call)")


def _graph_args(device, check: bool):
    """(seed, flag) for a launch: None, None in the default checked mode (fresh seed and
    flag per call), the persistent per-device state and flag with ``check=False``."""
    if check:
        return None, None
    return rng_state(device), error_flag(device)


# ----------------------------------------------------------------------------- argument checks

def _to_tensor(a, what: str):
    if a is None or isinstance(a, torch.Tensor):
        return a
    try:
        import numpy as np

        if isinstance(a, np.ndarray):
            if any(st < 0 for st in a.strides) or not a.flags.writeable:
                a = np.array(a, order="C")  # torch.from_numpy refuses negative strides (an owned copy)
            return torch.from_numpy(a)
    except ImportError:  # pragma: no cover
        pass
    raise ValueError(f"{what}: expected a torch tensor or numpy array, got {type(a).__name__}")


def _check_float(t: torch.Tensor, what: str) -> None:
    if not t.is_floating_point():
        raise ValueError(f"{what}: expected a floating point tensor, got dtype {t.dtype}")


def _check_device(t: torch.Tensor, what: str, device: torch.device) -> None:
    if t.device != device:
        raise ValueError(f"{what}: on {t.device}, expected {device} (the device of the input)")


def _check_input_device(t: torch.Tensor, what: str) -> None:
    if t.device.type == "cuda":
        return
    if t.device.type == "cpu" and interpreted():
        return
    raise ValueError(
        f"{what}: the triton backend runs on CUDA tensors, got a tensor on {t.device}"
        + ("" if t.device.type != "cpu" else
           " (CPU tensors only under TRITON_INTERPRET=1, set before the kernels are imported)"))


def _shape_err(what: str, expected, got) -> ValueError:
    return ValueError(f"{what}: expected shape {expected}, got {tuple(got)}")


def _needs_grad(*ts) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


# ----------------------------------------------------------------------------- fused_mlp

class _PackCache:
    """Packed [L, D, D] weights of the one-kernel MLP per weight list, repacked when a weight's
    storage or version changes (optimizer step, load_state_dict) -- never stale."""

    def __init__(self, size: int = 16):
        self.size = size
        self.entries: dict = {}

    @staticmethod
    def _stamp(ts):
        return tuple((t.data_ptr(), t._version, tuple(t.shape), t.dtype) if t is not None else None
                     for t in ts)

    def get(self, weights, biases, D: int):
        from ..kernels import mlp

        key = (tuple(id(w) for w in weights), tuple(id(b) for b in biases), D)
        stamp = self._stamp(list(weights) + list(biases))
        entry = self.entries.get(key)
        if entry is not None:
            refs, old_stamp, packed = entry
            alive = all((r() if r is not None else None) is t
                        for r, t in zip(refs, list(weights) + list(biases)))
            if alive and old_stamp == stamp:
                return packed
            if alive:  # same tensors, new values: refill the buffers in place
                packed = mlp.pack_mlp(weights, biases, D, out=packed)
                self.entries[key] = (refs, stamp, packed)
                return packed
        packed = mlp.pack_mlp(weights, biases, D)
        refs = [weakref.ref(t) if t is not None else None for t in list(weights) + list(biases)]
        if len(self.entries) >= self.size:
            self.entries.pop(next(iter(self.entries)))
        self.entries[key] = (refs, stamp, packed)
        return packed


_pack_cache = _PackCache()
_dims: dict = {}


def _dims_cache(widths, device):
    from ..kernels import mlp

    key = (tuple(widths), str(device))
    d = _dims.get(key)
    if d is None:
        if len(_dims) > 64:
            _dims.clear()
        d = _dims[key] = mlp.padded_dims(widths, device)
    return d


def _check_mlp_args(x, weights, biases):
    x = _to_tensor(x, "x")
    if x.dim() != 2:
        raise ValueError(f"x: expected shape [B, I] (2-D), got {tuple(x.shape)}")
    _check_float(x, "x")
    _check_input_device(x, "x")
    weights = [_to_tensor(w, f"weights[{i}]") for i, w in enumerate(weights)]
    if biases is None:
        biases = [None] * len(weights)
    biases = [_to_tensor(b, f"biases[{i}]") for i, b in enumerate(biases)]
    if not weights:
        raise ValueError("weights: expected at least one layer, got an empty list")
    if len(biases) != len(weights):
        raise ValueError(f"biases: expected {len(weights)} entries (one per weight), got {len(biases)}")
    k = x.shape[1]
    for i, (w, b) in enumerate(zip(weights, biases)):
        if w.dim() != 2 or w.shape[1] != k:
            raise _shape_err(f"weights[{i}]", f"[H_{i}, {k}]", w.shape)
        _check_float(w, f"weights[{i}]")
        _check_device(w, f"weights[{i}]", x.device)
        if b is not None:
            if b.shape != (w.shape[0],):
                raise _shape_err(f"biases[{i}]", f"[{w.shape[0]}]", b.shape)
            _check_float(b, f"biases[{i}]")
            _check_device(b, f"biases[{i}]", x.device)
        k = w.shape[0]
    return x, weights, biases


def _act_grad(z: torch.Tensor, y: torch.Tensor, code: int) -> Optional[torch.Tensor]:
    """d act / d z given the pre-activation z and output y (float32); None = identity."""
    if code == 1:
        return 1.0 - y * y
    if code == 2:
        return (z > 0).to(z.dtype)
    if code == 3:
        s = torch.sigmoid(z)
        return s * (1.0 + z * (1.0 - s))
    if code == 4:
        return torch.where(z > 0, torch.ones_like(z), y + 1.0)
    return None


class FusedMLPFunction(torch.autograd.Function):
    """Differentiable ``fused_mlp``: forward with ``_linear_act_fwd_kernel`` per layer (keeping
    each layer's input and pre-activation), backward with torch matmuls (float32)."""

    @staticmethod
    def forward(ctx, x, hidden_code: int, out_code: int, *params):
        from ..kernels import mlp

        n = len(params) // 2
        ws, bs = params[:n], params[n:]
        h = x
        saved_h, saved_z, saved_y = [], [], []
        for i, (w, b) in enumerate(zip(ws, bs)):
            code = out_code if i == n - 1 else hidden_code
            out_dtype = x.dtype if i == n - 1 else torch.float32
            y, z = mlp.linear_act(h, w.detach(), None if b is None else b.detach(), code,
                                  _precision, store_preact=True, out_dtype=torch.float32)
            saved_h.append(h)
            saved_z.append(z)
            saved_y.append(y)
            h = y if out_dtype == torch.float32 else y.to(out_dtype)
        ctx.codes = (hidden_code, out_code)
        ctx.n = n
        ctx.has_bias = [b is not None for b in bs]
        ctx.x_dtype = x.dtype
        ctx.save_for_backward(*saved_h, *saved_z, *saved_y, *ws)
        return h

    @staticmethod
    def backward(ctx, grad_out):
        n = ctx.n
        saved = ctx.saved_tensors
        hs, zs, ys, ws = saved[:n], saved[n:2 * n], saved[2 * n:3 * n], saved[3 * n:]
        g = grad_out.to(torch.float32)
        gw, gb = [None] * n, [None] * n
        for i in range(n - 1, -1, -1):
            code = ctx.codes[1] if i == n - 1 else ctx.codes[0]
            d = _act_grad(zs[i], ys[i], code)
            if d is not None:
                g = g * d
            h = hs[i].to(torch.float32)
            w = ws[i]
            if ctx.needs_input_grad[3 + i]:
                gw[i] = (g.t() @ h).to(w.dtype)
            if ctx.has_bias[i] and ctx.needs_input_grad[3 + n + i]:
                gb[i] = g.sum(0).to(w.dtype)
            if i > 0 or ctx.needs_input_grad[0]:
                g = g @ w.to(torch.float32)
        gx = g.to(ctx.x_dtype) if ctx.needs_input_grad[0] else None
        return (gx, None, None, *gw, *gb)


def fused_mlp(x, weights: Sequence, biases: Sequence, activation: Optional[str] = "tanh",
              output_activation: Optional[str] = None):
    """Triton ``fused_mlp``: x [B, I] -> [B, H_L] in x's dtype (see ``rf.ops.fused_mlp``).

    Nets whose widths all pad to <= 256 run in one kernel (activations in registers); wider ones
    one fused linear+bias+activation kernel per layer. Differentiable when grad is enabled and
    an input requires it."""
    from ..kernels import mlp

    is_numpy = not isinstance(x, torch.Tensor)
    x, weights, biases = _check_mlp_args(x, weights, biases)
    hidden = mlp.ACT_CODES[canonical_activation(activation, what="activation")]
    out = mlp.ACT_CODES[canonical_activation(output_activation, what="output_activation")]
    if not is_numpy and _needs_grad(x, *weights, *biases):
        return FusedMLPFunction.apply(x, hidden, out, *weights, *biases)
    widths = [x.shape[1]] + [w.shape[0] for w in weights]
    plan = mlp.fused_tile_plan(widths)
    if plan is not None:
        D, kind = plan
        wp, bp = _pack_cache.get(weights, biases, D)
        if kind == "regs":
            y = mlp.fused_mlp_packed(x, wp, bp, widths[-1], hidden, out, _precision)
        else:
            dims = _dims_cache(widths, x.device)
            y = mlp.fused_mlp_staged(x, wp, bp, dims, widths[-1], hidden, out, _precision)
    else:
        h = x
        for i, (w, b) in enumerate(zip(weights, biases)):
            last = i == len(weights) - 1
            w, b = w.detach(), None if b is None else b.detach()
            h = mlp.linear_act(h, w, b, out if last else hidden, _precision,
                               out_dtype=x.dtype if last else torch.float32)
        y = h
    return y.detach().numpy() if is_numpy else y


# ----------------------------------------------------------------------------- samplers

_LOG_SQRT_2PI = 0.9189385332046727


def _check_sampler_input(t, what: str):
    t = _to_tensor(t, what)
    if t.dim() < 1:
        raise ValueError(f"{what}: expected shape [B, A], got {tuple(t.shape)}")
    _check_float(t, what)
    _check_input_device(t, what)
    return t


def mask_tensor(mask, B: int, n: int, device) -> torch.Tensor:
    """An action mask (numpy array or tensor; float, int or bool) as a float32 [B, n] tensor on
    ``device`` (no copy when it already is one). ValueError naming the shape otherwise."""
    m = _to_tensor(mask, "action_mask")
    if m.dim() == 3 and m.shape[1] == 1:
        m = m[:, 0]
    if tuple(m.shape) != (B, n):
        raise ValueError(f"action_mask: expected shape [{B}, {n}], got {tuple(m.shape)}")
    if m.is_complex():
        raise ValueError(f"action_mask: expected a numeric or bool tensor, got dtype {m.dtype}")
    return m.to(device=device, dtype=torch.float32)


def raise_mask_error(mask: torch.Tensor, segments) -> None:
    """A kernel flagged ERR_MASK: raise the ValueError naming the row (the reference's check,
    run on the error path only)."""
    from .reference import check_action_mask

    check_action_mask(mask, segments)
    raise ValueError("action_mask: rejected by the kernel (a value other than 0/1 or no allowed action)")


def sample_categorical(logits, deterministic: bool = False, *, check: bool = True, mask=None):
    """Triton Gumbel-max: logits [..., A] -> (actions [...] int64, logp [...] logits' dtype).

    One kernel (plus a seed draw from torch's generator); NaN/inf logits raise ValueError
    (checked by a flag the kernel sets: one 4-byte device->host read). ``check=False`` (graph
    mode): no host sync -- the kernel ORs its error bit into ``error_flag(device)`` (read by
    ``raise_if_error``) and draws from ``rng_state(device)``, advanced on the device."""
    from ..kernels import sampling

    is_numpy = not isinstance(logits, torch.Tensor)
    logits = _check_sampler_input(logits, "logits")
    lead, A = logits.shape[:-1], logits.shape[-1]
    if A == 0:
        raise ValueError(f"logits: expected at least one action in the last dim, got {tuple(logits.shape)}")
    flat = logits.reshape(-1, A)
    m = None if mask is None else mask_tensor(mask, flat.shape[0], A, flat.device)
    seed, gflag = _graph_args(flat.device, check)
    actions, logp, flag = sampling.sample_categorical(flat.detach(), deterministic, seed=seed,
                                                      flag=gflag, mask=m)
    if check:
        bits = int(flag.item())
        if bits & sampling.ERR_LOGITS:
            raise ValueError("logits: contains NaN or inf")
        if bits & sampling.ERR_MASK:
            raise_mask_error(m, [A])
    elif seed is not None and not deterministic and flat.shape[0]:
        sampling.advance_rng(seed)
    if _needs_grad(logits):
        from .reference import mask_logits

        lg = flat if m is None else mask_logits(flat, m)
        logp = torch.log_softmax(lg, dim=-1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    actions, logp = actions.reshape(lead), logp.reshape(lead)
    return (actions.numpy(), logp.detach().numpy()) if is_numpy else (actions, logp)


def sample_diag_gaussian(mean_logstd, deterministic: bool = False, *, check: bool = True):
    """Triton diagonal Gaussian: mean_logstd [..., 2A] -> (actions [..., A], logp [...]).

    NaN/inf inputs raise ValueError (``check=False``: see ``sample_categorical``). With grad enabled the actions are reparameterised
    (mean + std * eps, eps from the kernel) and logp is differentiable."""
    from ..kernels import sampling

    is_numpy = not isinstance(mean_logstd, torch.Tensor)
    t = _check_sampler_input(mean_logstd, "mean_logstd")
    if t.shape[-1] % 2:
        raise ValueError(f"mean_logstd: last dim must be even (mean, log_std), got {tuple(t.shape)}")
    lead, A2 = t.shape[:-1], t.shape[-1]
    flat = t.reshape(-1, A2)
    seed, gflag = _graph_args(flat.device, check)
    actions, logp, flag = sampling.sample_diag_gaussian(flat.detach(), deterministic, seed=seed,
                                                        flag=gflag)
    if check:
        if int(flag.item()):
            raise ValueError("mean_logstd: contains NaN or inf")
    elif seed is not None and not deterministic and flat.shape[0]:
        sampling.advance_rng(seed)
    if _needs_grad(t):
        mean, log_std = flat.chunk(2, dim=-1)
        eps = ((actions - mean) * torch.exp(-log_std)).detach()
        actions = mean + torch.exp(log_std) * eps
        logp = (-0.5 * eps * eps - log_std - _LOG_SQRT_2PI).sum(-1)
    actions, logp = actions.reshape(*lead, A2 // 2), logp.reshape(lead)
    return (actions.detach().numpy(), logp.detach().numpy()) if is_numpy else (actions, logp)


# ----------------------------------------------------------------------------- recurrent steps

def _check_rnn(x, h, w_ih, w_hh, gates: int, op: str):
    if x.dim() != 2:
        raise ValueError(f"x: expected shape [B, I] (2-D), got {tuple(x.shape)}")
    B, I = x.shape
    if h.dim() != 2 or h.shape[0] != B:
        raise _shape_err("h", f"[{B}, H]", h.shape)
    H = h.shape[1]
    if tuple(w_ih.shape) != (gates * H, I):
        raise _shape_err("w_ih", f"[{gates * H}, {I}]", w_ih.shape)
    if tuple(w_hh.shape) != (gates * H, H):
        raise _shape_err("w_hh", f"[{gates * H}, {H}]", w_hh.shape)
    for t, what in ((x, "x"), (h, "h"), (w_ih, "w_ih"), (w_hh, "w_hh")):
        _check_float(t, what)
        _check_device(t, what, x.device)
    _check_input_device(x, "x")
    return B, H


def _refuse_grad(op: str, *ts) -> None:
    if _needs_grad(*ts):
        raise RuntimeError(f"triton {op} is forward-only: call it under torch.no_grad() (or use "
                           f"backend='torch' when gradients are needed)")


def lstm_step(x, h, c, w_ih, w_hh, b):
    """Triton LSTM step (``nn.LSTMCell`` semantics, gates i, f, g, o), one kernel.

    x [B, I], h/c [B, H], w_ih [4H, I], w_hh [4H, H], b [4H] (= bias_ih + bias_hh) or None.
    Returns (h' [B, H], c' [B, H]) in h's / c's dtype. Forward-only."""
    from ..kernels import rnn

    is_numpy = not isinstance(x, torch.Tensor)
    x, h, c, w_ih, w_hh, b = (_to_tensor(a, n) for a, n in
                              zip((x, h, c, w_ih, w_hh, b), ("x", "h", "c", "w_ih", "w_hh", "b")))
    B, H = _check_rnn(x, h, w_ih, w_hh, 4, "lstm_step")
    if tuple(c.shape) != (B, H):
        raise _shape_err("c", f"[{B}, {H}]", c.shape)
    _check_float(c, "c")
    _check_device(c, "c", x.device)
    if b is not None:
        if tuple(b.shape) != (4 * H,):
            raise _shape_err("b", f"[{4 * H}]", b.shape)
        _check_float(b, "b")
        _check_device(b, "b", x.device)
    _refuse_grad("lstm_step", x, h, c, w_ih, w_hh, b)
    h2, c2 = rnn.lstm_step(x, h, c, w_ih, w_hh, b, _precision)
    return (h2.numpy(), c2.numpy()) if is_numpy else (h2, c2)


def gru_step(x, h, w_ih, w_hh, b_ih, b_hh):
    """Triton GRU step (``nn.GRUCell`` semantics, gates r, z, n), one kernel.

    x [B, I], h [B, H], w_ih [3H, I], w_hh [3H, H], b_ih/b_hh [3H] or None -> h' [B, H].
    Forward-only."""
    from ..kernels import rnn

    is_numpy = not isinstance(x, torch.Tensor)
    x, h, w_ih, w_hh, b_ih, b_hh = (_to_tensor(a, n) for a, n in zip(
        (x, h, w_ih, w_hh, b_ih, b_hh), ("x", "h", "w_ih", "w_hh", "b_ih", "b_hh")))
    B, H = _check_rnn(x, h, w_ih, w_hh, 3, "gru_step")
    for t, what in ((b_ih, "b_ih"), (b_hh, "b_hh")):
        if t is not None:
            if tuple(t.shape) != (3 * H,):
                raise _shape_err(what, f"[{3 * H}]", t.shape)
            _check_float(t, what)
            _check_device(t, what, x.device)
    _refuse_grad("gru_step", x, h, w_ih, w_hh, b_ih, b_hh)
    h2 = rnn.gru_step(x, h, w_ih, w_hh, b_ih, b_hh, _precision)
    return h2.numpy() if is_numpy else h2


# ----------------------------------------------------------------------------- conv2d_nhwc

def conv2d_nhwc(x, weight, bias, stride, pad, activation, scale=None):
    """Triton ``conv2d_nhwc`` (see ``rf.ops.conv2d_nhwc``): one implicit-GEMM kernel, padding,
    uint8 cast + scale, bias and activation fused; x read through its strides (no copy).
    Returns [B, Ho, Wo, Cout] in x's float dtype (float32 for uint8). Forward-only."""
    from ..kernels import conv as ck
    from .conv import norm_pad, norm_stride, out_size

    is_numpy = not isinstance(x, torch.Tensor)
    x = _to_tensor(x, "x")
    weight, bias = _to_tensor(weight, "weight"), _to_tensor(bias, "bias")
    if x.dim() != 4:
        raise _shape_err("x", "[B, H, W, C]", x.shape)
    if x.dtype != torch.uint8:
        _check_float(x, "x")
    _check_input_device(x, "x")
    B, H, W, C = x.shape
    if weight.dim() != 4 or weight.shape[1] != C or min(weight.shape) < 1:
        raise _shape_err("weight", f"[Cout, {C}, kh, kw]", weight.shape)
    _check_float(weight, "weight")
    _check_device(weight, "weight", x.device)
    N, _, kh, kw = weight.shape
    if bias is not None:
        if tuple(bias.shape) != (N,):
            raise _shape_err("bias", f"[{N}]", bias.shape)
        _check_float(bias, "bias")
        _check_device(bias, "bias", x.device)
    st, pd = norm_stride(stride), norm_pad(pad)
    act = canonical_activation(activation, what="activation")
    if scale is not None and not (isinstance(scale, (int, float)) and not isinstance(scale, bool)
                                  and math.isfinite(scale)):
        raise ValueError(f"scale: expected None or a finite number, got {scale!r}")
    out_size(H, W, kh, kw, st, pd)
    _refuse_grad("conv2d_nhwc", x, weight, bias)
    xk = x if x.dtype in (torch.uint8, torch.float32) else x.float()
    b32 = None if bias is None else bias.detach().float().contiguous()
    y = ck.conv2d_nhwc(xk, ck.pack_filters(weight), b32, kh, kw, st, pd, ck.ACT_CODES[act], _precision, scale)
    if x.dtype.is_floating_point and x.dtype != torch.float32:
        y = y.to(x.dtype)
    return y.numpy() if is_numpy else y

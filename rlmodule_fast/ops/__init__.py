"""The fused hot-path ops. Each takes ``backend=`` ("auto" | "torch" | "cpp" | "triton");
``ops.dispatch`` is the one place that chooses (see its docstring for the rules)."""
from __future__ import annotations

from typing import Optional, Sequence

from . import dispatch
from .dispatch import backend_info


def fused_mlp(
    x,
    weights: Sequence,
    biases: Sequence,
    activation: Optional[str] = "tanh",
    output_activation: Optional[str] = None,
    *,
    backend: str = "auto",
):
    """A whole MLP, bias and activation fused into each layer.

    x: [B, I] float32/float64 torch tensor or numpy array; weights[l]: [H_l, H_{l-1}]
    (``nn.Linear.weight`` layout); biases[l]: [H_l] or None. ``activation`` ("tanh", "relu",
    "silu"/"swish", "elu", "linear") follows every layer but the last, which gets
    ``output_activation`` (None = linear). Returns [B, H_L], same kind (tensor/numpy) as x.

    >>> import torch, rlmodule_fast as rf
    >>> lin = torch.nn.Linear(4, 8)
    >>> rf.ops.fused_mlp(torch.randn(3, 4), [lin.weight], [lin.bias], "tanh").shape
    torch.Size([3, 8])
    """
    fn = dispatch.get("fused_mlp", backend, x)
    return fn(x, weights, biases, activation, output_activation)


__all__ = ["fused_mlp", "backend_info", "dispatch"]


def sample_categorical(logits, deterministic: bool = False, *, mask=None, backend: str = "auto", check: bool = True):
    """One action per row of logits [B, A] (float32/64 tensor or numpy).

    Returns (actions [B] int64, logp [B]); logp is log softmax(logits)[action].
    ``deterministic`` takes the argmax. NaN/inf logits raise ValueError. Stochastic draws are
    reproducible under ``rf.manual_seed`` / ``torch.manual_seed``.

    ``mask``: None or RLlib's action mask [B, A] (1 allowed, 0 masked; float, int or bool):
    masked logits count as RLlib's FLOAT_MIN (``ops.reference.mask_logits``), so a masked action
    is never drawn (nor the argmax) and logp is the log-softmax over the allowed actions. A row
    with every action masked, or a value other than 0/1, is a ValueError naming the row.

    ``check=False`` (triton backend only, else ValueError): the CUDA-graph-safe call -- no host
    sync; NaN/inf inputs set ``ops.triton.error_flag(device)`` instead of raising (read it with
    ``ops.triton.raise_if_error``), draws come from ``ops.triton.rng_state(device)``.

    >>> import torch, rlmodule_fast as rf
    >>> a, lp = rf.ops.sample_categorical(torch.zeros(2, 3), mask=torch.tensor([[1, 0, 0], [0, 1, 1]]))
    >>> int(a[0]), round(float(lp[1]), 4)
    (0, -0.6931)
    """
    fn = _getter("sample_categorical", backend, logits, check)
    return fn(logits, deterministic) if mask is None else fn(logits, deterministic, mask=mask)


def sample_diag_gaussian(mean_logstd, deterministic: bool = False, *, backend: str = "auto", check: bool = True):
    """Diagonal Gaussian draw; mean_logstd [B, 2A] = mean and log-std concatenated.

    Returns (actions [B, A], logp [B]); ``deterministic`` returns the mean. ``check=False``:
    the graph-safe triton call (as ``sample_categorical``).
    """
    return _getter("sample_diag_gaussian", backend, mean_logstd, check)(mean_logstd, deterministic)


def _getter(op: str, backend: str, example, check: bool):
    """The backend's function for ``op``; with ``check=False`` the triton one bound to
    ``check=False`` (ValueError when the dispatcher picks another backend for ``example``)."""
    fn = dispatch.get(op, backend, example)
    if check is True:
        return fn
    if check is not False:
        raise ValueError(f"check: expected a bool, got {check!r}")
    name = dispatch.choose(op, backend, example)
    if name != "triton":
        raise ValueError(f"check=False: only the triton backend has the graph-safe (unchecked) {op}; "
                         f"backend={backend!r} runs {name!r} for this input")
    return lambda *a, **k: fn(*a, check=False, **k)


def lstm_step(x, h, c, w_ih, w_hh, b, *, backend: str = "auto"):
    """One fused LSTM step (``nn.LSTMCell`` semantics, gates i, f, g, o).

    x [B, I], h/c [B, H], w_ih [4H, I], w_hh [4H, H], b [4H] = bias_ih + bias_hh (or None).
    Returns (h' [B, H], c' [B, H]).
    """
    return dispatch.get("lstm_step", backend, x)(x, h, c, w_ih, w_hh, b)


def gru_step(x, h, w_ih, w_hh, b_ih, b_hh, *, backend: str = "auto"):
    """One fused GRU step (``nn.GRUCell`` semantics, gates r, z, n).

    x [B, I], h [B, H], w_ih [3H, I], w_hh [3H, H], b_ih/b_hh [3H] or None. Returns h' [B, H].
    """
    return dispatch.get("gru_step", backend, x)(x, h, w_ih, w_hh, b_ih, b_hh)


__all__ += ["sample_categorical", "sample_diag_gaussian", "lstm_step", "gru_step"]


def manual_seed(seed: int) -> None:
    """Seed every sampler: torch's generators (CPU and CUDA) and the fused backends' RNGs.
    Always restarts the fused CPU stream, even with the seed already in use (``torch.manual_seed``
    alone re-keys it only when the seed changes; see ``ops.cpp``)."""
    import torch

    torch.manual_seed(seed)
    dispatch._backend_module("cpp")  # loaded now, so its stream is keyed from this seed
    for name in dispatch.BACKENDS:
        mod = dispatch._loaded.get(name)
        if mod is not None and hasattr(mod, "manual_seed"):
            mod.manual_seed(seed)


def get_rng_state() -> dict:
    """The fused CPU samplers' stream position ({"key", "counter", "seed"}: plain ints), for
    ``set_rng_state`` to replay the draws that follow. (The torch reference draws from torch's
    generator and the Triton samplers from torch's CUDA generator: save those with torch.)"""
    from . import cpp

    return cpp.get_rng_state()


def set_rng_state(state: dict) -> None:
    """Restore a position from ``get_rng_state()``; ValueError for anything else."""
    from . import cpp

    cpp.set_rng_state(state)


__all__ += ["manual_seed", "get_rng_state", "set_rng_state"]


def conv2d_nhwc(x, weight, bias, stride, pad, activation: Optional[str] = "relu", *, scale=None,
                backend: str = "auto"):
    """One conv layer on channels-last images: act(conv2d(ZeroPad2d(pad)(x * scale))).

    x: [B, H, W, C] float32/float64 tensor or numpy array, or uint8 (Atari frames: cast to float
    and multiplied by ``scale`` inside the kernel); weight: [Cout, C, kh, kw] (``nn.Conv2d.weight``
    layout); bias: [Cout] or None; stride: int or (sh, sw); pad: int or (left, right, top,
    bottom) zeros as ``nn.ZeroPad2d``; activation: "relu", "tanh", "silu"/"swish", "elu",
    "linear" or None. Returns [B, Ho, Wo, Cout], Ho = (H + top + bottom - kh) // sh + 1, same
    kind as x, x's float dtype (float32 for uint8).

    >>> import torch, rlmodule_fast as rf
    >>> conv = torch.nn.Conv2d(4, 16, 8, 4)
    >>> rf.ops.conv2d_nhwc(torch.rand(2, 84, 84, 4), conv.weight, conv.bias, 4, (2, 2, 2, 2), "relu").shape
    torch.Size([2, 21, 21, 16])
    """
    return dispatch.get("conv2d_nhwc", backend, x)(x, weight, bias, stride, pad, activation, scale)


__all__ += ["conv2d_nhwc"]

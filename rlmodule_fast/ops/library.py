"""The hot-path ops as ``torch.library`` custom ops (namespace ``rlmodule_fast``), so that
``torch.compile(fullgraph=True)`` / ``torch.export`` of user code calling them has no graph
break, and ``torch.library.opcheck`` passes for each.

    torch.ops.rlmodule_fast.fused_mlp(x, weights, biases, activation, output_activation) -> y
    torch.ops.rlmodule_fast.sample_categorical(logits, deterministic, seed) -> (actions, logp)
    torch.ops.rlmodule_fast.sample_diag_gaussian(mean_logstd, deterministic, seed) -> (actions, logp)
    torch.ops.rlmodule_fast.lstm_step(x, h, c, w_ih, w_hh, b) -> (h', c')
    torch.ops.rlmodule_fast.gru_step(x, h, w_ih, w_hh, b_ih, b_hh) -> h'
    torch.ops.rlmodule_fast.policy_step(obs, encoder, rnn_kind, rnn, state_in, pi, vf, activation,
                                        head_activation, dist, action_sizes, log_std_clip,
                                        deterministic, seed) -> (adi, actions, logp, vf_preds, state_out)

Shapes and dtypes are those of ``rf.ops`` (see its docstrings); tensors only (no numpy).
Each op runs on the backend ``ops.dispatch`` picks for its inputs (``auto``: the C++ kernels
for CPU tensors, Triton for CUDA; ``RLMODULE_FAST_BACKEND`` forces one), so a compiled graph
calls the same kernels as eager code. Fake (meta) implementations give the output shapes.

Randomness: the samplers and ``policy_step`` take ``seed``. ``seed >= 0``: the draw is a
function of (inputs, seed) only -- on the cpp backend the fused stream is re-keyed from
``seed`` for this call and then restored to where it was; on the torch and Triton backends
torch's generator of the device is forked and seeded -- so repeated calls agree (``opcheck`` runs an op several times and compares). ``seed = -1``:
draw from the process's stream as ``rf.ops`` does (reproducible under ``rf.manual_seed``).
While a seeded CPU call runs, unseeded fused draws made concurrently by other threads may come
from the seeded stream (valid samples, not reproducible); do not mix the two across threads.
The random ops carry ``torch.Tag.nondeterministic_seeded`` so that compilers never merge two
calls with equal arguments.

Autograd: ``fused_mlp`` is differentiable in x, weights and biases; its backward recomputes
the layers with torch ops (``_fused_mlp_backward``), so it traces into compiled graphs.
``lstm_step`` / ``gru_step`` / the samplers / ``policy_step`` are forward-only: calling them
with inputs that require grad gives outputs without grad (torch warns), as ``rf.ops`` does.
"""
from __future__ import annotations

import collections
import contextlib
import threading
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from . import dispatch
from .reference import activation_fn, canonical_activation

NAMESPACE = "rlmodule_fast"
_RANDOM = (torch.Tag.nondeterministic_seeded,)

# ---------------------------------------------------------------------------------------------
# fused_mlp (differentiable)


@torch.library.custom_op(f"{NAMESPACE}::fused_mlp", mutates_args=())
def fused_mlp(x: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor],
              activation: str, output_activation: Optional[str]) -> Tensor:
    """``rf.ops.fused_mlp`` as a custom op: x [B, I] -> [B, H_L] in x's dtype.

    One bias per layer (``Tensor[]``, no None: for a bias-free layer pass zeros). A list with
    None would be one opaque argument to autograd, and its tensors would get no gradient.
    No argument has a default: the dispatcher drops trailing arguments equal to their default
    before autograd sees them, which would change the structure the backward must return."""
    fn = dispatch.get("fused_mlp", "auto", x)
    with torch.no_grad():
        y = fn(x, list(weights), list(biases), activation, output_activation)
    return y.clone() if _aliases(y, [x, *weights, *biases]) else y


def _aliases(y: Tensor, inputs) -> bool:
    """True when y shares memory with an input (a backend may return its input for an empty
    net); custom ops must return fresh tensors."""
    ptr = y.untyped_storage().data_ptr() if y.numel() else None
    return ptr is not None and any(t is not None and t.numel() and t.untyped_storage().data_ptr() == ptr
                                   for t in inputs)


def _check_mlp(x: Tensor, weights, biases) -> None:
    if len(weights) != len(biases):
        raise ValueError(f"biases: expected {len(weights)} entries (one per weight), got {len(biases)}")
    if x.dim() != 2:
        raise ValueError(f"x: expected shape [B, I], got {tuple(x.shape)}")
    d = x.shape[1]
    for i, (w, b) in enumerate(zip(weights, biases)):
        if w.dim() != 2 or w.shape[1] != d:
            raise ValueError(f"weights[{i}]: expected shape [H, {d}], got {tuple(w.shape)}")
        if tuple(b.shape) != (w.shape[0],):
            raise ValueError(f"biases[{i}]: expected shape [{w.shape[0]}], got {tuple(b.shape)}")
        d = w.shape[0]


@fused_mlp.register_fake
def _fused_mlp_fake(x, weights, biases, activation, output_activation):
    _check_mlp(x, weights, biases)
    canonical_activation(activation, what="activation")
    canonical_activation(output_activation, what="output_activation")
    out = weights[-1].shape[0] if len(weights) else x.shape[1]
    return x.new_empty((x.shape[0], out))


def _act_grad(name: str, z: Tensor, y: Tensor, g: Tensor) -> Tensor:
    """dL/dz from dL/dy for y = act(z)."""
    if name == "tanh":
        return g * (1 - y * y)
    if name == "relu":
        return g * (z > 0).to(g.dtype)
    if name == "silu":
        s = torch.sigmoid(z)
        return g * (s * (1 + z * (1 - s)))
    if name == "elu":  # alpha = 1: y = exp(z) - 1 for z <= 0
        return g * torch.where(z > 0, torch.ones_like(z), y + 1)
    return g


def _setup_context(ctx, inputs, output):
    x, weights, biases, activation, output_activation = inputs
    ctx.n = len(weights)
    ctx.acts = (canonical_activation(activation), canonical_activation(output_activation))
    ctx.save_for_backward(x, *weights, *biases)


def _fused_mlp_backward(ctx, grad):
    """Recompute every layer with torch ops, then the chain rule by hand (no autograd inside)."""
    saved = ctx.saved_tensors
    n = ctx.n
    x, weights, biases = saved[0], list(saved[1:1 + n]), list(saved[1 + n:])
    hidden, last = ctx.acts
    hs, zs = [x], []
    h = x
    for i, (w, b) in enumerate(zip(weights, biases)):
        z = torch.nn.functional.linear(h, w, b)
        h = activation_fn(last if i == n - 1 else hidden)(z)
        zs.append(z)
        hs.append(h)
    gw, gb = [None] * n, [None] * n
    g = grad
    for i in reversed(range(n)):
        gz = _act_grad(last if i == n - 1 else hidden, zs[i], hs[i + 1], g)
        gw[i] = gz.t() @ hs[i]
        gb[i] = gz.sum(0)
        g = gz @ weights[i]
    return g, gw, gb, None, None


fused_mlp.register_autograd(_fused_mlp_backward, setup_context=_setup_context)

# ---------------------------------------------------------------------------------------------
# samplers (seeded)

_seed_lock = threading.RLock()


@contextlib.contextmanager
def _seeded(seed: int, op: str, example: Tensor):
    """Draws of ``op`` inside are a function of ``seed`` (>= 0) on whichever backend
    ``ops.dispatch`` picks for ``example``; -1: the process's stream, untouched."""
    _check_seed(seed)
    if seed == -1:
        yield
        return
    backend = dispatch.choose(op, "auto", example)
    if backend != "cpp":  # torch reference and Triton draw from torch's generator of the device
        devices = [example.device] if example.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield
        return
    from . import cpp  # the counter-based stream of the C++ samplers

    cpp._sync_rng()  # keyed from torch's seed now, so the draw below does not re-key it
    with _seed_lock:
        saved = cpp.get_rng_state()
        cpp._C.rng_seed(seed & (2**64 - 1))
        try:
            yield
        finally:
            cpp.set_rng_state(saved)


def _check_seed(seed: int) -> None:
    if seed < -1:
        raise ValueError(f"seed: expected -1 (the process's stream) or a seed >= 0, got {seed}")


@torch.library.custom_op(f"{NAMESPACE}::sample_categorical", mutates_args=(), tags=_RANDOM)
def sample_categorical(logits: Tensor, deterministic: bool = False, seed: int = -1) -> tuple[Tensor, Tensor]:
    """``rf.ops.sample_categorical``: logits [B, A] -> (actions [B] int64, logp [B])."""
    with _seeded(seed, "sample_categorical", logits):
        a, lp = dispatch.get("sample_categorical", "auto", logits)(logits, deterministic)
    return a, lp


@sample_categorical.register_fake
def _sample_categorical_fake(logits, deterministic=False, seed=-1):
    _check_seed(seed)
    if logits.dim() != 2:
        raise ValueError(f"logits: expected shape [B, A], got {tuple(logits.shape)}")
    B = logits.shape[0]
    return logits.new_empty((B,), dtype=torch.int64), logits.new_empty((B,))


@torch.library.custom_op(f"{NAMESPACE}::sample_diag_gaussian", mutates_args=(), tags=_RANDOM)
def sample_diag_gaussian(mean_logstd: Tensor, deterministic: bool = False, seed: int = -1) -> tuple[Tensor, Tensor]:
    """``rf.ops.sample_diag_gaussian``: mean_logstd [B, 2A] -> (actions [B, A], logp [B])."""
    with _seeded(seed, "sample_diag_gaussian", mean_logstd):
        a, lp = dispatch.get("sample_diag_gaussian", "auto", mean_logstd)(mean_logstd, deterministic)
    return a, lp


@sample_diag_gaussian.register_fake
def _sample_diag_gaussian_fake(mean_logstd, deterministic=False, seed=-1):
    _check_seed(seed)
    if mean_logstd.dim() != 2:
        raise ValueError(f"mean_logstd: expected shape [B, 2A], got {tuple(mean_logstd.shape)}")
    B, A2 = mean_logstd.shape
    return mean_logstd.new_empty((B, A2 // 2)), mean_logstd.new_empty((B,))

# ---------------------------------------------------------------------------------------------
# recurrent steps


@torch.library.custom_op(f"{NAMESPACE}::lstm_step", mutates_args=())
def lstm_step(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """``rf.ops.lstm_step``: (x [B, I], h [B, H], c [B, H]) -> (h' [B, H], c' [B, H])."""
    with torch.no_grad():
        h2, c2 = dispatch.get("lstm_step", "auto", x)(x, h, c, w_ih, w_hh, b)
    ins = [x, h, c, w_ih, w_hh, b]
    return (h2.clone() if _aliases(h2, ins) else h2), (c2.clone() if _aliases(c2, ins) else c2)


@lstm_step.register_fake
def _lstm_step_fake(x, h, c, w_ih, w_hh, b):
    return h.new_empty(h.shape), c.new_empty(c.shape)


@torch.library.custom_op(f"{NAMESPACE}::gru_step", mutates_args=())
def gru_step(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
             b_hh: Optional[Tensor]) -> Tensor:
    """``rf.ops.gru_step``: (x [B, I], h [B, H]) -> h' [B, H]."""
    with torch.no_grad():
        h2 = dispatch.get("gru_step", "auto", x)(x, h, w_ih, w_hh, b_ih, b_hh)
    return h2.clone() if _aliases(h2, [x, h, w_ih, w_hh, b_ih, b_hh]) else h2


@gru_step.register_fake
def _gru_step_fake(x, h, w_ih, w_hh, b_ih, b_hh):
    return h.new_empty(h.shape)

# ---------------------------------------------------------------------------------------------
# the policy step: one fused-plan call (fastpath.PolicyPlan) over weights passed as tensors

_PLANS: "collections.OrderedDict" = collections.OrderedDict()
_PLANS_MAX = 8  # plans keep their weights' storage alive: a small LRU
_plans_lock = threading.Lock()


def _linear(w: Tensor, b: Optional[Tensor]) -> nn.Linear:
    lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta")
    lin.weight = nn.Parameter(w.detach(), requires_grad=False)  # shares w's storage and version
    if b is not None:
        lin.bias = nn.Parameter(b.detach(), requires_grad=False)
    return lin


def _linears(flat: Sequence[Tensor], what: str) -> list:
    if len(flat) % 2:
        raise ValueError(f"{what}: expected [w0, b0, w1, b1, ...] (nn.Linear weight and bias pairs), "
                         f"got {len(flat)} tensors")
    return [_linear(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


def _rnn(kind: str, flat: Sequence[Tensor]):
    if kind == "none":
        if len(flat):
            raise ValueError(f"rnn: expected no tensors with rnn_kind='none', got {len(flat)}")
        return None
    if kind not in ("lstm", "gru") or len(flat) != 4:
        raise ValueError(f"rnn_kind/rnn: expected 'none', or 'lstm'/'gru' with [w_ih, w_hh, b_ih, b_hh], "
                         f"got {kind!r} with {len(flat)} tensors")
    w_ih, w_hh, b_ih, b_hh = flat
    cls = nn.LSTM if kind == "lstm" else nn.GRU
    r = cls(w_ih.shape[1], w_hh.shape[1], batch_first=True, device="meta")
    for name, t in zip(("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"), flat):
        setattr(r, name, nn.Parameter(t.detach(), requires_grad=False))
    return r


def _plan_for(obs: Tensor, encoder, rnn_kind, rnn, pi, vf, activation, head_activation, dist,
              action_sizes, log_std_clip):
    from ..fastpath import EncoderLayers, PolicyLayers, PolicyPlan

    tensors = [*encoder, *rnn, *pi, *vf]
    key = (rnn_kind, activation, head_activation, dist, tuple(action_sizes), log_std_clip, len(encoder), len(pi),
           tuple((t.data_ptr(), tuple(t.shape), t.stride(), t.dtype, t.device) for t in tensors))
    with _plans_lock:
        plan = _PLANS.get(key)
        if plan is not None:
            _PLANS.move_to_end(key)
            return plan
    layers = PolicyLayers(
        actor=EncoderLayers(mlp=_linears(encoder, "encoder"), activation=canonical_activation(activation),
                            rnn=_rnn(rnn_kind, rnn)),
        critic=None, pi=_linears(pi, "pi"), vf=_linears(vf, "vf") if len(vf) else None,
        head_activation=canonical_activation(head_activation, what="head_activation"), dist=dist,
        action_sizes=list(action_sizes), log_std_clip=None if log_std_clip < 0 else float(log_std_clip))
    plan = PolicyPlan(layers, backend="auto")
    with _plans_lock:
        _PLANS[key] = plan
        while len(_PLANS) > _PLANS_MAX:
            _PLANS.popitem(last=False)
    return plan


@torch.library.custom_op(f"{NAMESPACE}::policy_step", mutates_args=(), tags=_RANDOM)
def policy_step(obs: Tensor, encoder: Sequence[Tensor], rnn_kind: str, rnn: Sequence[Tensor],
                state_in: Sequence[Tensor], pi: Sequence[Tensor], vf: Sequence[Tensor], activation: str,
                head_activation: str, dist: str, action_sizes: Sequence[int], log_std_clip: float,
                deterministic: bool = False, seed: int = -1) -> tuple[Tensor, Tensor, Tensor, Tensor, list[Tensor]]:
    """The whole policy step in one backend call (``fastpath.PolicyPlan``), weights as tensors.

    obs [B, O] float32; ``encoder`` / ``pi`` / ``vf``: [w0, b0, w1, b1, ...] in ``nn.Linear``
    layout (``vf`` empty: no value head; else it reads the encoder's latent, as
    ``vf_share_layers=True``); ``rnn_kind`` "none" | "lstm" | "gru" with ``rnn`` =
    [w_ih, w_hh, b_ih, b_hh] (``nn.LSTM`` / ``nn.GRU`` layer 0) applied after the encoder MLP,
    and ``state_in`` [h [B, H], c [B, H]] (GRU: [h]; "none": []). ``dist``: "categorical" |
    "multi_categorical" | "diag_gaussian" with ``action_sizes`` ([A]; [n1, n2, ...]; [A]);
    ``log_std_clip`` < 0: no clipping of the Gaussian's log-std.
    Returns (action_dist_inputs [B, D], actions ([B] / [B, n] int64, [B, A] f32),
    action_logp [B], vf_preds [B] ([0] without a value head), state_out (as state_in)).
    The plan (packed weights) is cached for the weights' storage; in-place weight updates are
    seen (version counters), as in ``fastpath``.
    """
    plan = _plan_for(obs, encoder, rnn_kind, rnn, pi, vf, activation, head_activation, dist, action_sizes,
                     log_std_clip)
    state = None
    if rnn_kind != "none":
        want = 2 if rnn_kind == "lstm" else 1
        if len(state_in) != want:
            raise ValueError(f"state_in: expected {want} tensors for {rnn_kind}, got {len(state_in)}")
        state = {"h": state_in[0]} if want == 1 else {"h": state_in[0], "c": state_in[1]}
    with _seeded(seed, "policy_step", obs):
        r = plan.step(obs, state, deterministic=deterministic, compute_value=len(vf) > 0)
    vf_preds = r["vf_preds"] if len(vf) else obs.new_empty((0,))
    st = r.get("state_out") or {}
    state_out = [st[k].clone() if _aliases(st[k], list(state_in)) else st[k] for k in ("h", "c") if k in st]
    return r["action_dist_inputs"], r["actions"], r["action_logp"], vf_preds, state_out


@policy_step.register_fake
def _policy_step_fake(obs, encoder, rnn_kind, rnn, state_in, pi, vf, activation, head_activation, dist,
                      action_sizes, log_std_clip, deterministic=False, seed=-1):
    _check_seed(seed)
    if obs.dim() != 2:
        raise ValueError(f"obs: expected shape [B, O], got {tuple(obs.shape)}")
    B = obs.shape[0]
    sizes = list(action_sizes)
    D = pi[-2].shape[0]
    if dist == "diag_gaussian":
        actions = obs.new_empty((B, sizes[0]))
    elif dist == "categorical":
        actions = obs.new_empty((B,), dtype=torch.int64)
    elif dist == "multi_categorical":
        actions = obs.new_empty((B, len(sizes)), dtype=torch.int64)
    else:
        raise ValueError(f"dist: expected 'categorical', 'multi_categorical' or 'diag_gaussian', got {dist!r}")
    vf_preds = obs.new_empty((B,) if len(vf) else (0,))
    return (obs.new_empty((B, D)), actions, obs.new_empty((B,)), vf_preds,
            [s.new_empty(s.shape) for s in state_in])


__all__ = ["fused_mlp", "sample_categorical", "sample_diag_gaussian", "lstm_step", "gru_step", "policy_step"]

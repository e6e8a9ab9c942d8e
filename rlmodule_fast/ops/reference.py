"""Plain-torch reference of every hot-path op: the truth that the cpp and triton backends
are tested against. Obviously correct over fast; float32 or float64, any device.

Shape legend: B batch, I input features, H hidden units, A action logits / dims.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

#: Activation names accepted everywhere (model config and ops). "swish" is "silu";
#: "linear" and None are the identity.
ACTIVATIONS = ("tanh", "relu", "silu", "swish", "elu", "linear")


def canonical_activation(name: Optional[str], *, what: str = "activation") -> str:
    """Lower-cased canonical activation name ("swish" -> "silu", None -> "linear").

    Raises ValueError naming ``what`` for anything unknown.
    """
    if name is None:
        return "linear"
    if not isinstance(name, str) or name.lower() not in ACTIVATIONS:
        raise ValueError(f"{what}: unknown activation {name!r}; expected one of {ACTIVATIONS} or None")
    name = name.lower()
    return "silu" if name == "swish" else name


_ACT_FNS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "relu": torch.relu,
    "silu": F.silu,
    "elu": F.elu,
    "linear": lambda t: t,
}


def activation_fn(name: Optional[str]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The torch function for an activation name (see ``ACTIVATIONS``)."""
    return _ACT_FNS[canonical_activation(name)]


def fused_mlp(
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    biases: Sequence[Optional[torch.Tensor]],
    activation: Optional[str] = "tanh",
    output_activation: Optional[str] = None,
) -> torch.Tensor:
    """y = act_L(W_L ... act_1(W_1 x + b_1) ... + b_L).

    x: [B, I]; weights[l]: [H_l, H_{l-1}] (nn.Linear layout); biases[l]: [H_l] or None.
    ``activation`` follows every layer but the last, which gets ``output_activation``.
    Returns [B, H_L] in x's dtype.
    """
    hidden = activation_fn(activation)
    last = activation_fn(output_activation)
    n = len(weights)
    for i, (w, b) in enumerate(zip(weights, biases)):
        x = F.linear(x, w, b)
        x = last(x) if i == n - 1 else hidden(x)
    return x


def _check_finite(t: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{what}: contains NaN or inf")


#: RLlib's FLOAT_MIN (rllib/utils/torch_utils.py): the logit of a masked action.
FLOAT_MIN = -3.4e38


def check_action_mask(mask: torch.Tensor, segments: Sequence[int]) -> None:
    """ValueError unless ``mask`` [..., sum(segments)] holds only 0 and 1 and every row keeps an
    allowed action in every segment (a categorical is one segment); the row is named."""
    m = mask.reshape(-1, mask.shape[-1]) if mask.dim() else mask.reshape(1, 1)
    if m.numel() == 0:
        return
    bad = ~((m == 0) | (m == 1)).all(-1)
    if bool(bad.any()):
        raise ValueError(f"action_mask: expected values 0 or 1, got another value (row {int(bad.nonzero()[0, 0])})")
    lo = 0
    for n in segments:
        none = ~(m[:, lo:lo + int(n)] != 0).any(-1)
        if bool(none.any()):
            raise ValueError(f"action_mask: every action is masked (row {int(none.nonzero()[0, 0])}); "
                             "expected at least one allowed action per row (per segment)")
        lo += int(n)


def mask_logits(logits: torch.Tensor, mask, segments: Optional[Sequence[int]] = None) -> torch.Tensor:
    """RLlib's action masking (its action-masking example module): logits + clamp(log(mask),
    FLOAT_MIN), so a masked logit is FLOAT_MIN and an allowed one is unchanged (differentiable).
    ``mask`` [..., A] broadcasts against ``logits``; checked by ``check_action_mask`` (segments:
    the multi-categorical sizes, default one segment of width A)."""
    m = torch.as_tensor(mask).to(device=logits.device)
    if m.shape[-1:] != logits.shape[-1:]:
        raise ValueError(f"action_mask: expected shape [..., {logits.shape[-1]}] (one entry per logit), "
                         f"got {tuple(m.shape)}")
    if not torch.compiler.is_compiling():  # data-dependent: not while torch.export traces (rf.export)
        check_action_mask(m, segments if segments is not None else [logits.shape[-1]])
    m = m.to(logits.dtype) if m.dtype.is_floating_point else m.to(torch.float32).to(logits.dtype)
    return logits + torch.clamp(torch.log(m), min=FLOAT_MIN)


def sample_categorical(
    logits: torch.Tensor, deterministic: bool = False, generator: Optional[torch.Generator] = None,
    mask: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one action per row of ``logits`` [B, A] (Gumbel-max over torch's generator).

    Returns (actions [B] int64, logp [B] in logits' dtype). ``deterministic`` takes the argmax.
    logp is always log softmax(logits)[action] of the returned action. NaN/inf logits raise
    ValueError. ``mask`` [B, A] of 0/1 (RLlib's action mask): the logits are first masked by
    ``mask_logits``, so a masked action is never drawn and logp normalises over the allowed ones.
    """
    _check_finite(logits, "logits")
    if mask is not None:
        logits = mask_logits(logits, mask)
    logp_all = torch.log_softmax(logits, dim=-1)
    if deterministic:
        actions = torch.argmax(logits, dim=-1)
    else:
        u = torch.rand(logits.shape, dtype=logits.dtype, device=logits.device, generator=generator)
        u = u.clamp_min(torch.finfo(logits.dtype).tiny)
        actions = torch.argmax(logits - torch.log(-torch.log(u)), dim=-1)
    return actions, logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)


_LOG_SQRT_2PI = 0.9189385332046727


def sample_diag_gaussian(
    mean_logstd: torch.Tensor, deterministic: bool = False, generator: Optional[torch.Generator] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw from N(mean, exp(log_std)^2) per row; ``mean_logstd`` [B, 2A] is mean then log-std
    concatenated (RLlib's ``action_dist_inputs`` layout).

    Returns (actions [B, A], logp [B]); ``deterministic`` returns the mean (logp at the mean).
    NaN/inf inputs raise ValueError.
    """
    _check_finite(mean_logstd, "mean_logstd")
    if mean_logstd.shape[-1] % 2:
        raise ValueError(f"mean_logstd: last dim must be even (mean, log_std), got {tuple(mean_logstd.shape)}")
    mean, log_std = mean_logstd.chunk(2, dim=-1)
    if deterministic:
        eps = torch.zeros_like(mean)
        actions = mean.clone()  # not mean + exp(log_std) * 0, which is NaN for a huge log_std
    else:
        eps = torch.randn(mean.shape, dtype=mean.dtype, device=mean.device, generator=generator)
        actions = mean + torch.exp(log_std) * eps
    logp = (-0.5 * eps * eps - log_std - _LOG_SQRT_2PI).sum(-1)
    return actions, logp


#: RLlib's clamp of a squashed Gaussian's log-std (``TorchSquashedGaussian.from_logits``:
#: ``MIN_LOG_NN_OUTPUT``, ``MAX_LOG_NN_OUTPUT``).
SQUASHED_LOG_STD_RANGE = (-5.0, 2.0)


def tanh_log_det(u: torch.Tensor) -> torch.Tensor:
    """Elementwise ``log(1 - tanh(u)^2)`` as ``2 (log 2 - u - softplus(-2u))`` (RLlib's stable
    form: finite for every finite ``u``)."""
    return 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))


def sample_squashed_gaussian(
    mean_logstd: torch.Tensor, deterministic: bool = False, generator: Optional[torch.Generator] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAC's squashed Gaussian: ``u ~ N(mean, exp(clamp(log_std, -5, 2))^2)``, actions ``tanh(u)``
    in [-1, 1], logp ``logN(u) - sum log(1 - tanh(u)^2)`` (RLlib's ``TorchSquashedGaussian`` with
    its default bounds). ``mean_logstd`` [B, 2A] -> (actions [B, A], logp [B]); ``deterministic``:
    ``u = mean``. NaN/inf inputs (also an infinite log-std) raise ValueError."""
    _check_finite(mean_logstd, "mean_logstd")
    if mean_logstd.shape[-1] % 2:
        raise ValueError(f"mean_logstd: last dim must be even (mean, log_std), got {tuple(mean_logstd.shape)}")
    mean, log_std = mean_logstd.chunk(2, dim=-1)
    u, logp = sample_diag_gaussian(torch.cat([mean, log_std.clamp(*SQUASHED_LOG_STD_RANGE)], -1),
                                   deterministic, generator)
    return torch.tanh(u), logp - tanh_log_det(u).sum(-1)


def lstm_step(
    x: torch.Tensor, h: torch.Tensor, c: torch.Tensor,
    w_ih: torch.Tensor, w_hh: torch.Tensor, b: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM step, ``nn.LSTMCell`` semantics. x [B, I], h/c [B, H], w_ih [4H, I],
    w_hh [4H, H], b [4H] (= bias_ih + bias_hh) or None; gate order i, f, g, o.
    Returns (h' [B, H], c' [B, H])."""
    gates = F.linear(x, w_ih, b) + F.linear(h, w_hh)
    i, f, g, o = gates.chunk(4, dim=-1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_new = torch.sigmoid(o) * torch.tanh(c_new)
    return h_new, c_new


def gru_step(
    x: torch.Tensor, h: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor,
    b_ih: Optional[torch.Tensor], b_hh: Optional[torch.Tensor],
) -> torch.Tensor:
    """One GRU step, ``nn.GRUCell`` semantics. x [B, I], h [B, H], w_ih [3H, I], w_hh [3H, H],
    b_ih/b_hh [3H] or None; gate order r, z, n. Returns h' [B, H]."""
    gi = F.linear(x, w_ih, b_ih)
    gh = F.linear(h, w_hh, b_hh)
    i_r, i_z, i_n = gi.chunk(3, dim=-1)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return (1 - z) * n + z * h


def conv2d_nhwc(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride, pad, activation: Optional[str],
    scale: Optional[float] = None,
) -> torch.Tensor:
    """act(conv2d(ZeroPad2d(pad)(x * scale), weight, bias, stride)) on channels-last images.

    x: [B, H, W, C] float (or uint8: cast to float32 first); weight: [Cout, C, kh, kw]
    (``nn.Conv2d`` layout); bias: [Cout] or None; stride: int or (sh, sw); pad: (left, right,
    top, bottom) zeros, added after scaling (``nn.ZeroPad2d``); scale: None or a number the
    (cast) input is multiplied by. Returns [B, Ho, Wo, Cout] in x's float dtype (float32 for uint8).
    """
    from .conv import norm_pad, norm_stride

    if not x.dtype.is_floating_point:
        x = x.float()
    if scale is not None:
        x = x * scale
    y = F.pad(x.permute(0, 3, 1, 2), norm_pad(pad))
    y = F.conv2d(y, weight.to(x.dtype), None if bias is None else bias.to(x.dtype), norm_stride(stride))
    return activation_fn(activation)(y).permute(0, 2, 3, 1)


# ----------------------------------------------------------------------------- the policy step

def _f64(t: torch.Tensor, device) -> torch.Tensor:
    return t.detach().to(device=device, dtype=torch.float64)


def _linear_chain(lins, x: torch.Tensor, act: Optional[str], last_linear: bool, norms=None) -> torch.Tensor:
    """nn.Linear layers, each followed by its nn.LayerNorm when ``norms`` (one entry per layer,
    None or a LayerNorm) has one, then ``act`` (the last layer linear when ``last_linear``)."""
    f = activation_fn(act)
    n = len(lins)
    norms = list(norms) if norms is not None else [None] * n
    for i, lin in enumerate(lins):
        b = None if lin.bias is None else _f64(lin.bias, x.device)
        x = F.linear(x, _f64(lin.weight, x.device), b)
        ln = norms[i]
        if ln is not None:
            x = F.layer_norm(x, tuple(ln.normalized_shape),
                             None if ln.weight is None else _f64(ln.weight, x.device),
                             None if ln.bias is None else _f64(ln.bias, x.device), float(ln.eps))
        if not (last_linear and i == n - 1):
            x = f(x)
    return x


def _state_in(st, key: str, B: int, H: int, x: torch.Tensor) -> torch.Tensor:
    if st is None:
        return torch.zeros(B, H, dtype=torch.float64, device=x.device)
    return torch.as_tensor(st[key]).detach().to(device=x.device, dtype=torch.float64).reshape(B, H)


def _conv_stage(enc, x: torch.Tensor) -> torch.Tensor:
    """An encoder's CNN stage (``fastpath.layers.EncoderLayers.conv``): obs rows [B, H*W*C] as
    [B, H, W, C] images (times ``obs_scale``), every layer ZeroPad2d + Conv2d + activation, the
    output flattened in ``conv_flatten`` order ("hwc" or "chw")."""
    convs = getattr(enc, "conv", None) or []
    scale = getattr(enc, "obs_scale", None)
    if not convs:
        return x if scale is None else x * scale
    H, W, C = enc.image_shape
    y = x.reshape(x.shape[0], H, W, C)
    if scale is not None:
        y = y * scale
    for cl in convs:
        conv = cl.conv
        ph, pw = conv.padding
        l, r, t, b = (cl.pad,) * 4 if isinstance(cl.pad, int) else cl.pad
        y = conv2d_nhwc(y, _f64(conv.weight, x.device), None if conv.bias is None else _f64(conv.bias, x.device),
                        tuple(conv.stride), (l + pw, r + pw, t + ph, b + ph), cl.activation)
    if getattr(enc, "conv_flatten", "hwc") == "chw":
        y = y.permute(0, 3, 1, 2)
    return y.reshape(y.shape[0], -1)


def _encode(enc, x: torch.Tensor, st) -> tuple[torch.Tensor, Optional[dict]]:
    """An encoder (conv stage, mlp, then an optional 1-layer LSTM/GRU step): (latent, state_out or None)."""
    x = _conv_stage(enc, x)
    x = _linear_chain(enc.mlp, x, enc.activation, False, getattr(enc, "norms", None))
    r = enc.rnn
    if r is None:
        return x, None
    B, H, dev = x.shape[0], r.hidden_size, x.device
    w_ih, w_hh = _f64(r.weight_ih_l0, dev), _f64(r.weight_hh_l0, dev)
    b_ih = _f64(r.bias_ih_l0, dev) if r.bias else None
    b_hh = _f64(r.bias_hh_l0, dev) if r.bias else None
    h = _state_in(st, "h", B, H, x)
    if isinstance(r, torch.nn.LSTM):
        c = _state_in(st, "c", B, H, x)
        h2, c2 = lstm_step(x, h, c, w_ih, w_hh, None if b_ih is None else b_ih + b_hh)
        return h2, {"h": h2, "c": c2}
    h2 = gru_step(x, h, w_ih, w_hh, b_ih, b_hh)
    return h2, {"h": h2}


def _segments(dist: str, action_sizes) -> list:
    return [int(a) for a in action_sizes] if dist == "multi_categorical" else [int(action_sizes[0])]


def action_logp(dist: str, action_sizes, dist_inputs, actions) -> torch.Tensor:
    """log-probability [B] (float64) of ``actions`` under the distribution that ``dist_inputs``
    [B, D] parametrise (``dist``: "categorical" | "multi_categorical" | "diag_gaussian", with
    ``action_sizes`` as in ``fastpath.PolicyLayers``; diag_gaussian inputs are mean then log-std)."""
    d = torch.as_tensor(dist_inputs).detach().double()
    a = torch.as_tensor(actions).to(d.device)
    if dist == "diag_gaussian":
        mean, log_std = d.chunk(2, dim=-1)
        z = (a.double() - mean) / torch.exp(log_std)
        return (-0.5 * z * z - log_std - _LOG_SQRT_2PI).sum(-1)
    cols = a if a.dim() == 2 else a[:, None]
    out, lo = torch.zeros(d.shape[0], dtype=torch.float64, device=d.device), 0
    for j, n in enumerate(_segments(dist, action_sizes)):
        out = out + torch.log_softmax(d[:, lo:lo + n], -1).gather(-1, cols[:, j:j + 1].long())[:, 0]
        lo += n
    return out


@torch.no_grad()
def policy_step(layers, obs, state=None, *, deterministic: bool = False, compute_value: bool = False,
                generator: Optional[torch.Generator] = None, mask=None) -> dict:
    """The whole policy step of a ``fastpath.PolicyLayers`` description, in float64: the truth
    that ``PolicyPlan.step`` (cpp and triton) is tested against.

    ``layers`` is read duck-typed: ``actor`` / ``critic`` (None: the value head reads the actor
    latent) with ``mlp`` (nn.Linear list, each followed by ``activation``), ``norms`` (optional:
    per layer an nn.LayerNorm applied between the layer and its activation, or None) and ``rnn``
    (None or a 1-layer nn.LSTM / nn.GRU stepped once after the mlp); ``pi`` / ``vf`` (hidden
    layers use ``head_activation``, the last is linear; optional ``pi_norms`` / ``vf_norms`` as
    ``norms``); ``dist`` in {"categorical", "multi_categorical", "diag_gaussian",
    "squashed_gaussian"} (SAC: tanh(u), log-std clamped to [-5, 2] for the draw only;
    ``action_dist_inputs`` stay the head's output), ``action_sizes``, ``log_std_clip`` (clamps the
    log-std to [-c, c]) and ``free_log_std`` ([A], appended after pi's mean output). An encoder
    may start with a CNN stage (``conv``, ``image_shape``, ``conv_flatten``, ``obs_scale``: see
    ``_conv_stage``).

    obs: [B, O] tensor or numpy (computed on the parameters' device). state: None (zeros), {"h": [B, H]
    [, "c": [B, H]]} ([B, 1, H] accepted), nested {"actor": ..., "critic": ...} when the critic
    has its own rnn. Returns {"action_dist_inputs": [B, D] f64, "actions": [B] int64 |
    [B, n] int64 | [B, A] f64, "action_logp": [B] f64[, "vf_preds": [B] f64][, "state_out":
    nested like state]} (the actor has an rnn: "state_out"). Draws use this file's samplers
    (Gumbel-max / ``torch.randn``) on ``generator``; ``deterministic`` takes
    the mode (argmax / mean). ``mask``: None or the action mask [B, D] (categorical kinds), applied
    by ``mask_logits`` to the distribution inputs before sampling.
    """
    L = layers
    x = torch.as_tensor(obs).detach().to(device=L.pi[0].weight.device, dtype=torch.float64)
    nested = L.critic is not None and L.critic.rnn is not None
    sa = state.get("actor") if (nested and state is not None) else state
    lat, so_a = _encode(L.actor, x, sa)
    d = _linear_chain(L.pi, lat, L.head_activation, True, getattr(L, "pi_norms", None))
    if L.free_log_std is not None:
        d = torch.cat([d, _f64(L.free_log_std, x.device).expand(d.shape[0], -1)], -1)
    if L.dist == "diag_gaussian" and L.log_std_clip is not None:
        A, c = d.shape[1] // 2, float(L.log_std_clip)
        d = torch.cat([d[:, :A], d[:, A:].clamp(-c, c)], -1)
    if mask is not None:
        if L.dist in ("diag_gaussian", "squashed_gaussian"):
            raise ValueError(f"action_mask: masking needs categorical actions, got dist {L.dist!r}")
        d = mask_logits(d, mask, _segments(L.dist, L.action_sizes))
    if L.dist == "diag_gaussian":
        actions, logp = sample_diag_gaussian(d, deterministic, generator)
    elif L.dist == "squashed_gaussian":
        actions, logp = sample_squashed_gaussian(d, deterministic, generator)
    elif L.dist in ("categorical", "multi_categorical"):
        acts, logp, lo = [], torch.zeros(d.shape[0], dtype=torch.float64, device=d.device), 0
        for n in _segments(L.dist, L.action_sizes):
            a, lp = sample_categorical(d[:, lo:lo + n], deterministic, generator)
            acts.append(a)
            logp = logp + lp
            lo += n
        actions = acts[0] if L.dist == "categorical" else torch.stack(acts, -1)
    else:
        raise ValueError("dist: expected 'categorical', 'multi_categorical', 'diag_gaussian' or "
                         f"'squashed_gaussian', got {L.dist!r}")
    out = {"action_dist_inputs": d, "actions": actions, "action_logp": logp}
    lat_c, so_c = lat, None
    if L.critic is not None and (compute_value or nested):
        lat_c, so_c = _encode(L.critic, x, state.get("critic") if (nested and state is not None) else None)
    if compute_value:
        if not L.vf:
            raise ValueError("compute_value: these layers have no value head (vf is None)")
        out["vf_preds"] = _linear_chain(L.vf, lat_c, L.head_activation, True, getattr(L, "vf_norms", None))[:, 0]
    if so_a is not None:
        out["state_out"] = {"actor": so_a, "critic": so_c} if nested else so_a
    return out

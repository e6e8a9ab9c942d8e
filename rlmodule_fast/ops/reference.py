"""Plain-torch reference of every hot-path op: the truth that the cpp and triton backends
are tested against. Obviously correct over fast; float32 or float64, any device.

Shape legend: B batch, I input features, H hidden units, A action logits / dims.
"""
from __future__ import annotations

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


def sample_categorical(
    logits: torch.Tensor, deterministic: bool = False, generator: Optional[torch.Generator] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one action per row of ``logits`` [B, A] (Gumbel-max over torch's generator).

    Returns (actions [B] int64, logp [B] in logits' dtype). ``deterministic`` takes the argmax.
    logp is always log softmax(logits)[action] of the returned action. NaN/inf logits raise
    ValueError.
    """
    _check_finite(logits, "logits")
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

"""A module's policy layers described once (``PolicyLayers``), the checks and dims read from
them, the parameter lists a plan watches, and the process-wide structure generation that tells
a plan its module registered new parameters or layers.

Shape legend: B batch, O flattened obs dim, H rnn hidden, D dist-input dim, A action columns.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from ..core.torch_rl_module import STRUCTURE_GEN
from ..ops.codes import DISTRIBUTIONS
from ..ops.reference import canonical_activation


@dataclass
class ConvLayer:
    """One conv layer of an encoder's CNN stage: ``nn.ZeroPad2d(pad)``, ``conv``, ``activation``
    (RLlib's TorchCNN: "same" padding as an explicit ZeroPad2d, the conv with padding 0)."""
    conv: torch.nn.Conv2d  # groups 1, dilation 1, padding_mode "zeros" (its own padding adds to pad)
    pad: tuple             # (left, right, top, bottom) zeros, nn.ZeroPad2d's order
    activation: str        # canonical name, applied after every conv layer (RLlib's conv_activation)


def conv_layers(cnn, what: str) -> list:
    """The conv layers of a CNN encoder (ours or RLlib's TorchCNNEncoder, read by
    ``models.cnn.cnn_conv_layers``) as ``ConvLayer``s; its ValueError names ``what``."""
    from ..models.cnn import cnn_conv_layers

    try:
        return [ConvLayer(c, pad, act) for c, pad, act in cnn_conv_layers(cnn)]
    except ValueError as err:
        raise ValueError(f"{what}: {err}") from None


@dataclass
class EncoderLayers:
    mlp: list            # list[nn.Linear]; every layer followed by `activation`
    activation: str      # canonical name (see ops.reference.canonical_activation)
    rnn: object = None   # None, or an nn.LSTM / nn.GRU (1 layer, batch_first=True) applied after the mlp
    norms: Optional[list] = None  # None, or per mlp layer an nn.LayerNorm (between the layer and its activation) or None
    # CNN stage before the mlp (empty: none). The observation row is an image_shape (H, W, C)
    # image, channels last (HWC order, RLlib's [B, H, W, C] obs flattened); the conv output is
    # flattened in `conv_flatten` order: "hwc" (RLlib 2.60's TorchCNNEncoder permutes back to
    # channels-last before nn.Flatten) or "chw" (a channels-first flatten of NCHW). The fused
    # kernels always produce HWC and fold "chw" into the next layer's weight columns at pack time.
    conv: list = field(default_factory=list)  # list[ConvLayer]
    image_shape: Optional[tuple] = None       # (H, W, C), required with conv
    conv_flatten: str = "hwc"
    # The encoder reads obs * obs_scale (None: obs); with it, uint8 observations are accepted and
    # converted inside the kernels (conv encoders only).
    obs_scale: Optional[float] = None


@dataclass
class PolicyLayers:
    actor: EncoderLayers
    critic: Optional[EncoderLayers]   # None: the value head reads the actor latent (vf_share_layers=True)
    pi: list                          # list[nn.Linear]; hidden layers use head_activation, last is linear
    vf: Optional[list]                # value head layers (last linear, out 1), same head_activation
    head_activation: str
    dist: str                         # "categorical" | "multi_categorical" | "diag_gaussian" | "squashed_gaussian"
    action_sizes: list                # categorical [A]; multi_categorical [n1, n2, ...]; (squashed) gaussian [A]
    log_std_clip: Optional[float]     # diag gaussian: clamp log-std to [-c, c] (squashed_gaussian: None;
                                      # its sampler clamps to RLlib's [-5, 2], action_dist_inputs stay raw)
    free_log_std: object = None       # nn.Parameter [A] or None: state-independent log-std appended after pi's mean output
    pi_norms: Optional[list] = None   # None, or per pi layer an nn.LayerNorm (before the layer's activation) or None
    vf_norms: Optional[list] = None   # the same for the vf layers


DIST_NAMES = tuple(DISTRIBUTIONS)  # the names; each backend reads the codes (cpp: from _C)

# Structure generation: bumped whenever any nn.Module registers a parameter or a submodule
# (``lin.weight = nn.Parameter(...)``, ``load_state_dict(assign=True)``, ``seq[i] = layer``) and
# whenever a TorchRLModule is moved (``.to(device)`` replaces Parameter objects without
# registering them), so a step notices a replaced parameter with one integer compare; the plan
# then re-reads its module's layers. The hooks return None, which keeps the registered value.
_STRUCTURE_GEN = STRUCTURE_GEN


def _on_registration(*_args) -> None:
    _STRUCTURE_GEN[0] += 1


torch.nn.modules.module.register_module_parameter_registration_hook(_on_registration)
torch.nn.modules.module.register_module_module_registration_hook(_on_registration)


def _linear_params(lins) -> list:
    ps = []
    for lin in lins:
        ps += [lin.weight] + ([lin.bias] if lin.bias is not None else [])
    return ps


def _conv_params(enc: EncoderLayers) -> list:
    return _linear_params([c.conv for c in (getattr(enc, "conv", None) or [])])


def _norm_params(norms) -> list:
    ps = []
    for n in norms or []:
        if n is not None:
            ps += [p for p in (n.weight, n.bias) if p is not None]
    return ps


def _encoder_params(enc: EncoderLayers) -> list:
    return (_conv_params(enc) + _linear_params(enc.mlp) + _norm_params(getattr(enc, "norms", None))
            + (list(enc.rnn.parameters()) if enc.rnn is not None else []))


def _critic_steps(layers: PolicyLayers) -> bool:
    """Whether a step without the value head runs the critic encoder too: it has an rnn, whose
    state the step advances (``state_out["critic"]``)."""
    return layers.critic is not None and layers.critic.rnn is not None


def _step_params(layers: PolicyLayers) -> list:
    """The parameters a step without the value head reads: actor encoder, pi head, log-std, and
    the critic encoder when it has an rnn (``_critic_steps``)."""
    fls = [layers.free_log_std] if layers.free_log_std is not None else []
    critic = _encoder_params(layers.critic) if _critic_steps(layers) else []
    return (_encoder_params(layers.actor) + _linear_params(layers.pi) + _norm_params(getattr(layers, "pi_norms", None))
            + fls + critic)


def _params(layers: PolicyLayers) -> list:
    """Every parameter of the description: the step's (``_step_params``), then critic and vf."""
    critic = _encoder_params(layers.critic) if layers.critic is not None and not _critic_steps(layers) else []
    return _step_params(layers) + critic + _linear_params(layers.vf or []) + _norm_params(getattr(layers, "vf_norms", None))


def _check_norms(norms, lins: list, what: str) -> None:
    """``norms``: None, or one entry per layer of ``lins``: None or an nn.LayerNorm over that
    layer's outputs (1-D normalized_shape, float eps >= 0)."""
    if norms is None:
        return
    norms = list(norms)
    if len(norms) != len(lins):
        raise ValueError(f"{what}: expected one entry per layer ({len(lins)}), got {len(norms)}")
    for i, (n, lin) in enumerate(zip(norms, lins)):
        if n is None:
            continue
        if not isinstance(n, torch.nn.LayerNorm):
            raise ValueError(f"{what}[{i}]: expected None or nn.LayerNorm, got {type(n).__name__}")
        if tuple(n.normalized_shape) != (lin.out_features,):
            raise ValueError(f"{what}[{i}]: expected normalized_shape ({lin.out_features},) (the layer's outputs), "
                             f"got {tuple(n.normalized_shape)}")
        if not float(n.eps) >= 0:
            raise ValueError(f"{what}[{i}]: expected eps >= 0, got {n.eps}")


def has_norms(norms) -> bool:
    """Whether a norms list (EncoderLayers.norms, PolicyLayers.pi_norms / vf_norms) holds any."""
    return bool(norms) and any(n is not None for n in norms)


def _linears(layers, what: str) -> list:
    layers = list(layers) if layers is not None else []
    for i, lin in enumerate(layers):
        if not isinstance(lin, torch.nn.Linear):
            raise ValueError(f"{what}[{i}]: expected nn.Linear, got {type(lin).__name__}")
    return layers


def _check_rnn(rnn, what: str):
    if rnn is None:
        return None
    if not isinstance(rnn, (torch.nn.LSTM, torch.nn.GRU)):
        raise ValueError(f"{what}: expected None, nn.LSTM or nn.GRU, got {type(rnn).__name__}")
    if rnn.num_layers != 1 or rnn.bidirectional or getattr(rnn, "proj_size", 0):
        raise ValueError(f"{what}: only 1-layer, unidirectional, proj_size=0 RNNs are supported")
    return rnn


def _chain(lins: list, in_dim: int, what: str) -> int:
    for i, lin in enumerate(lins):
        if lin.in_features != in_dim:
            raise ValueError(f"{what}[{i}]: expected in_features {in_dim}, got {lin.in_features}")
        in_dim = lin.out_features
    return in_dim


def conv_geometry(enc: EncoderLayers, what: str = "encoder") -> list:
    """Check an encoder's conv stage and return, per layer, (conv, (sh, sw), (l, r, t, b) total
    padding, activation, (H_in, W_in, C_in), (H_out, W_out, C_out)); [] without conv layers.
    Raises ValueError naming the bad field (channel chain, image size, unsupported conv options)."""
    from ..ops.conv import norm_pad, out_size

    convs = list(getattr(enc, "conv", None) or [])
    if not convs:
        return []
    shape = enc.image_shape
    if (not isinstance(shape, (tuple, list)) or len(shape) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape)):
        raise ValueError(f"{what}.image_shape: expected (H, W, C) positive ints with conv layers, got {shape!r}")
    if enc.conv_flatten not in ("hwc", "chw"):
        raise ValueError(f"{what}.conv_flatten: expected 'hwc' or 'chw', got {enc.conv_flatten!r}")
    H, W, C = (int(v) for v in shape)
    out = []
    for i, cl in enumerate(convs):
        w = f"{what}.conv[{i}]"
        conv = getattr(cl, "conv", None)
        if not isinstance(conv, torch.nn.Conv2d):
            raise ValueError(f"{w}.conv: expected nn.Conv2d, got {type(conv).__name__}")
        if conv.groups != 1 or tuple(conv.dilation) != (1, 1) or conv.padding_mode != "zeros" or isinstance(
                conv.padding, str):
            raise ValueError(f"{w}.conv: expected groups=1, dilation=1, numeric zero padding, got groups={conv.groups}, "
                             f"dilation={conv.dilation}, padding={conv.padding!r}, padding_mode={conv.padding_mode!r}")
        if conv.in_channels != C:
            raise ValueError(f"{w}.conv: expected in_channels {C} ({'the image' if i == 0 else 'the previous out_channels'}),"
                             f" got {conv.in_channels}")
        l, r, t, b = norm_pad(cl.pad, what=f"{w}.pad")
        ph, pw = conv.padding
        pad = (l + pw, r + pw, t + ph, b + ph)
        act = canonical_activation(cl.activation, what=f"{w}.activation")
        kh, kw = conv.kernel_size
        Ho, Wo = out_size(H, W, kh, kw, tuple(conv.stride), pad, what=w)
        out.append((conv, tuple(conv.stride), pad, act, (H, W, C), (Ho, Wo, conv.out_channels)))
        H, W, C = Ho, Wo, conv.out_channels
    if enc.obs_scale is not None and not (isinstance(enc.obs_scale, (int, float)) and not isinstance(enc.obs_scale, bool)
                                          and float(enc.obs_scale) == float(enc.obs_scale)
                                          and abs(float(enc.obs_scale)) != float("inf")):
        raise ValueError(f"{what}.obs_scale: expected None or a finite number, got {enc.obs_scale!r}")
    return out


def _encoder_dims(enc: EncoderLayers, what: str) -> tuple[int, int]:
    """(obs dim, latent dim) of an encoder; obs dim 0 when it is empty (latent = obs)."""
    mlp = _linears(enc.mlp, f"{what}.mlp")
    rnn = _check_rnn(enc.rnn, f"{what}.rnn")
    _check_norms(getattr(enc, "norms", None), mlp, f"{what}.norms")
    canonical_activation(enc.activation, what=f"{what}.activation")
    geo = conv_geometry(enc, what)
    if not geo and getattr(enc, "obs_scale", None) is not None:
        raise ValueError(f"{what}.obs_scale: only for encoders with conv layers, got {enc.obs_scale!r}")
    if geo:
        H, W, C = enc.image_shape
        Ho, Wo, Co = geo[-1][5]
        lat = Ho * Wo * Co
        if mlp:
            lat = _chain(mlp, lat, f"{what}.mlp")
        if rnn is not None:
            if rnn.input_size != lat:
                raise ValueError(f"{what}.rnn: expected input_size {lat} (the conv/mlp output), got {rnn.input_size}")
            lat = rnn.hidden_size
        return H * W * C, lat
    if mlp:
        obs_dim = mlp[0].in_features
        lat = _chain(mlp, obs_dim, f"{what}.mlp")
    elif rnn is not None:
        obs_dim = lat = rnn.input_size
    else:
        return 0, 0
    if rnn is not None:
        if rnn.input_size != lat:
            raise ValueError(f"{what}.rnn: expected input_size {lat} (the mlp's output), got {rnn.input_size}")
        lat = rnn.hidden_size
    return obs_dim, lat


def validate(L: PolicyLayers) -> dict:
    """Check a description and return what a plan reads from it: action_sizes, head_act,
    obs_dim, dist_dim, has_vf, actor_rnn, critic_rnn. Raises ValueError naming the bad field."""
    d = {}
    if L.dist not in DIST_NAMES:
        raise ValueError(f"dist: expected one of {sorted(DIST_NAMES)}, got {L.dist!r}")
    sizes = [int(a) for a in L.action_sizes]
    if not sizes or min(sizes) < 1 or (L.dist != "multi_categorical" and len(sizes) != 1):
        raise ValueError(f"action_sizes: expected positive sizes ([A] for {L.dist}), got {L.action_sizes}")
    d["action_sizes"] = sizes
    d["head_act"] = canonical_activation(L.head_activation, what="head_activation")
    a_obs, a_lat = _encoder_dims(L.actor, "actor")
    pi = _linears(L.pi, "pi")
    if not pi:
        raise ValueError("pi: expected at least one nn.Linear")
    _check_norms(getattr(L, "pi_norms", None), pi, "pi_norms")
    if a_obs == 0:  # empty actor encoder: the heads read the observation
        a_obs = a_lat = pi[0].in_features
    d["obs_dim"] = a_obs
    npi = _chain(pi, a_lat, "pi")
    gaussian = L.dist in ("diag_gaussian", "squashed_gaussian")
    A = sizes[0] if gaussian else sum(sizes)
    if L.dist == "squashed_gaussian" and (L.free_log_std is not None or L.log_std_clip is not None):
        raise ValueError("squashed_gaussian: free_log_std and log_std_clip must be None (the sampler "
                         "clamps the log-std to RLlib's [-5, 2])")
    if gaussian:
        want = A if L.free_log_std is not None else 2 * A
    else:
        want = A
        if L.free_log_std is not None:
            raise ValueError(f"free_log_std: only for diag_gaussian, got dist {L.dist!r}")
    if npi != want:
        raise ValueError(f"pi: last layer has {npi} outputs, expected {want} for {L.dist} with action_sizes {sizes}")
    if L.free_log_std is not None and tuple(L.free_log_std.shape) != (A,):
        raise ValueError(f"free_log_std: expected shape [{A}], got {tuple(L.free_log_std.shape)}")
    if L.log_std_clip is not None and not float(L.log_std_clip) >= 0:
        raise ValueError(f"log_std_clip: expected None or >= 0, got {L.log_std_clip}")
    d["dist_dim"] = npi + (A if L.free_log_std is not None else 0)
    c_lat = a_lat
    d["critic_rnn"] = None
    if L.critic is not None:
        c_obs, c_lat = _encoder_dims(L.critic, "critic")
        if c_obs == 0:
            c_obs = c_lat = d["obs_dim"]
        if c_obs != d["obs_dim"]:
            raise ValueError(f"critic: expected input size {d['obs_dim']} (the actor's), got {c_obs}")
        d["critic_rnn"] = L.critic.rnn
        if getattr(L.actor, "conv", None) and getattr(L.critic, "conv", None) and \
                tuple(L.actor.image_shape) != tuple(L.critic.image_shape):
            raise ValueError(f"critic.image_shape: expected {tuple(L.actor.image_shape)} (the actor's), "
                             f"got {tuple(L.critic.image_shape)}")
    vf = _linears(L.vf, "vf")
    _check_norms(getattr(L, "vf_norms", None), vf, "vf_norms")
    if L.vf is not None:
        if not vf or _chain(vf, c_lat, "vf") != 1:
            raise ValueError(f"vf: expected layers ending in 1 output, got {[tuple(l.weight.shape) for l in vf]}")
    d["has_vf"] = bool(vf)
    d["actor_rnn"] = L.actor.rnn
    # uint8 observations: every encoder that reads the observation converts it (a conv stage)
    d["u8_ok"] = bool(getattr(L.actor, "conv", None)) and (L.critic is None or bool(getattr(L.critic, "conv", None)))
    return d

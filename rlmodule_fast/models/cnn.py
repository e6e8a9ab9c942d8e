"""RLlib 2.60's CNN encoder (``TorchCNNEncoder`` over ``TorchCNN``) with its parameter names and
numerics, its ``conv_filters`` format and its default filter stacks by image size.

Layout (RLlib's, so state dicts move unchanged): ``net`` = ``nn.Sequential(TorchCNN, nn.Flatten())``,
``TorchCNN.cnn`` = ``nn.Sequential`` of, per filter, [``nn.ZeroPad2d`` ("same" only),
``nn.Conv2d``, activation module (none for "linear")]; e.g. ``net.0.cnn.1.weight`` is the first
conv's kernel. Input is channel-last [B, H, W, C], permuted to NCHW for the convs and back to
NHWC before the flatten, so the latent is the last conv output flattened in (H, W, C) order.

"same" padding is TensorFlow's, done as RLlib does: out = ceil(in / stride), total padding
(out - 1) * stride + kernel - in, the smaller half on the top / left
(``nn.ZeroPad2d((left, right, top, bottom))``). "valid": no padding, out = ceil((in - kernel + 1) / stride).

Shape legend: B batch (any leading dims), H height, W width, C channels, D flattened latent.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from ..ops.reference import canonical_activation
from .encoders import _ACT_MODULES

#: Bounds on a conv_filters entry (a config may come from a checkpoint file): layers, filters per
#: layer, kernel / stride side. The first two match models.config's MLP bounds.
MAX_CONV_LAYERS = 64
MAX_FILTERS = 1 << 24
MAX_KERNEL_OR_STRIDE = 1 << 16
PADDINGS = ("same", "valid")

# RLlib's ``ray.rllib.models.utils.get_filter_config``: default stacks by image size.
_DEFAULT_STACKS = (
    ((96, 96), [[16, [8, 8], 4], [32, [4, 4], 2], [256, [11, 11], 2]]),   # CarRacing
    ((84, 84), [[16, [8, 8], 4], [32, [4, 4], 2], [256, [11, 11], 1]]),   # Atari
    ((64, 64), [[16, [4, 4], 2], [32, [4, 4], 2], [64, [4, 4], 2], [128, [4, 4], 2]]),
    ((42, 42), [[16, [4, 4], 2], [32, [4, 4], 2], [256, [11, 11], 1]]),
    ((10, 10), [[16, [5, 5], 2], [32, [5, 5], 2]]),
)

_ACT_NAMES = {cls: name for name, cls in _ACT_MODULES.items()}


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _side(value: Any, what: str) -> Any:
    """An int or a pair of ints in [1, MAX_KERNEL_OR_STRIDE] (tuples become lists)."""
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_int(v) for v in value):
        sides = list(value)
    elif _int(value):
        sides = [value]
    else:
        raise ValueError(f"model config 'conv_filters': {what}: expected an int or [int, int], got {value!r:.80}")
    if not all(1 <= v <= MAX_KERNEL_OR_STRIDE for v in sides):
        raise ValueError(f"model config 'conv_filters': {what}: expected sizes in [1, {MAX_KERNEL_OR_STRIDE}], "
                         f"got {value!r:.80}")
    return sides if len(sides) == 2 else value


def validate_conv_filters(value: Any) -> Optional[list]:
    """Check a ``conv_filters`` model-config value (RLlib's format) and return it as lists.

    ``value``: None or [] (RLlib's default stack for the image size), or a list of
    ``[num_filters, kernel, stride]`` / ``[num_filters, kernel, stride, padding]`` with ``kernel``
    and ``stride`` an int or ``[height, width]`` and ``padding`` "same" (the default) or "valid".
    Returns None for the default, else a new list of lists (tuples converted). ValueError naming
    ``conv_filters``, the expected and the received value otherwise.
    """
    if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
        return None
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"model config 'conv_filters': expected None or a list of [filters, kernel, stride(, "
                         f"padding)], got {value!r:.80}")
    if len(value) > MAX_CONV_LAYERS:
        raise ValueError(f"model config 'conv_filters': at most {MAX_CONV_LAYERS} layers, got {len(value)}")
    out = []
    for i, spec in enumerate(value):
        what = f"layer {i}"
        if not isinstance(spec, (list, tuple)) or len(spec) not in (3, 4):
            raise ValueError(f"model config 'conv_filters': {what}: expected [filters, kernel, stride] or "
                             f"[filters, kernel, stride, padding], got {spec!r:.80}")
        n = spec[0]
        if not _int(n) or not 1 <= n <= MAX_FILTERS:
            raise ValueError(f"model config 'conv_filters': {what}: filters must be an int in [1, {MAX_FILTERS}], "
                             f"got {n!r:.80}")
        item = [n, _side(spec[1], f"{what} kernel"), _side(spec[2], f"{what} stride")]
        if len(spec) == 4:
            if spec[3] not in PADDINGS:
                raise ValueError(f"model config 'conv_filters': {what}: padding must be one of {PADDINGS}, "
                                 f"got {spec[3]!r:.80}")
            item.append(spec[3])
        out.append(item)
    return out


def default_conv_filters(obs_shape: Sequence[int]) -> list:
    """RLlib's default stack for an image shape (``get_filter_config``): [H, W, C] (or [C, H, W])
    of 96x96, 84x84, 64x64, 42x42 or 10x10. ValueError (RLlib's message) for any other size."""
    shape = [int(s) for s in obs_shape]
    if len(shape) in (2, 3):
        for size, stack in _DEFAULT_STACKS:
            if shape[:2] == list(size) or shape[1:] == list(size):
                return [[n, list(k), s] for n, k, s in stack]
    atari_help = ("This is the default atari obs shape. You may want to look at one of RLlib's Atari examples "
                  "for an example of how to wrap an Atari env. ") if shape == [210, 160, 3] else ""
    raise ValueError(
        f"model config 'conv_filters': no default CNN configuration for obs shape {tuple(shape)}. {atari_help}"
        "Give 'conv_filters' explicitly, e.g. [[16, 4, 2], [32, 4, 2]]. Default configurations exist only for "
        "[96, 96, K], [84, 84, K], [64, 64, K], [42, 42, K] and [10, 10, K] (as in RLlib)."
    )


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if _int(v) else (int(v[0]), int(v[1]))


def _parse(spec: Sequence) -> tuple[int, tuple[int, int], tuple[int, int], str]:
    """[filters, kernel, stride(, padding)] -> (filters, (kh, kw), (sh, sw), padding)."""
    return int(spec[0]), _pair(spec[1]), _pair(spec[2]), (spec[3] if len(spec) == 4 else "same")


def same_padding(in_hw: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int]
                 ) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    """TensorFlow "same" as RLlib's ``same_padding``: ((left, right, top, bottom), (out_h, out_w))."""
    (h, w), (kh, kw), (sh, sw) = in_hw, kernel, stride
    oh, ow = -(-h // sh), -(-w // sw)
    ph = (oh - 1) * sh + kh - h
    pw = (ow - 1) * sw + kw - w
    # A negative total (kernel < stride) stays negative as in RLlib: ZeroPad2d then crops.
    return (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), (oh, ow)


def valid_padding(in_hw: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int]) -> tuple[int, int]:
    """Output (out_h, out_w) of an unpadded conv (RLlib's ``valid_padding``)."""
    (h, w), (kh, kw), (sh, sw) = in_hw, kernel, stride
    return -(-(h - kh + 1) // sh), -(-(w - kw + 1) // sw)


def conv_plan(obs_shape: Sequence[int], conv_filters: Sequence) -> list[dict]:
    """Per layer: in/out channels, kernel, stride, pad (left, right, top, bottom), output [H, W, C].

    ``obs_shape``: [H, W, C]; ``conv_filters``: validated (``validate_conv_filters``), not None.
    ValueError naming ``conv_filters`` when a layer's output would be empty (e.g. a "valid"
    kernel larger than its input).
    """
    if len(obs_shape) != 3:
        raise ValueError(f"observation_space: a CNN needs a [H, W, C] image, got shape {tuple(obs_shape)}")
    h, w, c = (int(s) for s in obs_shape)
    layers = []
    for i, spec in enumerate(conv_filters):
        n, k, s, padding = _parse(spec)
        if padding == "same":
            pad, (oh, ow) = same_padding((h, w), k, s)
        else:
            pad, (oh, ow) = (0, 0, 0, 0), valid_padding((h, w), k, s)
        if oh <= 0 or ow <= 0 or h + pad[2] + pad[3] < k[0] or w + pad[0] + pad[1] < k[1]:
            raise ValueError(f"model config 'conv_filters': layer {i} ({list(spec)}) gives an empty output for a "
                             f"{h}x{w} input (image shape {tuple(obs_shape)})")
        layers.append({"in": c, "out": n, "kernel": k, "stride": s, "pad": pad if padding == "same" else None,
                       "out_shape": (oh, ow, n)})
        h, w, c = oh, ow, n
    return layers


def cnn_output_dim(obs_shape: Sequence[int], conv_filters: Sequence) -> int:
    """Width D of the flattened CNN latent (RLlib's ``CNNEncoderConfig.output_dims``)."""
    plan = conv_plan(obs_shape, conv_filters)
    return int(math.prod(plan[-1]["out_shape"])) if plan else int(math.prod(obs_shape))


#: A hook applied to each new nn.Conv2d where RLlib applies ``conv_kernel_initializer`` /
#: ``conv_bias_initializer`` (right after the layer is created); None keeps torch's default init.
ConvInitHook = Optional[Callable[[nn.Conv2d], None]]


class TorchCNN(nn.Module):
    """RLlib's ``TorchCNN``: ``self.cnn`` = per filter [ZeroPad2d ("same"), Conv2d, activation].

    forward(x [N, H, W, C] float) -> [N, H', W', C'] (channel-last, as RLlib's).
    """

    def __init__(self, obs_shape: Sequence[int], conv_filters: Sequence, activation: str = "relu",
                 init_conv: ConvInitHook = None):
        super().__init__()
        act = canonical_activation(activation, what="model config 'conv_activation'")
        layers: list[nn.Module] = []
        for spec in conv_plan(obs_shape, conv_filters):
            if spec["pad"] is not None:
                layers.append(nn.ZeroPad2d(spec["pad"]))
            conv = nn.Conv2d(spec["in"], spec["out"], spec["kernel"], spec["stride"], bias=True)
            if init_conv is not None:
                init_conv(conv)
            layers.append(conv)
            if act != "linear":
                layers.append(_ACT_MODULES[act]())
        self.cnn = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cnn(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class TorchCNNEncoder(nn.Module):
    """RLlib's ``TorchCNNEncoder``: ``net`` = Sequential(TorchCNN, Flatten), no dense layer after.

    forward(x [*lead, H, W, C] float) -> [*lead, D] with D = ``output_dim`` (the last conv
    output flattened in (H, W, C) order). Leading dims are folded into one batch axis (RLlib
    folds [B, T] the same way for its LSTM tokenizer).

    Example::

        enc = TorchCNNEncoder((42, 42, 3), default_conv_filters((42, 42, 3)))
        enc(torch.zeros(5, 42, 42, 3)).shape   # (5, 30976)
    """

    def __init__(self, obs_shape: Sequence[int], conv_filters: Sequence, activation: str = "relu",
                 init_conv: ConvInitHook = None):
        super().__init__()
        self.obs_shape = tuple(int(s) for s in obs_shape)
        self.activation = canonical_activation(activation, what="model config 'conv_activation'")
        self.net = nn.Sequential(TorchCNN(obs_shape, conv_filters, activation, init_conv), nn.Flatten())
        self.output_dim = cnn_output_dim(obs_shape, conv_filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-3]
        y = self.net(x.reshape(-1, *self.obs_shape))
        return y.reshape(*lead, self.output_dim)


def _cnn_sequential(encoder: nn.Module) -> Optional[nn.Sequential]:
    """The conv Sequential of a CNN encoder (ours or RLlib's), a TorchCNN, or an RNN encoder whose
    tokenizer is one; None when ``encoder`` has no conv stack."""
    if isinstance(getattr(encoder, "cnn", None), nn.Sequential):
        return encoder.cnn
    net = getattr(encoder, "net", None)
    if isinstance(net, nn.Sequential) and len(net) and isinstance(getattr(net[0], "cnn", None), nn.Sequential):
        return net[0].cnn
    tok = getattr(encoder, "tokenizer", None)
    return _cnn_sequential(tok) if isinstance(tok, nn.Module) else None


def is_cnn_encoder(encoder: nn.Module) -> bool:
    """True for a CNN encoder (ours or RLlib's ``TorchCNNEncoder``), a ``TorchCNN``, or an LSTM /
    GRU encoder with a CNN tokenizer."""
    return _cnn_sequential(encoder) is not None


def cnn_conv_layers(encoder: nn.Module) -> list[tuple[nn.Conv2d, tuple[int, int, int, int], str]]:
    """The conv stack of ``encoder`` as the fused step's conv stage reads it: per layer
    ``(conv, (left, right, top, bottom) zero padding, activation name)``, in order.

    ``encoder``: anything ``is_cnn_encoder`` accepts (ours or RLlib's; for an RNN encoder, its
    tokenizer's convs). The convs are the module's own layers (not copies), NCHW weights
    [out, in, kh, kw]; input to the first is the NHWC observation, and the last output is
    flattened in (H, W, C) order. A padding entry is negative (a crop, as ``nn.ZeroPad2d`` does)
    where RLlib's "same" total is negative (kernel < stride). ValueError naming the layer for anything the stage cannot run
    (a layer norm between conv and activation, groups / dilation / padding inside the conv, a
    non-zero padding mode, an activation other than tanh / relu / silu / elu(alpha=1)).
    """
    seq = _cnn_sequential(encoder)
    if seq is None:
        raise ValueError(f"cnn_conv_layers: a {type(encoder).__name__} has no conv stack")
    out: list = []
    pad = (0, 0, 0, 0)
    for i, m in enumerate(seq):
        where = f"cnn[{i}]"
        if isinstance(m, nn.ZeroPad2d):
            p = m.padding
            pad = (p, p, p, p) if isinstance(p, int) else tuple(int(v) for v in p)
            if len(pad) != 4:
                raise ValueError(f"{where}: expected a (left, right, top, bottom) padding, got {m.padding}")
        elif isinstance(m, nn.Conv2d):
            if (m.groups != 1 or tuple(m.dilation) != (1, 1) or tuple(m.padding) != (0, 0)
                    or m.padding_mode != "zeros"):
                raise ValueError(f"{where}: only groups=1, dilation=1, padding=0 convs are supported, got {m}")
            out.append([m, pad, "linear"])
            pad = (0, 0, 0, 0)
        elif type(m) in _ACT_NAMES:
            if not out or out[-1][2] != "linear" or pad != (0, 0, 0, 0):
                raise ValueError(f"{where}: an activation must follow a conv directly")
            if isinstance(m, nn.ELU) and m.alpha != 1.0:
                raise ValueError(f"{where}: ELU with alpha={m.alpha} (only 1.0)")
            out[-1][2] = _ACT_NAMES[type(m)]
        else:
            raise ValueError(f"{where}: a {type(m).__name__} layer is not one the conv stage runs")
    if pad != (0, 0, 0, 0):
        raise ValueError("cnn: padding after the last conv")
    return [(conv, p, act) for conv, p, act in out]

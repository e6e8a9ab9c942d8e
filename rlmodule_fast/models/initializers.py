"""Weight / bias initializers from model-config keys, resolved as RLlib 2.60 resolves them
(``ray.rllib.models.utils.get_initializer_fn``, framework "torch") and applied to the layers
RLlib applies them to (``TorchMLP``, ``TorchLSTMEncoder``, ``TorchCNN``).

A value is None (torch's default init of the layer stays), a callable (used as given), or a
string naming an in-place function of ``torch.nn.init`` (case-insensitive, must end in "_",
e.g. "xavier_uniform_", "orthogonal_"); ``<key>_kwargs`` (None or a dict) go to the call.

Conv layers (the CNN encoder, as RLlib's ``TorchCNN``): ``conv_init_hook(cfg)`` is run on each
``nn.Conv2d`` right after it is created.

Checkpoints: a model config is stored as JSON, never as code. A callable that IS a
``torch.nn.init`` function is stored by its name (``initializer_to_json``: the same function
comes back when loaded); any other callable (a lambda, a user's function, a class) cannot be
stored and is a ValueError naming the key when the module is saved.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import torch
from torch import nn

#: The model-config keys holding initializers (each with a ``<key>_kwargs`` sibling).
INITIALIZER_KEYS = tuple(
    f"{stack}_{part}_initializer"
    for stack in ("fcnet", "conv", "head_fcnet", "lstm", "fusionnet")
    for part in ("kernel", "bias")
)


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


def get_initializer_fn(value: Any, *, what: str = "initializer") -> Optional[Callable]:
    """None, a callable (returned as is) or the ``torch.nn.init`` in-place function a string names.

    As RLlib's ``get_initializer_fn``: strings are lower-cased, must end in "_" (the in-place
    version) and must name a ``torch.nn.init`` attribute. ValueError naming ``what`` otherwise."""
    if value is None or callable(value):
        return value
    if not isinstance(value, str):
        raise ValueError(f"model config {what!r}: expected None, a callable or the name of a torch.nn.init "
                         f"in-place function (e.g. 'xavier_uniform_'), got {_short(value)}")
    name = value.lower()
    if not name.endswith("_"):
        raise ValueError(f"model config {what!r}: {value!r} is not an in-place initializer; torch initializers "
                         "are given by their in-place name ending in '_' (e.g. 'xavier_uniform_')")
    fn = getattr(nn.init, name, None)
    if fn is None or not callable(fn):
        raise ValueError(f"model config {what!r}: unknown initializer {value!r}: not a function of torch.nn.init")
    return fn


def check_initializer_kwargs(value: Any, *, what: str) -> Optional[dict]:
    """None or a dict with string keys (passed as ``**kwargs`` to the initializer)."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"model config {what!r}: expected None or a dict of keyword arguments, got {_short(value)}")
    return dict(value)


def initializer_to_json(value: Any, *, what: str) -> Optional[str]:
    """The JSON form of an initializer value: None, or the name of a ``torch.nn.init`` function.

    Strings are kept as given; a callable that is a ``torch.nn.init`` function becomes its name.
    ValueError naming ``what`` for any other callable (it would have to be stored as code)."""
    if value is None or isinstance(value, str):
        return value
    name = getattr(value, "__name__", None)
    if isinstance(name, str) and getattr(nn.init, name, None) is value:
        return name
    raise ValueError(f"model config {what!r}: {_short(value)} cannot be stored in a checkpoint (checkpoints hold "
                     "plain data, never code); give a torch.nn.init function or its name (e.g. 'orthogonal_')")


def _call(fn: Optional[Callable], tensor: Optional[torch.Tensor], kwargs: Optional[dict]) -> None:
    if fn is not None and tensor is not None:
        with torch.no_grad():
            fn(tensor, **(kwargs or {}))


def init_layer(layer: nn.Module, kernel: Any = None, kernel_kwargs: Optional[dict] = None,
               bias: Any = None, bias_kwargs: Optional[dict] = None, *, what: str = "initializer") -> None:
    """Initialise ``layer.weight`` / ``layer.bias`` in place (an ``nn.Linear`` or ``nn.Conv2d``;
    what RLlib's TorchMLP / TorchCNN do per layer). None leaves torch's default init."""
    _call(get_initializer_fn(kernel, what=what), layer.weight, kernel_kwargs)
    _call(get_initializer_fn(bias, what=what), getattr(layer, "bias", None), bias_kwargs)


def init_rnn(rnn: nn.Module, kernel: Any = None, kernel_kwargs: Optional[dict] = None,
             bias: Any = None, bias_kwargs: Optional[dict] = None, *, what: str = "lstm initializer") -> None:
    """Initialise an nn.LSTM / nn.GRU as RLlib's ``TorchLSTMEncoder``: per layer, the kernel
    initializer on ``weight_ih`` and ``weight_hh`` and the bias initializer on ``bias_ih`` and
    ``bias_hh`` (each called separately, so each draws its own values)."""
    k_fn = get_initializer_fn(kernel, what=what)
    b_fn = get_initializer_fn(bias, what=what)
    for params in rnn.all_weights:  # [w_ih, w_hh, b_ih, b_hh] per layer
        for t in params[:2]:
            _call(k_fn, t, kernel_kwargs)
        for t in params[2:4]:
            _call(b_fn, t, bias_kwargs)


def stack_initializers(cfg: Mapping[str, Any], stack: str) -> dict:
    """The four initializer settings of one stack ("fcnet", "head_fcnet", "conv", "lstm",
    "fusionnet") from a resolved model config, as keyword arguments of ``init_layer`` /
    ``init_rnn``: {"kernel", "kernel_kwargs", "bias", "bias_kwargs"}."""
    return {
        "kernel": cfg.get(f"{stack}_kernel_initializer"),
        "kernel_kwargs": cfg.get(f"{stack}_kernel_initializer_kwargs"),
        "bias": cfg.get(f"{stack}_bias_initializer"),
        "bias_kwargs": cfg.get(f"{stack}_bias_initializer_kwargs"),
    }


def conv_init_hook(cfg: Mapping[str, Any]) -> Optional[Callable[[nn.Module], None]]:
    """The ``conv_*_initializer`` settings of a resolved model config as a hook for each new
    ``nn.Conv2d`` (``models.cnn.TorchCNN``'s ``init_conv``); None when both are None (torch's
    default init stays, and no random numbers are drawn beyond torch's own)."""
    init = stack_initializers(cfg, "conv")
    if init["kernel"] is None and init["bias"] is None:
        return None
    return lambda conv: init_layer(conv, **init, what="conv initializer")

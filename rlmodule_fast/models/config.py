"""Model-config defaults, aliases and validation: the one place that knows the keys.

RLlib's names and defaults; an unknown key or a bad value is a ValueError that names it
(RLlib silently ignores them; we do not).
"""
from __future__ import annotations

import reprlib
from typing import Any, Mapping

from ..ops.reference import canonical_activation
from .cnn import validate_conv_filters

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = 8


def _short(value) -> str:
    """A bounded repr for messages: config values may come from a file of any size."""
    return _REPR.repr(value)


DEFAULTS: dict[str, Any] = {
    "fcnet_hiddens": [256, 256],
    "fcnet_activation": "tanh",
    "head_fcnet_hiddens": [],
    "head_fcnet_activation": "relu",
    "vf_share_layers": True,
    "free_log_std": False,
    "log_std_clip_param": 20.0,
    "use_lstm": False,
    "use_gru": False,
    "lstm_cell_size": 256,
    "max_seq_len": 20,
    # image observations ([H, W, C] Box): RLlib's CNN encoder (models/cnn.py)
    "conv_filters": None,
    "conv_activation": "relu",
}

#: alias -> canonical key
ALIASES = {
    "hidden": "fcnet_hiddens",
    "post_fcnet_hiddens": "head_fcnet_hiddens",
    "post_fcnet_activation": "head_fcnet_activation",
}

# Keys RLlib users commonly pass that have no effect on these models; accepted so that
# existing configs keep working, but only when they hold their RLlib defaults.
_INERT = {"lstm_use_prev_action": False, "lstm_use_prev_reward": False, "_disable_preprocessor_api": False}

#: Bounds on sizes (a config may come from a checkpoint file: building its model must stay cheap
#: before the state file is compared with it). Layers per list; units per layer / LSTM cell.
MAX_HIDDEN_LAYERS = 64
MAX_LAYER_SIZE = 1 << 24
MAX_SEQ_LEN = 2**31 - 1


def _sizes(key: str, value: Any) -> list[int]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"model config {_short(key)}: expected a list of positive ints, got {_short(value)}")
    if len(value) > MAX_HIDDEN_LAYERS:
        raise ValueError(f"model config {key!r}: at most {MAX_HIDDEN_LAYERS} layers, got {len(value)}")
    if any(v <= 0 or v > MAX_LAYER_SIZE for v in value):
        raise ValueError(f"model config {_short(key)}: sizes must be in [1, {MAX_LAYER_SIZE}], got {_short(list(value))}")
    return list(value)


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"model config {_short(key)}: expected a bool, got {_short(value)}")
    return value


def resolve_model_config(user: Mapping[str, Any] | None) -> dict:
    """Defaults + ``user`` with aliases resolved and every value validated.

    Returns a new dict holding every key of ``DEFAULTS`` (activations canonical, lists as lists).
    """
    user = dict(user or {})
    cfg = dict(DEFAULTS)
    seen: dict[str, str] = {}
    for key, value in user.items():
        canon = ALIASES.get(key, key)
        if canon in _INERT:
            if value != _INERT[canon]:
                raise ValueError(f"model config {_short(key)}={_short(value)} is not supported (only {_INERT[canon]!r})")
            continue
        if canon not in DEFAULTS:
            raise ValueError(f"unknown model config key {_short(key)}; known keys: {sorted(DEFAULTS) + sorted(ALIASES)}")
        if canon in seen:
            raise ValueError(f"model config gives both {seen[canon]!r} and {key!r} (aliases of {canon!r})")
        seen[canon] = key
        cfg[canon] = value
    cfg["fcnet_hiddens"] = _sizes("fcnet_hiddens", cfg["fcnet_hiddens"])
    cfg["head_fcnet_hiddens"] = _sizes("head_fcnet_hiddens", cfg["head_fcnet_hiddens"])
    cfg["fcnet_activation"] = canonical_activation(cfg["fcnet_activation"], what="model config 'fcnet_activation'")
    cfg["head_fcnet_activation"] = canonical_activation(cfg["head_fcnet_activation"], what="model config 'head_fcnet_activation'")
    cfg["conv_filters"] = validate_conv_filters(cfg["conv_filters"])
    cfg["conv_activation"] = canonical_activation(cfg["conv_activation"], what="model config 'conv_activation'")
    for key in ("vf_share_layers", "free_log_std", "use_lstm", "use_gru"):
        cfg[key] = _bool(key, cfg[key])
    if cfg["use_lstm"] and cfg["use_gru"]:
        raise ValueError("model config: 'use_lstm' and 'use_gru' are exclusive")
    for key, top in (("lstm_cell_size", MAX_LAYER_SIZE), ("max_seq_len", MAX_SEQ_LEN)):
        v = cfg[key]
        if not isinstance(v, int) or isinstance(v, bool) or not 0 < v <= top:
            raise ValueError(f"model config {key!r}: expected an int in [1, {top}], got {v!r:.100}")
    clip = cfg["log_std_clip_param"]
    if (isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip > 0
            or (isinstance(clip, int) and clip > 1e308)):  # float(10**400) would be an OverflowError
        raise ValueError(f"model config 'log_std_clip_param': expected a positive number, got {clip!r:.100}")
    cfg["log_std_clip_param"] = float(clip)
    return cfg

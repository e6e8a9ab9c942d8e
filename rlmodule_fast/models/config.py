"""Model-config defaults, aliases and validation: the one place that knows the keys.

RLlib's names and defaults; an unknown key or a bad value is a ValueError that names it
(RLlib silently ignores them; we do not).
"""
from __future__ import annotations

from typing import Any, Mapping

from ..ops.reference import canonical_activation

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


def _sizes(key: str, value: Any) -> list[int]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"model config {key!r}: expected a list of positive ints, got {value!r}")
    if any(v <= 0 for v in value):
        raise ValueError(f"model config {key!r}: sizes must be positive, got {list(value)}")
    return list(value)


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"model config {key!r}: expected a bool, got {value!r}")
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
                raise ValueError(f"model config {key!r}={value!r} is not supported (only {_INERT[canon]!r})")
            continue
        if canon not in DEFAULTS:
            raise ValueError(f"unknown model config key {key!r}; known keys: {sorted(DEFAULTS) + sorted(ALIASES)}")
        if canon in seen:
            raise ValueError(f"model config gives both {seen[canon]!r} and {key!r} (aliases of {canon!r})")
        seen[canon] = key
        cfg[canon] = value
    cfg["fcnet_hiddens"] = _sizes("fcnet_hiddens", cfg["fcnet_hiddens"])
    cfg["head_fcnet_hiddens"] = _sizes("head_fcnet_hiddens", cfg["head_fcnet_hiddens"])
    cfg["fcnet_activation"] = canonical_activation(cfg["fcnet_activation"], what="model config 'fcnet_activation'")
    cfg["head_fcnet_activation"] = canonical_activation(cfg["head_fcnet_activation"], what="model config 'head_fcnet_activation'")
    for key in ("vf_share_layers", "free_log_std", "use_lstm", "use_gru"):
        cfg[key] = _bool(key, cfg[key])
    if cfg["use_lstm"] and cfg["use_gru"]:
        raise ValueError("model config: 'use_lstm' and 'use_gru' are exclusive")
    for key in ("lstm_cell_size", "max_seq_len"):
        v = cfg[key]
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"model config {key!r}: expected a positive int, got {v!r}")
    clip = cfg["log_std_clip_param"]
    if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip > 0:
        raise ValueError(f"model config 'log_std_clip_param': expected a positive number, got {clip!r}")
    cfg["log_std_clip_param"] = float(clip)
    return cfg

"""Model-config defaults, aliases and validation: the one place that knows the keys.

RLlib's names and defaults; an unknown key or a bad value is a ValueError that names it
(RLlib silently ignores them; we do not).
"""
from __future__ import annotations

import dataclasses
import reprlib
import warnings
from typing import Any, Callable, List, Mapping, Optional, Union

from ..ops.reference import canonical_activation
from .cnn import validate_conv_filters
from .initializers import INITIALIZER_KEYS, check_initializer_kwargs, get_initializer_fn, initializer_to_json

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = 8


def _short(value) -> str:
    """A bounded repr for messages: config values may come from a file of any size."""
    return _REPR.repr(value)


@dataclasses.dataclass
class DefaultModelConfig:
    """RLlib 2.60's ``DefaultModelConfig``: the same fields with the same defaults (tested against
    RLlib's class). Pass it as ``model_config=`` (or ``model_config_dict=``); RLlib's own instance
    and a dict of these keys are accepted too. What each key does here: see ``resolve_model_config``.
    ``use_gru`` (ours) is not a field: give it in a dict."""

    # MLP encoder stack
    fcnet_hiddens: List[int] = dataclasses.field(default_factory=lambda: [256, 256])
    fcnet_activation: str = "tanh"
    fcnet_kernel_initializer: Optional[Union[str, Callable]] = None
    fcnet_kernel_initializer_kwargs: Optional[dict] = None
    fcnet_bias_initializer: Optional[Union[str, Callable]] = None
    fcnet_bias_initializer_kwargs: Optional[dict] = None
    fcnet_use_layernorm: bool = False
    # Conv2D encoder stack (rank-3 Box observations; models/cnn.py)
    conv_filters: Optional[list] = None
    conv_activation: str = "relu"
    conv_kernel_initializer: Optional[Union[str, Callable]] = None
    conv_kernel_initializer_kwargs: Optional[dict] = None
    conv_bias_initializer: Optional[Union[str, Callable]] = None
    conv_bias_initializer_kwargs: Optional[dict] = None
    # heads (pi, vf, q)
    head_fcnet_hiddens: List[int] = dataclasses.field(default_factory=lambda: [])
    head_fcnet_activation: str = "relu"
    head_fcnet_kernel_initializer: Optional[Union[str, Callable]] = None
    head_fcnet_kernel_initializer_kwargs: Optional[dict] = None
    head_fcnet_bias_initializer: Optional[Union[str, Callable]] = None
    head_fcnet_bias_initializer_kwargs: Optional[dict] = None
    head_fcnet_use_layernorm: bool = False
    # continuous actions
    free_log_std: bool = False
    log_std_clip_param: float = 20.0
    vf_share_layers: bool = True
    # LSTM
    use_lstm: bool = False
    max_seq_len: int = 20
    lstm_cell_size: int = 256
    lstm_use_prev_action: bool = False
    lstm_use_prev_reward: bool = False
    lstm_kernel_initializer: Optional[Union[str, Callable]] = None
    lstm_kernel_initializer_kwargs: Optional[dict] = None
    lstm_bias_initializer: Optional[Union[str, Callable]] = None
    lstm_bias_initializer_kwargs: Optional[dict] = None
    # fusion net: RLlib 2.60 builds it only in SAC's MultiStreamEncoder (sac_catalog.py: the
    # Q-network encoder fusing the observation and action streams); stored here, used by sac/.
    fusionnet_hiddens: List[int] = dataclasses.field(default_factory=lambda: [256, 256])
    fusionnet_activation: str = "tanh"
    fusionnet_kernel_initializer: Optional[Union[str, Callable]] = None
    fusionnet_kernel_initializer_kwargs: Optional[dict] = None
    fusionnet_bias_initializer: Optional[Union[str, Callable]] = None
    fusionnet_bias_initializer_kwargs: Optional[dict] = None


#: Every key and its default: RLlib's DefaultModelConfig, plus ours (``use_gru``).
DEFAULTS: dict[str, Any] = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
                            for f in dataclasses.fields(DefaultModelConfig)}
DEFAULTS["use_gru"] = False

#: alias -> canonical key: ours ("hidden"), and the old API stack's names (RLlib's MODEL_DEFAULTS)
#: of keys DefaultModelConfig renamed ("post_fcnet_*" -> "head_fcnet_*", "*_weights_initializer"
#: -> "*_kernel_initializer", "*_initializer_config" -> "*_initializer_kwargs").
ALIASES = {
    "hidden": "fcnet_hiddens",
    "post_fcnet_hiddens": "head_fcnet_hiddens",
    "post_fcnet_activation": "head_fcnet_activation",
    "fcnet_weights_initializer": "fcnet_kernel_initializer",
    "fcnet_weights_initializer_config": "fcnet_kernel_initializer_kwargs",
    "fcnet_bias_initializer_config": "fcnet_bias_initializer_kwargs",
    "conv_kernel_initializer_config": "conv_kernel_initializer_kwargs",
    "conv_bias_initializer_config": "conv_bias_initializer_kwargs",
    "post_fcnet_weights_initializer": "head_fcnet_kernel_initializer",
    "post_fcnet_weights_initializer_config": "head_fcnet_kernel_initializer_kwargs",
    "post_fcnet_bias_initializer": "head_fcnet_bias_initializer",
    "post_fcnet_bias_initializer_config": "head_fcnet_bias_initializer_kwargs",
    "lstm_weights_initializer": "lstm_kernel_initializer",
    "lstm_weights_initializer_config": "lstm_kernel_initializer_kwargs",
    "lstm_bias_initializer_config": "lstm_bias_initializer_kwargs",
}

#: The old-stack names: given beside their new name with the same value, they are not a conflict.
_LEGACY = frozenset(ALIASES) - {"hidden"}

# The other keys of RLlib's old-stack MODEL_DEFAULTS (what ``MODEL_DEFAULTS.copy()`` carries):
# no effect on these models (nor on RLlib 2.60's default modules), so accepted only at these
# values, their MODEL_DEFAULTS values; any other value is a ValueError naming the key.
_INERT = {
    "_disable_preprocessor_api": False, "_disable_action_flattening": False, "_time_major": False,
    "_use_default_native_models": -1, "lstm_use_prev_action_reward": -1, "always_check_shapes": False,
    "no_final_linear": False, "encoder_latent_dim": None, "custom_model": None, "custom_model_config": {},
    "custom_action_dist": None, "custom_preprocessor": None, "framestack": True, "dim": 84,
    "grayscale": False, "zero_mean": True, "use_attention": False, "attention_num_transformer_units": 1,
    "attention_dim": 64, "attention_num_heads": 1, "attention_head_dim": 32, "attention_memory_inference": 50,
    "attention_memory_training": 50, "attention_position_wise_mlp_dim": 32, "attention_init_gru_gate_bias": 2.0,
    "attention_use_n_prev_actions": 0, "attention_use_n_prev_rewards": 0,
    "conv_transpose_kernel_initializer": None, "conv_transpose_kernel_initializer_config": None,
    "conv_transpose_bias_initializer": None, "conv_transpose_bias_initializer_config": None,
}

_BOOLS = ("vf_share_layers", "free_log_std", "use_lstm", "use_gru", "fcnet_use_layernorm",
          "head_fcnet_use_layernorm", "lstm_use_prev_action", "lstm_use_prev_reward")
_SIZES = ("fcnet_hiddens", "head_fcnet_hiddens", "fusionnet_hiddens")
_ACTIVATIONS = ("fcnet_activation", "head_fcnet_activation", "conv_activation", "fusionnet_activation")


def as_config_mapping(cfg: Any, *, what: str = "model_config") -> dict:
    """A model config as a plain dict: None -> {}, a dict (copied), or a dataclass instance such
    as ours or RLlib's ``DefaultModelConfig`` (recognized by being a dataclass, without importing
    ray; its fields, shallow). ValueError naming ``what`` for anything else."""
    if cfg is None:
        return {}
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, Mapping):
        return dict(cfg)
    raise ValueError(f"{what}: expected a dict or a DefaultModelConfig, got {type(cfg).__name__}")


def model_config_to_json(cfg: Any, *, what: str = "model_config") -> dict:
    """The plain-data form of a user's model config for a checkpoint: a dict, initializer
    callables stored by their ``torch.nn.init`` name (``models.initializers.initializer_to_json``;
    any other callable is a ValueError naming its key)."""
    out = as_config_mapping(cfg, what=what)
    for key, value in out.items():
        if ALIASES.get(key, key) in INITIALIZER_KEYS:
            out[key] = initializer_to_json(value, what=key)
    return out


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


def _same(a: Any, b: Any) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # noqa: BLE001 -- == of arrays and the like: not the same setting
        return False


def resolve_model_config(user: Any = None, extra: Optional[Mapping[str, Any]] = None) -> dict:
    """Defaults + ``user`` with aliases resolved and every value validated.

    ``user``: None, a dict of model-config keys, or a ``DefaultModelConfig`` (ours or RLlib's).
    ``extra``: keys a model family adds (e.g. DQN's), with their defaults; their values are the
    family's to check. Returns a new dict holding every key of ``DEFAULTS`` (and ``extra``):
    activations canonical, lists as lists, initializer names checked (``models.initializers``).
    Every key of RLlib's DefaultModelConfig is known; anything else is a ValueError naming it.

    What the keys do (RLlib 2.60's meaning): ``fcnet_*`` the MLP encoder (``fcnet_use_layernorm``
    norms every layer, the latent included) and the LSTM/GRU tokenizer; ``head_fcnet_*`` the
    heads (``head_fcnet_use_layernorm`` norms their hidden layers); ``*_initializer`` (+
    ``_kwargs``) the init of those layers (``models.initializers``); ``use_lstm`` / ``use_gru``,
    ``lstm_cell_size``, ``lstm_*_initializer``, ``max_seq_len`` the recurrent encoder;
    ``conv_*`` the CNN encoder of rank-3 Box observations (models/cnn.py); ``fusionnet_*``
    SAC's Q encoder; ``free_log_std``, ``log_std_clip_param``, ``vf_share_layers`` as RLlib;
    ``lstm_use_prev_action`` / ``lstm_use_prev_reward`` nothing (as RLlib 2.60: a warning says
    which connectors feed them).
    """
    user = as_config_mapping(user)
    defaults = dict(DEFAULTS, **(extra or {}))
    cfg = {k: (list(v) if isinstance(v, list) else v) for k, v in defaults.items()}
    seen: dict[str, str] = {}
    for key, value in user.items():
        canon = ALIASES.get(key, key)
        if canon in _INERT:
            if value != _INERT[canon]:
                raise ValueError(f"model config {_short(key)}={_short(value)} is not supported (only {_INERT[canon]!r})")
            continue
        if canon not in defaults:
            raise ValueError(f"unknown model config key {_short(key)}; known keys: {sorted(defaults) + sorted(ALIASES)}")
        if canon in seen:
            if {key, seen[canon]} & _LEGACY and _same(cfg[canon], value):
                continue  # RLlib's MODEL_DEFAULTS carries old and new names (post_/head_fcnet_hiddens)
            raise ValueError(f"model config gives both {seen[canon]!r} and {key!r} (aliases of {canon!r}) "
                             f"with different values")
        seen[canon] = key
        cfg[canon] = value
    for key in _SIZES:
        cfg[key] = _sizes(key, cfg[key])
    for key in _ACTIVATIONS:
        cfg[key] = canonical_activation(cfg[key], what=f"model config {key!r}")
    for key in _BOOLS:
        cfg[key] = _bool(key, cfg[key])
    for key in INITIALIZER_KEYS:
        get_initializer_fn(cfg[key], what=key)
        cfg[key + "_kwargs"] = check_initializer_kwargs(cfg[key + "_kwargs"], what=key + "_kwargs")
    cfg["conv_filters"] = validate_conv_filters(cfg["conv_filters"])
    prev = [k for k in ("lstm_use_prev_action", "lstm_use_prev_reward") if cfg[k]]
    if prev:
        # RLlib 2.60's default modules ignore these keys too (only its old API stack read them):
        # its new stack feeds previous actions (one-hot if discrete) and rewards through the
        # PrevActionsPrevRewards + FlattenObservations env-to-module connectors, which widen the
        # observation space the module is built for. Same layout here, so weights interchange.
        warnings.warn(f"model config {prev}: no effect on the module (as in RLlib 2.60's default modules); "
                      "add RLlib's PrevActionsPrevRewards + FlattenObservations env-to-module connectors "
                      "(the module is then built for the widened observation space)", UserWarning, stacklevel=2)
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

"""DQNCatalog: RLlib's ``DQNCatalog`` (encoder, advantage / Q head ``af``, dueling value head
``vf``) over rlmodule_fast's layers, taking the model config RLlib's ``DQNConfig`` produces.

DQN's own keys (``DQNConfig._model_config_auto_includes``: double_q, dueling, epsilon,
num_atoms, std_init, v_max, v_min) are validated here and removed before the base Catalog
resolves the rest (which refuses unknown keys). Missing DQN keys take ``DQNConfig``'s defaults.
``std_init`` (noisy nets' sigma0) is accepted and unused, as in RLlib 2.60, whose DQN module
has no noisy layers.

Observation spaces: the base Catalog's (Box, Discrete, images, Dict / Tuple flattened as RLlib's
FlattenObservations), and RLlib's action-masking layout
``Dict({"action_mask": Box(0, 1, (A,)), "observations": <space>})`` (``models.flatten.split_action_mask``):
only ``"observations"`` is encoded; ``mask_key`` is then ``"action_mask"``.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import gymnasium as gym

from ..models.catalog import Catalog, check_framework
from ..models.config import _short, as_config_mapping
from ..models.flatten import ACTION_MASK, split_action_mask
from ..models.heads import TorchMLPHead
from .schedule import check_epsilon

#: DQNConfig's defaults for the keys it puts into the module's model config (RLlib 2.60).
DQN_DEFAULTS: dict = {
    "double_q": True,
    "dueling": True,
    "epsilon": [(0, 1.0), (10000, 0.05)],
    "num_atoms": 1,
    "std_init": 0.5,
    "v_max": 10.0,
    "v_min": -10.0,
}

MASK_KEY = ACTION_MASK


def resolve_dqn_config(user: Mapping[str, Any]) -> tuple[dict, dict]:
    """(DQN keys validated, with DQNConfig's defaults; every other key, untouched). ``user``: a
    dict, or a ``DefaultModelConfig`` (ours or RLlib's) without DQN keys."""
    user = dict(as_config_mapping(user))
    dqn = {k: user.pop(k, v) for k, v in DQN_DEFAULTS.items()}
    for key in ("double_q", "dueling"):
        if not isinstance(dqn[key], bool):
            raise ValueError(f"model config {key!r}: expected a bool, got {_short(dqn[key])}")
    n = dqn["num_atoms"]
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 4096:
        raise ValueError(f"model config 'num_atoms': expected an int in [1, 4096], got {_short(n)}")
    for key in ("v_min", "v_max", "std_init"):
        v = dqn[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or abs(v) == float("inf"):
            raise ValueError(f"model config {key!r}: expected a finite number, got {_short(v)}")
        dqn[key] = float(v)
    if n > 1 and not dqn["v_min"] < dqn["v_max"]:
        raise ValueError(f"model config 'v_min' / 'v_max': expected v_min < v_max, got {dqn['v_min']} / {dqn['v_max']}")
    if dqn["std_init"] < 0:
        raise ValueError(f"model config 'std_init': expected >= 0, got {dqn['std_init']}")
    dqn["epsilon"] = check_epsilon(dqn["epsilon"])
    return dqn, user


class DQNCatalog(Catalog):
    """Catalog + ``build_af_head`` / ``build_vf_head`` (RLlib's DQNCatalog). ``dqn_config`` holds
    the DQN keys; ``model_config_dict`` the resolved base keys; ``num_atoms``; ``mask_key``."""

    def __init__(self, observation_space: gym.Space, action_space: gym.Space,
                 model_config_dict: Optional[Mapping[str, Any]] = None, **kwargs: Any):
        if not isinstance(action_space, gym.spaces.Discrete):
            raise ValueError(f"action_space: DQN needs a Discrete action space, got {action_space!r}")
        inner, n_mask = split_action_mask(observation_space)
        if n_mask is not None and n_mask != int(action_space.n):
            raise ValueError(f"observation_space[{MASK_KEY!r}]: expected shape ({int(action_space.n)},) "
                             f"(the number of actions), got ({n_mask},)")
        self.dqn_config, rest = resolve_dqn_config(model_config_dict or {})
        super().__init__(inner, action_space, rest, **kwargs)
        self.observation_space = observation_space
        self.encoder_observation_space = inner
        self.mask_key = MASK_KEY if n_mask is not None else None
        if self.recurrent_kind:
            raise ValueError(f"model config 'use_{self.recurrent_kind}': recurrent encoders are not supported "
                             "by rlmodule_fast's DQN module (use RLlib's DefaultDQNTorchRLModule)")
        self.num_atoms = self.dqn_config["num_atoms"]

    def build_af_head(self, framework: str = "torch") -> TorchMLPHead:
        """Advantage head (dueling) or Q head: MLP(head_fcnet_hiddens) -> A * num_atoms, linear."""
        return self._head(framework, int(self.action_space.n) * self.num_atoms)

    def build_vf_head(self, framework: str = "torch") -> TorchMLPHead:
        """Value head of the dueling architecture: MLP(head_fcnet_hiddens) -> 1, linear."""
        return self._head(framework, 1)

    def _head(self, framework: str, out: int) -> TorchMLPHead:
        """RLlib's ``DQNCatalog._get_head_config``: head_fcnet_hiddens / _activation, the
        ``head_fcnet_*_initializer`` settings on every layer (a seed gives RLlib's weights), no
        layer norm (RLlib 2.60's DQN heads do not read ``head_fcnet_use_layernorm``)."""
        check_framework(framework)
        cfg = self.model_config_dict
        init = {"kernel": cfg["head_fcnet_kernel_initializer"], "kernel_kwargs": cfg["head_fcnet_kernel_initializer_kwargs"],
                "bias": cfg["head_fcnet_bias_initializer"], "bias_kwargs": cfg["head_fcnet_bias_initializer_kwargs"]}
        return TorchMLPHead(self.latent_dims[0], cfg["head_fcnet_hiddens"], cfg["head_fcnet_activation"], out,
                            False, cfg["log_std_clip_param"], init=init)

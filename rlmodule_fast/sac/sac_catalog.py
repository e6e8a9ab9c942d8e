"""SACCatalog: RLlib 2.60's SAC catalog (pi encoder + head, Q encoder(s) + head(s)) over our
building blocks, with RLlib's parameter names."""
from __future__ import annotations

from typing import Any, Mapping, Optional

import gymnasium as gym

from ..models.catalog import Catalog, check_framework
from ..models.config import _bool, _short, _sizes
from ..models.encoders import TorchMLPEncoder
from ..models.heads import TorchMLPHead
from ..ops.reference import canonical_activation
from .encoders import TorchMultiStreamEncoder

#: The model-config keys only SAC reads (``SACConfig`` puts ``twin_q`` into the model config;
#: ``fusionnet_*`` are RLlib 2.60 ``DefaultModelConfig`` fields for the Q encoder's fusion net),
#: with RLlib's defaults. The catalog takes them out before the base ``Catalog`` resolves the rest.
SAC_DEFAULTS: dict[str, Any] = {
    "twin_q": True,
    "fusionnet_hiddens": [256, 256],
    "fusionnet_activation": "tanh",
    "fusionnet_kernel_initializer": None,
    "fusionnet_kernel_initializer_kwargs": None,
    "fusionnet_bias_initializer": None,
    "fusionnet_bias_initializer_kwargs": None,
}


def split_sac_model_config(user: Optional[Mapping[str, Any]]) -> tuple[dict, dict]:
    """(SAC's keys resolved and validated, the other keys as given). ValueError names a bad key.

    Initializers: only None (torch's default init) is implemented for the fusion net; another
    value is a ValueError rather than a silently different initialisation."""
    rest = dict(user or {})
    sac = dict(SAC_DEFAULTS)
    for key in SAC_DEFAULTS:
        if key in rest:
            sac[key] = rest.pop(key)
    sac["twin_q"] = _bool("twin_q", sac["twin_q"])
    sac["fusionnet_hiddens"] = _sizes("fusionnet_hiddens", sac["fusionnet_hiddens"])
    sac["fusionnet_activation"] = canonical_activation(sac["fusionnet_activation"],
                                                       what="model config 'fusionnet_activation'")
    for key in ("fusionnet_kernel_initializer", "fusionnet_kernel_initializer_kwargs",
                "fusionnet_bias_initializer", "fusionnet_bias_initializer_kwargs"):
        if sac[key] not in (None, {}):
            raise ValueError(f"model config {key!r}: only None (torch's default initialisation) is supported, "
                             f"got {_short(sac[key])}")
    return sac, rest


class SACCatalog(Catalog):
    """``build_encoder`` (pi encoder: MLP over the flattened obs), ``build_qf_encoder``
    (continuous: a multi-stream encoder over obs and actions, RLlib's ``fusionnet_*``;
    discrete: the same MLP as pi), ``build_pi_head`` (MLP(head_fcnet_*) -> mean and log-std,
    2A, unclipped: the squashed Gaussian clamps it; discrete: n logits), ``build_qf_head``
    (-> 1 Q-value, or n for discrete actions). Action distribution: ``TorchSquashedGaussian``
    for a 1-D Box (actions in [-1, 1]), ``TorchCategorical`` for Discrete.

    Model config: the base keys (``models.config``) plus ``SAC_DEFAULTS``' keys."""

    def __init__(self, observation_space: gym.Space, action_space: gym.Space,
                 model_config_dict: Optional[Mapping[str, Any]] = None, **kwargs: Any):
        sac, rest = split_sac_model_config(model_config_dict)
        if not isinstance(action_space, (gym.spaces.Box, gym.spaces.Discrete)):
            raise ValueError(f"action_space: SAC supports Box and Discrete action spaces, got {action_space!r}")
        super().__init__(observation_space, action_space, rest, **kwargs)
        cfg = self._model_config_dict
        if cfg["use_lstm"] or cfg["use_gru"]:
            raise ValueError("model config 'use_lstm' / 'use_gru': SAC has no recurrent models (as RLlib)")
        if cfg["free_log_std"]:
            raise ValueError("model config 'free_log_std': not supported with SAC's squashed Gaussian "
                             "(RLlib raises too)")
        if isinstance(action_space, gym.spaces.Box) and not cfg["fcnet_hiddens"] and self.encoder_kind != "cnn":
            raise ValueError("model config 'fcnet_hiddens': SAC's continuous Q encoder needs at least one layer")
        self._model_config_dict = {**cfg, **sac}

    def build_qf_encoder(self, framework: str = "torch"):
        check_framework(framework)
        if isinstance(self.action_space, gym.spaces.Discrete):
            return self.build_encoder(framework)
        cfg = self._model_config_dict
        hid, act = cfg["fcnet_hiddens"], cfg["fcnet_activation"]
        # RLlib: the action stream has the obs encoder's hidden layers but one, then the latent
        # width (an image's flattened CNN output, else fcnet_hiddens[-1])
        streams = {
            "obs": self.build_encoder(framework),
            "actions": TorchMLPEncoder(int(self.action_space.shape[0]), hid[:-1] + [self.latent_dims[0]], act),
        }
        return TorchMultiStreamEncoder(streams, cfg["fusionnet_hiddens"], cfg["fusionnet_activation"],
                                       self.latent_dims[0])

    def build_pi_head(self, framework: str = "torch"):
        check_framework(framework)
        cfg = self._model_config_dict
        return TorchMLPHead(self.latent_dims[0], cfg["head_fcnet_hiddens"], cfg["head_fcnet_activation"],
                            self.action_dist_input_dim, False, cfg["log_std_clip_param"])

    def build_qf_head(self, framework: str = "torch"):
        check_framework(framework)
        cfg = self._model_config_dict
        n = int(self.action_space.n) if isinstance(self.action_space, gym.spaces.Discrete) else 1
        return TorchMLPHead(self.latent_dims[0], cfg["head_fcnet_hiddens"], cfg["head_fcnet_activation"], n)

    def get_action_dist_cls(self, framework: str = "torch"):
        check_framework(framework)
        from .. import distributions as d

        space = self.action_space
        if isinstance(space, gym.spaces.Discrete):
            return d.TorchCategorical
        if isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
            return d.TorchSquashedGaussian
        raise ValueError(f"action_space: SAC supports Discrete and 1-D Box action spaces, got {space!r}")

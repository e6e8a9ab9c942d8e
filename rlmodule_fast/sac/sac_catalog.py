"""SACCatalog: RLlib 2.60's SAC catalog (pi encoder + head, Q encoder(s) + head(s)) over our
building blocks, with RLlib's parameter names."""
from __future__ import annotations

from typing import Any, Mapping, Optional

import gymnasium as gym

from ..models.catalog import Catalog, check_framework
from ..models.config import _bool
from ..models.encoders import TorchMLPEncoder
from ..models.flatten import split_action_mask
from ..models.heads import TorchMLPHead
from ..models.initializers import stack_initializers
from .encoders import TorchMultiStreamEncoder

#: The model-config key only SAC reads: ``SACConfig`` puts ``twin_q`` into the model config
#: (RLlib's default True). The ``fusionnet_*`` keys of the Q encoder's fusion net are
#: ``DefaultModelConfig`` fields, resolved by ``models.config`` with the rest.
SAC_DEFAULTS: dict[str, Any] = {"twin_q": True}


def split_sac_model_config(user: Any) -> tuple[dict, Any]:
    """(SAC's keys resolved and validated, the rest for the base ``Catalog``). ``user``: None, a
    dict, or a ``DefaultModelConfig`` (ours or RLlib's; it has no SAC key). ValueError names a
    bad key."""
    sac = dict(SAC_DEFAULTS)
    if user is None or not isinstance(user, Mapping):
        return sac, user  # None or a DefaultModelConfig instance: the base catalog resolves it
    rest = dict(user)
    for key in SAC_DEFAULTS:
        if key in rest:
            sac[key] = rest.pop(key)
    sac["twin_q"] = _bool("twin_q", sac["twin_q"])
    return sac, rest


class SACCatalog(Catalog):
    """``build_encoder`` (pi encoder: MLP over the flattened obs), ``build_qf_encoder``
    (continuous: a multi-stream encoder over obs and actions, RLlib's ``fusionnet_*``;
    discrete: the same MLP as pi), ``build_pi_head`` (MLP(head_fcnet_*) -> mean and log-std,
    2A, unclipped: the squashed Gaussian clamps it; discrete: n logits), ``build_qf_head``
    (-> 1 Q-value, or n for discrete actions). Action distribution: ``TorchSquashedGaussian``
    for a 1-D Box (actions in [-1, 1]), ``TorchCategorical`` for Discrete.

    Observations: the base ``Catalog``'s (Box, Discrete, images; Dict / Tuple flattened as RLlib's
    FlattenObservations connector, ``models.flatten``) and RLlib's action-masking Dict
    ``{"action_mask": Box(0, 1, (n,)), "observations": <space>}`` with Discrete actions (n of them):
    the encoders read ``encoder_observation_space`` (the "observations"), ``action_mask_dim`` is n.

    Model config: the base keys (``models.config``, ``fusionnet_*`` included) plus ``twin_q``. As
    RLlib 2.60's SACCatalog, the pi / Q heads and the action stream get torch's default init and
    no layer norm (its head configs are built without those keys); the obs encoder follows
    ``fcnet_*`` and the fusion net ``fusionnet_*``."""

    def __init__(self, observation_space: gym.Space, action_space: gym.Space,
                 model_config_dict: Optional[Mapping[str, Any]] = None, **kwargs: Any):
        sac, rest = split_sac_model_config(model_config_dict)
        if not isinstance(action_space, (gym.spaces.Box, gym.spaces.Discrete)):
            raise ValueError(f"action_space: SAC supports Box and Discrete action spaces, got {action_space!r}")
        inner, n_mask = split_action_mask(observation_space)
        if n_mask is not None:
            if not isinstance(action_space, gym.spaces.Discrete):
                raise ValueError(f"observation_space['action_mask']: masking needs a Discrete action space "
                                 f"(discrete SAC), got action_space {action_space!r}")
            if n_mask != int(action_space.n):
                raise ValueError(f"observation_space['action_mask']: expected shape ({int(action_space.n)},) "
                                 f"(one entry per action), got ({n_mask},)")
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
        # width (an image's flattened CNN output, else fcnet_hiddens[-1]); no layer norm, torch's
        # default init. Streams are built in sorted key order ("actions", "obs"), as RLlib's.
        streams = {"actions": TorchMLPEncoder(int(self.action_space.shape[0]), hid[:-1] + [self.latent_dims[0]], act)}
        streams["obs"] = self.build_encoder(framework)
        return TorchMultiStreamEncoder(streams, cfg["fusionnet_hiddens"], cfg["fusionnet_activation"],
                                       self.latent_dims[0], init=stack_initializers(cfg, "fusionnet"))

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

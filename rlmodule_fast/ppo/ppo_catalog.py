"""PPOCatalog: the actor-critic encoder, pi head and value head of PPO."""
from __future__ import annotations

import gymnasium as gym

from ..models.catalog import Catalog, check_framework
from ..models.encoders import TorchActorCriticEncoder
from ..models.heads import TorchFreeLogStdMLPHead, TorchMLPHead


class PPOCatalog(Catalog):
    """Catalog + ``build_actor_critic_encoder``, ``build_pi_head``, ``build_vf_head``.

    pi head: MLP(head_fcnet_hiddens, head_fcnet_activation) with a linear output of the
    distribution's input width (Gaussian: mean and clamped log-std, or mean + free ``log_std``);
    vf head: the same MLP shape with one output. ``head_fcnet_use_layernorm`` norms the heads'
    hidden layers. As RLlib 2.60's PPOCatalog, the heads get torch's default init: its
    ``MLPHeadConfig``s are built without the ``head_fcnet_*_initializer`` keys (DQN's catalog
    passes them), so a seed gives RLlib's PPO weights. ``build_actor_critic_encoder`` builds
    each encoder with ``build_encoder`` (RLlib's from ``_encoder_config``, which ``build_encoder``
    builds here too).
    """

    @property
    def pi_and_vf_head_hiddens(self) -> list:
        """RLlib's PPOCatalog attribute: ``head_fcnet_hiddens``."""
        return self.model_config_dict["head_fcnet_hiddens"]

    @property
    def pi_and_vf_head_activation(self) -> str:
        """RLlib's PPOCatalog attribute: ``head_fcnet_activation``."""
        return self.model_config_dict["head_fcnet_activation"]

    def build_actor_critic_encoder(self, framework: str = "torch", inference_only: bool = False) -> TorchActorCriticEncoder:
        check_framework(framework)
        return TorchActorCriticEncoder(lambda: self.build_encoder(framework),
                                       shared=self.model_config_dict["vf_share_layers"],
                                       inference_only=inference_only)

    def build_pi_head(self, framework: str = "torch"):
        check_framework(framework)
        cfg = self.model_config_dict
        gaussian = isinstance(self.action_space, gym.spaces.Box)
        if cfg["free_log_std"]:
            if not gaussian:
                raise ValueError("model config 'free_log_std': only valid for Box action spaces")
            return TorchFreeLogStdMLPHead(self.latent_dims[0], cfg["head_fcnet_hiddens"], cfg["head_fcnet_activation"],
                                          int(self.action_space.shape[0]), True, cfg["log_std_clip_param"],
                                          use_layernorm=cfg["head_fcnet_use_layernorm"])
        return TorchMLPHead(self.latent_dims[0], cfg["head_fcnet_hiddens"], cfg["head_fcnet_activation"],
                            self.action_dist_input_dim, gaussian, cfg["log_std_clip_param"],
                            use_layernorm=cfg["head_fcnet_use_layernorm"])

    def build_vf_head(self, framework: str = "torch"):
        check_framework(framework)
        cfg = self.model_config_dict
        return TorchMLPHead(self.latent_dims[0], cfg["head_fcnet_hiddens"], cfg["head_fcnet_activation"],
                            1, False, cfg["log_std_clip_param"], use_layernorm=cfg["head_fcnet_use_layernorm"])

"""FastSACTorchRLModule: RLlib's own DefaultSACTorchRLModule, with the env-runner step fused.

Use it wherever RLlib takes a module class (needs ray[rllib])::

    from ray.rllib.algorithms.sac import SACConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from rlmodule_fast.rllib import FastSACTorchRLModule

    config = SACConfig().environment("Pendulum-v1").rl_module(
        rl_module_spec=RLModuleSpec(module_class=FastSACTorchRLModule))

It *is* a ``DefaultSACTorchRLModule`` (same layers, names, catalog, target networks, state,
``forward_train``: RLlib's learner path unchanged). Only ``forward_exploration`` /
``forward_inference`` differ: on CPU, pi encoder, pi head and sampling run in ONE call of our
C++ backend and return ``actions`` and ``action_logp`` with ``action_dist_inputs`` (Box:
squashed-Gaussian actions in [-1, 1], which RLlib's module-to-env connector rescales to the
bounds; Discrete: categorical). RLlib's ``GetActions`` connector uses those actions as they are.
Inference returns tanh(mean) (RLlib's own connector would take the unsquashed mean) or argmax.

The weights RLlib's learner syncs into env runners (``set_state`` -> ``load_state_dict``) are
seen by the next step (the plan checks the parameters' versions). When the fused step cannot
run (no C++ backend, a CUDA module, an unsupported space or layer, ``RLMODULE_FAST_BACKEND=torch``)
RLlib's forward runs; :meth:`fast_path_info` says which path runs and why.
"""
from __future__ import annotations

from typing import Optional

import gymnasium as gym

from ray.rllib.algorithms.sac.torch.default_sac_torch_rl_module import DefaultSACTorchRLModule
from ray.rllib.core.columns import Columns

from ..core.torch_rl_module import WeightsLockMixin
from ..fastpath import EncoderLayers, PolicyLayers, fused_plan
from ..models.config import resolve_model_config
from ..sac.sac_catalog import split_sac_model_config
from ._fused import FusedForwardsMixin
from .module import _linears_norms
from .sac_convert import rllib_sac_model_config


class FastSACTorchRLModule(WeightsLockMixin, FusedForwardsMixin, DefaultSACTorchRLModule):
    """RLlib's ``DefaultSACTorchRLModule`` whose exploration / inference step runs fused on CPU
    (see the module docstring). Weight updates (``set_state`` / ``load_state_dict``) hold
    ``weights_lock()`` and are all-or-nothing."""

    def setup(self) -> None:
        super().setup()
        self._setup_fast(lambda: resolve_model_config(split_sac_model_config(
            rllib_sac_model_config(self.model_config, source="FastSACTorchRLModule model_config"))[1]))

    def policy_layers(self):
        """pi encoder, pi head and distribution for ``fastpath.PolicyPlan`` (the layers
        themselves, so in-place weight updates are seen). ValueError if the fused step cannot run them."""
        cfg = self._fast_cfg
        space, obs = self.action_space, self.observation_space
        if isinstance(space, gym.spaces.Discrete):
            dist, sizes = "categorical", [int(space.n)]
        elif isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
            dist, sizes = "squashed_gaussian", [int(space.shape[0])]
        else:
            raise ValueError(f"action space {space} is not supported by the fused step")
        if not (isinstance(obs, gym.spaces.Box) and len(obs.shape) == 1):
            raise ValueError(f"observation space {obs} is not supported by the fused step (1-D Box only)")
        if getattr(self.pi, "clip_log_std", False) or not hasattr(self.pi_encoder, "net"):
            raise ValueError("pi / pi_encoder: not the MLP encoder and unclipped MLP head of RLlib's SACCatalog")
        enc, enc_norms = _linears_norms(self.pi_encoder.net.mlp, "pi_encoder.net")  # fcnet_use_layernorm
        pi, pi_norms = _linears_norms(self.pi.net.mlp, "pi.net")
        return PolicyLayers(
            actor=EncoderLayers(mlp=enc, activation=cfg["fcnet_activation"], norms=enc_norms),
            critic=None, pi=pi, pi_norms=pi_norms, vf=None,
            head_activation=cfg["head_fcnet_activation"], dist=dist, action_sizes=sizes,
            log_std_clip=None, free_log_std=None,
        )

    def _fast(self, batch: dict, deterministic: bool) -> Optional[dict]:
        """The fused step's outputs, or None to run RLlib's forward."""
        obs = batch[Columns.OBS]
        plan = fused_plan(self, obs)
        if plan is None or obs.ndim != 2:
            return None
        res = plan.step(obs, deterministic=deterministic)
        self._calls[0] += 1
        return {Columns.ACTION_DIST_INPUTS: res["action_dist_inputs"], Columns.ACTIONS: res["actions"],
                Columns.ACTION_LOGP: res["action_logp"]}

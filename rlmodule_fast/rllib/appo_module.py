"""FastAPPOTorchRLModule: RLlib's own DefaultAPPOTorchRLModule with the env-runner step fused
(needs ray[rllib])::

    from ray.rllib.algorithms.appo import APPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from rlmodule_fast.rllib import FastAPPOTorchRLModule

    config = APPOConfig().environment("CartPole-v1").rl_module(
        rl_module_spec=RLModuleSpec(module_class=FastAPPOTorchRLModule))

It *is* a ``DefaultAPPOTorchRLModule`` (PPO's layers plus the ``_old_encoder`` / ``_old_pi``
target nets, RLlib's ``forward_train``, ``compute_values``, ``forward_target``); exploration and
inference run through ``FastPPOTorchRLModule``'s fused step (see ``rllib/module.py``: the same
machinery, fall-back rules and ``fast_path_info``). The fused step reads ``encoder`` and ``pi``,
never the target nets. IMPALA uses the PPO module: ``FastPPOTorchRLModule``.
"""
from __future__ import annotations

from ray.rllib.algorithms.appo.torch.default_appo_torch_rl_module import DefaultAPPOTorchRLModule

from .module import FastPPOTorchRLModule


class FastAPPOTorchRLModule(FastPPOTorchRLModule, DefaultAPPOTorchRLModule):
    """RLlib's ``DefaultAPPOTorchRLModule`` whose exploration / inference step runs fused on CPU."""


__all__ = ["FastAPPOTorchRLModule"]

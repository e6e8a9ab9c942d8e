"""Interop with RLlib (ray[rllib]): serve RLlib-trained PPO policies, run inside RLlib's loop.

Without ray installed: :func:`load_rllib_checkpoint` (RLlib's pickled module files, read by a
restricted unpickler that runs nothing from them), :func:`from_rllib_module`,
:func:`to_rllib_state`, :func:`rllib_module_kwargs`. With ``ray[rllib]`` (``pip install
rlmodule_fast[rllib]``): also :class:`FastPPOTorchRLModule` (RLlib's PPO module with the fused
env-runner step), :class:`FastEnvRunner` (RLlib's single-agent env runner without per-step
connectors) and :func:`to_rllib_module`. SAC: :class:`FastSACTorchRLModule` (RLlib's
DefaultSACTorchRLModule, fused squashed-Gaussian / categorical step) and the converters of
``sac_convert.py`` (:func:`from_rllib_sac_module`, :func:`to_rllib_sac_module`, ...). DQN:
:class:`FastDQNTorchRLModule` (RLlib's DQN module, its epsilon-greedy step fused);
:func:`load_rllib_checkpoint` / :func:`from_rllib_module` / :func:`to_rllib_state` /
:func:`to_rllib_module` take DQN modules too (``dqn_convert``: the ``*_dqn_*`` functions). APPO:
:class:`FastAPPOTorchRLModule` (RLlib's DefaultAPPOTorchRLModule, PPO's fused step); the same
four functions take APPO modules and checkpoints (target networks included; ``appo_convert``:
:func:`load_rllib_appo_checkpoint`, :func:`from_rllib_appo_module`, :func:`to_rllib_appo_module`).
``import rlmodule_fast`` never imports ray.
"""
from ._pickle import UnsafeCheckpointError
from .appo_convert import from_rllib_appo_module, load_rllib_appo_checkpoint, to_rllib_appo_module
from .convert import (
    from_rllib_module,
    load_rllib_checkpoint,
    rllib_model_config,
    rllib_module_kwargs,
    to_rllib_module,
    to_rllib_state,
)
from .dqn_convert import (
    from_rllib_dqn_module,
    load_rllib_dqn_checkpoint,
    rllib_dqn_module_kwargs,
    to_rllib_dqn_module,
    to_rllib_dqn_state,
)
from .sac_convert import (
    from_rllib_sac_module,
    load_rllib_sac_checkpoint,
    rllib_sac_model_config,
    rllib_sac_module_kwargs,
    to_rllib_sac_module,
    to_rllib_sac_state,
)

__all__ = [
    "FastAPPOTorchRLModule", "FastDQNTorchRLModule", "FastEnvRunner", "FastPPOTorchRLModule", "FastSACTorchRLModule",
    "UnsafeCheckpointError",
    "from_rllib_appo_module", "from_rllib_dqn_module", "from_rllib_module", "from_rllib_sac_module",
    "load_rllib_appo_checkpoint", "load_rllib_checkpoint", "load_rllib_dqn_checkpoint", "load_rllib_sac_checkpoint",
    "rllib_dqn_module_kwargs", "rllib_model_config", "rllib_module_kwargs", "rllib_sac_model_config",
    "rllib_sac_module_kwargs", "to_rllib_appo_module", "to_rllib_dqn_module", "to_rllib_dqn_state", "to_rllib_module",
    "to_rllib_sac_module", "to_rllib_sac_state", "to_rllib_state",
]


# Names whose modules import ray: imported on first access only. name -> submodule
_LAZY = {
    "FastPPOTorchRLModule": "module",
    "FastAPPOTorchRLModule": "appo_module",
    "FastDQNTorchRLModule": "dqn_module",
    "FastSACTorchRLModule": "sac_module",
    "FastEnvRunner": "env_runner",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'rlmodule_fast.rllib' has no attribute {name!r}")

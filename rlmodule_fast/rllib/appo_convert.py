"""RLlib <-> rlmodule_fast for APPO (no ray import here except in :func:`to_rllib_appo_module`).

RLlib's ``DefaultAPPOTorchRLModule`` is its PPO module plus two "old policy" target networks
(``_old_encoder``, ``_old_pi``) that exist once its learner called ``make_target_networks()``;
our ``APPOTorchRLModule`` has the same layers and parameter names. So this is PPO's conversion
(``convert.py``: same model-config rules, the meta-device preview, the restricted unpickler)
with our APPO class and the target networks made first when a state holds them.

- :func:`load_rllib_appo_checkpoint`: a directory RLlib's ``save_to_path`` wrote for a
  ``DefaultAPPOTorchRLModule`` (or an Algorithm / MultiRLModule checkpoint holding one) -> our
  ``APPOTorchRLModule`` with the same weights (target networks too, when the file holds them).
  ``load_rllib_checkpoint`` hands such checkpoints here (picked by the constructor file's class).
- :func:`from_rllib_appo_module`: a live RLlib APPO module -> ours (``from_rllib_module`` hands
  APPO modules here).
- :func:`to_rllib_appo_module`: ours -> RLlib's (needs ray; ``to_rllib_module`` hands our APPO
  modules here). ``to_rllib_state`` / ``rllib_module_kwargs`` take APPO modules as they are: the
  names and constructor arguments are PPO's.
"""
from __future__ import annotations

import pathlib
from typing import Any, Optional

from ..appo import APPOTorchRLModule
from ..core.columns import DEFAULT_MODULE_ID
from .convert import (CTOR_FILE, RLLIB_PPO_CATALOGS, PathLike, RLlibCtor, RLlibModuleKind, _from_rllib_ppo, _load_ppo,
                      _names, _pickle_module_dir, read_rllib_ctor, rllib_model_config, rllib_module_kwargs,
                      to_rllib_state)

#: RLlib module classes whose layers are those of DefaultAPPOTorchRLModule. RLlib's APPOConfig
#: names the backward-compatible alias ``appo_torch_rl_module.APPOTorchRLModule``, which is the
#: same class object and so pickles as ``DefaultAPPOTorchRLModule``; the alias path is admitted
#: for files written by code that subclassed it under that name.
RLLIB_APPO_CLASSES = frozenset({
    "ray.rllib.algorithms.appo.torch.default_appo_torch_rl_module.DefaultAPPOTorchRLModule",
    "ray.rllib.algorithms.appo.torch.appo_torch_rl_module.APPOTorchRLModule",
    "rlmodule_fast.rllib.appo_module.FastAPPOTorchRLModule",
})
#: State-dict prefixes of the target networks (RLlib's names, and ours).
TARGET_PREFIXES = ("_old_encoder.", "_old_pi.")

# APPO builds its module with PPO's catalog and model config.
APPO_KIND = RLlibModuleKind("APPO", RLLIB_APPO_CLASSES, RLLIB_PPO_CATALOGS, rllib_model_config)


def is_rllib_appo(m: Any) -> bool:
    """Whether ``m`` is an instance of RLlib's DefaultAPPOTorchRLModule (or a subclass)."""
    return any(f"{c.__module__}.{c.__qualname__}" in RLLIB_APPO_CLASSES for c in type(m).__mro__)


def load_rllib_appo_checkpoint(path: PathLike, *, module_id: str = DEFAULT_MODULE_ID,
                               inference_only: Optional[bool] = None) -> APPOTorchRLModule:
    """Our ``APPOTorchRLModule`` with the weights of an RLlib ``DefaultAPPOTorchRLModule``
    checkpoint (see ``load_rllib_checkpoint`` for ``path``, ``module_id`` and the safety rules:
    restricted unpickler, module built on the meta device and checked against the weights before
    it is built for real, FileNotFoundError for missing files, else ValueError naming the file).
    A learner's checkpoint holds the target networks (``_old_encoder``, ``_old_pi``): they are
    made and loaded too unless ``inference_only``. A PPO / DQN / SAC checkpoint is refused by name.

    Example::

        module = rf.rllib.load_rllib_appo_checkpoint("ckpt/learner_group/learner/rl_module/default_policy")
        module.forward_target({"obs": torch.zeros(2, 4)})["target_network_action_dist_inputs"]  # [2, A]
    """
    mdir = _pickle_module_dir(path, module_id)
    return _load_appo(mdir, read_rllib_ctor(mdir / CTOR_FILE, (APPO_KIND,), inference_only=inference_only))


def _load_appo(mdir: pathlib.Path, ctor: RLlibCtor) -> APPOTorchRLModule:
    """The module of ``mdir`` whose constructor file :func:`read_rllib_ctor` read as ``ctor``."""
    return _load_ppo(mdir, ctor, APPOTorchRLModule, TARGET_PREFIXES)


def from_rllib_appo_module(m: Any, *, inference_only: Optional[bool] = None) -> APPOTorchRLModule:
    """Our ``APPOTorchRLModule`` holding a copy of a live RLlib APPO module's weights (its
    target networks too, when it made them and ``inference_only`` is not set). Later changes to
    ``m`` are not seen; ``ours.set_state(m.get_state())`` syncs. ValueError if ``m`` is not
    RLlib's DefaultAPPOTorchRLModule (or a subclass) or its weights do not fit."""
    name = f"{type(m).__module__}.{type(m).__qualname__}"
    if not is_rllib_appo(m):
        raise ValueError(f"from_rllib_appo_module: {name} is not RLlib's DefaultAPPOTorchRLModule (or a subclass)")
    return _from_rllib_ppo(m, inference_only, name, APPOTorchRLModule, TARGET_PREFIXES)


def to_rllib_appo_module(module: APPOTorchRLModule, module_class: Any = None):
    """An RLlib APPO module (default ``DefaultAPPOTorchRLModule``; needs ray[rllib]) with
    ``module``'s weights, and its target networks when ``module`` has them (made on RLlib's side
    first: RLlib's ``set_state`` would silently skip them otherwise); ``module_class`` may be
    :class:`~rlmodule_fast.rllib.FastAPPOTorchRLModule`. ValueError if the RLlib module's
    parameter names differ from ours (RLlib's ``set_state`` ignores such keys)."""
    if not isinstance(module, APPOTorchRLModule):
        raise ValueError(f"to_rllib_appo_module: expected an APPOTorchRLModule, got {type(module).__name__}")
    if module_class is None:
        from ray.rllib.algorithms.appo.torch.default_appo_torch_rl_module import DefaultAPPOTorchRLModule

        module_class = DefaultAPPOTorchRLModule
    m = module_class(**rllib_module_kwargs(module))
    state = to_rllib_state(module, inference_only=module.inference_only)
    if any(k.startswith(TARGET_PREFIXES) for k in state):
        m.make_target_networks()
    theirs = set(m.state_dict())
    if theirs != set(state):
        raise ValueError(f"to_rllib_appo_module: {module_class.__name__} built from rllib_module_kwargs(module) has "
                         f"other parameters than ours: only RLlib's {_names(theirs - set(state))}, only ours "
                         f"{_names(set(state) - theirs)}")
    m.set_state(state)
    return m

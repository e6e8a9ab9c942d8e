"""RLlib <-> rlmodule_fast for DQN: checkpoints, live modules and state dicts (no ray import here
except in :func:`to_rllib_dqn_module`). Same rules as ``convert.py`` (PPO), whose helpers it uses:
RLlib's pickles are read by the restricted unpickler (nothing in the files runs), a checkpoint's
sizes are checked against its weights on the meta device before anything is allocated.

- :func:`load_rllib_dqn_checkpoint`: a directory RLlib's ``save_to_path`` wrote for a
  ``DefaultDQNTorchRLModule`` (or an Algorithm / MultiRLModule checkpoint holding one) -> our
  ``DQNTorchRLModule`` with the same weights (target networks too, when the file has them).
- :func:`from_rllib_dqn_module`: a live RLlib DQN module -> ours (weights copied).
- :func:`to_rllib_dqn_state`: our module's state as RLlib's ``set_state`` takes it (numpy arrays;
  the names are RLlib's); :func:`rllib_dqn_module_kwargs`; :func:`to_rllib_dqn_module` (needs ray).

``convert.load_rllib_checkpoint``, ``from_rllib_module`` and ``to_rllib_state`` hand DQN
modules / checkpoints to these.
"""
from __future__ import annotations

import pathlib
from typing import Any, Mapping, Optional

import numpy as np
import torch

from ..core.columns import DEFAULT_MODULE_ID
from ..dqn import DQNCatalog, DQNTorchRLModule
from ..dqn.dqn_catalog import resolve_dqn_config
from ._pickle import restricted_load
from .convert import (CTOR_FILE, STATE_FILE, PathLike, RLlibCtor, RLlibModuleKind, _as_tensors, _cut, _name, _names,
                      _pickle_module_dir, read_rllib_ctor, rllib_model_config)

#: RLlib module classes whose layers are those of DefaultDQNTorchRLModule.
RLLIB_DQN_CLASSES = frozenset({
    "ray.rllib.algorithms.dqn.torch.default_dqn_torch_rl_module.DefaultDQNTorchRLModule",
    "rlmodule_fast.rllib.dqn_module.FastDQNTorchRLModule",
})
RLLIB_DQN_CATALOGS = frozenset({"ray.rllib.algorithms.dqn.dqn_catalog.DQNCatalog"})
_TARGETS = ("_target_encoder.", "_target_af.", "_target_vf.")


def is_rllib_dqn(m: Any) -> bool:
    return any(f"{c.__module__}.{c.__qualname__}" in RLLIB_DQN_CLASSES for c in type(m).__mro__)


def _config(model_config: Any, source: str) -> dict:
    """Our model config from RLlib's DQN one: DQN keys validated, the rest as ``rllib_model_config``."""
    if model_config is not None and not isinstance(model_config, Mapping):
        model_config = rllib_model_config(model_config, source=source)  # a DefaultModelConfig: its dict
    dqn, rest = resolve_dqn_config(model_config or {})
    return {**rllib_model_config(rest, source=source), **dqn}


DQN_KIND = RLlibModuleKind("DQN", RLLIB_DQN_CLASSES, RLLIB_DQN_CATALOGS, _config)


def _build(obs_space, act_space, cfg: dict, inference_only: bool, source: str, *, meta: bool = False) -> DQNTorchRLModule:
    where = " (on the meta device: nothing allocated)" if meta else ""
    try:
        if meta:
            with torch.device("meta"):
                return DQNTorchRLModule(observation_space=obs_space, action_space=act_space, model_config=cfg,
                                        catalog_class=DQNCatalog, inference_only=inference_only)
        return DQNTorchRLModule(observation_space=obs_space, action_space=act_space, model_config=cfg,
                                catalog_class=DQNCatalog, inference_only=inference_only)
    except ValueError as e:
        raise ValueError(f"{source}: cannot build rlmodule_fast's DQNTorchRLModule{where}: {_cut(e)}") from e
    except Exception as e:  # noqa: BLE001 -- torch's size checks, OverflowError, TypeError, ...
        raise ValueError(f"{source}: cannot build rlmodule_fast's DQNTorchRLModule{where}: {type(e).__name__}: "
                         f"{_cut(e)}") from e


def _fit(module: DQNTorchRLModule, arrays: Mapping[str, torch.Tensor], source: str, described_by: str) -> dict:
    """The arrays ``module`` takes (target networks made first when the arrays hold them and the
    module is not inference-only); ValueError naming missing / unexpected / mis-shaped entries."""
    has_targets = any(k.startswith(_TARGETS) for k in arrays)
    if has_targets and not module.inference_only and not hasattr(module, "_target_af"):
        module.make_target_networks()
    own = module.state_dict()
    extra = [k for k in arrays if k not in own and not (module.inference_only and k.startswith(_TARGETS))]
    missing = [k for k in own if k not in arrays]
    if extra or missing:
        raise ValueError(f"{source}: the weights do not fit a DQN module built from its config in {described_by} "
                         f"(not a DefaultDQNTorchRLModule layout?): missing {_names(missing)}, unexpected {_names(extra)}")
    for k, t in own.items():
        v = arrays[k]
        if tuple(v.shape) != tuple(t.shape) or v.dtype.is_floating_point != t.dtype.is_floating_point:
            raise ValueError(f"{source}: {_name(k)} is {v.dtype} {tuple(v.shape)} but the module built from "
                             f"{described_by} expects {t.dtype} {tuple(t.shape)}")
    return {k: v for k, v in arrays.items() if k in own}


def load_rllib_dqn_checkpoint(path: PathLike, *, module_id: str = DEFAULT_MODULE_ID,
                              inference_only: Optional[bool] = None) -> DQNTorchRLModule:
    """Our ``DQNTorchRLModule`` with the weights of an RLlib ``DefaultDQNTorchRLModule`` checkpoint
    (see ``convert.load_rllib_checkpoint`` for ``path``, ``module_id`` and the safety rules).
    A learner's checkpoint carries the target networks: they are loaded too (``make_target_networks``
    is called first) unless ``inference_only``."""
    mdir = _pickle_module_dir(path, module_id)
    return _load_dqn(mdir, read_rllib_ctor(mdir / CTOR_FILE, (DQN_KIND,), inference_only=inference_only))


def _load_dqn(mdir: pathlib.Path, ctor: RLlibCtor) -> DQNTorchRLModule:
    """The module of ``mdir`` whose constructor file :func:`read_rllib_ctor` read as ``ctor``."""
    preview = _build(ctor.observation_space, ctor.action_space, ctor.model_config,
                     ctor.inference_only, ctor.source, meta=True)
    state_file = mdir / STATE_FILE
    arrays = _as_tensors(restricted_load(state_file), str(state_file))
    _fit(preview, arrays, str(state_file), ctor.source)
    del preview
    module = _build(ctor.observation_space, ctor.action_space, ctor.model_config,
                    ctor.inference_only, ctor.source)
    module.set_state(_fit(module, arrays, str(state_file), ctor.source))
    module.eval()
    return module


def from_rllib_dqn_module(m: Any, *, inference_only: Optional[bool] = None) -> DQNTorchRLModule:
    """Our ``DQNTorchRLModule`` holding a copy of a live RLlib DQN module's weights (its target
    networks too, if it has them)."""
    name = f"{type(m).__module__}.{type(m).__qualname__}"
    if not is_rllib_dqn(m):
        raise ValueError(f"from_rllib_dqn_module: {name} is not RLlib's DefaultDQNTorchRLModule (or a subclass)")
    cfg = _config(getattr(m, "model_config", None), f"{name}.model_config")
    inf = bool(m.inference_only) if inference_only is None else bool(inference_only)
    module = _build(m.observation_space, m.action_space, cfg, inf, name)
    module.set_state(_fit(module, _as_tensors(m.get_state(), name), name, "its config"))
    module.train(m.training)
    return module


def to_rllib_dqn_state(module: DQNTorchRLModule, *, inference_only: bool = False) -> dict[str, np.ndarray]:
    """``module``'s weights as RLlib's ``set_state`` takes them (fresh numpy copies; RLlib's names).
    ``inference_only``: without the target networks (what a Learner sends its EnvRunners)."""
    if not isinstance(module, DQNTorchRLModule):
        raise ValueError(f"to_rllib_dqn_state: expected a DQNTorchRLModule, got {type(module).__name__}")
    return {k: v.detach().cpu().numpy().copy() for k, v in module.get_state(inference_only=inference_only).items()}


def rllib_dqn_module_kwargs(module: DQNTorchRLModule) -> dict:
    """Constructor keyword arguments of the equivalent RLlib ``DefaultDQNTorchRLModule``."""
    if not isinstance(module, DQNTorchRLModule):
        raise ValueError(f"rllib_dqn_module_kwargs: expected a DQNTorchRLModule, got {type(module).__name__}")
    if module.catalog.mask_key is not None:
        raise ValueError("rllib_dqn_module_kwargs: action-masking Dict observations have no RLlib DQN equivalent")
    cfg = {**module.catalog.model_config_dict, **module.catalog.dqn_config}
    cfg.pop("use_gru", None)
    return {"observation_space": module.observation_space, "action_space": module.action_space,
            "inference_only": bool(module.inference_only), "model_config": cfg}


def to_rllib_dqn_module(module: DQNTorchRLModule, module_class: Any = None):
    """An RLlib module (default ``DefaultDQNTorchRLModule``; needs ray[rllib]) with ``module``'s
    weights (and target networks, when ``module`` has them); ``module_class`` may be
    :class:`~rlmodule_fast.rllib.FastDQNTorchRLModule`."""
    if module_class is None:
        from ray.rllib.algorithms.dqn.torch.default_dqn_torch_rl_module import DefaultDQNTorchRLModule

        module_class = DefaultDQNTorchRLModule
    m = module_class(**rllib_dqn_module_kwargs(module))
    state = to_rllib_dqn_state(module)
    if any(k.startswith(_TARGETS) for k in state) and not module.inference_only:
        m.make_target_networks()
    m.set_state(state)
    return m

"""RLlib <-> rlmodule_fast for SAC (no ray import here): model configs, live modules, state dicts.

- :func:`rllib_sac_model_config`: RLlib's SAC model config (a dict or ``DefaultModelConfig`` plus
  ``twin_q``) -> ours (SAC's keys kept, the rest as :func:`~rlmodule_fast.rllib.rllib_model_config`).
- :func:`from_rllib_sac_module`: a live ``DefaultSACTorchRLModule`` -> our ``SACTorchRLModule``
  with the same weights (target networks too, when it has them).
- :func:`load_rllib_sac_checkpoint`: a directory RLlib's ``save_to_path`` wrote for a
  ``DefaultSACTorchRLModule`` (or an Algorithm / MultiRLModule checkpoint holding one) -> ours,
  read by the restricted unpickler (nothing in the files runs), as ``load_rllib_checkpoint``.
- :func:`to_rllib_sac_state`, :func:`rllib_sac_module_kwargs`, :func:`to_rllib_sac_module`: the
  other way. Parameter names are the same on both sides, so states move unchanged.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Optional

import numpy as np
import torch

from ..sac import SACTorchRLModule
from ..sac.sac_catalog import SAC_DEFAULTS
from ..core.columns import DEFAULT_MODULE_ID
from ._pickle import restricted_load
from .convert import (CTOR_FILE, STATE_FILE, PathLike, RLlibCtor, RLlibModuleKind, _as_tensors, _check_fits, _cut,
                      _pickle_module_dir, _set_weights, config_dict, read_rllib_ctor, rllib_model_config)

#: RLlib module classes whose layers are those of DefaultSACTorchRLModule.
RLLIB_SAC_CLASSES = frozenset({
    "ray.rllib.algorithms.sac.torch.default_sac_torch_rl_module.DefaultSACTorchRLModule",
    "rlmodule_fast.rllib.sac_module.FastSACTorchRLModule",
})
RLLIB_SAC_CATALOGS = frozenset({"ray.rllib.algorithms.sac.sac_catalog.SACCatalog"})
_SAC_KEPT = ("twin_q", "fusionnet_hiddens", "fusionnet_activation")


def rllib_sac_model_config(cfg: Any, *, source: str = "model_config") -> dict:
    """Our SAC model config from RLlib's. ``twin_q`` and the fusion net's shape are kept; its
    initializer keys are dropped (weights are loaded, not initialised); everything else goes
    through :func:`~rlmodule_fast.rllib.rllib_model_config` (same rules as for PPO)."""
    cfg = config_dict(cfg, source)
    rest = {k: v for k, v in cfg.items() if k not in SAC_DEFAULTS}
    out = rllib_model_config(rest, source=source)
    for k in _SAC_KEPT:
        if k in cfg:
            out[k] = list(cfg[k]) if isinstance(cfg[k], tuple) else cfg[k]
    return out


SAC_KIND = RLlibModuleKind("SAC", RLLIB_SAC_CLASSES, RLLIB_SAC_CATALOGS, rllib_sac_model_config)


def _is_rllib_sac(m: Any) -> bool:
    return any(f"{c.__module__}.{c.__qualname__}" in RLLIB_SAC_CLASSES for c in type(m).__mro__)


def from_rllib_sac_module(m: Any, *, inference_only: Optional[bool] = None) -> SACTorchRLModule:
    """Our ``SACTorchRLModule`` holding a copy of a live RLlib SAC module's weights (its target
    networks too, when it made them). ValueError if ``m`` is not RLlib's DefaultSACTorchRLModule
    (or a subclass) or its weights do not fit."""
    name = f"{type(m).__module__}.{type(m).__qualname__}"
    if not _is_rllib_sac(m):
        raise ValueError(f"from_rllib_sac_module: {name} is not RLlib's DefaultSACTorchRLModule (or a subclass)")
    cfg = rllib_sac_model_config(getattr(m, "model_config", None), source=f"{name}.model_config")
    inf = bool(m.inference_only) if inference_only is None else bool(inference_only)
    try:
        module = SACTorchRLModule(observation_space=m.observation_space, action_space=m.action_space,
                                  model_config=cfg, inference_only=inf)
    except ValueError as e:
        raise ValueError(f"{name}: cannot build the equivalent SACTorchRLModule: {e}") from None
    state = m.get_state(inference_only=inf)
    if not inf and any(k.startswith("target_") for k in state):
        module.make_target_networks()
    _set_weights(module, _as_tensors(state, name), name)
    module.train(m.training)
    return module


def to_rllib_sac_state(module: SACTorchRLModule, *, inference_only: bool = False) -> dict[str, np.ndarray]:
    """``module``'s weights as RLlib's ``set_state`` takes them: name -> float32 numpy copy."""
    if not isinstance(module, SACTorchRLModule):
        raise ValueError(f"to_rllib_sac_state: expected a SACTorchRLModule, got {type(module).__name__}")
    return {k: v.detach().cpu().numpy().copy() for k, v in module.get_state(inference_only=inference_only).items()}


def rllib_sac_module_kwargs(module: SACTorchRLModule) -> dict:
    """Constructor keyword arguments of the equivalent RLlib ``DefaultSACTorchRLModule``. The
    model config is RLlib's full ``DefaultModelConfig`` (its ``__init__`` reads every key) with
    our values and ``twin_q``; needs ray[rllib]."""
    if not isinstance(module, SACTorchRLModule):
        raise ValueError(f"rllib_sac_module_kwargs: expected a SACTorchRLModule, got {type(module).__name__}")
    _check_rllib_convertible(module, "rllib_sac_module_kwargs")
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    cfg = dict(module.catalog.model_config_dict)
    cfg.pop("use_gru", None)
    full = dataclasses.asdict(DefaultModelConfig())
    full.update({k: v for k, v in cfg.items() if k in full or k == "twin_q"})
    return {"observation_space": module.observation_space, "action_space": module.action_space,
            "inference_only": bool(module.inference_only), "model_config": full}


def _check_rllib_convertible(module: SACTorchRLModule, who: str) -> None:
    """ValueError for a module RLlib's ``DefaultSACTorchRLModule`` cannot be built for."""
    if getattr(module, "_mask_dim", None) is not None:
        raise ValueError(f"{who}: an action-masking SACTorchRLModule (observation_space "
                         f"{module.observation_space!r}) cannot be converted: RLlib's DefaultSACTorchRLModule has no "
                         "action masking (no 'action_mask' handling; its catalog refuses Dict observation spaces)")
    if getattr(module, "_structured", False):
        raise ValueError(f"{who}: RLlib's DefaultSACTorchRLModule takes no Dict / Tuple observation space (its "
                         f"catalog raises), got {module.observation_space!r}; RLlib flattens such observations with "
                         "its FlattenObservations connector and builds the module on Box(-inf, inf, (D,), float32): "
                         "build that module yourself and load to_rllib_sac_state(module) into it")


def to_rllib_sac_module(module: SACTorchRLModule, module_class: Any = None):
    """An RLlib SAC module (default ``DefaultSACTorchRLModule``; needs ray[rllib]) with
    ``module``'s weights (and target networks, when ``module`` has them)."""
    if module_class is None:
        from ray.rllib.algorithms.sac.torch.default_sac_torch_rl_module import DefaultSACTorchRLModule

        module_class = DefaultSACTorchRLModule
    m = module_class(**rllib_sac_module_kwargs(module))
    if hasattr(module, "target_qf"):
        m.make_target_networks()
    m.set_state(to_rllib_sac_state(module, inference_only=module.inference_only))
    return m


def _build_sac(obs_space, act_space, cfg: dict, inference_only: bool, targets: bool, source: str, *,
               meta: bool = False) -> SACTorchRLModule:
    """Our SAC module (on the meta device: nothing allocated); any failure -> ValueError naming source."""
    where = " (on the meta device: nothing allocated)" if meta else ""
    try:
        with (torch.device("meta") if meta else torch.device("cpu")):
            m = SACTorchRLModule(observation_space=obs_space, action_space=act_space, model_config=cfg,
                                 inference_only=inference_only)
            if targets:
                m.make_target_networks()
        return m
    except Exception as e:  # noqa: BLE001 -- ValueError, torch's size errors, OverflowError, ...
        raise ValueError(f"{source}: cannot build rlmodule_fast's SACTorchRLModule{where}: {type(e).__name__}: "
                         f"{_cut(e)}") from e


def load_rllib_sac_checkpoint(path: PathLike, *, module_id: str = DEFAULT_MODULE_ID,
                              inference_only: Optional[bool] = None) -> SACTorchRLModule:
    """Our ``SACTorchRLModule`` with the weights of an RLlib ``DefaultSACTorchRLModule`` checkpoint
    (target networks too when it holds them): the directory ``save_to_path()`` wrote, or a
    MultiRLModule / Algorithm checkpoint holding one under ``module_id``. Same safety rules as
    :func:`~rlmodule_fast.rllib.load_rllib_checkpoint`: restricted unpickler, module built on the
    meta device and checked against the weights before it is built for real; missing files ->
    FileNotFoundError, anything else wrong -> ValueError naming the file."""
    mdir = _pickle_module_dir(path, module_id)
    return _load_sac(mdir, read_rllib_ctor(mdir / CTOR_FILE, (SAC_KIND,), inference_only=inference_only))


def _load_sac(mdir: pathlib.Path, ctor: RLlibCtor) -> SACTorchRLModule:
    """The module of ``mdir`` whose constructor file :func:`read_rllib_ctor` read as ``ctor``."""
    state_file = mdir / STATE_FILE
    arrays = _as_tensors(restricted_load(state_file), str(state_file))
    targets = not ctor.inference_only and any(k.startswith("target_") for k in arrays)
    preview = _build_sac(ctor.observation_space, ctor.action_space, ctor.model_config,
                         ctor.inference_only, targets, ctor.source, meta=True)
    _check_fits(preview, arrays, str(state_file), ctor.source)
    del preview
    module = _build_sac(ctor.observation_space, ctor.action_space, ctor.model_config,
                        ctor.inference_only, targets, ctor.source)
    _set_weights(module, arrays, str(state_file))
    module.eval()
    return module

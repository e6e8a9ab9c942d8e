"""RLlib <-> rlmodule_fast: checkpoints, live modules and state dicts (no ray import here).

- :func:`load_rllib_checkpoint`: a directory RLlib's ``save_to_path`` wrote for a
  ``DefaultPPOTorchRLModule`` (or an Algorithm / MultiRLModule checkpoint holding one) -> our
  ``PPOTorchRLModule`` with the same weights (APPO / DQN / SAC checkpoints: our module of that
  kind, picked by the constructor file's class). RLlib's pickles are read by the restricted
  unpickler of ``_pickle.py``: nothing in the files is executed.
- :func:`from_rllib_module`: a live RLlib PPO (or APPO, DQN) module -> ours (weights copied).
- :func:`to_rllib_state`: our module's state as RLlib's ``set_state`` takes it (numpy arrays,
  RLlib's parameter names, which are ours); :func:`rllib_module_kwargs` the constructor
  arguments of the equivalent ``DefaultPPOTorchRLModule``; :func:`to_rllib_module` both at once
  (that one needs ray).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import warnings
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from ..core.columns import DEFAULT_MODULE_ID
from ..models.config import DEFAULTS
from ..ppo import PPOCatalog, PPOTorchRLModule
from ._pickle import ClassRef, Record, _describe, restricted_load, space_from_record

PathLike = Union[str, pathlib.Path]

STATE_FILE = "module_state.pkl"
CTOR_FILE = "class_and_ctor_args.pkl"

#: RLlib module classes whose layers are those of DefaultPPOTorchRLModule.
RLLIB_PPO_CLASSES = frozenset({
    "ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module.DefaultPPOTorchRLModule",
    "ray.rllib.algorithms.ppo.torch.ppo_torch_rl_module.PPOTorchRLModule",
    "rlmodule_fast.rllib.module.FastPPOTorchRLModule",
})
RLLIB_PPO_CATALOGS = frozenset({"ray.rllib.algorithms.ppo.ppo_catalog.PPOCatalog"})

# RLlib model-config keys (DefaultModelConfig and the old-stack dict) that change the network
# in a way these modules do not implement: accepted only at the value given here.
_MUST_BE = {
    "use_attention": False,
}
# Keys that only matter when building fresh weights (initializers) or for models other than
# PPO's (fusion nets); the loaded weights make them irrelevant. (conv_filters / conv_activation
# are model keys of ours: image observations get RLlib's CNN encoder.)
_IRRELEVANT_SUFFIXES = ("_initializer", "_initializer_kwargs", "_initializer_config")
_IRRELEVANT = {"fusionnet_hiddens", "fusionnet_activation",
               "_disable_preprocessor_api", "_disable_action_flattening"}

# Messages show file data through these (and ``_pickle._describe``): by type and size, names cut
# short, lists cut to a few items, other errors' messages cut: never the repr of what a file holds.
_MAX_LISTED = 8
_MAX_NAME_CHARS = 100
_MAX_CAUSE_CHARS = 500


def _name(k: Any) -> str:
    """A parameter / config key for a message: its repr if short, else its start and length."""
    if type(k) is not str:
        return _describe(k)
    return repr(k) if len(k) <= _MAX_NAME_CHARS else f"{k[:_MAX_NAME_CHARS]!r}... ({len(k)} long)"


def _names(keys: Any) -> str:
    """The first few of ``keys`` (sorted) and how many there are."""
    keys = sorted(keys)
    shown = "[" + ", ".join(_name(k) for k in keys[:_MAX_LISTED]) + "]"
    return shown if len(keys) <= _MAX_LISTED else f"{shown[:-1]}, ...] ({len(keys)} in all)"


def _cut(e: BaseException) -> str:
    msg = str(e)
    return msg if len(msg) <= _MAX_CAUSE_CHARS else msg[:_MAX_CAUSE_CHARS] + "..."


def config_dict(cfg: Any, source: str) -> Mapping:
    """An RLlib model config as the checkpoint or module holds it -- a dict, a pickled
    ``DefaultModelConfig`` record, the dataclass itself, or None -- as a mapping; ValueError naming
    ``source`` for anything else."""
    if isinstance(cfg, Record):
        cfg = cfg.state
    elif dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        cfg = dataclasses.asdict(cfg)
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, Mapping):
        raise ValueError(f"{source}: expected a dict, got {type(cfg).__name__}")
    return cfg


def rllib_model_config(cfg: Any, *, source: str = "model_config") -> dict:
    """Our model config from RLlib's (a dict, a ``DefaultModelConfig``, or its pickle record).

    Keys we implement are kept (``conv_filters``, ``conv_activation`` and the layer-norm keys
    included; validated by our config code when the module is built); initializer / fusion keys
    are dropped (the weights are loaded, not initialised); architecture keys we do not implement
    (attention) are a
    ValueError unless they hold RLlib's default; any other key (RLlib ignores unknown keys) is
    dropped with a warning naming it.
    """
    cfg = config_dict(cfg, source)
    out: dict = {}
    ignored = []
    for key, value in cfg.items():
        if not isinstance(key, str):
            raise ValueError(f"{source}: keys must be strings, got {_describe(key)}")
        if key in _IRRELEVANT or key.endswith(_IRRELEVANT_SUFFIXES):
            continue
        if key in DEFAULTS:
            out[key] = list(value) if isinstance(value, tuple) else value
        elif key in _MUST_BE:
            try:
                unsupported = bool(value) != _MUST_BE[key]
            except Exception:  # noqa: BLE001 -- bool() of an array of several values, ...
                unsupported = True
            if unsupported:
                raise ValueError(f"{source}: {key}={_describe(value)} is not supported by rlmodule_fast's PPO module")
        else:
            ignored.append(key)
    if ignored:
        warnings.warn(f"{source}: ignoring model config keys RLlib's PPO module does not use: {_names(ignored)}",
                      stacklevel=3)
    return out


def _build_ours(obs_space, act_space, model_config: dict, inference_only: bool, source: str, *,
                meta: bool = False, module_class: Optional[type] = None, targets: bool = False) -> PPOTorchRLModule:
    """Our PPO-layout module (``module_class``: ``PPOTorchRLModule`` by default, or its subclass
    ``APPOTorchRLModule``) for these spaces and config; ``targets``: ``make_target_networks()``
    too. ``meta``: on torch's meta device (no memory: sizes from a file are checked against its
    weights before anything is allocated). Any failure -> ValueError naming ``source``."""
    from ..core.rl_module import RLModuleSpec

    module_class = PPOTorchRLModule if module_class is None else module_class
    spec = RLModuleSpec(
        module_class=module_class, observation_space=obs_space, action_space=act_space,
        model_config_dict=model_config, catalog_class=PPOCatalog, inference_only=inference_only,
    )
    what = f"rlmodule_fast's {module_class.__name__}" + (" (on the meta device: nothing allocated)" if meta else "")
    try:
        with (torch.device("meta") if meta else contextlib.nullcontext()):
            module = spec.build()
            if targets:
                module.make_target_networks()
        return module
    except ValueError as e:
        raise ValueError(f"{source}: cannot build {what}: {_cut(e)}") from e
    except Exception as e:  # noqa: BLE001 -- torch's size overflow (RuntimeError), OverflowError, TypeError, ...
        raise ValueError(f"{source}: cannot build {what}: {type(e).__name__}: {_cut(e)}") from e


def _holds_targets(arrays: Mapping[str, Any], inference_only: bool, target_prefixes: Sequence[str]) -> bool:
    """Whether a state holds target networks the module must make before it can take them (never
    for an inference-only module: it drops them, as RLlib's env-runner copies do)."""
    return bool(target_prefixes) and not inference_only and any(k.startswith(tuple(target_prefixes)) for k in arrays)


def _as_tensors(state: Any, source: str) -> dict[str, torch.Tensor]:
    """Parameter name -> CPU tensor from RLlib's state (numpy arrays in native byte order)."""
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise ValueError(f"{source}: expected a dict of parameter name -> array, got {_describe(state)}")
    out = {}
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu()
        elif isinstance(v, (np.ndarray, np.generic)):
            a = np.asarray(v)
            # a copy (torch shares numpy's memory) in native byte order (torch refuses the other)
            a = a.astype(a.dtype.newbyteorder("=")) if not a.dtype.isnative else np.array(a, copy=True)
            try:
                v = torch.from_numpy(a)
            except (TypeError, ValueError, RuntimeError) as e:
                raise ValueError(f"{source}: {_name(k)}: {_describe(a)} is not a tensor torch can hold: "
                                 f"{_cut(e)}") from None
        else:
            raise ValueError(f"{source}: {_name(k)} is a {type(v).__name__}, expected an array")
        out[k] = v
    return out


def _check_fits(module: PPOTorchRLModule, arrays: Mapping[str, torch.Tensor], source: str, described_by: str) -> None:
    """Refuse weights that do not fill ``module`` (built from ``described_by``, on the meta device
    when loading a file): names, shapes and float/non-float as ``set_state`` will require them.
    Passing this bounds the module's real build by the weights' own size."""
    own = module.state_dict()
    extra = [k for k in arrays if k not in own]
    if module.inference_only:  # a learner's full state loaded into an inference-only module
        optional = module.get_non_inference_attributes()
        extra = [k for k in extra if not any(k == p or k.startswith(p + ".") for p in optional)]
    missing = [k for k in own if k not in arrays]
    if extra or missing:
        raise ValueError(
            f"{source}: the weights do not fit a {type(module).__name__} built from its config in {described_by} "
            f"(not RLlib's matching default module layout?): missing {_names(missing)}, unexpected {_names(extra)}"
        )
    for k, t in own.items():
        v = arrays[k]
        if tuple(v.shape) != tuple(t.shape):
            raise ValueError(f"{source}: {_name(k)} has shape {tuple(v.shape)} but the module built from "
                             f"{described_by} expects {tuple(t.shape)}")
        if v.dtype.is_floating_point != t.dtype.is_floating_point:
            raise ValueError(f"{source}: {_name(k)} has dtype {v.dtype} but the module built from "
                             f"{described_by} expects {t.dtype}")


def _set_weights(module: PPOTorchRLModule, arrays: Mapping[str, torch.Tensor], source: str) -> None:
    own = module.state_dict()
    try:
        module.set_state({k: v for k, v in arrays.items() if k in own})
    except ValueError as e:
        raise ValueError(f"{source}: {_cut(e)}") from e


def _has_state(d: pathlib.Path) -> bool:
    return (d / STATE_FILE).is_file() or (d / "module_state.msgpack").is_file()


def _find_module_dir(path: pathlib.Path, module_id: str) -> pathlib.Path:
    """The module directory inside an RLModule, MultiRLModule or Algorithm checkpoint."""
    for cand in (
        path / module_id,
        path / "rl_module" / module_id,
        path / "learner_group" / "learner" / "rl_module" / module_id,
        path / "env_runner" / "rl_module" / module_id,
    ):
        if _has_state(cand):
            return cand
    # a single module's directory (a MultiRLModule's has module sub-directories instead)
    if _has_state(path) and not any(_has_state(sub) for sub in path.iterdir() if sub.is_dir()):
        return path
    if not path.exists():
        raise FileNotFoundError(f"RLlib checkpoint not found: {path}")
    raise FileNotFoundError(
        f"{path}: no RLlib module checkpoint for module id {module_id!r} ({STATE_FILE} not found in it, "
        f"in {module_id}/, rl_module/{module_id}/ or learner_group/learner/rl_module/{module_id}/)"
    )


@dataclasses.dataclass(frozen=True)
class RLlibModuleKind:
    """An algorithm's RLlib module classes as :func:`read_rllib_ctor` accepts them: ``name`` for
    messages ("PPO"), the class and catalog paths (``"pkg.module.QualName"``) it admits, and the
    function turning RLlib's model config into ours (called as ``model_config(cfg, source=...)``)."""

    name: str
    classes: frozenset
    catalogs: frozenset
    model_config: Callable[..., dict]


PPO_KIND = RLlibModuleKind("PPO", RLLIB_PPO_CLASSES, RLLIB_PPO_CATALOGS, rllib_model_config)


@dataclasses.dataclass(frozen=True)
class RLlibCtor:
    """What a checkpoint's ``class_and_ctor_args.pkl`` says, checked by :func:`read_rllib_ctor`."""

    source: str  # the file's path, for messages
    kind: RLlibModuleKind  # the kind whose classes hold ``class_path``
    class_path: str
    observation_space: Any  # gymnasium spaces, rebuilt from their records
    action_space: Any
    model_config: dict  # ours, from ``kind.model_config``
    inference_only: bool  # the caller's if given, else the file's (None there: False)


def _pickle_module_dir(path: PathLike, module_id: str) -> pathlib.Path:
    """The module directory of an RLlib checkpoint (see :func:`_find_module_dir`), refusing one
    saved in msgpack format (ValueError naming the file)."""
    mdir = _find_module_dir(pathlib.Path(path), module_id)
    if not (mdir / STATE_FILE).is_file():
        raise ValueError(f"{mdir / 'module_state.msgpack'}: msgpack module checkpoints are not supported; "
                         "save the module with RLlib's default (pickle) format")
    return mdir


def read_rllib_ctor(path: PathLike, kinds: Sequence[RLlibModuleKind], *,
                    inference_only: Optional[bool] = None) -> RLlibCtor:
    """Read and check RLlib's ``class_and_ctor_args.pkl`` (``{'class': ..., 'ctor_args_and_kwargs':
    ((), kwargs)}``) with the restricted unpickler: nothing in it runs, classes stay names.

    The module class must be one of ``kinds``' classes and the catalog (if named) one of that
    kind's catalogs; the spaces are rebuilt from their records and the model config converted by
    the kind's ``model_config``. ``inference_only``: overrides the file's value (a bool or None).
    Anything wrong -> ValueError naming the file, what was expected and what it holds (by type
    and size, never by repr); a global outside the allowlist -> ``UnsafeCheckpointError``.
    """
    if inference_only is not None and type(inference_only) not in (bool, np.bool_):
        raise ValueError(f"inference_only: expected a bool or None, got {_describe(inference_only)}")
    src = str(path)
    info = restricted_load(path)
    if not isinstance(info, dict) or "class" not in info or "ctor_args_and_kwargs" not in info:
        raise ValueError(f"{src}: expected RLlib's {{'class', 'ctor_args_and_kwargs'}} dict, got {_describe(info)}")
    cls = info["class"]
    kind = next((k for k in kinds if isinstance(cls, ClassRef) and cls.path in k.classes), None)
    if kind is None:
        known = sorted(c for k in kinds for c in k.classes)
        raise ValueError(f"{src}: module class {_describe(cls)} is not a {' or '.join(k.name for k in kinds)} "
                         f"module this loader knows ({known})")
    try:
        args, kwargs = info["ctor_args_and_kwargs"]
    except (TypeError, ValueError):
        raise ValueError(f"{src}: 'ctor_args_and_kwargs' must be (args, kwargs), got "
                         f"{_describe(info['ctor_args_and_kwargs'])}") from None
    if type(args) not in (tuple, list) or len(args) or not isinstance(kwargs, dict):
        raise ValueError(f"{src}: expected keyword constructor arguments only, got args={_describe(args)}, "
                         f"kwargs={_describe(kwargs)}")
    cat = kwargs.get("catalog_class")
    if cat is not None and (not isinstance(cat, ClassRef) or cat.path not in kind.catalogs):
        short = " / ".join(sorted(c.rpartition(".")[2] for c in kind.catalogs))  # APPO's is PPOCatalog
        raise ValueError(f"{src}: catalog class {_describe(cat)} is not RLlib's {short} "
                         f"({sorted(kind.catalogs)})")
    obs_space = space_from_record(kwargs.get("observation_space"), f"{src}: observation_space")
    act_space = space_from_record(kwargs.get("action_space"), f"{src}: action_space")
    cfg = kind.model_config(kwargs.get("model_config"), source=f"{src}: model_config")
    if inference_only is None:
        inf = kwargs.get("inference_only", False)
        inf = False if inf is None else inf  # RLlib writes None for "not given"
        if type(inf) not in (bool, np.bool_):
            raise ValueError(f"{src}: inference_only must be a bool, got {_describe(inf)}")
    else:
        inf = inference_only
    return RLlibCtor(src, kind, cls.path, obs_space, act_space, cfg, bool(inf))


def load_rllib_checkpoint(path: PathLike, *, module_id: str = DEFAULT_MODULE_ID,
                          inference_only: Optional[bool] = None) -> PPOTorchRLModule:
    """Our ``PPOTorchRLModule`` with the weights of an RLlib ``DefaultPPOTorchRLModule`` checkpoint
    (a ``DefaultAPPOTorchRLModule`` / ``DefaultDQNTorchRLModule`` / ``DefaultSACTorchRLModule``
    checkpoint gives our APPO / DQN / SAC module, as ``load_rllib_appo_checkpoint`` /
    ``load_rllib_dqn_checkpoint`` / ``load_rllib_sac_checkpoint`` do; an APPO learner's target
    networks are loaded too).

    ``path``: the directory ``module.save_to_path()`` wrote (``module_state.pkl``,
    ``class_and_ctor_args.pkl``, ``metadata.json``), or a MultiRLModule / Algorithm checkpoint
    holding one under ``module_id`` (Algorithm: the learner's module). ``inference_only``:
    build without value function (default: as the checkpoint says).

    Supported: MLP, CNN (image ``[H, W, C]`` observations) and LSTM (over an MLP or CNN tokenizer)
    encoders, shared or separate value encoder, 1-D and image ``Box`` observations,
    ``Discrete`` / ``MultiDiscrete`` / ``Box`` actions. The pickles are read with a restricted
    unpickler (numpy arrays, gymnasium spaces, builtins): a file naming any other class or
    function raises ``UnsafeCheckpointError`` naming the file and the global, and runs nothing.
    The module is first built on torch's meta device (no memory) from the sizes in
    ``class_and_ctor_args.pkl`` and compared with the weights in ``module_state.pkl`` (names,
    shapes, float or not): it is built for real only when the weights fill it exactly, so a load
    allocates about what the state file holds. Big-endian arrays are converted to native order.
    Missing files -> FileNotFoundError; anything else wrong -> ValueError naming the file (its
    message describes the file's data by type and size, never by repr).

    Example::

        module = rf.rllib.load_rllib_checkpoint("ckpt/learner_group/learner/rl_module/default_policy")
        out = module.forward_inference({"obs": torch.zeros(1, 4)})   # fused CPU step
    """
    from .appo_convert import APPO_KIND, _load_appo
    from .dqn_convert import DQN_KIND, _load_dqn
    from .sac_convert import SAC_KIND, _load_sac

    mdir = _pickle_module_dir(path, module_id)
    ctor = read_rllib_ctor(mdir / CTOR_FILE, (PPO_KIND, APPO_KIND, DQN_KIND, SAC_KIND),
                           inference_only=inference_only)
    if ctor.kind is DQN_KIND:
        return _load_dqn(mdir, ctor)
    if ctor.kind is SAC_KIND:
        return _load_sac(mdir, ctor)
    if ctor.kind is APPO_KIND:
        return _load_appo(mdir, ctor)
    return _load_ppo(mdir, ctor)


def _load_ppo(mdir: pathlib.Path, ctor: RLlibCtor, module_class: Optional[type] = None,
              target_prefixes: Sequence[str] = ()) -> PPOTorchRLModule:
    """The PPO-layout module (``module_class``, default ``PPOTorchRLModule``) of ``mdir`` whose
    constructor file :func:`read_rllib_ctor` read as ``ctor``; target networks (state keys under
    ``target_prefixes``) are made first when the file holds them and the module is not
    inference-only."""
    # Sizes come from the file: build on the meta device first (no memory, and torch's own size
    # checks become a ValueError), read the weights (bounded by module_state.pkl's size), check that
    # they fill that module exactly, and only then build it for real.
    preview = _build_ours(ctor.observation_space, ctor.action_space, ctor.model_config,
                          ctor.inference_only, ctor.source, meta=True, module_class=module_class)
    state_file = mdir / STATE_FILE
    arrays = _as_tensors(restricted_load(state_file), str(state_file))
    targets = _holds_targets(arrays, ctor.inference_only, target_prefixes)
    if targets:
        with torch.device("meta"):
            preview.make_target_networks()
    _check_fits(preview, arrays, str(state_file), ctor.source)
    del preview
    module = _build_ours(ctor.observation_space, ctor.action_space, ctor.model_config,
                         ctor.inference_only, ctor.source, module_class=module_class, targets=targets)
    _set_weights(module, arrays, str(state_file))
    module.eval()
    return module


def _is_rllib_ppo(m: Any) -> bool:
    return any(f"{c.__module__}.{c.__qualname__}" in RLLIB_PPO_CLASSES for c in type(m).__mro__)


def from_rllib_module(m: Any, *, inference_only: Optional[bool] = None) -> PPOTorchRLModule:
    """Our ``PPOTorchRLModule`` holding a copy of a live RLlib PPO module's weights.

    ``m``: a ``DefaultPPOTorchRLModule`` (or subclass with the same layers, e.g.
    :class:`~rlmodule_fast.rllib.FastPPOTorchRLModule`). A ``DefaultAPPOTorchRLModule`` (or
    ``FastAPPOTorchRLModule``) gives our ``APPOTorchRLModule`` (its target networks too, when it
    made them), a ``DefaultDQNTorchRLModule`` our DQN module, a ``DefaultSACTorchRLModule`` our SAC
    module. Later changes to ``m`` are not
    seen; call ``ours.set_state(m.get_state())`` to sync. ValueError if the class or its layers
    are not a PPO layout this package implements.
    """
    name = f"{type(m).__module__}.{type(m).__qualname__}"
    from .appo_convert import from_rllib_appo_module, is_rllib_appo
    from .dqn_convert import from_rllib_dqn_module, is_rllib_dqn
    from .sac_convert import _is_rllib_sac, from_rllib_sac_module

    if _is_rllib_sac(m):
        return from_rllib_sac_module(m, inference_only=inference_only)

    if is_rllib_dqn(m):
        return from_rllib_dqn_module(m, inference_only=inference_only)
    if is_rllib_appo(m):  # before PPO: RLlib's APPO module is a subclass of its PPO module
        return from_rllib_appo_module(m, inference_only=inference_only)
    if not _is_rllib_ppo(m):
        raise ValueError(f"from_rllib_module: {name} is not RLlib's DefaultPPOTorchRLModule (or a subclass)")
    return _from_rllib_ppo(m, inference_only, name)


def _from_rllib_ppo(m: Any, inference_only: Optional[bool], name: str, module_class: Optional[type] = None,
                    target_prefixes: Sequence[str] = ()) -> PPOTorchRLModule:
    """Our ``module_class`` (default ``PPOTorchRLModule``) with ``m``'s weights; target networks
    (keys under ``target_prefixes``) made first when ``m``'s state holds them."""
    cfg = rllib_model_config(getattr(m, "model_config", None), source=f"{name}.model_config")
    inf = bool(m.inference_only) if inference_only is None else bool(inference_only)
    arrays = _as_tensors(m.get_state(), name)
    module = _build_ours(m.observation_space, m.action_space, cfg, inf, name, module_class=module_class,
                         targets=_holds_targets(arrays, inf, target_prefixes))
    _check_fits(module, arrays, name, "its config")
    _set_weights(module, arrays, name)
    module.train(m.training)
    return module


def to_rllib_state(module: PPOTorchRLModule, *, inference_only: bool = False) -> dict[str, np.ndarray]:
    """``module``'s weights as RLlib's ``set_state`` takes them: parameter name -> numpy array
    (fresh copies, float32), names as in ``DefaultPPOTorchRLModule`` (an ``APPOTorchRLModule``'s
    target networks as in ``DefaultAPPOTorchRLModule``: ``_old_encoder.*``, ``_old_pi.*``).
    ``inference_only``: without the value function and target networks (what a Learner sends
    its EnvRunners)."""
    from ..dqn import DQNTorchRLModule

    from ..sac import SACTorchRLModule

    if isinstance(module, DQNTorchRLModule):
        from .dqn_convert import to_rllib_dqn_state

        return to_rllib_dqn_state(module, inference_only=inference_only)
    if isinstance(module, SACTorchRLModule):
        from .sac_convert import to_rllib_sac_state

        return to_rllib_sac_state(module, inference_only=inference_only)
    if not isinstance(module, PPOTorchRLModule):
        raise ValueError(f"to_rllib_state: expected a PPO / APPO / DQN / SAC module of rlmodule_fast, got "
                         f"{type(module).__name__}")
    return {k: v.detach().cpu().numpy().copy() for k, v in module.get_state(inference_only=inference_only).items()}


def rllib_module_kwargs(module: PPOTorchRLModule) -> dict:
    """Constructor keyword arguments of the equivalent RLlib ``DefaultPPOTorchRLModule`` (or
    ``DefaultAPPOTorchRLModule``: the same ones) (spaces, RLlib model config, inference_only);
    pass ``catalog_class`` yourself if needed."""
    if not isinstance(module, PPOTorchRLModule):
        raise ValueError(f"rllib_module_kwargs: expected a PPOTorchRLModule, got {type(module).__name__}")
    cfg = dict(module.catalog.model_config_dict)
    if cfg.pop("use_gru", False):
        raise ValueError("rllib_module_kwargs: use_gru=True has no RLlib PPO equivalent (RLlib's PPO has LSTM only)")
    return {
        "observation_space": module.observation_space,
        "action_space": module.action_space,
        "inference_only": bool(module.inference_only),
        "model_config": cfg,
    }


def to_rllib_module(module: PPOTorchRLModule, module_class: Any = None):
    """An RLlib module (default ``DefaultPPOTorchRLModule``; needs ray[rllib]) with ``module``'s
    weights; ``module_class`` may be :class:`~rlmodule_fast.rllib.FastPPOTorchRLModule`. A
    ``DQNTorchRLModule`` gives a ``DefaultDQNTorchRLModule`` (``dqn_convert.to_rllib_dqn_module``),
    an ``APPOTorchRLModule`` a ``DefaultAPPOTorchRLModule`` (``appo_convert.to_rllib_appo_module``,
    target networks included), a ``SACTorchRLModule`` a ``DefaultSACTorchRLModule``
    (``sac_convert.to_rllib_sac_module``)."""
    from ..appo import APPOTorchRLModule
    from ..dqn import DQNTorchRLModule

    if isinstance(module, DQNTorchRLModule):
        from .dqn_convert import to_rllib_dqn_module

        return to_rllib_dqn_module(module, module_class)
    if isinstance(module, APPOTorchRLModule):
        from .appo_convert import to_rllib_appo_module

        return to_rllib_appo_module(module, module_class)
    from ..sac import SACTorchRLModule

    if isinstance(module, SACTorchRLModule):
        from .sac_convert import to_rllib_sac_module

        return to_rllib_sac_module(module, module_class)
    if module_class is None:
        from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule

        module_class = DefaultPPOTorchRLModule
    m = module_class(**rllib_module_kwargs(module))
    m.set_state(to_rllib_state(module, inference_only=module.inference_only))
    return m


def read_rllib_metadata(path: PathLike) -> dict:
    """RLlib's ``metadata.json`` of a module checkpoint directory (plain JSON), or {} if absent.
    Read up to ``core.checkpoint.MAX_METADATA_BYTES`` (1 MiB; RLlib's: well under 1 KB)."""
    from ..core.checkpoint import MAX_METADATA_BYTES, read_bytes

    f = pathlib.Path(path) / "metadata.json"
    if not f.is_file():
        return {}
    try:
        return json.loads(read_bytes(f, MAX_METADATA_BYTES))
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError; over-deep nesting
        if str(f) in str(e):  # read_bytes' own (too large, unreadable)
            raise
        raise ValueError(f"{f}: not valid JSON: {type(e).__name__}: {_cut(e)}") from None

"""RLModule, RLModuleConfig and RLModuleSpec: the framework-agnostic RLModule contract.

Semantics follow RLlib's new API stack (2.10-2.38), with newer RLlib's keyword constructor
accepted as well (see API.md). Subclasses implement either ``_forward`` (RLlib >= 2.40: the
default of all three phases) or each of ``_forward_inference``, ``_forward_exploration`` and
``_forward_train`` (RLlib 2.10-2.38), or ``_forward`` plus the phases that differ; the public
``forward_*`` wrappers convert numpy inputs to tensors, check the batch against
``input_specs_*()`` and the result against ``output_specs_*()``.
"""
from __future__ import annotations

import abc
import copy
import dataclasses
import inspect
import pathlib
from typing import Any, Mapping, Optional, Type

from . import checkpoint as ckpt
from .columns import DEFAULT_MODULE_ID, Columns
from .spaces import space_from_json, space_to_json
from .specs import SpecChecker, SpecType, to_torch


@dataclasses.dataclass
class RLModuleConfig:
    """Everything needed to build a module: spaces, model config, catalog class, inference_only,
    learner_only (RLlib's: the module is built only on learners, never on env runners)."""

    observation_space: Any = None
    action_space: Any = None
    model_config_dict: dict = dataclasses.field(default_factory=dict)
    catalog_class: Optional[type] = None
    inference_only: bool = False
    learner_only: bool = False

    def get_catalog(self):
        """A catalog instance for these spaces and model config (None without catalog_class)."""
        if self.catalog_class is None:
            return None
        return self.catalog_class(
            observation_space=self.observation_space,
            action_space=self.action_space,
            model_config_dict=self.model_config_dict,
        )

    def to_dict(self) -> dict:
        """Plain-data form (spaces as JSON, classes as import paths)."""
        return {
            "observation_space": space_to_json(self.observation_space),
            "action_space": space_to_json(self.action_space),
            "model_config_dict": _model_config_json(self.model_config_dict),
            "catalog_class": ckpt.class_path(self.catalog_class) if self.catalog_class else None,
            "inference_only": bool(self.inference_only),
            "learner_only": bool(self.learner_only),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, trusted_classes: ckpt.ClassSpec = None) -> "RLModuleConfig":
        """Inverse of ``to_dict``. ``catalog_class`` must name a known Catalog class (registered
        when defined, or in ``trusted_classes``; see core/checkpoint.py): nothing is imported.
        Anything malformed is a ValueError."""
        if not isinstance(d, Mapping):
            raise ValueError(f"RLModuleConfig.from_dict: expected a dict, got {type(d).__name__}")
        return cls(
            observation_space=space_from_json(d.get("observation_space")),
            action_space=space_from_json(d.get("action_space")),
            model_config_dict=_plain_dict(d.get("model_config_dict"), "RLModuleConfig.model_config_dict"),
            catalog_class=_catalog_from_name(d.get("catalog_class"), "RLModuleConfig.catalog_class", trusted_classes),
            inference_only=_plain_bool(d.get("inference_only", False), "RLModuleConfig.inference_only"),
            learner_only=_plain_bool(d.get("learner_only", False), "RLModuleConfig.learner_only"),
        )


def _plain_dict(v: Any, what: str) -> dict:
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise ValueError(f"{what}: expected a dict, got {type(v).__name__}")
    return dict(v)


def _plain_bool(v: Any, what: str) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{what}: expected true or false, got {v!r:.100}")
    return v


def _catalog_from_name(name: Any, what: str, trusted: ckpt.ClassSpec) -> Optional[type]:
    from ..models.catalog import Catalog

    return ckpt.resolve_class(name, Catalog, source=what, trusted=trusted) if name else None


def _default_forward(fn):
    """Marks a base-class ``_forward_*`` as the default that runs ``_forward`` (see
    ``RLModule._missing_forwards``)."""
    fn._rf_default_forward = True
    return fn


#: RLlib's files in its own module checkpoints (``Checkpointable.save_to_path``) and in
#: Algorithm checkpoints; ours are JSON + safetensors (core/checkpoint.py).
#: Where a module keeps its armed fast lane (``fastpath.lane``; a ``_C.Lane`` or absent).
_LANE_ATTR = "_rf_lane"

_RLLIB_CHECKPOINT_FILES = ("class_and_ctor_args.pkl", "module_state.pkl", "module_state.pt",
                           "rllib_checkpoint.json", "algorithm_state.pkl")


def _refuse_rllib_checkpoint(path: pathlib.Path, ctor_file_name: str) -> None:
    """A checkpoint RLlib wrote (pickles) is not ours: say so, and where to load it, instead of
    reporting our own files missing."""
    if ckpt.is_dir(path) and not (path / ctor_file_name).exists():
        found = [n for n in _RLLIB_CHECKPOINT_FILES if (path / n).exists()]
        if found:
            raise ValueError(
                f"{path}: this is a checkpoint written by RLlib ({', '.join(found)}), not by rlmodule_fast; "
                "load it with rlmodule_fast.rllib.load_rllib_checkpoint(path) (which reads RLlib's pickles "
                "without running code from them) or rlmodule_fast.rllib.from_rllib_module(module)")


def _model_config_json(cfg: Any) -> dict:
    """A model config (dict or DefaultModelConfig) as plain data for JSON; initializer callables
    by their torch.nn.init name, any other callable a ValueError (models.config)."""
    from ..models.config import model_config_to_json

    return model_config_to_json(cfg)


def _spec_model_config(model_config_dict: Any, model_config: Any) -> Any:
    """A spec's model config: a copied dict, {} for None, anything else kept as given (RLlib's
    specs hold any value; ``build()`` validates it)."""
    if model_config_dict is not None and model_config is not None and model_config_dict != model_config:
        raise ValueError("give either model_config_dict or model_config (its alias), not both")
    cfg = model_config if model_config is not None else model_config_dict
    if cfg is None:
        return {}
    return dict(cfg) if isinstance(cfg, Mapping) else cfg


def _merge_model_config(model_config_dict: Any, model_config: Any) -> dict:
    """The module's model config as a dict: a dict (copied), or a dataclass such as
    ``DefaultModelConfig`` (ours or RLlib's) turned into the dict of its fields, as RLlib's
    ``RLModuleSpec._get_model_config`` does."""
    if model_config_dict is not None and model_config is not None and model_config_dict != model_config:
        raise ValueError("give either model_config_dict or model_config (its alias), not both")
    cfg = model_config if model_config is not None else model_config_dict
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    if cfg is not None and not isinstance(cfg, Mapping):
        raise ValueError(f"model_config_dict: expected a dict or a DefaultModelConfig, got {type(cfg).__name__}")
    return dict(cfg or {})


class RLModule(abc.ABC):
    """Base of every module: forward wrappers with spec checks, state, checkpoints.

    Construct with an ``RLModuleConfig`` (``RLModule(config)``) or with newer RLlib's keywords
    (``RLModule(observation_space=..., action_space=..., inference_only=..., model_config=...,
    catalog_class=...)``). The constructor calls ``setup()``, where subclasses build layers.
    """

    framework: Optional[str] = None
    #: The action distribution class the default ``get_*_action_dist_cls`` return (RLlib's
    #: attribute): the catalog's when the module has one, else None (TorchRLModule then picks
    #: TorchCategorical / TorchDiagGaussian from the action space). ``setup()`` may set it.
    action_dist_cls: Optional[type] = None
    #: ``from_checkpoint`` first builds the module on torch's ``meta`` device (no memory) and
    #: compares its tensors with the state file's header, so a checkpoint cannot make it allocate
    #: more than the state file holds. A subclass whose ``setup()`` cannot run on the meta device
    #: may set this False: its checkpoints are then built for real before the state is checked.
    checkpoint_meta_preflight: bool = True
    STATE_FILE_NAME = ckpt.STATE_FILE_NAME
    METADATA_FILE_NAME = ckpt.METADATA_FILE_NAME
    CLASS_AND_CTOR_ARGS_FILE_NAME = ckpt.CLASS_AND_CTOR_ARGS_FILE_NAME

    def __init__(
        self,
        config: Optional[RLModuleConfig] = None,
        *,
        observation_space: Any = None,
        action_space: Any = None,
        inference_only: Optional[bool] = None,
        learner_only: bool = False,
        model_config: Optional[dict] = None,
        catalog_class: Optional[type] = None,
        model_config_dict: Optional[dict] = None,
    ):
        missing = type(self)._missing_forwards()
        if missing:
            raise TypeError(
                f"Can't instantiate abstract class {type(self).__name__}: define _forward(batch) (RLlib >= 2.40: "
                f"used by all three phases) or each of _forward_inference, _forward_exploration, _forward_train; "
                f"missing {', '.join(missing)}")
        if config is not None:
            if not isinstance(config, RLModuleConfig):
                raise TypeError(f"config: expected an RLModuleConfig, got {type(config).__name__}")
            if any(v is not None for v in (observation_space, action_space, inference_only, model_config, catalog_class, model_config_dict)):
                raise ValueError("give either config or the keyword arguments (observation_space, ...), not both")
        else:
            config = RLModuleConfig(
                observation_space=observation_space,
                action_space=action_space,
                model_config_dict=_merge_model_config(model_config_dict, model_config),
                catalog_class=catalog_class,
                inference_only=bool(inference_only),
                learner_only=bool(learner_only),
            )
        self.config = config
        self.observation_space = config.observation_space
        self.action_space = config.action_space
        self.inference_only = config.inference_only
        self.learner_only = bool(config.learner_only or learner_only)
        self.model_config = config.model_config_dict
        self.catalog = config.get_catalog()
        if self.catalog is not None and getattr(self.catalog, "action_dist_cls", None) is not None:
            self.action_dist_cls = self.catalog.action_dist_cls
        self._spec_checkers: dict[str, tuple[SpecChecker, SpecChecker]] = {}  # per forward kind
        self.setup()

    def __init_subclass__(cls, **kwargs):
        """Every subclass is registered when defined: checkpoints may name it (core/checkpoint.py)."""
        super().__init_subclass__(**kwargs)
        ckpt.register_class(cls)

    def _own_catalog(self, catalog_cls: type):
        """``self.catalog``: built as ``catalog_cls(observation_space, action_space, model_config)``
        when none was given; ValueError when the one given is not a ``catalog_cls``."""
        if self.catalog is None:
            self.catalog = catalog_cls(self.observation_space, self.action_space, self.model_config)
        if not isinstance(self.catalog, catalog_cls):
            raise ValueError(f"catalog_class: expected a {catalog_cls.__name__} subclass, "
                             f"got {type(self.catalog).__name__}")
        return self.catalog

    # ---- to be implemented by subclasses -------------------------------------------------
    def setup(self) -> None:
        """Build the layers (called by the constructor)."""

    def _forward(self, batch: dict, **kwargs) -> dict:
        """The forward pass of every phase, unless a subclass overrides the phase's own
        ``_forward_inference`` / ``_forward_exploration`` / ``_forward_train`` (RLlib >= 2.40).

        A subclass defines this, or each of the three (RLlib 2.10-2.38 style); a class that
        does neither cannot be instantiated (TypeError naming what is missing)."""
        return {}

    @_default_forward
    def _forward_inference(self, batch: dict, **kwargs) -> dict:
        """Greedy/deterministic forward pass (serving, evaluation). Default: ``_forward``."""
        return self._forward(batch, **kwargs)

    @_default_forward
    def _forward_exploration(self, batch: dict, **kwargs) -> dict:
        """Forward pass used while collecting experience. Default: ``_forward``."""
        return self._forward(batch, **kwargs)

    @_default_forward
    def _forward_train(self, batch: dict, **kwargs) -> dict:
        """Differentiable forward pass for the learner. Default: ``_forward``."""
        return self._forward(batch, **kwargs)

    @classmethod
    def _missing_forwards(cls) -> tuple:
        """The ``_forward_*`` methods this class would inherit as a default calling a ``_forward``
        it does not define (empty: the class can be instantiated). Cached per class."""
        cached = cls.__dict__.get("_rf_missing_forwards")
        if cached is None:
            if cls._forward is not RLModule._forward:
                cached = ()
            else:
                cached = tuple(name for name in ("_forward_inference", "_forward_exploration", "_forward_train")
                               if getattr(getattr(cls, name), "_rf_default_forward", False))
            cls._rf_missing_forwards = cached
        return cached

    # ---- specs ---------------------------------------------------------------------------
    def input_specs_inference(self) -> SpecType:
        return [Columns.OBS]

    def input_specs_exploration(self) -> SpecType:
        return [Columns.OBS]

    def input_specs_train(self) -> SpecType:
        return [Columns.OBS]

    def output_specs_inference(self) -> SpecType:
        return [Columns.ACTION_DIST_INPUTS]

    def output_specs_exploration(self) -> SpecType:
        return [Columns.ACTION_DIST_INPUTS]

    def output_specs_train(self) -> SpecType:
        return [Columns.ACTION_DIST_INPUTS]

    def _checker(self, name: str) -> SpecChecker:
        return SpecChecker(getattr(self, name)(), f"{type(self).__name__}.{name.replace('_specs_', ' ')}")

    # ---- public forward wrappers -----------------------------------------------------------
    #: Subclasses that accept numpy arrays in ``_forward_*`` batches set this True; otherwise
    #: the public wrappers convert numpy arrays to tensors (without a copy where possible) first.
    _forward_accepts_numpy = False

    def _checkers(self, kind: str) -> tuple[SpecChecker, SpecChecker]:
        checkers = self._spec_checkers.get(kind)
        if checkers is None:
            checkers = self._spec_checkers[kind] = (self._checker(f"input_specs_{kind}"),
                                                    self._checker(f"output_specs_{kind}"))
        return checkers

    def _run_checks_only(self, kind: str, batch: Mapping[str, Any]) -> None:
        """The input-spec check of ``forward_{kind}`` alone (for subclasses' fast lanes)."""
        self._checkers(kind)[0].check(batch)

    def _run(self, kind: str, batch: Mapping[str, Any], kwargs: dict) -> dict:
        checkers = self._checkers(kind)
        if not self._forward_accepts_numpy and isinstance(batch, Mapping):
            batch = to_torch(batch, checkers[0].keys)
        checkers[0].check(batch)
        out = getattr(self, f"_forward_{kind}")(batch, **kwargs)
        checkers[1].check(out)
        return out

    def forward_inference(self, batch: Mapping[str, Any], **kwargs) -> dict:
        """Deterministic forward pass (evaluation, serving); runs ``_forward_inference``.

        ``batch``: ``{"obs": [B, *obs_shape]}`` (recurrent modules: obs ``[B, 1, *obs_shape]`` or
        ``[B, *obs_shape]``, plus ``"state_in"``: the ``get_initial_state()`` dict batched, each
        tensor ``[B, ...]``, e.g. ``{"h": [B, 1, H], "c": [B, 1, H]}``). Torch tensors or numpy
        arrays (converted without a copy where possible); columns the input specs do not name
        are passed to ``_forward_inference`` as they are.

        Returns a new dict: ``"action_dist_inputs"`` ``[B, D]`` (D: the distribution's input
        width, e.g. the number of actions, or 2 * action dims for a Gaussian); the fused modules
        also return ``"actions"`` ``[B, *action_shape]`` (the deterministic action) and
        ``"action_logp"`` ``[B]``; recurrent modules ``"state_out"`` (the layout of ``state_in``).
        ValueError naming the key on a missing or mis-shaped input."""
        lane = self.__dict__.get(_LANE_ATTR)  # fastpath.lane: the fused step at one C++ call
        if lane is not None and not kwargs:
            out = lane(batch, True)
            if out is not None:
                return out
        return self._run("inference", batch, kwargs)

    def forward_exploration(self, batch: Mapping[str, Any], **kwargs) -> dict:
        """Forward pass while collecting experience; runs ``_forward_exploration``.

        ``batch`` as for ``forward_inference``: ``{"obs": [B, *obs_shape]}`` (+ ``"state_in"``,
        each tensor ``[B, ...]``, for recurrent modules). Returns a new dict:
        ``"action_dist_inputs"`` ``[B, D]``; the fused modules also return sampled ``"actions"``
        ``[B, *action_shape]`` and their ``"action_logp"`` ``[B]`` (RLlib's env runners use them
        when present); recurrent modules ``"state_out"``. No gradient is recorded by the
        default ``_forward`` path of a TorchRLModule."""
        lane = self.__dict__.get(_LANE_ATTR)
        # RLlib's env runners pass t= (env steps so far); the modules that arm a lane here (PPO,
        # SAC) ignore it, as their _forward_exploration does (DQN, which reads it, has its own)
        if lane is not None and (not kwargs or (len(kwargs) == 1 and "t" in kwargs)):
            out = lane(batch, False)
            if out is not None:
                return out
        return self._run("exploration", batch, kwargs)

    def forward_train(self, batch: Mapping[str, Any], **kwargs) -> dict:
        """Differentiable forward for the learner. RuntimeError on an ``inference_only`` module."""
        if self.inference_only:
            raise RuntimeError(f"{type(self).__name__} was built with inference_only=True; forward_train is unavailable")
        return self._run("train", batch, kwargs)

    # ---- distributions / state ----------------------------------------------------------------
    def get_inference_action_dist_cls(self):
        """The distribution class for ``forward_inference``'s ``action_dist_inputs``:
        ``self.action_dist_cls`` when set (TorchRLModule also picks one from the action space)."""
        if self.action_dist_cls is not None:
            return self.action_dist_cls
        raise NotImplementedError(f"{type(self).__name__} does not define get_inference_action_dist_cls "
                                  "(or set self.action_dist_cls in setup())")

    def get_exploration_action_dist_cls(self):
        """The distribution class for ``forward_exploration``; default: the inference one."""
        return self.get_inference_action_dist_cls()

    def get_train_action_dist_cls(self):
        """The distribution class for ``forward_train``; default: the inference one."""
        return self.get_inference_action_dist_cls()

    def get_initial_state(self) -> dict:
        """The initial recurrent state of ONE sequence: a dict of tensors without the batch axis
        (e.g. LSTM ``{"h": [1, H], "c": [1, H]}``, GRU ``{"h": [1, H]}``, nested
        ``{"actor": {...}, "critic": {...}}`` with separate encoders); ``{}`` when stateless.
        Callers stack it to ``[B, 1, H]`` for ``batch["state_in"]``; ``"state_out"`` comes
        back in that layout."""
        return {}

    def is_stateful(self) -> bool:
        """True when ``get_initial_state()`` is not empty: the forward passes then take
        ``batch["state_in"]`` (each tensor ``[B, ...]``) and return ``"state_out"``."""
        return bool(self.get_initial_state())

    def update_default_view_requirements(self, defaults: dict) -> dict:
        """Returns the view requirements: ``defaults`` (RLlib's old stack hook; no extra views)."""
        return dict(defaults)

    def get_non_inference_attributes(self) -> list[str]:
        """Attribute paths (e.g. "vf") not needed by an inference-only copy of this module."""
        return []

    def unwrapped(self) -> "RLModule":
        return self

    def as_multi_rl_module(self):
        """A MultiRLModule holding this module under DEFAULT_MODULE_ID."""
        from .multi_rl_module import MultiRLModule

        return MultiRLModule(rl_module_specs=None, modules={DEFAULT_MODULE_ID: self})

    @abc.abstractmethod
    def get_state(self, components=None, *, not_components=None, inference_only: bool = False, **kwargs) -> dict:
        """The module's weights as a flat {name: tensor} dict."""

    @abc.abstractmethod
    def set_state(self, state: Mapping[str, Any]) -> None:
        """Load weights from a dict produced by ``get_state`` (or an RLlib module's)."""

    # ---- checkpoints ----------------------------------------------------------------------
    def get_ctor_args_and_kwargs(self) -> tuple[tuple, dict]:
        return (), {"config": self.config.to_dict()}

    def get_metadata(self) -> dict:
        return ckpt.metadata(type(self))

    def get_checkpointable_components(self) -> list:
        """Sub-components saved separately (none for a single module)."""
        return []

    def save_to_path(self, path=None, *, state: Optional[dict] = None) -> str:
        """Write a checkpoint directory (see core/checkpoint.py) and return its path.

        The files are written into a fresh directory beside ``path`` that is then renamed into
        place (an existing checkpoint at ``path`` is replaced, an empty directory filled; a
        non-empty directory that is not a checkpoint is refused): links already at ``path`` are
        never written through."""
        path = ckpt.as_dir(path)

        def write(d: pathlib.Path) -> None:
            state_file = d / self.STATE_FILE_NAME
            ckpt.save_tensors(state_file, state if state is not None else self.get_state())
            _, kwargs = self.get_ctor_args_and_kwargs()
            ckpt.write_json(d / self.CLASS_AND_CTOR_ARGS_FILE_NAME, {"class": ckpt.class_path(type(self)), "ctor_kwargs": kwargs})
            ckpt.write_json(d / self.METADATA_FILE_NAME, {**self.get_metadata(), "state_sha256": ckpt.file_sha256(state_file)})

        ckpt.replace_dir(path, write)
        return str(path)

    def restore_from_path(self, path, **kwargs) -> None:
        """Load the weights of a checkpoint directory written by ``save_to_path``."""
        path = pathlib.Path(path)
        if not ckpt.is_dir(path):
            raise FileNotFoundError(f"checkpoint directory missing: {path}")
        _refuse_rllib_checkpoint(path, self.CLASS_AND_CTOR_ARGS_FILE_NAME)
        meta = ckpt.check_metadata(path)
        state_file = path / self.STATE_FILE_NAME
        ckpt.read_state_header(state_file)  # bounded checks before reading the data
        ckpt.verify_sha256(state_file, meta.get("state_sha256"), path / self.METADATA_FILE_NAME)
        state = ckpt.load_tensors(state_file)
        try:
            self.set_state(state)
        except Exception as e:  # noqa: BLE001 -- a state that does not fit is the file's problem
            raise ValueError(f"{state_file}: does not match this module: {e}") from e

    @classmethod
    def from_checkpoint(cls, path, *, module_class: Optional[type] = None,
                        trusted_classes: ckpt.ClassSpec = None, **kwargs) -> "RLModule":
        """Rebuild a module (class, spaces, config) and its weights from a checkpoint directory.

        The class the checkpoint names must already be known: an RLModule / Catalog subclass
        defined in this process (subclasses register themselves), one of ``trusted_classes``
        (classes, or ``{"old.module:Name": Cls}`` for a renamed class), or declared by an
        installed package under the ``rlmodule_fast.modules`` entry-point group. Nothing the
        checkpoint names is imported. ``module_class=Cls`` builds ``Cls`` whatever class the
        checkpoint names. The module is first built on the meta device and checked against the
        state file's header, so a load allocates no more than the state file holds.
        Every problem with the files is a ValueError / FileNotFoundError naming the file.
        """
        from .multi_rl_module import MultiRLModule

        depth, visited = kwargs.pop("_depth", 0), kwargs.pop("_visited", None)
        trusted = ckpt.trusted_map(trusted_classes)
        if module_class is not None and not (isinstance(module_class, type) and issubclass(module_class, RLModule)):
            raise TypeError(f"module_class: expected an RLModule subclass, got {module_class!r}")
        path = pathlib.Path(path)
        if not ckpt.is_dir(path):
            raise FileNotFoundError(f"checkpoint directory missing: {path}")
        _refuse_rllib_checkpoint(path, cls.CLASS_AND_CTOR_ARGS_FILE_NAME)
        meta = ckpt.check_metadata(path)
        ctor_file = path / cls.CLASS_AND_CTOR_ARGS_FILE_NAME
        data = ckpt.read_json(ctor_file)
        klass = module_class or ckpt.resolve_class(data.get("class"), RLModule, source=str(ctor_file), trusted=trusted)
        if not issubclass(klass, cls):
            raise ValueError(f"{ctor_file}: holds a {klass.__name__}, which is not a {cls.__name__}")
        is_multi = issubclass(klass, MultiRLModule)
        if is_multi != (meta.get("kind") == "multi"):
            raise ValueError(f"{ctor_file}: class {klass.__name__} does not match the checkpoint kind "
                             f"{meta.get('kind')!r} in {path / cls.METADATA_FILE_NAME}")
        if is_multi:
            return klass.from_checkpoint(path, module_class=klass, trusted_classes=trusted, _depth=depth,
                                         _visited=visited)
        if visited is not None:
            ckpt.visit_dir(path, visited)
        return klass._load_single(path, data, trusted)

    @classmethod
    def _load_single(cls, path: pathlib.Path, data: Mapping[str, Any], trusted: dict) -> "RLModule":
        """Build ``cls`` from a checkpoint's ctor args: parse, preflight on the meta device
        against the state header, build for real, load the state."""
        ctor_file = path / cls.CLASS_AND_CTOR_ARGS_FILE_NAME
        state_file = path / cls.STATE_FILE_NAME
        config = cls._config_from_ctor_kwargs(data.get("ctor_kwargs"), source=str(ctor_file), trusted=trusted)
        header = ckpt.read_state_header(state_file)
        if cls.checkpoint_meta_preflight:
            import torch

            try:
                with torch.device("meta"):
                    own = _construct(cls, dataclasses.replace(
                        config, model_config_dict=copy.deepcopy(config.model_config_dict))).get_state()
            except Exception as e:  # noqa: BLE001 -- whatever the ctor args make the class raise
                raise ValueError(f"{ctor_file}: cannot rebuild the module from its constructor arguments "
                                 f"(built first on the meta device): {type(e).__name__}: {str(e)[:500]}") from e
            ckpt.check_state_fits(own, header, described_by=ctor_file)
        try:
            module = _construct(cls, config)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{ctor_file}: cannot rebuild the module from its constructor arguments: "
                             f"{type(e).__name__}: {str(e)[:500]}") from e
        module.restore_from_path(path)
        return module

    @classmethod
    def _config_from_ctor_kwargs(cls, kwargs: Any, *, source: str, trusted: dict) -> RLModuleConfig:
        try:
            if not isinstance(kwargs, Mapping) or not isinstance(kwargs.get("config"), Mapping):
                raise ValueError("'ctor_kwargs' must be an object holding a 'config' object")
            return RLModuleConfig.from_dict(kwargs["config"], trusted_classes=trusted)
        except Exception as e:  # noqa: BLE001 -- every malformed value is the file's problem
            raise ValueError(f"{source}: cannot rebuild the module from its constructor arguments: "
                             f"{type(e).__name__}: {str(e)[:2000]}") from e

    @classmethod
    def _from_ctor_kwargs(cls, kwargs: Mapping[str, Any], *, source: str) -> "RLModule":
        config = cls._config_from_ctor_kwargs(kwargs, source=source, trusted={})
        try:
            return _construct(cls, config)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{source}: cannot rebuild the module from its constructor arguments: {e}") from e


def _construct(module_class: type, config: RLModuleConfig) -> RLModule:
    """Instantiate with ``config`` positionally, or by keywords for newer-RLlib-style classes
    whose ``__init__`` takes no config."""
    params = inspect.signature(module_class.__init__).parameters
    if "config" in params or not ("observation_space" in params and "action_space" in params):
        return module_class(config)
    kwargs = {}
    if config.learner_only and ("learner_only" in params or any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())):
        kwargs["learner_only"] = True
    return module_class(
        observation_space=config.observation_space,
        action_space=config.action_space,
        inference_only=config.inference_only,
        model_config=config.model_config_dict,
        catalog_class=config.catalog_class,
        **kwargs,
    )


class RLModuleSpec:
    """How to build one module: ``RLModuleSpec(module_class=..., observation_space=...,
    action_space=..., model_config_dict={...}, catalog_class=...).build()``.

    ``model_config`` is accepted as an alias of ``model_config_dict`` (giving both, with
    different values, is a ValueError); both names read and write the same dict. As in RLlib,
    a spec holds whatever model config it is given (``update()`` may replace it); ``build()``
    requires a dict (ValueError otherwise).
    ``load_state_path``: a checkpoint directory whose weights ``build()`` loads.
    ``learner_only`` (RLlib 2.60): the module is only for learners (RLlib then builds no copy on
    env runners); the built module has ``learner_only`` set. ``model_config`` may also be a
    ``DefaultModelConfig`` (ours or RLlib's), kept as given until ``build()``.
    """

    _FIELDS = ("module_class", "observation_space", "action_space", "model_config_dict",
               "catalog_class", "load_state_path", "inference_only", "learner_only")

    def __init__(
        self,
        module_class: Optional[Type[RLModule]] = None,
        observation_space: Any = None,
        action_space: Any = None,
        model_config_dict: Optional[dict] = None,
        catalog_class: Optional[type] = None,
        load_state_path: Optional[str] = None,
        inference_only: bool = False,
        model_config: Optional[dict] = None,
        learner_only: bool = False,
    ):
        self.module_class = module_class
        self.observation_space = observation_space
        self.action_space = action_space
        self.model_config_dict = _spec_model_config(model_config_dict, model_config)
        self.catalog_class = catalog_class
        self.load_state_path = load_state_path
        self.inference_only = inference_only
        self.learner_only = learner_only

    @property
    def model_config(self) -> dict:
        """Alias of ``model_config_dict`` (newer RLlib's name)."""
        return self.model_config_dict

    @model_config.setter
    def model_config(self, value: Optional[dict]) -> None:
        self.model_config_dict = _spec_model_config(value, None)

    @classmethod
    def from_module(cls, module: RLModule) -> "RLModuleSpec":
        """The spec that builds a module like ``module`` (class, spaces, model config, catalog
        class, inference_only; not its weights). ValueError for a MultiRLModule (use
        ``MultiRLModuleSpec.from_module``)."""
        from .multi_rl_module import MultiRLModule

        if isinstance(module, MultiRLModule):
            raise ValueError("MultiRLModule cannot be converted to RLModuleSpec; use MultiRLModuleSpec.from_module")
        module = module.unwrapped()
        config = module.config
        return cls(
            module_class=type(module),
            observation_space=config.observation_space,
            action_space=config.action_space,
            model_config_dict=copy.deepcopy(config.model_config_dict),
            catalog_class=config.catalog_class,
            inference_only=config.inference_only,
            learner_only=bool(getattr(module, "learner_only", False) or config.learner_only),
        )

    def as_multi_rl_module_spec(self):
        """A MultiRLModuleSpec holding this spec under DEFAULT_MODULE_ID (and its load_state_path)."""
        from .multi_rl_module import MultiRLModuleSpec

        return MultiRLModuleSpec(rl_module_specs={DEFAULT_MODULE_ID: self}, load_state_path=self.load_state_path)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RLModuleSpec) and all(getattr(self, f) == getattr(other, f) for f in self._FIELDS)

    def __repr__(self) -> str:
        return "RLModuleSpec(" + ", ".join(f"{f}={getattr(self, f)!r}" for f in self._FIELDS) + ")"

    def copy(self) -> "RLModuleSpec":
        """A shallow copy (the model config dict copied)."""
        cfg = self.model_config_dict
        return RLModuleSpec(**{f: getattr(self, f) for f in self._FIELDS if f != "model_config_dict"},
                            model_config_dict=dict(cfg) if isinstance(cfg, Mapping) else cfg)

    def get_rl_module_config(self) -> RLModuleConfig:
        return RLModuleConfig(
            observation_space=self.observation_space,
            action_space=self.action_space,
            model_config_dict=_merge_model_config(self.model_config_dict, None),
            catalog_class=self.catalog_class,
            inference_only=self.inference_only,
            learner_only=bool(self.learner_only),
        )

    def build(self) -> RLModule:
        """Instantiate the module (and load ``load_state_path`` when given)."""
        if self.module_class is None:
            raise ValueError("RLModuleSpec.module_class is required to build a module")
        if not (isinstance(self.module_class, type) and issubclass(self.module_class, RLModule)):
            raise ValueError(f"RLModuleSpec.module_class: expected an RLModule subclass, got {self.module_class!r}")
        if self.observation_space is None or self.action_space is None:
            raise ValueError("RLModuleSpec: observation_space and action_space are required to build a module")
        module = _construct(self.module_class, self.get_rl_module_config())
        if self.load_state_path is not None:
            module.restore_from_path(self.load_state_path)
        return module

    def update(self, other: "RLModuleSpec", override: bool = True) -> None:
        """Update from ``other`` like RLlib's ``RLModuleSpec.update``: with ``override`` every
        field ``other`` sets (not None / empty) replaces ours, ``inference_only`` becomes
        True if either is and ``learner_only`` only if both are (RLlib's rules); without it only
        our unset fields are filled (the two flags kept).
        ValueError if ``other`` is not an RLModuleSpec."""
        if not isinstance(other, RLModuleSpec):
            raise ValueError(f"RLModuleSpec.update: expected an RLModuleSpec, got {type(other).__name__}")
        for f in self._FIELDS:
            if f == "inference_only":
                if override:
                    self.inference_only = bool(other.inference_only or self.inference_only)
                continue
            if f == "learner_only":
                if override:
                    self.learner_only = bool(other.learner_only and self.learner_only)
                continue
            mine, theirs = getattr(self, f), getattr(other, f)
            if override:
                setattr(self, f, theirs or mine)
            else:
                setattr(self, f, mine or theirs)

    def to_dict(self) -> dict:
        """Plain-data form: class paths as strings, spaces as JSON."""
        return {
            "module_class": ckpt.class_path(self.module_class) if self.module_class else None,
            "observation_space": space_to_json(self.observation_space),
            "action_space": space_to_json(self.action_space),
            "model_config_dict": _model_config_json(self.model_config_dict),
            "catalog_class": ckpt.class_path(self.catalog_class) if self.catalog_class else None,
            "load_state_path": self.load_state_path,
            "inference_only": bool(self.inference_only),
            "learner_only": bool(self.learner_only),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, trusted_classes: ckpt.ClassSpec = None) -> "RLModuleSpec":
        """Inverse of ``to_dict``. Class names are looked up, never imported: they must name an
        RLModule / Catalog subclass already defined (registered), one of ``trusted_classes``, or
        one an installed package declares under the ``rlmodule_fast.modules`` entry points.
        Anything malformed is a ValueError."""
        if not isinstance(d, Mapping):
            raise ValueError(f"RLModuleSpec.from_dict: expected a dict, got {type(d).__name__}")
        mc = d.get("module_class")
        lsp = d.get("load_state_path")
        if lsp is not None and not isinstance(lsp, str):
            raise ValueError(f"RLModuleSpec.from_dict: load_state_path must be a string, got {lsp!r:.100}")
        return cls(
            module_class=ckpt.resolve_class(mc, RLModule, source="RLModuleSpec.from_dict: module_class",
                                            trusted=trusted_classes) if mc else None,
            observation_space=space_from_json(d.get("observation_space")),
            action_space=space_from_json(d.get("action_space")),
            model_config_dict=_plain_dict(d.get("model_config_dict"), "RLModuleSpec.from_dict: model_config_dict"),
            catalog_class=_catalog_from_name(d.get("catalog_class"), "RLModuleSpec.from_dict: catalog_class",
                                             trusted_classes),
            load_state_path=lsp,
            inference_only=_plain_bool(d.get("inference_only", False), "RLModuleSpec.from_dict: inference_only"),
            learner_only=_plain_bool(d.get("learner_only", False), "RLModuleSpec.from_dict: learner_only"),
        )

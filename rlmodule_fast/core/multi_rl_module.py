"""MultiRLModule: a dict-like container of module_id -> RLModule, and its spec."""
from __future__ import annotations

import collections
import pathlib
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Type, Union

from . import checkpoint as ckpt
from .columns import DEFAULT_MODULE_ID
from .rl_module import RLModule, RLModuleSpec, _merge_model_config, _refuse_rllib_checkpoint
from .specs import to_torch


def _check_module_id(module_id: object) -> None:
    """Module ids name checkpoint sub-directories: one plain path component only."""
    if (not isinstance(module_id, str) or module_id in ("", ".", "..") or "/" in module_id
            or "\\" in module_id or "\0" in module_id):
        raise ValueError(f"module id {module_id!r} is not allowed (a non-empty name without path separators)")


class MultiRLModule(RLModule):
    """Holds several RLModules by id; ``forward_*`` take ``{module_id: batch}`` and return
    ``{module_id: outputs}``. State is nested ``{module_id: state}``.

    ``MultiRLModule(rl_module_specs={"a": RLModuleSpec(...), ...})`` builds the modules;
    ``modules={"a": module}`` adopts already-built ones.
    """

    framework = "torch"

    def __init__(self, config=None, *, rl_module_specs: Optional[Mapping[str, RLModuleSpec]] = None,
                 modules: Optional[Mapping[str, RLModule]] = None, **kwargs):
        self._rl_modules: dict[str, RLModule] = {}
        self._pending_specs = dict(rl_module_specs or {})
        self._pending_modules = dict(modules or {})
        super().__init__(config, **kwargs)

    def setup(self) -> None:
        for mid, spec in self._pending_specs.items():
            self.add_module(mid, spec.build())
        for mid, module in self._pending_modules.items():
            self.add_module(mid, module)
        del self._pending_specs, self._pending_modules

    # ---- dict-like access ------------------------------------------------------------------
    def __getitem__(self, module_id: str) -> RLModule:
        if module_id not in self._rl_modules:
            raise KeyError(f"module {module_id!r} not found; have {sorted(self._rl_modules)}")
        return self._rl_modules[module_id]

    def __contains__(self, module_id: object) -> bool:
        return module_id in self._rl_modules

    def __iter__(self) -> Iterator[str]:
        return iter(self._rl_modules)

    def __len__(self) -> int:
        return len(self._rl_modules)

    def keys(self):
        return self._rl_modules.keys()

    def values(self):
        return self._rl_modules.values()

    def items(self):
        return self._rl_modules.items()

    def get(self, module_id: str, default: Any = None) -> Any:
        return self._rl_modules.get(module_id, default)

    def add_module(self, module_id: str, module: RLModule, *, override: bool = False) -> None:
        """Add ``module`` under ``module_id``; ValueError if the id exists and not ``override``."""
        _check_module_id(module_id)
        if not isinstance(module, RLModule):
            raise ValueError(f"module {module_id!r}: expected an RLModule, got {type(module).__name__}")
        if module_id in self._rl_modules and not override:
            raise ValueError(f"module {module_id!r} already exists; pass override=True to replace it")
        self._rl_modules[module_id] = module

    def remove_module(self, module_id: str, *, raise_err_if_not_found: bool = True) -> None:
        if module_id not in self._rl_modules:
            if raise_err_if_not_found:
                raise ValueError(f"module {module_id!r} not found; have {sorted(self._rl_modules)}")
            return
        del self._rl_modules[module_id]

    def foreach_module(self, func: Callable[[str, RLModule], Any], *, return_dict: bool = False):
        results = {mid: func(mid, m) for mid, m in self._rl_modules.items()}
        return results if return_dict else list(results.values())

    def parameters(self):
        for m in self._rl_modules.values():
            yield from m.parameters()

    # ---- forwards ----------------------------------------------------------------------------
    # ``forward_{kind}`` runs ``self._forward_{kind}``, which by default runs each sub-module's
    # public ``forward_{kind}`` (its conversion and spec checks included). A subclass that
    # overrides ``_forward_{kind}`` (e.g. RLlib's shared-encoder example) gets a copy of the batch
    # whose per-module numpy arrays are already tensors, and decides itself what to call.
    def _run_multi(self, kind: str, batch: Mapping[str, Any], kwargs: dict) -> dict:
        if not isinstance(batch, Mapping):
            raise ValueError(f"{type(self).__name__}.forward_{kind}: expected {{module_id: batch}}, "
                             f"got {type(batch).__name__}")
        method = getattr(self, f"_forward_{kind}")
        if getattr(type(self), f"_forward_{kind}") is getattr(MultiRLModule, f"_forward_{kind}"):
            return method(batch, **kwargs)
        prepared = {mid: to_torch(sub) if isinstance(sub, Mapping) else sub for mid, sub in batch.items()}
        return method(prepared, **kwargs)

    def _forward_each(self, kind: str, batch: Mapping[str, Any], kwargs: dict, *, public: bool = True) -> dict:
        if not isinstance(batch, Mapping):
            raise ValueError(f"MultiRLModule.forward_{kind}: expected {{module_id: batch}}, got {type(batch).__name__}")
        name = f"forward_{kind}" if public else f"_forward{'' if kind is None else '_' + kind}"
        out = {}
        for mid, sub in batch.items():
            if mid not in self._rl_modules:
                raise ValueError(f"MultiRLModule.forward_{kind}: unknown module id {mid!r}; have {sorted(self._rl_modules)}")
            out[mid] = getattr(self._rl_modules[mid], name)(sub, **kwargs)
        return out

    def forward_inference(self, batch, **kwargs) -> dict:
        """``{module_id: batch}`` -> ``{module_id: outputs}`` (each as ``RLModule.forward_inference``)."""
        return self._run_multi("inference", batch, kwargs)

    def forward_exploration(self, batch, **kwargs) -> dict:
        """``{module_id: batch}`` -> ``{module_id: outputs}`` (each as ``RLModule.forward_exploration``)."""
        return self._run_multi("exploration", batch, kwargs)

    def forward_train(self, batch, **kwargs) -> dict:
        """``{module_id: batch}`` -> ``{module_id: outputs}``; RuntimeError when inference_only."""
        if self.inference_only:
            raise RuntimeError(f"{type(self).__name__} was built with inference_only=True; forward_train is unavailable")
        return self._run_multi("train", batch, kwargs)

    def _forward(self, batch, **kwargs):
        """Each sub-module's ``_forward`` on its batch (RLlib's default; no conversion or checks)."""
        return self._forward_each(None, batch, kwargs, public=False)

    def _forward_inference(self, batch, **kwargs):
        return self._forward_each("inference", batch, kwargs)

    def _forward_exploration(self, batch, **kwargs):
        return self._forward_each("exploration", batch, kwargs)

    def _forward_train(self, batch, **kwargs):
        return self._forward_each("train", batch, kwargs)

    def is_stateful(self) -> bool:
        return any(m.is_stateful() for m in self._rl_modules.values())

    def get_initial_state(self) -> dict:
        return {mid: m.get_initial_state() for mid, m in self._rl_modules.items()}

    def as_multi_rl_module(self) -> "MultiRLModule":
        return self

    # ---- state and checkpoints -----------------------------------------------------------------
    def get_state(self, components=None, *, not_components=None, inference_only: bool = False, **kwargs) -> dict:
        """``{module_id: module.get_state(...)}``; ``components`` / ``not_components`` select module ids."""
        include = [components] if isinstance(components, str) else list(components or [])
        exclude = [not_components] if isinstance(not_components, str) else list(not_components or [])
        return {
            mid: m.get_state(inference_only=inference_only)
            for mid, m in self._rl_modules.items()
            if (not include or mid in include) and mid not in exclude
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Load ``{module_id: state}``; unknown ids raise ValueError, absent ids are left as they are."""
        for mid, sub in state.items():
            if mid not in self._rl_modules:
                raise ValueError(f"state: unknown module id {mid!r}; have {sorted(self._rl_modules)}")
            self._rl_modules[mid].set_state(sub)

    def get_checkpointable_components(self) -> list:
        return list(self._rl_modules.items())

    def get_metadata(self) -> dict:
        return ckpt.metadata(type(self), kind="multi")

    def save_to_path(self, path=None, *, state: Optional[dict] = None) -> str:
        """Write ``class_and_ctor_args.json`` + ``metadata.json`` and one sub-directory per module,
        into a fresh directory renamed into place (see ``RLModule.save_to_path``)."""
        path = ckpt.as_dir(path)

        def write(d: pathlib.Path) -> None:
            for mid, m in self._rl_modules.items():
                m.save_to_path(d / mid, state=None if state is None else state.get(mid))
            ckpt.write_json(d / self.CLASS_AND_CTOR_ARGS_FILE_NAME,
                            {"class": ckpt.class_path(type(self)), "module_ids": list(self._rl_modules)})
            ckpt.write_json(d / self.METADATA_FILE_NAME, self.get_metadata())

        ckpt.replace_dir(path, write)
        return str(path)

    def restore_from_path(self, path, **kwargs) -> None:
        path = pathlib.Path(path)
        if not ckpt.is_dir(path):
            raise FileNotFoundError(f"checkpoint directory missing: {path}")
        _refuse_rllib_checkpoint(path, self.CLASS_AND_CTOR_ARGS_FILE_NAME)
        ckpt.check_metadata(path)
        for mid, m in self._rl_modules.items():
            sub = path / mid
            if not ckpt.is_dir(sub):
                raise FileNotFoundError(f"checkpoint directory missing for module {mid!r}: {sub}")
            m.restore_from_path(sub)

    @classmethod
    def from_checkpoint(cls, path, *, module_class: Optional[type] = None,
                        trusted_classes: ckpt.ClassSpec = None, **kwargs) -> "MultiRLModule":
        """Rebuild a MultiRLModule and its modules; see ``RLModule.from_checkpoint`` for how
        classes are allowed (``module_class`` is the multi-module class here; the sub-modules'
        classes come from the registry or ``trusted_classes``).

        Bounds: module ids must be unique, valid directory names; multi-module checkpoints nest at
        most ``checkpoint.MAX_NESTING`` deep; a directory may appear only once in one load."""
        depth, visited = kwargs.pop("_depth", 0), kwargs.pop("_visited", None)
        visited = set() if visited is None else visited
        trusted = ckpt.trusted_map(trusted_classes)
        if module_class is not None and not (isinstance(module_class, type)
                                             and issubclass(module_class, MultiRLModule)):
            raise TypeError(f"module_class: expected a MultiRLModule subclass, got {module_class!r}")
        path = pathlib.Path(path)
        if not ckpt.is_dir(path):
            raise FileNotFoundError(f"checkpoint directory missing: {path}")
        ctor_file = path / cls.CLASS_AND_CTOR_ARGS_FILE_NAME
        if depth >= ckpt.MAX_NESTING:
            raise ValueError(f"{ctor_file}: multi-module checkpoints nest more than {ckpt.MAX_NESTING} levels deep; "
                             "refusing it")
        ckpt.visit_dir(path, visited)
        _refuse_rllib_checkpoint(path, cls.CLASS_AND_CTOR_ARGS_FILE_NAME)
        meta = ckpt.check_metadata(path)
        if meta.get("kind") != "multi":
            raise ValueError(f"{path / cls.METADATA_FILE_NAME}: kind {meta.get('kind')!r:.100} is not 'multi' "
                             "(a single-module checkpoint: load it with RLModule.from_checkpoint)")
        data = ckpt.read_json(ctor_file)
        klass = module_class or ckpt.resolve_class(data.get("class"), MultiRLModule, source=str(ctor_file),
                                                   trusted=trusted)
        if not issubclass(klass, cls):
            raise ValueError(f"{ctor_file}: holds a {klass.__name__}, which is not a {cls.__name__}")
        ids = data.get("module_ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ValueError(f"{ctor_file}: 'module_ids' must be a list of strings")
        if len(set(ids)) != len(ids):
            dup = sorted(i for i, n in collections.Counter(ids).items() if n > 1)[:5]
            raise ValueError(f"{ctor_file}: 'module_ids' lists a module id more than once ({dup})")
        for mid in ids:
            try:
                _check_module_id(mid)
                if len(mid.encode("utf-8", "surrogateescape")) > 255:
                    raise ValueError(f"module id {mid[:40]!r}... is longer than a directory name may be")
            except ValueError as e:  # UnicodeEncodeError (a lone surrogate) included
                raise ValueError(f"{ctor_file}: 'module_ids': {str(e)[:300]}") from None
        modules = {}
        for mid in ids:
            sub = path / mid
            if not ckpt.is_dir(sub):
                raise FileNotFoundError(f"checkpoint directory missing for module {mid!r}: {sub}")
            modules[mid] = RLModule.from_checkpoint(sub, trusted_classes=trusted, _depth=depth + 1, _visited=visited)
        try:
            return klass(modules=modules)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{ctor_file}: cannot rebuild the {klass.__name__}: {type(e).__name__}: {e}") from e


class MultiRLModuleSpec:
    """How to build a MultiRLModule: ``rl_module_specs`` is {module_id: RLModuleSpec} (or one
    RLModuleSpec, used for ``DEFAULT_MODULE_ID``; RLlib 2.10's ``module_specs=`` keyword is
    accepted as an alias, giving both is a ValueError). Fields set here (spaces, model config,
    inference_only) fill the sub-specs where those leave them unset.

    ``module_specs`` and ``rl_module_specs`` name the same dict.
    """

    _FIELDS = ("multi_rl_module_class", "observation_space", "action_space", "inference_only", "model_config",
               "rl_module_specs", "load_state_path")

    def __init__(
        self,
        multi_rl_module_class: Type[MultiRLModule] = MultiRLModule,
        observation_space: Any = None,
        action_space: Any = None,
        inference_only: bool = False,
        model_config: Optional[dict] = None,
        rl_module_specs: Union[None, RLModuleSpec, Mapping[str, RLModuleSpec]] = None,
        load_state_path: Optional[str] = None,
        *,
        module_specs: Union[None, RLModuleSpec, Mapping[str, RLModuleSpec]] = None,
        marl_module_class: Optional[Type[MultiRLModule]] = None,
    ):
        if module_specs is not None:
            if rl_module_specs is not None and rl_module_specs is not module_specs:
                raise ValueError("give either rl_module_specs or module_specs (its RLlib 2.10 alias), not both")
            rl_module_specs = module_specs
        if marl_module_class is not None:  # RLlib 2.10's name of multi_rl_module_class
            multi_rl_module_class = marl_module_class
        self.multi_rl_module_class = multi_rl_module_class
        self.observation_space = observation_space
        self.action_space = action_space
        self.inference_only = inference_only
        self.model_config = model_config
        self.rl_module_specs = rl_module_specs
        self.load_state_path = load_state_path

    @property
    def rl_module_specs(self) -> dict:
        """{module_id: RLModuleSpec} (a single spec given is held under DEFAULT_MODULE_ID)."""
        return self._rl_module_specs

    @rl_module_specs.setter
    def rl_module_specs(self, value: Union[None, RLModuleSpec, Mapping[str, RLModuleSpec]]) -> None:
        if isinstance(value, RLModuleSpec):
            value = {DEFAULT_MODULE_ID: value}
        elif value is not None and not isinstance(value, Mapping):
            raise ValueError(f"MultiRLModuleSpec.rl_module_specs: expected a dict of module_id -> RLModuleSpec, "
                             f"got {type(value).__name__}")
        self._rl_module_specs = value if isinstance(value, dict) else dict(value or {})

    #: RLlib 2.10's name of ``rl_module_specs`` (the same dict).
    module_specs = rl_module_specs

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MultiRLModuleSpec):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self._FIELDS if f != "model_config") \
            and (self.model_config or {}) == (other.model_config or {})

    def __repr__(self) -> str:
        return "MultiRLModuleSpec(" + ", ".join(f"{f}={getattr(self, f)!r}" for f in self._FIELDS) + ")"

    def __contains__(self, module_id: object) -> bool:
        return module_id in self.rl_module_specs

    def __getitem__(self, module_id: str) -> RLModuleSpec:
        return self.rl_module_specs[module_id]

    def build(self, module_id: Optional[str] = None) -> Union[MultiRLModule, RLModule]:
        """Build all modules (or only ``module_id``'s RLModule)."""
        specs = {}
        for mid, spec in self.module_specs.items():
            spec = spec.copy()
            if spec.observation_space is None:
                spec.observation_space = self.observation_space
            if spec.action_space is None:
                spec.action_space = self.action_space
            if not spec.model_config_dict and self.model_config:
                spec.model_config = self.model_config  # a copied dict, or a DefaultModelConfig as given
            spec.inference_only = spec.inference_only or self.inference_only
            specs[mid] = spec
        if module_id is not None:
            if module_id not in specs:
                raise ValueError(f"MultiRLModuleSpec.build: unknown module id {module_id!r}; have {sorted(specs)}")
            return specs[module_id].build()
        module = self.multi_rl_module_class(observation_space=self.observation_space, action_space=self.action_space,
                                            inference_only=bool(self.inference_only),
                                            model_config=_merge_model_config(self.model_config, None),
                                            rl_module_specs=specs)
        if self.load_state_path is not None:
            module.restore_from_path(self.load_state_path)
        return module

    def add_modules(self, module_specs: Mapping[str, RLModuleSpec], override: bool = True) -> None:
        """Add ``module_specs``; an id already here is replaced with ``override``, otherwise its
        spec is updated from the new one (``RLModuleSpec.update``), as in RLlib."""
        specs = self.rl_module_specs
        for mid, spec in module_specs.items():
            if override or mid not in specs:
                if not spec.inference_only:
                    self.inference_only = False
                specs[mid] = spec
            else:
                specs[mid].update(spec)

    def remove_modules(self, module_ids: Union[str, Iterable[str]]) -> None:
        """Drop these module ids (absent ones are ignored)."""
        for mid in [module_ids] if isinstance(module_ids, str) else list(module_ids):
            self.rl_module_specs.pop(mid, None)

    def update(self, other: Union["MultiRLModuleSpec", RLModuleSpec], override: bool = False) -> None:
        """Update from ``other`` as RLlib does: an RLModuleSpec fills the unset fields of every
        sub-spec; a MultiRLModuleSpec's sub-specs are added (``add_modules(..., override)``)."""
        if isinstance(other, RLModuleSpec):
            if not other.inference_only:
                self.inference_only = False
            for spec in self.rl_module_specs.values():
                spec.update(other, override=False)
        elif isinstance(other, MultiRLModuleSpec):
            self.add_modules(other.rl_module_specs, override=override)
        else:
            raise ValueError(f"MultiRLModuleSpec.update: expected a (Multi)RLModuleSpec, got {type(other).__name__}")

    def as_multi_rl_module_spec(self) -> "MultiRLModuleSpec":
        """``self`` (as ``RLModuleSpec.as_multi_rl_module_spec`` gives a MultiRLModuleSpec)."""
        return self

    @classmethod
    def from_module(cls, module: MultiRLModule) -> "MultiRLModuleSpec":
        """The spec that builds a MultiRLModule like ``module``: its class, spaces, model config,
        inference_only and one ``RLModuleSpec.from_module`` per sub-module (not the weights)."""
        if not isinstance(module, MultiRLModule):
            raise ValueError(f"MultiRLModuleSpec.from_module: expected a MultiRLModule, got {type(module).__name__}")
        return cls(
            multi_rl_module_class=type(module),
            observation_space=module.observation_space,
            action_space=module.action_space,
            inference_only=module.inference_only,
            model_config=dict(module.model_config) if module.model_config else None,
            rl_module_specs={mid: RLModuleSpec.from_module(m.unwrapped()) for mid, m in module.items()},
        )

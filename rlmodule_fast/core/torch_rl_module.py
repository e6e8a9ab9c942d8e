"""TorchRLModule: an RLModule that is a torch.nn.Module (weights = its state dict)."""
from __future__ import annotations

import threading
from typing import Any, Mapping, Sequence, Union

import numpy as np
import torch
from torch import nn

from .rl_module import _LANE_ATTR, RLModule, _default_forward


def _matches(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _as_list(x: Union[None, str, Sequence[str]]) -> list[str]:
    if x is None:
        return []
    return [x] if isinstance(x, str) else list(x)


_LOCK_CREATION = threading.Lock()

#: Bumped whenever parameter objects may have been replaced without torch's registration hooks
#: seeing it (``module.to(device)`` swaps in new Parameter objects directly). Readers (the fused
#: plans) compare it with the value they last saw, and re-read the module's layers when it moved.
STRUCTURE_GEN = [0]


def check_state_dict(module: nn.Module, state_dict: Mapping[str, Any], strict: bool = True) -> list[str]:
    """Everything ``module.load_state_dict(state_dict, strict)`` would reject, found before
    anything is copied (torch's own load copies entry by entry and fails half-way: a torn
    module). Returns the error lines (empty: the load cannot fail on the entries' keys,
    types, shapes or devices)."""
    if not isinstance(state_dict, Mapping):
        return [f"expected a dict of tensors, got {type(state_dict).__name__}"]
    own = module.state_dict(keep_vars=True)
    errors = []
    if strict:
        unexpected = sorted(set(state_dict) - set(own))
        missing = sorted(set(own) - set(state_dict))
        if unexpected:
            errors.append(f"unexpected keys {unexpected}")
        if missing:
            errors.append(f"missing keys {missing}")
    for k, v in state_dict.items():
        if k not in own:
            continue
        mine = own[k]
        if not isinstance(v, torch.Tensor):
            errors.append(f"{k!r}: expected a tensor, got {type(v).__name__}")
        elif v.is_meta and not mine.is_meta:
            errors.append(f"{k!r}: a tensor on the meta device holds no data")
        elif tuple(v.shape) != tuple(mine.shape):
            errors.append(f"{k!r}: expected shape {tuple(mine.shape)}, got {tuple(v.shape)}")
        elif v.dtype.is_complex and not mine.dtype.is_complex:
            errors.append(f"{k!r}: expected dtype {mine.dtype}, got {v.dtype}")
    return errors


class WeightsLockMixin:
    """A re-entrant lock guarding an ``nn.Module``'s weights, held by every update path this
    library offers: ``load_state_dict`` (validated first, so it either loads everything or
    nothing), ``set_state`` (which calls it), ``module.to(...)`` / ``.float()`` (``_apply``),
    and the fused plans' repacks. A fused step therefore sees all-old or all-new weights.
    Put it before ``nn.Module`` in the bases (``class M(WeightsLockMixin, nn.Module)``)."""

    def weights_lock(self) -> "threading.RLock":
        """The lock guarding this module's weights against torn reads by the fused plans.

        ``set_state`` / ``load_state_dict`` hold it. To update weights in place yourself (e.g.
        ``optimizer.step()``) while another thread steps the module, hold it around the update::

            with module.weights_lock():
                optimizer.step()
        """
        lock = self.__dict__.get("_weights_lock")
        if lock is None:
            with _LOCK_CREATION:
                lock = self.__dict__.setdefault("_weights_lock", threading.RLock())
        return lock

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict`` that is all-or-nothing and holds ``weights_lock()``."""
        errors = check_state_dict(self, state_dict, strict)
        if errors:
            raise RuntimeError(f"Error(s) in loading state_dict for {type(self).__name__} (nothing was loaded):\n\t"
                               + "\n\t".join(errors))
        with self.weights_lock():
            return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def __setattr__(self, name: str, value: Any) -> None:
        # Any attribute set (a replaced method, layer or flag) drops the fast lane: the next call
        # takes the Python path, which re-arms one only if the module still qualifies. Dropped
        # after the write: a lane another thread armed before the write lands must not survive it.
        try:
            super().__setattr__(name, value)
        finally:
            self.__dict__.pop(_LANE_ATTR, None)

    def _apply(self, fn, *args, **kwargs):
        with self.weights_lock():  # .to(device / dtype) swaps every parameter's storage or object
            try:
                return super()._apply(fn, *args, **kwargs)
            finally:
                STRUCTURE_GEN[0] += 1

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())
        state.pop("_weights_lock", None)  # locks do not pickle; a copy gets its own
        state.pop("_rf_plans", None)      # fused plans (fastpath) are rebuilt where the copy runs
        state.pop(_LANE_ATTR, None)       # and so is the fast lane
        return state


class TorchRLModule(WeightsLockMixin, nn.Module, RLModule):
    """RLModule + nn.Module. Subclasses build ``nn.Module`` layers in ``setup()``.

    ``get_state`` returns the state dict (tensors sharing storage with the module: copy them
    before mutating); ``set_state`` loads a full or inference-only state dict (tensors or numpy
    arrays) and raises ValueError naming unexpected, missing or mis-shaped entries.
    """

    framework = "torch"

    def __init__(self, *args, **kwargs):
        nn.Module.__init__(self)
        self.weights_lock()  # created before setup(), so plans built there share it
        RLModule.__init__(self, *args, **kwargs)

    def forward(self, batch: Mapping[str, Any], **kwargs) -> dict:
        """``module(batch)`` runs ``forward_train`` (as RLlib's TorchRLModule does)."""
        return self.forward_train(batch, **kwargs)

    @_default_forward
    def _forward_inference(self, batch: dict, **kwargs) -> dict:
        """Default: ``_forward`` without recording gradients (as RLlib >= 2.40)."""
        with torch.no_grad():
            return self._forward(batch, **kwargs)

    @_default_forward
    def _forward_exploration(self, batch: dict, **kwargs) -> dict:
        """Default: ``_forward`` without recording gradients (as RLlib >= 2.40)."""
        with torch.no_grad():
            return self._forward(batch, **kwargs)

    def get_inference_action_dist_cls(self):
        """``self.action_dist_cls`` when set (by the catalog or in ``setup()``), else RLlib's
        default for the action space: ``TorchCategorical`` for ``Discrete``, ``TorchDiagGaussian``
        for ``Box``. Other spaces: ValueError (set ``action_dist_cls`` or override the three
        ``get_*_action_dist_cls``)."""
        if self.action_dist_cls is not None:
            return self.action_dist_cls
        import gymnasium as gym

        from .. import distributions

        if isinstance(self.action_space, gym.spaces.Discrete):
            return distributions.TorchCategorical
        if isinstance(self.action_space, gym.spaces.Box):
            return distributions.TorchDiagGaussian
        raise ValueError(
            f"{type(self).__name__}: no default action distribution for action space {self.action_space}; set "
            "self.action_dist_cls in setup() or override get_inference_action_dist_cls, "
            "get_exploration_action_dist_cls and get_train_action_dist_cls")

    def get_state(
        self,
        components: Union[None, str, Sequence[str]] = None,
        *,
        not_components: Union[None, str, Sequence[str]] = None,
        inference_only: bool = False,
        **kwargs,
    ) -> dict:
        """State dict, optionally restricted to the attribute prefixes in ``components``, without
        those in ``not_components``, and without the non-inference attributes (e.g. the value
        function) when ``inference_only``."""
        state = self.state_dict()
        include = _as_list(components)
        exclude = _as_list(not_components)
        if inference_only:
            exclude += self.get_non_inference_attributes()
        return {
            k: v for k, v in state.items()
            if (not include or _matches(k, include)) and not (exclude and _matches(k, exclude))
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Load a ``get_state()`` dict (tensors or numpy arrays), all or nothing; ValueError
        naming the key for unexpected / missing keys, shapes or dtypes. A state holding target
        networks this module has not made yet (a learner's module, as ``RLModule.from_checkpoint``
        reads it) makes them first, as RLlib's learner does before it restores; a refused state
        leaves the module without them."""
        if not isinstance(state, Mapping):
            raise ValueError(f"state: expected a dict of tensors, got {type(state).__name__}")
        made = self._make_targets_for(state)
        try:
            self._set_state_checked(state)
        except BaseException:
            for name in made:
                delattr(self, name)
            raise

    def _make_targets_for(self, state: Mapping[str, Any]) -> list:
        """When ``state`` has keys this module lacks and it is a (non inference-only)
        ``TargetNetworkAPI`` module: ``make_target_networks()``; the names of the submodules that
        made (none otherwise)."""
        from ..apis import TargetNetworkAPI

        if self.inference_only or not isinstance(self, TargetNetworkAPI):
            return []
        own = self.state_dict()
        if all(k in own for k in state):
            return []
        before = set(self._modules)
        self.make_target_networks()
        return [n for n in self._modules if n not in before]

    def _set_state_checked(self, state: Mapping[str, Any]) -> None:
        own = self.state_dict()
        optional = self.get_non_inference_attributes()
        if self.inference_only:  # a learner's full state pushed to an inference-only copy
            state = {k: v for k, v in state.items() if k in own or not _matches(k, optional)}
        unexpected = sorted(set(state) - set(own))
        if unexpected:
            raise ValueError(f"state: unexpected keys {unexpected}")
        missing = sorted(set(own) - set(state))
        required_missing = [k for k in missing if not _matches(k, optional)]
        if required_missing:
            raise ValueError(f"state: missing keys {required_missing}")
        converted = {}
        for k, v in state.items():
            if isinstance(v, np.ndarray):
                v = torch.from_numpy(np.ascontiguousarray(v))
            elif not isinstance(v, torch.Tensor):
                raise ValueError(f"state[{k!r}]: expected a tensor or numpy array, got {type(v).__name__}")
            if tuple(v.shape) != tuple(own[k].shape):
                raise ValueError(f"state[{k!r}]: expected shape {tuple(own[k].shape)}, got {tuple(v.shape)}")
            if v.dtype.is_floating_point != own[k].dtype.is_floating_point:
                raise ValueError(f"state[{k!r}]: expected dtype {own[k].dtype}, got {v.dtype}")
            if v.is_meta:
                raise ValueError(f"state[{k!r}]: a tensor on the meta device holds no data")
            converted[k] = v
        self.load_state_dict(converted, strict=False)  # validated again, then loaded under weights_lock()

    def unwrapped(self) -> "TorchRLModule":
        return self

    def export_onnx(self, path, *, explore: bool = False, batch="dynamic", **kwargs) -> str:
        """The policy step (encoder, heads, action selection, value) as an ONNX file at ``path``;
        inputs "obs" (+ "state_in.*"), outputs "actions", "action_logp", "action_dist_inputs"
        (+ "vf_preds", "state_out.*"). See ``rlmodule_fast.export.export_onnx``."""
        from ..export import export_onnx

        return export_onnx(self, path, explore=explore, batch=batch, **kwargs)

    def export_program(self, *, explore: bool = False, batch="dynamic", **kwargs):
        """The policy step as a ``torch.export.ExportedProgram``; see ``rlmodule_fast.export``."""
        from ..export import export_program

        return export_program(self, explore=explore, batch=batch, **kwargs)


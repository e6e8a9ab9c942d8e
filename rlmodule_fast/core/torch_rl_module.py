"""TorchRLModule: an RLModule that is a torch.nn.Module (weights = its state dict)."""
from __future__ import annotations

import threading
from typing import Any, Mapping, Sequence, Union

import numpy as np
import torch
from torch import nn

from .rl_module import RLModule


def _matches(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _as_list(x: Union[None, str, Sequence[str]]) -> list[str]:
    if x is None:
        return []
    return [x] if isinstance(x, str) else list(x)


class TorchRLModule(nn.Module, RLModule):
    """RLModule + nn.Module. Subclasses build ``nn.Module`` layers in ``setup()``.

    ``get_state`` returns the state dict (tensors sharing storage with the module: copy them
    before mutating); ``set_state`` loads a full or inference-only state dict (tensors or numpy
    arrays) and raises ValueError naming unexpected, missing or mis-shaped entries.
    """

    framework = "torch"

    def __init__(self, *args, **kwargs):
        nn.Module.__init__(self)
        # Held while weights are replaced (set_state) and while a fused plan repacks them, so a
        # policy step sees either the old or the new weights, never a torn mix.
        self._weights_lock = threading.RLock()
        RLModule.__init__(self, *args, **kwargs)

    def weights_lock(self) -> "threading.RLock":
        """The lock guarding this module's weights against torn reads by the fused plans.

        ``set_state`` holds it. To update weights in place (e.g. ``optimizer.step()``) while
        another thread steps the module, hold it around the update::

            with module.weights_lock():
                optimizer.step()
        """
        return self._weights_lock

    def __getstate__(self) -> dict:
        state = nn.Module.__getstate__(self)
        state = dict(state)
        state.pop("_weights_lock", None)  # locks do not pickle; a copy gets its own
        return state

    def __setstate__(self, state: dict) -> None:
        nn.Module.__setstate__(self, state)
        self._weights_lock = threading.RLock()

    def forward(self, batch: Mapping[str, Any], **kwargs) -> dict:
        """``module(batch)`` runs ``forward_train`` (as RLlib's TorchRLModule does)."""
        return self.forward_train(batch, **kwargs)

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
        if not isinstance(state, Mapping):
            raise ValueError(f"state: expected a dict of tensors, got {type(state).__name__}")
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
            converted[k] = v
        with self._weights_lock:
            self.load_state_dict(converted, strict=False)

    def unwrapped(self) -> "TorchRLModule":
        return self


"""The policy step of an RLModule as one plain ``nn.Module`` (``PolicyStep``), for tracing.

``PolicyStep(module, explore=...)`` wraps the module's own torch layers (not copies, not the
fused backends) and its action distribution class:

    forward(obs [B, *obs_shape], *state_in) -> (actions, action_logp, action_dist_inputs,
                                                [vf_preds,] *state_out)

A ``Dict`` observation space (e.g. action masking's {"action_mask", "observations"}) gives
one input per key, ``"obs.<key>"`` in the space's key order, handed to the module's forward as
a dict.

* ``action_dist_inputs`` (and ``vf_preds``, ``state_out``) come from the module's torch
  forward: its ``_forward_train`` (the differentiable layers, never a fused backend), with a
  T=1 axis for stateful modules; an inference-only PPO module its ``_encode`` + ``pi``. Other
  modules can name their own with ``register_forward``.
* Action selection is the module's distribution class, called exactly as the module's torch
  forward calls it: ``dist = cls.from_logits(adi)``; ``actions = dist.sample()`` when exploring
  (categorical: Gumbel-max over ``torch.rand``; Gaussian: ``loc + scale * torch.randn``), else
  ``dist.to_deterministic().sample()`` (argmax / mean); ``action_logp = dist.logp(actions)``
  (inference: the logp of the deterministic action under the distribution, as the module).
  Traced to ONNX, the random draws become ``RandomUniformLike`` / ``RandomNormalLike`` nodes.
* Preprocessing the module owns (one-hot of Discrete obs, flattening of Box obs) is in the
  module's forward and therefore in the graph.

State (recurrent modules): the module's ``get_initial_state()`` structure flattened to names
``"h"``, ``"c"`` (shared encoder) or ``"actor.h"``, ``"actor.c"``, ``"critic.h"``, ...
(``vf_share_layers=False``), each ``[B, 1, H]`` float32 (the layout of the module's
``state_out``); inputs are named ``"state_in." + name``, outputs ``"state_out." + name``.
"""
from __future__ import annotations

import copy
from typing import Callable, Optional

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from ..core.columns import Columns
from ..distributions import TorchSquashedGaussian

#: module class -> fn(module, batch, with_value) -> {"action_dist_inputs", ["vf_preds"], ["state_out"]}
_FORWARDS: dict[type, Callable] = {}


def register_forward(module_cls: type):
    """Decorator: ``fn(module, batch, with_value) -> dict`` is the torch forward ``PolicyStep``
    uses for ``module_cls`` and its subclasses. ``batch`` holds ``"obs"`` [B, *obs_shape]
    (no time axis) and, for stateful modules, ``"state_in"`` (the module's structure, each
    leaf [B, 1, H]); the result holds ``"action_dist_inputs"`` [B, K], ``"vf_preds"`` [B]
    when ``with_value`` and ``"state_out"`` (same structure) when stateful. The fn must be
    traceable by ``torch.export`` (no data-dependent Python branches)."""
    def deco(fn):
        _FORWARDS[module_cls] = fn
        return fn
    return deco


def _default_forward(module, batch: dict, with_value: bool) -> dict:
    """Any module: its ``_forward_train`` (plain torch layers), with a T=1 axis for stateful ones."""
    if getattr(module, "inference_only", False):
        raise ValueError(f"module: {type(module).__name__} built with inference_only=True has no torch "
                         "forward the exporter knows; register one with rlmodule_fast.export.register_forward")
    stateful = Columns.STATE_IN in batch
    if stateful:
        obs = batch[Columns.OBS]
        obs = {k: v.unsqueeze(1) for k, v in obs.items()} if isinstance(obs, dict) else obs.unsqueeze(1)
        batch = {**batch, Columns.OBS: obs}
    out = module._forward_train(batch)
    res = {Columns.ACTION_DIST_INPUTS: out[Columns.ACTION_DIST_INPUTS]}
    if with_value:
        res[Columns.VF_PREDS] = out[Columns.VF_PREDS]
    if stateful:
        res = {k: v.squeeze(1) for k, v in res.items()}
        res[Columns.STATE_OUT] = out[Columns.STATE_OUT]
    return res


def _forward_fn(module) -> Callable:
    for cls in type(module).__mro__:
        if cls in _FORWARDS:
            return _FORWARDS[cls]
    return _default_forward


_builtin_registered = [False]


def _register_builtin() -> None:
    """PPO (and subclasses): ``_forward_train`` as for any module -- so whatever a subclass adds
    there (e.g. action masking) is in the graph -- except for an ``inference_only`` module,
    which has no value head to run it: its encoder and pi head (``_encode`` + ``pi``)."""
    if _builtin_registered[0]:
        return
    _builtin_registered[0] = True
    from ..ppo.ppo_rl_module import PPOTorchRLModule

    def _ppo_forward(module, batch: dict, with_value: bool) -> dict:
        if not module.inference_only:
            return _default_forward(module, batch, with_value)
        a, _, state_out, _ = module._encode(batch, critic=False)
        out = {Columns.ACTION_DIST_INPUTS: module.pi(a)}
        if state_out is not None:
            out[Columns.STATE_OUT] = state_out
        return out

    _FORWARDS.setdefault(PPOTorchRLModule, _ppo_forward)  # a user's registration wins


def has_value_head(module) -> bool:
    """True when the module can predict values (a ``vf`` head, not ``inference_only``)."""
    if getattr(module, "inference_only", False):
        return False
    return getattr(module, "vf", None) is not None


def flatten_state(state: dict, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """{"actor": {"h": t}} -> [("actor.h", t)], in the dict's order."""
    out = []
    for k, v in state.items():
        if isinstance(v, dict):
            out += flatten_state(v, f"{prefix}{k}.")
        else:
            out.append((prefix + k, v))
    return out


def unflatten_state(names: list[str], tensors) -> dict:
    """Inverse of ``flatten_state``."""
    out: dict = {}
    for name, t in zip(names, tensors):
        *parts, leaf = name.split(".")
        d = out
        for p in parts:
            d = d.setdefault(p, {})
        d[leaf] = t
    return out


class PolicyStep(nn.Module):
    """One policy step of ``module`` as a traceable ``nn.Module``; see the module docstring.

    ``explore``: sample (True) or take the deterministic action (False). ``with_value``:
    also output ``vf_preds`` [B] (default: when the module has a value head).
    ``input_names`` / ``output_names`` name the positional inputs and outputs.
    """

    def __init__(self, module: nn.Module, *, explore: bool = False, with_value: Optional[bool] = None):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise ValueError(f"module: expected a TorchRLModule, got {type(module).__name__}")
        if not isinstance(explore, bool):
            raise ValueError(f"explore: expected a bool, got {explore!r}")
        _register_builtin()
        self.module = module
        self.explore = explore
        can_value = has_value_head(module)
        if with_value is None:
            with_value = can_value
        elif with_value and not can_value:
            raise ValueError(f"with_value: expected False for a {type(module).__name__} without a value head "
                             "(inference_only or no vf), got True")
        self.with_value = bool(with_value)
        self._forward_fn = _forward_fn(module)
        init = module.get_initial_state() if hasattr(module, "get_initial_state") else {}
        self.state_names = [n for n, _ in flatten_state(init)]
        self._state_sizes = [int(t.shape[-1]) for _, t in flatten_state(init)]
        act_space = getattr(module, "action_space", None)
        if isinstance(act_space, (gym.spaces.Tuple, gym.spaces.Dict)):
            # one "actions" / "action_logp" output each: a structured action would shift the graph's
            # outputs (a wrong model written silently); refused until it has its own outputs
            raise ValueError(f"action_space: a {type(act_space).__name__} action space cannot be exported "
                             f"(the graph has one 'actions' output), got {act_space!r}")
        space = getattr(module, "observation_space", None)
        if isinstance(space, gym.spaces.Dict):  # e.g. {"action_mask", "observations"}: one input per key
            bad = [k for k, v in space.spaces.items() if not isinstance(v, (gym.spaces.Box, gym.spaces.Discrete))]
            if bad:
                raise ValueError(f"observation_space: expected a Dict of Box / Discrete spaces, got {space!r}")
            self.obs_keys: Optional[list] = list(space.spaces)
            obs_names = [f"{Columns.OBS}.{k}" for k in self.obs_keys]
        elif isinstance(space, (gym.spaces.Box, gym.spaces.Discrete)):
            self.obs_keys, obs_names = None, [Columns.OBS]
        else:
            raise ValueError(f"observation_space: expected a Box, Discrete or Dict space, got {space!r}")
        self.input_names = obs_names + [f"{Columns.STATE_IN}.{n}" for n in self.state_names]
        self.output_names = [Columns.ACTIONS, Columns.ACTION_LOGP, Columns.ACTION_DIST_INPUTS] \
            + ([Columns.VF_PREDS] if self.with_value else []) \
            + [f"{Columns.STATE_OUT}.{n}" for n in self.state_names]
        self.dist_cls = module.get_exploration_action_dist_cls() if explore \
            else module.get_inference_action_dist_cls()

    def example_inputs(self, batch_size: int = 2) -> tuple:
        """Inputs of ``batch_size`` rows: observations sampled from the space (seeded), zero state."""
        space = copy.deepcopy(self.module.observation_space)  # seeding the module's own space moves its stream
        space.seed(0)
        param = next((p for p in self.module.parameters() if p.is_floating_point()), None)
        dtype = param.dtype if param is not None else torch.float32
        device = param.device if param is not None else torch.device("cpu")
        rows = [space.sample() for _ in range(batch_size)]
        keys = self.obs_keys if self.obs_keys is not None else [None]
        obs = tuple(torch.as_tensor(self._valid(k, np.stack([r if k is None else r[k] for r in rows])), device=device)
                    for k in keys)
        states = tuple(torch.zeros(batch_size, 1, h, dtype=dtype, device=device) for h in self._state_sizes)
        return (*obs, *states)

    def _valid(self, key, x: np.ndarray) -> np.ndarray:
        """A sampled Box(0, 1) ``action_mask`` of a masking module made a mask the module takes:
        values 0 / 1 (a sample is a float in [0, 1]) with at least one allowed action per row."""
        masks = getattr(self.module, "_mask_dim", None) is not None or getattr(self.module, "_mask_key", None) == key
        if key != "action_mask" or not masks or not x.ndim:  # PPO/APPO: _mask_dim; DQN: _mask_key
            return x
        m = (x >= 0.5).astype(x.dtype)
        start = 0
        for n in getattr(self.module, "_mask_segments", None) or [m.shape[-1]]:  # one allowed per segment
            seg = m[..., start:start + n]
            seg[..., 0] = np.where(seg.any(axis=-1), seg[..., 0], 1)
            start += n
        return m

    def forward(self, *inputs: torch.Tensor) -> tuple:
        """``inputs`` in ``input_names`` order; returns the tuple named by ``output_names``."""
        if len(inputs) != len(self.input_names):
            raise ValueError(f"inputs: expected {len(self.input_names)} tensors {self.input_names}, "
                             f"got {len(inputs)}")
        n_obs = 1 if self.obs_keys is None else len(self.obs_keys)
        obs = inputs[0] if self.obs_keys is None else dict(zip(self.obs_keys, inputs[:n_obs]))
        batch = {Columns.OBS: obs}
        if self.state_names:
            batch[Columns.STATE_IN] = unflatten_state(self.state_names, inputs[n_obs:])
        out = self._forward_fn(self.module, batch, self.with_value)
        adi = out[Columns.ACTION_DIST_INPUTS]
        dist = self.dist_cls.from_logits(adi)
        if isinstance(dist, TorchSquashedGaussian):
            # the density of the pre-squash value, as the module's step (and RLlib's sampler): the
            # atanh round trip of a saturated tanh(u) (|u| > ~9 in float32) is clamped and wrong
            if self.explore:
                actions, logp = dist.sample_and_logp()
            else:
                actions, logp = dist.to_deterministic().sample(), dist._squashed_logp(dist.loc)
        else:
            actions = dist.sample() if self.explore else dist.to_deterministic().sample()
            logp = dist.logp(actions)
        res = [actions, logp, adi]
        if self.with_value:
            res.append(out[Columns.VF_PREDS])
        if self.state_names:
            flat = dict(flatten_state(out[Columns.STATE_OUT]))
            res += [flat[n] for n in self.state_names]
        return tuple(res)

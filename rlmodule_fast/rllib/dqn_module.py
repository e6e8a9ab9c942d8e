"""FastDQNTorchRLModule: RLlib's own DefaultDQNTorchRLModule, with the env-runner step fused.

Use it wherever RLlib takes a module class (needs ray[rllib])::

    from ray.rllib.algorithms.dqn import DQNConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from rlmodule_fast.rllib import FastDQNTorchRLModule

    config = DQNConfig().environment("CartPole-v1").rl_module(
        rl_module_spec=RLModuleSpec(module_class=FastDQNTorchRLModule))

It *is* a ``DefaultDQNTorchRLModule`` (same layers, parameter names, catalog, epsilon scheduler,
target networks, state, checkpoints and ``forward_train``: RLlib's learner path, unchanged). Only
``forward_exploration(batch, t=...)`` / ``forward_inference`` differ: for a batch of 1-D Box
observations [B, D] they run encoder, advantage / value heads, dueling combine or distributional
expectation, argmax, the epsilon coin and the random action in ONE call of our C++ backend (CPU)
or one Triton launch (CUDA) (``fastpath.qnet_plan``), with epsilon from the module's own RLlib ``Scheduler`` updated with
``t`` as RLlib's does. They return RLlib's keys: {"actions": [B] int64}. Random actions are
uniform among all actions (RLlib's: among actions whose Q-value is not exactly 0.0) and come from
rlmodule_fast's sampler stream (``rf.manual_seed``), not torch's.

Weights: the plan reads this module's own ``nn.Linear`` layers and checks their parameters'
versions on each call, so weights RLlib syncs into env runners (``set_state`` ->
``load_state_dict``) are used by the next step. When the fused step cannot run (no usable
backend, another observation space, a recurrent encoder, ``RLMODULE_FAST_BACKEND=torch``)
RLlib's torch forward runs; :meth:`fast_path_info` says which path runs and why.
"""
from __future__ import annotations

from typing import Optional

import gymnasium as gym

from ray.rllib.algorithms.dqn.torch.default_dqn_torch_rl_module import DefaultDQNTorchRLModule
from ray.rllib.core.columns import Columns

from ..core.torch_rl_module import WeightsLockMixin
from ..dqn.dqn_catalog import resolve_dqn_config
from ..fastpath.qnet_plan import OP, QNetLayers, fused_qnet_plan
from ..models.config import resolve_model_config
from ._fused import FusedStepMixin
from .convert import rllib_model_config
from .module import _linears_norms


class FastDQNTorchRLModule(WeightsLockMixin, FusedStepMixin, DefaultDQNTorchRLModule):
    """RLlib's ``DefaultDQNTorchRLModule`` whose exploration / inference step runs fused on CPU
    (see the module docstring). Weight updates (``set_state`` / ``load_state_dict``, ``.to()``)
    hold ``weights_lock()`` and are all-or-nothing, as on rlmodule_fast's own modules."""

    _FUSED_OP = OP
    _fused_plan = staticmethod(fused_qnet_plan)
    _KEEP_DISPATCH_REASON = True

    def setup(self) -> None:
        super().setup()
        self._setup_fast(lambda: resolve_model_config(rllib_model_config(
            resolve_dqn_config(self.model_config or {})[1], source="FastDQNTorchRLModule model_config")))

    def qnet_layers(self) -> QNetLayers:
        """This module's Q-network for ``fastpath.qnet_plan`` (its own layers, so in-place weight
        updates are seen). ValueError if the layout is not one the plan supports."""
        cfg = self._fast_cfg
        obs = self.observation_space
        if not (isinstance(obs, gym.spaces.Box) and len(obs.shape) == 1):
            raise ValueError(f"observation space {obs} is not supported by the fused step (1-D Box only)")
        if not isinstance(self.action_space, gym.spaces.Discrete):
            raise ValueError(f"action space {self.action_space} is not supported by the fused step (Discrete only)")
        enc = self.encoder
        if not hasattr(enc, "net") or hasattr(enc, "lstm"):
            raise ValueError(f"encoder: a {type(enc).__name__} is not an MLP encoder the fused step runs")
        dueling, atoms = bool(self.uses_dueling), int(self.num_atoms)
        enc_lins, enc_norms = _linears_norms(enc.net.mlp, "encoder.net")
        af, af_norms = _linears_norms(self.af.net.mlp, "af.net")
        vf, vf_norms = _linears_norms(self.vf.net.mlp, "vf.net") if dueling and atoms == 1 else (None, None)
        return QNetLayers(
            encoder=enc_lins, enc_activation=cfg["fcnet_activation"], af=af, vf=vf,
            head_activation=cfg["head_fcnet_activation"], num_actions=int(self.action_space.n), num_atoms=atoms,
            v_min=float(getattr(self, "v_min", -10.0)), v_max=float(getattr(self, "v_max", 10.0)),
            enc_norms=enc_norms, af_norms=af_norms, vf_norms=vf_norms)

    def _fast(self, batch: dict, t: Optional[int], deterministic: bool) -> Optional[dict]:
        """The fused step's outputs in RLlib's layout, or None to run RLlib's forward."""
        obs = batch[Columns.OBS]
        if getattr(obs, "ndim", 0) != 2 or Columns.STATE_IN in batch:
            return None
        plan = fused_qnet_plan(self, obs)
        if plan is None:
            return None
        eps = 0.0
        if not deterministic:
            eps = float(self.epsilon_schedule.update(t) if t is not None else self.epsilon_schedule.get_current_value())
        _, actions, _ = plan.step(obs, None, eps, deterministic)
        self._calls[0] += 1
        return {Columns.ACTIONS: actions}

    # RLlib's TorchRLModule wraps these in self.eval() ... self.train() (a walk over every
    # submodule, twice); the fused step has no train/eval-dependent layer, so it skips that.
    def forward_exploration(self, batch: dict, **kwargs) -> dict:
        out = self._fast(batch, kwargs.get("t"), deterministic=False)
        return out if out is not None else super().forward_exploration(batch, **kwargs)

    def forward_inference(self, batch: dict, **kwargs) -> dict:
        out = self._fast(batch, None, deterministic=True)
        return out if out is not None else super().forward_inference(batch, **kwargs)

    def _forward_exploration(self, batch: dict, t: Optional[int] = None, **kwargs) -> dict:
        out = self._fast(batch, t, deterministic=False)
        return out if out is not None else super()._forward_exploration(batch, t=t, **kwargs)

    def _forward_inference(self, batch: dict, **kwargs) -> dict:
        out = self._fast(batch, None, deterministic=True)
        return out if out is not None else super()._forward_inference(batch, **kwargs)

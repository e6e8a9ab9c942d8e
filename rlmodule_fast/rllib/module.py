"""FastPPOTorchRLModule: RLlib's own DefaultPPOTorchRLModule, with the env-runner step fused.

Use it wherever RLlib takes a module class (needs ray[rllib])::

    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from rlmodule_fast.rllib import FastPPOTorchRLModule

    config = PPOConfig().environment("CartPole-v1").rl_module(
        rl_module_spec=RLModuleSpec(module_class=FastPPOTorchRLModule))

It *is* a ``DefaultPPOTorchRLModule`` (same layers, parameter names, catalog, state, checkpoints,
``forward_train`` and ``compute_values``: RLlib's learner path, differentiable torch, unchanged).
Only ``forward_exploration`` / ``forward_inference`` differ: on CPU they run encoder, pi head and
sampling in ONE call of our C++ backend (``fastpath.PolicyPlan``) and return ``actions`` and
``action_logp`` with ``action_dist_inputs``; RLlib's env runners use those actions as they are
(its ``GetActions`` connector samples only when ``actions`` is missing). Inference returns the
deterministic action (argmax / mean). Like RLlib's own forwards, these outputs are not
differentiable.

Weights: the plan reads this module's own ``nn.Linear`` / ``nn.LSTM`` layers and checks their
parameters' versions on each call, so the weights RLlib's learner syncs into env runners
(``set_state`` -> ``load_state_dict``, an in-place copy) are used by the next step.

When the fused step cannot run (no C++ backend here, a CUDA module, an observation or action
space it does not support, a conv stack with layer norms, ``RLMODULE_FAST_BACKEND=torch``) the
module runs RLlib's torch forward instead; :meth:`fast_path_info` says which path runs and why.

Image observations ([H, W, C] Box): RLlib's ``TorchCNNEncoder`` (and the CNN tokenizer of its LSTM
encoder) runs as the fused conv stage (``models.cnn.cnn_conv_layers`` reads RLlib's layout: its
ZeroPad2d "same" padding, NHWC, (H, W, C) flatten). Float frames give RLlib's outputs; uint8
frames are converted inside the kernels (values kept, as a float cast), where RLlib's own forward
raises on a uint8 tensor.

Layouts (RLlib's): MLP obs [B, D] (images [B, H, W, C]); LSTM obs [B, 1, D] (images
[B, 1, H, W, C]) with ``state_in`` {"h", "c"} each [B, 1, H] (separate value encoder:
{"actor": {...}, "critic": {...}}), outputs with the T=1 axis and ``state_out`` in the same layout.
"""
from __future__ import annotations

from typing import Optional

import gymnasium as gym
from torch import nn

from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule
from ray.rllib.core.columns import Columns

from ..core.torch_rl_module import WeightsLockMixin
from ..fastpath import EncoderLayers, PolicyLayers, fused_plan
from ..fastpath.layers import conv_layers
from ..models.cnn import is_cnn_encoder
from ..models.config import resolve_model_config
from ._fused import FusedForwardsMixin
from .convert import rllib_model_config


def _linears_norms(seq: nn.Module, what: str) -> tuple[list, list]:
    """The nn.Linear layers of an RLlib TorchMLP's Sequential and, per layer, the nn.LayerNorm
    right after it or None (``*_use_layernorm``); only activations may sit between them."""
    layers, norms = [], []
    for m in seq.children():
        if isinstance(m, nn.Linear):
            layers.append(m)
            norms.append(None)
        elif isinstance(m, nn.LayerNorm) and norms and norms[-1] is None:
            norms[-1] = m
        elif len(list(m.parameters())) or len(list(m.buffers())):
            raise ValueError(f"{what}: layer {type(m).__name__} has weights (not a plain MLP)")
    if not layers:
        raise ValueError(f"{what}: no nn.Linear layers")
    return layers, norms


def _linears(seq: nn.Module, what: str) -> list:
    """The nn.Linear layers of an RLlib TorchMLP's Sequential (activations and norms between them)."""
    return _linears_norms(seq, what)[0]


class FastPPOTorchRLModule(WeightsLockMixin, FusedForwardsMixin, DefaultPPOTorchRLModule):
    """RLlib's ``DefaultPPOTorchRLModule`` whose exploration / inference step runs fused on CPU
    (see the module docstring for layouts and the fall-back rules). Weight updates
    (``set_state`` / ``load_state_dict``, which RLlib's weight syncs call, and ``.to()``) hold
    ``weights_lock()`` and are all-or-nothing, as on rlmodule_fast's own modules."""

    def setup(self) -> None:
        super().setup()
        e = self.encoder
        self._recurrent = hasattr(e.encoder if hasattr(e, "encoder") else e.actor_encoder, "lstm")
        obs = self.observation_space
        # rank of one observation: 1 (a 1-D Box) or 3 (an [H, W, C] image); the fused step's batches
        # are [B, *obs] ([B, 1, *obs] recurrent)
        self._obs_rank = len(obs.shape) if isinstance(obs, gym.spaces.Box) else -1
        self._setup_fast(lambda: resolve_model_config(
            rllib_model_config(self.model_config, source="FastPPOTorchRLModule model_config")))

    # ---- the layers, described for the fused backend ----------------------------------------
    def policy_layers(self):
        """This module's layers for ``fastpath.PolicyPlan`` (the layers themselves, so in-place
        weight updates are seen). ValueError if the layout is not one the plan supports."""
        cfg = self._fast_cfg

        def conv(cnn_enc, what: str) -> tuple[list, tuple]:
            """(conv layers, image shape) of RLlib's TorchCNNEncoder: TorchCNN, then a flatten."""
            net = getattr(cnn_enc, "net", None)
            if not (isinstance(net, nn.Sequential) and len(net) == 2 and isinstance(net[1], nn.Flatten)):
                raise ValueError(f"{what}: a {type(cnn_enc).__name__} is not a CNN encoder the fused step runs "
                                 "(RLlib's TorchCNNEncoder: TorchCNN, then a flatten; no dense layer)")
            return conv_layers(cnn_enc, what), tuple(int(v) for v in obs.shape)

        def enc(e, what: str) -> EncoderLayers:
            if is_cnn_encoder(e):
                rnn = e.lstm if hasattr(e, "lstm") else None
                convs, shape = conv(e.tokenizer if rnn is not None else e,
                                    f"{what}.tokenizer" if rnn is not None else what)
                return EncoderLayers(mlp=[], activation="relu", conv=convs, image_shape=shape, rnn=rnn)
            if hasattr(e, "lstm"):
                if e.tokenizer is None:
                    raise ValueError(f"{what}: LSTM encoder without tokenizer")
                lins, norms = _linears_norms(e.tokenizer.net.mlp, f"{what}.tokenizer")
                return EncoderLayers(mlp=lins, activation=cfg["fcnet_activation"], rnn=e.lstm, norms=norms)
            lins, norms = _linears_norms(e.net.mlp, f"{what}.net")
            return EncoderLayers(mlp=lins, activation=cfg["fcnet_activation"], norms=norms)

        space = self.action_space
        if isinstance(space, gym.spaces.Discrete):
            dist, sizes = "categorical", [int(space.n)]
        elif isinstance(space, gym.spaces.MultiDiscrete):
            dist, sizes = "multi_categorical", [int(n) for n in space.nvec.ravel()]
        elif isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
            dist, sizes = "diag_gaussian", [int(space.shape[0])]
        else:
            raise ValueError(f"action space {space} is not supported by the fused step")
        obs = self.observation_space
        if not (isinstance(obs, gym.spaces.Box) and self._obs_rank in (1, 3)):
            raise ValueError(f"observation space {obs} is not supported by the fused step (a 1-D Box or an "
                             "[H, W, C] image Box)")
        e = self.encoder
        shared = hasattr(e, "encoder")
        actor = enc(e.encoder if shared else e.actor_encoder, "encoder")
        critic = None
        if not shared and getattr(e, "critic_encoder", None) is not None:
            critic = enc(e.critic_encoder, "encoder.critic_encoder")
        vf = getattr(self, "vf", None)
        pi, pi_norms = _linears_norms(self.pi.net.mlp, "pi.net")
        vf, vf_norms = (None, None) if vf is None else _linears_norms(vf.net.mlp, "vf.net")
        return PolicyLayers(
            actor=actor,
            critic=critic,
            pi=pi,
            pi_norms=pi_norms,
            vf=vf,
            vf_norms=vf_norms,
            head_activation=cfg["head_fcnet_activation"],
            dist=dist,
            action_sizes=sizes,
            log_std_clip=cfg["log_std_clip_param"] if dist == "diag_gaussian" else None,
            free_log_std=getattr(self.pi, "log_std", None),
        )

    # ---- exploration / inference --------------------------------------------------------------
    def _fast(self, batch: dict, deterministic: bool) -> Optional[dict]:
        """The fused step's outputs in RLlib's layout, or None to run RLlib's forward."""
        obs = batch[Columns.OBS]
        plan = fused_plan(self, obs)
        if plan is None:
            return None
        rank = self._obs_rank
        if not self._recurrent:
            if obs.ndim != 1 + rank:  # e.g. a [B, T, D] batch: RLlib's forward handles any leading dims
                return None
            res = plan.step(obs, deterministic=deterministic)
            self._calls[0] += 1
            return {
                Columns.ACTION_DIST_INPUTS: res["action_dist_inputs"],
                Columns.ACTIONS: res["actions"],
                Columns.ACTION_LOGP: res["action_logp"],
            }
        if obs.ndim != 2 + rank or obs.shape[1] != 1:  # RLlib steps with T=1; anything else: RLlib's path
            return None
        res = plan.step(obs[:, 0], batch[Columns.STATE_IN], deterministic=deterministic)  # state [B, 1, H] accepted
        self._calls[0] += 1
        return {
            Columns.ACTION_DIST_INPUTS: res["action_dist_inputs"].unsqueeze(1),
            Columns.ACTIONS: res["actions"].unsqueeze(1),
            Columns.ACTION_LOGP: res["action_logp"].unsqueeze(1),
            Columns.STATE_OUT: _map(res["state_out"], lambda s: s.unsqueeze(1)),
        }


def _map(state: dict, fn) -> dict:
    return {k: (_map(v, fn) if isinstance(v, dict) else fn(v)) for k, v in state.items()}

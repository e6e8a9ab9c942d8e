"""SACTorchRLModule: RLlib 2.60's DefaultSACTorchRLModule (same attributes, parameter names,
forward_train columns), with the policy step of ``forward_exploration`` / ``forward_inference``
sent to a fused backend.

Layers (RLlib's names): ``pi_encoder`` (MLP over the flattened obs) and ``pi`` (head: mean and
log-std [B, 2A] for a Box, logits [B, n] for Discrete); unless ``inference_only``: ``qf_encoder``
+ ``qf`` and, with ``twin_q``, ``qf_twin_encoder`` + ``qf_twin`` (continuous: a multi-stream
encoder over obs and actions, one Q-value; discrete: an MLP over obs, n Q-values). Target
networks (``target_qf_encoder``, ``target_qf``, ...) exist only after ``make_target_networks()``.

Actions: Box -> RLlib's ``TorchSquashedGaussian``: actions in [-1, 1] (RLlib's env-to-module
connector rescales them to the Box bounds), log-std clamped to [-5, 2] when sampling,
``action_dist_inputs`` the head's raw output. Discrete -> categorical (discrete SAC).

Fast path: ``forward_exploration`` / ``forward_inference`` run pi encoder, pi head and sampling
in one backend call (cpp on CPU, triton on CUDA) and return ``action_dist_inputs``, ``actions``
and ``action_logp``. Inference returns tanh(mean) (discrete: argmax) and its log-density; RLlib
2.60 has no inference ``actions`` (its connector samples ``TorchDeterministic(loc)``, the
*unsquashed* mean, which can lie outside [-1, 1]). Not differentiable, as RLlib's env-runner
forwards. ``forward_train`` always runs the torch layers with autograd.

Observations: Box (flattened; [H, W, C] images: RLlib's CNN, torch layers only), Discrete
(one-hot), Dict / Tuple (flattened exactly as RLlib's FlattenObservations connector,
``models.flatten``; the fused step runs on the flattened features), for continuous and discrete
SAC. ``obs`` and ``new_obs`` are then nested batches of [B, ...] leaves.

Action masking (discrete SAC only; continuous SAC with a mask is a ValueError at build time):
observation space ``Dict({"action_mask": Box(0, 1, (n,)), "observations": <space>})``, batches
``obs`` (and ``new_obs``) = {"action_mask": [B, n] of 0/1, "observations": ...}; only
"observations" is encoded. A mask that is not 0/1 (NaN included) or masks every action of a row is
a ValueError naming the row.

- ``forward_exploration`` / ``forward_inference`` (fused or torch): ``action_dist_inputs`` are the
  logits with masked entries at RLlib's FLOAT_MIN (-3.4e38, as PPO / DQN and RLlib's
  action-masking module); a masked action is never sampled nor the argmax; ``action_logp``
  normalises over the allowed actions.
- ``forward_train``: ``action_probs(_next)`` are exactly 0 for masked actions and
  ``action_log_probs(_next)`` finite: a masked logit is replaced by the row's largest allowed
  logit minus ``MASK_LOGIT_GAP`` (1000; detached), so softmax gives it probability exactly 0 in
  float16 / 32 / 64 (e^-1000 underflows) and log-probability about -1000. RLlib's discrete loss
  sums ``probs * (alpha * log_probs - Q)`` over actions: with FLOAT_MIN logits the log-probability
  is ~-3.4e38, ``alpha * logp`` overflows to -inf once alpha > 1 and 0 * inf gives a NaN loss;
  with the gap every term of the critic, actor and alpha losses and their gradients stays finite
  for alpha up to ~3e35 (float32). Q-values are not masked: a masked action's Q is the critic's
  own finite output and enters every loss term multiplied by a probability of exactly 0 (FLOAT_MIN
  Q-values would be finite there too, but put -3.4e38 into RLlib's logged Q statistics).

Shape legend: B batch, D flattened obs, A action dims (Box) or n actions (Discrete).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import gymnasium as gym
import numpy as np
import torch

from ..apis import InferenceOnlyAPI, QNetAPI, TargetNetworkAPI, make_target_network
from ..core.columns import Columns
from ..core.specs import TensorSpec, to_torch
from ..core.torch_rl_module import TorchRLModule
from ..fastpath import fast_path_info_for, fused_plan, lane, refresh
from ..models.encoders import flatten_obs, obs_lead_dims
from ..models.flatten import ACTION_MASK, OBSERVATIONS, first_leaf, flatten, is_structured, lead_dims
from ..ops.reference import check_action_mask, mask_logits
from ..ppo.ppo_rl_module import _check_finite_obs
from .sac_catalog import SACCatalog

# RLlib's SAC learner columns (ray.rllib.algorithms.sac.sac_learner)
QF_PREDS = "qf_preds"
QF_TWIN_PREDS = "qf_twin_preds"
QF_TARGET_NEXT = "q_target_next"
ACTION_DIST_INPUTS_NEXT = "action_dist_inputs_next"
ACTION_PROBS = "action_probs"
ACTION_LOG_PROBS = "action_log_probs"
ACTION_PROBS_NEXT = "action_probs_next"
ACTION_LOG_PROBS_NEXT = "action_log_probs_next"

#: forward_train's masked logit: the row's largest allowed logit minus this gap, so a masked
#: action's probability is exactly 0 (e^-1000 underflows in float16 / 32 / 64) and its
#: log-probability finite (about -1000; see the module docstring).
MASK_LOGIT_GAP = 1000.0


# The fast lane (fastpath.lane): the columns of the fused step's (dist inputs, actions, logp), and
# the methods besides the forwards a subclass must keep for the lane to stand in for them (the
# fused forward and the observation split it reads the obs through).
_LANE_KEYS = (Columns.ACTION_DIST_INPUTS, Columns.ACTIONS, Columns.ACTION_LOGP)
_LANE_EXTRA = ("_forward_fast_or_torch", "_split_obs")


class SACTorchRLModule(TorchRLModule, InferenceOnlyAPI, TargetNetworkAPI, QNetAPI):
    """SAC actor and (twin) critics; see the module docstring for layers, outputs, fast path."""

    _forward_accepts_numpy = True  # numpy obs go to the fused plan without a torch round trip

    def setup(self) -> None:
        cat = self._own_catalog(SACCatalog)
        self.twin_q = cat.model_config_dict["twin_q"]
        self.pi_encoder = cat.build_encoder("torch")
        if not self.inference_only:
            self.qf_encoder = cat.build_qf_encoder("torch")
            if self.twin_q:
                self.qf_twin_encoder = cat.build_qf_encoder("torch")
        self.pi = cat.build_pi_head("torch")
        if not self.inference_only:
            self.qf = cat.build_qf_head("torch")
            if self.twin_q:
                self.qf_twin = cat.build_qf_head("torch")
        self.action_dist_cls = cat.action_dist_cls
        self._discrete = isinstance(self.action_space, gym.spaces.Discrete)
        # the space the encoders read (an action-masking Dict: its "observations") and the mask width
        self._enc_space = cat.encoder_observation_space
        self._mask_dim = cat.action_mask_dim
        self._structured = is_structured(self._enc_space)  # Dict / Tuple: flattened as RLlib's connector
        self._obs_rank = obs_lead_dims(self._enc_space)
        self._image = getattr(cat, "encoder_kind", "mlp") == "cnn"
        self._flat_step = isinstance(self._enc_space, gym.spaces.Box) and self._obs_rank == 1

    # ---- RLlib's API mixins --------------------------------------------------------------------
    def make_target_networks(self) -> None:
        """Frozen copies ``target_qf_encoder``, ``target_qf`` (+ twins) of the Q networks."""
        if self.inference_only:
            raise RuntimeError("make_target_networks: module was built with inference_only=True (no Q networks)")
        self.target_qf_encoder = make_target_network(self.qf_encoder)
        self.target_qf = make_target_network(self.qf)
        if self.twin_q:
            self.target_qf_twin_encoder = make_target_network(self.qf_twin_encoder)
            self.target_qf_twin = make_target_network(self.qf_twin)

    def get_target_network_pairs(self) -> list:
        self._need_targets("get_target_network_pairs")
        pairs = [(self.qf_encoder, self.target_qf_encoder), (self.qf, self.target_qf)]
        if self.twin_q:
            pairs += [(self.qf_twin_encoder, self.target_qf_twin_encoder), (self.qf_twin, self.target_qf_twin)]
        return pairs

    def get_non_inference_attributes(self) -> list[str]:
        ret = ["qf", "target_qf", "qf_encoder", "target_qf_encoder"]
        if self.twin_q:
            ret += ["qf_twin", "target_qf_twin", "qf_twin_encoder", "target_qf_twin_encoder"]
        return ret

    def get_initial_state(self) -> dict:
        return {}

    def get_inference_action_dist_cls(self):
        return self.action_dist_cls

    def get_exploration_action_dist_cls(self):
        return self.action_dist_cls

    def get_train_action_dist_cls(self):
        return self.action_dist_cls

    def _need_targets(self, who: str) -> None:
        if not hasattr(self, "target_qf"):
            raise RuntimeError(f"{who}: no target networks yet; call make_target_networks() first")

    # ---- specs --------------------------------------------------------------------------------
    def _obs_spec(self):
        sp = self._enc_space
        shape = tuple(sp.shape) if isinstance(sp, gym.spaces.Box) else ()
        kind = "int" if isinstance(sp, gym.spaces.Discrete) else "number"
        # nested Dict / Tuple: checked leaf by leaf when flattened (models.flatten)
        inner = None if self._structured else TensorSpec(("B", *shape), dtype_kind=kind)
        if self._mask_dim is None:
            return inner
        return {ACTION_MASK: TensorSpec(("B", self._mask_dim), dtype_kind="number"), OBSERVATIONS: inner}

    def input_specs_inference(self):
        return {Columns.OBS: self._obs_spec()}

    def input_specs_exploration(self):
        return {Columns.OBS: self._obs_spec()}

    def input_specs_train(self):
        specs = {Columns.OBS: self._obs_spec(), Columns.NEXT_OBS: self._obs_spec()}
        if not self._discrete:
            specs[Columns.ACTIONS] = TensorSpec(("B", int(self.action_space.shape[0])), dtype_kind="number")
        return specs

    def output_specs_train(self):
        twin = [QF_TWIN_PREDS] if self.twin_q else []
        if self._discrete:
            return [QF_PREDS, *twin, QF_TARGET_NEXT, ACTION_PROBS, ACTION_LOG_PROBS, ACTION_PROBS_NEXT,
                    ACTION_LOG_PROBS_NEXT]
        return [QF_PREDS, *twin, Columns.ACTION_DIST_INPUTS, ACTION_DIST_INPUTS_NEXT, "logp_resampled",
                "logp_next_resampled", "q_curr", QF_TARGET_NEXT]

    # ---- the torch layers -----------------------------------------------------------------------
    def _float_dtype(self) -> torch.dtype:
        """The dtype the layers compute in: the pi head's output weight's (one lookup, not a walk
        over every submodule: this runs several times per training step)."""
        lins = self.pi.net.linears if hasattr(self.pi, "net") else []
        if lins:
            return lins[-1].weight.dtype
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.get_default_dtype()

    def _split_obs(self, obs: Any, key: str = Columns.OBS) -> tuple[Any, Any]:
        """(the observations the encoders read, the action mask or None) of a batch's ``key``
        column; ValueError naming ``key`` when a masking module's column is not RLlib's Dict."""
        if self._mask_dim is None:
            return obs, None
        if type(obs) is dict or isinstance(obs, Mapping):
            if ACTION_MASK in obs and OBSERVATIONS in obs:
                return obs[OBSERVATIONS], obs[ACTION_MASK]
            got = f"keys {sorted(map(str, obs))}"
        else:
            got = f"a {type(obs).__name__}"
        raise ValueError(f"{key}: expected {{'action_mask': [B, {self._mask_dim}], 'observations': ...}} (an "
                         f"action-masking module), got {got}")

    def _features(self, obs: Any) -> torch.Tensor:
        """The observations (without the mask) as float features on the layers' device: [B, D]
        flattened (Discrete one-hot; Dict / Tuple as RLlib's FlattenObservations); images
        [B, H, W, C] as they are (the CNN encoder reads channel-last frames; uint8 cast, not
        scaled, as in PPO)."""
        dtype = self._float_dtype()
        if self._structured:
            x = flatten(obs, self._enc_space, lead_dims(obs, self._enc_space), dtype)
        else:
            obs = torch.as_tensor(obs)
            if self._image:
                x = obs.to(dtype)
            else:
                x = flatten_obs(obs, self._enc_space, obs.dim() - self._obs_rank, dtype)
        dev = self._device()
        return x if dev is None or x.device == dev else x.to(dev)

    def _device(self) -> Optional[torch.device]:
        lins = self.pi.net.linears if hasattr(self.pi, "net") else []
        return lins[-1].weight.device if lins else None

    def _pi_logits(self, obs: Any) -> torch.Tensor:
        """The pi head's raw output for the observations ``obs`` (without the mask)."""
        return self.pi(self.pi_encoder(self._features(obs)))

    def _check_mask(self, mask: Any, rows: int, device: torch.device) -> torch.Tensor:
        """The mask as a bool tensor [B, n] on ``device`` (True = allowed); ValueError for another
        shape, a value other than 0 / 1 (NaN included) or a row with every action masked."""
        m = torch.as_tensor(mask).to(device)
        if m.dim() != 2 or tuple(m.shape) != (rows, self._mask_dim):
            raise ValueError(f"action_mask: expected shape [{rows}, {self._mask_dim}] (B, n actions), "
                             f"got {tuple(m.shape)}")
        if not torch.compiler.is_compiling():  # data-dependent: not while torch.export traces
            check_action_mask(m, [self._mask_dim])
        return m != 0

    def _probs(self, logits: torch.Tensor, mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(action probs, action log-probs) [B, n] for SAC's discrete loss. Unmasked: RLlib's
        softmax and its log. Masked: a masked logit becomes the row's largest allowed logit minus
        ``MASK_LOGIT_GAP`` (detached): probability exactly 0, log-probability finite (module doc)."""
        if mask is None:
            probs = torch.softmax(logits, dim=-1)
            return probs, probs.log()
        valid = self._check_mask(mask, logits.shape[0], logits.device)
        with torch.no_grad():
            best = logits.masked_fill(~valid, float("-inf")).amax(dim=-1, keepdim=True)
        z = torch.where(valid, logits, best - MASK_LOGIT_GAP)
        return torch.softmax(z, dim=-1), torch.log_softmax(z, dim=-1)

    def _qf_forward_train_helper(self, batch: dict, encoder, head, squeeze: bool = True) -> torch.Tensor:
        """Q-values of one Q network: [B] (continuous, ``batch`` has obs and actions [B, A]) or
        [B, n] (discrete; ``squeeze=False``)."""
        x = self._features(self._split_obs(batch[Columns.OBS])[0])
        if self._discrete:
            latent = encoder(x)
        else:
            actions = torch.as_tensor(batch[Columns.ACTIONS]).to(x.dtype)
            latent = encoder({Columns.OBS: x, Columns.ACTIONS: actions})
        q = head(latent)
        return q.squeeze(-1) if squeeze else q

    def compute_q_values(self, batch: dict, squeeze: bool = True) -> torch.Tensor:
        """min over the (twin) Q networks: [B] (continuous) or [B, n] (discrete, squeeze=False)."""
        if self.inference_only:
            raise RuntimeError("compute_q_values: module was built with inference_only=True (no Q networks)")
        batch = to_torch(batch)
        q = self._qf_forward_train_helper(batch, self.qf_encoder, self.qf, squeeze)
        if self.twin_q:
            q = torch.min(q, self._qf_forward_train_helper(batch, self.qf_twin_encoder, self.qf_twin, squeeze))
        return q

    def forward_target(self, batch: dict, squeeze: bool = True) -> torch.Tensor:
        """min over the target Q networks (as ``compute_q_values``)."""
        self._need_targets("forward_target")
        batch = to_torch(batch)
        q = self._qf_forward_train_helper(batch, self.target_qf_encoder, self.target_qf, squeeze)
        if self.twin_q:
            q = torch.min(q, self._qf_forward_train_helper(batch, self.target_qf_twin_encoder,
                                                           self.target_qf_twin, squeeze))
        return q

    def _forward_train(self, batch: dict, **kwargs) -> dict:
        batch = to_torch(batch)
        return self._train_discrete(batch) if self._discrete else self._train_continuous(batch)

    def _train_discrete(self, batch: dict) -> dict:
        out = {}
        cur, nxt = {Columns.OBS: batch[Columns.OBS]}, {Columns.OBS: batch[Columns.NEXT_OBS]}
        obs, mask = self._split_obs(batch[Columns.OBS], Columns.OBS)
        obs_next, mask_next = self._split_obs(batch[Columns.NEXT_OBS], Columns.NEXT_OBS)
        out[ACTION_PROBS_NEXT], out[ACTION_LOG_PROBS_NEXT] = self._probs(self._pi_logits(obs_next), mask_next)
        out[QF_TARGET_NEXT] = self.forward_target(nxt, squeeze=False)
        out[QF_PREDS] = self._qf_forward_train_helper(cur, self.qf_encoder, self.qf, squeeze=False)
        if self.twin_q:
            out[QF_TWIN_PREDS] = self._qf_forward_train_helper(cur, self.qf_twin_encoder, self.qf_twin, squeeze=False)
        out[ACTION_PROBS], out[ACTION_LOG_PROBS] = self._probs(self._pi_logits(obs), mask)
        return out

    def _q_params(self) -> list:
        ps = list(self.qf.parameters()) + list(self.qf_encoder.parameters())
        if self.twin_q:
            ps += list(self.qf_twin.parameters()) + list(self.qf_twin_encoder.parameters())
        return ps

    def _train_continuous(self, batch: dict) -> dict:
        out = {}
        obs, obs_next = batch[Columns.OBS], batch[Columns.NEXT_OBS]
        cur = {Columns.OBS: obs, Columns.ACTIONS: batch[Columns.ACTIONS]}
        out[QF_PREDS] = self._qf_forward_train_helper(cur, self.qf_encoder, self.qf)
        if self.twin_q:
            out[QF_TWIN_PREDS] = self._qf_forward_train_helper(cur, self.qf_twin_encoder, self.qf_twin)
        logits, logits_next = self._pi_logits(obs), self._pi_logits(obs_next)
        out[Columns.ACTION_DIST_INPUTS] = logits
        out[ACTION_DIST_INPUTS_NEXT] = logits_next
        dist_cls = self.get_train_action_dist_cls()
        actions_resampled, out["logp_resampled"] = dist_cls.from_logits(logits).rsample_and_logp()
        actions_next, logp_next = dist_cls.from_logits(logits_next).sample_and_logp()
        out["logp_next_resampled"] = logp_next.detach()
        # RLlib's "straight-through" pass: the policy's gradient flows through the Q networks
        # into the resampled actions, while the Q parameters record none.
        params = self._q_params()
        for p in params:
            p.requires_grad = False
        try:
            out["q_curr"] = self.compute_q_values({Columns.OBS: obs, Columns.ACTIONS: actions_resampled})
        finally:
            for p in params:
                p.requires_grad = True
        nxt = {Columns.OBS: obs_next, Columns.ACTIONS: actions_next.detach()}
        out[QF_TARGET_NEXT] = self.forward_target(nxt).detach()
        return out

    def _forward_torch(self, batch: dict, deterministic: bool) -> dict:
        """The torch layers' exploration / inference step, with the fused step's keys."""
        obs, mask = self._split_obs(batch[Columns.OBS])
        x = self._features(obs)
        _check_finite_obs(x)
        logits = self.pi(self.pi_encoder(x))
        if mask is not None:  # RLlib's masking: FLOAT_MIN logits, as the fused step writes them
            self._check_mask(mask, logits.shape[0], logits.device)
            logits = mask_logits(logits, mask)
        dist = self.action_dist_cls.from_logits(logits)
        if self._discrete:
            actions = dist.to_deterministic().sample() if deterministic else dist.sample()
            logp = dist.logp(actions)
        elif deterministic:  # tanh(mean) and its density (from u = mean: exact, no atanh round trip)
            actions, logp = dist.to_deterministic().sample(), dist._squashed_logp(dist.loc)
        else:
            actions, logp = dist.sample_and_logp()
        return {Columns.ACTION_DIST_INPUTS: logits, Columns.ACTIONS: actions, Columns.ACTION_LOGP: logp}

    # ---- exploration / inference: the fast path ---------------------------------------------------
    def policy_layers(self):
        """pi encoder, pi head and the distribution described for a fused backend
        (``fastpath.PolicyLayers``; the layers themselves, so in-place updates are seen).
        ValueError naming the part when a layer is not one the fused step runs."""
        from ..fastpath import EncoderLayers, PolicyLayers
        from ..models.encoders import TorchMLPEncoder
        from ..models.heads import TorchMLPHead

        if not isinstance(self.pi_encoder, TorchMLPEncoder):
            raise ValueError(f"pi_encoder: a {type(self.pi_encoder).__name__} is not an encoder the fused step runs")
        if not isinstance(self.pi, TorchMLPHead) or self.pi.clip_log_std:
            raise ValueError(f"pi: a {type(self.pi).__name__} head is not a head the fused step runs "
                             "(SACCatalog's MLP head)")
        space = self.action_space
        if self._discrete:
            dist, sizes = "categorical", [int(space.n)]
        else:
            dist, sizes = "squashed_gaussian", [int(space.shape[0])]
        return PolicyLayers(
            actor=EncoderLayers(mlp=self.pi_encoder.net.linears, activation=self.pi_encoder.activation,
                                norms=self.pi_encoder.net.norms),  # fcnet_use_layernorm
            critic=None, pi=self.pi.net.linears, pi_norms=self.pi.net.norms, vf=None,
            head_activation=self.catalog.model_config_dict["head_fcnet_activation"],
            dist=dist, action_sizes=sizes, log_std_clip=None, free_log_std=None,
        )

    def fast_path_info(self) -> dict:
        """{"backend": "cpp" | "triton" | "torch", "active": bool, "reason": str}: which path
        ``forward_exploration`` / ``forward_inference`` take for a batch on this module's device."""
        return fast_path_info_for(self, next(self.parameters(), None))

    def refresh_fast_path(self) -> None:
        """Re-read the layers and repack the fused step's weights now (after writes a step cannot
        detect: in-place ops on ``p.data``, writes through a numpy view of a parameter)."""
        refresh(self)

    def _forward_fast_or_torch(self, batch: dict, deterministic: bool) -> dict:
        obs, mask = self._split_obs(batch[Columns.OBS])
        plan = fused_plan(self, first_leaf(obs, self._enc_space) if self._structured else obs)
        if plan is None:
            return self._forward_torch(to_torch(batch), deterministic)
        if self._flat_step and getattr(obs, "ndim", 0) == 2 and plan.backend == "cpp":
            # the env-runner hot path ([B, D] Box obs as they are; the plan checks the mask)
            adi, actions, logp = plan.step_flat(obs, deterministic, mask)
            if mask is None and not self._structured:
                lane.arm_policy(self, plan, batch, SACTorchRLModule, _LANE_EXTRA, _LANE_KEYS)
            return {Columns.ACTION_DIST_INPUTS: adi, Columns.ACTIONS: actions, Columns.ACTION_LOGP: logp}
        x = self._features(self._split_obs(to_torch(batch)[Columns.OBS])[0])
        res = plan.step(x, deterministic=deterministic, mask=mask)
        return {Columns.ACTION_DIST_INPUTS: _tensor(res["action_dist_inputs"]),
                Columns.ACTIONS: _tensor(res["actions"]), Columns.ACTION_LOGP: _tensor(res["action_logp"])}

    def _forward_exploration(self, batch: dict, **kwargs) -> dict:
        return self._forward_fast_or_torch(batch, deterministic=False)

    def _forward_inference(self, batch: dict, **kwargs) -> dict:
        return self._forward_fast_or_torch(batch, deterministic=True)


lane.register(SACTorchRLModule, _LANE_EXTRA)


def _tensor(v: Any) -> torch.Tensor:
    return torch.from_numpy(v) if isinstance(v, np.ndarray) else v


def _export_forward(module: SACTorchRLModule, batch: dict, with_value: bool) -> dict:
    """``export_onnx``'s torch forward of a SAC module: pi encoder + pi head only (what an env
    runner needs; the Q networks are the learner's), also for an inference-only module."""
    obs, mask = module._split_obs(batch[Columns.OBS])
    logits = module._pi_logits(obs)
    return {Columns.ACTION_DIST_INPUTS: logits if mask is None else mask_logits(logits, mask)}


def _register_export() -> None:
    from ..export.policy import register_forward

    register_forward(SACTorchRLModule)(_export_forward)


_register_export()

"""PPOTorchRLModule: RLlib's DefaultPPOTorchRLModule (same parameter names), with the policy
step of ``forward_exploration`` / ``forward_inference`` sent to a fused backend.

Batches are batch-major. MLP: obs [B, *obs_shape]. LSTM/GRU (``use_lstm`` / ``use_gru``):
``forward_train`` takes obs [B, T, *obs_shape] and ``state_in`` {"h": [B, 1, H](, "c")}
(nested {"actor": ..., "critic": ...} with ``vf_share_layers=False``); stepping takes obs
[B, 1, *obs_shape] or [B, *obs_shape] (read as T=1; outputs then have no T axis; ``state_out``
leaves are [B, 1, H] either way).
Image observations (a [H, W, C] Box) go to RLlib's CNN encoder channel-last, unflattened; uint8
frames are cast to float (values kept, no scaling: RLlib's Atari wrappers scale in the env).
The fused step runs the conv stack too (NHWC, RLlib's padding and (H, W, C) flatten; CNN -> LSTM /
GRU tokenizers; shared or separate critic): it takes [B, H, W, C] (or [B, 1, H, W, C] with a
recurrent encoder) float or uint8 frames, the uint8 ones converted inside the kernels.

Fast path: under ``backend="auto"`` (or ``RLMODULE_FAST_BACKEND``) ``forward_exploration`` /
``forward_inference`` run encoder, pi head and sampling in one backend call (cpp for CPU,
triton for CUDA) and also return ``actions`` and ``action_logp`` (inference: the
deterministic action). These outputs are not differentiable (as in RLlib, where env runners
call them under no_grad); ``forward_train`` always runs the torch layers with autograd.
CUDA-graph mode (opt-in, one fixed batch size, Box observations): ``step =
rlmodule_fast.fastpath.CudaGraphStep(module, batch_size, explore=True)`` captures the triton
step once and replays it per ``step({"obs": obs})`` (same keys; fresh outputs unless
``return_static=True``; weight changes re-capture; NaN/inf surface through the device error flag
at the next call, or per ``errors=``); see ``rlmodule_fast.fastpath.cuda_graph``.

Action masking (RLlib's ActionMaskingTorchRLModule semantics): with a Dict observation space
{"action_mask": Box(0, 1, [n]), "observations": <space>} only ``obs["observations"]`` is encoded
and ``action_dist_inputs`` = logits + clamp(log(mask), FLOAT_MIN) in every forward (masked
logits are RLlib's FLOAT_MIN = -3.4e38); the fused step samples only allowed actions (exact
``action_logp``). ``forward_train`` / ``compute_values`` also take RLlib's learner layout (obs
the observations, the mask under ``batch["action_mask"]``). An all-masked row is a ValueError.
Dict / Tuple observations without a mask are flattened as RLlib's FlattenObservations
connector does (``models.flatten``).
"""
from __future__ import annotations

from typing import Optional

import gymnasium as gym
import numpy as np
import torch

from ..apis import InferenceOnlyAPI, ValueFunctionAPI
from ..core.columns import Columns
from ..core.specs import TensorSpec, to_torch
from ..fastpath import fast_path_info_for, fused_plan, lane, refresh
from ..core.torch_rl_module import TorchRLModule
from ..models.encoders import flatten_obs, obs_lead_dims
from ..models.flatten import ACTION_MASK, OBSERVATIONS, first_leaf, flatten, is_structured, lead_dims
from ..ops.reference import mask_logits
from .ppo_catalog import PPOCatalog

# The fast lane (fastpath.lane): the columns of the fused step's (dist inputs, actions, logp), and
# the methods besides the forwards a subclass must keep for the lane to stand in for them.
_LANE_KEYS = (Columns.ACTION_DIST_INPUTS, Columns.ACTIONS, Columns.ACTION_LOGP)
_LANE_EXTRA = ("_forward_fast_or_torch",)


class PPOTorchRLModule(TorchRLModule, ValueFunctionAPI, InferenceOnlyAPI):
    """Actor-critic PPO module; see the module docstring for shapes and the fast path."""

    _forward_accepts_numpy = True  # numpy obs go to the fused plan without a torch round trip

    def setup(self) -> None:
        cat = self._own_catalog(PPOCatalog)
        if cat.recurrent_kind:
            # As RLlib: env runners must collect the critic's recurrent state for the learner,
            # so a stateful module is never inference-only.
            self.inference_only = False
        self.encoder = cat.build_actor_critic_encoder("torch", inference_only=self.inference_only)
        self.pi = cat.build_pi_head("torch")
        if not self.inference_only:
            self.vf = cat.build_vf_head("torch")
        self.action_dist_cls = cat.action_dist_cls
        self._recurrent = cat.recurrent_kind
        # the space the encoder reads (RLlib's action-masking Dict: its "observations") and the mask width
        self._enc_space = getattr(cat, "encoder_observation_space", self.observation_space)
        self._mask_dim = getattr(cat, "action_mask_dim", None)
        if self._mask_dim is not None:
            self._mask_segments = _mask_segments(self.action_space, self._mask_dim)
        self._structured = is_structured(self._enc_space)
        self._action_struct = isinstance(self.action_space, (gym.spaces.Tuple, gym.spaces.Dict))
        self._image = cat.encoder_kind == "cnn"
        self._obs_rank = obs_lead_dims(self._enc_space)
        # [B, D] batches of a feed-forward module with a 1-D Box observation: the env-runner hot path
        self._flat_step = isinstance(self._enc_space, gym.spaces.Box) and self._obs_rank == 1 \
            and not self._recurrent
        # [B, H, W, C] image batches (float or uint8) of a feed-forward CNN module go to the plan
        # as they are too: it reads HWC rows and converts uint8 inside the kernels
        self._image_step = self._image and not self._recurrent
        # [B, 1, D] batches of a recurrent module with a 1-D Box observation (the stepping layout)
        # go to the plan as they are too, with their state
        self._seq_step = isinstance(self._enc_space, gym.spaces.Box) and self._obs_rank == 1 \
            and bool(self._recurrent) and not self._image

    # ---- distributions & state --------------------------------------------------------------
    def get_inference_action_dist_cls(self):
        return self.action_dist_cls

    def get_exploration_action_dist_cls(self):
        return self.action_dist_cls

    def get_train_action_dist_cls(self):
        return self.action_dist_cls

    def get_initial_state(self) -> dict:
        if not self._recurrent:
            return {}
        enc = self.encoder
        if enc.shared:
            return enc.encoder.initial_state()
        state = {"actor": enc.actor_encoder.initial_state()}
        if enc.critic is not None:
            state["critic"] = enc.critic_encoder.initial_state()
        return state

    def get_non_inference_attributes(self) -> list[str]:
        return ["vf", "encoder.critic_encoder"]

    # ---- specs --------------------------------------------------------------------------------
    def _obs_spec(self, with_time: Optional[bool]):
        inner = self._enc_obs_spec(with_time)
        if self._mask_dim is None:
            return inner
        n = self._mask_dim
        pats = [("B", n), ("B", "T", n)] if with_time is None else [("B", "T", n) if with_time else ("B", n)]
        return {ACTION_MASK: TensorSpec(*pats, dtype_kind="number"), OBSERVATIONS: inner}

    def _enc_obs_spec(self, with_time: Optional[bool]) -> Optional[TensorSpec]:
        space = self._enc_space
        if self._structured:
            return None  # nested: checked leaf by leaf when flattened (models.flatten)
        shape = tuple(space.shape) if isinstance(space, gym.spaces.Box) else ()
        kind = "int" if isinstance(space, gym.spaces.Discrete) else "number"
        if with_time is None:
            return TensorSpec(("B", *shape), ("B", "T", *shape), dtype_kind=kind)
        return TensorSpec(("B", "T", *shape) if with_time else ("B", *shape), dtype_kind=kind)

    def _state_spec(self) -> dict:
        def one(s: dict) -> dict:
            return {k: TensorSpec(("B", 1, v.shape[-1]), ("B", v.shape[-1])) for k, v in s.items()}
        init = self.get_initial_state()
        if "h" in init:
            return one(init)
        return {part: one(s) for part, s in init.items()}

    def _step_specs(self) -> dict:
        if self._recurrent:
            return {Columns.OBS: self._obs_spec(None), Columns.STATE_IN: self._state_spec()}
        return {Columns.OBS: self._obs_spec(False)}

    def input_specs_inference(self):
        return self._step_specs()

    def input_specs_exploration(self):
        return self._step_specs()

    def input_specs_train(self):
        if self._mask_dim is not None:
            # obs is {"action_mask", "observations"}, or (RLlib's learner layout, after its
            # compute_values popped the mask) the observations with batch["action_mask"]
            spec = {Columns.OBS: None}
            if self._recurrent:
                spec[Columns.STATE_IN] = self._state_spec()
            return spec
        if self._recurrent:
            return {Columns.OBS: self._obs_spec(True), Columns.STATE_IN: self._state_spec()}
        return {Columns.OBS: self._obs_spec(False)}

    def output_specs_train(self):
        return [Columns.ACTION_DIST_INPUTS, Columns.VF_PREDS, Columns.EMBEDDINGS]

    # ---- the torch layers -----------------------------------------------------------------------
    def _features(self, obs, cast_images: bool = True) -> tuple[torch.Tensor, bool]:
        """Float features [B, (T,) D] (images: [B, (T,) H, W, C], not flattened; Dict / Tuple
        observations flattened as RLlib's FlattenObservations) and whether a T=1 axis was added.
        ``cast_images=False``: images keep their dtype (the fused step takes uint8 frames)."""
        if self._structured:
            n_lead = lead_dims(obs, self._enc_space)
            x = flatten(obs, self._enc_space, n_lead, self._float_dtype())
        else:
            n_lead = obs.dim() - self._obs_rank
            if self._image:  # [*lead, H, W, C] as it is: the CNN reads channel-last images
                x = obs.to(self._float_dtype()) if cast_images else obs
            else:
                x = flatten_obs(obs, self._enc_space, n_lead, self._float_dtype())
        if self._recurrent and n_lead == 1:
            return x.unsqueeze(1), True
        return x, False

    def _float_dtype(self) -> torch.dtype:
        """The dtype the layers compute in (their first floating parameter's)."""
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.get_default_dtype()

    @staticmethod
    def _state_3d(state: dict) -> dict:
        return {k: (v.unsqueeze(1) if v.dim() == 2 else v).to(torch.float32) for k, v in state.items()}

    def _encode(self, batch: dict, *, critic: bool, encoder=None) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[dict], bool]:
        """(actor latent, critic latent or None, state_out or None, T axis added); ``encoder``:
        another encoder of the same layout (e.g. APPO's target copy), default ``self.encoder``."""
        x, added_t = self._features(batch[Columns.OBS])
        enc = self.encoder if encoder is None else encoder
        if not self._recurrent:
            a = enc.actor(x)
            c = (a if enc.shared else enc.critic(x)) if critic else None
            return a, c, None, added_t
        state_in = batch[Columns.STATE_IN]
        if enc.shared:
            a, state_out = enc.encoder(x, self._state_3d(state_in))
            c = a if critic else None
        else:
            a, a_state = enc.actor_encoder(x, self._state_3d(state_in["actor"]))
            state_out = {"actor": a_state}
            c = None
            if enc.critic is not None:  # the critic state advances whenever it exists
                c_full, c_state = enc.critic_encoder(x, self._state_3d(state_in["critic"]))
                state_out["critic"] = c_state
                c = c_full if critic else None
        if added_t:
            a = a.squeeze(1)
            c = c.squeeze(1) if c is not None else None
        return a, c, state_out, added_t

    def _split_mask(self, batch: dict) -> tuple[dict, Optional[object]]:
        """(a shallow copy of batch whose obs is what the encoder reads, the action mask or None).
        The caller's batch is not modified (RLlib's example module pops from it)."""
        if self._mask_dim is None:
            return batch, None
        inner, mask = self._obs_and_mask(batch)
        out = dict(batch)
        out[Columns.OBS] = inner
        return out, mask

    def _obs_and_mask(self, batch: dict) -> tuple:
        """(the observations the encoder reads, the action mask) of a masking module's batch."""
        obs = batch[Columns.OBS]
        if type(obs) is dict:  # the env-runner layout, fast
            try:
                return obs[OBSERVATIONS], obs[ACTION_MASK]
            except KeyError:
                pass
        if isinstance(obs, dict):
            for key in (ACTION_MASK, OBSERVATIONS):
                if key not in obs:
                    raise ValueError(f"obs: missing key {key!r} (an action-masking module expects obs = "
                                     f"{{'action_mask': [B, {self._mask_dim}], 'observations': ...}}); got keys "
                                     f"{sorted(map(str, obs))}")
            mask, inner = obs[ACTION_MASK], obs[OBSERVATIONS]
        else:
            mask, inner = batch.get(ACTION_MASK), obs
            if mask is None:
                raise ValueError(f"obs: expected {{'action_mask': [B, {self._mask_dim}], 'observations': ...}} "
                                 f"(or the observations with batch['action_mask']), got a {type(obs).__name__} "
                                 "and no 'action_mask' column")
        return inner, mask

    def _mask(self, logits: torch.Tensor, mask) -> torch.Tensor:
        """RLlib's masking of the logits (differentiable); ValueError for a bad mask."""
        if mask is None:
            return logits
        return mask_logits(logits, mask, self._mask_segments)

    def _forward_train(self, batch: dict, **kwargs) -> dict:
        batch, mask = self._split_mask(batch)
        a, c, state_out, _ = self._encode(to_torch(batch), critic=True)
        out = {
            Columns.ACTION_DIST_INPUTS: self._mask(self.pi(a), mask),
            Columns.VF_PREDS: self.vf(c).squeeze(-1),
            Columns.EMBEDDINGS: c,
        }
        if state_out is not None:
            out[Columns.STATE_OUT] = state_out
        return out

    def _forward_torch(self, batch: dict, deterministic: bool) -> dict:
        """The torch layers' exploration / inference step, with the same keys as the fused one:
        ``actions`` sampled from the distribution (inference: its deterministic action) and
        ``action_logp`` under the distribution (torch's random stream)."""
        batch, mask = self._split_mask(batch)
        obs = batch[Columns.OBS]
        if isinstance(obs, torch.Tensor) and obs.is_floating_point():
            _check_finite_obs(obs)
        a, _, state_out, _ = self._encode(batch, critic=False)
        logits = self.pi(a)
        if mask is not None:
            logits = self._mask(logits, torch.as_tensor(mask).reshape(logits.shape))
        dist = self.action_dist_cls.from_logits(logits)
        actions = dist.to_deterministic().sample() if deterministic else dist.sample()
        out = {Columns.ACTION_DIST_INPUTS: logits, Columns.ACTIONS: actions, Columns.ACTION_LOGP: dist.logp(actions)}
        if state_out is not None:
            out[Columns.STATE_OUT] = state_out
        return out

    def compute_values(self, batch: dict, embeddings: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Value predictions [B] (or [B, T]) from ``embeddings`` or by running the critic encoder."""
        if self.inference_only:
            raise RuntimeError("compute_values: module was built with inference_only=True (no value head)")
        if embeddings is None:
            batch, _ = self._split_mask(batch)
            _, embeddings, _, _ = self._encode(to_torch(batch), critic=True)
        return self.vf(embeddings).squeeze(-1)

    # ---- exploration / inference: the fast path ---------------------------------------------------
    def policy_layers(self):
        """This module's layers described for a fused backend (``fastpath.PolicyLayers``);
        the layers themselves, not copies, so in-place weight updates are seen. ``ValueError``
        naming the part when a layer is not one the fused step runs (e.g. a catalog subclass
        whose ``build_pi_head`` returns its own module): the torch forward runs then."""
        from ..fastpath import EncoderLayers, PolicyLayers
        from ..fastpath.layers import conv_layers
        from ..models.cnn import TorchCNNEncoder, is_cnn_encoder
        from ..models.heads import TorchFreeLogStdMLPHead, TorchMLPHead

        fusable_heads = (TorchMLPHead, TorchFreeLogStdMLPHead)

        def conv_enc(e, what: str) -> EncoderLayers:
            """A CNN encoder (CNN -> LSTM / GRU with use_lstm / use_gru) as a conv stage: RLlib's
            TorchCNNEncoder flattens the last conv output in (H, W, C) order, no dense layer after."""
            cnn = e.tokenizer if self._recurrent else e
            what_cnn = f"{what}.tokenizer" if self._recurrent else what
            if not (isinstance(cnn, TorchCNNEncoder) and len(cnn.net) == 2 and isinstance(cnn.net[1], torch.nn.Flatten)):
                raise ValueError(f"{what_cnn}: a {type(cnn).__name__} is not a CNN encoder the fused step runs "
                                 "(PPOCatalog's TorchCNNEncoder: convs, then a flatten)")
            convs = conv_layers(cnn, what_cnn)
            # uint8 frames go into the kernels uncast; obs_scale=None keeps their values as the
            # torch path does (a float cast, no scaling)
            return EncoderLayers(mlp=[], activation=cnn.activation, conv=convs, image_shape=cnn.obs_shape,
                                 rnn=e.rnn if self._recurrent else None)

        def enc(e, what: str) -> EncoderLayers:
            if is_cnn_encoder(e):
                return conv_enc(e, what)
            try:
                if self._recurrent:
                    return EncoderLayers(mlp=e.tokenizer.net.linears, activation=e.tokenizer.activation, rnn=e.rnn,
                                         norms=e.tokenizer.net.norms)
                return EncoderLayers(mlp=e.net.linears, activation=e.activation, norms=e.net.norms)
            except AttributeError:
                raise ValueError(f"{what}: a {type(e).__name__} is not an encoder the fused step runs "
                                 "(an MLP / LSTM / GRU encoder from PPOCatalog)") from None

        def head(h, what: str) -> list:
            if not isinstance(h, fusable_heads):
                raise ValueError(f"{what}: a {type(h).__name__} head (from {type(self.catalog).__name__}."
                                 f"build_{what}_head) is not a head the fused step runs (PPOCatalog's MLP heads)")
            return h.net

        cfg = self.catalog.model_config_dict
        space = self.action_space
        if not _default_dist_cls(self.action_dist_cls, space):
            raise ValueError(f"action_dist_cls: {getattr(self.action_dist_cls, '__name__', self.action_dist_cls)!r} "
                             f"(from {type(self.catalog).__name__}) is not the distribution the fused step samples "
                             "(TorchCategorical / TorchMultiCategorical / TorchDiagGaussian for the action space)")
        if isinstance(space, gym.spaces.Discrete):
            dist, sizes = "categorical", [int(space.n)]
        elif isinstance(space, gym.spaces.MultiDiscrete):
            dist, sizes = "multi_categorical", [int(n) for n in space.nvec.ravel()]
        elif isinstance(space, (gym.spaces.Tuple, gym.spaces.Dict)):
            # all-Discrete structures: one multi-categorical step, actions regrouped afterwards
            dist, sizes = "multi_categorical", _discrete_leaf_sizes(space)
        else:
            dist, sizes = "diag_gaussian", [int(space.shape[0])]
        shared = self.encoder.shared
        critic = None if shared or self.encoder.critic is None else enc(self.encoder.critic, "encoder.critic")
        vf = None
        if not self.inference_only and isinstance(self.vf, fusable_heads):
            vf = self.vf.net  # a custom value head only costs the fused value output
        pi = head(self.pi, "pi")
        return PolicyLayers(
            actor=enc(self.encoder.actor, "encoder.actor"),
            critic=critic,
            pi=pi.linears,
            pi_norms=pi.norms,
            vf=None if vf is None else vf.linears,
            vf_norms=None if vf is None else vf.norms,
            head_activation=cfg["head_fcnet_activation"],
            dist=dist,
            action_sizes=sizes,
            log_std_clip=cfg["log_std_clip_param"] if dist == "diag_gaussian" else None,
            free_log_std=getattr(self.pi, "log_std", None),
        )

    def fast_path_info(self) -> dict:
        """{"backend": "cpp" | "triton" | "torch", "active": bool, "reason": str}: which path
        ``forward_exploration`` / ``forward_inference`` take for a batch on this module's
        device (CPU: numpy or CPU tensors), and why. ``active`` is True when the fused step runs."""
        return fast_path_info_for(self, next(self.parameters(), None))

    def refresh_fast_path(self) -> None:
        """Re-read the layers and repack the fused step's weights now. Needed only after writes
        a step cannot detect (in-place ops on ``p.data``, writes through a numpy view of a
        parameter); optimizer steps, ``set_state``, ``load_state_dict`` (also ``assign=True``),
        replaced parameters or layers and ``.to()`` are detected (see ``rlmodule_fast.fastpath``)."""
        refresh(self)  # layers refused before are tried again

    def _forward_fast_or_torch(self, batch: dict, deterministic: bool) -> dict:
        full = batch
        if self._mask_dim is None:
            obs, mask = batch[Columns.OBS], None
        else:
            obs, mask = self._obs_and_mask(batch)
        plan = fused_plan(self, first_leaf(obs, self._enc_space) if self._structured else obs)
        if plan is None:
            return self._forward_torch(to_torch(full), deterministic)
        if plan.backend == "cpp" and ((self._flat_step and obs.ndim == 2) or (self._image_step and obs.ndim == 4)):
            # The hot path: [B, D] Box observations (or [B, H, W, C] images, float or uint8) go to
            # the plan as they are (numpy or tensor).
            adi, actions, logp = plan.step_flat(obs, deterministic, mask)
            if self._action_struct:
                actions = _regroup_actions(actions, self.action_space)
            elif mask is None and not self._structured:
                lane.arm_policy(self, plan, full, PPOTorchRLModule, _LANE_EXTRA, _LANE_KEYS)
            return {Columns.ACTION_DIST_INPUTS: adi, Columns.ACTIONS: actions, Columns.ACTION_LOGP: logp}
        if plan.backend == "cpp" and self._seq_step and (obs.ndim == 2 or (obs.ndim == 3 and obs.shape[1] == 1)):
            # The recurrent hot path: obs [B, 1, D] (or [B, D]) and the state leaves ([B, 1, H] or
            # [B, H], numpy or tensors) go to the plan as they are, which converts what it must
            # exactly as the general branch below would (no torch round trip of the batch, no
            # re-flattening). Besides the Python work, this halves what runs between two steps: at
            # H=256 each step streams 2 MB of LSTM weights through L2, and every line the Python
            # code around it touches is a cache miss after that.
            with_t = obs.ndim == 3
            res = plan.step(obs[:, 0] if with_t else obs, batch[Columns.STATE_IN], deterministic=deterministic,
                            mask=mask)
            wrap = _with_t if with_t else _as_tensor  # the general branch's layout: T axis as in obs
            out = {k: wrap(res[k]) for k in (Columns.ACTION_DIST_INPUTS, Columns.ACTIONS, Columns.ACTION_LOGP)}
            out[Columns.STATE_OUT] = _map_state(res["state_out"], _with_t)
            if self._action_struct:
                out[Columns.ACTIONS] = _regroup_actions(out[Columns.ACTIONS], self.action_space)
            elif mask is None:
                # the fast lane (fastpath.lane) answers the next such call at one C++ call
                lane.arm_policy(self, plan, full, PPOTorchRLModule, _LANE_EXTRA, _LANE_KEYS)
            return out
        batch = to_torch(self._split_mask(batch)[0])
        x, added_t = self._features(batch[Columns.OBS], cast_images=False)
        if added_t:
            x = x.squeeze(1)
        elif self._recurrent:  # [B, T=1, D] stepping input
            if x.shape[1] != 1:
                return self._forward_torch(to_torch(full), deterministic)
            x = x[:, 0]
        state = None
        if self._recurrent:
            state = _map_state(batch[Columns.STATE_IN], lambda v: v.reshape(v.shape[0], v.shape[-1]))
        res = _as_tensors(plan.step(x, state, deterministic=deterministic, mask=mask))
        out = {
            Columns.ACTION_DIST_INPUTS: res["action_dist_inputs"],
            Columns.ACTIONS: res["actions"],
            Columns.ACTION_LOGP: res["action_logp"],
        }
        if self._recurrent:
            state_out = _map_state(res["state_out"], lambda v: v.unsqueeze(1))
            if not added_t:  # keep the caller's [B, 1, ...] layout
                for k in (Columns.ACTION_DIST_INPUTS, Columns.ACTIONS, Columns.ACTION_LOGP):
                    out[k] = out[k].unsqueeze(1)
            out[Columns.STATE_OUT] = state_out
        if self._action_struct:
            out[Columns.ACTIONS] = _regroup_actions(out[Columns.ACTIONS], self.action_space)
        return out

    def _forward_exploration(self, batch: dict, **kwargs) -> dict:
        return self._forward_fast_or_torch(batch, deterministic=False)

    def _forward_inference(self, batch: dict, **kwargs) -> dict:
        return self._forward_fast_or_torch(batch, deterministic=True)


lane.register(PPOTorchRLModule, _LANE_EXTRA)


def _discrete_leaf_sizes(space: gym.Space) -> list:
    """The sizes of a Tuple / Dict action space's Discrete leaves in dm-tree order (Dict keys
    sorted); ValueError ("not fused: ...") for any other leaf: the torch path samples those."""
    if isinstance(space, gym.spaces.Dict):
        return [n for k in sorted(space.spaces) for n in _discrete_leaf_sizes(space.spaces[k])]
    if isinstance(space, gym.spaces.Tuple):
        return [n for s in space.spaces for n in _discrete_leaf_sizes(s)]
    if isinstance(space, gym.spaces.Discrete) and int(space.start) == 0:
        return [int(space.n)]
    raise ValueError(f"not fused: a {type(space).__name__} leaf in a Tuple / Dict action space (the fused step "
                     "runs all-Discrete structures; TorchMultiDistribution samples this one on the torch path)")


def _regroup_actions(actions: torch.Tensor, space: gym.Space):
    """[B, n] (or [B, 1, n]) int64 columns of the fused multi-categorical step -> the action
    space's structure of [B] (or [B, 1]) tensors, as TorchMultiDistribution.sample returns."""
    cols = iter(torch.unbind(actions, -1))

    def build(sp):
        if isinstance(sp, gym.spaces.Dict):
            built = {k: build(sp.spaces[k]) for k in sorted(sp.spaces)}
            return {k: built[k] for k in sp.spaces}
        if isinstance(sp, gym.spaces.Tuple):
            return tuple(build(s) for s in sp.spaces)
        return next(cols)

    return build(space)


def _mask_segments(space: gym.Space, n: int) -> list:
    """The categorical segments an action mask of width ``n`` covers (RLlib masks the logits:
    one entry per logit); ValueError for an action space masking cannot apply to."""
    if isinstance(space, gym.spaces.Discrete):
        segs = [int(space.n)]
    elif isinstance(space, gym.spaces.MultiDiscrete):
        segs = [int(k) for k in np.ravel(space.nvec)]
    else:
        raise ValueError(f"observation_space['action_mask']: masking needs Discrete or MultiDiscrete actions, "
                         f"got action_space {space!r}")
    if sum(segs) != n:
        raise ValueError(f"observation_space['action_mask']: expected shape [{sum(segs)}] (one entry per action "
                         f"logit of {space!r}), got [{n}]")
    return segs


def _default_dist_cls(cls, space) -> bool:
    """Whether ``cls`` is the distribution class the fused step samples for ``space`` (the
    catalog default; a catalog's own class, e.g. a subclass with a temperature, is not)."""
    from .. import distributions as d

    if isinstance(space, gym.spaces.Discrete):
        return cls is d.TorchCategorical
    if isinstance(space, gym.spaces.MultiDiscrete):
        # Catalog._get_dist_cls_from_action_space: a partial class made fresh per catalog
        return (isinstance(cls, type) and cls.__bases__ == (d.TorchMultiCategorical,)
                and cls.__name__ == "TorchMultiCategoricalPartial" and cls.from_logits.__func__.__qualname__.endswith(
                    "DistributionPartial.from_logits"))
    if isinstance(space, (gym.spaces.Tuple, gym.spaces.Dict)):  # Catalog._multi_action_dist_cls's partial
        return isinstance(cls, type) and cls.__bases__ == (d.TorchMultiDistribution,)
    return cls is d.TorchDiagGaussian


def _check_finite_obs(obs: torch.Tensor) -> None:
    """ValueError naming the first row of ``obs`` with a NaN or inf (the fused step's message)."""
    if obs.numel() == 0:
        return
    # One reduction first (an isfinite pass costs ~15x a sum on an Atari batch); a sum that is not
    # finite (a NaN / inf, or finite values overflowing) goes to the exact per-row check.
    if bool(torch.isfinite(obs.sum())):
        return
    finite = torch.isfinite(obs.reshape(obs.shape[0], -1) if obs.dim() else obs.reshape(1, 1)).all(dim=-1)
    if not bool(finite.all()):
        row = int((~finite).nonzero()[0, 0])
        raise ValueError(f"obs: contains NaN or inf (row {row})")


def _map_state(state: dict, fn) -> dict:
    return {k: (_map_state(v, fn) if isinstance(v, dict) else fn(v)) for k, v in state.items()}


def _with_t(v):
    """[B, ...] -> a [B, 1, ...] tensor view (a plan's fresh numpy output: reshaped in numpy, then
    shared with torch; the same shape and strides as torch.from_numpy(v).unsqueeze(1), for less work)."""
    if isinstance(v, np.ndarray):
        return torch.from_numpy(v.reshape(v.shape[0], 1, *v.shape[1:]))
    return v.unsqueeze(1)


def _as_tensor(v):
    """A plan's fresh numpy output as a tensor sharing its memory (a tensor as it is)."""
    return torch.from_numpy(v) if isinstance(v, np.ndarray) else v


def _as_tensors(out: dict) -> dict:
    """numpy arrays (fresh, caller-owned) -> tensors sharing their memory; nested dicts too."""
    return {k: (_as_tensors(v) if isinstance(v, dict) else torch.from_numpy(v) if isinstance(v, np.ndarray) else v)
            for k, v in out.items()}

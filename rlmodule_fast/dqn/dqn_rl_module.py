"""DQNTorchRLModule: RLlib 2.60's ``DefaultDQNTorchRLModule`` (same parameter names, outputs and
model config), with ``forward_exploration`` / ``forward_inference`` fused into one backend call.

Layers (RLlib's names): ``encoder`` (MLP over the flattened observation), ``af`` (advantage head
when dueling, else the Q head; ``A * num_atoms`` outputs), ``vf`` (dueling value head, 1 output);
after ``make_target_networks()``: ``_target_encoder``, ``_target_af`` (, ``_target_vf``).

Shapes: obs [B, *obs_shape] (Discrete obs: [B] indices, one-hot encoded; [H, W, C] image Boxes:
RLlib's CNN encoder, channel-last; the fused step runs its convs too, on float32 or uint8 frames);
action-masking Dict observations {"action_mask": [B, A] of 0/1, "observations": [B, ...]}.

- ``compute_q_values(batch)`` -> {"qf_preds": [B, A]} (distributional, num_atoms N > 1: also
  "atoms" [N], "qf_logits" [B, A, N], "qf_probs" [B, A, N]), differentiable, as RLlib's.
- ``forward_train(batch)`` (obs, new_obs) -> "qf_preds", "qf_target_next_preds" [B, A], with
  ``double_q`` "qf_next_preds" [B, A], distributional also "atoms", "qf_logits", "qf_probs",
  "qf_target_next_probs": the keys RLlib's DQN learner reads. Needs ``make_target_networks()``.
- ``forward_exploration(batch, t=None)``: epsilon-greedy with RLlib's schedule (``epsilon`` in
  the model config, a number or [(timestep, value), ...] interpolated linearly, updated with ``t``
  as RLlib's env runners pass it; without ``t`` the last value is used). ``forward_inference``:
  greedy. Both return {"actions": [B] int64, "action_dist_inputs": [B, A] (the Q-values: the
  logits of ``get_exploration_action_dist_cls()``, as RLlib builds its argmax distribution from
  them), "action_logp": [B] (log_softmax(Q)[action], the logp under that distribution)}, the same
  keys on every backend.

Differences from RLlib, deliberate: RLlib draws a random action among actions whose Q-value is
not exactly 0.0 or -inf (an artefact of ``multinomial(q != 0)``); here it is uniform among all
(masked: all valid) actions. With an action mask, masked Q-values are RLlib's FLOAT_MIN in every
[B, A] output (exploration and training: the learner's argmax over next actions sees only valid
ones) and random actions are drawn among valid actions only. Recurrent encoders are refused.

Fast path (``fast_path_info()`` says which runs and why): encoder, heads, dueling combine /
distributional expectation, mask, argmax, epsilon coin and random action run in ONE backend call
(``fastpath.qnet_plan``): for CPU inputs one ``_C`` call, drawing from rlmodule_fast's own stream
(``rf.manual_seed``, ``rf.get_rng_state``); for CUDA inputs one Triton launch (``kernels/qnet.py``,
layer widths up to 256), drawing Philox numbers seeded from torch's CUDA generator (same
distribution, other numbers). Image observations: RLlib's CNN encoder is the step's conv stage
(the PPO step's: csrc/conv.h; ``[B, H, W, C]`` float32 or uint8 frames, uint8 cast in-kernel); on
Triton one ``kernels/conv.py`` launch per conv layer first, for conv stages flattening to at most
256 features (wider ones run the torch layers, as ``fast_path_info()`` says).
``RLMODULE_FAST_BACKEND=torch`` (or no usable backend under "auto") runs the torch layers; a forced
backend that cannot run the step raises RuntimeError.
"""
from __future__ import annotations

from typing import Any, Optional

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from ..apis import InferenceOnlyAPI, QNetAPI, TargetNetworkAPI, make_target_network
from ..core.columns import Columns
from ..core.specs import TensorSpec, to_torch
from ..core.torch_rl_module import TorchRLModule
from ..core.rl_module import _LANE_ATTR
from ..fastpath import lane, refresh
from ..fastpath.qnet_plan import QNetLayers, fused_qnet_plan, qnet_fast_path_info, support
from ..models.encoders import TorchMLPEncoder, flatten_obs, obs_lead_dims
from ..models.flatten import first_leaf, flatten, is_structured, lead_dims
from ..models.heads import TorchMLPHead
from ..ppo.ppo_rl_module import _check_finite_obs
from .dqn_catalog import DQNCatalog
from .schedule import EpsilonSchedule

QF_PREDS = "qf_preds"
ATOMS = "atoms"
QF_LOGITS = "qf_logits"
QF_NEXT_PREDS = "qf_next_preds"
QF_PROBS = "qf_probs"
QF_TARGET_NEXT_PREDS = "qf_target_next_preds"
QF_TARGET_NEXT_PROBS = "qf_target_next_probs"

# The fast lane (fastpath.lane): the columns of the fused step's (q, actions, logp), the methods
# besides the forwards a subclass must keep for it (the step and the observation split it reads
# the obs through), and the keyword it takes.
_LANE_KEYS = (Columns.ACTION_DIST_INPUTS, Columns.ACTIONS, Columns.ACTION_LOGP)
_LANE_EXTRA = ("_step", "_split_obs")
_T_ONLY = frozenset({"t"})

#: RLlib's FLOAT_MIN (ray.rllib.utils.torch_utils): the Q-value of a masked action.
FLOAT_MIN = -3.4e38


class DQNTorchRLModule(TorchRLModule, InferenceOnlyAPI, TargetNetworkAPI, QNetAPI):
    """DQN / Rainbow Q-network module; see the module docstring for shapes and the fast path."""

    _forward_accepts_numpy = True

    def setup(self) -> None:
        cat = self._own_catalog(DQNCatalog)
        cfg = cat.dqn_config
        self.uses_dueling: bool = cfg["dueling"]
        self.uses_double_q: bool = cfg["double_q"]
        self.num_atoms: int = cfg["num_atoms"]
        if self.num_atoms > 1:
            self.v_min: float = cfg["v_min"]
            self.v_max: float = cfg["v_max"]
        self.epsilon_schedule = EpsilonSchedule(cfg["epsilon"])
        self.encoder = cat.build_encoder("torch")
        self.af = cat.build_af_head("torch")
        if self.uses_dueling:
            self.vf = cat.build_vf_head("torch")
        self.action_dist_cls = cat.action_dist_cls
        self._mask_key = cat.mask_key
        self._enc_space = cat.encoder_observation_space
        self._obs_rank = obs_lead_dims(self._enc_space)
        self._num_actions = int(self.action_space.n)
        # [B, D] batches of a 1-D Box observation go to the fused step as they are
        self._flat_box = isinstance(self._enc_space, gym.spaces.Box) and self._obs_rank == 1
        self._image = getattr(cat, "encoder_kind", "mlp") == "cnn"  # RLlib's CNN over [H, W, C] images
        self._structured = is_structured(self._enc_space)  # Dict / Tuple: flattened as RLlib's connector

    # ---- RLlib's API mixins ---------------------------------------------------------------------
    def get_non_inference_attributes(self) -> list[str]:
        return ["_target_encoder", "_target_af"] + (["_target_vf"] if self.uses_dueling else [])

    def make_target_networks(self) -> None:
        """Frozen copies ``_target_encoder``, ``_target_af`` (, ``_target_vf``) of the main nets."""
        self._target_encoder = make_target_network(self.encoder)
        self._target_af = make_target_network(self.af)
        if self.uses_dueling:
            self._target_vf = make_target_network(self.vf)

    def get_target_network_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        self._require_targets()
        pairs = [(self.encoder, self._target_encoder), (self.af, self._target_af)]
        return pairs + ([(self.vf, self._target_vf)] if self.uses_dueling else [])

    def _require_targets(self) -> None:
        if not hasattr(self, "_target_af"):
            raise RuntimeError(f"{type(self).__name__}: no target networks; call make_target_networks() first "
                               "(RLlib's learner does; modules built with inference_only=True never have them)")

    def forward_target(self, batch: dict) -> dict:
        """``compute_q_values`` through the target networks (same keys)."""
        self._require_targets()
        head = {"af": self._target_af, "vf": self._target_vf} if self.uses_dueling else self._target_af
        return self._qf_forward_helper(to_torch(batch), self._target_encoder, head)

    def compute_q_values(self, batch: dict) -> dict:
        """{"qf_preds": [B, A]} (distributional: also "atoms", "qf_logits", "qf_probs")."""
        head = {"af": self.af, "vf": self.vf} if self.uses_dueling else self.af
        return self._qf_forward_helper(to_torch(batch), self.encoder, head)

    def compute_advantage_distribution(self, batch: torch.Tensor) -> dict:
        """RLlib's: head logits [..., A * N] -> {"atoms": z [N], "logits": [..., A, N],
        "probs": softmax over atoms}."""
        z = support(self.num_atoms, self.v_min, self.v_max, device=batch.device)
        logits = torch.reshape(batch, (*batch.shape[:-1], self._num_actions, self.num_atoms))
        return {ATOMS: z, "logits": logits, "probs": nn.functional.softmax(logits, dim=-1)}

    # ---- distributions & state ------------------------------------------------------------------
    def get_inference_action_dist_cls(self):
        return self.action_dist_cls

    def get_exploration_action_dist_cls(self):
        return self.action_dist_cls

    def get_train_action_dist_cls(self):
        return self.action_dist_cls

    def get_initial_state(self) -> dict:
        return {}

    # ---- specs ------------------------------------------------------------------------------------
    def _obs_spec(self):
        sp = self._enc_space
        shape = tuple(sp.shape) if isinstance(sp, gym.spaces.Box) else ()
        kind = "int" if isinstance(sp, gym.spaces.Discrete) else "number"
        # nested Dict / Tuple: checked leaf by leaf when flattened (models.flatten)
        inner = None if self._structured else TensorSpec(("B", *shape), dtype_kind=kind)
        if self._mask_key is None:
            return inner
        return {"observations": inner, self._mask_key: TensorSpec(("B", self._num_actions), dtype_kind="number")}

    def input_specs_inference(self):
        return {Columns.OBS: self._obs_spec()}

    def input_specs_exploration(self):
        return {Columns.OBS: self._obs_spec()}

    def input_specs_train(self):
        return {Columns.OBS: self._obs_spec(), Columns.NEXT_OBS: self._obs_spec()}

    def output_specs_inference(self):
        return [Columns.ACTIONS, Columns.ACTION_DIST_INPUTS, Columns.ACTION_LOGP]

    def output_specs_exploration(self):
        return [Columns.ACTIONS, Columns.ACTION_DIST_INPUTS, Columns.ACTION_LOGP]

    def output_specs_train(self):
        return [QF_PREDS, QF_TARGET_NEXT_PREDS] + ([QF_NEXT_PREDS] if self.uses_double_q else [])

    # ---- the torch layers -------------------------------------------------------------------------
    def _split_obs(self, obs: Any) -> tuple[Any, Any]:
        """(observations, action mask or None) of a batch's obs column."""
        if self._mask_key is None:
            return obs, None
        return obs["observations"], obs[self._mask_key]

    def _features(self, obs: torch.Tensor) -> torch.Tensor:
        """[B, *obs_shape] -> [B, D] in the layers' dtype, on their device (Discrete: one-hot)."""
        w = self.af.net.linears[0].weight
        if self._structured:
            x = flatten(obs, self._enc_space, lead_dims(obs, self._enc_space), w.dtype)
            return x if x.device == w.device else x.to(w.device)
        obs = torch.as_tensor(obs)
        if self._image:  # [B, H, W, C] as it is: the CNN reads channel-last images
            x = obs.to(w.dtype)
        else:
            x = flatten_obs(obs, self._enc_space, obs.dim() - self._obs_rank, w.dtype)
        return x if x.device == w.device else x.to(w.device)

    def _qf_forward_helper(self, batch: dict, encoder: nn.Module, head: Any) -> dict:
        """RLlib's ``_qf_forward_helper``: Q-values (and the distribution) from ``encoder`` and
        ``head`` (the Q head, or {"af", "vf"} when dueling)."""
        obs, mask = self._split_obs(batch[Columns.OBS])
        latent = encoder(self._features(obs))
        out = {}
        if self.uses_dueling:
            af_out, vf_out = head["af"](latent), head["vf"](latent)
            if self.num_atoms > 1:
                dist = self.compute_advantage_distribution(af_out)
                centered = dist["logits"] - dist["logits"].mean(dim=-1, keepdim=True)
                qf_logits = centered + vf_out.view(-1, *((1,) * (centered.dim() - 1)))
                qf_probs = nn.functional.softmax(qf_logits, dim=-1)
                out[ATOMS] = dist[ATOMS]
                out[QF_PREDS] = torch.sum(dist[ATOMS] * qf_probs, dim=-1)
                out[QF_LOGITS] = qf_logits
                out[QF_PROBS] = qf_probs
            else:
                mean = torch.nan_to_num(af_out, neginf=torch.nan).nanmean(dim=-1, keepdim=True)
                out[QF_PREDS] = (af_out - mean) + vf_out
        else:
            q_out = head(latent)
            if self.num_atoms > 1:
                dist = self.compute_advantage_distribution(q_out)
                out[ATOMS] = dist[ATOMS]
                out[QF_PREDS] = torch.sum(dist[ATOMS] * dist["probs"], dim=-1)
                out[QF_LOGITS] = dist["logits"]
                out[QF_PROBS] = dist["probs"]
            else:
                out[QF_PREDS] = q_out
        if mask is not None:
            valid = _check_mask(mask, self._num_actions).to(out[QF_PREDS].device)
            out[QF_PREDS] = torch.where(valid, out[QF_PREDS], torch.full_like(out[QF_PREDS], FLOAT_MIN))
        return out

    def _forward_train(self, batch: dict, **kwargs) -> dict:
        if self.inference_only:
            raise RuntimeError("Trying to train a module that is not a learner module. Set the flag "
                               "`inference_only=False` when building the module.")
        batch = to_torch(batch)
        obs, next_obs = batch[Columns.OBS], batch[Columns.NEXT_OBS]
        out = {}
        if self.uses_double_q:
            cat = _cat(obs, next_obs)
            qf_outs = self.compute_q_values({Columns.OBS: cat})
            out[QF_PREDS], out[QF_NEXT_PREDS] = torch.chunk(qf_outs[QF_PREDS], chunks=2, dim=0)
        else:
            qf_outs = self.compute_q_values({Columns.OBS: obs})
            out[QF_PREDS] = qf_outs[QF_PREDS]
        target = self.forward_target({Columns.OBS: next_obs})
        out[QF_TARGET_NEXT_PREDS] = target[QF_PREDS]
        if self.num_atoms > 1:
            out[ATOMS] = target[ATOMS]
            out[QF_LOGITS] = qf_outs[QF_LOGITS]
            out[QF_PROBS] = qf_outs[QF_PROBS]
            out[QF_TARGET_NEXT_PROBS] = target[QF_PROBS]
        return out

    def _explore_torch(self, batch: dict, epsilon: float, deterministic: bool) -> dict:
        """The torch layers' step (same keys and semantics as the fused one; torch's RNG)."""
        batch = to_torch(batch)
        obs, mask = self._split_obs(batch[Columns.OBS])
        if self._structured:
            _check_finite_obs(self._features(obs))
        elif obs.is_floating_point():
            _check_finite_obs(obs)
        q = self.compute_q_values(batch)[QF_PREDS]
        finite = torch.isfinite(q).all(dim=-1)
        if q.numel() and not bool(finite.all()):
            raise ValueError(f"qf_preds: contains NaN or inf (row {int((~finite).nonzero()[0, 0])})")
        actions = q.argmax(dim=-1)
        if not deterministic and epsilon > 0.0 and q.shape[0]:
            valid = torch.ones_like(q) if mask is None else (torch.as_tensor(mask).to(q.device) != 0).to(q.dtype)
            random_actions = torch.multinomial(valid, 1).squeeze(1)
            actions = torch.where(torch.rand(q.shape[0], device=q.device) < epsilon, random_actions, actions)
        logp = torch.log_softmax(q, dim=-1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        return {Columns.ACTIONS: actions, Columns.ACTION_DIST_INPUTS: q, Columns.ACTION_LOGP: logp}

    # ---- exploration / inference: the fast path ----------------------------------------------------
    def qnet_layers(self) -> QNetLayers:
        """The Q-network described for the fused step (the layers themselves: in-place weight
        updates are seen). RLlib's CNN encoder ([H, W, C] image observations) is the step's conv
        stage (its convs, then the (H, W, C) flatten the heads read; no encoder MLP). ValueError
        when a layer is not one the fused step runs (a catalog subclass's own encoder or heads):
        the torch layers run then."""
        from ..fastpath.layers import conv_layers
        from ..models.cnn import TorchCNNEncoder, is_cnn_encoder

        cfg = self.catalog.model_config_dict
        enc = self.encoder
        image = {}
        if is_cnn_encoder(enc):
            if not (isinstance(enc, TorchCNNEncoder) and len(enc.net) == 2 and isinstance(enc.net[1], nn.Flatten)):
                raise ValueError(f"encoder: a {type(enc).__name__} is not a CNN encoder the fused step runs "
                                 "(DQNCatalog's TorchCNNEncoder: convs, then a flatten)")
            # uint8 frames go into the kernels uncast; obs_scale=None keeps their values as the
            # torch layers do (a float cast, no scaling)
            image = dict(conv=conv_layers(enc, "encoder"), image_shape=enc.obs_shape)
        elif not isinstance(enc, TorchMLPEncoder):
            raise ValueError(f"encoder: a {type(enc).__name__} is not an encoder the fused step runs "
                             "(DQNCatalog's MLP or CNN encoder)")
        for name in ("af", "vf") if self.uses_dueling else ("af",):
            h = getattr(self, name)
            if type(h) is not TorchMLPHead or h.clip_log_std:
                raise ValueError(f"{name}: a {type(h).__name__} head is not a head the fused step runs "
                                 "(DQNCatalog's MLP heads)")
        return QNetLayers(
            encoder=[] if image else enc.net.linears, enc_activation=enc.activation,
            af=self.af.net.linears,
            vf=self.vf.net.linears if self.uses_dueling and self.num_atoms == 1 else None,
            head_activation=cfg["head_fcnet_activation"], num_actions=self._num_actions,
            num_atoms=self.num_atoms, v_min=getattr(self, "v_min", -10.0), v_max=getattr(self, "v_max", 10.0),
            enc_norms=None if image else enc.net.norms, af_norms=self.af.net.norms,
            vf_norms=self.vf.net.norms if self.uses_dueling and self.num_atoms == 1 else None, **image)

    def _example(self):
        return next(self.parameters(), None)

    # ---- export ------------------------------------------------------------------------------------
    def export_onnx(self, path, *, explore: bool = False, batch="dynamic", **kwargs) -> str:
        """The greedy step as ONNX (``rlmodule_fast.export``): inputs "obs" (masked: "obs.action_mask",
        "obs.observations"), outputs "actions" (argmax Q), "action_logp", "action_dist_inputs" (Q).
        ``explore=True`` is refused: epsilon-greedy with RLlib's schedule is not a distribution
        the exporter samples (it would draw from softmax(Q) instead)."""
        self._check_export(explore, kwargs)
        return super().export_onnx(path, explore=False, batch=batch, with_value=False, **kwargs)

    def export_program(self, *, explore: bool = False, batch="dynamic", **kwargs):
        """The greedy step as a ``torch.export.ExportedProgram`` (see ``export_onnx``)."""
        self._check_export(explore, kwargs)
        return super().export_program(explore=False, batch=batch, with_value=False, **kwargs)

    @staticmethod
    def _check_export(explore: bool, kwargs: dict) -> None:
        if kwargs.pop("with_value", None):  # the dueling "vf" is a value stream, not a value function
            raise ValueError("with_value=True: a DQN module has no value function to export (its dueling 'vf' "
                             "is the value stream inside Q)")
        if explore:
            raise ValueError("explore=True: a DQN module's exploration is epsilon-greedy on RLlib's schedule, which "
                             "the exported graph does not run; export explore=False (greedy) and draw the epsilon "
                             "coin outside, or use forward_exploration")
        from ..export.policy import _FORWARDS, register_forward

        if DQNTorchRLModule not in _FORWARDS:
            register_forward(DQNTorchRLModule)(_export_forward)

    def fast_path_info(self) -> dict:
        """{"backend": "cpp" | "torch", "active": bool, "reason": str}: which path
        ``forward_exploration`` / ``forward_inference`` take for inputs on this module's device."""
        return qnet_fast_path_info(self, self._example())

    def refresh_fast_path(self) -> None:
        """Re-read the layers and repack the fused step's weights now (after writes a step cannot
        detect: in-place ops on ``p.data``, writes through a numpy view of a parameter)."""
        refresh(self)

    def _step(self, batch: dict, epsilon: float, deterministic: bool) -> dict:
        obs, mask = self._split_obs(batch[Columns.OBS])
        plan = fused_qnet_plan(self, first_leaf(obs, self._enc_space) if self._structured else obs)
        if plan is None:
            with torch.no_grad():
                return self._explore_torch(batch, epsilon, deterministic)
        if self._image:
            pass  # [B, H, W, C] images (float or uint8, numpy or tensor) as they are: the plan reads HWC rows
        elif not (self._flat_box and getattr(obs, "ndim", 0) == 2):
            obs = self._features(obs)  # Discrete (one-hot), multi-dim Box, Dict / Tuple (flattened)
        q, actions, logp = plan.step(obs, mask, epsilon, deterministic)
        if mask is None and self._flat_box and plan.backend == "cpp":
            lane.arm_qnet(self, plan, batch, DQNTorchRLModule, _LANE_EXTRA, _LANE_KEYS)
        return {Columns.ACTION_DIST_INPUTS: q, Columns.ACTIONS: actions, Columns.ACTION_LOGP: logp}

    def forward_exploration(self, batch: Any, **kwargs) -> dict:
        """``RLModule.forward_exploration``; ``t`` (keyword): the env steps sampled so far, which
        set epsilon on the schedule (None: keep the current epsilon)."""
        fast = self.__dict__.get(_LANE_ATTR)  # fastpath.lane: the step at one C++ call
        t = kwargs.get("t")
        if fast is not None and kwargs.keys() <= _T_ONLY and (t is None or type(t) is int):
            # epsilon moves as on the Python path: only for a batch its spec check passes (the
            # batches a lane takes), before the step (which may still raise: NaN obs)
            sched = self.epsilon_schedule
            eps = sched.peek(t)
            try:
                out = fast(batch, False, eps)
            except BaseException:
                sched.update(t)
                raise
            if out is not None:
                sched.update(t)
                return out
        return self._run("exploration", batch, kwargs)

    def _forward_exploration(self, batch: dict, t: Optional[int] = None, **kwargs) -> dict:
        return self._step(batch, self.epsilon_schedule.update(t), deterministic=False)

    def _forward_inference(self, batch: dict, **kwargs) -> dict:
        return self._step(batch, 0.0, deterministic=True)


lane.register(DQNTorchRLModule, _LANE_EXTRA)


def _export_forward(module: "DQNTorchRLModule", batch: dict, with_value: bool) -> dict:
    """``rlmodule_fast.export``'s forward for DQN modules: the Q-values (masked as the module
    masks them) as the categorical inputs whose argmax is the greedy action."""
    return {Columns.ACTION_DIST_INPUTS: module.compute_q_values(batch)[QF_PREDS]}


def _cat(a: Any, b: Any) -> Any:
    """torch.cat([a, b]) over the leaves of (nested) dict / tuple observations (RLlib: tree.map)."""
    if isinstance(a, dict):
        return {k: _cat(a[k], b[k]) for k in a}
    if isinstance(a, (tuple, list)):
        return type(a)(_cat(x, y) for x, y in zip(a, b))
    return torch.cat([torch.as_tensor(a), torch.as_tensor(b)], 0)


def _check_mask(mask: Any, n: int) -> torch.Tensor:
    """The mask as a bool tensor [B, A] (True = valid); ValueError for values other than 0 / 1
    or a row with every action masked (the fused step's messages)."""
    m = torch.as_tensor(mask)
    if m.dim() != 2 or m.shape[1] != n:
        raise ValueError(f"action_mask: expected shape [B, {n}], got {tuple(m.shape)}")
    if torch.compiler.is_compiling():  # data-dependent checks: not while torch.export traces (rf.export)
        return m != 0
    bad = (m != 0) & (m != 1)
    if bool(bad.any()):
        r, a = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"action_mask: expected 0 or 1, got {float(m[r, a])} (row {r}, action {a})")
    valid = m != 0
    empty = ~valid.any(dim=-1)
    if bool(empty.any()):
        raise ValueError(f"action_mask: every action is masked (row {int(empty.nonzero()[0, 0])})")
    return valid

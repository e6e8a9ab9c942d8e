"""The policy step on the triton backend: ``TritonPolicyPlan`` runs encoder, heads and sampling
in one kernel launch where the widths allow (see the class docstring for the launch modes). Built
through ``fastpath.PolicyPlan`` (backend "triton"); uses the op adapters of ``ops.triton`` for
the pieces (fused MLP, argument checks) and the kernels in ``kernels/``.

Shape legend: B batch, I actor-input features, H rnn hidden, NL logits, A action columns.
"""
from __future__ import annotations

import threading
from typing import Optional

import torch

from ..ops import triton as tri
from ..ops.reference import canonical_activation
from .layers import _params, conv_geometry, has_norms, validate


def pack_conv_stage(geo: list, device) -> list:
    """Per conv layer of ``geo`` (``conv_geometry``'s list) the (filters [K, N] float32,
    bias [N] float32 or None) ``kernels.conv.conv2d_nhwc`` reads, on ``device``."""
    from ..kernels import conv as ck

    return [(ck.pack_filters(c.weight).to(device), None if c.bias is None else c.bias.detach().float().contiguous())
            for c, *_ in geo]


def conv_stage(x: torch.Tensor, enc, geo: list, packed: list) -> torch.Tensor:
    """An encoder's conv stage on the triton backend (the policy step's and the DQN step's): obs
    rows x [B, H*W*C] (float or uint8, HWC) through ``geo``'s layers (``conv_geometry`` of
    ``enc``: an ``EncoderLayers`` or ``QNetLayers``), one ``kernels.conv`` launch per layer
    (uint8 cast and ``enc.obs_scale`` in the first); the last writes the flattened features
    [B, F] float32 in ``enc.conv_flatten`` order. x itself when ``geo`` is empty."""
    from ..kernels import conv as ck

    if not geo:
        return x
    H, W, C = enc.image_shape
    y = x.reshape(x.shape[0], H, W, C)
    if y.dtype not in (torch.uint8, torch.float32):
        y = y.float()
    scale = enc.obs_scale
    for i, ((conv, stride, pad, act, _, _), (wk, b)) in enumerate(zip(geo, packed)):
        last = i == len(geo) - 1
        y = ck.conv2d_nhwc(y, wk, b, conv.kernel_size[0], conv.kernel_size[1], stride, pad, ck.ACT_CODES[act],
                           tri._precision, scale if i == 0 else None, chw=last and enc.conv_flatten == "chw")
    return y.reshape(y.shape[0], -1)


class TritonPolicyPlan:
    """The whole policy step on the triton backend, built from a ``fastpath.PolicyLayers``
    description (read duck-typed: ``actor``/``critic`` = EncoderLayers(mlp, activation, rnn),
    ``pi``, ``vf``, ``head_activation``, ``dist``, ``action_sizes``, ``log_std_clip``,
    ``free_log_std``). It holds the layers themselves, packs their weights once and repacks
    when any parameter's storage or version changes (optimizer step, ``set_state``).

    ``step(obs [B, I], state=None, *, deterministic=False, compute_value=False, mask=None)`` returns
    {"action_dist_inputs" [B, NL | 2A] f32, "actions" ([B] int64 | [B, NSEG] int64 | [B, A] f32),
    "action_logp" [B] f32[, "vf_preds" [B] f32][, "state_out"]}; fresh tensors every call.

    Launches (``self.mode``): "fused" -- MLP encoders with every width padding to <= 256: encoder,
    pi head, sampling and value head in ONE kernel; "recurrent" -- tokenizer MLP(s) and
    LSTM/GRU step kernel(s), then the same one-kernel heads over h'; "sequence" -- wider
    nets: one kernel per MLP and one per sampler.
    """

    def __init__(self, layers, device=None):
        from ..kernels import mlp, policy_step

        self.layers = layers
        described = validate(layers)  # the checks every backend shares (dims, sizes, heads)
        self.dist = layers.dist
        self.action_sizes = described["action_sizes"]
        self.actor, self.critic = layers.actor, layers.critic
        self.shared = layers.critic is None
        self.recurrent = layers.actor.rnn is not None
        self.rnn_kind = None
        if self.recurrent:
            self.rnn_kind = "lstm" if isinstance(layers.actor.rnn, torch.nn.LSTM) else "gru"
        self.pi = list(layers.pi)
        self.vf = list(layers.vf) if layers.vf else None
        self.pi_norms = list(layers.pi_norms) if has_norms(getattr(layers, "pi_norms", None)) else None
        self.vf_norms = list(layers.vf_norms) if has_norms(getattr(layers, "vf_norms", None)) else None
        self.enc_act = canonical_activation(layers.actor.activation, what="actor.activation")
        self.crit_act = self.enc_act if self.shared else canonical_activation(
            layers.critic.activation, what="critic.activation")
        if not self.shared and (layers.critic.rnn is None) != (layers.actor.rnn is None):
            raise ValueError("critic.rnn: the triton plan needs the critic to be recurrent exactly when "
                             "the actor is (as PPO's separate encoders are)")
        for e, who in [(layers.actor, "actor")] + ([] if self.shared else [(layers.critic, "critic")]):
            r = e.rnn
            if r is not None and (not isinstance(r, (torch.nn.LSTM, torch.nn.GRU)) or r.num_layers != 1
                                  or r.bidirectional or getattr(r, "proj_size", 0)
                                  or type(r) is not type(layers.actor.rnn)):
                raise ValueError(f"{who}.rnn: expected a 1-layer unidirectional nn.LSTM / nn.GRU "
                                 f"(the same kind for actor and critic), got {r!r}")
        self.head_act = described["head_act"]
        self.obs_dim = described["obs_dim"]
        self.u8_ok = described["u8_ok"]
        # conv stages (kernels/conv.py launches before the fused kernel): per encoder the layer
        # geometry and the width of the features its mlp / heads read
        self._geo = {"actor": conv_geometry(layers.actor, "actor"),
                     "critic": [] if self.shared else conv_geometry(layers.critic, "critic")}
        self._image = tuple(layers.actor.image_shape) if self._geo["actor"] else None
        self.free_log_std = layers.free_log_std
        self.log_std_clip = layers.log_std_clip
        params = self._param_list = _params(layers)
        if not params:
            raise ValueError("layers: no parameters")
        self.device = params[0].device if device is None else torch.device(device)
        tri._check_input_device(params[0], "policy parameters")
        self.gaussian = self.dist in ("diag_gaussian", "squashed_gaussian")
        if self.gaussian:
            self.A = self.action_sizes[0]
            self.NL = self.A
        else:
            self.NL = sum(self.action_sizes)
            self.A = 1 if self.dist == "categorical" else len(self.action_sizes)
        self.seg = torch.tensor([0] + list(torch.tensor(self.action_sizes).cumsum(0).tolist()),
                                dtype=torch.int32, device=self.device)
        self._build_table(mlp, policy_step)
        self._stamp = None
        self._packed = None
        self._lstm_bias = {}
        self._lock = threading.Lock()

    # -- layout --------------------------------------------------------------------------
    def _build_table(self, mlp, policy_step) -> None:
        """The packed layer list (weights, biases, layer norms) and the kernel's constexpr layer table."""
        ws, bs, ns = [], [], []

        def add(lins, norms=None):
            norms = list(norms) if has_norms(norms) else [None] * len(lins)
            for lin, ln in zip(lins, norms):
                ws.append(lin.weight)
                bs.append(lin.bias)
                ns.append(ln)

        pi_norms = self.pi_norms or [None] * len(self.pi)
        enc = [] if self.recurrent else list(self.actor.mlp)
        add(enc, None if self.recurrent else getattr(self.actor, "norms", None))
        pi0 = len(ws)
        add(self.pi[:-1], pi_norms[:-1])
        last = self.pi[-1]
        pi_out = len(ws)
        pi_ls = pi_out
        # A norm over the whole last pi layer cannot run on its two halves (means, log-stds):
        # that layout takes the per-layer path (RLlib's heads never norm their output layer).
        split_norm = False
        if self.gaussian and self.free_log_std is None:
            A = self.A
            ws += [last.weight[:A], last.weight[A:]]
            bs += [None if last.bias is None else last.bias[:A], None if last.bias is None else last.bias[A:]]
            ns += [None, None]
            split_norm = pi_norms[-1] is not None
            pi_ls = pi_out + 1
        else:
            add([last], [pi_norms[-1]])
        c0 = len(ws)
        crit = [] if (self.shared or self.recurrent) else list(self.critic.mlp)
        add(crit, None if (self.shared or self.recurrent) else getattr(self.critic, "norms", None))
        v0 = len(ws)
        if self.vf:
            add(self.vf, self.vf_norms)
        self._ws, self._bs, self._ns = ws, bs, ns
        rnn_h = self.actor.rnn.hidden_size if self.recurrent else None
        in_actor = rnn_h if self.recurrent else self._obs_dim()
        widths = [in_actor] + [w.shape[0] for w in ws] + [w.shape[1] for w in ws]
        if not self.shared:
            widths.append(self.critic.rnn.hidden_size if self.recurrent else self._critic_in())
        plan = mlp.fused_tile_plan(widths)
        out_cols = self.A if self.gaussian else self.NL
        if plan is not None and out_cols <= plan[0] and not split_norm:
            self.mode = "recurrent" if self.recurrent else "fused"
            self.D, self.kernel_kind = plan
            self.dims = policy_step.layer_dims(ws, self.device)
        else:
            self.mode = "sequence"
            self.D, self.kernel_kind, self.dims = None, None, None
        self.meta = dict(
            N_ENC=len(enc), PI0=pi0, N_PI_HID=len(self.pi) - 1, PI_OUT=pi_out, PI_LS=pi_ls,
            C0=c0, N_CRIT=len(crit), V0=v0, N_VF_HID=len(self.vf) - 1 if self.vf else 0,
            VF_OUT=v0 + len(self.vf) - 1 if self.vf else 0,
            ENC_ACT=mlp.ACT_CODES[self.enc_act], CRIT_ACT=mlp.ACT_CODES[self.crit_act], HEAD_ACT=mlp.ACT_CODES[self.head_act],
            DIST=policy_step.DIST_CODES[self.dist], NSEG=len(self.action_sizes),
            FREE_LOG_STD=self.free_log_std is not None,
            CLIP=self.dist == "diag_gaussian" and self.log_std_clip is not None,
            SHARED=self.shared, D=self.D, NL=self.NL, A=self.A,
            log_std_clip=float(self.log_std_clip or 0.0), PRECISION=tri._precision,
            NORM_MASK=sum(1 << i for i, n in enumerate(ns) if n is not None),
        )

    def _obs_dim(self) -> int:
        """Width of the rows the actor's mlp (or rnn / heads) reads: the conv features with a conv
        stage, else the observation."""
        if self.actor.mlp:
            return self.actor.mlp[0].in_features
        if self.actor.rnn is not None:
            return self.actor.rnn.input_size
        return self.pi[0].in_features

    def _critic_in(self) -> int:
        """Width of the rows a separate critic's mlp reads (its conv features, or the observation)."""
        if self.critic.mlp:
            return self.critic.mlp[0].in_features
        g = self._geo["critic"]
        return g[-1][5][0] * g[-1][5][1] * g[-1][5][2] if g else self.obs_dim

    def _conv_stage(self, which: str, x: torch.Tensor) -> torch.Tensor:
        """An encoder's conv layers over obs rows x [B, H*W*C] (float or uint8) (``conv_stage``)."""
        enc = self.actor if which == "actor" else self.critic
        return conv_stage(x, enc, self._geo[which], self._conv_packed[which])

    def _refresh(self) -> None:
        from ..kernels import mlp

        stamp = tuple((p.data_ptr(), p._version) for p in self._param_list)
        if stamp == self._stamp:
            return
        with self._lock:  # steps from several threads: one repack, never a half-written buffer
            if stamp == self._stamp:
                return
            packed = None
            if self.mode != "sequence":
                packed = mlp.pack_mlp(self._ws, self._bs, self.D, device=self.device)
                ln = mlp.pack_norms(self._ns, self.D, self.device)[0] if self.meta["NORM_MASK"] else None
                packed = (*packed, ln)
            self._packed = packed
            self._conv_packed = {k: pack_conv_stage(g, self.device) for k, g in self._geo.items()}
            self._lstm_bias = {}
            self._stamp = stamp

    # -- pieces --------------------------------------------------------------------------
    @staticmethod
    def _mlp(x, lins, act, norms=None, out_act=None):
        """x [B, I] through ``lins`` (every layer ``act``, the last ``out_act`` when given), with
        the layer norms of ``norms``: one fused kernel without norms, else one linear kernel and
        one norm+activation kernel per normed layer."""
        if not lins:
            return x
        out_act = act if out_act is None else out_act
        if not has_norms(norms):
            return tri.fused_mlp(x, [l.weight for l in lins], [l.bias for l in lins], act, out_act)
        from ..kernels import mlp

        h = x
        for i, (lin, ln) in enumerate(zip(lins, norms)):
            code = mlp.ACT_CODES[canonical_activation(out_act if i == len(lins) - 1 else act)]
            w, b = lin.weight.detach(), None if lin.bias is None else lin.bias.detach()
            if ln is None:
                h = mlp.linear_act(h, w, b, code, tri._precision, out_dtype=torch.float32)
            else:
                z = mlp.linear_act(h, w, b, mlp.ACT_CODES["linear"], tri._precision, out_dtype=torch.float32)
                h = mlp.layernorm_act(z, ln, code, out_dtype=torch.float32)
        return h

    def _rnn(self, which: str, enc, x, st: Optional[dict]):
        from ..kernels import rnn as rk

        rnn = enc.rnn
        B, H = x.shape[0], rnn.hidden_size
        tokens = self._mlp(x, list(enc.mlp), canonical_activation(enc.activation), getattr(enc, "norms", None))
        who = "state" if self.shared else f"state[{which!r}]"

        def get(key):
            if st is None:
                return torch.zeros(B, H, device=x.device)
            if not isinstance(st, dict) or key not in st:
                raise ValueError(f"{who}: missing key {key!r}")
            v = tri._to_tensor(st[key], f"{who}[{key!r}]")
            if v.numel() != B * H or v.shape[0] != B:
                raise tri._shape_err(f"{who}[{key!r}]", f"[{B}, {H}] or [{B}, 1, {H}]", v.shape)
            tri._check_device(v, f"{who}[{key!r}]", x.device)
            return v.reshape(B, H)

        h = get("h")
        if self.rnn_kind == "lstm":
            c = get("c")
            b = self._lstm_bias.get(which)
            if b is None:
                b = (rnn.bias_ih_l0 + rnn.bias_hh_l0).detach() if rnn.bias else None
                self._lstm_bias[which] = b
            h2, c2 = rk.lstm_step(tokens, h, c, rnn.weight_ih_l0, rnn.weight_hh_l0, b, tri._precision)
            return h2, {"h": h2, "c": c2}
        h2 = rk.gru_step(tokens, h, rnn.weight_ih_l0, rnn.weight_hh_l0,
                         getattr(rnn, "bias_ih_l0", None), getattr(rnn, "bias_hh_l0", None), tri._precision)
        return h2, {"h": h2}

    def _sequence_heads(self, lat, lat_c, deterministic, compute_value, seed=None, flag=None, mask=None):
        """The heads as separate kernels. ``seed``/``flag``: the graph-mode Philox state (advanced
        on the device after each sampler) and error flag; None = eager (fresh per call). ``mask``:
        float32 [B, NL] action mask (categorical kinds) or None."""
        from ..kernels import sampling

        def adv():
            if seed is not None and not deterministic and lat.shape[0]:
                sampling.advance_rng(seed)

        kw = dict(seed=seed, flag=flag)
        out = {}
        pi_out = self._mlp(lat, self.pi, self.head_act, self.pi_norms, "linear")
        if self.dist == "diag_gaussian":
            if self.free_log_std is not None:
                pi_out = torch.cat([pi_out, self.free_log_std.detach().to(pi_out.dtype).expand_as(pi_out)], -1)
            if self.log_std_clip is not None:
                c = float(self.log_std_clip)
                pi_out = torch.cat([pi_out[:, :self.A], pi_out[:, self.A:].clamp(-c, c)], -1)
            actions, logp, flag = sampling.sample_diag_gaussian(pi_out, deterministic, **kw)
            adv()
        elif self.dist == "squashed_gaussian":
            actions, logp, flag = self._squashed_sequence(pi_out, deterministic, kw)
            adv()
        elif self.dist == "categorical":
            actions, logp, flag = sampling.sample_categorical(pi_out, deterministic, mask=mask, **kw)
            adv()
        else:
            acts, logp = [], 0.0
            if flag is None:
                flag = torch.zeros(1, dtype=torch.int32, device=lat.device)
            lo = 0
            for n in self.action_sizes:
                a, lp, _f = sampling.sample_categorical(pi_out[:, lo:lo + n], deterministic, seed=seed, flag=flag,
                                                        mask=None if mask is None else mask[:, lo:lo + n])
                adv()
                acts.append(a)
                logp = logp + lp
                lo += n
            actions = torch.stack(acts, -1)
        if mask is not None:  # RLlib's FLOAT_MIN logits in the output (the samplers, which checked
            # every logit for NaN/inf first, excluded them)
            pi_out = torch.where(mask != 0, pi_out, torch.full_like(pi_out, sampling.FLOAT_MIN))
        out["action_dist_inputs"], out["actions"], out["action_logp"] = pi_out, actions, logp
        if compute_value:
            out["vf_preds"] = self._mlp(lat_c, self.vf, self.head_act, self.vf_norms, "linear")[:, 0]
        return out, flag

    def _squashed_sequence(self, pi_out, deterministic: bool, kw: dict):
        """Sequence mode's squashed Gaussian: the Gaussian sampler kernel on the clamped inputs
        draws u (the same Philox offsets as the fused kernel), then tanh and the Jacobian as
        torch ops on the device. A non-finite input sets the flag before the clamp hides it."""
        from ..kernels import sampling
        from ..ops.reference import SQUASHED_LOG_STD_RANGE, tanh_log_det

        A = self.A
        flag = kw.get("flag")
        if flag is None:
            flag = torch.zeros(1, dtype=torch.int32, device=pi_out.device)
        flag |= (~torch.isfinite(pi_out)).any().to(torch.int32) * sampling.ERR_GAUSSIAN
        clamped = torch.cat([pi_out[:, :A], pi_out[:, A:].clamp(*SQUASHED_LOG_STD_RANGE)], -1)
        u, logp, flag = sampling.sample_diag_gaussian(clamped, deterministic, seed=kw.get("seed"), flag=flag)
        return torch.tanh(u), logp - tanh_log_det(u).sum(-1), flag

    # -- the step ------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, obs, state: Optional[dict] = None, *, deterministic: bool = False,
             compute_value: bool = False, check: bool = True, mask=None) -> dict:
        """One policy step (see the class docstring). obs [B, I] float (tensor or numpy).
        ``mask``: None or RLlib's action mask [B, NL] (categorical kinds; see ``fastpath.PolicyPlan``).

        ``check=False`` (graph mode, CUDA-graph capturable): no host sync -- NaN/inf distribution
        inputs set a bit of ``ops.triton.error_flag(device)`` (``ops.triton.raise_if_error``
        raises the ValueError later) and sampling draws from ``ops.triton.rng_state(device)``,
        whose counter is advanced on the device after each launch."""
        from ..kernels import policy_step, sampling

        is_numpy = not isinstance(obs, torch.Tensor)
        x = tri._to_tensor(obs, "obs")
        if self._image is not None and x.dim() == 4 and tuple(x.shape[1:]) == self._image:
            x = x.reshape(x.shape[0], self.obs_dim)  # [B, H, W, C] images: rows in HWC order
        if x.dim() != 2 or x.shape[1] != self.obs_dim:
            raise tri._shape_err("obs", f"[B, {self.obs_dim}]", x.shape)
        tri._check_device(x, "obs", self.device)
        if x.dtype == torch.uint8 and not self.u8_ok:
            raise ValueError("obs: uint8 observations need conv encoders (every encoder reading obs has a conv stage)")
        if compute_value and not self.vf:
            raise ValueError("compute_value: this policy has no value head (vf is None)")
        m = None
        if mask is not None:
            if self.gaussian:
                raise ValueError("action_mask: masking needs categorical actions, this plan samples a Gaussian")
            m = tri.mask_tensor(mask, x.shape[0], self.NL, self.device).contiguous()
        self._refresh()
        gseed, gflag = tri._graph_args(self.device, check)
        state_out = None
        x_obs = x
        if self._geo["actor"]:
            x = self._conv_stage("actor", x_obs)
        x_actor, x_critic = x, None
        if self.recurrent:
            st_a = state if (state is None or self.shared) else state.get("actor")
            x_actor, so_a = self._rnn("actor", self.actor, x, st_a)
            if self.shared:
                state_out = so_a
            else:
                st_c = None if state is None else state.get("critic")
                x_c = self._conv_stage("critic", x_obs) if self._geo["critic"] else x_obs
                x_critic, so_c = self._rnn("critic", self.critic, x_c, st_c)
                state_out = {"actor": so_a, "critic": so_c}
        elif not self.shared:
            x_critic = self._conv_stage("critic", x_obs) if self._geo["critic"] else x_obs
        if self.mode == "sequence":
            lat = self._mlp(x_actor, [] if self.recurrent else list(self.actor.mlp), self.enc_act,
                            None if self.recurrent else getattr(self.actor, "norms", None))
            lat_c = lat
            if compute_value and not self.shared:
                lat_c = x_critic if self.recurrent else self._mlp(x_critic, list(self.critic.mlp), self.crit_act,
                                                                  getattr(self.critic, "norms", None))
            out, flag = self._sequence_heads(lat, lat_c, deterministic, compute_value, gseed, gflag, m)
        else:
            wp, bp, ln = self._packed
            seed = gseed
            if seed is None and not deterministic:
                seed = sampling.draw_seed(x.device)
            dist, actions, logp, value, flag = policy_step.policy_step(
                x_actor, x_critic, wp, bp, self.dims, self.meta, seed=seed if seed is not None else self.seg,
                log_std=None if self.free_log_std is None else self.free_log_std.detach(),
                seg=self.seg, deterministic=deterministic, compute_value=compute_value, flag=gflag, ln=ln,
                mask=m)
            if gseed is not None and not deterministic and x.shape[0]:
                sampling.advance_rng(gseed)
            out = {"action_dist_inputs": dist, "actions": actions, "action_logp": logp}
            if compute_value:
                out["vf_preds"] = value
        if check:
            bits = int(flag.item())
            if bits & ~sampling.ERR_MASK:
                raise ValueError("action_dist_inputs: the policy produced NaN or inf")
            if bits:
                tri.raise_mask_error(m, self.action_sizes if self.dist == "multi_categorical" else [self.NL])
        if state_out is not None:
            out["state_out"] = state_out
        if is_numpy:
            out = _map_nested(out, lambda t: t.numpy())
        return out


def _map_nested(d: dict, fn) -> dict:
    return {k: (_map_nested(v, fn) if isinstance(v, dict) else fn(v)) for k, v in d.items()}

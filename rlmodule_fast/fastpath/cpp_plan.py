"""The policy step on the cpp backend: ``CppPolicyPlan`` packs a ``PolicyLayers`` description
into one ``_C.Policy`` and runs encoder, heads and sampling in ONE C++ call per step.

Build it through ``fastpath.PolicyPlan`` (backend "cpp"), which also notices replaced parameters
or layers (the structure generation) and re-reads the module's layers; this class checks, per
step, the weights stamp of what it packed (``_C.weights_stamp``: version counters and data
pointers hashed in C++) and repacks when it moved.

Shape legend: B batch, O flattened obs dim, H rnn hidden, D dist-input dim, A action columns.
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np
import torch

from ..ops.reference import canonical_activation
from .layers import PolicyLayers, _params, _step_params, conv_geometry, has_norms, validate

_F32 = np.dtype(np.float32)
_U8 = np.dtype(np.uint8)
_NO_STATE = (None, None, None, None)
_NULL_LOCK = contextlib.nullcontext()


def conv_stack_spec(cpp, enc, what: str, f32) -> tuple:
    """(``_C``'s conv stage description, column permutation for the layer reading its output) of
    an encoder with conv layers (anything ``conv_geometry`` reads: ``EncoderLayers``, the DQN
    step's ``QNetLayers``), or (None, None) without. The description is bindings.cpp's
    ``ConvStackDesc`` (H, W, C, has_scale, scale, [conv_desc...]); the permutation is None for
    RLlib's (H, W, C) flatten, else the LongTensor [Ho * Wo * Co] such that HWC feature j is the
    next layer's column perm[j] (a channels-first flatten: the kernels always write HWC).
    ``f32(t)``: the caller's float32 contiguous copy of a tensor, kept alive while ``_C`` packs.
    ValueError naming ``what`` for a conv stage the kernels cannot run."""
    geo = conv_geometry(enc, what)
    if not geo:
        return None, None
    descs = []
    for c, stride, pad, act, _, _ in geo:
        w = f32(c.weight)
        b = f32(c.bias) if c.bias is not None else None
        descs.append(cpp.conv_desc(w, b, stride, pad, cpp.ACT_CODES[act]))
    H, W, C = enc.image_shape
    scale = enc.obs_scale
    perm = None
    if enc.conv_flatten == "chw":  # HWC position j reads CHW column perm[j] of the next layer
        Ho, Wo, Co = geo[-1][5]
        perm = torch.arange(Ho * Wo * Co).reshape(Co, Ho, Wo).permute(1, 2, 0).reshape(-1)
    return (H, W, C, scale is not None, 0.0 if scale is None else float(scale), descs), perm


def image_rows(obs, image: tuple, D: int, u8_ok: bool) -> np.ndarray:
    """An observation batch as the 2-D array a conv-stage plan hands to ``_C``: obs [B, D] or,
    with ``image`` = (H, W, C), [B, H, W, C] images (rows in HWC order); uint8 kept when
    ``u8_ok`` (converted inside the kernels), anything else as float32; C-contiguous and aligned
    (the kernels load float32 rows: 4-byte aligned). (CPU
    tensors are read through a numpy view.) ValueError naming obs, the expected and the received
    shape otherwise."""
    x = np.asarray(obs)
    if image is not None and x.ndim == 4 and tuple(x.shape[1:]) == tuple(image):
        x = x.reshape(x.shape[0], D)  # [B, H, W, C] images: rows in HWC order
    if x.ndim != 2 or x.shape[1] != D:
        raise ValueError(f"obs: expected shape [B, {D}]" + (f" or [B, {', '.join(map(str, image))}]"
                                                            if image else "") + f", got {tuple(x.shape)}")
    if not (x.dtype == _U8 and u8_ok):  # uint8 images go to the kernels as they are
        x = x.astype(np.float32, copy=False)
    if not (x.flags.c_contiguous and x.flags.aligned):  # sliced, transposed, zero strides, odd address
        x = np.require(x, requirements=("C", "A"))
    return x


class CppPolicyPlan:
    """One policy step per ``_C`` call, weights packed once (see ``fastpath.PolicyPlan`` for
    ``step``'s arguments and results, ``out=`` buffers included).

    ``CppPolicyPlan(layers, weights_lock=None)``: ``weights_lock`` is the module's (re-entrant)
    lock, held while the parameters are read for a repack so a step sees all-old or all-new
    weights. Attributes read from the layers: obs_dim, dist_dim, action_sizes, head_act, has_vf,
    actor_rnn, critic_rnn.
    """

    def __init__(self, layers: PolicyLayers, weights_lock=None):
        from ..ops import cpp

        ok, reason = cpp.status()
        if not ok:
            raise RuntimeError(f"backend 'cpp' is unavailable: {reason}")
        self._cpp = cpp
        self.weights_lock = weights_lock
        self._lock = threading.Lock()
        self._net = None
        self._sync_rng = cpp._sync_rng
        self._sync_threads = cpp.sync_threads
        self._stamp_of = cpp._C.weights_stamp
        self.set_layers(layers)
        self._repack()

    def set_layers(self, layers: PolicyLayers, params=None) -> None:
        """Take (validated) new layers; the next step repacks."""
        params = _params(layers) if params is None else params
        self._check_devices(params)
        dims = validate(layers)
        self.__dict__.update(dims)
        self._recurrent = self.actor_rnn is not None or self.critic_rnn is not None
        self._image = tuple(layers.actor.image_shape) if getattr(layers.actor, "conv", None) else None
        self._gauss = layers.dist in ("diag_gaussian", "squashed_gaussian")
        self.layers, self._params = layers, params
        self._watch()

    def _watch(self) -> None:
        """What the freshness check reads: every parameter (steps with the value head) and the
        policy's own (steps without it; RLlib's default separate critic halves the work), with
        the stamps of the packed copy (None: stale)."""
        self._watch_all = tuple(self._params)
        self._watch_policy = tuple(_step_params(self.layers))
        self._packed_all = self._packed_policy = None

    @staticmethod
    def _check_devices(params: list) -> None:
        """The cpp plan hands data pointers to C++: every parameter must live in CPU memory."""
        for p in params:
            if p.device.type != "cpu":
                raise ValueError(f"layers: the cpp backend needs CPU parameters, got a parameter on {p.device} "
                                 "(the module was moved: step it with inputs on that device)")

    # -- packing ----------------------------------------------------------------------------------
    def _spec(self):
        """The description handed to ``_C.Policy`` plus the float32 tensors it points into."""
        L = self.layers
        keep = []

        def f32(t):
            t = t.detach()
            if t.dtype != torch.float32 or not t.is_contiguous():
                t = t.float().contiguous()
            keep.append(t)
            return t

        def mlp(lins, perm=None):
            out = []
            for i, lin in enumerate(lins):
                w = f32(lin.weight if perm is None or i else lin.weight.detach()[:, perm])
                b = f32(lin.bias) if lin.bias is not None else None
                out.append((w.data_ptr(), w.shape[0], w.shape[1], w.shape[1], b.data_ptr() if b is not None else 0, 1))
            return out

        def rnn(r, perm=None):
            if r is None:
                return None
            wi = f32(r.weight_ih_l0 if perm is None else r.weight_ih_l0.detach()[:, perm])
            wh = f32(r.weight_hh_l0)
            bi = f32(r.bias_ih_l0).data_ptr() if r.bias else 0
            bh = f32(r.bias_hh_l0).data_ptr() if r.bias else 0
            kind = self._cpp._C.RNN_KINDS["lstm" if isinstance(r, torch.nn.LSTM) else "gru"]
            return (kind, r.input_size, r.hidden_size, wi.data_ptr(), wi.shape[1], wh.data_ptr(), wh.shape[1], bi, bh)

        def norms(ns):
            """None, or per layer None / (gamma ptr, beta ptr, eps) of its nn.LayerNorm (0: ones / zeros)."""
            if not has_norms(ns):
                return None
            return [None if n is None else (f32(n.weight).data_ptr() if n.weight is not None else 0,
                                            f32(n.bias).data_ptr() if n.bias is not None else 0, float(n.eps))
                    for n in ns]

        def conv(enc, what):
            return conv_stack_spec(self._cpp, enc, what, f32)

        a_conv, a_perm = conv(L.actor, "actor")
        # the first layer that reads the actor's conv output: its mlp, else its rnn, else pi (and a shared vf)
        a_mlp_perm = a_perm if L.actor.mlp else None
        a_rnn_perm = a_perm if not L.actor.mlp else None
        a_head_perm = a_perm if not L.actor.mlp and L.actor.rnn is None else None
        enc_act = self._cpp.ACT_CODES[canonical_activation(L.actor.activation)]
        head = self._cpp.ACT_CODES[self.head_act]
        spec = {
            "obs_dim": self.obs_dim, "actor_conv": a_conv, "critic_conv": None,
            "actor_mlp": mlp(L.actor.mlp, a_mlp_perm), "actor_acts": [enc_act] * len(L.actor.mlp),
            "actor_rnn": rnn(L.actor.rnn, a_rnn_perm),
            "critic_on": L.critic is not None, "critic_mlp": [], "critic_acts": [], "critic_rnn": None,
            "pi": mlp(L.pi, a_head_perm), "pi_acts": [head] * (len(L.pi) - 1) + [0],
            "vf": None, "vf_acts": [],
            "dist": self._cpp._C.DISTRIBUTIONS[L.dist], "action_sizes": self.action_sizes,
            "log_std_clip": -1.0 if L.log_std_clip is None else float(L.log_std_clip),
            "free_log_std": [] if L.free_log_std is None else [float(v) for v in L.free_log_std.detach().float().tolist()],
            "actor_norms": norms(getattr(L.actor, "norms", None)), "pi_norms": norms(getattr(L, "pi_norms", None)),
        }
        vf_perm = a_head_perm if L.critic is None else None
        if L.critic is not None:
            c_conv, c_perm = conv(L.critic, "critic")
            c_act = self._cpp.ACT_CODES[canonical_activation(L.critic.activation)]
            spec.update(critic_conv=c_conv, critic_mlp=mlp(L.critic.mlp, c_perm if L.critic.mlp else None),
                        critic_acts=[c_act] * len(L.critic.mlp),
                        critic_rnn=rnn(L.critic.rnn, c_perm if not L.critic.mlp else None),
                        critic_norms=norms(getattr(L.critic, "norms", None)))
            vf_perm = c_perm if not L.critic.mlp and L.critic.rnn is None else None
        if self.has_vf:
            spec.update(vf=mlp(L.vf, vf_perm), vf_acts=[head] * (len(L.vf) - 1) + [0],
                        vf_norms=norms(getattr(L, "vf_norms", None)))
        return spec, keep

    def _repack(self, force: bool = False) -> None:
        """Bring the packed copy up to date with the layers (``force``: repack whatever the stamps
        say). With ``weights_lock`` (the module's lock, held by whoever updates the weights as a
        whole: ``set_state``, ``load_state_dict``, a guarded optimizer step) the parameters are
        read under it, so the packed copy is all-old or all-new. Without it, a parameter that
        moves while packing triggers another pass, and a pack that never settles is marked stale
        so the next step repacks again."""
        lock = self.weights_lock
        with (lock if lock is not None else _NULL_LOCK):  # the module's lock first (re-entrant)
            with self._lock:
                if force:
                    self._packed_all = self._packed_policy = None
                self._repack_locked()

    def _repack_locked(self) -> None:
        stamp_of = self._stamp_of
        for _ in range(4):
            stamp = stamp_of(self._watch_all)
            if stamp == self._packed_all and self._net is not None:
                return
            self._check_devices(self._params)  # e.g. module.to("cuda") / to("meta") since the last pack
            spec, keep = self._spec()
            if self._net is None:
                self._net = self._cpp._C.Policy(spec)
            else:
                self._net.load(spec)
            del keep
            if stamp_of(self._watch_all) == stamp:
                self._packed_all, self._packed_policy = stamp, stamp_of(self._watch_policy)
                return
        self._packed_all = self._packed_policy = None  # still moving: stale, the next step repacks

    # -- the hot path ------------------------------------------------------------------------------
    def _state_arg(self, st, H: int, B: int, what: str):
        """(keep-alive, what _C reads) for one state leaf [B, H] or [B, 1, H]: C-contiguous, 4-byte
        aligned float32 (converted or copied only when needed); ValueError naming ``what``."""
        if st is None:
            return None
        if isinstance(st, torch.Tensor):
            t = st.detach()
            if t.dim() == 3 and t.shape[1] == 1:
                t = t[:, 0]
            if t.dtype != torch.float32 or not t.is_contiguous():
                t = t.float().contiguous()
            if tuple(t.shape) != (B, H) or t.device.type != "cpu":
                raise ValueError(f"{what}: expected a CPU [{B}, {H}] array, got {tuple(st.shape)} on {st.device}")
            if t.data_ptr() % 4:  # e.g. from_numpy of a buffer at an odd address
                t = t.clone()
            return t, t.data_ptr()
        a = np.asarray(st)
        if a.ndim == 3 and a.shape[1] == 1:
            a = a[:, 0]
        if a.shape != (B, H):
            raise ValueError(f"{what}: expected shape [{B}, {H}], got {tuple(np.shape(st))}")
        a = np.require(a, np.float32, ("C", "A"))
        return a, a

    def _states(self, state, B: int):
        """(keep-alive list, (ha, ca, hc, cc)) from the caller's state dict."""
        if self.actor_rnn is None and self.critic_rnn is None:
            return [], (None, None, None, None)
        if state is not None and not isinstance(state, dict):
            raise ValueError(f"state: expected None or a dict of [B, H] arrays, got {type(state).__name__}")
        sa, sc = state, None
        if self.critic_rnn is not None:
            sa = None if state is None else state.get("actor")
            sc = None if state is None else state.get("critic")
        keep, ptrs = [], []
        for st, rnn, who in ((sa, self.actor_rnn, "state"), (sc, self.critic_rnn, "state['critic']")):
            for key in ("h", "c"):
                v = None
                if rnn is not None and st is not None and (key == "h" or isinstance(rnn, torch.nn.LSTM)):
                    if key not in st:
                        raise ValueError(f"{who}: missing key {key!r} (has {sorted(st)})")
                    r = self._state_arg(st[key], rnn.hidden_size, B, f"{who}[{key!r}]")
                    keep.append(r[0])
                    v = r[1]
                ptrs.append(v)
        return keep, tuple(ptrs)

    def _obs(self, obs):
        """(obs argument for _C, B, row stride, is_tensor, keep-alive), converting only when needed."""
        D = self.obs_dim
        as_tensor = isinstance(obs, torch.Tensor)
        if as_tensor:
            if obs.device.type != "cpu":
                raise ValueError(f"obs: the cpp plan needs a CPU tensor, got device {obs.device}")
            obs = obs.numpy() if not obs.requires_grad else obs.detach().numpy()  # a view, no copy
        x = image_rows(obs, self._image, D, self.u8_ok)
        return x, x.shape[0], 0, as_tensor, x

    def _mask(self, mask, B: int):
        """The action mask as the contiguous float32 [B, D] array _C reads (None: no mask)."""
        if self._gauss:
            raise ValueError("action_mask: masking needs categorical actions, this plan samples a Gaussian")
        return self._cpp.mask_f32(mask, B, self.dist_dim)

    def step_flat(self, obs, deterministic: bool, mask=None) -> tuple:
        """The env-runner hot path of a feed-forward plan: obs [B, O] (numpy or CPU tensor)
        -> (action_dist_inputs, actions, action_logp) as fresh torch tensors, no value head.
        ``mask``: None or the action mask [B, D] (0/1; masked logits become RLlib's FLOAT_MIN)."""
        if self._stamp_of(self._watch_policy) != self._packed_policy:
            self._repack()
        if type(obs) is np.ndarray and obs.dtype == _F32 and obs.ndim == 2 and obs.flags.c_contiguous \
                and obs.flags.aligned:
            if obs.shape[1] != self.obs_dim:
                raise ValueError(f"obs: expected shape [B, {self.obs_dim}], got {tuple(obs.shape)}")
            obs_arg, B, ld = obs, obs.shape[0], 0
        else:
            obs_arg, B, ld, _, _ = self._obs(obs)
        m = None if mask is None else self._mask(mask, B)
        if not deterministic:
            self._sync_rng()
        self._sync_threads()
        r = self._net.step(obs_arg, B, ld, _NO_STATE, deterministic, False, None, m)
        from_np = torch.from_numpy
        return from_np(r[0]), from_np(r[1]), from_np(r[2])

    def step(self, obs, state=None, *, deterministic: bool = False, compute_value: bool = False, out=None,
             mask=None) -> dict:
        if compute_value:
            if self._stamp_of(self._watch_all) != self._packed_all:
                self._repack()
        elif self._stamp_of(self._watch_policy) != self._packed_policy:
            self._repack()
        if type(obs) is np.ndarray and obs.dtype == _F32 and obs.ndim == 2 and obs.flags.c_contiguous \
                and obs.flags.aligned:
            # the common case (an env's float32 batch), as _obs would return it; _C checks the width
            obs_arg, B, ld, as_tensor, keep_obs = obs, obs.shape[0], 0, False, None
            if obs.shape[1] != self.obs_dim:
                raise ValueError(f"obs: expected shape [B, {self.obs_dim}], got {tuple(obs.shape)}")
        else:
            obs_arg, B, ld, as_tensor, keep_obs = self._obs(obs)
        if compute_value and not self.has_vf:
            raise ValueError("compute_value: this plan has no value head (layers.vf is None)")
        keep, states = self._states(state, B) if self._recurrent else (None, _NO_STATE)
        m = None if mask is None else self._mask(mask, B)
        if not deterministic:
            self._sync_rng()
        self._sync_threads()
        if out is not None:
            return self._step_out(obs_arg, B, ld, states, deterministic, compute_value, out, m)
        r = self._net.step(obs_arg, B, ld, states, bool(deterministic), bool(compute_value), None, m)
        del keep, keep_obs
        if as_tensor:
            from_np = torch.from_numpy
            r = [a if a is None else from_np(a) for a in r]
        res = {"action_dist_inputs": r[0], "actions": r[1], "action_logp": r[2]}
        if compute_value:
            res["vf_preds"] = r[3]
        if self.actor_rnn is not None:
            sa = {"h": r[4], "c": r[5]} if r[5] is not None else {"h": r[4]}
            if self.critic_rnn is not None:
                sc = {"h": r[6], "c": r[7]} if r[7] is not None else {"h": r[6]}
                res["state_out"] = {"actor": sa, "critic": sc}
            else:
                res["state_out"] = sa
        return res

    def _step_out(self, obs_arg, B, ld, states, deterministic, compute_value, out: dict, mask=None) -> dict:
        gauss = self.layers.dist in ("diag_gaussian", "squashed_gaussian")
        na = len(self.action_sizes) if self.layers.dist == "multi_categorical" else None
        A = self.action_sizes[0]

        def buf(key, shape, dtype, d=out):
            if key not in d:
                raise ValueError(f"out: missing key {key!r}")
            a = d[key]
            ok_dtype = {torch.float32: np.float32, torch.int64: np.int64}[dtype]
            if isinstance(a, torch.Tensor):
                good = a.device.type == "cpu" and a.dtype == dtype and a.is_contiguous() and tuple(a.shape) == shape
                ptr = a.data_ptr() if good else 0
            else:
                a_np = a if isinstance(a, np.ndarray) else None
                good = (a_np is not None and a_np.dtype == ok_dtype and a_np.flags.c_contiguous
                        and a_np.flags.writeable and a_np.shape == shape)
                ptr = a_np.__array_interface__["data"][0] if good else 0
            if not good:
                raise ValueError(f"out[{key!r}]: expected a contiguous writable {dtype} buffer of shape "
                                 f"{list(shape)}, got {type(a).__name__} {tuple(getattr(a, 'shape', ()))}")
            return ptr

        dist = buf("action_dist_inputs", (B, self.dist_dim), torch.float32)
        if gauss:
            act = buf("actions", (B, A), torch.float32)
        else:
            act = buf("actions", (B, na) if na else (B,), torch.int64)
        logp = buf("action_logp", (B,), torch.float32)
        val = buf("vf_preds", (B,), torch.float32) if compute_value else 0
        sp = [0, 0, 0, 0]
        if self.actor_rnn is not None:
            so = out.get("state_out")
            if not isinstance(so, dict):
                raise ValueError("out: missing key 'state_out' (a dict of [B, H] buffers)")
            parts = [(so, self.actor_rnn, 0)] if self.critic_rnn is None else [
                (so.get("actor", {}), self.actor_rnn, 0), (so.get("critic", {}), self.critic_rnn, 2)]
            for d, rnn, i in parts:
                sp[i] = buf("h", (B, rnn.hidden_size), torch.float32, d)
                if isinstance(rnn, torch.nn.LSTM):
                    sp[i + 1] = buf("c", (B, rnn.hidden_size), torch.float32, d)
        self._net.step(obs_arg, B, ld, states, bool(deterministic), bool(compute_value),
                       (dist, act, logp, val, sp[0], sp[1], sp[2], sp[3]), mask)
        return out

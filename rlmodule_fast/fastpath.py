"""The whole policy step (encoder [+ LSTM/GRU], pi head, sampling, [value head]) in ONE
backend call: ``PolicyPlan``.

A plan reads a module's layers once (``PolicyLayers``, built by e.g.
``PPOTorchRLModule.policy_layers()``), packs their weights for its backend, and before every
step checks that what it packed is still what the module holds (see "Freshness" below), so a
step always runs the current weights.

Freshness -- what a step detects by itself, and what needs ``plan.refresh()`` (the module's
``refresh_fast_path()``):

- detected: in-place changes of a parameter (optimizer steps, ``load_state_dict``,
  ``set_state``, ``p.copy_(...)``, ``with torch.no_grad(): p += ...``: the parameter's version
  counter moves); a parameter whose storage was swapped (``p.data = t``,
  ``nn.utils.vector_to_parameters``, ``module.to(...)``: its data pointer moves); a replaced
  parameter or layer (``lin.weight = nn.Parameter(...)``, ``load_state_dict(..., assign=True)``,
  ``seq[0] = nn.Linear(...)``: any parameter or submodule registration anywhere bumps a
  process-wide counter, after which the plan re-reads the module's layers and compares
  parameter identities).
- not detectable without reading every weight on every step: writes that bypass torch's
  version counter into the same memory -- in-place ops on ``p.data`` (``p.data.mul_(2)``,
  ``p.data[:] = ...``) and writes through a numpy view (``p.detach().numpy()[:] = ...``).
  Call ``refresh()`` after those.

Backends: "cpp" (the C++ extension, CPU tensors / numpy), "triton" (CUDA, delegating to
``ops.triton.TritonPolicyPlan``), "auto" (cpp here, triton for CUDA parameters).

Shape legend: B batch, O flattened obs dim, H rnn hidden, D dist-input dim, A action columns.
"""
from __future__ import annotations

import contextlib
import operator
import threading
import weakref
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .core.torch_rl_module import STRUCTURE_GEN, WeightsLockMixin
from .ops import dispatch
from .ops.reference import canonical_activation


@dataclass
class EncoderLayers:
    mlp: list            # list[nn.Linear]; every layer followed by `activation`
    activation: str      # canonical name (see ops.reference.canonical_activation)
    rnn: object = None   # None, or an nn.LSTM / nn.GRU (1 layer, batch_first=True) applied after the mlp


@dataclass
class PolicyLayers:
    actor: EncoderLayers
    critic: Optional[EncoderLayers]   # None: the value head reads the actor latent (vf_share_layers=True)
    pi: list                          # list[nn.Linear]; hidden layers use head_activation, last is linear
    vf: Optional[list]                # value head layers (last linear, out 1), same head_activation
    head_activation: str
    dist: str                         # "categorical" | "multi_categorical" | "diag_gaussian"
    action_sizes: list                # categorical [A]; multi_categorical [n1, n2, ...]; diag_gaussian [A]
    log_std_clip: Optional[float]     # diag gaussian: clamp log-std to [-c, c]
    free_log_std: object = None       # nn.Parameter [A] or None: state-independent log-std appended after pi's mean output


DISTS = {"categorical": 0, "multi_categorical": 1, "diag_gaussian": 2}
_VERSION = operator.attrgetter("_version")
_DATA_PTR = torch.Tensor.data_ptr

# Structure generation: bumped whenever any nn.Module registers a parameter or a submodule
# (``lin.weight = nn.Parameter(...)``, ``load_state_dict(assign=True)``, ``seq[i] = layer``) and
# whenever a TorchRLModule is moved (``.to(device)`` replaces Parameter objects without
# registering them), so a step notices a replaced parameter with one integer compare; the plan
# then re-reads its module's layers. The hooks return None, which keeps the registered value.
_STRUCTURE_GEN = STRUCTURE_GEN


def _on_registration(*_args) -> None:
    _STRUCTURE_GEN[0] += 1


torch.nn.modules.module.register_module_parameter_registration_hook(_on_registration)
torch.nn.modules.module.register_module_module_registration_hook(_on_registration)


def _stamp(params: list) -> tuple:
    """What a packed copy was made from: (sum of version counters, data pointers). Versions
    only grow, so their sum moves whenever one does. (The cpp plan uses ``_C.weights_stamp``,
    the same check hashed in C++.)"""
    return sum(map(_VERSION, params)), tuple(map(_DATA_PTR, params))


def _step_params(layers: PolicyLayers) -> list:
    """The parameters a step without the value head reads: actor encoder, pi head, log-std."""
    ps = []
    for lin in list(layers.actor.mlp) + list(layers.pi):
        ps += [lin.weight] + ([lin.bias] if lin.bias is not None else [])
    if layers.actor.rnn is not None:
        ps += list(layers.actor.rnn.parameters())
    if layers.free_log_std is not None:
        ps.append(layers.free_log_std)
    return ps
_F32 = np.dtype(np.float32)
_NO_STATE = (None, None, None, None)
_NULL_LOCK = contextlib.nullcontext()


def _linears(layers, what: str) -> list:
    layers = list(layers) if layers is not None else []
    for i, lin in enumerate(layers):
        if not isinstance(lin, torch.nn.Linear):
            raise ValueError(f"{what}[{i}]: expected nn.Linear, got {type(lin).__name__}")
    return layers


def _check_rnn(rnn, what: str):
    if rnn is None:
        return None
    if not isinstance(rnn, (torch.nn.LSTM, torch.nn.GRU)):
        raise ValueError(f"{what}: expected None, nn.LSTM or nn.GRU, got {type(rnn).__name__}")
    if rnn.num_layers != 1 or rnn.bidirectional or getattr(rnn, "proj_size", 0):
        raise ValueError(f"{what}: only 1-layer, unidirectional, proj_size=0 RNNs are supported")
    return rnn


def _chain(lins: list, in_dim: int, what: str) -> int:
    for i, lin in enumerate(lins):
        if lin.in_features != in_dim:
            raise ValueError(f"{what}[{i}]: expected in_features {in_dim}, got {lin.in_features}")
        in_dim = lin.out_features
    return in_dim


def _encoder_dims(enc: EncoderLayers, what: str) -> tuple[int, int]:
    """(obs dim, latent dim) of an encoder; obs dim 0 when it is empty (latent = obs)."""
    mlp = _linears(enc.mlp, f"{what}.mlp")
    rnn = _check_rnn(enc.rnn, f"{what}.rnn")
    canonical_activation(enc.activation, what=f"{what}.activation")
    if mlp:
        obs_dim = mlp[0].in_features
        lat = _chain(mlp, obs_dim, f"{what}.mlp")
    elif rnn is not None:
        obs_dim = lat = rnn.input_size
    else:
        return 0, 0
    if rnn is not None:
        if rnn.input_size != lat:
            raise ValueError(f"{what}.rnn: expected input_size {lat} (the mlp's output), got {rnn.input_size}")
        lat = rnn.hidden_size
    return obs_dim, lat


def _params(layers: PolicyLayers) -> list:
    ps = []
    for enc in [layers.actor] + ([layers.critic] if layers.critic is not None else []):
        for lin in enc.mlp:
            ps += [lin.weight] + ([lin.bias] if lin.bias is not None else [])
        if enc.rnn is not None:
            ps += list(enc.rnn.parameters())
    for lin in list(layers.pi) + list(layers.vf or []):
        ps += [lin.weight] + ([lin.bias] if lin.bias is not None else [])
    if layers.free_log_std is not None:
        ps.append(layers.free_log_std)
    return ps


class PolicyPlan:
    """One policy step per backend call, weights packed once.

    ``PolicyPlan(layers: PolicyLayers, backend="cpp", weights_lock=None)``; ``weights_lock``: a
    (re-entrant) lock that whoever updates the weights as a whole holds for the whole update
    (``plan_for`` passes the module's ``weights_lock()`` when it has one); the cpp plan reads
    the parameters under it when it repacks, so every step sees all-old or all-new weights.
    ``step(obs, state=None, *, deterministic=False, compute_value=False, out=None) -> dict``:

    - obs: [B, O] float32 (float64 / non-contiguous are converted) numpy array or CPU tensor.
    - state (recurrent plans): {"h": [B, H], "c": [B, H]} (GRU: "h" only; [B, 1, H] accepted),
      nested {"actor": {...}, "critic": {...}} when the critic has its own rnn; None = zeros.
    - returns {"action_dist_inputs": [B, D] f32, "actions": [B] int64 (categorical) |
      [B, n] int64 (multi_categorical) | [B, A] f32 (diag_gaussian), "action_logp": [B] f32,
      "vf_preds": [B] f32 (compute_value=True), "state_out": same layout as state}, the same
      kind (numpy / tensor) as obs. Outputs are fresh every call (the caller owns them);
      ``out=`` takes a dict of caller-owned contiguous buffers with those keys instead (written
      in place and returned; rnn plans also need "state_out").

    ``deterministic`` takes the mode (argmax / mean). Draws follow the cpp backend's stream
    (see ``ops.cpp``): reproducible under ``torch.manual_seed`` / ``rf.manual_seed``. Safe to
    step from several threads (one plan or several); a large batch is split over
    ``torch.get_num_threads()`` threads (``RLMODULE_FAST_NUM_THREADS`` overrides).
    """

    def __init__(self, layers: PolicyLayers, backend: str = "cpp", weights_lock=None, source=None):
        backend = (backend or "auto").lower()
        if backend not in ("auto", "cpp", "triton"):
            raise ValueError(f"backend={backend!r}: expected 'auto', 'cpp' or 'triton'")
        params = _params(layers)
        if backend == "auto":
            backend = "triton" if params and params[0].device.type == "cuda" else "cpp"
        self.backend = backend
        self.layers = layers
        self.weights_lock = weights_lock
        self._source = source          # weakref.WeakMethod -> the module's policy_layers (or None)
        self._gen = _STRUCTURE_GEN[0]
        self._params = params
        if backend == "triton":
            mod = dispatch._backend_module("triton")
            if mod is None:
                raise RuntimeError(f"backend 'triton' is unavailable: {dispatch._status['triton'][1]}")
            self._triton = mod
            self._impl = mod.TritonPolicyPlan(layers)
            return
        from .ops import cpp

        ok, reason = cpp.status()
        if not ok:
            raise RuntimeError(f"backend 'cpp' is unavailable: {reason}")
        self._cpp = cpp
        self._impl = None
        self._check_devices(params)
        self._validate(layers)
        self._lock = threading.Lock()
        self._net = None
        self._watch()
        self._recurrent = self.actor_rnn is not None or self.critic_rnn is not None
        self._sync_rng = cpp._sync_rng
        self._sync_threads = cpp.sync_threads
        self._stamp_of = cpp._C.weights_stamp
        self._repack()

    def __reduce__(self):
        """Pickle / deepcopy rebuild the plan from its layers (packed buffers never travel; nor
        does the weights lock, which belongs to the module)."""
        return (PolicyPlan, (self.layers, self.backend))

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

    def refresh(self) -> None:
        """Re-read the module's layers and repack every weight now, whatever the freshness check
        says (after writes it cannot see: in-place ops on ``p.data``, writes through a numpy view)."""
        lock = self.weights_lock
        with (lock if lock is not None else _NULL_LOCK):
            self._reread_layers(force=True)
            if self._impl is not None:
                self._impl = self._triton.TritonPolicyPlan(self.layers)
                return
            with self._lock:
                self._packed_all = self._packed_policy = None
                self._repack_locked()

    def _reread_layers(self, force: bool = False) -> None:
        """After a parameter / submodule registration somewhere: take the module's current
        layers when their parameters are not the ones this plan holds (validated again)."""
        self._gen = _STRUCTURE_GEN[0]
        get_layers = self._source() if self._source is not None else None
        if get_layers is None:  # no module to re-read (a plan built from bare layers)
            return
        layers = get_layers()
        params = _params(layers)
        if not force and len(params) == len(self._params) and all(map(operator.is_, params, self._params)):
            return
        if self._impl is not None:
            self._impl = self._triton.TritonPolicyPlan(layers)
        else:
            self._check_devices(params)
            self._validate(layers)
            self._recurrent = self.actor_rnn is not None or self.critic_rnn is not None
        self.layers, self._params = layers, params
        if self._impl is None:
            self._watch()

    # -- description ------------------------------------------------------------------------------
    def _validate(self, L: PolicyLayers) -> None:
        if L.dist not in DISTS:
            raise ValueError(f"dist: expected one of {sorted(DISTS)}, got {L.dist!r}")
        sizes = [int(a) for a in L.action_sizes]
        if not sizes or min(sizes) < 1 or (L.dist != "multi_categorical" and len(sizes) != 1):
            raise ValueError(f"action_sizes: expected positive sizes ([A] for {L.dist}), got {L.action_sizes}")
        self.action_sizes = sizes
        self.head_act = canonical_activation(L.head_activation, what="head_activation")
        a_obs, a_lat = _encoder_dims(L.actor, "actor")
        pi = _linears(L.pi, "pi")
        if not pi:
            raise ValueError("pi: expected at least one nn.Linear")
        if a_obs == 0:  # empty actor encoder: the heads read the observation
            a_obs = a_lat = pi[0].in_features
        self.obs_dim = a_obs
        npi = _chain(pi, a_lat, "pi")
        A = sum(sizes) if L.dist != "diag_gaussian" else sizes[0]
        if L.dist == "diag_gaussian":
            want = A if L.free_log_std is not None else 2 * A
        else:
            want = A
            if L.free_log_std is not None:
                raise ValueError(f"free_log_std: only for diag_gaussian, got dist {L.dist!r}")
        if npi != want:
            raise ValueError(f"pi: last layer has {npi} outputs, expected {want} for {L.dist} with action_sizes {sizes}")
        if L.free_log_std is not None and tuple(L.free_log_std.shape) != (A,):
            raise ValueError(f"free_log_std: expected shape [{A}], got {tuple(L.free_log_std.shape)}")
        if L.log_std_clip is not None and not float(L.log_std_clip) >= 0:
            raise ValueError(f"log_std_clip: expected None or >= 0, got {L.log_std_clip}")
        self.dist_dim = npi + (A if L.free_log_std is not None else 0)
        c_lat = a_lat
        self.critic_rnn = None
        if L.critic is not None:
            c_obs, c_lat = _encoder_dims(L.critic, "critic")
            if c_obs == 0:
                c_obs = c_lat = self.obs_dim
            if c_obs != self.obs_dim:
                raise ValueError(f"critic: expected input size {self.obs_dim} (the actor's), got {c_obs}")
            self.critic_rnn = L.critic.rnn
        vf = _linears(L.vf, "vf")
        if L.vf is not None:
            if not vf or _chain(vf, c_lat, "vf") != 1:
                raise ValueError(f"vf: expected layers ending in 1 output, got {[tuple(l.weight.shape) for l in vf]}")
        self.has_vf = bool(vf)
        self.actor_rnn = L.actor.rnn

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

        def mlp(lins):
            out = []
            for lin in lins:
                w = f32(lin.weight)
                b = f32(lin.bias) if lin.bias is not None else None
                out.append((w.data_ptr(), w.shape[0], w.shape[1], w.shape[1], b.data_ptr() if b is not None else 0, 1))
            return out

        def rnn(r):
            if r is None:
                return None
            wi, wh = f32(r.weight_ih_l0), f32(r.weight_hh_l0)
            bi = f32(r.bias_ih_l0).data_ptr() if r.bias else 0
            bh = f32(r.bias_hh_l0).data_ptr() if r.bias else 0
            kind = 0 if isinstance(r, torch.nn.LSTM) else 1
            return (kind, r.input_size, r.hidden_size, wi.data_ptr(), wi.shape[1], wh.data_ptr(), wh.shape[1], bi, bh)

        enc_act = self._cpp.ACT_CODES[canonical_activation(L.actor.activation)]
        head = self._cpp.ACT_CODES[self.head_act]
        spec = {
            "obs_dim": self.obs_dim,
            "actor_mlp": mlp(L.actor.mlp), "actor_acts": [enc_act] * len(L.actor.mlp), "actor_rnn": rnn(L.actor.rnn),
            "critic_on": L.critic is not None, "critic_mlp": [], "critic_acts": [], "critic_rnn": None,
            "pi": mlp(L.pi), "pi_acts": [head] * (len(L.pi) - 1) + [0],
            "vf": None, "vf_acts": [],
            "dist": DISTS[L.dist], "action_sizes": self.action_sizes,
            "log_std_clip": -1.0 if L.log_std_clip is None else float(L.log_std_clip),
            "free_log_std": [] if L.free_log_std is None else [float(v) for v in L.free_log_std.detach().float().tolist()],
        }
        if L.critic is not None:
            c_act = self._cpp.ACT_CODES[canonical_activation(L.critic.activation)]
            spec.update(critic_mlp=mlp(L.critic.mlp), critic_acts=[c_act] * len(L.critic.mlp), critic_rnn=rnn(L.critic.rnn))
        if self.has_vf:
            spec.update(vf=mlp(L.vf), vf_acts=[head] * (len(L.vf) - 1) + [0])
        return spec, keep

    def _repack(self) -> None:
        """Bring the packed copy up to date with the module. With ``weights_lock`` (the module's
        lock, held by whoever updates the weights as a whole: ``set_state``, ``load_state_dict``,
        a guarded optimizer step) the parameters are read under it, so the packed copy is all-old
        or all-new. Without it, a parameter that moves while packing triggers another pass, and
        a pack that never settles is marked stale so the next step repacks again."""
        lock = self.weights_lock
        with (lock if lock is not None else _NULL_LOCK):  # the module's lock first (re-entrant)
            if self._gen != _STRUCTURE_GEN[0]:
                self._reread_layers()
            if self._impl is not None:
                return
            with self._lock:
                self._repack_locked()

    def _repack_locked(self) -> None:
        stamp_of = self._cpp._C.weights_stamp
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

    def _fresh(self, compute_value: bool) -> None:
        """Repack unless the packed copy matches what this step reads (one C++ call)."""
        if self._gen != _STRUCTURE_GEN[0]:
            self._repack()
        elif compute_value:
            if self._stamp_of(self._watch_all) != self._packed_all:
                self._repack()
        elif self._stamp_of(self._watch_policy) != self._packed_policy:
            self._repack()

    # -- the hot path ------------------------------------------------------------------------------
    def _state_arg(self, st, H: int, B: int, what: str):
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
            return t, t.data_ptr()
        a = np.asarray(st)
        if a.ndim == 3 and a.shape[1] == 1:
            a = a[:, 0]
        if a.shape != (B, H):
            raise ValueError(f"{what}: expected shape [{B}, {H}], got {tuple(np.shape(st))}")
        a = np.ascontiguousarray(a, dtype=np.float32)
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
        x = obs
        if type(x) is not np.ndarray or x.dtype != _F32 or x.ndim != 2:
            x = np.asarray(obs)
            if x.ndim != 2:
                raise ValueError(f"obs: expected shape [B, {D}], got {tuple(x.shape)}")
            x = x.astype(np.float32)
        if x.shape[1] != D:
            raise ValueError(f"obs: expected shape [B, {D}], got {tuple(x.shape)}")
        if not x.flags.c_contiguous:  # sliced, transposed, negative or zero strides
            x = np.ascontiguousarray(x)
        return x, x.shape[0], 0, as_tensor, x

    def step_flat(self, obs, deterministic: bool) -> tuple:
        """The env-runner hot path of a feed-forward cpp plan: obs [B, O] (numpy or CPU tensor)
        -> (action_dist_inputs, actions, action_logp) as fresh torch tensors, no value head."""
        if self._gen != _STRUCTURE_GEN[0] or self._stamp_of(self._watch_policy) != self._packed_policy:
            self._repack()
        if type(obs) is np.ndarray and obs.dtype == _F32 and obs.ndim == 2 and obs.flags.c_contiguous:
            if obs.shape[1] != self.obs_dim:
                raise ValueError(f"obs: expected shape [B, {self.obs_dim}], got {tuple(obs.shape)}")
            obs_arg, B, ld = obs, obs.shape[0], 0
        else:
            obs_arg, B, ld, _, _ = self._obs(obs)
        if not deterministic:
            self._sync_rng()
        self._sync_threads()
        r = self._net.step(obs_arg, B, ld, _NO_STATE, deterministic, False, None)
        from_np = torch.from_numpy
        return from_np(r[0]), from_np(r[1]), from_np(r[2])

    def step(self, obs, state=None, *, deterministic: bool = False, compute_value: bool = False, out=None) -> dict:
        if self._impl is not None:
            if self._gen != _STRUCTURE_GEN[0]:
                self._repack()
            if out is not None:
                raise ValueError("out=: not supported by the triton plan")
            return self._impl.step(obs, state, deterministic=deterministic, compute_value=compute_value)
        self._fresh(compute_value)
        if type(obs) is np.ndarray and obs.dtype == _F32 and obs.ndim == 2 and obs.flags.c_contiguous:
            # the common case (an env's float32 batch), as _obs would return it; _C checks the width
            obs_arg, B, ld, as_tensor, keep_obs = obs, obs.shape[0], 0, False, None
            if obs.shape[1] != self.obs_dim:
                raise ValueError(f"obs: expected shape [B, {self.obs_dim}], got {tuple(obs.shape)}")
        else:
            obs_arg, B, ld, as_tensor, keep_obs = self._obs(obs)
        if compute_value and not self.has_vf:
            raise ValueError("compute_value: this plan has no value head (layers.vf is None)")
        keep, states = self._states(state, B) if self._recurrent else (None, _NO_STATE)
        if not deterministic:
            self._sync_rng()
        self._sync_threads()
        if out is not None:
            return self._step_out(obs_arg, B, ld, states, deterministic, compute_value, out)
        r = self._net.step(obs_arg, B, ld, states, bool(deterministic), bool(compute_value), None)
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

    def _step_out(self, obs_arg, B, ld, states, deterministic, compute_value, out: dict) -> dict:
        gauss = self.layers.dist == "diag_gaussian"
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
                       (dist, act, logp, val, sp[0], sp[1], sp[2], sp[3]))
        return out


# Plans cached per module: {(RLMODULE_FAST_BACKEND's raw value, CUDA input?): plan or None}. Our
# modules (WeightsLockMixin) keep them in their __dict__ under _CACHE_ATTR, which their
# __getstate__ drops, so plans never travel with a pickled or deep-copied module (RLlib ships
# modules to env runners); any other module's plans live in a dict with weak keys.
_CACHE_ATTR = "_rf_plans"
_PLANS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_PLANS_LOCK = threading.RLock()
_MISSING = object()


def _plan_cache(module, create: bool) -> Optional[dict]:
    """The module's plan cache (None if it has none and not ``create``); creating one takes
    _PLANS_LOCK (an RLock: plan_for holds it when it stores a plan)."""
    if isinstance(module, WeightsLockMixin):
        d = module.__dict__
        cache = d.get(_CACHE_ATTR)
        if cache is None and create:
            with _PLANS_LOCK:
                cache = d.setdefault(_CACHE_ATTR, {})
        return cache
    cache = _PLANS.get(module)
    if cache is None and create:
        with _PLANS_LOCK:
            cache = _PLANS.setdefault(module, {})
    return cache


def plan_for(module, example) -> Optional[PolicyPlan]:
    """The cached PolicyPlan of the backend chosen for ``example`` (an obs batch) on ``module``
    (anything with ``policy_layers()``), or None when the torch reference should run: the
    chosen backend is torch (``RLMODULE_FAST_BACKEND=torch``) or, under "auto", the preferred
    backend is unavailable (``rf.backend_info()`` says why). A backend forced by the environment
    but unavailable raises RuntimeError (no silent fallback). The choice is made by
    ``ops.dispatch`` once per (environment value, CPU/CUDA input) and cached on the module.
    Plan outputs carry no autograd graph, as RLlib's exploration/inference forwards (run under
    ``torch.no_grad()``) do not."""
    key = (dispatch.env_token(), getattr(getattr(example, "device", None), "type", None) == "cuda")
    cache = _plan_cache(module, False)
    if cache is not None:
        plan = cache.get(key, _MISSING)
        if plan is not _MISSING:
            return plan
    name = dispatch.choose("policy_step", "auto", example)
    plan = None
    if name != "torch":
        cache = _plan_cache(module, True)
        plan = next((p for p in cache.values() if p is not None and p.backend == name), None)
        if plan is None:
            lock_of = getattr(module, "weights_lock", None)
            plan = PolicyPlan(module.policy_layers(), backend=name,
                              weights_lock=lock_of() if callable(lock_of) else None,
                              source=weakref.WeakMethod(module.policy_layers))
    with _PLANS_LOCK:
        return _plan_cache(module, True).setdefault(key, plan)


def refresh(module) -> None:
    """Re-read ``module``'s layers and repack the weights of every plan cached for it (after
    writes a step cannot detect; see the module docstring)."""
    for plan in {id(p): p for p in (_plan_cache(module, False) or {}).values() if p is not None}.values():
        plan.refresh()


__all__ = ["EncoderLayers", "PolicyLayers", "PolicyPlan", "plan_for", "refresh"]

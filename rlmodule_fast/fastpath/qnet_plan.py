"""The epsilon-greedy step of a DQN module as ONE backend call: ``QNetPlan``.

A DQN module describes its Q-network once (``QNetLayers``: [conv stage,] encoder MLP, advantage /
Q head, optional dueling value head, atoms); the plan packs it into ``_C.QNet`` and each step runs
the conv stage (the policy step's: csrc/conv.h, RLlib's CNN encoder over [B, H, W, C] images,
float32 or uint8), encoder, heads, the dueling combine or the distributional expectation, the
action mask, the argmax, the epsilon coin and the random action in one C++ call (csrc/qnet.h).

Freshness is the policy plan's (see ``fastpath.plan``): before every step the plan compares
``_C.weights_stamp`` of the parameters it packed (version counters and data pointers) and the
process-wide structure generation (a replaced parameter or layer) with what it packed, and
repacks under the module's ``weights_lock()``. Writes that bypass torch's version counter
(``p.data.mul_(2)``, numpy views) need ``refresh()`` (the module's ``refresh_fast_path()``).

Backends: "cpp" (``QNetPlan``, here) for CPU inputs and "triton" (``qnet_triton_plan.TritonQNetPlan``:
one launch of ``kernels/qnet.py``) for CUDA inputs, as ``ops.dispatch.choose("qnet_step", ...)``
picks them; a forced backend that cannot run the step raises.

Draws: row r of a step uses counter ``ctr0 + r`` of rlmodule_fast's own stream (``ops.cpp``;
``rf.manual_seed`` / ``rf.get_rng_state``): its high 32 bits are the epsilon coin
(``u < epsilon``), its low 32 bits pick the random action uniformly among the row's valid actions.

Shape legend: B batch, O flattened obs dim (H * W * C for images), H, W, C image, A actions, N atoms.
"""
from __future__ import annotations

import contextlib
import threading
import weakref
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from ..ops import dispatch
from ..ops.reference import canonical_activation
from .cpp_plan import conv_stack_spec, image_rows
from .layers import _STRUCTURE_GEN, _check_norms, _conv_params, _linear_params, _linears, _norm_params, conv_geometry, has_norms
from .plan import _PLANS_LOCK, UnfusableLayers, _plan_cache, fast_path_info_for, refusing

_F32 = np.dtype(np.float32)
_NULL_LOCK = contextlib.nullcontext()
OP = "qnet_step"


@dataclass
class QNetLayers:
    encoder: list              # list[nn.Linear], each followed by enc_activation; [] = the heads read the obs
    enc_activation: str
    af: list                   # list[nn.Linear]: hidden layers use head_activation, the last is linear (A * N outputs)
    vf: Optional[list]         # dueling value head (last linear, 1 output), or None
    head_activation: str
    num_actions: int
    num_atoms: int = 1
    v_min: float = -10.0
    v_max: float = 10.0
    enc_norms: Optional[list] = None  # None, or per encoder layer an nn.LayerNorm (before its activation) or None
    af_norms: Optional[list] = None   # the same for the af layers
    vf_norms: Optional[list] = None   # the same for the vf layers
    # The encoder's conv stage before `encoder` (empty: none), as fastpath.EncoderLayers holds it:
    # the observation row is an image_shape (H, W, C) image, channels last; the conv output is
    # flattened in `conv_flatten` order ("hwc": RLlib's TorchCNNEncoder; "chw": folded into the
    # next layer's columns at pack time). With a conv stage, uint8 observations are accepted and
    # converted (times obs_scale when not None) inside the kernels.
    conv: list = field(default_factory=list)  # list[fastpath.layers.ConvLayer]
    image_shape: Optional[tuple] = None       # (H, W, C), required with conv
    conv_flatten: str = "hwc"
    obs_scale: Optional[float] = None


def support(num_atoms: int, v_min: float, v_max: float, device=None) -> torch.Tensor:
    """The distributional support z [N] float32, computed as RLlib's DQN module does."""
    z = torch.arange(0.0, num_atoms, dtype=torch.float32, device=device)
    return v_min + z * (v_max - v_min) / float(num_atoms - 1)


def qnet_params(L: QNetLayers) -> list:
    """Every parameter the step reads (conv stage, encoder, af, vf, their norms), in one order."""
    return (_conv_params(L) + _linear_params(L.encoder) + _norm_params(L.enc_norms) + _linear_params(L.af) + _norm_params(L.af_norms)
            + _linear_params(L.vf or []) + _norm_params(L.vf_norms))


def reread_layers(plan) -> None:
    """A Q-network plan (cpp or triton) after a structure change: ask its module for the layers
    again (``plan._source``, a weak reference to the module's ``qnet_layers``) and, when they are
    other parameters than ``plan._params``, rebuild with ``plan._set_layers``. The generation is
    taken only once they were read and accepted: layers the plan refuses raise again at every
    step (never the old weights)."""
    gen = _STRUCTURE_GEN[0]  # read first: a registration while re-reading is seen next step
    get_layers = plan._source() if plan._source is not None else None
    if get_layers is not None:
        layers = get_layers()
        new = qnet_params(layers)
        if len(new) != len(plan._params) or any(a is not b for a, b in zip(new, plan._params)):
            plan._set_layers(layers)
    plan._gen = gen


def validate(L: QNetLayers) -> int:
    """Check a description; returns the obs dim (H * W * C with a conv stage). ValueError naming
    the bad field."""
    enc, af = _linears(L.encoder, "encoder"), _linears(L.af, "af")
    geo = conv_geometry(L, "encoder")
    if not geo and L.obs_scale is not None:
        raise ValueError(f"obs_scale: only with a conv stage, got {L.obs_scale!r}")
    canonical_activation(L.enc_activation, what="enc_activation")
    canonical_activation(L.head_activation, what="head_activation")
    A, N = int(L.num_actions), int(L.num_atoms)
    if A < 1 or N < 1:
        raise ValueError(f"num_actions / num_atoms: expected >= 1, got {A} / {N}")
    if not af:
        raise ValueError("af: expected at least one nn.Linear")
    if geo:
        H, W, C = L.image_shape
        Ho, Wo, Co = geo[-1][5]
        obs_dim, feat = H * W * C, Ho * Wo * Co
    else:
        obs_dim = feat = enc[0].in_features if enc else af[0].in_features

    def chain(lins, d, what):
        for i, lin in enumerate(lins):
            if lin.in_features != d:
                raise ValueError(f"{what}[{i}]: expected in_features {d}, got {lin.in_features}")
            d = lin.out_features
        return d

    lat = chain(enc, feat, "encoder")
    if chain(af, lat, "af") != A * N:
        raise ValueError(f"af: last layer has {af[-1].out_features} outputs, expected num_actions * num_atoms = {A * N}")
    if L.vf is not None:
        vf = _linears(L.vf, "vf")
        if not vf or chain(vf, lat, "vf") != 1:
            raise ValueError(f"vf: expected layers ending in 1 output, got {[tuple(v.weight.shape) for v in vf]}")
        _check_norms(L.vf_norms, vf, "vf_norms")
    elif has_norms(L.vf_norms):
        raise ValueError("vf_norms: given without vf layers")
    _check_norms(L.enc_norms, enc, "enc_norms")
    _check_norms(L.af_norms, af, "af_norms")
    return obs_dim


class QNetPlan:
    """One epsilon-greedy DQN step per ``_C`` call, weights packed once.

    ``QNetPlan(layers, weights_lock=None, source=None)``: ``weights_lock`` is the module's
    re-entrant lock (the parameters are read under it when repacking); ``source`` a
    ``weakref.WeakMethod`` to the module's ``qnet_layers`` (re-read after a structure change).

    ``step(obs, mask, epsilon, deterministic) -> (q, actions, logp)``:
    obs [B, O] float32 numpy array or CPU tensor (other float dtypes / strides are converted);
    with a conv stage also [B, H, W, C] images, and uint8 ones go to the kernels unconverted;
    mask None or [B, A] of 0 / 1 (ValueError for other values or an all-masked row);
    returns fresh torch tensors q [B, A] float32 (the Q-values; masked entries RLlib's FLOAT_MIN),
    actions [B] int64 (greedy when ``deterministic`` or with probability 1 - epsilon, else
    uniform among valid actions), logp [B] float32 = log_softmax(q)[action].
    """

    backend = "cpp"

    def __init__(self, layers: QNetLayers, weights_lock=None, source=None):
        from ..ops import cpp

        ok, reason = cpp.status()
        if not ok:
            raise RuntimeError(f"backend 'cpp' is unavailable: {reason}")
        self._cpp = cpp
        self._stamp_of = cpp._C.weights_stamp
        self._sync_rng, self._sync_threads = cpp._sync_rng, cpp.sync_threads
        self.weights_lock = weights_lock
        self._source = source
        self._lock = threading.Lock()
        self._net = None
        self._set_layers(layers)
        self._repack()

    def __reduce__(self):
        return (QNetPlan, (self.layers,))

    def _set_layers(self, layers: QNetLayers) -> None:
        params = qnet_params(layers)
        for p in params:
            if p.device.type != "cpu":
                raise ValueError(f"layers: the cpp backend needs CPU parameters, got a parameter on {p.device}")
        self.obs_dim = validate(layers)
        self._image = tuple(layers.image_shape) if layers.conv else None
        self.u8_ok = bool(layers.conv)  # the conv kernels convert uint8 frames
        self.layers, self._params = layers, tuple(params)
        self._gen = _STRUCTURE_GEN[0]
        self._packed = None

    def _spec(self):
        L, keep = self.layers, []

        def f32(t):
            t = t.detach().float().contiguous()
            keep.append(t)
            return t

        conv, perm = conv_stack_spec(self._cpp, L, "encoder", f32)

        def mlp(lins, perm=None):
            """perm: None, or the column order of the first layer (it reads channels-first conv features)."""
            out = []
            for i, lin in enumerate(lins):
                w = (lin.weight.detach() if perm is None or i else lin.weight.detach()[:, perm]).float().contiguous()
                b = lin.bias.detach().float().contiguous() if lin.bias is not None else None
                keep.extend([w, b])
                out.append((w.data_ptr(), w.shape[0], w.shape[1], w.shape[1], b.data_ptr() if b is not None else 0, 1))
            return out

        def norms(ns):
            """None, or per layer None / (gamma ptr, beta ptr, eps) of its nn.LayerNorm (0: ones / zeros)."""
            if not has_norms(ns):
                return None
            out = []
            for n in ns:
                if n is None:
                    out.append(None)
                    continue
                g = n.weight.detach().float().contiguous() if n.weight is not None else None
                b = n.bias.detach().float().contiguous() if n.bias is not None else None
                keep.extend([g, b])
                out.append((g.data_ptr() if g is not None else 0, b.data_ptr() if b is not None else 0, float(n.eps)))
            return out

        codes = self._cpp.ACT_CODES
        head = codes[canonical_activation(L.head_activation)]
        N = int(L.num_atoms)
        head_perm = None if L.encoder else perm  # the layers that read the conv features
        spec = {
            "obs_dim": self.obs_dim, "num_actions": int(L.num_actions), "num_atoms": N, "conv": conv,
            "enc": mlp(L.encoder, perm), "enc_acts": [codes[canonical_activation(L.enc_activation)]] * len(L.encoder),
            "af": mlp(L.af, head_perm), "af_acts": [head] * (len(L.af) - 1) + [0],
            "vf": None if L.vf is None else mlp(L.vf, head_perm),
            "vf_acts": [] if L.vf is None else [head] * (len(L.vf) - 1) + [0],
            "z": support(N, L.v_min, L.v_max).tolist() if N > 1 else [],
            "enc_norms": norms(L.enc_norms), "af_norms": norms(L.af_norms),
            "vf_norms": norms(L.vf_norms) if L.vf is not None else None,
        }
        return spec, keep

    def _repack(self, force: bool = False) -> None:
        lock = self.weights_lock
        with (lock if lock is not None else _NULL_LOCK):
            with self._lock:
                if self._gen != _STRUCTURE_GEN[0] or force:
                    self._reread()
                for _ in range(4):
                    stamp = self._stamp_of(self._params)
                    if stamp == self._packed and self._net is not None and not force:
                        return
                    spec, keep = self._spec()
                    if self._net is None:
                        self._net = self._cpp._C.QNet(spec)
                    else:
                        self._net.load(spec)
                    del keep
                    force = False
                    if self._stamp_of(self._params) == stamp:
                        self._packed = stamp
                        return
                self._packed = None  # weights still moving: stale, the next step repacks

    def _reread(self) -> None:
        reread_layers(self)

    def refresh(self) -> None:
        """Re-read the module's layers and repack every weight now (after writes the stamp
        cannot see: in-place ops on ``p.data``, writes through a numpy view)."""
        self._repack(force=True)

    def _obs(self, obs) -> np.ndarray:
        """obs as a C-contiguous [B, O] numpy array (a view where possible): float32, or uint8
        with a conv stage; [B, H, W, C] images (conv stage) as their HWC rows."""
        if isinstance(obs, torch.Tensor):
            if obs.device.type != "cpu":
                raise ValueError(f"obs: the cpp plan needs a CPU tensor, got device {obs.device}")
            obs = obs.detach()
            if obs.dtype != torch.float32 and not (obs.dtype == torch.uint8 and self.u8_ok):
                obs = obs.float()
            obs = obs.numpy()
        return image_rows(obs, self._image, self.obs_dim, self.u8_ok)

    @staticmethod
    def _mask(mask) -> np.ndarray:
        if isinstance(mask, torch.Tensor):
            mask = mask.detach().cpu()
            return (mask if mask.dtype == torch.float32 else mask.float()).contiguous().numpy()
        if type(mask) is not np.ndarray or mask.dtype != _F32 or not mask.flags.c_contiguous:
            mask = np.ascontiguousarray(mask, dtype=np.float32)
        return mask

    def step(self, obs, mask, epsilon: float, deterministic: bool) -> tuple:
        if self._gen != _STRUCTURE_GEN[0] or self._stamp_of(self._params) != self._packed:
            self._repack()
        if (type(obs) is not np.ndarray or obs.dtype != _F32 or obs.ndim != 2 or not obs.flags.c_contiguous
                or not obs.flags.aligned):
            obs = self._obs(obs)
        elif obs.shape[1] != self.obs_dim:  # the common case: an env's contiguous float32 batch
            raise ValueError(f"obs: expected shape [B, {self.obs_dim}], got {tuple(obs.shape)}")
        if mask is not None:
            mask = self._mask(mask)
        if not deterministic and epsilon > 0.0:
            self._sync_rng()
        self._sync_threads()
        q, a, lp = self._net.step(obs, mask, epsilon, deterministic)
        from_np = torch.from_numpy
        return from_np(q), from_np(a), from_np(lp)


_KEY = "qnet"


def qnet_plan_for(module, example) -> Optional[QNetPlan]:
    """The cached QNetPlan of ``module`` (anything with ``qnet_layers()``) for inputs like
    ``example``, or None when the torch layers should run (``RLMODULE_FAST_BACKEND=torch``, or
    under "auto" no fused backend implements the step for this device: CUDA, or no ``_C``).
    A forced backend that cannot run it raises RuntimeError; layers no plan runs raise
    ``UnfusableLayers``."""
    key = (_KEY, dispatch.env_token(), getattr(getattr(example, "device", None), "type", None) == "cuda")
    cache = _plan_cache(module, False)
    if cache is not None:
        plan = cache.get(key, False)
        if plan is not False:
            return plan
    name = dispatch.choose(OP, "auto", example)
    plan = None
    if name != "torch":
        lock_of = getattr(module, "weights_lock", None)
        source = weakref.WeakMethod(module.qnet_layers)
        try:
            if name == "triton":
                from .qnet_triton_plan import TritonQNetPlan

                plan = TritonQNetPlan(module.qnet_layers(), source=source)
            else:
                plan = QNetPlan(module.qnet_layers(), weights_lock=lock_of() if callable(lock_of) else None,
                                source=source)
        except ValueError as e:
            raise UnfusableLayers(str(e)) from e
    with _PLANS_LOCK:
        return _plan_cache(module, True).setdefault(key, plan)


fused_qnet_plan = refusing(qnet_plan_for, "fused_qnet_plan")


def qnet_fast_path_info(module, example) -> dict:
    """{"backend", "active", "reason"} for a DQN module's exploration / inference step on inputs
    like ``example`` (see ``PPOTorchRLModule.fast_path_info``)."""
    return fast_path_info_for(module, example, OP, fused_qnet_plan)

"""The DQN step on the triton backend: ``TritonQNetPlan`` runs encoder, heads, dueling combine or
distributional expectation, mask, argmax and the epsilon-greedy draw in ONE kernel launch
(``kernels/qnet.py``) for layer widths up to 256 (RLlib's default [256, 256] included).

Image observations (RLlib's CNN encoder, ``QNetLayers.conv``): the conv stage runs first, one
``kernels/conv.py`` launch per layer as the triton policy step runs it (``triton_plan.conv_stage``:
float32 or uint8 frames, the cast in-kernel), then the one DQN kernel over the flattened features,
when those features and every layer width pad to <= 256 (small images or small explicit
``conv_filters``). RLlib's default stacks flatten wider (e.g. 11 * 11 * 256 for 84x84 Atari frames):
those layers are refused (ValueError), so CUDA steps of such a module run its torch layers and
``fast_path_info()`` says why.

Built by ``fastpath.qnet_plan.qnet_plan_for`` when ``ops.dispatch`` picks triton (CUDA inputs, or
``RLMODULE_FAST_BACKEND=triton`` under ``TRITON_INTERPRET=1``). Same contract as the cpp
``QNetPlan``: ``step(obs, mask, epsilon, deterministic) -> (q, actions, logp)``, same errors
(NaN obs / all-masked rows / masks not 0-1 / non-finite Q-values name the row; the checks sync
the host, as every eager triton step does). Draws: Philox from ``kernels.sampling.draw_seed``
(torch's generator of the device: ``torch.manual_seed`` / ``rf.manual_seed`` reproduce a run), so
the same distribution as the cpp backend, not the same numbers.

Shape legend: B batch, O flattened obs dim, A actions, N atoms.
"""
from __future__ import annotations

import threading

import torch

from ..ops import triton as tri
from ..ops.reference import canonical_activation
from .layers import _STRUCTURE_GEN, conv_geometry, has_norms
from .qnet_plan import QNetLayers, qnet_params, reread_layers, support, validate
from .triton_plan import conv_stage, pack_conv_stage


class TritonQNetPlan:
    """One epsilon-greedy DQN step per kernel launch (see the module docstring)."""

    backend = "triton"

    def __init__(self, layers: QNetLayers, source=None):
        self._source = source
        self._lock = threading.Lock()
        self._set_layers(layers)

    def __reduce__(self):
        return (TritonQNetPlan, (self.layers,))

    def _set_layers(self, layers: QNetLayers) -> None:
        from ..kernels import mlp, policy_step

        self.obs_dim = validate(layers)
        for ns, what in ((layers.af_norms, "af_norms"), (layers.vf_norms, "vf_norms")):
            if has_norms(ns) and list(ns)[-1] is not None:
                raise ValueError(f"{what}: a layer norm on the head's output layer is not in the triton DQN step")
        params = qnet_params(layers)
        tri._check_input_device(params[0], "DQN parameters")
        self.device = params[0].device
        enc, af = list(layers.encoder), list(layers.af)
        vf = list(layers.vf) if layers.vf is not None else []
        ws = [lin.weight for lin in enc + af + vf]
        bs = [lin.bias for lin in enc + af + vf]

        def aligned(ns, lins):
            return list(ns) if has_norms(ns) else [None] * len(lins)
        self._ns = aligned(layers.enc_norms, enc) + aligned(layers.af_norms, af) + aligned(layers.vf_norms, vf)
        A, N = int(layers.num_actions), int(layers.num_atoms)
        self._geo = conv_geometry(layers, "encoder")
        self._image = tuple(layers.image_shape) if self._geo else None
        feat = self.obs_dim  # the width of the rows the one kernel reads: the obs or the conv features
        if self._geo:
            Ho, Wo, Co = self._geo[-1][5]
            feat = Ho * Wo * Co
            if mlp.fused_tile_plan([feat]) is None:
                raise ValueError(f"encoder.conv: the conv stage flattens to {feat} features ({Ho}x{Wo}x{Co}); the "
                                 f"triton DQN step runs its heads in one kernel over at most "
                                 f"{mlp.MAX_FUSED_WIDTH} (this module's steps then run its torch layers)")
        widths = [feat] + [w.shape[0] for w in ws] + [w.shape[1] for w in ws]
        plan = mlp.fused_tile_plan(widths)
        if plan is None:
            raise ValueError(f"layers: widths up to {max(widths)}: the triton DQN step runs nets whose every "
                             f"width pads to <= {mlp.MAX_FUSED_WIDTH} (one kernel)")
        self.D, _kind = plan
        self.layers, self._params = layers, tuple(params)
        self._ws, self._bs = ws, bs
        self.dims = policy_step.layer_dims(ws, self.device)
        self.z = support(N, layers.v_min, layers.v_max, device=self.device) if N > 1 else None
        n_enc, n_af = len(enc), len(af)
        self.meta = dict(
            N_ENC=n_enc, AF0=n_enc, N_AF_HID=n_af - 1, AF_OUT=n_enc + n_af - 1,
            V0=n_enc + n_af, N_VF_HID=max(len(vf) - 1, 0), VF_OUT=n_enc + n_af + len(vf) - 1 if vf else 0,
            ENC_ACT=mlp.ACT_CODES[canonical_activation(layers.enc_activation)],
            HEAD_ACT=mlp.ACT_CODES[canonical_activation(layers.head_activation)],
            NATOMS=N, DUELING=bool(vf), D=self.D, A=A, PRECISION=tri._precision,
            NORM_MASK=sum(1 << i for i, n in enumerate(self._ns) if n is not None),
        )
        self._gen = _STRUCTURE_GEN[0]
        self._stamp = None
        self._packed = None

    def _refresh(self) -> None:
        from ..kernels import mlp

        if self._gen != _STRUCTURE_GEN[0]:
            reread_layers(self)
        stamp = tuple((p.data_ptr(), p._version) for p in self._params)
        if stamp == self._stamp:
            return
        with self._lock:
            if stamp != self._stamp:
                packed = mlp.pack_mlp(self._ws, self._bs, self.D, device=self.device)
                ln = mlp.pack_norms(self._ns, self.D, self.device)[0] if self.meta["NORM_MASK"] else None
                self._packed = (*packed, ln, pack_conv_stage(self._geo, self.device))
                self._stamp = stamp

    def refresh(self) -> None:
        """Repack every weight now (after writes the version counters cannot see)."""
        self._stamp = None
        self._gen = -1
        self._refresh()

    @torch.no_grad()
    def step(self, obs, mask, epsilon: float, deterministic: bool) -> tuple:
        from ..kernels import qnet, sampling

        x = tri._to_tensor(obs, "obs")
        if self._image is not None and x.dim() == 4 and tuple(x.shape[1:]) == self._image:
            x = x.reshape(x.shape[0], self.obs_dim)  # [B, H, W, C] images: rows in HWC order
        if x.dim() != 2 or x.shape[1] != self.obs_dim:
            raise tri._shape_err("obs", f"[B, {self.obs_dim}]" + (f" or [B, {', '.join(map(str, self._image))}]"
                                                                  if self._image else ""), x.shape)
        if x.dtype == torch.uint8 and self._geo:
            x = x.to(self.device)  # uint8 frames: cast (and scaled) inside the first conv kernel
        else:
            x = x.to(self.device, torch.float32)
            finite = torch.isfinite(x).all(dim=-1)
            if x.shape[0] and not bool(finite.all()):
                raise ValueError(f"obs: contains NaN or inf (row {int((~finite).nonzero()[0, 0])})")
        A = self.meta["A"]
        m = None
        if mask is not None:
            m = torch.as_tensor(mask).to(self.device, torch.float32).contiguous()
            if tuple(m.shape) != (x.shape[0], A):
                raise ValueError(f"action_mask: expected shape [{x.shape[0]}, {A}], got {tuple(m.shape)}")
            bad = (m != 0) & (m != 1)
            if bool(bad.any()):
                r, a = (int(i) for i in bad.nonzero()[0])
                raise ValueError(f"action_mask: expected 0 or 1, got {float(m[r, a])} (row {r}, action {a})")
            empty = ~(m != 0).any(dim=-1)
            if bool(empty.any()):
                raise ValueError(f"action_mask: every action is masked (row {int(empty.nonzero()[0, 0])})")
        self._refresh()
        wp, bp, ln, conv_packed = self._packed
        x = conv_stage(x, self.layers, self._geo, conv_packed)
        explore = not deterministic and epsilon > 0.0
        seed = sampling.draw_seed(self.device) if explore else self.dims
        q, actions, logp, flag = qnet.qnet_step(x, wp, bp, self.dims, self.meta, seed=seed, z=self.z, mask=m,
                                               epsilon=float(epsilon), explore=explore, ln=ln)
        if int(flag.item()):
            finite = torch.isfinite(q).all(-1)
            row = int((~finite).nonzero()[0, 0]) if bool((~finite).any()) else 0  # 0: a masked entry
            raise ValueError(f"qf_preds: contains NaN or inf (row {row})")
        return q, actions, logp

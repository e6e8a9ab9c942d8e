"""CUDA-graph mode of the Triton policy step: ``CudaGraphStep`` captures a module's whole policy
step (encoder [+ LSTM/GRU], pi head, sampling[, value head]) for ONE fixed batch size into a
``torch.cuda.CUDAGraph`` once, and replays it per call.

>>> import torch, gymnasium as gym, rlmodule_fast as rf                          # doctest: +SKIP
>>> from rlmodule_fast.fastpath import CudaGraphStep
>>> m = rf.RLModuleSpec(module_class=rf.ppo.PPOTorchRLModule, observation_space=gym.spaces.Box(-1, 1, (4,)),
...                     action_space=gym.spaces.Discrete(2), catalog_class=rf.ppo.PPOCatalog).build().cuda()
>>> step = CudaGraphStep(m, batch_size=1)                 # explore=True: forward_exploration
>>> out = step({"obs": torch.zeros(1, 4, device="cuda")})  # {"action_dist_inputs", "actions", "action_logp"}

What a call does (host side, no sync): check the batch (size, dtype, device, shape: ValueError
naming the key), check that the weights are the ones captured (else re-capture, or refuse with
``recapture=False``), copy the inputs into the static input buffers, replay the graph on the
current stream, and return the outputs. The graph runs the Triton step's ``check=False`` path:
no host sync inside, Philox key/counter on the device (``ops.triton.rng_state``; the counter is
advanced by the graph itself, so every replay draws fresh numbers), NaN/inf distribution inputs
OR-ed into the device's error flag (``ops.triton.error_flag``).

Semantics (what a user can rely on):

- Outputs are fresh by default: views of ONE new buffer per call (one clone of the static
  output buffer), never overwritten by a later call (the API's promise).
  ``return_static=True`` returns views of the static output buffer instead (no clone: faster,
  but the next call overwrites them).
- Inputs: ``{"obs": [B, *obs_shape] float32}`` on the module's CUDA device (recurrent modules:
  obs [B, *obs_shape] or [B, 1, *obs_shape] and ``"state_in"`` as the module takes it, leaves
  [B, 1, H] or [B, H]); a tensor alone is read as obs. Another batch size, dtype, device or shape
  is a ValueError naming the key. Passing ``step.static_inputs["obs"]`` itself skips the copy.
- Weights: each call compares the (storage, version) stamp of every parameter the plan reads
  (what ``fastpath.plan`` detects: optimizer steps, ``set_state``, ``load_state_dict``,
  replaced parameters or layers) with the one taken at capture. A change re-captures the graph
  (milliseconds, once) by default; ``recapture=False`` raises RuntimeError instead. Writes the
  plan cannot detect (in-place ops on ``p.data``) need ``step.recapture()`` (or
  ``module.refresh_fast_path()``, which replaces the plan and so also forces a re-capture).
- RNG: ``rf.manual_seed`` / ``torch.manual_seed`` + ``rf.manual_seed`` redraw the device's
  Philox key; the next call re-captures and follows the new key. Warm-up and capture leave the
  counter where they found it: the graph's draws are exactly the draws the same sequence of
  eager ``check=False`` steps would make.
- Errors (NaN/inf observations or weights -> NaN distribution inputs) set a bit of the device's
  error flag (shared by every ``check=False`` call on that device). ``errors=`` says when it is
  read: "lazy" (default) -- after each replay the flag is copied to pinned host memory
  asynchronously; the next call reads that copy without a sync and raises ValueError if a
  finished replay saw an error (so an error surfaces at the first call after the GPU finished
  the bad replay, never silently); "sync" -- read after every replay (one device sync per call;
  raises at the bad call itself); "manual" -- only ``step.raise_if_error()`` reads it.
  ``raise_if_error()`` (a sync) works in every mode.

Not captured: numpy inputs (copy to the device first), Discrete observation spaces (their
one-hot encoding is host work), Dict / Tuple observation spaces (action-masking modules
included: not wired yet), modules whose step is not fused (``fast_path_info()`` says why).
Calls from one stream at a time (the static buffers are reused in stream order).

Capture follows torch's CUDA-graph rules: warm-up on a side stream (Triton compiles and loads
every kernel, the weights are packed, the Philox key is drawn), capture on that stream with
``capture_error_mode="thread_local"``, a private memory pool per graph, outputs copied inside the
graph into a static buffer allocated before capture, and references kept to everything the
graph's kernels read (packed weights, RNG state, flag, the plan).

Shape legend: B batch (fixed), O flattened obs dim, H rnn hidden, NL logits, A action columns.
"""
from __future__ import annotations

import threading

import torch

from ..core.columns import Columns
from ..ops import triton as tri
from .layers import _STRUCTURE_GEN

ERRORS = ("lazy", "sync", "manual")
_ALIGN = 64  # bytes between output regions of the static buffer


class _TorchCudaGraph:
    """A ``torch.cuda.CUDAGraph`` with the warm-up / capture protocol of torch's docs."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self.graph = torch.cuda.CUDAGraph()

    def warmup(self, body, n: int) -> None:
        cur = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(cur)
        with torch.cuda.stream(self.stream):
            for _ in range(n):
                body()
        cur.wait_stream(self.stream)
        torch.cuda.synchronize(self.device)

    def capture(self, body) -> None:
        with torch.cuda.graph(self.graph, stream=self.stream, capture_error_mode="thread_local"):
            body()

    def replay(self) -> None:
        self.graph.replay()

    def release(self) -> None:
        torch.cuda.synchronize(self.device)  # no replay of it may still be in flight
        self.graph.reset()


class EmulatedGraph:
    """TEST DOUBLE, never chosen implicitly: ``CudaGraphStep(..., _graph=EmulatedGraph)`` runs
    the captured body again at every replay, so the static-buffer, freshness, RNG and error-flag
    logic is testable on CPU tensors under Triton's interpreter (tests/, the CPU dry run of
    bench/gpu_check.sh). It checks what a real capture would refuse: every device->host read
    (``Tensor.item``, ``int()``, ``.cpu()``, ...) and every host->device tensor creation
    (``torch.tensor``) inside the body raise, and the body must not read torch's CPU RNG."""

    _SYNC_NAMES = ("item", "__int__", "__bool__", "__float__", "tolist", "numpy", "cpu")

    def __init__(self, device: torch.device):
        self.device = device
        self.body = None
        self.replays = 0

    def _guarded(self, body) -> None:
        saved = {n: getattr(torch.Tensor, n) for n in self._SYNC_NAMES}
        saved_tensor = torch.tensor
        rng = torch.get_rng_state()

        def boom(name):
            def f(*a, **k):
                raise AssertionError(f"EmulatedGraph: {name} called inside the captured body "
                                     "(a host sync / host->device copy: not capturable)")
            return f
        try:
            for n in self._SYNC_NAMES:
                setattr(torch.Tensor, n, boom(f"Tensor.{n}"))
            torch.tensor = boom("torch.tensor")
            body()
        finally:
            for n, f in saved.items():
                setattr(torch.Tensor, n, f)
            torch.tensor = saved_tensor
        if not torch.equal(rng, torch.get_rng_state()):
            raise AssertionError("EmulatedGraph: the captured body drew from torch's CPU generator "
                                 "(a replayed graph would repeat that draw)")

    def warmup(self, body, n: int) -> None:
        for _ in range(n):
            body()

    def capture(self, body) -> None:
        self.body = body
        self._guarded(body)  # a real capture runs nothing; the caller restores RNG and flag after it

    def replay(self) -> None:
        self.replays += 1
        self._guarded(self.body)

    def release(self) -> None:
        self.body = None


def _require_cuda() -> None:
    if not torch.cuda.is_available():
        raise RuntimeError("cuda_graph=True needs a CUDA device: CudaGraphStep captures a torch.cuda.CUDAGraph, "
                           "and torch.cuda.is_available() is False here (the module's forward_exploration / "
                           "forward_inference run the eager fused step without one)")


def _leaves(d, prefix=()):
    """[(path, tensor)] of a nested dict of tensors, in insertion order."""
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _leaves(v, prefix + (k,))
        else:
            out.append((prefix + (k,), v))
    return out


def _nest(pairs) -> dict:
    out: dict = {}
    for path, v in pairs:
        d = out
        for k in path[:-1]:
            d = d.setdefault(k, {})
        d[path[-1]] = v
    return out


def _path_name(path) -> str:
    return "state_in" + "".join(f"[{k!r}]" for k in path)


class CudaGraphStep:
    """One module's policy step for a fixed batch size, captured in a CUDA graph and replayed per
    call (see the module docstring for the full contract).

    ``CudaGraphStep(module, batch_size, *, explore=True, compute_value=False,
    return_static=False, recapture=True, errors="lazy", warmup=3)``:

    - module: anything with ``policy_layers()`` (PPOTorchRLModule, APPO, the rf.rllib Fast*
      modules) whose parameters are on a CUDA device and whose fused step runs on the triton
      backend (``module.fast_path_info()``); a Box observation space.
    - batch_size: int >= 1, the only batch size this step takes.
    - explore: True = ``forward_exploration`` (sampled actions), False = ``forward_inference``
      (deterministic actions).
    - compute_value: also return "vf_preds" [B] f32 (needs the value head).
    - return_static / recapture / errors: see the module docstring.

    ``step(batch) -> dict``: {"action_dist_inputs": [B, NL] f32 (Gaussian: [B, 2A]), "actions":
    [B] int64 | [B, n] int64 (MultiDiscrete) | [B, A] f32, "action_logp": [B] f32[, "vf_preds":
    [B] f32][, "state_out": leaves [B, 1, H] f32]}; obs given as [B, 1, ...] adds the T=1 axis
    to the first ones, as the module does. ``static_inputs``: the input buffers (write into
    them and pass them back to skip the copy). ``captures``: how many times it captured.
    ``recapture()``, ``raise_if_error()``, ``close()``.

    Raises RuntimeError "cuda_graph=True needs a CUDA device" without CUDA; ValueError naming
    the argument for a bad batch_size / explore / errors / module.
    """

    def __init__(self, module, batch_size: int, *, explore: bool = True, compute_value: bool = False,
                 return_static: bool = False, recapture: bool = True, errors: str = "lazy",
                 warmup: int = 3, _graph=None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected an int >= 1 (the fixed batch size the graph is captured "
                             f"for), got {batch_size!r}")
        for name, v in (("explore", explore), ("compute_value", compute_value),
                        ("return_static", return_static), ("recapture", recapture)):
            if not isinstance(v, bool):
                raise ValueError(f"{name}: expected a bool, got {v!r}")
        if errors not in ERRORS:
            raise ValueError(f"errors: expected one of {ERRORS}, got {errors!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"warmup: expected an int >= 1 (eager runs before the capture), got {warmup!r}")
        if not callable(getattr(module, "policy_layers", None)):
            raise ValueError(f"module: expected a module with policy_layers() (e.g. PPOTorchRLModule), "
                             f"got {type(module).__name__}")
        space = getattr(module, "observation_space", None)
        import gymnasium as gym

        if not isinstance(space, gym.spaces.Box):
            raise ValueError(f"module: observation_space {space!r}: CudaGraphStep takes Box observations "
                             "(Discrete one-hot encoding is host work a graph cannot capture; Dict / Tuple "
                             "observations, action masks included, are not wired into the graph step yet)")
        if _graph is None:
            _require_cuda()
            _graph = _TorchCudaGraph
        param = next(iter(module.parameters()), None) if hasattr(module, "parameters") else None
        if param is None:
            raise ValueError("module: has no parameters")
        self.device = param.device
        if _graph is _TorchCudaGraph and self.device.type != "cuda":
            raise ValueError(f"module: its parameters are on {self.device}; cuda_graph=True needs the module on "
                             "a CUDA device (module.to('cuda'))")
        self._graph_cls = _graph
        self.module = module
        self.batch_size = B = batch_size
        self.explore, self.compute_value = explore, compute_value
        self.return_static, self.recapture_on_change, self.errors = return_static, recapture, errors
        self.warmup_runs = warmup
        self._obs_shape = (B, *space.shape)
        self._obs_dim = 1
        for s in space.shape:
            self._obs_dim *= int(s)
        self._plan = self._get_plan()
        impl = self._plan.impl
        if compute_value and not impl.vf:
            raise ValueError("compute_value: this module's fused step has no value head (inference_only?)")
        self._recurrent = bool(impl.recurrent)
        # static inputs: obs [B, *obs_shape]; state leaves [B, H] laid out as the module's initial state
        dev = self.device
        self._static_obs = torch.zeros(self._obs_shape, dtype=torch.float32, device=dev)
        self._state_paths = []
        static_state = None
        if self._recurrent:
            init = module.get_initial_state()
            pairs = [(p, torch.zeros((B, int(v.shape[-1])), dtype=torch.float32, device=dev))
                     for p, v in _leaves(init)]
            self._state_paths = [(p, t) for p, t in pairs]
            static_state = _nest(pairs)
        self._static_state = static_state
        self.static_inputs = {Columns.OBS: self._static_obs}
        if static_state is not None:
            self.static_inputs[Columns.STATE_IN] = static_state
        self._dev_key = tri._dev_key(dev)
        self._host_flag = None
        if errors == "lazy":
            self._host_flag = torch.zeros((1,), dtype=torch.int32, pin_memory=dev.type == "cuda")
            self._host_flag_np = self._host_flag.numpy()
        self._lock = threading.Lock()
        self._graph = None
        self._flat = None
        self._layout = None
        self._stamp = None
        self._keep = None
        self.captures = 0
        self.calls = 0
        self._capture()

    # -- plan and freshness ---------------------------------------------------------------------
    def _get_plan(self):
        from .plan import fused_plan, unfusable_reason

        example = torch.empty((self.batch_size, self._obs_dim), dtype=torch.float32, device=self.device)
        plan = fused_plan(self.module, example)
        if plan is None:
            reason = unfusable_reason(self.module) or "the dispatcher chose the torch backend for this device " \
                "(RLMODULE_FAST_BACKEND=torch, or triton unavailable: rf.backend_info())"
            raise ValueError(f"module: no fused policy step to capture ({reason})")
        if plan.backend != "triton":
            raise ValueError(f"module: its fused step runs on the {plan.backend!r} backend here; a CUDA graph "
                             "captures the triton backend (CUDA tensors)")
        return plan

    def _current_stamp(self):
        plan = self._plan
        if plan._gen != _STRUCTURE_GEN[0]:
            plan._repack()  # re-reads the module's layers after a registration (may replace plan.impl)
        impl = plan.impl
        return (impl, tuple((p.data_ptr(), p._version) for p in impl._param_list),
                tri._rng_states.get(self._dev_key), tri._error_flags.get(self._dev_key))

    def _changed(self, old, new) -> str:
        if old[0] is not new[0]:
            return "the module's layers were re-read (replaced parameters or layers, or refresh_fast_path())"
        if old[1] != new[1]:
            return "a parameter changed (optimizer step, set_state, load_state_dict, or a moved storage)"
        if old[2] is not new[2]:
            return "the device's Philox state was redrawn (rf.manual_seed)"
        return "the device's error flag was replaced"

    # -- capture --------------------------------------------------------------------------------
    def _run_plan(self):
        x = self._static_obs.reshape(self.batch_size, self._obs_dim)
        state = self._static_state
        return self._plan.step(x, state, deterministic=not self.explore, compute_value=self.compute_value,
                               check=False)

    def _out_leaves(self, res) -> list:
        keys = [Columns.ACTION_DIST_INPUTS, Columns.ACTIONS, Columns.ACTION_LOGP]
        if self.compute_value:
            keys.append(Columns.VF_PREDS)
        pairs = [((k,), res[k]) for k in keys]
        if self._recurrent:
            pairs += [((Columns.STATE_OUT,) + p, t) for p, t in _leaves(res["state_out"])]
        return pairs

    def _body(self):
        res = self._run_plan()
        for (path, t), view in zip(self._out_leaves(res), self._static_views):
            view.copy_(t)

    def _views(self, flat) -> list:
        return [flat[off:off + n].view(dt).view(shape) for (_, off, n, dt, shape) in self._layout]

    def _capture(self) -> None:
        """Warm up on a side stream, (re)capture, restore the device's RNG counter and error flag
        to what they were before (warm-up and capture are not calls), keep everything alive."""
        dev = self.device
        guard = torch.cuda.device(dev) if dev.type == "cuda" else _Null()
        with guard, torch.no_grad():
            if self._graph is not None:
                self._graph.release()
                self._graph = None
            rng = tri.rng_state(dev)          # drawn here, outside any capture
            flag = tri.error_flag(dev)
            stamp = self._current_stamp()     # with the state just drawn
            rng_saved, flag_saved = rng.clone(), flag.clone()
            g = self._graph_cls(dev)
            # warm-up 1: the output layout
            layout_res = {}

            def first():
                layout_res["pairs"] = [(p, t.shape, t.dtype) for p, t in self._out_leaves(self._run_plan())]
            g.warmup(first, 1)
            layout, off = [], 0
            for path, shape, dtype in layout_res["pairs"]:
                n = int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size()
                layout.append((path, off, n, dtype, tuple(shape)))
                off += -(-n // _ALIGN) * _ALIGN
            if self._layout is None or [(p, o, n, d, s) for p, o, n, d, s in layout] != self._layout:
                self._flat = torch.zeros((max(off, _ALIGN),), dtype=torch.uint8, device=dev)
                self._layout = layout
            self._static_views = self._views(self._flat)
            g.warmup(self._body, self.warmup_runs)
            g.capture(self._body)
            rng.copy_(rng_saved)
            flag.copy_(flag_saved)
            impl = stamp[0]
            self._keep = (impl, getattr(impl, "_packed", None), dict(getattr(impl, "_lstm_bias", {}) or {}),
                          list(tri._pack_cache.entries.values()), dict(tri._dims), rng, flag, self._plan)
            self._graph = g
            self._stamp = stamp
            self.captures += 1

    def recapture(self) -> None:
        """Capture again now (after weight writes the plan cannot detect: in-place ops on ``p.data``)."""
        with self._lock:
            self._plan.refresh()
            self._capture()

    # -- errors ---------------------------------------------------------------------------------
    def raise_if_error(self) -> None:
        """Read the device's error flag now (a sync) and raise ValueError if any replay (or other
        ``check=False`` call on this device) saw NaN/inf since the last reset; resets it."""
        with self._lock:
            self._raise_now(f"a replay up to call #{self.calls}")

    def _raise_now(self, which: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # in-flight flag copies land before the reset
        bits = tri.last_error(self.device)
        if self._host_flag is not None:
            self._host_flag_np[0] = 0
        if bits:
            tri.error_flag(self.device).zero_()
            what = ", ".join(w for b, w in tri._ERR_WHAT if bits & b) or f"error bits {bits}"
            raise ValueError(f"CudaGraphStep: {which} saw NaN or inf in {what} (NaN/inf observations or "
                             "weights); the outputs of the calls since the last clean check are not valid. "
                             "The flag is the device's check=False flag (ops.triton.error_flag); it is reset now")

    # -- the call -------------------------------------------------------------------------------
    def _check_tensor(self, t, what: str, shapes) -> torch.Tensor:
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{what}: expected a torch tensor on {self.device}, got {type(t).__name__} "
                             "(copy it to the device first: torch.as_tensor(x, device=...))")
        if t.dtype != torch.float32:
            raise ValueError(f"{what}: expected dtype torch.float32 (the captured graph's), got {t.dtype}")
        if t.device != self.device:
            raise ValueError(f"{what}: on {t.device}, expected {self.device} (the captured graph's device)")
        if tuple(t.shape) not in shapes:
            exp = " or ".join(str(list(s)) for s in shapes)
            extra = ""
            if t.dim() >= 1 and t.shape[0] != self.batch_size:
                extra = f" (batch size {t.shape[0]}; this graph was captured for batch_size={self.batch_size})"
            raise ValueError(f"{what}: expected shape {exp}, got {list(t.shape)}{extra}")
        return t

    def __call__(self, batch) -> dict:
        """One replay: see the class docstring."""
        if isinstance(batch, dict):
            if Columns.OBS not in batch:
                raise ValueError(f"batch: missing key {Columns.OBS!r}")
            obs, state = batch[Columns.OBS], batch.get(Columns.STATE_IN)
        else:
            obs, state = batch, None
        B = self.batch_size
        obs_shapes = (self._obs_shape,)
        if self._recurrent:
            obs_shapes += ((B, 1, *self._obs_shape[1:]),)
        obs = self._check_tensor(obs, Columns.OBS, obs_shapes)
        with_t = self._recurrent and obs.dim() == len(self._obs_shape) + 1
        if self._recurrent:
            if state is None:
                raise ValueError(f"batch: missing key {Columns.STATE_IN!r} (this module is recurrent)")
            leaves = []
            for path, static in self._state_paths:
                v = state
                for k in path:
                    if not isinstance(v, dict) or k not in v:
                        raise ValueError(f"{_path_name(path)}: missing (expected {list(static.shape)} "
                                         f"or [{B}, 1, {static.shape[1]}])")
                    v = v[k]
                H = static.shape[1]
                leaves.append((self._check_tensor(v, _path_name(path), ((B, 1, H), (B, H))), static))
        elif state is not None:
            raise ValueError(f"batch: {Columns.STATE_IN!r} given, but this module is not recurrent")
        with self._lock, torch.no_grad():
            dev = self.device
            guard = (torch.cuda.device(dev) if dev.type == "cuda" and dev.index != torch.cuda.current_device()
                     else None)
            if guard is not None:
                guard.__enter__()
            try:
                return self._replay(obs, leaves if self._recurrent else (), with_t)
            finally:
                if guard is not None:
                    guard.__exit__(None, None, None)

    def _replay(self, obs, state_leaves, with_t: bool) -> dict:
        if self._graph is None:
            raise RuntimeError("CudaGraphStep: closed (build a new one)")
        if self._host_flag is not None and self._host_flag_np[0]:
            self._raise_now(f"a replay before call #{self.calls + 1}")
        stamp = self._current_stamp()
        if stamp[0] is not self._stamp[0] or stamp[1] != self._stamp[1] or stamp[2] is not self._stamp[2] \
                or stamp[3] is not self._stamp[3]:
            if stamp[0].device != self.device:
                raise RuntimeError(f"CudaGraphStep: the module moved to {stamp[0].device}; this graph was captured "
                                   f"on {self.device} (build a new CudaGraphStep)")
            if not self.recapture_on_change:
                raise RuntimeError(f"CudaGraphStep: {self._changed(self._stamp, stamp)} since the capture, and "
                                   "recapture=False: call step.recapture() (or build it with recapture=True)")
            self._capture()
        if obs is not self._static_obs:
            self._static_obs.view(obs.shape).copy_(obs)
        for v, static in state_leaves:
            if v is not static:
                static.copy_(v.reshape(static.shape))
        self._graph.replay()
        self.calls += 1
        if self.errors == "sync":
            self._raise_now(f"call #{self.calls}")
        elif self._host_flag is not None:
            self._host_flag.copy_(tri._error_flags[self._dev_key], non_blocking=True)
        flat = self._flat if self.return_static else self._flat.clone()
        views = self._static_views if self.return_static else self._views(flat)
        out = {}
        for (path, *_), v in zip(self._layout, views):
            if path[0] == Columns.STATE_OUT:
                out.setdefault(Columns.STATE_OUT, []).append((path[1:], v.unsqueeze(1)))
            else:
                out[path[0]] = v.unsqueeze(1) if with_t else v
        if Columns.STATE_OUT in out:
            out[Columns.STATE_OUT] = _nest(out[Columns.STATE_OUT])
        return out

    def close(self) -> None:
        """Release the graph and its memory pool (the step cannot be called afterwards)."""
        with self._lock:
            if self._graph is not None:
                self._graph.release()
            self._graph, self._keep, self._flat, self._static_views = None, None, None, []

    def __repr__(self) -> str:
        return (f"CudaGraphStep({type(self.module).__name__}, batch_size={self.batch_size}, explore={self.explore}, "
                f"device={self.device}, captures={self.captures}, calls={self.calls})")


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

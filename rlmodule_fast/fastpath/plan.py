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

Backends: "cpp" (``cpp_plan.CppPolicyPlan``: the C++ extension, CPU tensors / numpy), "triton"
(``triton_plan.TritonPolicyPlan``: CUDA), "auto": ``ops.dispatch.choose("policy_step", ...)``
picks one for the parameters' device (the one place that chooses a backend).

Shape legend: B batch, O flattened obs dim, H rnn hidden, D dist-input dim, A action columns.
"""
from __future__ import annotations

import contextlib
import operator
import threading
import warnings
import weakref
from typing import Optional

from ..core.torch_rl_module import WeightsLockMixin
from ..ops import dispatch
from . import lane
from .layers import _STRUCTURE_GEN, PolicyLayers, _params

_NULL_LOCK = contextlib.nullcontext()


class PolicyPlan:
    """One policy step per backend call, weights packed once.

    ``PolicyPlan(layers: PolicyLayers, backend="cpp", weights_lock=None)``; ``backend``: "cpp",
    "triton" or "auto", resolved by ``ops.dispatch.choose("policy_step", backend, <a parameter>)``
    (the backend's own plan is ``self.impl``); ``weights_lock``: a
    (re-entrant) lock that whoever updates the weights as a whole holds for the whole update
    (``plan_for`` passes the module's ``weights_lock()`` when it has one); the cpp plan reads
    the parameters under it when it repacks, so every step sees all-old or all-new weights.
    ``step(obs, state=None, *, deterministic=False, compute_value=False, out=None) -> dict``:

    - obs: [B, O] float32 (float64 / non-contiguous are converted) numpy array or CPU tensor.
    - state (recurrent plans): {"h": [B, H], "c": [B, H]} (GRU: "h" only; [B, 1, H] accepted),
      nested {"actor": {...}, "critic": {...}} when the critic has its own rnn; None = zeros.
    - returns {"action_dist_inputs": [B, D] f32, "actions": [B] int64 (categorical) |
      [B, n] int64 (multi_categorical) | [B, A] f32 (diag_gaussian; squashed_gaussian: SAC's
      tanh(u) in [-1, 1]), "action_logp": [B] f32,
      "vf_preds": [B] f32 (compute_value=True), "state_out": same layout as state}, the same
      kind (numpy / tensor) as obs. Outputs are fresh every call (the caller owns them);
      ``out=`` takes a dict of caller-owned contiguous buffers with those keys instead (written
      in place and returned; rnn plans also need "state_out").
    - check=False (triton only): the graph-capturable step (no host sync; NaN/inf reported through
      ``ops.triton.error_flag``, draws from ``ops.triton.rng_state``); ``fastpath.CudaGraphStep``
      captures it.
    - mask (categorical kinds): None or RLlib's action mask [B, D] (1 allowed, 0 masked; float,
      int or bool): masked entries of ``action_dist_inputs`` are RLlib's FLOAT_MIN, a masked
      action is never sampled (nor the argmax), ``action_logp`` normalises over the allowed
      actions; a row (multi-categorical: a segment) with none allowed, or a value other than
      0/1, is a ValueError naming the row.

    ``deterministic`` takes the mode (argmax / mean). Draws follow the cpp backend's stream
    (see ``ops.cpp``): reproducible under ``torch.manual_seed`` / ``rf.manual_seed``. Safe to
    step from several threads (one plan or several); a large batch is split over
    ``torch.get_num_threads()`` threads (``RLMODULE_FAST_NUM_THREADS`` overrides).
    """

    def __init__(self, layers: PolicyLayers, backend: str = "cpp", weights_lock=None, source=None):
        params = _params(layers)
        name = dispatch.choose("policy_step", backend, params[0] if params else None)
        if name == "torch":
            if (backend or "auto").lower() == "torch":
                raise ValueError("backend='torch': a PolicyPlan runs on 'cpp' or 'triton' (the torch "
                                 "policy step is the module's own forward; its truth is ops.reference.policy_step)")
            raise RuntimeError(f"backend={backend!r}: ops.dispatch chose 'torch' for the policy step "
                               f"({dispatch.explain('policy_step', params[0] if params else None)[1]}); "
                               "a PolicyPlan needs 'cpp' or 'triton'")
        self.backend = name
        self.layers = layers
        self.weights_lock = weights_lock
        self._source = source          # weakref.WeakMethod -> the module's policy_layers (or None)
        self._gen = _STRUCTURE_GEN[0]
        self._params = params
        self.impl = self._build(layers)

    def _build(self, layers: PolicyLayers):
        """The backend's plan for ``layers`` (cpp_plan.CppPolicyPlan or triton_plan.TritonPolicyPlan)."""
        if self.backend == "triton":
            from .triton_plan import TritonPolicyPlan

            return TritonPolicyPlan(layers)
        from .cpp_plan import CppPolicyPlan

        return CppPolicyPlan(layers, self.weights_lock)

    def __reduce__(self):
        """Pickle / deepcopy rebuild the plan from its layers (packed buffers never travel; nor
        does the weights lock, which belongs to the module)."""
        return (PolicyPlan, (self.layers, self.backend))

    # -- freshness ----------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read the module's layers and repack every weight now, whatever the freshness check
        says (after writes it cannot see: in-place ops on ``p.data``, writes through a numpy view)."""
        lock = self.weights_lock
        with (lock if lock is not None else _NULL_LOCK):
            replaced = self._reread_layers(force=True)
            if self.backend == "triton":
                if not replaced:  # a new TritonPolicyPlan packs on its first step
                    self.impl = self._build(self.layers)
                return
            self.impl._repack(force=True)

    def _reread_layers(self, force: bool = False) -> bool:
        """After a parameter / submodule registration somewhere: take the module's current
        layers when their parameters are not the ones this plan holds (validated again).
        True when the layers were replaced. The generation is taken only once they were read and
        accepted: layers the plan refuses raise again at every step (never the old weights)."""
        gen = _STRUCTURE_GEN[0]  # read first: a registration while re-reading is seen next step
        get_layers = self._source() if self._source is not None else None
        if get_layers is None:  # no module to re-read (a plan built from bare layers)
            self._gen = gen
            return False
        layers = get_layers()
        params = _params(layers)
        if not force and len(params) == len(self._params) and all(map(operator.is_, params, self._params)):
            self._gen = gen
            return False
        if self.backend == "triton":
            self.impl = self._build(layers)
        else:
            self.impl.set_layers(layers, params)
        self.layers, self._params = layers, params
        self._gen = gen
        return True

    def _repack(self) -> None:
        """Re-read the layers after a structure change, then bring the packed copy up to date
        (under the module's weights lock, taken first: it is re-entrant)."""
        lock = self.weights_lock
        with (lock if lock is not None else _NULL_LOCK):
            if self._gen != _STRUCTURE_GEN[0]:
                self._reread_layers()
            if self.backend == "cpp":
                self.impl._repack()

    # -- the step -----------------------------------------------------------------------------------
    def step(self, obs, state=None, *, deterministic: bool = False, compute_value: bool = False, out=None,
             mask=None, check: bool = True) -> dict:
        if self._gen != _STRUCTURE_GEN[0]:
            self._repack()
        kw = {} if mask is None else {"mask": mask}
        if not check:  # graph-safe: no host sync (``TritonPolicyPlan.step``; ``fastpath.CudaGraphStep``)
            if self.backend != "triton" or out is not None:
                raise ValueError(f"check=False: only the triton plan has the graph-safe path (this plan: "
                                 f"{self.backend!r}{', out=' if out is not None else ''})")
            return self.impl.step(obs, state, deterministic=deterministic, compute_value=compute_value,
                                  check=False, **kw)
        if out is None:
            return self.impl.step(obs, state, deterministic=deterministic, compute_value=compute_value, **kw)
        if self.backend != "cpp":
            raise ValueError("out=: not supported by the triton plan")
        return self.impl.step(obs, state, deterministic=deterministic, compute_value=compute_value, out=out, **kw)

    def step_flat(self, obs, deterministic: bool, mask=None) -> tuple:
        """The env-runner hot path of a feed-forward cpp plan: obs [B, O] (numpy or CPU tensor)
        -> (action_dist_inputs, actions, action_logp) as fresh torch tensors, no value head
        (``mask``: as ``step``)."""
        if self._gen != _STRUCTURE_GEN[0]:
            self._repack()
        return self.impl.step_flat(obs, deterministic, mask)


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
            try:
                layers = module.policy_layers()
                plan = PolicyPlan(layers, backend=name, weights_lock=lock_of() if callable(lock_of) else None,
                                  source=weakref.WeakMethod(module.policy_layers))
            except ValueError as e:  # layers no fused step runs (not a bad batch or environment)
                raise UnfusableLayers(str(e)) from e
    with _PLANS_LOCK:
        return _plan_cache(module, True).setdefault(key, plan)


class UnfusableLayers(ValueError):
    """A module's layers are not ones the fused step runs (``policy_layers()`` or the plan's
    checks refused them)."""


_UNFUSABLE_ATTR = "_rf_unfusable"


def refusing(plan_for_fn, name: str):
    """``fused(module, example)``: ``plan_for_fn(module, example)``, except that a module whose
    layers no fused step runs (``UnfusableLayers``, e.g. a catalog that builds its own heads) gets
    None from then on, after one UserWarning: its own torch forward runs, and
    ``unfusable_reason(module)`` says why. Any other error (a forced backend that cannot run, a bad
    RLMODULE_FAST_BACKEND value) propagates. (A closure, not a wrapper call: the warning's
    stacklevel counts the frames.)"""

    def fused(module, example):
        if module.__dict__.get(_UNFUSABLE_ATTR):
            return None
        try:
            return plan_for_fn(module, example)
        except UnfusableLayers as e:
            mark_unfusable(module, f"{type(e.__cause__ or e).__name__}: {e}")
            return None
    fused.__name__ = fused.__qualname__ = name
    fused.__doc__ = f"``{plan_for_fn.__name__}``, or None for good once the module's layers are refused (``refusing``)."
    return fused


fused_plan = refusing(plan_for, "fused_plan")


def fast_path_info_for(module, example, op: str = "policy_step", fused=None) -> dict:
    """{"backend": "cpp" | "triton" | "torch", "active": bool, "reason": str}: which path a
    module's exploration / inference step takes for inputs like ``example``: ``op``'s dispatch,
    then ``fused(module, example)`` (default ``fused_plan``; None: the module's torch layers).
    (Whether the next call takes the fast lane over that path: ``fastpath.lane.armed``.)"""
    fused = fused_plan if fused is None else fused
    try:
        name, reason = dispatch.explain(op, example)
        if name == "torch":
            return {"backend": "torch", "active": False, "reason": reason}
        if fused(module, example) is None:
            return {"backend": "torch", "active": False, "reason": unfusable_reason(module)}
    except (RuntimeError, ValueError) as e:
        return {"backend": "torch", "active": False, "reason": f"{type(e).__name__}: {e}"}
    return {"backend": name, "active": True, "reason": reason}


def mark_unfusable(module, reason: str) -> None:
    """Make ``fused_plan`` return None for ``module`` (until ``refresh``), warning once."""
    module.__dict__[_UNFUSABLE_ATTR] = reason
    lane.drop(module)
    warnings.warn(f"{type(module).__name__}: the fused step cannot run this module ({reason}); "
                  "forward_exploration / forward_inference run its torch layers", UserWarning, stacklevel=4)


def unfusable_reason(module) -> str:
    """Why ``fused_plan`` returns None for ``module`` ("" when nothing was refused)."""
    return module.__dict__.get(_UNFUSABLE_ATTR, "")


def refresh(module) -> None:
    """Re-read ``module``'s layers and repack the weights of every plan cached for it (after
    writes a step cannot detect; see the module docstring); layers refused before are tried
    again."""
    module.__dict__.pop(_UNFUSABLE_ATTR, None)
    lane.drop(module)
    for plan in {id(p): p for p in (_plan_cache(module, False) or {}).values() if p is not None}.values():
        plan.refresh()



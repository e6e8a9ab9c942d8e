"""The per-call fast lane: ``forward_exploration`` / ``forward_inference`` at one C++ call.

At batch 1 the fused C++ step computes in ~2 µs, while the Python path around it (spec checks,
backend choice, plan lookup, weights freshness, RNG and thread sync, dispatch frames) costs ~6 µs
more. After that path ran a cpp plan on a plain batch -- exactly ``{"obs": float32 [B, O]}``, a
C-contiguous numpy array or a CPU tensor without grad -- it arms a ``_C.Lane`` on the module. The
module's public forward tries the lane first; the lane re-reads, in C++, everything the Python
path's decisions depend on (the batch's form, RLMODULE_FAST_BACKEND, the layer-structure
generation, the packed weights' stamp, torch's initial seed, torch's thread count) and answers
None whenever any of them differs from when it was armed; the Python path then runs as before
(repacking, re-keying, re-choosing, raising its errors) and arms a fresh lane. So the lane
decides nothing: outputs and random streams are the Python path's, bit for bit.

A lane lives in the module's ``__dict__`` (never pickled or deep-copied: ``__getstate__`` drops
it); ``refresh`` and any attribute set on the module drop it. Modules arm one only when their
class keeps the forward methods of the class that arms it (a subclass overriding
``_forward_exploration`` or a spec runs its own code, every call).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..core.rl_module import _LANE_ATTR as ATTR
from ..ops import dispatch
from .layers import _STRUCTURE_GEN

# What a module class must not override for the lane to stand in for its forward methods.
_FORWARD_NAMES = ("forward_exploration", "forward_inference", "_forward_exploration", "_forward_inference",
                  "input_specs_exploration", "input_specs_inference", "output_specs_exploration",
                  "output_specs_inference")
_CLASS_OK: dict = {}


def _cpp():
    from ..ops import cpp
    return cpp


def eligible(module, base: type, extra: tuple = ()) -> bool:
    """Whether a lane may stand in for ``module``'s forwards: its class resolves every forward
    method (and the ``extra`` names) to ``base``'s, and its instance shadows none of them."""
    names = _FORWARD_NAMES + extra
    cls = type(module)
    key = (cls, base, extra)
    ok = _CLASS_OK.get(key)
    if ok is None:
        ok = _CLASS_OK[key] = all(getattr(cls, n, None) is getattr(base, n, None) for n in names)
    if not ok:
        return False
    d = module.__dict__
    return not any(n in d for n in names)


def takes(batch, obs_dim: int) -> bool:
    """Whether a lane takes this batch's form (its one definition is ``_C.lane_takes``)."""
    cpp = _cpp()
    return cpp._C is not None and cpp._C.lane_takes(batch, obs_dim, torch.Tensor)


def _arm(module, batch, net, obs_dim: int, params: tuple, stamp, gen, base: type, extra: tuple,
         out_keys: tuple) -> None:
    """Re-arm the module's lane over ``net`` (cheap: one call), or build one when the module has
    none for this net and qualifies (``eligible``); none when the batch is not one a lane takes."""
    d = module.__dict__
    if stamp is None:  # the weights moved while packing: the next step repacks
        d.pop(ATTR, None)
        return
    lane = d.get(ATTR)
    if lane is None or lane.net is not net:
        cpp = _cpp()
        env_data = getattr(dispatch, "_ENV_DATA", None)
        if cpp._C is None or env_data is None or not eligible(module, base, extra) or not takes(batch, obs_dim):
            return
        lane = cpp._C.Lane(net, obs_dim, _STRUCTURE_GEN, env_data, dispatch._ENV_KEY, cpp._initial_seed,
                           cpp._keyed_from, None if cpp._ENV_THREADS else torch.get_num_threads,
                           cpp._threads_seen, cpp._MAX_THREADS, torch.from_numpy, torch.Tensor, out_keys)
        d[ATTR] = lane
    lane.arm(batch, params, stamp, gen, dispatch.env_token())


def arm_policy(module, plan, batch: dict, base: type, extra: tuple, out_keys: tuple) -> None:
    """After ``plan`` (a cpp ``PolicyPlan``, feed-forward) ran ``module``'s step on ``batch`` with
    no action mask: arm its lane. ``base``/``extra``: see ``eligible``; ``out_keys``: the columns of
    the step's (action_dist_inputs, actions, action_logp), in that order."""
    impl = plan.impl
    _arm(module, batch, impl._net, impl.obs_dim, impl._watch_policy, impl._packed_policy, plan._gen, base, extra,
         out_keys)


def arm_qnet(module, plan, batch: dict, base: type, extra: tuple, out_keys: tuple) -> None:
    """As ``arm_policy``, for a cpp ``QNetPlan`` (the DQN step; the lane takes epsilon per call)."""
    _arm(module, batch, plan._net, plan.obs_dim, plan._params, plan._packed, plan._gen, base, extra, out_keys)


def drop(module) -> None:
    """Forget ``module``'s lane (the next call takes the Python path, which may arm a new one)."""
    module.__dict__.pop(ATTR, None)


def lane_of(module) -> Optional[object]:
    """``module``'s lane (armed or not), or None."""
    return module.__dict__.get(ATTR)


def armed(module) -> bool:
    """Whether ``module`` has an armed lane: its next plain ``{"obs": float32 [B, O]}`` forward
    runs at one C++ call if nothing it checks has changed."""
    lane = module.__dict__.get(ATTR)
    return bool(lane is not None and lane.armed)

"""The per-call fast lane: ``forward_exploration`` / ``forward_inference`` at one C++ call.

At batch 1 the fused C++ step computes in ~2 µs, while the Python path around it (spec checks,
backend choice, plan lookup, weights freshness, RNG and thread sync, dispatch frames) costs ~6 µs
more. After that path ran a cpp plan on a plain batch -- exactly ``{"obs": float32 [B, O]}``, a
C-contiguous numpy array or a CPU tensor without grad; for PPO's recurrent step also
``{"obs": [B, 1, O] or [B, O], "state_in": {"h": [B, 1, H] or [B, H], ...}}`` (see ``takes``), where
the Python path costs ~100 µs around a ~55 µs LSTM step at H=256 (every line it touches is a cache
miss after the 2 MB weight stream) and the lane ~25 µs -- it arms a ``_C.Lane`` on the module. The
module's public forward tries the lane first; the lane re-reads, in C++, everything the Python
path's decisions depend on (the batch's form, RLMODULE_FAST_BACKEND, the layer-structure
generation, the packed weights' stamp, torch's initial seed, torch's thread count) and answers
None whenever any of them differs from when it was armed; the Python path then runs as before
(repacking, re-keying, re-choosing, raising its errors) and arms a fresh lane. So the lane
decides nothing: outputs and random streams are the Python path's, bit for bit.

A lane lives in the module's ``__dict__`` (never pickled or deep-copied: ``__getstate__`` drops
it); ``refresh`` and any attribute set on the module drop it. Modules arm one only when their
class keeps the forward methods of the class that arms it as that class defined them
(``register``: a subclass overriding ``_forward_exploration`` or a spec, or a class patched at
run time, runs its own code, every call). A lane is built under its class's version tag
(CPython changes it whenever the class or a base is modified), so a class patched after arming
sends every call back to the Python path, which checks the methods again.
"""
from __future__ import annotations

import weakref
from typing import Optional

import torch

from ..core.rl_module import _LANE_ATTR as ATTR
from ..ops import dispatch
from .layers import _STRUCTURE_GEN

# What a module class must not override for the lane to stand in for its forward methods.
_FORWARD_NAMES = ("forward_exploration", "forward_inference", "_forward_exploration", "_forward_inference",
                  "input_specs_exploration", "input_specs_inference", "output_specs_exploration",
                  "output_specs_inference")
# (base, extra) -> ((name, the object base resolved it to when registered), ...)
_ORIGINALS: dict = {}
# class -> {(base, extra): (the class's version tag, whether it keeps base's methods then)}
_CLASS_OK: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _cpp():
    from ..ops import cpp
    return cpp


def register(base: type, extra: tuple = ()) -> None:
    """Record ``base``'s forward methods (and the ``extra`` names its fused forward calls) as
    defined; call once, right after the class statement. A lane arms for ``base`` (or a subclass)
    only while its class resolves every one of them to these objects."""
    _ORIGINALS[(base, extra)] = tuple((n, getattr(base, n, None)) for n in _FORWARD_NAMES + extra)


def _class_tag(cls: type, base: type, extra: tuple) -> int:
    """``cls``'s version tag when it resolves every registered name of ``base`` to the recorded
    object, else 0 (also when ``base`` was never registered or the class has no tag)."""
    originals, C = _ORIGINALS.get((base, extra)), _cpp()._C
    if originals is None or C is None:
        return 0
    tag = C.type_version(cls)  # read first: a change during the check makes the tag stale
    if not tag:
        return 0
    per_class = _CLASS_OK.get(cls)
    if per_class is None:
        per_class = _CLASS_OK.setdefault(cls, {})
    hit = per_class.get((base, extra))
    if hit is None or hit[0] != tag:
        hit = per_class[(base, extra)] = (tag, all(getattr(cls, n, None) is v for n, v in originals))
    return tag if hit[1] else 0


def _eligible_tag(module, base: type, extra: tuple) -> int:
    """Whether a lane may stand in for ``module``'s forwards: its class's version tag when the
    class resolves every forward method (and the ``extra`` names) to the objects
    ``register(base, extra)`` recorded and its instance shadows none of them, else 0."""
    tag = _class_tag(type(module), base, extra)
    d = module.__dict__
    return 0 if not tag or any(n in d for n in _FORWARD_NAMES + extra) else tag


def takes(batch, net) -> bool:
    """Whether a lane over ``net`` (a ``_C.Policy`` / ``_C.QNet``, e.g. ``lane_of(m).net``) takes
    this batch's form (its one definition is ``_C.lane_takes``): ``{"obs": float32 [B, O]}``; for a
    recurrent policy ``{"obs": [B, O] or [B, 1, O], "state_in": {"h": [B, (1,) H](, "c")}}``
    (nested ``{"actor": ..., "critic": ...}`` when the critic has its own rnn); C-contiguous,
    aligned numpy arrays or CPU tensors without grad."""
    cpp = _cpp()
    return cpp._C is not None and cpp._C.lane_takes(batch, net, torch.Tensor)


def _arm(module, batch, net, params: tuple, stamp, gen, base: type, extra: tuple, out_keys: tuple) -> None:
    """Re-arm the module's lane over ``net`` (cheap: one call), or build one when the module has
    none for this net (or its class changed since it was built) and qualifies (``_eligible_tag``);
    none when the batch is not one a lane takes."""
    if stamp is None:  # the weights moved while packing: the next step repacks
        drop(module)
        return
    d = module.__dict__
    lane = d.get(ATTR)
    if lane is not None and (lane.net is not net or not lane.class_fresh):
        drop(module)  # another net, or the class changed since it was built: build again
        lane = None
    if lane is None:
        cpp = _cpp()
        env_data = getattr(dispatch, "_ENV_DATA", None)
        if cpp._C is None or env_data is None or not takes(batch, net):
            return
        tag = _eligible_tag(module, base, extra)
        if not tag:
            return
        lane = cpp._C.Lane(net, _STRUCTURE_GEN, env_data, dispatch._ENV_KEY, cpp._initial_seed,
                           cpp._keyed_from, None if cpp._ENV_THREADS else torch.get_num_threads, cpp._ENV_THREADS,
                           cpp._threads_seen, cpp._MAX_THREADS, torch.from_numpy, torch.Tensor, out_keys,
                           type(module), tag)
        d[ATTR] = lane
    lane.arm(batch, params, stamp, gen, dispatch.env_token())


def arm_policy(module, plan, batch: dict, base: type, extra: tuple, out_keys: tuple) -> None:
    """After ``plan`` (a cpp ``PolicyPlan``) ran ``module``'s step without the value head on
    ``batch`` with no action mask: arm its lane. ``base``/``extra``: see ``_eligible_tag``; ``out_keys``:
    the columns of the step's (action_dist_inputs, actions, action_logp), in that order. A
    recurrent plan's lane also returns ``"state_out"`` (every leaf [B, 1, H]; the other outputs
    with a T axis when obs had one), as PPO's recurrent branch does."""
    impl = plan.impl
    _arm(module, batch, impl._net, impl._watch_policy, impl._packed_policy, plan._gen, base, extra,
         out_keys)


def arm_qnet(module, plan, batch: dict, base: type, extra: tuple, out_keys: tuple) -> None:
    """As ``arm_policy``, for a cpp ``QNetPlan`` (the DQN step; the lane takes epsilon per call)."""
    _arm(module, batch, plan._net, plan._params, plan._packed, plan._gen, base, extra, out_keys)


def drop(module) -> None:
    """Forget ``module``'s lane (the next call takes the Python path, which may arm a new one)."""
    module.__dict__.pop(ATTR, None)


def lane_of(module) -> Optional[object]:
    """``module``'s lane (armed or not), or None."""
    return module.__dict__.get(ATTR)


def armed(module) -> bool:
    """Whether ``module`` has an armed lane: its next forward on a batch the lane takes (``takes``)
    runs at one C++ call if nothing it checks has changed."""
    lane = module.__dict__.get(ATTR)
    return bool(lane is not None and lane.armed)

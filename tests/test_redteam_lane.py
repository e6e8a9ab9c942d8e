"""Red-team tests of the fast lane (``rlmodule_fast.fastpath.lane``, ``csrc/lane_bind.h``).

Each test is a sequence of public operations after which a lane call returned something other
than the Python path (``module._run``) would have, or leaked, or read freed memory, before its
fix. The lane may only answer when nothing the Python path reads has changed; everything else
(what was tried and found fine) is listed in the report of branch ``redlane``, not tested here.
"""
from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import weakref

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

import rlmodule_fast as rf
from rlmodule_fast.dqn import DQNTorchRLModule
from rlmodule_fast.fastpath import lane as L
from rlmodule_fast.ops import dispatch
from rlmodule_fast.ppo import PPOTorchRLModule
from rlmodule_fast.sac import SACTorchRLModule
from test_fast_lane import CPP, KINDS, kw, make, obs_batch, same

pytestmark = pytest.mark.skipif(not CPP["available"], reason=f"cpp backend unavailable: {CPP['reason']}")

CLASSES = {"ppo-categorical": PPOTorchRLModule, "dqn": DQNTorchRLModule, "sac-continuous": SACTorchRLModule}


def _armed(kind: str, B: int = 3):
    m = make(kind)
    batch = obs_batch(B)
    m.forward_exploration(batch, **kw(kind))
    m.forward_inference(batch)
    assert L.armed(m)
    return m, batch


# ------------------------------------------------------------------------------ class-level patches

@pytest.mark.parametrize("kind", list(CLASSES))
def test_class_level_override_after_arming_runs_every_call(kind, monkeypatch):
    """Patching the module's class after the lane was armed: the patched method runs every call
    (the lane was armed under the class as it was, and used to keep answering)."""
    m, batch = _armed(kind)
    cls = CLASSES[kind]
    orig = cls._forward_exploration
    calls = []

    def counted(self, b, **k):
        calls.append(1)
        return orig(self, b, **k)

    monkeypatch.setattr(cls, "_forward_exploration", counted)
    for i in range(4):
        rf.manual_seed(2)
        got = m.forward_exploration(batch, **kw(kind))
        assert len(calls) == 2 * i + 1, "the class's _forward_exploration was skipped"
        rf.manual_seed(2)
        same(got, m._run("exploration", batch, kw(kind)))
    assert not L.armed(m)
    monkeypatch.undo()  # the class as defined again: the lane stands in again
    m.forward_exploration(batch, **kw(kind))
    assert L.armed(m)
    rf.manual_seed(3)
    got = m.forward_exploration(batch, **kw(kind))
    rf.manual_seed(3)
    same(got, m._run("exploration", batch, kw(kind)))


class _HalfObsDQN(DQNTorchRLModule):
    def _split_obs(self, obs):
        o, mask = super()._split_obs(obs)
        return o * 0.5, mask


class _HalfObsSAC(SACTorchRLModule):
    def _split_obs(self, obs, key="obs"):
        o, mask = super()._split_obs(obs, key)
        return o * 0.5, mask


@pytest.mark.parametrize("kind,cls", [("dqn", _HalfObsDQN), ("sac-continuous", _HalfObsSAC)], ids=["dqn", "sac"])
def test_subclass_observation_hook_runs_every_call(kind, cls):
    """A subclass preprocessing observations in ``_split_obs`` (read by DQN's and SAC's fused
    step): the lane used to arm and skip it from the second call on."""
    m = make(kind, cls=cls)
    batch = obs_batch(3)
    first = m.forward_inference(batch)
    for _ in range(3):
        same(m.forward_inference(batch), first)
    same(first, make(kind)._run("inference", {"obs": batch["obs"] * 0.5}, {}))


def test_instance_override_set_while_another_step_arms(monkeypatch):
    """``m._forward_exploration = f`` while another thread steps ``m``: a lane armed between the
    old drop (before the write) and the write itself used to survive and skip ``f``. The other
    thread's step is run exactly there, from inside ``nn.Module.__setattr__``."""
    m, batch = _armed("ppo-categorical")
    marker = torch.full((3,), 7.0)
    set_attr = torch.nn.Module.__setattr__

    def set_with_a_step_in_between(self, name, value):
        if name == "_forward_exploration":
            self.forward_exploration(batch)
        set_attr(self, name, value)

    monkeypatch.setattr(torch.nn.Module, "__setattr__", set_with_a_step_in_between)
    m._forward_exploration = lambda b, **k: {"action_dist_inputs": marker, "actions": marker, "action_logp": marker}
    assert m.forward_exploration(batch)["action_dist_inputs"] is marker


# ------------------------------------------------------------------------------ DQN's epsilon

DQN_BAD = {
    # (batch, t): the Python path's spec check refuses the batch before it moves epsilon
    "missing-obs": (lambda b: {"observations": b["obs"]}, 10**9),
    "wrong-width+bad-t": (lambda b: {"obs": np.zeros((3, 4), np.float32)}, "soon"),
    # the spec check passes: the Python path moves epsilon, then its step raises
    "nan": (lambda b: {"obs": np.full((3, 5), np.nan, np.float32)}, 10**9),
}


@pytest.mark.parametrize("case", list(DQN_BAD))
def test_dqn_epsilon_after_a_refused_batch_is_the_python_paths(case):
    m, batch = _armed("dqn")
    twin, _ = _armed("dqn")
    make_bad, t = DQN_BAD[case]
    bad = make_bad(batch)
    with pytest.raises(ValueError) as lane_err:
        m.forward_exploration(bad, t=t)
    with pytest.raises(ValueError) as py_err:
        twin._run("exploration", bad, {"t": t})
    assert str(lane_err.value) == str(py_err.value)
    assert m.epsilon_schedule.current == twin.epsilon_schedule.current
    rf.manual_seed(4)
    got = m.forward_exploration(batch)
    rf.manual_seed(4)
    same(got, twin._run("exploration", batch, {}))


# ------------------------------------------------------------------------------ plans

def _second_linear(m):
    seq = next(s for s in m.modules() if isinstance(s, torch.nn.Sequential)
               and sum(isinstance(x, torch.nn.Linear) for x in s) >= 2)
    i = [j for j, x in enumerate(seq) if isinstance(x, torch.nn.Linear)][1]
    return seq, i


@pytest.mark.parametrize("kind", KINDS)
def test_refused_layers_raise_on_every_call(kind):
    """A replaced layer the fused step refuses: the first call raised, and every later one ran
    the old weights (the plan forgot the structure change it could not take; the lane, armed
    again by that stale step, answered with them too). Now every call raises until it is fixed."""
    m, batch = _armed(kind)
    seq, i = _second_linear(m)
    old = seq[i]
    seq[i] = torch.nn.Linear(old.in_features + 1, old.out_features)
    for _ in range(3):
        with pytest.raises(ValueError, match="expected in_features"):
            m.forward_inference(batch)
    seq[i] = old
    same(m.forward_inference(batch), make(kind)._run("inference", batch, {}))
    same(m.forward_inference(batch), m._run("inference", batch, {}))


@pytest.mark.parametrize("kind", KINDS)
def test_module_moved_off_cpu_raises_on_every_call(kind):
    """``module.to(<not cpu>)`` then CPU batches: ValueError every call, never the old weights."""
    m, batch = _armed(kind)
    m.to("meta")
    for _ in range(3):
        with pytest.raises(ValueError, match="CPU parameters"):
            m.forward_inference(batch)


def test_weights_stamp_raises_the_error_it_met():
    """A parameter whose ``_version`` is not an int: ``weights_stamp`` went on with the error
    set and returned a value (SystemError at the next call) instead of raising it."""
    class Odd:
        _version = 1.5

        def data_ptr(self):
            return 0

    from rlmodule_fast.ops import cpp

    with pytest.raises(TypeError):
        cpp._C.weights_stamp((Odd(),))


# ------------------------------------------------------------------------------ threads, memory

@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fixed_thread_count_is_applied_in_a_forked_child():
    """RLMODULE_FAST_NUM_THREADS=2, lane armed, fork: the child's _C pool starts with one thread
    and the Python path applies the count again at its first call; the lane skipped that check
    when the count was fixed by the environment, so the child ran single-threaded for good."""
    code = textwrap.dedent("""
        import os, sys
        sys.path.insert(0, sys.argv[1])
        from test_fast_lane import make, obs_batch
        from rlmodule_fast.fastpath import lane as L
        from rlmodule_fast.ops import cpp
        assert cpp._ENV_THREADS == 2
        m = make("ppo-categorical")
        b = obs_batch(64)
        m.forward_exploration(b)
        assert L.armed(m) and cpp._C.get_num_threads() == 2
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            m.forward_exploration(b)
            m.forward_exploration(b)
            os.write(w, str(cpp._C.get_num_threads()).encode())
            os._exit(0)
        os.waitpid(pid, 0)
        print("child threads", os.read(r, 16).decode())
    """)
    env = dict(os.environ, RLMODULE_FAST_NUM_THREADS="2")
    res = subprocess.run([sys.executable, "-c", code, os.path.dirname(__file__)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "child threads 2"


@pytest.mark.parametrize("kind", ["ppo-categorical", "dqn"])
def test_armed_module_referenced_by_its_parameters_is_collected(kind):
    """The lane holds the module's parameters; a parameter that refers back to its module (an
    attribute some libraries set) made a cycle the garbage collector could not see through the
    lane, so the module was never freed."""
    m, _ = _armed(kind)
    for p in m.parameters():
        p.owner = m
    ref = weakref.ref(m)
    del m, p
    gc.collect()
    assert ref() is None


def test_lane_rearmed_during_its_freshness_check_keeps_what_it_reads():
    """The freshness check runs Python code (a TorchFunctionMode sees ``data_ptr`` and ``_version``
    of every parameter), so another thread can re-arm the lane in the middle of it. The check
    iterated the lane's own parameter tuple, which that re-arm freed: a read of freed memory.
    The other thread's re-arm is done from inside the mode; a tuple subclass reports when it
    is freed."""
    m, batch = _armed("ppo-categorical")
    lane = L.lane_of(m)
    plan = next(p for p in m.__dict__["_rf_plans"].values() if p is not None)
    params, stamp, gen = plan.impl._watch_policy, plan.impl._packed_policy, plan._gen
    events = []

    class Tracked(tuple):
        def __del__(self):
            events.append("freed")

    assert lane.arm(batch, Tracked(params), stamp, gen, dispatch.env_token())

    class RearmOnce(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is torch.Tensor.data_ptr:
                events.append("data_ptr")
                if events.count("data_ptr") == 1:
                    lane.arm(batch, tuple(params), stamp, gen, dispatch.env_token())
            return func(*args, **(kwargs or {}))

    with RearmOnce():
        out = lane(batch, True)
    assert events == ["data_ptr"] * len(params) + ["freed"], events
    same(out, m._run("inference", batch, {}))


def _unaligned(x: np.ndarray) -> np.ndarray:
    """A C-contiguous float32 copy of ``x`` at an odd address (rows from a byte buffer at offset 1)."""
    raw = bytearray(x.nbytes + 1)
    y = np.frombuffer(raw, dtype=np.float32, offset=1, count=x.size).reshape(x.shape)
    y[...] = x
    assert not y.flags.aligned and y.flags.c_contiguous
    return y


@pytest.mark.parametrize("tensor", [False, True], ids=["numpy", "tensor"])
@pytest.mark.parametrize("kind", KINDS)
def test_unaligned_observations_reach_the_kernels_aligned(kind, tensor):
    """float32 rows at an odd address: the kernels load them as floats, which must be 4-byte
    aligned (UBSan: "load of misaligned address" in mlp.h, from both the lane and the Python
    path's fast branch). The lane refuses them; the Python path copies them aligned first."""
    m, batch = _armed(kind, B=64)
    x = _unaligned(batch["obs"])
    odd = {"obs": torch.from_numpy(x) if tensor else x}
    assert not L.takes(odd, 5)
    same(m.forward_inference(odd), m._run("inference", batch, {}))
    rf.manual_seed(5)
    got = m.forward_exploration(odd, **kw(kind))
    rf.manual_seed(5)
    same(got, m._run("exploration", batch, kw(kind)))

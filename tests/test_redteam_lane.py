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
from test_fast_lane import ALL_KINDS, CPP, KINDS, RNN_KINDS, batch_of, kw, leaves, make, obs_batch, same

pytestmark = pytest.mark.skipif(not CPP["available"], reason=f"cpp backend unavailable: {CPP['reason']}")

CLASSES = {"ppo-categorical": PPOTorchRLModule, "dqn": DQNTorchRLModule, "sac-continuous": SACTorchRLModule,
           "ppo-lstm-separate": PPOTorchRLModule}


def _armed(kind: str, B: int = 3):
    m = make(kind)
    batch = batch_of(m, B)
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


@pytest.mark.parametrize("kind", list(RNN_KINDS))
def test_refused_rnn_raises_on_every_call(kind):
    """As above for a recurrent module whose rnn is replaced by one the fused step refuses."""
    m, batch = _armed(kind)
    enc = m.encoder.encoder if m.encoder.shared else m.encoder.actor_encoder
    name = next(n for n, x in enc.named_children() if isinstance(x, (torch.nn.LSTM, torch.nn.GRU)))
    old = getattr(enc, name)
    setattr(enc, name, type(old)(old.input_size, old.hidden_size, num_layers=2, batch_first=True))
    for _ in range(3):
        with pytest.raises(ValueError, match="only 1-layer"):
            m.forward_inference(batch)
    setattr(enc, name, old)
    same(m.forward_inference(batch), make(kind)._run("inference", batch, {}))
    same(m.forward_inference(batch), m._run("inference", batch, {}))


@pytest.mark.parametrize("kind", ["ppo-lstm", "ppo-gru-separate"])
def test_rnn_resized_the_lane_reads_the_state_form_from_the_net(kind):
    """The rnn (and the heads reading it) replaced by wider ones the fused step takes: the plan
    reloads the same ``_C.Policy`` with H = 12. A lane that kept the state width it was built
    with would hand [B, 9] rows to kernels reading [B, 12] (past the end of every leaf); it reads
    the form from the net as loaded, so 9-wide states go to the Python path (its errors) and
    12-wide ones are taken."""
    m, batch = _armed(kind)
    lane = L.lane_of(m)
    enc = m.encoder.encoder if m.encoder.shared else m.encoder.actor_encoder
    name = next(n for n, x in enc.named_children() if isinstance(x, (torch.nn.LSTM, torch.nn.GRU)))
    old = getattr(enc, name)
    setattr(enc, name, type(old)(old.input_size, 12, batch_first=True))
    m.pi.net.mlp[0] = torch.nn.Linear(12, m.pi.net.mlp[0].out_features)
    if m.encoder.shared:
        m.vf.net.mlp[0] = torch.nn.Linear(12, m.vf.net.mlp[0].out_features)
    for _ in range(3):
        with pytest.raises(ValueError, match=r"expected shape \[3, 12\]"):
            m.forward_inference(batch)
    assert L.lane_of(m) is lane and not L.takes(batch, lane.net)
    actor = {k: np.zeros((3, 1, 12), np.float32) for k in ("h", "c") if k in (batch["state_in"].get("actor") or
                                                                             batch["state_in"])}
    wide = dict(batch, state_in=actor if m.encoder.shared else {"actor": actor, "critic": batch["state_in"]["critic"]})
    assert L.takes(wide, lane.net)


@pytest.mark.parametrize("kind", ALL_KINDS)
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


@pytest.mark.parametrize("kind", ["ppo-categorical", "dqn", "ppo-lstm-separate"])
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
@pytest.mark.parametrize("kind,what", [(k, "obs") for k in ALL_KINDS] + [(k, "state") for k in RNN_KINDS])
def test_unaligned_observations_reach_the_kernels_aligned(kind, what, tensor):
    """float32 rows at an odd address: the kernels load them as floats, which must be 4-byte
    aligned (UBSan: "load of misaligned address" in mlp.h, from both the lane and the Python
    path's fast branch; for a recurrent state in rnn.h, from the Python path). The lane refuses
    them; the Python path copies them aligned first."""
    m, batch = _armed(kind, B=64)

    def odd_of(x):
        y = _unaligned(x)
        return torch.from_numpy(y) if tensor else y
    if what == "obs":
        odd = dict(batch, obs=odd_of(batch["obs"]))
    else:
        odd = dict(batch, state_in=_map_leaves(batch["state_in"], odd_of))
    assert not L.takes(odd, L.lane_of(m).net)
    same(m.forward_inference(odd), m._run("inference", batch, {}))
    rf.manual_seed(5)
    got = m.forward_exploration(odd, **kw(kind))
    rf.manual_seed(5)
    same(got, m._run("exploration", batch, kw(kind)))


def _map_leaves(d: dict, fn) -> dict:
    return {k: (_map_leaves(v, fn) if isinstance(v, dict) else fn(v)) for k, v in d.items()}


# ------------------------------------------------------------------------------ recurrent state

@pytest.mark.parametrize("tensor", [False, True], ids=["numpy", "tensor"])
@pytest.mark.parametrize("kind", list(RNN_KINDS))
def test_state_in_is_the_previous_calls_state_out(kind, tensor):
    """The env runner's loop: each step's state_in is the previous step's state_out (the very
    tensors, or their .numpy() views). Lane and Python path give the same sequence; no step writes
    into its inputs (the previous outputs keep their values) or returns memory it was given."""
    runs = []
    for lane_on in (True, False):
        m = make(kind)
        batch = batch_of(m, 5)
        m.forward_exploration(batch)
        assert L.armed(m)
        rf.manual_seed(9)
        outs, kept = [], []
        for i in range(6):
            obs = batch_of(m, 5, seed=20 + i)["obs"]
            b = {"obs": torch.from_numpy(obs) if tensor else obs, "state_in": batch["state_in"]}
            out = m.forward_exploration(b) if lane_on else m._run("exploration", b, {})
            for t_in in leaves(b["state_in"]):  # nothing returned shares memory with an input
                x = t_in if isinstance(t_in, torch.Tensor) else torch.from_numpy(t_in)
                assert all(t.untyped_storage().data_ptr() != x.untyped_storage().data_ptr() for t in leaves(out))
            outs.append(out)
            kept.append({k: v.clone() for k, v in enumerate(leaves(out))})
            so = out["state_out"]
            batch = {"state_in": so if tensor else _map_leaves(so, lambda t: t.numpy())}
        for out, k in zip(outs, kept):  # the later steps read these as their state, never wrote them
            assert all(torch.equal(v, k[j]) for j, v in enumerate(leaves(out)))
        runs.append(outs)
    for a, b in zip(*runs):
        same(a, b)


def test_lstm_h_and_c_the_same_array():
    """h and c one array object (the lane takes it: two reads of one buffer)."""
    m, batch = _armed("ppo-lstm")
    h = batch["state_in"]["h"]
    b = dict(batch, state_in={"h": h, "c": h})
    assert L.takes(b, L.lane_of(m).net)
    rf.manual_seed(2)
    got = m.forward_exploration(b)
    rf.manual_seed(2)
    same(got, m._run("exploration", {"obs": batch["obs"], "state_in": {"h": h, "c": h.copy()}}, {}))


@pytest.mark.parametrize("kind", ["ppo-lstm", "ppo-gru-separate"])
def test_state_rebound_while_the_lane_reads_the_batch(kind):
    """Reading a tensor leaf (.numpy()) runs Python code (a TorchFunctionMode), which can rebind
    the caller's dicts: here it replaces batch["state_in"] (and the actor's state dict) with copies
    on the first .numpy(), dropping the only other references to the original leaves. The lane must
    keep what it read alive until the step is done: the originals are freed only after the call."""
    m, batch = _armed(kind)
    tb = {"obs": torch.from_numpy(batch["obs"]), "state_in": _map_leaves(batch["state_in"], torch.from_numpy)}
    events = []
    for i, t in enumerate(leaves(tb["state_in"])):
        weakref.finalize(t, events.append, f"freed {i}")
    del t
    n_leaves = len(leaves(tb["state_in"]))

    class Rebind(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is torch.Tensor.numpy:
                events.append("numpy")
                if events.count("numpy") == 1:
                    tb["state_in"] = _map_leaves(tb["state_in"], lambda t: t.clone())
            return func(*args, **(kwargs or {}))

    ref = m._run("inference", batch, {})
    with Rebind():
        out = L.lane_of(m)(tb, True)
    gc.collect()
    assert out is not None
    assert events[:1 + n_leaves] == ["numpy"] * (1 + n_leaves), events
    assert sorted(events[1 + n_leaves:]) == [f"freed {i}" for i in range(n_leaves)], events
    same(out, ref)

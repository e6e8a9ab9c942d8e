"""The fast lane (``rlmodule_fast.fastpath.lane``): ``forward_exploration`` / ``forward_inference``
at one C++ call once the Python path has run. The lane must never change a result: every output
and random draw equals the Python path's (``module._run``), every change the Python path would
notice (weights, layers, seeds, threads, RLMODULE_FAST_BACKEND, overrides) sends the call back
to it, and every batch it does not take gives the Python path's result or error."""
from __future__ import annotations

import collections
import copy
import pickle
import types

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlmodule_fast as rf
from rlmodule_fast.dqn import DQNTorchRLModule
from rlmodule_fast.fastpath import lane as L
from rlmodule_fast.ppo import PPOCatalog, PPOTorchRLModule
from rlmodule_fast.sac import SACTorchRLModule

CPP = rf.backend_info()["cpp"]
pytestmark = pytest.mark.skipif(not CPP["available"], reason=f"cpp backend unavailable: {CPP['reason']}")

KINDS = ["ppo-categorical", "ppo-gaussian", "dqn", "sac-continuous", "sac-discrete"]
# recurrent PPO (the stepping batch {"obs": [B, 1, O], "state_in": ...}): LSTM / GRU, shared encoder
# or separate critic (nested state), categorical and Gaussian actions between them
RNN_KINDS = {"ppo-lstm": ("lstm", True, "disc3"), "ppo-gru": ("gru", True, "box2"),
             "ppo-lstm-separate": ("lstm", False, "box2"), "ppo-gru-separate": ("gru", False, "disc3")}
ALL_KINDS = KINDS + list(RNN_KINDS)


def make(kind: str, seed: int = 0, cls=None):
    torch.manual_seed(seed)
    if kind == "dqn":
        return (cls or DQNTorchRLModule)(observation_space=gym.spaces.Box(-1, 1, (5,), np.float32),
                                         action_space=gym.spaces.Discrete(3),
                                         model_config={"fcnet_hiddens": [17, 9]})
    if kind.startswith("sac"):
        act = gym.spaces.Discrete(3) if kind == "sac-discrete" else gym.spaces.Box(-1, 1, (2,), np.float32)
        return (cls or SACTorchRLModule)(observation_space=gym.spaces.Box(-1, 1, (5,), np.float32), action_space=act,
                                         model_config={"fcnet_hiddens": [17, 9]})
    config = {"fcnet_hiddens": [17, 9]}
    act = "disc3" if kind == "ppo-categorical" else "box2"
    if kind in RNN_KINDS:
        rnn, share, act = RNN_KINDS[kind]
        config = {"fcnet_hiddens": [17], "lstm_cell_size": 9, f"use_{rnn}": True, "vf_share_layers": share}
    act = gym.spaces.Discrete(3) if act == "disc3" else gym.spaces.Box(-1, 1, (2,), np.float32)
    return rf.RLModuleSpec(module_class=cls or PPOTorchRLModule, observation_space=gym.spaces.Box(-1, 1, (5,), np.float32),
                           action_space=act, model_config_dict=config, catalog_class=PPOCatalog).build()


def obs_batch(B: int = 3, seed: int = 1, tensor: bool = False):
    x = np.random.default_rng(seed).uniform(-1, 1, (B, 5)).astype(np.float32)
    return {"obs": torch.from_numpy(x) if tensor else x}


def batch_of(m, B: int = 3, seed: int = 1, tensor: bool = False, t_axis: bool = True, state_t: bool = True) -> dict:
    """``obs_batch`` for a feed-forward module; for a recurrent one the env runner's stepping batch:
    obs [B, 1, 5] (``t_axis=False``: [B, 5]) and a random ``state_in`` in ``m``'s layout, leaves
    [B, 1, H] (``state_t=False``: [B, H])."""
    b = obs_batch(B, seed, tensor)
    if not m.is_stateful():
        return b
    rng = np.random.default_rng(seed + 100)

    def leaf(v):
        a = (0.5 * rng.standard_normal((B, 1, v.shape[-1]))).astype(np.float32)
        a = a if state_t else a[:, 0].copy()
        return torch.from_numpy(a) if tensor else a

    def walk(d):
        return {k: walk(v) if isinstance(v, dict) else leaf(v) for k, v in d.items()}
    if t_axis:
        b["obs"] = b["obs"].reshape(B, 1, 5)
    b["state_in"] = walk(m.get_initial_state())
    return b


def kw(kind: str) -> dict:
    return {"t": 50} if kind == "dqn" else {}


class RunSpy:
    """Counts the Python path's runs. A class-level patch (``_run`` is not a method the lane stands
    in for, so the module stays eligible); the class changed, so an armed lane hands one call back
    and is built again: the spy re-arms it and starts counting from 0."""

    def __init__(self, monkeypatch, m):
        self.n = 0
        orig = type(m)._run

        def spy(mod, *a, **k):
            self.n += 1
            return orig(mod, *a, **k)
        armed = L.armed(m)
        monkeypatch.setattr(type(m), "_run", spy)
        if armed:
            m.forward_inference(batch_of(m, 1))  # deterministic: no draw, epsilon untouched
            assert L.armed(m)
            self.n = 0


def same(a: dict, b: dict, path: tuple = ()) -> None:
    """The same keys (in order, nested dicts too), each a torch.Tensor of the same dtype, shape,
    strides and bits."""
    assert type(a) is dict and type(b) is dict, path
    assert list(a) == list(b), path
    for k in a:
        if isinstance(a[k], dict):
            same(a[k], b[k], path + (k,))
            continue
        x, y = a[k], b[k]
        assert type(x) is torch.Tensor and type(y) is torch.Tensor, path + (k,)
        assert x.dtype == y.dtype and x.shape == y.shape and x.stride() == y.stride(), path + (k,)
        assert torch.equal(x, y), path + (k,)


def leaves(d: dict) -> list:
    return [t for v in d.values() for t in (leaves(v) if isinstance(v, dict) else [v])]


def lane_runs(m, kind: str, batch: dict, n: int, explore: bool = True) -> list:
    f = m.forward_exploration if explore else m.forward_inference
    return [f(batch, **(kw(kind) if explore else {})) for _ in range(n)]


def python_runs(m, kind: str, batch: dict, n: int, explore: bool = True) -> list:
    return [m._run("exploration" if explore else "inference", batch, kw(kind) if explore else {}) for _ in range(n)]


# recurrent kinds: (obs [B, 1, O] or [B, O], state leaves [B, 1, H] or [B, H]); both forms are the
# Python path's (outputs without the T axis for [B, O] obs; state_out [B, 1, H] either way)
LAYOUTS = {"Tobs-Tstate": (True, True), "Tobs-state": (True, False), "obs-Tstate": (False, True),
           "obs-state": (False, False)}
KIND_LAYOUTS = [(k, "-") for k in KINDS] + [(k, lay) for k in RNN_KINDS for lay in LAYOUTS]


@pytest.mark.parametrize("tensor", [False, True], ids=["numpy", "tensor"])
@pytest.mark.parametrize("B", [1, 7])
@pytest.mark.parametrize("kind,layout", KIND_LAYOUTS)
def test_lane_equals_python_path(kind, layout, B, tensor, monkeypatch):
    m = make(kind)
    t_axis, state_t = LAYOUTS.get(layout, (True, True))
    batch = batch_of(m, B, tensor=tensor, t_axis=t_axis, state_t=state_t)
    spy = RunSpy(monkeypatch, m)
    for explore in (True, False):
        rf.manual_seed(11)
        fast = lane_runs(m, kind, batch, 5, explore)
        assert L.armed(m)
        rf.manual_seed(11)
        slow = python_runs(m, kind, batch, 5, explore)
        for a, b in zip(fast, slow):
            same(a, b)
    # the lane answered every call after the very first one (which armed it for both modes)
    assert spy.n == 1 + 5 + 5
    for t in leaves(fast[0]):  # fresh outputs: writing them changes no later result
        t.add_(1)
    same(m.forward_inference(batch), m._run("inference", batch, {}))
    if m.is_stateful():
        assert list(fast[0]) == ["action_dist_inputs", "actions", "action_logp", "state_out"]
        D = 3 if RNN_KINDS[kind][2] == "disc3" else 4
        assert fast[0]["action_dist_inputs"].shape == ((B, 1, D) if t_axis else (B, D))
        assert all(t.shape == (B, 1, 9) for t in leaves(fast[0]["state_out"]))


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_lane_outputs_equal_the_torch_layers(kind, monkeypatch):
    m = make(kind)
    batch = batch_of(m, 4)
    m.forward_inference(batch)
    fused = m.forward_inference(batch)
    assert L.armed(m)
    monkeypatch.setenv("RLMODULE_FAST_BACKEND", "torch")
    ref = m.forward_inference(batch)
    torch.testing.assert_close(fused["action_dist_inputs"], ref["action_dist_inputs"], rtol=1e-5, atol=1e-6)
    if ref["actions"].is_floating_point():
        torch.testing.assert_close(fused["actions"], ref["actions"], rtol=1e-5, atol=1e-6)
    else:
        assert torch.equal(fused["actions"], ref["actions"])
    if m.is_stateful():
        torch.testing.assert_close(fused["state_out"], ref["state_out"], rtol=1e-5, atol=1e-6)


def _first_linear(m) -> torch.nn.Linear:
    return next(x for x in m.modules() if isinstance(x, torch.nn.Linear))


# Each mutation changes the weights of ``part`` (a submodule name; "": the first linear layer /
# every parameter of the module).
def _mutate_inplace(m, part=""):
    with torch.no_grad():
        _first_linear(m.get_submodule(part)).weight.mul_(1.7)


def _mutate_data(m, part=""):
    lin = _first_linear(m.get_submodule(part))
    lin.weight.data = lin.weight.detach() * 1.7


def _mutate_load(m, part=""):
    other = make(m._lane_kind, seed=5).state_dict()
    m.load_state_dict({k: (other[k] if k.startswith(part) else v) for k, v in m.state_dict().items()})


def _mutate_replace(m, part=""):
    lin = _first_linear(m.get_submodule(part))
    lin.weight = torch.nn.Parameter(lin.weight.detach() * 1.7)


def _mutate_optimizer(m, part=""):
    params = list(m.get_submodule(part).parameters())
    opt = torch.optim.SGD(params, lr=0.1)
    sum((p * p).sum() for p in params).backward()
    opt.step()


def _mutate_rnn_inplace(m, part=""):
    with torch.no_grad():
        for x in m.get_submodule(part).modules():
            if isinstance(x, (torch.nn.LSTM, torch.nn.GRU)):
                x.weight_hh_l0.mul_(1.7)


MUTATIONS = {"inplace": _mutate_inplace, "data": _mutate_data, "load_state_dict": _mutate_load,
             "replace_parameter": _mutate_replace, "optimizer_step": _mutate_optimizer}
RNN_MUTATIONS = dict(MUTATIONS, rnn_inplace=_mutate_rnn_inplace)


@pytest.mark.parametrize("kind,mutation", [(k, mu) for k in KINDS for mu in MUTATIONS]
                         + [(k, mu) for k in RNN_KINDS for mu in RNN_MUTATIONS])
def test_weight_changes_are_seen(kind, mutation):
    m = make(kind)
    m._lane_kind = kind
    batch = batch_of(m, 3)
    m.forward_inference(batch)
    before = m.forward_inference(batch)
    assert L.armed(m)
    RNN_MUTATIONS[mutation](m)
    after = m.forward_inference(batch)
    assert not torch.equal(after["action_dist_inputs"], before["action_dist_inputs"])
    twin = make(kind)
    twin.load_state_dict(m.state_dict())
    same(after, twin._run("inference", batch, {}))
    assert L.armed(m)  # the Python path ran and armed the lane again


@pytest.mark.parametrize("mutation", list(RNN_MUTATIONS))
@pytest.mark.parametrize("kind", [k for k in RNN_KINDS if not RNN_KINDS[k][1]])
def test_critic_rnn_weight_changes_are_seen(kind, mutation):
    """A separate critic's rnn advances its state (state_out["critic"]) in every step, also
    without the value head: a change of only the critic's weights must be seen (the plan watched
    the actor's alone, and stepped the critic's state with the weights it packed first)."""
    m = make(kind)
    m._lane_kind = kind
    batch = batch_of(m, 3)
    m.forward_exploration(batch)
    before = m.forward_inference(batch)
    assert L.armed(m)
    RNN_MUTATIONS[mutation](m, "encoder.critic_encoder")
    for f in (m.forward_inference, m.forward_inference):  # the Python path, then the lane it armed
        after = f(batch)
        assert torch.equal(after["action_dist_inputs"], before["action_dist_inputs"])
        assert not torch.equal(after["state_out"]["critic"]["h"], before["state_out"]["critic"]["h"])
        twin = make(kind)
        twin.load_state_dict(m.state_dict())
        same(after, twin._run("inference", batch, {}))
    assert L.armed(m)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_refresh_sees_writes_the_stamp_cannot(kind):
    m = make(kind)
    batch = batch_of(m, 3)
    m.forward_inference(batch)
    before = m.forward_inference(batch)
    _first_linear(m).weight.detach().numpy()[:] *= 1.7  # no version bump, same data pointer
    assert torch.equal(m.forward_inference(batch)["action_dist_inputs"], before["action_dist_inputs"])
    m.refresh_fast_path()
    assert not L.armed(m)
    twin = make(kind)
    twin.load_state_dict(m.state_dict())
    same(m.forward_inference(batch), twin._run("inference", batch, {}))


@pytest.mark.parametrize("kind", ["ppo-categorical", "ppo-gaussian", "sac-continuous", "sac-discrete",
                                  *RNN_KINDS])
def test_torch_reseed_restarts_the_stream(kind):
    m = make(kind)
    batch = batch_of(m, 64)
    m.forward_exploration(batch)
    m.forward_exploration(batch)
    assert L.armed(m)
    runs = []
    for step in (m.forward_exploration, lambda b: m._run("exploration", b, {})):
        rf.manual_seed(1)
        plain = step(batch)
        rf.manual_seed(1)
        torch.manual_seed(123)  # a new torch seed: the Python path re-keys rf's stream from it
        runs.append((plain, step(batch)))
    same(runs[0][0], runs[1][0])
    same(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][0]["actions"], runs[0][1]["actions"])


def test_dqn_epsilon_follows_t(monkeypatch):
    m = make("dqn")
    batch = obs_batch(64)
    m.forward_exploration(batch, t=0)
    spy = RunSpy(monkeypatch, m)
    rf.manual_seed(3)
    greedy = m.forward_inference(batch)["actions"]
    rand0 = (m.forward_exploration(batch, t=0)["actions"] != greedy).float().mean()      # epsilon 1.0
    late = m.epsilon_schedule.at(10**9)
    rand1 = (m.forward_exploration(batch, t=10**9)["actions"] != greedy).float().mean()  # epsilon final
    assert spy.n == 0
    assert m.epsilon_schedule.current == late
    assert rand0 > 0.4 and rand1 < 0.3
    rf.manual_seed(3)
    m.forward_inference(batch)
    a = m.forward_exploration(batch, t=0)
    rf.manual_seed(3)
    m._run("inference", batch, {})
    same(a, m._run("exploration", batch, {"t": 0}))


def test_thread_count_is_synced():
    from rlmodule_fast.ops import cpp

    m = make("ppo-categorical")
    batch = obs_batch(3)
    n0 = torch.get_num_threads()
    try:
        m.forward_exploration(batch)
        m.forward_exploration(batch)
        torch.set_num_threads(2 if n0 != 2 else 1)
        m.forward_exploration(batch)
        if not cpp._ENV_THREADS:
            assert cpp._C.get_num_threads() == min(torch.get_num_threads(), cpp._MAX_THREADS)
    finally:
        torch.set_num_threads(n0)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_backend_env_change_takes_the_python_path(kind, monkeypatch):
    m = make(kind)
    batch = batch_of(m, 3)
    m.forward_inference(batch)
    m.forward_inference(batch)
    assert L.armed(m)
    spy = RunSpy(monkeypatch, m)
    monkeypatch.setenv("RLMODULE_FAST_BACKEND", "torch")
    m.forward_inference(batch)
    m.forward_inference(batch)
    assert spy.n == 2 and m.fast_path_info()["backend"] == "torch"
    monkeypatch.delenv("RLMODULE_FAST_BACKEND")
    same(m.forward_inference(batch), m._run("inference", batch, {}))
    m.forward_inference(batch)
    assert spy.n == 3  # back to the value it was armed with: the lane answers again


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_instance_override_is_called(kind):
    m = make(kind)
    batch = batch_of(m, 3)
    m.forward_exploration(batch, **kw(kind))
    assert L.armed(m)
    marker = torch.full((3,), 7.0)
    m._forward_exploration = lambda b, **k: {"action_dist_inputs": marker, "actions": marker, "action_logp": marker}
    assert not L.armed(m)
    for _ in range(3):
        assert m.forward_exploration(batch, **kw(kind))["action_dist_inputs"] is marker
    assert not L.armed(m)


class _CountingPPO(PPOTorchRLModule):
    calls = 0

    def _forward_exploration(self, batch, **kwargs):
        type(self).calls += 1
        return super()._forward_exploration(batch, **kwargs)


class _CountingDQN(DQNTorchRLModule):
    calls = 0

    def _forward_exploration(self, batch, **kwargs):
        type(self).calls += 1
        return super()._forward_exploration(batch, **kwargs)


@pytest.mark.parametrize("cls", [_CountingPPO, _CountingDQN], ids=["ppo", "dqn"])
def test_subclass_override_runs_every_call(cls):
    m = make("dqn" if cls is _CountingDQN else "ppo-categorical", cls=cls)
    batch = obs_batch(3)
    for _ in range(4):
        m.forward_exploration(batch)
    assert cls.calls == 4 and not L.armed(m)


def _f64(b):
    return dict(b, obs=b["obs"].astype(np.float64))


def _noncontig(b):
    return dict(b, obs=np.asfortranarray(b["obs"]))


def _extra_key(b):
    return dict(b, infos=[None] * len(b["obs"]))


def _grad(b):
    return dict(b, obs=torch.from_numpy(b["obs"]).requires_grad_())


def _list(b):
    return dict(b, obs=b["obs"].tolist())


def _subclass_array(b):
    return dict(b, obs=b["obs"].view(np.ma.MaskedArray))


def _unaligned(x: np.ndarray) -> np.ndarray:
    """A C-contiguous float32 copy of ``x`` at an odd address (from a byte buffer at offset 1)."""
    raw = bytearray(x.nbytes + 1)
    y = np.frombuffer(raw, dtype=np.float32, offset=1, count=x.size).reshape(x.shape)
    y[...] = x
    assert not y.flags.aligned and y.flags.c_contiguous
    return y


def _map_leaves(d: dict, fn) -> dict:
    return {k: (_map_leaves(v, fn) if isinstance(v, dict) else fn(v)) for k, v in d.items()}


def _state(fn):
    """A batch form from ``fn`` applied to every state_in leaf (numpy [B, 1, H])."""
    return lambda b: dict(b, state_in=_map_leaves(b["state_in"], fn))


def _with_actor_state(b, fn) -> dict:
    """A copy of b whose (actor's) state dict is fn(copy of it)."""
    st = dict(b["state_in"])
    if "actor" in st:
        st["actor"] = fn(dict(st["actor"]))
    else:
        st = fn(st)
    return dict(b, state_in=st)


class _SubTensor(torch.Tensor):
    pass


NOT_TAKEN = {"float64": _f64, "non-contiguous": _noncontig, "extra-key": _extra_key, "requires-grad": _grad,
             "list": _list, "array-subclass": _subclass_array}
# recurrent kinds also: state_in leaves / dicts of a form the lane leaves to the Python path
STATE_NOT_TAKEN = {
    "state-float64": _state(lambda v: v.astype(np.float64)),
    "state-non-contiguous": _state(lambda v: np.repeat(v, 2, axis=-1)[..., ::2]),
    "state-zero-stride": _state(lambda v: np.broadcast_to(v[:1], v.shape)),
    "state-unaligned": _state(_unaligned),
    "state-requires-grad": _state(lambda v: torch.from_numpy(v).requires_grad_()),
    "state-tensor-subclass": _state(lambda v: torch.from_numpy(v).as_subclass(_SubTensor)),
    "state-array-subclass": _state(lambda v: v.view(np.ma.MaskedArray)),
    "state-list": _state(lambda v: v.tolist()),
    "state-extra-key": lambda b: _with_actor_state(b, lambda d: dict(d, x=d["h"])),
    "state-ordereddict": lambda b: _with_actor_state(b, collections.OrderedDict),
    "state_in-mappingproxy": lambda b: dict(b, state_in=types.MappingProxyType(b["state_in"])),
}


@pytest.mark.parametrize("kind,form", [(k, f) for k in ALL_KINDS for f in NOT_TAKEN]
                         + [(k, f) for k in RNN_KINDS for f in STATE_NOT_TAKEN])
def test_batches_the_lane_does_not_take(kind, form, monkeypatch):
    m = make(kind)
    base = batch_of(m, 3)
    m.forward_inference(base)
    assert L.armed(m)
    batch = {**NOT_TAKEN, **STATE_NOT_TAKEN}[form](base)
    assert not L.takes(batch, L.lane_of(m).net)
    spy = RunSpy(monkeypatch, m)
    try:
        got = m.forward_inference(batch)
    except Exception as e:  # then the Python path raises the same
        with pytest.raises(type(e), match=None) as again:
            m._run("inference", batch, {})
        assert str(again.value) == str(e)
    else:
        same(got, m._run("inference", batch, {}))
    assert spy.n >= 1
    assert L.armed(m)  # a batch it does not take leaves the lane armed for the plain ones


def _obs_with(fn):
    """A batch form whose obs is fn(a copy of obs viewed as [B, -1])'s result, shaped back."""
    def form(b):
        x = b["obs"].copy()
        y = fn(x.reshape(x.shape[0], -1))
        return dict(b, obs=y.reshape(x.shape))
    return form


def _set(x, i, j, v):
    x[i, j] = v
    return x


BAD = {
    "nan": _obs_with(lambda x: _set(x, 1, 2, np.nan)),
    "inf-tensor": _obs_with(lambda x: torch.from_numpy(x).index_fill(1, torch.tensor([2]), float("inf"))),
    "wrong-width": lambda b: dict(b, obs=np.zeros(b["obs"].shape[:-1] + (4,), np.float32)),
    "empty": lambda b: dict(b, obs=np.zeros((0,) + b["obs"].shape[1:], np.float32)),
    "extra-axis": lambda b: dict(b, obs=b["obs"][:, None]),
    "missing-obs": lambda b: {("observations" if k == "obs" else k): v for k, v in b.items()},
}
# recurrent kinds also
STATE_BAD = {
    "wrong-H": _state(lambda v: np.zeros(v.shape[:-1] + (v.shape[-1] + 1,), np.float32)),
    "state-wrong-B": _state(lambda v: np.zeros((v.shape[0] + 1,) + v.shape[1:], np.float32)),
    "state-T2": _state(lambda v: np.repeat(v, 2, axis=1)),
    "missing-last-key": lambda b: _with_actor_state(b, lambda d: {k: d[k] for k in list(d)[:-1]}),
    "missing-state_in": lambda b: {"obs": b["obs"]},
    "state_in-array": lambda b: dict(b, state_in=np.zeros((3, 1, 9), np.float32)),
    "nan-state": _state(lambda v: _set(v.copy().reshape(v.shape[0], -1), 1, 2, np.nan).reshape(v.shape)),
    "obs-T2": lambda b: dict(b, obs=np.repeat(b["obs"], 2, axis=1)),
}
RAISE = {"nan", "inf-tensor", "wrong-width", "missing-obs", "wrong-H", "state-wrong-B", "state-T2", "missing-last-key",
         "missing-state_in", "state_in-array", "nan-state"}


@pytest.mark.parametrize("kind,bad", [(k, f) for k in ALL_KINDS for f in BAD]
                         + [(k, f) for k in RNN_KINDS for f in STATE_BAD])
def test_bad_batches_raise_as_the_python_path(kind, bad):
    m = make(kind)
    base = batch_of(m, 3)
    m.forward_exploration(base, **kw(kind))
    assert L.armed(m)
    batch = {**BAD, **STATE_BAD}[bad](base)
    assert not L.takes(batch, L.lane_of(m).net) or bad in ("nan", "inf-tensor", "nan-state")
    errors = []
    for f in (lambda: m.forward_exploration(batch, **kw(kind)), lambda: m._run("exploration", batch, kw(kind))):
        rf.manual_seed(6)
        try:
            errors.append(("ok", f()))
        except Exception as e:
            errors.append((type(e), str(e)))
    if errors[0][0] == "ok":
        assert bad not in RAISE and errors[1][0] == "ok"
        same(errors[0][1], errors[1][1])
    else:
        assert errors[0] == errors[1]
        if bad in RAISE:
            assert errors[0][0] is ValueError, errors[0]


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_copies_carry_no_lane(kind):
    m = make(kind)
    batch = batch_of(m, 3)
    m.forward_inference(batch)
    assert L.armed(m)
    for c in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert L.lane_of(c) is None
        same(c.forward_inference(batch), m.forward_inference(batch))
        assert L.armed(c) and L.lane_of(c) is not L.lane_of(m)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_module_to_and_back(kind):
    m = make(kind)
    batch = batch_of(m, 3)
    m.forward_inference(batch)
    ref = m.forward_inference(batch)
    m.double()
    out = m.forward_inference(batch)  # float64 layers: the Python path decides (fused or not), never the lane
    m.float()
    same(m.forward_inference(batch), ref)
    assert out["action_dist_inputs"].shape == ref["action_dist_inputs"].shape


@pytest.mark.parametrize("kind", ["ppo-categorical", "sac-continuous", "ppo-lstm"])
def test_rllib_style_t_keyword_takes_the_lane(kind, monkeypatch):
    """RLlib's env runners call forward_exploration(batch, t=...); PPO / SAC ignore t."""
    m = make(kind)
    batch = batch_of(m, 3)
    m.forward_exploration(batch, t=0)
    spy = RunSpy(monkeypatch, m)
    rf.manual_seed(5)
    fast = [m.forward_exploration(batch, t=i) for i in range(3)]
    assert spy.n == 0
    rf.manual_seed(5)
    for i, f in enumerate(fast):
        same(f, m._run("exploration", batch, {"t": i}))
    m.forward_exploration(batch, t=1, explore=True)  # any other keyword: the Python path
    assert spy.n == 4

"""The fast lane (``rlmodule_fast.fastpath.lane``): ``forward_exploration`` / ``forward_inference``
at one C++ call once the Python path has run. The lane must never change a result: every output
and random draw equals the Python path's (``module._run``), every change the Python path would
notice (weights, layers, seeds, threads, RLMODULE_FAST_BACKEND, overrides) sends the call back
to it, and every batch it does not take gives the Python path's result or error."""
from __future__ import annotations

import copy
import pickle

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
    act = gym.spaces.Discrete(3) if kind == "ppo-categorical" else gym.spaces.Box(-1, 1, (2,), np.float32)
    return rf.RLModuleSpec(module_class=cls or PPOTorchRLModule, observation_space=gym.spaces.Box(-1, 1, (5,), np.float32),
                           action_space=act, model_config_dict={"fcnet_hiddens": [17, 9]},
                           catalog_class=PPOCatalog).build()


def obs_batch(B: int = 3, seed: int = 1, tensor: bool = False):
    x = np.random.default_rng(seed).uniform(-1, 1, (B, 5)).astype(np.float32)
    return {"obs": torch.from_numpy(x) if tensor else x}


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
            m.forward_inference(obs_batch(1))  # deterministic: no draw, epsilon untouched
            assert L.armed(m)
            self.n = 0


def same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert type(a[k]) is torch.Tensor and a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


def lane_runs(m, kind: str, batch: dict, n: int, explore: bool = True) -> list:
    f = m.forward_exploration if explore else m.forward_inference
    return [f(batch, **(kw(kind) if explore else {})) for _ in range(n)]


def python_runs(m, kind: str, batch: dict, n: int, explore: bool = True) -> list:
    return [m._run("exploration" if explore else "inference", batch, kw(kind) if explore else {}) for _ in range(n)]


@pytest.mark.parametrize("tensor", [False, True], ids=["numpy", "tensor"])
@pytest.mark.parametrize("B", [1, 7])
@pytest.mark.parametrize("kind", KINDS)
def test_lane_equals_python_path(kind, B, tensor, monkeypatch):
    m = make(kind)
    batch = obs_batch(B, tensor=tensor)
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
    fast[0][next(iter(fast[0]))].add_(1.0)  # fresh outputs: writing one changes no later result
    same(m.forward_inference(batch), m._run("inference", batch, {}))


@pytest.mark.parametrize("kind", KINDS)
def test_lane_outputs_equal_the_torch_layers(kind, monkeypatch):
    m = make(kind)
    batch = obs_batch(4)
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


def _first_linear(m) -> torch.nn.Linear:
    return next(x for x in m.modules() if isinstance(x, torch.nn.Linear))


def _mutate_inplace(m):
    with torch.no_grad():
        _first_linear(m).weight.mul_(1.7)


def _mutate_data(m):
    lin = _first_linear(m)
    lin.weight.data = lin.weight.detach() * 1.7


def _mutate_load(m):
    m.load_state_dict(make(m._lane_kind, seed=5).state_dict())


def _mutate_replace(m):
    lin = _first_linear(m)
    lin.weight = torch.nn.Parameter(lin.weight.detach() * 1.7)


def _mutate_optimizer(m):
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    sum((p * p).sum() for p in m.parameters()).backward()
    opt.step()


MUTATIONS = {"inplace": _mutate_inplace, "data": _mutate_data, "load_state_dict": _mutate_load,
             "replace_parameter": _mutate_replace, "optimizer_step": _mutate_optimizer}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
@pytest.mark.parametrize("kind", KINDS)
def test_weight_changes_are_seen(kind, mutation):
    m = make(kind)
    m._lane_kind = kind
    batch = obs_batch(3)
    m.forward_inference(batch)
    before = m.forward_inference(batch)
    assert L.armed(m)
    MUTATIONS[mutation](m)
    after = m.forward_inference(batch)
    assert not torch.equal(after["action_dist_inputs"], before["action_dist_inputs"])
    twin = make(kind)
    twin.load_state_dict(m.state_dict())
    same(after, twin._run("inference", batch, {}))
    assert L.armed(m)  # the Python path ran and armed the lane again


@pytest.mark.parametrize("kind", KINDS)
def test_refresh_sees_writes_the_stamp_cannot(kind):
    m = make(kind)
    batch = obs_batch(3)
    m.forward_inference(batch)
    before = m.forward_inference(batch)
    _first_linear(m).weight.detach().numpy()[:] *= 1.7  # no version bump, same data pointer
    assert torch.equal(m.forward_inference(batch)["action_dist_inputs"], before["action_dist_inputs"])
    m.refresh_fast_path()
    assert not L.armed(m)
    twin = make(kind)
    twin.load_state_dict(m.state_dict())
    same(m.forward_inference(batch), twin._run("inference", batch, {}))


@pytest.mark.parametrize("kind", ["ppo-categorical", "ppo-gaussian", "sac-continuous", "sac-discrete"])
def test_torch_reseed_restarts_the_stream(kind):
    m = make(kind)
    batch = obs_batch(64)
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


@pytest.mark.parametrize("kind", KINDS)
def test_backend_env_change_takes_the_python_path(kind, monkeypatch):
    m = make(kind)
    batch = obs_batch(3)
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


@pytest.mark.parametrize("kind", KINDS)
def test_instance_override_is_called(kind):
    m = make(kind)
    batch = obs_batch(3)
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
    return {"obs": b["obs"].astype(np.float64)}


def _noncontig(b):
    return {"obs": np.asfortranarray(b["obs"])}


def _extra_key(b):
    return {"obs": b["obs"], "infos": [None] * len(b["obs"])}


def _grad(b):
    return {"obs": torch.from_numpy(b["obs"]).requires_grad_()}


def _list(b):
    return {"obs": b["obs"].tolist()}


def _subclass_array(b):
    return {"obs": b["obs"].view(np.ma.MaskedArray)}


NOT_TAKEN = {"float64": _f64, "non-contiguous": _noncontig, "extra-key": _extra_key, "requires-grad": _grad,
             "list": _list, "array-subclass": _subclass_array}


@pytest.mark.parametrize("form", list(NOT_TAKEN))
@pytest.mark.parametrize("kind", KINDS)
def test_batches_the_lane_does_not_take(kind, form, monkeypatch):
    m = make(kind)
    base = obs_batch(3)
    m.forward_inference(base)
    assert L.armed(m)
    batch = NOT_TAKEN[form](base)
    assert not L.takes(batch, 5)
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


BAD = {
    "nan": lambda b: {"obs": np.where(np.arange(15).reshape(3, 5) == 7, np.nan, b["obs"]).astype(np.float32)},
    "inf-tensor": lambda b: {"obs": torch.from_numpy(b["obs"]).index_fill(1, torch.tensor([2]), float("inf"))},
    "wrong-width": lambda b: {"obs": np.zeros((3, 4), np.float32)},
    "empty": lambda b: {"obs": np.zeros((0, 5), np.float32)},
    "rank-3": lambda b: {"obs": np.zeros((3, 1, 5), np.float32)},
    "missing-obs": lambda b: {"observations": b["obs"]},
}


@pytest.mark.parametrize("bad", list(BAD))
@pytest.mark.parametrize("kind", KINDS)
def test_bad_batches_raise_as_the_python_path(kind, bad):
    m = make(kind)
    base = obs_batch(3)
    m.forward_exploration(base, **kw(kind))
    assert L.armed(m)
    batch = BAD[bad](base)
    errors = []
    for f in (lambda: m.forward_exploration(batch, **kw(kind)), lambda: m._run("exploration", batch, kw(kind))):
        try:
            errors.append(("ok", f()))
        except Exception as e:
            errors.append((type(e), str(e)))
    if errors[0][0] == "ok":
        assert bad in ("empty", "rank-3") and errors[1][0] == "ok"
        same(errors[0][1], errors[1][1]) if bad == "empty" else None
    else:
        assert errors[0] == errors[1]
        if bad in ("nan", "inf-tensor", "wrong-width", "missing-obs"):
            assert errors[0][0] is ValueError


@pytest.mark.parametrize("kind", KINDS)
def test_copies_carry_no_lane(kind):
    m = make(kind)
    batch = obs_batch(3)
    m.forward_inference(batch)
    assert L.armed(m)
    for c in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert L.lane_of(c) is None
        same(c.forward_inference(batch), m.forward_inference(batch))
        assert L.armed(c) and L.lane_of(c) is not L.lane_of(m)


@pytest.mark.parametrize("kind", KINDS)
def test_module_to_and_back(kind):
    m = make(kind)
    batch = obs_batch(3)
    m.forward_inference(batch)
    ref = m.forward_inference(batch)
    m.double()
    out = m.forward_inference(batch)  # float64 layers: the Python path decides (fused or not), never the lane
    m.float()
    same(m.forward_inference(batch), ref)
    assert out["action_dist_inputs"].shape == ref["action_dist_inputs"].shape


@pytest.mark.parametrize("kind", ["ppo-categorical", "sac-continuous"])
def test_rllib_style_t_keyword_takes_the_lane(kind, monkeypatch):
    """RLlib's env runners call forward_exploration(batch, t=...); PPO / SAC ignore t."""
    m = make(kind)
    batch = obs_batch(3)
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

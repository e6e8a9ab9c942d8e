"""The fused path always runs the current weights, never a mix, and every backend behaves alike.

- Stale: after every update path a user has (``load_state_dict(assign=True)``,
  ``nn.utils.vector_to_parameters``, ``p.data = t``, a replaced ``nn.Parameter`` or layer,
  ``module.double()``, optimizer steps) the fused step equals the torch layers; writes the step
  cannot see (in-place ops on ``p.data``, numpy views) are fixed by ``refresh_fast_path()``.
- Torn: ``load_state_dict`` racing steps never gives a result matching neither weights, on our
  module and on ``FastPPOTorchRLModule``; a failing ``set_state`` / ``load_state_dict`` changes
  nothing.
- A module moved off the CPU never hands device pointers to C++.
- Every backend returns the same keys, rejects the same bad observations with the same error,
  and handles zero-row batches alike; an unusable backend under "auto" is reported, not silent.
"""
from __future__ import annotations

import datetime
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

import rlmodule_fast as rf
from rlmodule_fast.ops import dispatch
from rlmodule_fast.ppo import PPOCatalog, PPOTorchRLModule

CPP = rf.backend_info()["cpp"]
pytestmark = pytest.mark.skipif(not CPP["available"], reason=f"cpp backend unavailable: {CPP['reason']}")

OBS = gym.spaces.Box(-1, 1, (6,), np.float32)
ACTS = {"discrete": gym.spaces.Discrete(4), "box": gym.spaces.Box(-1, 1, (3,), np.float32)}


def _module(act="discrete", seed=0, **cfg):
    torch.manual_seed(seed)
    conf = {"fcnet_hiddens": [32, 16]}
    conf.update(cfg)
    return rf.RLModuleSpec(module_class=PPOTorchRLModule, observation_space=OBS, action_space=ACTS[act],
                           model_config_dict=conf, catalog_class=PPOCatalog).build()


def _obs(B=5, seed=0):
    return np.random.default_rng(seed).standard_normal((B, 6)).astype(np.float32)


def _torch_logits(mod, obs, monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "torch")
    try:
        with torch.no_grad():
            return mod.forward_inference({"obs": torch.from_numpy(obs)})["action_dist_inputs"]
    finally:
        monkeypatch.delenv(dispatch.ENV_VAR)


def _assert_fresh(mod, obs, monkeypatch, what):
    fused = mod.forward_inference({"obs": obs})["action_dist_inputs"]
    want = _torch_logits(mod, obs, monkeypatch)
    torch.testing.assert_close(fused, want.float(), atol=1e-5, rtol=1e-5, msg=lambda m: f"stale after {what}: {m}")


def _new_state(mod, seed=3):
    """Random weights (buffers such as the log-std clip constant kept)."""
    g = torch.Generator().manual_seed(seed)
    params = dict(mod.named_parameters())
    return {k: torch.randn(v.shape, generator=g) * 0.5 if k in params else v.clone()
            for k, v in mod.state_dict().items()}


# ------------------------------------------------------------------------------------ stale

def _assign(mod):
    mod.load_state_dict(_new_state(mod), assign=True)


def _vector_to_parameters(mod):
    vec = torch.nn.utils.parameters_to_vector(mod.parameters())
    torch.nn.utils.vector_to_parameters(torch.randn_like(vec) * 0.5, mod.parameters())


def _set_data(mod):
    for p in mod.parameters():
        p.data = torch.randn_like(p) * 0.5


def _replace_parameter(mod):
    lin = mod.encoder.actor.net.linears[0]
    lin.weight = nn.Parameter(torch.randn_like(lin.weight))


def _replace_layer(mod):
    seq = mod.pi.net.mlp
    old = seq[0]
    seq[0] = nn.Linear(old.in_features, old.out_features)


def _double(mod):
    mod.double()
    with torch.no_grad():
        for p in mod.parameters():
            p.mul_(1.5)


def _optimizer_step(mod):
    opt = torch.optim.SGD(mod.parameters(), lr=0.1)
    out = mod.forward_train({"obs": torch.randn(8, 6)})
    (out["action_dist_inputs"].square().sum() + out["vf_preds"].sum()).backward()
    opt.step()


def _load_state_dict(mod):
    mod.load_state_dict(_new_state(mod))


UPDATES = {f.__name__.lstrip("_"): f for f in (_assign, _vector_to_parameters, _set_data, _replace_parameter,
                                                _replace_layer, _double, _optimizer_step, _load_state_dict)}


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("update", list(UPDATES))
def test_every_update_path_is_seen_by_the_next_step(update, act, monkeypatch):
    mod = _module(act)
    obs = _obs()
    _assert_fresh(mod, obs, monkeypatch, "build")
    UPDATES[update](mod)
    _assert_fresh(mod, obs, monkeypatch, update)


@pytest.mark.parametrize("write", ["data_inplace", "numpy_view"])
def test_undetectable_writes_are_fixed_by_refresh_fast_path(write, monkeypatch):
    mod = _module()
    obs = _obs()
    mod.forward_inference({"obs": obs})  # plan built and packed
    for p in mod.parameters():
        if write == "data_inplace":
            p.data.mul_(-2.0)
        else:
            p.detach().numpy()[...] *= -2.0
    mod.refresh_fast_path()
    _assert_fresh(mod, obs, monkeypatch, write + " + refresh_fast_path()")


def test_plans_are_not_kept_alive_by_their_module_reference():
    import gc
    import weakref

    mod = _module()
    mod.forward_inference({"obs": _obs()})
    ref = weakref.ref(mod)
    del mod
    gc.collect()
    assert ref() is None, "the cached plan keeps its module alive"


# -------------------------------------------------------------------------------------- torn

def _race(step, update, outs):
    from test_concurrency import race  # one torn-result race for every update path

    return race(step, update, outs, seconds=1.5)


def _exact_states(mod):
    g = torch.Generator().manual_seed(7)
    params = dict(mod.named_parameters())
    return [{k: torch.round(torch.randn(v.shape, generator=g) * 64) / 1024 if k in params else v.clone()
             for k, v in mod.state_dict().items()} for _ in range(2)]


def test_load_state_dict_while_stepping_is_old_or_new():
    mod = _module(fcnet_hiddens=[64, 64])
    states = _exact_states(mod)
    obs = torch.from_numpy(_obs(32))
    outs = []
    for s in states:
        mod.load_state_dict(s)
        outs.append(mod.forward_inference({"obs": obs})["action_dist_inputs"].clone())
    assert not torch.equal(outs[0], outs[1])
    steps, torn = _race(lambda: mod.forward_inference({"obs": obs})["action_dist_inputs"],
                        lambda i: mod.load_state_dict(states[i % 2]), outs)
    assert steps > 0 and torn == 0, f"{torn} torn results in {steps} steps"


def test_rllib_fast_module_set_state_while_stepping_is_old_or_new():
    pytest.importorskip("ray.rllib")
    from rlmodule_fast.rllib import FastPPOTorchRLModule

    fast = FastPPOTorchRLModule(observation_space=OBS, action_space=ACTS["discrete"],
                                model_config={"fcnet_hiddens": [64, 64]})
    states = _exact_states(fast)
    obs = torch.from_numpy(_obs(32))
    outs = []
    for s in states:
        fast.set_state(s)
        outs.append(fast.forward_inference({"obs": obs})["action_dist_inputs"].clone())
    assert fast.fast_path_info()["active"]
    assert not torch.equal(outs[0], outs[1])
    steps, torn = _race(lambda: fast.forward_inference({"obs": obs})["action_dist_inputs"],
                        lambda i: fast.set_state(states[i % 2]), outs)
    assert steps > 0 and torn == 0, f"{torn} torn results in {steps} steps"


def test_set_state_with_one_bad_tensor_changes_nothing():
    mod = _module()
    before = {k: v.clone() for k, v in mod.state_dict().items()}
    bad = _new_state(mod)
    last = sorted(bad)[-1]
    bad[last] = torch.empty(bad[last].shape, device="meta")
    with pytest.raises(ValueError, match="meta"):
        mod.set_state(bad)
    for k, v in mod.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} was replaced by a failed set_state"


def test_load_state_dict_with_one_bad_shape_changes_nothing():
    mod = _module()
    before = {k: v.clone() for k, v in mod.state_dict().items()}
    bad = _new_state(mod)
    last = sorted(bad)[-1]
    bad[last] = torch.zeros(3, 3)
    with pytest.raises(RuntimeError, match="nothing was loaded"):
        mod.load_state_dict(bad)
    for k, v in mod.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} was replaced by a failed load_state_dict"


def test_module_moved_to_meta_never_reaches_cpp():
    mod = _module()
    mod.forward_inference({"obs": _obs()})  # a CPU plan is cached
    mod.to("meta")
    with pytest.raises(ValueError, match="CPU parameters"):
        mod.forward_inference({"obs": _obs()})


# ------------------------------------------------------------------------- same behaviour everywhere

BACKENDS = ["torch", "cpp"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("kind", ["exploration", "inference"])
def test_every_backend_returns_the_same_keys(backend, act, kind, monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, backend)
    mod = _module(act)
    out = getattr(mod, f"forward_{kind}")({"obs": _obs(3)})
    assert set(out) == {"action_dist_inputs", "actions", "action_logp"}
    dist = mod.get_exploration_action_dist_cls().from_logits(out["action_dist_inputs"])
    torch.testing.assert_close(out["action_logp"], dist.logp(out["actions"]).float(), atol=1e-5, rtol=1e-5)
    if kind == "inference":
        torch.testing.assert_close(out["actions"], dist.to_deterministic().sample())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_observations_are_the_same_error(backend, bad, monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, backend)
    mod = _module("box")
    obs = _obs(4)
    obs[2, 1] = bad
    for kind in ("exploration", "inference"):
        with pytest.raises(ValueError, match=r"obs: contains NaN or inf \(row 2\)"):
            getattr(mod, f"forward_{kind}")({"obs": obs})


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("obs", [
    np.array([["1.5"] * 6], dtype=str),
    np.array([[b"1"] * 6], dtype=bytes),
    np.array([[datetime.datetime(2020, 1, 1)] * 6], dtype="datetime64[s]"),
    np.array([[1.0] * 6], dtype=object),
], ids=["str", "bytes", "datetime", "object"])
def test_non_numeric_observations_are_rejected_alike(backend, obs, monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, backend)
    mod = _module()
    with pytest.raises(ValueError, match=r"'obs' has dtype .*expected a number dtype"):
        mod.forward_exploration({"obs": obs})


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("as_tensor", [False, True])
def test_zero_row_batches_give_empty_outputs(backend, act, as_tensor, monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, backend)
    mod = _module(act)
    obs = _obs(0)
    ref = mod.forward_exploration({"obs": _obs(2)})
    out = mod.forward_exploration({"obs": torch.from_numpy(obs) if as_tensor else obs})
    assert set(out) == set(ref)
    for k in out:
        assert isinstance(out[k], torch.Tensor)
        assert tuple(out[k].shape) == (0, *ref[k].shape[1:]), k
        assert out[k].dtype == ref[k].dtype, k


def test_unavailable_backend_under_auto_warns_once_and_is_reported(monkeypatch):
    monkeypatch.setitem(dispatch._status, "cpp", (False, "the C++ extension rlmodule_fast._C is not importable (test)"))
    monkeypatch.setattr(dispatch, "_warned", set())
    mod = _module()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mod.forward_exploration({"obs": _obs(2)})
        mod.forward_exploration({"obs": _obs(2)})
    msgs = [str(w.message) for w in caught if "unavailable" in str(w.message)]
    assert len(msgs) == 1 and "not importable (test)" in msgs[0], msgs
    info = mod.fast_path_info()
    assert info["backend"] == "torch" and not info["active"] and "not importable (test)" in info["reason"]


def test_fast_path_info_says_what_runs(monkeypatch):
    mod = _module()
    info = mod.fast_path_info()
    assert info == {"backend": "cpp", "active": True, "reason": info["reason"]} and info["reason"]
    monkeypatch.setenv(dispatch.ENV_VAR, "torch")
    info = mod.fast_path_info()
    assert info["backend"] == "torch" and not info["active"] and "RLMODULE_FAST_BACKEND=torch" in info["reason"]


def test_shape_caches_are_bounded():
    mod = _module()
    for B in range(1, 600):
        mod.forward_exploration({"obs": np.zeros((B, 6), np.float32)})
    assert all(len(c._ok) <= 256 for pair in mod._spec_checkers.values() for c in pair)


def test_training_on_cuda_stays_on_torch_unless_opted_in(monkeypatch):
    monkeypatch.delenv(dispatch.TRAIN_ENV_VAR, raising=False)
    assert dispatch.training_mlp_backend(torch.zeros(1)) is None
    assert "torch" in rf.backend_info()["train"]["backend"]
    monkeypatch.setenv(dispatch.TRAIN_ENV_VAR, "bogus")
    with pytest.raises(ValueError, match="RLMODULE_FAST_TRAIN_BACKEND"):
        dispatch.training_mlp_backend(torch.zeros(1))

"""The recurrent hot branch of PPOTorchRLModule's fused step (``_seq_step``): a [B, 1, D] (or
[B, D]) batch with its state goes to the cpp plan as it is. It must give exactly what the general branch gives
(the batch converted to torch, re-flattened, the state reshaped): the same keys, tensors of the
same dtype, shape and strides, the same bits, the same random stream, the same errors."""
from __future__ import annotations

import itertools

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlmodule_fast as rf
from rlmodule_fast import Columns
from rlmodule_fast.ppo import PPOCatalog, PPOTorchRLModule

CPP = rf.backend_info()["cpp"]
pytestmark = pytest.mark.skipif(not CPP["available"], reason=f"cpp backend unavailable: {CPP['reason']}")

ACTS = {"disc3": gym.spaces.Discrete(3), "box2": gym.spaces.Box(-1.0, 1.0, (2,), np.float32)}


def make(kind: str, share: bool, act: str):
    torch.manual_seed(0)
    return PPOTorchRLModule(observation_space=gym.spaces.Box(-1.0, 1.0, (5,), np.float32), action_space=ACTS[act],
                            model_config={"fcnet_hiddens": [8], "lstm_cell_size": 9, "vf_share_layers": share,
                                          f"use_{kind}": True},
                            catalog_class=PPOCatalog)


def batch_for(m, B: int, tensor: bool, state_t: bool, dtype=np.float32, seed: int = 1, obs_t: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 1, (B, 1, 5) if obs_t else (B, 5)).astype(dtype)

    def leaf(v):
        a = (0.3 * rng.standard_normal((B, 1, v.shape[-1]))).astype(np.float32)
        a = a if state_t else a[:, 0].copy()
        return torch.from_numpy(a) if tensor else a

    def walk(d):
        return {k: walk(v) if isinstance(v, dict) else leaf(v) for k, v in d.items()}
    return {Columns.OBS: torch.from_numpy(obs) if tensor else obs, Columns.STATE_IN: walk(m.get_initial_state())}


def same(a, b, path=()):
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            same(a[k], b[k], path + (k,))
        return
    assert type(a) is torch.Tensor, path
    assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride(), path
    assert torch.equal(a, b), path


class FeatureSpy:
    """Counts the general branch's runs (it re-flattens the batch through _features)."""

    def __init__(self, monkeypatch):
        self.n = 0
        orig = PPOTorchRLModule._features

        def spy(mod, *a, **k):
            self.n += 1
            return orig(mod, *a, **k)
        monkeypatch.setattr(PPOTorchRLModule, "_features", spy)


def both(m, batch: dict, explore: bool, spy: FeatureSpy):
    """(hot branch outputs, general branch outputs), each from rf.manual_seed(3)."""
    f = m.forward_exploration if explore else m.forward_inference
    rf.manual_seed(3)
    n0 = spy.n
    fast = [f(batch) for _ in range(2)]
    assert spy.n == n0, "the hot branch did not take this batch"
    m._seq_step = False
    try:
        rf.manual_seed(3)
        slow = [f(batch) for _ in range(2)]
        assert spy.n == n0 + 2
    finally:
        m._seq_step = True
    return fast, slow


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("share", [True, False], ids=["shared", "separate"])
@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("B", [1, 7, 50])
def test_hot_branch_equals_general_branch(kind, share, act, B, monkeypatch):
    m = make(kind, share, act)
    spy = FeatureSpy(monkeypatch)
    monkeypatch.setenv("RLMODULE_FAST_BACKEND", "cpp")
    for (tensor, state_t), obs_t in itertools.product(((False, True), (False, False), (True, True), (True, False)),
                                                      (True, False)):
        batch = batch_for(m, B, tensor, state_t, obs_t=obs_t)
        for explore in (True, False):
            fast, slow = both(m, batch, explore, spy)
            for a, b in zip(fast, slow):
                same(a, b)
            assert list(fast[0]) == [Columns.ACTION_DIST_INPUTS, Columns.ACTIONS, Columns.ACTION_LOGP,
                                     Columns.STATE_OUT]
            dist = fast[0][Columns.ACTION_DIST_INPUTS]
            assert (dist.shape[:2] == (B, 1)) if obs_t else (dist.dim() == 2 and dist.shape[0] == B)


def test_hot_branch_converts_float64_and_strided_obs_as_the_general_branch(monkeypatch):
    m = make("lstm", True, "disc3")
    spy = FeatureSpy(monkeypatch)
    monkeypatch.setenv("RLMODULE_FAST_BACKEND", "cpp")
    for obs_t in (True, False):
        b64 = batch_for(m, 6, False, True, dtype=np.float64, obs_t=obs_t)
        fast, slow = both(m, b64, True, spy)
        for a, b in zip(fast, slow):
            same(a, b)
    b64 = batch_for(m, 6, False, True, dtype=np.float64)
    wide = np.random.default_rng(2).uniform(-1, 1, (6, 1, 10)).astype(np.float32)
    strided = dict(b64, **{Columns.OBS: wide[:, :, ::2]})  # a column stride of 2
    fast, slow = both(m, strided, True, spy)
    for a, b in zip(fast, slow):
        same(a, b)


def test_hot_branch_raises_the_general_branch_errors(monkeypatch):
    m = make("gru", True, "disc3")
    monkeypatch.setenv("RLMODULE_FAST_BACKEND", "cpp")
    batch = batch_for(m, 4, False, True)
    batch[Columns.OBS][2, 0, 1] = np.nan
    msgs = []
    for hot in (True, False):
        m._seq_step = hot
        with pytest.raises(ValueError) as e:
            m.forward_exploration(batch)
        msgs.append(str(e.value))
    m._seq_step = True
    assert msgs[0] == msgs[1] and "row 2" in msgs[0]

"""The fused samplers' own random stream (ops/cpp.py): keyed from a seed, never reading or
advancing torch's generator, reproducible under torch.manual_seed across processes and under
rf.manual_seed / rf.set_rng_state within one, and independent of the thread count."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlmodule_fast as rf
from rlmodule_fast.ppo import PPOCatalog, PPOTorchRLModule

CPP = rf.backend_info()["cpp"]
pytestmark = pytest.mark.skipif(not CPP["available"], reason=f"cpp backend unavailable: {CPP['reason']}")


def _module(act=gym.spaces.Discrete(5)):
    torch.manual_seed(0)
    return rf.RLModuleSpec(module_class=PPOTorchRLModule, observation_space=gym.spaces.Box(-1, 1, (4,), np.float32),
                           action_space=act, model_config_dict={"fcnet_hiddens": [16]},
                           catalog_class=PPOCatalog).build()


def _draws(mod, obs, n=5):
    return [mod.forward_exploration({"obs": obs})["actions"].clone() for _ in range(n)]


def test_fused_path_never_touches_torchs_generator():
    mod = _module()
    obs = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)
    torch.manual_seed(3)
    before = torch.get_rng_state()
    for _ in range(3):
        mod.forward_exploration({"obs": obs})
        rf.ops.sample_categorical(torch.zeros(8, 3), backend="cpp")
        rf.ops.sample_diag_gaussian(torch.zeros(8, 4), backend="cpp")
    assert torch.equal(torch.get_rng_state(), before), "the fused samplers advanced torch's global stream"


def test_get_and_set_rng_state_replay_draws():
    mod = _module(gym.spaces.Box(-1, 1, (3,), np.float32))
    obs = np.zeros((16, 4), np.float32)
    rf.manual_seed(5)
    _draws(mod, obs, 2)
    state = rf.get_rng_state()
    assert set(state) == {"key", "counter", "seed"} and all(type(state[k]) is int for k in ("key", "counter"))
    first = _draws(mod, obs)
    torch.rand(10)  # torch's own draws do not matter
    rf.set_rng_state(state)
    second = _draws(mod, obs)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    assert not torch.equal(first[0], first[1])


@pytest.mark.parametrize("bad", [None, {}, {"key": -1, "counter": 0}, {"key": 1.5, "counter": 0},
                                 {"key": 1, "counter": 2**64}, "state"])
def test_set_rng_state_refuses_anything_else(bad):
    with pytest.raises(ValueError, match="get_rng_state"):
        rf.set_rng_state(bad)


def test_manual_seed_restarts_even_with_the_same_seed():
    mod = _module()
    obs = np.zeros((32, 4), np.float32)
    rf.manual_seed(9)
    a = _draws(mod, obs)
    rf.manual_seed(9)
    b = _draws(mod, obs)
    torch.manual_seed(10)  # a new torch seed re-keys
    c = _draws(mod, obs)
    rf.manual_seed(10)
    d = _draws(mod, obs)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(torch.equal(x, y) for x, y in zip(c, d))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_draws_do_not_depend_on_the_thread_count():
    mod = _module(gym.spaces.Box(-1, 1, (3,), np.float32))
    obs = np.random.default_rng(1).standard_normal((1000, 4)).astype(np.float32)
    old = torch.get_num_threads()
    outs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            rf.manual_seed(4)
            outs.append(_draws(mod, obs, 2))
    finally:
        torch.set_num_threads(old)
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_torch_manual_seed_reproduces_a_run_across_processes():
    script = textwrap.dedent("""
        import gymnasium as gym, numpy as np, torch
        import rlmodule_fast as rf
        from rlmodule_fast.ppo import PPOCatalog, PPOTorchRLModule
        torch.manual_seed(123)
        m = rf.RLModuleSpec(module_class=PPOTorchRLModule, observation_space=gym.spaces.Box(-1, 1, (4,)),
                            action_space=gym.spaces.Discrete(7), catalog_class=PPOCatalog,
                            model_config_dict={"fcnet_hiddens": [8]}).build()
        obs = np.zeros((50, 4), np.float32)
        print([m.forward_exploration({"obs": obs})["actions"].tolist() for _ in range(3)])
    """)
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
            for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr
    assert runs[0].stdout == runs[1].stdout and runs[0].stdout.strip()

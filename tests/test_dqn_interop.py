"""DQN checkpoint / weight interop with RLlib 2.60: RLlib's DefaultDQNTorchRLModule (live or
saved with ``save_to_path``) -> rf.dqn.DQNTorchRLModule and back, target networks included, same
outputs (same float32 ops in the same order: rtol=atol=1e-6).
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlmodule_fast as rf
from rlmodule_fast.dqn import DQNTorchRLModule

OBS = gym.spaces.Box(-1.0, 1.0, (6,), np.float32)
CFG = {"fcnet_hiddens": [11, 7], "head_fcnet_hiddens": [5], "dueling": True, "double_q": True, "num_atoms": 1,
       "epsilon": [(0, 1.0), (1000, 0.02)], "std_init": 0.5, "v_min": -10.0, "v_max": 10.0}
TOL = dict(rtol=1e-6, atol=1e-6)


def rllib_module(inference_only=False, **kw):
    from ray.rllib.algorithms.dqn.torch.default_dqn_torch_rl_module import DefaultDQNTorchRLModule

    torch.manual_seed(3)
    m = DefaultDQNTorchRLModule(observation_space=OBS, action_space=gym.spaces.Discrete(4),
                                model_config={**CFG, **kw}, inference_only=inference_only)
    if not inference_only:
        m.make_target_networks()
        with torch.no_grad():
            for p in m._target_af.parameters():
                p.add_(0.05)
    return m


def same_outputs(ours, theirs, targets=True):
    obs, nxt = torch.rand(9, 6) * 2 - 1, torch.rand(9, 6) * 2 - 1
    for k, v in theirs.compute_q_values({"obs": obs}).items():
        torch.testing.assert_close(ours.compute_q_values({"obs": obs})[k], v, **TOL)
    if targets:
        a, b = theirs.forward_train({"obs": obs, "new_obs": nxt}), ours.forward_train({"obs": obs, "new_obs": nxt})
        assert set(a) == set(b)
        for k in a:
            torch.testing.assert_close(b[k], a[k], **TOL)
    assert torch.equal(ours.forward_inference({"obs": obs.numpy()})["actions"], theirs.forward_inference({"obs": obs})["actions"])


@pytest.mark.parametrize("num_atoms", [1, 4])
def test_live_module_both_ways(num_atoms):
    pytest.importorskip("ray.rllib")
    theirs = rllib_module(num_atoms=num_atoms)
    ours = rf.rllib.from_rllib_module(theirs)
    assert isinstance(ours, DQNTorchRLModule) and ours.num_atoms == num_atoms and hasattr(ours, "_target_af")
    same_outputs(ours, theirs)
    back = rf.rllib.to_rllib_module(ours)
    assert type(back).__name__ == "DefaultDQNTorchRLModule"
    same_outputs(ours, back)
    state = rf.rllib.to_rllib_state(ours, inference_only=True)
    assert set(state) == set(theirs.get_state(inference_only=True)) and all(isinstance(v, np.ndarray) for v in state.values())


@pytest.mark.parametrize("inference_only", [False, True])
def test_rllib_checkpoint_loads(tmp_path, inference_only):
    pytest.importorskip("ray.rllib")
    theirs = rllib_module(inference_only=inference_only)
    theirs.save_to_path(tmp_path / "m")
    ours = rf.rllib.load_rllib_checkpoint(tmp_path / "m")
    assert isinstance(ours, DQNTorchRLModule) and ours.inference_only == inference_only
    assert hasattr(ours, "_target_af") != inference_only
    same_outputs(ours, theirs, targets=not inference_only)
    assert ours.epsilon_schedule.at(500) == pytest.approx(theirs.epsilon_schedule._schedule.value(500))
    small = rf.rllib.load_rllib_dqn_checkpoint(tmp_path / "m", inference_only=True)
    assert small.inference_only and not hasattr(small, "_target_af")


def test_checkpoint_that_does_not_fit_is_refused(tmp_path):
    pytest.importorskip("ray.rllib")
    import pickle

    theirs = rllib_module()
    theirs.save_to_path(tmp_path / "m")
    f = tmp_path / "m" / "module_state.pkl"
    state = pickle.loads(f.read_bytes())
    state["af.net.mlp.2.weight"] = np.zeros((3, 5), np.float32)
    f.write_bytes(pickle.dumps(state))
    with pytest.raises(ValueError, match=r"af\.net\.mlp\.2\.weight"):
        rf.rllib.load_rllib_checkpoint(tmp_path / "m")


def test_state_names_without_ray():
    ours = DQNTorchRLModule(observation_space=OBS, action_space=gym.spaces.Discrete(4), model_config=CFG)
    ours.make_target_networks()
    st = rf.rllib.to_rllib_dqn_state(ours)
    assert "encoder.net.mlp.0.weight" in st and "_target_vf.net.mlp.2.bias" in st
    assert not any(k.startswith("_target") for k in rf.rllib.to_rllib_dqn_state(ours, inference_only=True))
    kw = rf.rllib.rllib_dqn_module_kwargs(ours)
    assert kw["model_config"]["dueling"] and kw["model_config"]["fcnet_hiddens"] == [11, 7]

"""A learner's module (target networks made) round-trips through ``save_to_path`` /
``RLModule.from_checkpoint`` and ``set_state`` for every module with ``TargetNetworkAPI``; a
refused state leaves the receiving module without targets (all or nothing)."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlmodule_fast as rf
from rlmodule_fast.appo import APPOTorchRLModule
from rlmodule_fast.dqn import DQNTorchRLModule
from rlmodule_fast.sac import SACTorchRLModule

OBS = gym.spaces.Box(-1, 1, (4,), np.float32)


def build(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    if kind == "dqn":
        return DQNTorchRLModule(observation_space=OBS, action_space=gym.spaces.Discrete(3), model_config={"fcnet_hiddens": [8]})
    if kind == "sac":
        return SACTorchRLModule(observation_space=OBS, action_space=gym.spaces.Box(-1, 1, (2,), np.float32),
                                model_config={"fcnet_hiddens": [8]})
    return rf.RLModuleSpec(module_class=APPOTorchRLModule, observation_space=OBS, action_space=gym.spaces.Discrete(3),
                           model_config_dict={"fcnet_hiddens": [8]}).build()


@pytest.mark.parametrize("kind", ["dqn", "sac", "appo"])
def test_learner_module_round_trips(kind, tmp_path):
    m = build(kind)
    m.make_target_networks()
    with torch.no_grad():
        for _, tgt in m.get_target_network_pairs():
            for p in tgt.parameters():
                p.add_(0.25)  # targets that differ from the main nets
    m.save_to_path(tmp_path)
    back = rf.RLModule.from_checkpoint(tmp_path)
    sd, sd2 = m.state_dict(), back.state_dict()
    assert sorted(sd) == sorted(sd2)
    for k in sd:
        assert torch.equal(sd[k], sd2[k]), k
    assert len(back.get_target_network_pairs()) == len(m.get_target_network_pairs())


@pytest.mark.parametrize("kind", ["dqn", "sac", "appo"])
def test_refused_state_leaves_no_targets(kind):
    src = build(kind)
    src.make_target_networks()
    state = dict(src.get_state())
    state["bogus.weight"] = torch.zeros(1)
    dst = build(kind, seed=1)
    children = set(dict(dst.named_children()))
    with pytest.raises(ValueError, match="unexpected keys"):
        dst.set_state(state)
    assert set(dict(dst.named_children())) == children
    with pytest.raises(RuntimeError):
        dst.get_target_network_pairs()
    state.pop("bogus.weight")
    dst.set_state(state)  # the good state then loads, targets included
    assert all(torch.equal(a, b) for a, b in zip(dst.state_dict().values(), src.state_dict().values()))

"""rf.apis: RLlib's API mixins as isinstance-checkable classes."""
import gymnasium as gym
import pytest
import torch

import rlmodule_fast as rf
from rlmodule_fast.apis import (InferenceOnlyAPI, QNetAPI, TargetNetworkAPI, ValueFunctionAPI,
                                make_target_network)


def test_ppo_implements_value_function_and_inference_only():
    m = rf.RLModuleSpec(module_class=rf.ppo.PPOTorchRLModule, observation_space=gym.spaces.Box(-1, 1, (3,)),
                        action_space=gym.spaces.Discrete(2)).build()
    assert isinstance(m, ValueFunctionAPI) and isinstance(m, InferenceOnlyAPI)
    assert not isinstance(m, TargetNetworkAPI) and not isinstance(m, QNetAPI)
    assert m.compute_values({"obs": torch.zeros(5, 3)}).shape == (5,)


def test_apis_are_abstract():
    for api in (ValueFunctionAPI, TargetNetworkAPI, InferenceOnlyAPI, QNetAPI):
        with pytest.raises(TypeError):
            api()


def test_make_target_network_is_a_frozen_copy():
    net = torch.nn.Linear(3, 2)
    tgt = make_target_network(net)
    assert tgt is not net and all(not p.requires_grad for p in tgt.parameters())
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), tgt.parameters()))
    with torch.no_grad():
        net.weight.add_(1.0)
    assert not torch.equal(net.weight, tgt.weight)

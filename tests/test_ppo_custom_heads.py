"""A PPOCatalog subclass that returns its own heads (RLlib's documented extension point): the
module works on every path, the fused step runs only when the layers are ones it can run, and
fast_path_info() says which path runs and why."""
from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

import rlmodule_fast as rf
from rlmodule_fast.ppo import PPOCatalog, PPOTorchRLModule

OBS = gym.spaces.Box(-1, 1, (5,), np.float32)


class LinearHeadsCatalog(PPOCatalog):
    def build_pi_head(self, framework="torch"):
        return nn.Linear(16, 3)  # the encoder latent is fcnet_hiddens[-1] = 16

    def build_vf_head(self, framework="torch"):
        return nn.Linear(16, 1)


class LinearVfCatalog(PPOCatalog):
    def build_vf_head(self, framework="torch"):
        return nn.Linear(16, 1)


def _module(catalog):
    torch.manual_seed(0)
    return rf.RLModuleSpec(module_class=PPOTorchRLModule, observation_space=OBS, action_space=gym.spaces.Discrete(3),
                           model_config_dict={"fcnet_hiddens": [16]}, catalog_class=catalog).build()


def test_custom_pi_head_runs_the_torch_forward_and_says_why():
    mod = _module(LinearHeadsCatalog)
    obs = np.zeros((4, 5), np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for fwd in (mod.forward_inference, mod.forward_exploration):
            out = fwd({"obs": obs})
            assert set(out) == {"action_dist_inputs", "actions", "action_logp"}
            assert out["action_dist_inputs"].shape == (4, 3)
    assert sum("fused step cannot run" in str(w.message) for w in caught) == 1
    info = mod.fast_path_info()
    assert info["backend"] == "torch" and not info["active"] and "pi: a Linear head" in info["reason"]
    out = mod.forward_train({"obs": torch.zeros(4, 5)})
    assert out["vf_preds"].shape == (4,)
    torch.testing.assert_close(out["action_dist_inputs"], mod.pi(mod.encoder.actor(torch.zeros(4, 5))))


def test_custom_value_head_keeps_the_fused_policy_step():
    mod = _module(LinearVfCatalog)
    info = mod.fast_path_info()
    assert info["active"] and info["backend"] == "cpp", info
    obs = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    fused = mod.forward_inference({"obs": obs})["action_dist_inputs"]
    torch.testing.assert_close(fused, mod.pi(mod.encoder.actor(torch.from_numpy(obs))).detach(), atol=1e-5, rtol=1e-5)
    assert mod.compute_values({"obs": torch.from_numpy(obs)}).shape == (4,)

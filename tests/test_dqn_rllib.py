"""``rf.rllib.FastDQNTorchRLModule`` inside RLlib: same greedy actions as RLlib's
DefaultDQNTorchRLModule for the same weights, RLlib's epsilon schedule driven by ``t``, synced
weights seen by the next fused step, RLlib's path when the fused step cannot run, and RLlib's
DQN training with it for 2 iterations. Needs ray[rllib] (skipped without it).
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

pytest.importorskip("ray.rllib")

from ray.rllib.algorithms.dqn.torch.default_dqn_torch_rl_module import DefaultDQNTorchRLModule  # noqa: E402

import rlmodule_fast as rf  # noqa: E402
from rlmodule_fast.rllib import FastDQNTorchRLModule  # noqa: E402

OBS = gym.spaces.Box(-1.0, 1.0, (5,), np.float32)
CFG = {"fcnet_hiddens": [13, 6], "head_fcnet_hiddens": [5], "double_q": True, "epsilon": [(0, 1.0), (100, 0.0)],
       "std_init": 0.5, "v_min": -2.0, "v_max": 3.0}


def pair(dueling: bool, num_atoms: int, inference_only: bool = True):
    kw = dict(observation_space=OBS, action_space=gym.spaces.Discrete(4),
              model_config={**CFG, "dueling": dueling, "num_atoms": num_atoms}, inference_only=inference_only)
    rl, fast = DefaultDQNTorchRLModule(**kw), FastDQNTorchRLModule(**kw)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in rl.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    fast.set_state(rl.get_state())
    return rl, fast


@pytest.mark.parametrize("dueling,num_atoms", [(True, 1), (False, 1), (True, 5), (False, 3)])
def test_same_actions_as_rllib(dueling, num_atoms):
    rl, fast = pair(dueling, num_atoms)
    obs = torch.rand(37, 5) * 2 - 1
    want = rl.forward_inference({"obs": obs})
    got = fast.forward_inference({"obs": obs})
    assert set(got) == set(want) == {"actions"}
    assert torch.equal(got["actions"], want["actions"])
    # past the schedule's end epsilon is 0: exploration is greedy, as RLlib's
    assert torch.equal(fast.forward_exploration({"obs": obs}, t=500)["actions"], want["actions"])
    assert torch.equal(rl.forward_exploration({"obs": obs}, t=500)["actions"], want["actions"])
    info = fast.fast_path_info()
    assert info["active"] and info["backend"] == "cpp" and info["calls"] == 2


def test_epsilon_from_rllibs_schedule_and_synced_weights():
    rl, fast = pair(True, 1)
    obs = torch.rand(4000, 5) * 2 - 1
    greedy = rl.forward_inference({"obs": obs})["actions"]
    rf.manual_seed(0)
    frac = (fast.forward_exploration({"obs": obs}, t=50)["actions"] != greedy).float().mean()
    assert float(fast.epsilon_schedule.get_current_value()) == pytest.approx(0.5)
    assert abs(float(frac) - 0.5 * 3 / 4) < 0.04  # epsilon 0.5, 4 actions: 3/8 differ from greedy
    with torch.no_grad():  # what an env runner gets from the learner: set_state
        state = {k: torch.as_tensor(v) + (0.3 * torch.randn(v.shape) if k.endswith(("weight", "bias")) else 0)
                 for k, v in rl.get_state().items()}
    rl.set_state(state)
    fast.set_state(state)
    assert torch.equal(fast.forward_inference({"obs": obs})["actions"], rl.forward_inference({"obs": obs})["actions"])


def test_rllib_path_when_not_fused(monkeypatch):
    rl, fast = pair(True, 1)
    monkeypatch.setenv("RLMODULE_FAST_BACKEND", "torch")
    info = fast.fast_path_info()
    assert not info["active"] and "RLMODULE_FAST_BACKEND=torch" in info["reason"]
    obs = torch.rand(6, 5)
    assert torch.equal(fast.forward_inference({"obs": obs})["actions"], rl.forward_inference({"obs": obs})["actions"])
    assert info["calls"] == 0


def test_learner_path_is_rllibs():
    rl, fast = pair(False, 3, inference_only=False)
    rl.make_target_networks()
    fast.make_target_networks()
    fast.set_state(rl.get_state())
    batch = {"obs": torch.rand(8, 5), "new_obs": torch.rand(8, 5)}
    a, b = rl.forward_train(batch), fast.forward_train(batch)
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(b[k], a[k])


def test_rllib_dqn_trains_with_fast_module():
    from ray.rllib.algorithms.dqn import DQNConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    cfg = (DQNConfig().environment("CartPole-v1")
           .env_runners(num_env_runners=0, rollout_fragment_length=32)
           .training(num_steps_sampled_before_learning_starts=32, train_batch_size=32, lr=1e-3,
                     replay_buffer_config={"type": "PrioritizedEpisodeReplayBuffer", "capacity": 1000})
           .reporting(min_sample_timesteps_per_iteration=32)
           .rl_module(rl_module_spec=RLModuleSpec(module_class=FastDQNTorchRLModule), model_config={"fcnet_hiddens": [16]})
           .debugging(seed=0))
    algo = cfg.build_algo()
    try:
        results = [algo.train() for _ in range(2)]
        module = algo.env_runner.module
        assert isinstance(module, FastDQNTorchRLModule)
        info = module.fast_path_info()
        assert info["active"] and info["calls"] >= 64
        learner = results[-1]["learners"]["default_policy"]
        assert np.isfinite(learner["total_loss"]) and results[-1]["env_runners"]["num_env_steps_sampled_lifetime"] >= 64
        # the learner's weights reached the env runner's module, and its fused step uses them
        lw = algo.learner_group.get_weights()["default_policy"]
        ew = module.get_state()
        for k, v in ew.items():
            np.testing.assert_allclose(np.asarray(v), np.asarray(lw[k]), rtol=0, atol=0)
    finally:
        algo.stop()

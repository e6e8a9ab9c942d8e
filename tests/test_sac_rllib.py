"""``rf.rllib.FastSACTorchRLModule`` and the SAC converters inside RLlib: RLlib's
DefaultSACTorchRLModule with the fused env-runner step (same distribution inputs, actions in
[-1, 1] with RLlib's logp), weights both ways, and RLlib's SAC training with it.

Needs ray[rllib] (skipped without it).
"""
from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch

pytest.importorskip("ray.rllib")

from ray.rllib.algorithms.sac.torch.default_sac_torch_rl_module import DefaultSACTorchRLModule  # noqa: E402
from ray.rllib.core.distribution.torch.torch_distribution import TorchSquashedGaussian  # noqa: E402
from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig  # noqa: E402

import rlmodule_fast as rf  # noqa: E402
import rlmodule_fast.rllib as rr  # noqa: E402
from rlmodule_fast.rllib import FastSACTorchRLModule  # noqa: E402

OBS = gym.spaces.Box(-1.0, 1.0, (5,), np.float32)
BOX = gym.spaces.Box(-2.0, 2.0, (2,), np.float32)
DISC = gym.spaces.Discrete(3)
SMALL = {"fcnet_hiddens": [12, 8], "head_fcnet_hiddens": [6], "fusionnet_hiddens": [7], "twin_q": True}


def full_config(extra: dict) -> dict:
    return {**dataclasses.asdict(DefaultModelConfig()), **extra}


def pair(act, extra=None):
    kw = dict(observation_space=OBS, action_space=act, model_config=full_config({**SMALL, **(extra or {})}))
    rl, fast = DefaultSACTorchRLModule(**kw), FastSACTorchRLModule(**kw)
    rl.make_target_networks()
    fast.make_target_networks()
    fast.set_state(rl.get_state())
    return rl, fast


@pytest.mark.parametrize("act,extra", [(BOX, None), (DISC, None), (BOX, {"fcnet_use_layernorm": True})],
                         ids=["box", "discrete", "box-layernorm"])
def test_fast_module_matches_rllib_and_samples_fused(act, extra):
    rl, fast = pair(act, extra)
    obs = torch.rand(9, 5) * 2 - 1
    with torch.no_grad():
        want = rl.forward_inference({"obs": obs})["action_dist_inputs"]
        det = fast.forward_inference({"obs": obs})
        out = fast.forward_exploration({"obs": obs})
    info = fast.fast_path_info()
    assert info["active"] and info["backend"] == "cpp" and info["calls"] == 2, info
    for o in (det, out):
        torch.testing.assert_close(o["action_dist_inputs"], want, rtol=1e-5, atol=1e-5)
    dist = rl.get_exploration_action_dist_cls().from_logits(want.double())
    if act is BOX:
        assert bool((out["actions"].abs() <= 1).all())
        torch.testing.assert_close(det["actions"].double(), torch.tanh(want[:, :2]).double(), rtol=1e-5, atol=2e-6)
        assert isinstance(dist, TorchSquashedGaussian)  # RLlib's own logp of our sampled actions
        torch.testing.assert_close(out["action_logp"].double(), dist.logp(out["actions"].double()),
                                   rtol=1e-4, atol=2e-3)
    else:
        assert torch.equal(det["actions"], want.argmax(-1))
        torch.testing.assert_close(out["action_logp"].double(), dist.logp(out["actions"]), rtol=1e-5, atol=1e-5)
    # the learner path is RLlib's own
    batch = {"obs": obs, "new_obs": obs.flip(0), "actions": torch.rand(9, 2) * 2 - 1 if act is BOX
             else torch.randint(0, 3, (9,))}
    torch.manual_seed(0)
    a = rl.forward_train(dict(batch))
    torch.manual_seed(0)
    b = fast.forward_train(dict(batch))
    for k in a:
        torch.testing.assert_close(b[k], a[k], msg=k)


def test_synced_weights_are_seen_by_the_next_fused_step():
    rl, fast = pair(BOX)
    obs = torch.rand(4, 5)
    before = fast.forward_inference({"obs": obs})["actions"]
    with torch.no_grad():
        for p in rl.pi.parameters():
            p.add_(0.3)
    fast.set_state(rl.get_state(inference_only=True))
    with torch.no_grad():
        want = torch.tanh(rl.forward_inference({"obs": obs})["action_dist_inputs"][:, :2])
    after = fast.forward_inference({"obs": obs})["actions"]
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, want, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("act", [BOX, DISC], ids=["box", "discrete"])
def test_convert_both_ways_same_outputs(act):
    rl = DefaultSACTorchRLModule(observation_space=OBS, action_space=act, model_config=full_config(SMALL))
    rl.make_target_networks()
    ours = rr.from_rllib_sac_module(rl)
    assert isinstance(ours, rf.sac.SACTorchRLModule) and hasattr(ours, "target_qf")
    for k, v in rl.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k
    back = rr.to_rllib_sac_module(ours, FastSACTorchRLModule)
    batch = {"obs": torch.rand(5, 5), "new_obs": torch.rand(5, 5),
             "actions": torch.rand(5, 2) * 2 - 1 if act is BOX else torch.randint(0, 3, (5,))}
    outs = []
    for m in (rl, ours, back):
        torch.manual_seed(1)
        outs.append(m.forward_train(dict(batch)))
    for o in outs[1:]:
        assert set(o) == set(outs[0])
        for k in outs[0]:
            torch.testing.assert_close(o[k], outs[0][k], msg=k)
    # the generic entry points pick SAC by class, as for PPO / APPO / DQN
    generic = rr.from_rllib_module(rl)
    assert type(generic) is type(ours) and all(torch.equal(generic.state_dict()[k], v) for k, v in ours.state_dict().items())
    generic_back = rr.to_rllib_module(generic)
    assert type(generic_back) is DefaultSACTorchRLModule
    state = rr.to_rllib_state(generic)
    for k, v in generic_back.state_dict().items():
        assert np.array_equal(state[k], v.numpy()), k
    inf = rr.from_rllib_sac_module(rl, inference_only=True)
    assert not hasattr(inf, "qf")
    with pytest.raises(ValueError, match="DefaultSACTorchRLModule"):
        rr.from_rllib_sac_module(torch.nn.Linear(2, 2))
    cfg = rr.rllib_sac_model_config(DefaultModelConfig())
    assert "fusionnet_hiddens" in cfg and "fusionnet_kernel_initializer" not in cfg


def test_rllib_sac_trains_with_fast_module():
    """RLlib's SAC (its learner, replay buffer, connectors; a local env runner) runs 2 training
    iterations on Pendulum with FastSACTorchRLModule: the env runner samples through the fused
    step and the learner's updated weights reach it."""
    import ray
    from ray.rllib.algorithms.sac import SACConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    config = (
        SACConfig()
        .environment("Pendulum-v1")
        .env_runners(num_env_runners=0, rollout_fragment_length=50)
        .training(num_steps_sampled_before_learning_starts=100, train_batch_size_per_learner=32,
                  replay_buffer_config={"type": "PrioritizedEpisodeReplayBuffer", "capacity": 2000})
        .reporting(min_sample_timesteps_per_iteration=100, min_time_s_per_iteration=0)
        .rl_module(rl_module_spec=RLModuleSpec(module_class=FastSACTorchRLModule,
                                               model_config={"fcnet_hiddens": [32, 32], "fusionnet_hiddens": [16]}))
        .debugging(seed=0)
    )
    if ray.is_initialized():  # another module (or RLlib's build()) left a session running
        ray.shutdown()
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        algo = config.build_algo()
        try:
            results = [algo.train() for _ in range(2)]
            learner = results[-1]["learners"]["default_policy"]
            assert np.isfinite(learner["qf_loss"]) and np.isfinite(learner["policy_loss"]), learner
            runner = algo.env_runner_group.local_env_runner
            m = runner.module
            info = m.fast_path_info()
            assert info["active"] and info["calls"] >= 150, info
            # the env runner's module holds the learner's latest weights and runs them fused
            state = algo.learner_group.get_state(components="learner/rl_module/default_policy")
            state = state["learner"]["rl_module"]["default_policy"]
            for k, v in m.get_state().items():
                np.testing.assert_array_equal(np.asarray(v), np.asarray(state[k]), err_msg=k)
            obs = torch.rand(3, 3)
            with torch.no_grad():
                ref = DefaultSACTorchRLModule._forward_inference(m, {"obs": obs})["action_dist_inputs"]
            torch.testing.assert_close(m.forward_inference({"obs": obs})["action_dist_inputs"], ref,
                                       rtol=1e-5, atol=1e-5)
        finally:
            algo.stop()
    finally:
        ray.shutdown()


@pytest.mark.parametrize("act", [BOX, DISC], ids=["box", "discrete"])
def test_load_rllib_sac_checkpoint(act, tmp_path):
    """RLlib's own save_to_path of a SAC module (with target networks) -> ours through the restricted
    unpickler: same weights, same forward_train outputs; a PPO checkpoint is refused by name."""
    rl = DefaultSACTorchRLModule(observation_space=OBS, action_space=act, model_config=full_config(SMALL))
    rl.make_target_networks()
    rl.save_to_path(tmp_path / "sac")
    ours = rr.load_rllib_sac_checkpoint(tmp_path / "sac")
    assert hasattr(ours, "target_qf_twin")
    for k, v in rl.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k
    batch = {"obs": torch.rand(4, 5), "new_obs": torch.rand(4, 5),
             "actions": torch.rand(4, 2) * 2 - 1 if act is BOX else torch.randint(0, 3, (4,))}
    torch.manual_seed(2)
    want = rl.forward_train(dict(batch))
    torch.manual_seed(2)
    got = ours.forward_train(dict(batch))
    for k in want:
        torch.testing.assert_close(got[k], want[k], msg=k)
    generic = rr.load_rllib_checkpoint(tmp_path / "sac")  # the one loader: picks SAC by the ctor file's class
    assert type(generic) is type(ours) and hasattr(generic, "target_qf_twin")
    for k, v in ours.state_dict().items():
        assert torch.equal(generic.state_dict()[k], v), k
    inf = rr.load_rllib_sac_checkpoint(tmp_path / "sac", inference_only=True)
    assert not hasattr(inf, "qf")
    torch.testing.assert_close(inf.forward_inference({"obs": batch["obs"]})["action_dist_inputs"],
                               rl.forward_inference({"obs": batch["obs"]})["action_dist_inputs"])
    from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule

    DefaultPPOTorchRLModule(observation_space=OBS, action_space=act, model_config={"fcnet_hiddens": [4]}
                            ).save_to_path(tmp_path / "ppo")
    with pytest.raises(ValueError, match="not a SAC module"):
        rr.load_rllib_sac_checkpoint(tmp_path / "ppo")

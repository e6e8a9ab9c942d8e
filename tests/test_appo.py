"""APPO / IMPALA: ``rf.appo.APPOTorchRLModule`` (RLlib 2.60's DefaultAPPOTorchRLModule names and
outputs: PPO + TargetNetworkAPI), ``rf.rllib.FastAPPOTorchRLModule`` against RLlib's module, and
RLlib's own IMPALA / APPO training a couple of iterations with our Fast* modules on CartPole."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlmodule_fast as rf
from rlmodule_fast.apis import TARGET_NETWORK_ACTION_DIST_INPUTS, TargetNetworkAPI, ValueFunctionAPI

OBS = gym.spaces.Box(-1.0, 1.0, (5,), np.float32)
CFG = {"fcnet_hiddens": [8, 7], "vf_share_layers": False}


def _ours(action_space=gym.spaces.Discrete(3), obs_space=OBS, **kw):
    torch.manual_seed(0)
    return rf.appo.APPOTorchRLModule(observation_space=obs_space, action_space=action_space,
                                     model_config={**CFG, **kw})


@pytest.mark.parametrize("act", [gym.spaces.Discrete(3), gym.spaces.Box(-1, 1, (2,), np.float32)], ids=["discrete", "box"])
def test_target_networks(act, tmp_path):
    m = _ours(act)
    assert isinstance(m, TargetNetworkAPI) and isinstance(m, ValueFunctionAPI)
    assert not any(k.startswith("_old_") for k in m.state_dict())  # only after make_target_networks()
    with pytest.raises(RuntimeError, match="make_target_networks"):
        m.forward_target({"obs": torch.zeros(2, 5)})
    m.make_target_networks()
    pairs = m.get_target_network_pairs()
    assert [(a is m.encoder, b is m._old_encoder) for a, b in pairs[:1]] == [(True, True)]
    assert pairs[1][0] is m.pi and pairs[1][1] is m._old_pi
    assert not any(p.requires_grad for p in m._old_pi.parameters())
    batch = {"obs": torch.randn(4, 5)}
    t0 = m.forward_target(batch)[TARGET_NETWORK_ACTION_DIST_INPUTS]
    torch.testing.assert_close(t0, m.forward_train(batch)["action_dist_inputs"].detach())
    with torch.no_grad():  # the learner moves the main nets; the old policy stays put
        for p in m.pi.parameters():
            p.add_(0.5)
    torch.testing.assert_close(m.forward_target(batch)[TARGET_NETWORK_ACTION_DIST_INPUTS], t0)
    assert not torch.allclose(m.forward_train(batch)["action_dist_inputs"], t0)
    assert m.get_non_inference_attributes() == ["vf", "encoder.critic_encoder", "_old_encoder", "_old_pi"]
    assert not any(k.startswith(("_old_", "vf.")) for k in m.get_state(inference_only=True))
    # a learner's state (with target nets) restores into a fresh module, and into an inference-only one
    fresh = _ours(act)
    fresh.set_state(m.get_state())
    torch.testing.assert_close(fresh.forward_target(batch)[TARGET_NETWORK_ACTION_DIST_INPUTS], t0)
    restored = rf.RLModule.from_checkpoint(m.save_to_path(tmp_path / "appo"))  # weights-only checkpoint
    torch.testing.assert_close(restored.forward_target(batch)[TARGET_NETWORK_ACTION_DIST_INPUTS], t0)
    infer = rf.appo.APPOTorchRLModule(observation_space=OBS, action_space=act, model_config=CFG, inference_only=True)
    infer.set_state(m.get_state())
    out = infer.forward_inference(batch)
    torch.testing.assert_close(out["action_dist_inputs"], m.forward_inference(batch)["action_dist_inputs"])


def test_masked_appo_target_is_masked():
    space = gym.spaces.Dict({"action_mask": gym.spaces.Box(0, 1, (3,)), "observations": OBS})
    m = _ours(obs_space=space)
    m.make_target_networks()
    mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    t = m.forward_target({"obs": {"action_mask": mask, "observations": torch.randn(2, 5)}})
    assert bool((t[TARGET_NETWORK_ACTION_DIST_INPUTS][mask == 0] == float(np.float32(-3.4e38))).all())


def test_appo_module_matches_rllib():
    """Same state-dict keys, non-inference attributes and outputs (forward_target included) as
    RLlib's DefaultAPPOTorchRLModule; our fused FastAPPOTorchRLModule step equals RLlib's forward."""
    pytest.importorskip("ray.rllib")
    from ray.rllib.algorithms.ppo.ppo_catalog import PPOCatalog
    from ray.rllib.algorithms.appo.torch.default_appo_torch_rl_module import DefaultAPPOTorchRLModule
    from ray.rllib.core.rl_module.apis import TARGET_NETWORK_ACTION_DIST_INPUTS as RLLIB_COL

    from rlmodule_fast.rllib import FastAPPOTorchRLModule

    assert RLLIB_COL == TARGET_NETWORK_ACTION_DIST_INPUTS
    kw = dict(observation_space=OBS, action_space=gym.spaces.Discrete(3), model_config=dict(CFG),
              catalog_class=PPOCatalog)
    theirs, fast = DefaultAPPOTorchRLModule(**kw), FastAPPOTorchRLModule(**kw)
    ours = _ours()
    for m in (theirs, fast, ours):
        m.make_target_networks()
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
    assert ours.get_non_inference_attributes() == theirs.get_non_inference_attributes()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(0.4 * torch.randn(p.shape, generator=gen))
    ours.set_state(theirs.get_state())
    fast.set_state(theirs.get_state())
    batch = {"obs": torch.randn(6, 5, generator=gen)}
    with torch.no_grad():
        want_t = theirs.forward_target(dict(batch))[RLLIB_COL]
        want_i = theirs.forward_inference(dict(batch))["action_dist_inputs"]
        for m in (ours, fast):
            torch.testing.assert_close(m.forward_target(dict(batch))[TARGET_NETWORK_ACTION_DIST_INPUTS], want_t)
            out = m.forward_exploration(dict(batch))
            torch.testing.assert_close(out["action_dist_inputs"], want_i, rtol=1e-5, atol=1e-5)
            assert "actions" in out and "action_logp" in out
        torch.testing.assert_close(ours.compute_values(dict(batch)), theirs.compute_values(dict(batch)))
    info = fast.fast_path_info()
    assert info["active"] and info["backend"] == "cpp" and info["calls"] == 1, info


@pytest.fixture(scope="module")
def ray_session():
    pytest.importorskip("ray.rllib")
    import ray

    if ray.is_initialized():  # another module (or RLlib's build()) left a session running
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.mark.parametrize("algo_name", ["IMPALA", "APPO"])
def test_rllib_trains_with_fast_module(ray_session, algo_name):
    """RLlib's IMPALA (with FastPPOTorchRLModule) and APPO (FastAPPOTorchRLModule) train two tiny
    iterations on CartPole: the local env runner samples through the fused step, the learner
    updates, and the env runner's fused step sees the learner's synced weights."""
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from rlmodule_fast.rllib import FastAPPOTorchRLModule, FastPPOTorchRLModule

    if algo_name == "APPO":
        from ray.rllib.algorithms.appo import APPOConfig as Config
        cls = FastAPPOTorchRLModule
    else:
        from ray.rllib.algorithms.impala import IMPALAConfig as Config
        cls = FastPPOTorchRLModule
    config = (Config().environment("CartPole-v1")
              .env_runners(num_env_runners=0, num_envs_per_env_runner=1, rollout_fragment_length=50)
              .learners(num_learners=0)
              .training(train_batch_size_per_learner=200, lr=5e-4)
              .rl_module(rl_module_spec=RLModuleSpec(module_class=cls, model_config={"fcnet_hiddens": [16]}))
              .reporting(min_time_s_per_iteration=0, min_sample_timesteps_per_iteration=400)
              .debugging(seed=0))
    algo = config.build_algo()
    try:
        w0 = {k: v.clone() for k, v in algo.env_runner.module.state_dict().items()}
        results = [algo.train() for _ in range(2)]
        learned = results[-1]["learners"]["default_policy"]
        assert np.isfinite(learned["total_loss"]), learned
        runner_module = algo.env_runner.module
        learner_module = algo.learner_group._learner.module["default_policy"]
        assert type(runner_module) is cls and type(learner_module) is cls
        assert (algo_name == "APPO") == hasattr(learner_module, "_old_pi")  # APPO's learner made targets
        info = runner_module.fast_path_info()
        assert info["active"] and info["calls"] >= 400, info
        obs = torch.from_numpy(np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32))
        with torch.no_grad():
            fused = runner_module.forward_inference({"obs": obs})["action_dist_inputs"]
            rllib_cls = next(c for c in cls.__mro__ if c.__module__.startswith("ray."))  # RLlib's own forward
            ref = rllib_cls._forward_inference(runner_module, {"obs": obs})["action_dist_inputs"]
        torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-5)
        # the runner got (possibly a step behind: the algorithms are asynchronous) learned weights,
        # and the fused step above ran them
        w1 = runner_module.state_dict()
        assert any(not torch.equal(w0[k], w1[k]) for k in w0), "the env runner's weights never changed"
    finally:
        algo.stop()

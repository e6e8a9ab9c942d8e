"""Real Atari (issue 14): ALE/Pong-v5 wrapped by RLlib's ``wrap_atari_for_new_api_stack(dim=84,
framestack=4)`` (84x84x4 float32 frames in [-1, 1]) stepped by our PPO module's CNN policy, and by
RLlib's own env runner with ``FastPPOTorchRLModule``. Skipped without ale-py (ships the ROMs),
opencv-python-headless (the wrapper's resize) or ray[rllib] (the wrapper itself):
``pip install 'rlmodule_fast[atari,rllib]'``.

Tolerance of the RLlib comparison: same torch ops in the same order: rtol=atol=1e-5.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

ale_py = pytest.importorskip("ale_py")
pytest.importorskip("cv2")
pytest.importorskip("ray.rllib")

from ray.rllib.env.wrappers.atari_wrappers import wrap_atari_for_new_api_stack  # noqa: E402

from rlmodule_fast.bench.cases import ATARI_TUNED_FILTERS  # noqa: E402
from rlmodule_fast.core.columns import Columns  # noqa: E402
from rlmodule_fast.ppo import PPOTorchRLModule  # noqa: E402

ENV_KW = dict(frameskip=1, repeat_action_probability=0.0, full_action_space=False)


def pong():
    gym.register_envs(ale_py)
    return wrap_atari_for_new_api_stack(gym.make("ALE/Pong-v5", **ENV_KW), dim=84, framestack=4)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):  # conftest.one_torch_thread
    yield


def test_pong_steps_with_our_cnn_policy():
    from rlmodule_fast.rllib import to_rllib_module

    env = pong()
    assert env.observation_space == gym.spaces.Box(-1.0, 1.0, (84, 84, 4), np.float32)
    torch.manual_seed(0)
    module = PPOTorchRLModule(observation_space=env.observation_space, action_space=env.action_space,
                              model_config={"conv_filters": ATARI_TUNED_FILTERS})
    assert module.fast_path_info()["active"] is True  # the fused conv step samples every action
    rllib = to_rllib_module(module)
    rllib.eval()
    obs, _ = env.reset(seed=0)
    n = int(env.action_space.n)
    seen, resets, frames = set(), 0, []
    with torch.no_grad():
        for t in range(300):
            out = module.forward_exploration({Columns.OBS: obs[None]})
            a, logp = int(out[Columns.ACTIONS][0]), float(out[Columns.ACTION_LOGP][0])
            assert 0 <= a < n and np.isfinite(logp) and logp <= 0.0, (t, a, logp)
            assert torch.isfinite(out[Columns.ACTION_DIST_INPUTS]).all()
            seen.add(a)
            if t % 60 == 0:
                frames.append(obs)
            obs, _, term, trunc, _ = env.step(a)
            if term or trunc:
                obs, _ = env.reset()
                resets += 1
    env.close()
    assert len(seen) > 1  # a random-init policy over 6 actions samples more than one
    # Real frames give RLlib's module (same weights) the same logits.
    batch = {Columns.OBS: torch.from_numpy(np.stack(frames))}
    with torch.no_grad():
        ours = module.forward_inference(dict(batch))
        theirs = rllib.forward_inference(dict(batch))
    torch.testing.assert_close(ours[Columns.ACTION_DIST_INPUTS], theirs[Columns.ACTION_DIST_INPUTS],
                               rtol=1e-5, atol=1e-5)
    assert torch.equal(ours[Columns.ACTIONS], ours[Columns.ACTION_DIST_INPUTS].argmax(-1))


def test_rllib_env_runner_samples_pong_with_fast_module():
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
    from ray.tune.registry import register_env

    from rlmodule_fast.rllib import FastPPOTorchRLModule

    register_env("rlmodule_fast_pong84", lambda cfg: pong())
    config = (
        PPOConfig()
        .environment("rlmodule_fast_pong84")
        .env_runners(num_env_runners=1, num_envs_per_env_runner=1)
        .rl_module(rl_module_spec=RLModuleSpec(module_class=FastPPOTorchRLModule,
                                               model_config={"conv_filters": ATARI_TUNED_FILTERS}))
        .debugging(seed=0)
    )
    runner = SingleAgentEnvRunner(config=config, worker_index=1)
    try:
        info = runner.module.fast_path_info()
        assert info["active"] is True and info["backend"] == "cpp", info
        episodes = runner.sample(num_timesteps=128, explore=True)
        assert runner.module.fast_path_info()["calls"] >= 128  # every env step ran the fused conv step
        steps = sum(len(e) for e in episodes)
        assert steps >= 128
        for e in episodes:
            acts = np.asarray(e.get_actions())
            assert acts.size and acts.min() >= 0 and acts.max() < 6
            logp = np.asarray(e.get_extra_model_outputs("action_logp"))
            assert np.isfinite(logp).all() and (logp <= 0).all()
    finally:
        runner.stop()

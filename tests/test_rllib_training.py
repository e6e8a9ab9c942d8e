"""``rf.rllib.FastPPOTorchRLModule`` inside RLlib: same outputs as RLlib's DefaultPPOTorchRLModule,
fused actions/logp on the env-runner path, learner path unchanged, synced weights seen by the
next fused step, and an RLlib PPO on CartPole-v1 that learns with it (1 remote env runner).

Needs ray[rllib] (skipped without it). Tolerances: the fused C++ step and torch compute the same
float32 ops in a different order: rtol=atol=1e-5 on dist inputs, 1e-4 on log-probs.
"""
from __future__ import annotations

import pathlib

import gymnasium as gym
import numpy as np
import pytest
import torch

pytest.importorskip("ray.rllib")

from ray.rllib.algorithms.ppo.ppo_catalog import PPOCatalog  # noqa: E402
from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule  # noqa: E402

import rlmodule_fast.rllib as rr  # noqa: E402
from rlmodule_fast.rllib import FastPPOTorchRLModule  # noqa: E402

RTOL = ATOL = 1e-5
OBS = gym.spaces.Box(-1.0, 1.0, (5,), np.float32)
DISCRETE = gym.spaces.Discrete(3)
BOX = gym.spaces.Box(-2.0, 2.0, (2,), np.float32)
MULTI = gym.spaces.MultiDiscrete([3, 2])
SMALL = {"fcnet_hiddens": [7, 6]}
CASES = {
    "mlp-shared-discrete": (DISCRETE, SMALL),
    "mlp-separate-discrete": (DISCRETE, {**SMALL, "vf_share_layers": False}),
    "mlp-separate-box": (BOX, {**SMALL, "vf_share_layers": False}),
    "mlp-shared-box-freestd-head3": (BOX, {**SMALL, "free_log_std": True, "head_fcnet_hiddens": [3]}),
    "lstm-shared-discrete": (DISCRETE, {**SMALL, "use_lstm": True, "lstm_cell_size": 8}),
    "lstm-separate-discrete": (DISCRETE, {**SMALL, "use_lstm": True, "lstm_cell_size": 8, "vf_share_layers": False}),
    "lstm-shared-box": (BOX, {**SMALL, "use_lstm": True, "lstm_cell_size": 8}),
    "mlp-separate-multidiscrete": (MULTI, {**SMALL, "vf_share_layers": False}),
}


def nested(fn, d):
    return {k: nested(fn, v) if isinstance(v, dict) else fn(v) for k, v in d.items()}


def close(got, want, what: str, tol: float = RTOL) -> None:
    if isinstance(want, dict):
        assert sorted(got) == sorted(want), f"{what}: keys {sorted(got)} != {sorted(want)}"
        for k in want:
            close(got[k], want[k], f"{what}[{k!r}]", tol)
        return
    got, want = torch.as_tensor(got).detach().float(), torch.as_tensor(want).detach().float()
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != RLlib's {tuple(want.shape)}"
    torch.testing.assert_close(got, want, rtol=tol, atol=tol, msg=lambda m: f"{what}: {m}")


def pair(name: str, *, inference_only: bool = False):
    """(RLlib's module, ours) with the same random weights."""
    act, cfg = CASES[name]
    kw = dict(observation_space=OBS, action_space=act, model_config=dict(cfg), catalog_class=PPOCatalog,
              inference_only=inference_only)
    rl, fast = DefaultPPOTorchRLModule(**kw), FastPPOTorchRLModule(**kw)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in rl.parameters():
            p.copy_(0.4 * torch.randn(p.shape, generator=gen))
    fast.set_state(rl.get_state())
    return rl, fast


def step_batch(module, recurrent: bool, B: int = 6, seed: int = 2) -> dict:
    """What RLlib's env-to-module connectors hand forward_exploration: obs [B, D] (LSTM: [B, 1, D]
    and state_in [B, 1, H])."""
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(B, 5, generator=gen)
    if not recurrent:
        return {"obs": obs}
    state = nested(lambda s: 0.5 * torch.randn((B, *s.shape), generator=gen), module.get_initial_state())
    return {"obs": obs[:, None], "state_in": state}


@pytest.mark.parametrize("name", sorted(CASES))
def test_fused_step_matches_rllib(name):
    rl, fast = pair(name)
    recurrent = "lstm" in name
    info = fast.fast_path_info()
    assert info["active"] and info["backend"] == "cpp", info
    batch = step_batch(rl, recurrent)
    with torch.no_grad():
        want = rl.forward_inference(dict(batch))
        got = fast.forward_inference(dict(batch))
        expl = fast.forward_exploration(dict(batch))
    assert fast.fast_path_info()["calls"] == 2
    close(got["action_dist_inputs"], want["action_dist_inputs"], f"{name} inference dist inputs")
    close(expl["action_dist_inputs"], want["action_dist_inputs"], f"{name} exploration dist inputs")
    if recurrent:
        close(got["state_out"], want["state_out"], f"{name} inference state_out")
        close(expl["state_out"], want["state_out"], f"{name} exploration state_out")
    dist = rl.get_inference_action_dist_cls().from_logits(want["action_dist_inputs"])
    close(got["actions"], dist.to_deterministic().sample(), f"{name} inference actions")
    # exploration: a sample of RLlib's distribution, its logp computed in the same call
    assert expl["actions"].shape == got["actions"].shape
    close(expl["action_logp"], dist.logp(expl["actions"]), f"{name} exploration logp", tol=1e-4)
    if isinstance(rl.action_space, gym.spaces.Discrete):
        assert expl["actions"].dtype == torch.int64
        assert 0 <= int(expl["actions"].min()) and int(expl["actions"].max()) < rl.action_space.n


@pytest.mark.parametrize("name", ["mlp-separate-discrete", "lstm-separate-discrete", "mlp-shared-box-freestd-head3"])
def test_synced_weights_are_seen_by_next_fused_step(name):
    """As an env runner gets the learner's weights each iteration: set_state (load_state_dict,
    an in-place copy) after the plan was built; the next fused step must use the new weights."""
    rl, fast = pair(name, inference_only=True)
    learner, _ = pair(name)  # a full module (with value function), as the learner holds
    recurrent = "lstm" in name
    batch = step_batch(rl, recurrent)
    with torch.no_grad():
        before = fast.forward_inference(dict(batch))["action_dist_inputs"]
        gen = torch.Generator().manual_seed(9)
        for p in learner.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
        state = learner.get_state(inference_only=True)  # what RLlib sends the env runners
        fast.set_state(state)
        rl.set_state(state)
        after = fast.forward_inference(dict(batch))["action_dist_inputs"]
        want = rl.forward_inference(dict(batch))["action_dist_inputs"]
    assert not torch.allclose(before, after), "weights changed but the fused step did not"
    close(after, want, f"{name} after sync")
    # an optimizer step on the module itself (in-place) is seen too
    opt = torch.optim.SGD(fast.parameters(), lr=0.5)
    for p in fast.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    rl.set_state(fast.get_state())
    with torch.no_grad():
        close(fast.forward_inference(dict(batch))["action_dist_inputs"],
              rl.forward_inference(dict(batch))["action_dist_inputs"], f"{name} after optimizer step")


def test_learner_path_is_rllib_torch():
    rl, fast = pair("mlp-separate-discrete")
    batch = {"obs": torch.randn(4, 5)}
    out = fast.forward_train(dict(batch))
    close(out["action_dist_inputs"], rl.forward_train(dict(batch))["action_dist_inputs"], "train")
    (out["action_dist_inputs"].sum() + fast.compute_values(dict(batch)).sum()).backward()
    assert all(p.grad is not None for p in fast.parameters())
    assert fast.fast_path_info()["calls"] == 0


def test_forced_torch_backend_runs_rllib_forward(monkeypatch):
    monkeypatch.setenv("RLMODULE_FAST_BACKEND", "torch")
    rl, fast = pair("mlp-shared-discrete")
    with torch.no_grad():
        out = fast.forward_exploration({"obs": torch.randn(3, 5)})
    assert "actions" not in out  # RLlib's GetActions connector samples, as for RLlib's module
    info = fast.fast_path_info()
    assert not info["active"] and "RLMODULE_FAST_BACKEND=torch" in info["reason"] and info["calls"] == 0


@pytest.mark.parametrize("env,model_config", [
    pytest.param("CartPole-v1", {"fcnet_hiddens": [8], "use_lstm": True, "lstm_cell_size": 16, "vf_share_layers": False},
                 id="CartPole-lstm-separate"),
    pytest.param("Pendulum-v1", {"fcnet_hiddens": [8], "free_log_std": True}, id="Pendulum-mlp-freestd"),
    pytest.param("Pendulum-v1", {"fcnet_hiddens": [8], "use_lstm": True, "lstm_cell_size": 16}, id="Pendulum-lstm"),
])
def test_env_runner_samples_through_fused_step(env, model_config):
    """RLlib's own SingleAgentEnvRunner (its connectors build the batches: obs, [B, 1, H] states,
    2 vectorised envs) samples with the fused step; the logp it records for each action is the
    logp of that action under the distribution it recorded."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

    config = (PPOConfig().environment(env).env_runners(num_envs_per_env_runner=2)
              .rl_module(rl_module_spec=RLModuleSpec(module_class=FastPPOTorchRLModule, model_config=model_config)))
    runner = SingleAgentEnvRunner(config=config, worker_index=1)
    try:
        episodes = runner.sample(num_timesteps=120, explore=True)
        info = runner.module.fast_path_info()
        assert info["active"] and info["calls"] >= 60, info
        dist_cls = runner.module.get_exploration_action_dist_cls()
        for ep in episodes:
            inputs = torch.as_tensor(np.asarray(ep.get_extra_model_outputs("action_dist_inputs")))
            logp = torch.as_tensor(np.asarray(ep.get_extra_model_outputs("action_logp")))
            actions = torch.as_tensor(np.asarray(ep.get_actions()))
            close(logp, dist_cls.from_logits(inputs).logp(actions), f"{env} recorded logp", tol=1e-4)
    finally:
        runner.stop()


def test_unsupported_layout_runs_rllib_forward_and_says_why():
    """An activation class (RLlib builds any callable; the fused step knows its named ones) ->
    RLlib's forward, one warning, fast_path_info() says why. (Layer norm is fused since issue 13.)"""
    kw = dict(observation_space=OBS, action_space=DISCRETE, catalog_class=PPOCatalog,
              model_config={**SMALL, "fcnet_activation": torch.nn.GELU})
    rl = DefaultPPOTorchRLModule(**kw)
    with pytest.warns(UserWarning, match="fcnet_activation"):
        fast = FastPPOTorchRLModule(**kw)
    fast.set_state(rl.get_state())
    batch = {"obs": torch.randn(3, 5)}
    with torch.no_grad():
        out = fast.forward_inference(dict(batch))
        close(out["action_dist_inputs"], rl.forward_inference(dict(batch))["action_dist_inputs"], "gelu")
    info = fast.fast_path_info()
    assert not info["active"] and "fcnet_activation" in info["reason"] and info["calls"] == 0, info


# --------------------------------------------------------------------------------------------
# RLlib's PPO on CartPole with our module class
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_session():
    import ray

    if ray.is_initialized():  # another module (or RLlib's build()) left a session running
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def test_ppo_cartpole_learns_with_fast_module(ray_session, tmp_path):
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    config = (
        PPOConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=1, num_envs_per_env_runner=1)
        .training(train_batch_size_per_learner=1000, minibatch_size=250, num_epochs=6, lr=1e-3)
        .rl_module(rl_module_spec=RLModuleSpec(module_class=FastPPOTorchRLModule,
                                               model_config={"fcnet_hiddens": [64, 64]}))
        .debugging(seed=0)
    )
    algo = config.build_algo()
    try:
        returns = []
        for _ in range(10):
            returns.append(algo.train()["env_runners"]["episode_return_mean"])
            if len(returns) >= 3 and returns[-1] > max(60.0, 2 * returns[0]):
                break
        # an untrained CartPole policy lasts ~20 steps; PPO with our env-runner step learns
        assert returns[-1] > max(60.0, 2 * returns[0]), f"mean returns per iteration: {returns}"

        # the remote env runner sampled through the fused step, with the learner's latest weights
        obs = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)

        def probe(runner):
            m = runner.module
            with torch.no_grad():
                fused = m.forward_inference({"obs": torch.from_numpy(obs)})
                ref = DefaultPPOTorchRLModule._forward_inference(m, {"obs": torch.from_numpy(obs)})
            return m.fast_path_info(), fused["action_dist_inputs"].numpy(), ref["action_dist_inputs"].numpy(), \
                {k: np.asarray(v) for k, v in m.get_state().items()}

        info, fused, ref, runner_state = algo.env_runner_group.foreach_env_runner(probe, local_env_runner=False)[0]
        assert info["active"] and info["calls"] >= sum(1 for _ in returns) * 1000, info
        np.testing.assert_allclose(fused, ref, rtol=RTOL, atol=ATOL)
        learner_state = algo.learner_group.get_state(components="learner/rl_module/default_policy")
        learner_state = learner_state["learner"]["rl_module"]["default_policy"]
        for k, v in runner_state.items():
            np.testing.assert_array_equal(v, learner_state[k], err_msg=f"env runner weight {k} != learner's")

        # the trained algorithm's checkpoint serves through rlmodule_fast, same outputs
        path = algo.save_to_path(tmp_path / "algo")
        ours = rr.load_rllib_checkpoint(path)
        with torch.no_grad():
            served = ours.forward_inference({"obs": torch.from_numpy(obs)})
        np.testing.assert_allclose(served["action_dist_inputs"].numpy(), ref, rtol=RTOL, atol=ATOL)
        assert pathlib.Path(path, "learner_group", "learner", "rl_module", "default_policy").is_dir()
    finally:
        algo.stop()

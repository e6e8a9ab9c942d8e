"""The examples of RLlib's RLModule documentation, run on rlmodule_fast.

``test_rllib_docstring_examples_verbatim`` is the text of the three examples in the
``RLModule`` API page of RLlib's new API stack (2.10-2.38: "Example for creating a sampling
loop", "Example for training", "Example for inference"), with only the import lines changed
(``ray.rllib...`` -> ``rlmodule_fast``). As on the page (a Sphinx ``testcode`` group), the three
blocks run one after the other in one namespace: the training block uses the ``obs`` of the
sampling loop, and the inference block the ``terminated`` and ``action_dist_class`` of the
sampling loop (so, exactly as on the page, its loop body does not run; the other tests run it).

The other tests run the same loops the way RLlib's env runners use a module (RLlib's
``GetActions`` connector): exploration samples from
``get_exploration_action_dist_cls().from_logits(...)``, inference from
``get_inference_action_dist_cls().from_logits(...).to_deterministic()``; on CartPole-v1,
Pendulum-v1 (continuous actions) and with ``use_lstm`` (state carried between steps,
``state_in`` batched from ``get_initial_state()`` to [B, 1, cell]).
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlmodule_fast as rf
from rlmodule_fast import RLModuleSpec
from rlmodule_fast.ppo import PPOCatalog, PPOTorchRLModule

pytestmark = pytest.mark.filterwarnings("ignore:Creating a tensor from a list of numpy.ndarrays")


def test_rllib_docstring_examples_verbatim():
    # ---- "Example for creating a sampling loop" -------------------------------------------
    # from ray.rllib.algorithms.ppo.torch.ppo_torch_rl_module import (
    #     PPOTorchRLModule
    # )
    # from ray.rllib.algorithms.ppo.ppo_catalog import PPOCatalog
    from rlmodule_fast.ppo import PPOTorchRLModule
    from rlmodule_fast.ppo import PPOCatalog
    from rlmodule_fast import RLModuleSpec
    import gymnasium as gym
    import torch

    env = gym.make("CartPole-v1")

    # Create a single agent RL module spec.
    module_spec = RLModuleSpec(
        module_class=PPOTorchRLModule,
        observation_space=env.observation_space,
        action_space=env.action_space,
        model_config_dict = {"hidden": [128, 128]},
        catalog_class = PPOCatalog,
    )
    module = module_spec.build()
    action_dist_class = module.get_inference_action_dist_cls()
    obs, info = env.reset()
    terminated = False

    while not terminated:
        fwd_ins = {"obs": torch.Tensor([obs])}
        fwd_outputs = module.forward_exploration(fwd_ins)
        # this can be either deterministic or stochastic distribution
        action_dist = action_dist_class.from_logits(
            fwd_outputs["action_dist_inputs"]
        )
        action = action_dist.sample()[0].numpy()
        obs, reward, terminated, truncated, info = env.step(action)

    # ---- "Example for training" ---------------------------------------------------------------
    from rlmodule_fast.ppo import PPOTorchRLModule
    from rlmodule_fast.ppo import PPOCatalog
    import gymnasium as gym
    import torch

    env = gym.make("CartPole-v1")

    # Create a single agent RL module spec.
    module_spec = RLModuleSpec(
        module_class=PPOTorchRLModule,
        observation_space=env.observation_space,
        action_space=env.action_space,
        model_config_dict = {"hidden": [128, 128]},
        catalog_class = PPOCatalog,
    )
    module = module_spec.build()

    fwd_ins = {"obs": torch.Tensor([obs])}
    fwd_outputs = module.forward_train(fwd_ins)
    # loss = compute_loss(fwd_outputs, fwd_ins)
    # update_params(module, loss)

    # ---- "Example for inference" --------------------------------------------------------------
    from rlmodule_fast.ppo import PPOTorchRLModule
    from rlmodule_fast.ppo import PPOCatalog
    import gymnasium as gym
    import torch

    env = gym.make("CartPole-v1")

    # Create a single agent RL module spec.
    module_spec = RLModuleSpec(
        module_class=PPOTorchRLModule,
        observation_space=env.observation_space,
        action_space=env.action_space,
        model_config_dict = {"hidden": [128, 128]},
        catalog_class = PPOCatalog,
    )
    module = module_spec.build()

    while not terminated:
        fwd_ins = {"obs": torch.Tensor([obs])}
        fwd_outputs = module.forward_inference(fwd_ins)
        # this can be either deterministic or stochastic distribution
        action_dist = action_dist_class.from_logits(
            fwd_outputs["action_dist_inputs"]
        )
        action = action_dist.sample()[0].numpy()
        obs, reward, terminated, truncated, info = env.step(action)

    # What the page leaves implicit, checked: the seed alias built 128-128, training outputs.
    assert module.get_state()["encoder.encoder.net.mlp.2.weight"].shape == (128, 128)
    assert fwd_outputs is not None


# ------------------------------------------------------------------------------------------------
# The same loops, run to the end, on more envs and configs
# ------------------------------------------------------------------------------------------------
ENVS = ["CartPole-v1", "Pendulum-v1"]
SMALL = {"fcnet_hiddens": [32, 32]}


def spec_kwargs(how: str, cfg: dict) -> dict:
    """model_config_dict= (RLlib 2.10-2.38) or model_config= (2.39+)."""
    return {"model_config_dict": cfg} if how == "model_config_dict" else {"model_config": cfg}


def build(env: gym.Env, cfg: dict, how: str = "model_config_dict") -> PPOTorchRLModule:
    return RLModuleSpec(
        module_class=PPOTorchRLModule,
        observation_space=env.observation_space,
        action_space=env.action_space,
        catalog_class=PPOCatalog,
        **spec_kwargs(how, cfg),
    ).build()


def batch_state(initial_state: dict, B: int) -> dict:
    """get_initial_state() ({"h": [1, cell], ...}, possibly nested) batched to [B, 1, cell]."""
    return {
        k: batch_state(v, B) if isinstance(v, dict) else torch.stack([torch.as_tensor(v)] * B)
        for k, v in initial_state.items()
    }


def check_action(env: gym.Env, action: np.ndarray) -> None:
    if isinstance(env.action_space, gym.spaces.Box):
        assert action.shape == env.action_space.shape and np.all(np.isfinite(action))
    else:
        assert env.action_space.contains(int(action)), action


def run_episode(env: gym.Env, module, *, explore: bool, max_steps: int = 500, seed: int = 0, time_axis: bool = False) -> dict:
    """One episode as RLlib's env runner drives a module; returns what it saw."""
    torch.manual_seed(seed)
    obs, info = env.reset(seed=seed)
    stateful = module.is_stateful()
    state = batch_state(module.get_initial_state(), 1) if stateful else None
    dist_cls = module.get_exploration_action_dist_cls() if explore else module.get_inference_action_dist_cls()
    seen = {"steps": 0, "return": 0.0, "obs": [], "dist_inputs": [], "actions": []}
    terminated = truncated = False
    while not (terminated or truncated) and seen["steps"] < max_steps:
        x = torch.as_tensor(np.array([obs])) if np.ndim(obs) == 0 else torch.Tensor(np.array([obs]))
        if time_axis:
            x = x[:, None]  # [B, 1, obs_dim]
        fwd_ins = {"obs": x}
        if stateful:
            fwd_ins["state_in"] = state
        with torch.no_grad():
            out = module.forward_exploration(fwd_ins) if explore else module.forward_inference(fwd_ins)
        dist_inputs = out["action_dist_inputs"]
        if time_axis:
            dist_inputs = dist_inputs[:, 0]
        action_dist = dist_cls.from_logits(dist_inputs)
        if not explore:
            action_dist = action_dist.to_deterministic()
        action = action_dist.sample()[0].numpy()
        check_action(env, action)
        if stateful:
            state = out["state_out"]
        seen["obs"].append(x)
        seen["dist_inputs"].append(dist_inputs)
        seen["actions"].append(action)
        # (FrozenLake indexes a dict with the action: a 0-d array is unhashable there)
        env_action = int(action) if isinstance(env.action_space, gym.spaces.Discrete) else action
        obs, reward, terminated, truncated, info = env.step(env_action)
        seen["steps"] += 1
        seen["return"] += float(reward)
    seen["state"] = state
    return seen


@pytest.mark.parametrize("how", ["model_config_dict", "model_config"])
@pytest.mark.parametrize("env_id", ENVS)
def test_sampling_loop(env_id, how):
    env = gym.make(env_id)
    module = build(env, {"hidden": [128, 128]} if how == "model_config_dict" else {"fcnet_hiddens": [128, 128]}, how)
    seen = run_episode(env, module, explore=True, max_steps=200)
    assert seen["steps"] > 0
    a_dim = 2 if env_id == "CartPole-v1" else 2 * env.action_space.shape[0]
    assert all(d.shape == (1, a_dim) and torch.isfinite(d).all() for d in seen["dist_inputs"])
    if env_id == "Pendulum-v1":
        assert seen["steps"] == 200  # truncated, never terminated


@pytest.mark.parametrize("env_id", ENVS)
def test_exploration_is_stochastic_and_outputs_are_consistent(env_id):
    env = gym.make(env_id)
    module = build(env, SMALL)
    obs = torch.Tensor(np.stack([env.observation_space.sample() for _ in range(64)]))
    with torch.no_grad():
        out = module.forward_exploration({"obs": obs})
    dist = module.get_exploration_action_dist_cls().from_logits(out["action_dist_inputs"])
    torch.manual_seed(0)
    a1 = dist.sample()
    a2 = dist.sample()
    assert not torch.equal(a1, a2), "exploration sampling drew the same actions twice for 64 obs"
    if "actions" in out:  # fused fast path: actions sampled with their logp
        assert out["actions"].shape == a1.shape
        assert "action_logp" in out
        torch.testing.assert_close(out["action_logp"], dist.logp(out["actions"]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("env_id", ENVS)
def test_inference_loop_is_deterministic(env_id):
    env = gym.make(env_id)
    module = build(env, SMALL)
    first = run_episode(env, module, explore=False, max_steps=60, seed=3)
    second = run_episode(env, module, explore=False, max_steps=60, seed=3)
    assert first["steps"] == second["steps"] > 0
    for a, b in zip(first["actions"], second["actions"]):
        np.testing.assert_array_equal(a, b)
    # to_deterministic(): argmax of the logits (categorical) / the mean (Gaussian).
    for d, a in zip(first["dist_inputs"], first["actions"]):
        if env_id == "CartPole-v1":
            assert int(a) == int(d[0].argmax())
        else:
            np.testing.assert_allclose(a, d[0, : env.action_space.shape[0]].numpy(), rtol=0, atol=0)


@pytest.mark.parametrize("env_id", ENVS)
def test_inference_fast_path_actions_match_to_deterministic(env_id):
    env = gym.make(env_id)
    module = build(env, SMALL)
    obs = torch.Tensor(np.stack([env.observation_space.sample() for _ in range(17)]))
    with torch.no_grad():
        out = module.forward_inference({"obs": obs})
    expected = module.get_inference_action_dist_cls().from_logits(out["action_dist_inputs"]).to_deterministic().sample()
    if "actions" in out:
        torch.testing.assert_close(out["actions"].to(expected.dtype), expected)
    # forward_inference equals the train forward's policy output for the same weights.
    train = module.forward_train({"obs": obs})
    torch.testing.assert_close(out["action_dist_inputs"], train["action_dist_inputs"].detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("env_id", ENVS)
def test_training_forward(env_id):
    env = gym.make(env_id)
    module = build(env, {"hidden": [128, 128]})
    obs, info = env.reset(seed=0)
    fwd_ins = {"obs": torch.Tensor([obs])}
    fwd_outputs = module.forward_train(fwd_ins)
    assert {"action_dist_inputs", "vf_preds", "embeddings"} <= set(fwd_outputs)
    assert fwd_outputs["vf_preds"].shape == (1,)
    # A batch of transitions, a PPO-style loss, gradients on every trainable parameter.
    obs = torch.Tensor(np.stack([env.observation_space.sample() for _ in range(32)]))
    out = module.forward_train({"obs": obs})
    dist = module.get_train_action_dist_cls().from_logits(out["action_dist_inputs"])
    actions = dist.sample()
    loss = -(dist.logp(actions) * torch.randn(32)).mean() + out["vf_preds"].pow(2).mean() - 0.01 * dist.entropy().mean()
    loss.backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert out["vf_preds"].shape == (32,)
    torch.testing.assert_close(module.compute_values({"obs": obs}), out["vf_preds"].detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("vf_share_layers", [True, False], ids=["shared", "separate"])
@pytest.mark.parametrize("time_axis", [True, False], ids=["obs-B1D", "obs-BD"])
@pytest.mark.parametrize("env_id", ENVS)
def test_lstm_loops_carry_state(env_id, time_axis, vf_share_layers):
    env = gym.make(env_id)
    cfg = {"fcnet_hiddens": [16], "use_lstm": True, "lstm_cell_size": 8, "vf_share_layers": vf_share_layers}
    module = build(env, cfg)
    assert module.is_stateful()
    init = module.get_initial_state()
    leaves = list(init.values()) if vf_share_layers else [v for part in init.values() for v in part.values()]
    assert all(tuple(v.shape) == (1, 8) for v in leaves)

    T = 25
    for explore in (True, False):
        seen = run_episode(env, module, explore=explore, max_steps=T, seed=1, time_axis=time_axis)
        state = seen["state"]
        flat = state if vf_share_layers else {f"{p}.{k}": v for p, s in state.items() for k, v in s.items()}
        assert all(tuple(v.shape) == (1, 1, 8) for v in flat.values()), {k: v.shape for k, v in flat.items()}
        assert any(v.abs().sum() > 0 for v in flat.values()), "state_out never left the initial zeros"

    # Stepping with state carried == one forward_train over the recorded sequence.
    steps = len(seen["obs"])
    seq = torch.cat([o if time_axis else o[:, None] for o in seen["obs"]], dim=1)  # [1, T, obs_dim]
    out = module.forward_train({"obs": seq, "state_in": batch_state(init, 1)})
    assert out["action_dist_inputs"].shape[:2] == (1, steps)
    stepped = torch.stack([d[0] for d in seen["dist_inputs"]])
    torch.testing.assert_close(out["action_dist_inputs"][0].detach(), stepped, rtol=1e-5, atol=1e-5)
    assert out["vf_preds"].shape == (1, steps)


def test_lstm_batched_envs():
    """B=4 CartPoles stepped together: state [4, 1, cell], per-env resets of the state."""
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1") for _ in range(4)])
    module = RLModuleSpec(
        module_class=PPOTorchRLModule,
        observation_space=envs.single_observation_space,
        action_space=envs.single_action_space,
        model_config_dict={"fcnet_hiddens": [16], "use_lstm": True, "lstm_cell_size": 8},
        catalog_class=PPOCatalog,
    ).build()
    init = batch_state(module.get_initial_state(), 4)
    state = init
    obs, _ = envs.reset(seed=0)
    dist_cls = module.get_exploration_action_dist_cls()
    for _ in range(30):
        with torch.no_grad():
            out = module.forward_exploration({"obs": torch.as_tensor(obs)[:, None], "state_in": state})
        actions = dist_cls.from_logits(out["action_dist_inputs"][:, 0]).sample().numpy()
        obs, rew, term, trunc, _ = envs.step(actions)
        done = torch.as_tensor(term | trunc)[:, None, None]
        state = {k: torch.where(done, init[k], v) for k, v in out["state_out"].items()}
        assert all(v.shape == (4, 1, 8) for v in state.values())


def test_newer_keyword_constructor():
    """RLlib 2.39+: the module built directly with keywords, model_config= a plain dict."""
    env = gym.make("CartPole-v1")
    module = PPOTorchRLModule(
        observation_space=env.observation_space,
        action_space=env.action_space,
        model_config={"fcnet_hiddens": [128, 128]},
        catalog_class=PPOCatalog,
    )
    seen = run_episode(env, module, explore=True, max_steps=50)
    assert seen["steps"] > 0
    assert module.get_state()["encoder.encoder.net.mlp.2.weight"].shape == (128, 128)


def test_seed_alias_equals_fcnet_hiddens():
    env = gym.make("CartPole-v1")
    a = build(env, {"hidden": [128, 128]})
    b = build(env, {"fcnet_hiddens": [128, 128]}, how="model_config")
    assert {k: v.shape for k, v in a.get_state().items()} == {k: v.shape for k, v in b.get_state().items()}
    with pytest.raises(ValueError):
        RLModuleSpec(
            module_class=PPOTorchRLModule, observation_space=env.observation_space,
            action_space=env.action_space, catalog_class=PPOCatalog,
            model_config_dict={"hidden": [8]}, model_config={"fcnet_hiddens": [16]},
        ).build()


def test_columns_match_rllib_names():
    assert rf.Columns.OBS == "obs"
    assert rf.Columns.ACTION_DIST_INPUTS == "action_dist_inputs"
    assert rf.Columns.STATE_IN == "state_in" and rf.Columns.STATE_OUT == "state_out"
    assert rf.Columns.VF_PREDS == "vf_preds" and rf.Columns.EMBEDDINGS == "embeddings"
    assert rf.DEFAULT_MODULE_ID == "default_policy"


# ------------------------------------------------------------------------------------------------
# What RLlib users also do with a module
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["numpy-f32", "tensor-f64", "numpy-f64"])
def test_obs_given_as_numpy_or_float64(kind):
    """Users hand env observations over directly (numpy, float64 from some envs)."""
    env = gym.make("CartPole-v1")
    module = build(env, SMALL)
    obs = np.stack([env.observation_space.sample() for _ in range(5)])
    ref = module.forward_inference({"obs": torch.from_numpy(obs.astype(np.float32))})["action_dist_inputs"]
    x = {"numpy-f32": obs.astype(np.float32), "tensor-f64": torch.from_numpy(obs.astype(np.float64)),
         "numpy-f64": obs.astype(np.float64)}[kind]
    for fwd in (module.forward_inference, module.forward_exploration, module.forward_train):
        out = fwd({"obs": x})["action_dist_inputs"]
        assert out.shape == ref.shape
        torch.testing.assert_close(out.detach().float(), ref.detach(), rtol=1e-5, atol=1e-5)


def test_discrete_observations_one_hot():
    """Discrete obs are given as integer indices (one-hot inside); a float tensor is refused
    with a ValueError (RLlib itself one-hots them in a connector before the module)."""
    env = gym.make("FrozenLake-v1")
    module = build(env, SMALL)
    assert module.get_state()["encoder.encoder.net.mlp.0.weight"].shape == (32, env.observation_space.n)
    seen = run_episode(env, module, explore=True, max_steps=100)
    assert seen["steps"] > 0
    out = module.forward_train({"obs": torch.tensor([0, 3, 15])})
    assert out["action_dist_inputs"].shape == (3, 4) and out["vf_preds"].shape == (3,)


def test_multidiscrete_actions():
    obs_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    act_space = gym.spaces.MultiDiscrete([3, 2])
    module = RLModuleSpec(module_class=PPOTorchRLModule, observation_space=obs_space, action_space=act_space,
                          model_config_dict=SMALL, catalog_class=PPOCatalog).build()
    obs = torch.Tensor(np.stack([obs_space.sample() for _ in range(6)]))
    with torch.no_grad():
        out = module.forward_exploration({"obs": obs})
    assert out["action_dist_inputs"].shape == (6, 5)
    actions = module.get_exploration_action_dist_cls().from_logits(out["action_dist_inputs"]).sample()
    assert actions.shape == (6, 2)
    assert all(act_space.contains(a.numpy().astype(np.int64)) for a in actions)
    det = module.get_inference_action_dist_cls().from_logits(out["action_dist_inputs"]).to_deterministic().sample()
    logits = out["action_dist_inputs"]
    torch.testing.assert_close(det.long(), torch.stack([logits[:, :3].argmax(-1), logits[:, 3:].argmax(-1)], -1))


@pytest.mark.parametrize("env_id", ENVS)
def test_batch_not_modified_and_outputs_not_aliased(env_id):
    env = gym.make(env_id)
    module = build(env, SMALL)
    obs = torch.Tensor(np.stack([env.observation_space.sample() for _ in range(4)]))
    batch = {"obs": obs}
    obs_copy = obs.clone()
    with torch.no_grad():
        first = module.forward_inference(batch)
        kept = {k: v.clone() for k, v in first.items() if isinstance(v, torch.Tensor)}
        module.forward_inference({"obs": obs + 1.0})
        module.forward_exploration({"obs": obs - 1.0})
    assert set(batch) == {"obs"} and torch.equal(batch["obs"], obs_copy)
    for k, v in kept.items():
        assert torch.equal(first[k], v), f"{k} was overwritten by a later call"


def test_lstm_state_in_not_modified():
    env = gym.make("CartPole-v1")
    module = build(env, {"fcnet_hiddens": [16], "use_lstm": True, "lstm_cell_size": 8})
    state = batch_state(module.get_initial_state(), 2)
    state = {k: v + 0.5 for k, v in state.items()}
    before = {k: v.clone() for k, v in state.items()}
    obs = torch.Tensor(np.stack([env.observation_space.sample() for _ in range(2)]))[:, None]
    with torch.no_grad():
        out1 = module.forward_exploration({"obs": obs, "state_in": state})
        kept = {k: v.clone() for k, v in out1["state_out"].items()}
        module.forward_exploration({"obs": obs, "state_in": out1["state_out"]})
    assert all(torch.equal(state[k], before[k]) for k in state)
    assert all(torch.equal(out1["state_out"][k], kept[k]) for k in kept), "state_out overwritten by the next step"


def test_as_multi_rl_module_forward():
    env = gym.make("CartPole-v1")
    module = build(env, SMALL)
    multi = module.as_multi_rl_module()
    assert rf.DEFAULT_MODULE_ID in multi and multi[rf.DEFAULT_MODULE_ID] is module
    obs = torch.Tensor(np.stack([env.observation_space.sample() for _ in range(3)]))
    out = multi.forward_inference({rf.DEFAULT_MODULE_ID: {"obs": obs}})
    torch.testing.assert_close(
        out[rf.DEFAULT_MODULE_ID]["action_dist_inputs"], module.forward_inference({"obs": obs})["action_dist_inputs"]
    )


def test_user_errors_name_the_problem():
    env = gym.make("CartPole-v1")
    module = build(env, SMALL)
    with pytest.raises(ValueError, match="obs"):
        module.forward_inference({"obs": torch.zeros(2, 5)})  # CartPole obs has 4 features
    with pytest.raises(ValueError, match="obs"):
        module.forward_exploration({"observations": torch.zeros(2, 4)})
    with pytest.raises(ValueError, match="fcnet_hidens"):
        build(env, {"fcnet_hidens": [8]})  # typo: RLlib ignores it silently, we do not
    lstm = build(env, {"fcnet_hiddens": [8], "use_lstm": True, "lstm_cell_size": 4})
    with pytest.raises(ValueError, match="state_in"):
        lstm.forward_inference({"obs": torch.zeros(2, 1, 4)})
    with pytest.raises(ValueError, match="state_in"):
        lstm.forward_inference({"obs": torch.zeros(2, 1, 4), "state_in": {"h": torch.zeros(2, 1, 5), "c": torch.zeros(2, 1, 4)}})


@pytest.mark.parametrize("env_id", ENVS)
def test_weight_updates_are_seen_by_the_next_step(env_id):
    """An optimizer step and set_state change what forward_inference/exploration compute."""
    env = gym.make(env_id)
    module = build(env, SMALL)
    env.observation_space.seed(0)
    obs = torch.Tensor(np.stack([env.observation_space.sample() for _ in range(8)]))
    optim = torch.optim.SGD(module.parameters(), lr=0.5)
    for _ in range(2):
        with torch.no_grad():
            before = module.forward_inference({"obs": obs})["action_dist_inputs"].clone()
        out = module.forward_train({"obs": obs})
        (out["action_dist_inputs"].pow(2).sum() + out["vf_preds"].sum()).backward()
        optim.step()
        optim.zero_grad()
        with torch.no_grad():
            after = module.forward_inference({"obs": obs})["action_dist_inputs"]
            after_expl = module.forward_exploration({"obs": obs})["action_dist_inputs"]
        want = module.forward_train({"obs": obs})["action_dist_inputs"].detach()
        assert not torch.allclose(before, after)
        torch.testing.assert_close(after, want, rtol=1e-4, atol=2e-5)  # fused float32 vs torch
        torch.testing.assert_close(after_expl, want, rtol=1e-4, atol=2e-5)
    other = build(env, SMALL)
    module.set_state(other.get_state())
    with torch.no_grad():
        torch.testing.assert_close(
            module.forward_inference({"obs": obs})["action_dist_inputs"],
            other.forward_inference({"obs": obs})["action_dist_inputs"], rtol=1e-5, atol=1e-5,
        )


@pytest.mark.parametrize("how", ["torch.manual_seed", "rf.manual_seed", "rf.manual_seed-then-torch.manual_seed"])
@pytest.mark.parametrize("env_id", ENVS)
def test_exploration_reproducible_under_seed(env_id, how):
    """torch.manual_seed(s) makes the whole loop reproducible, rf.manual_seed(s) the fused
    samplers, whichever was called before (users mix them: RLlib seeds torch, we seed rf).
    Each repetition starts from another seed in use, as a new run (or process) does: within one
    process, torch.manual_seed re-keys the fused stream when the seed changes (ops/cpp.py)."""
    env = gym.make(env_id)
    module = build(env, SMALL)
    obs = torch.Tensor(np.stack([env.observation_space.sample() for _ in range(16)]))
    seed = rf.manual_seed if how == "rf.manual_seed" else torch.manual_seed
    draws = []
    for _ in range(2):
        with torch.no_grad():  # whatever ran before: another seed, some draws
            rf.manual_seed(987654)
            module.forward_exploration({"obs": obs})
            if how == "rf.manual_seed-then-torch.manual_seed":
                rf.manual_seed(321)
                module.forward_exploration({"obs": obs})
        seed(123)
        with torch.no_grad():
            out = module.forward_exploration({"obs": obs})
        dist = module.get_exploration_action_dist_cls().from_logits(out["action_dist_inputs"])
        draws.append((out.get("actions"), dist.sample()))
    if draws[0][0] is not None:
        assert torch.equal(draws[0][0], draws[1][0]), f"fused exploration actions differ under the same {how}"
    if how != "rf.manual_seed":
        assert torch.equal(draws[0][1], draws[1][1])

"""PPO written against the public API only learns CartPole-v1.

Sampling: ``forward_exploration`` on a gymnasium vector env (the fused ``actions`` /
``action_logp`` when the module returns them, else a sample of
``get_exploration_action_dist_cls().from_logits(...)``, as RLlib's env runners do).
Learning: ``forward_train`` + the train distribution's ``logp`` / ``entropy`` + ``vf_preds``
for the clipped PPO loss, GAE(lambda) advantages. Passes when the mean return of the last 20
finished episodes reaches 150 within 100k env steps (fixed seed; training goes on to 200 or
100k steps, whichever first) and the learned policy, run greedily (``forward_inference`` +
``to_deterministic()``), averages >= 150 too.

Run as a script to try several seeds: ``python tests/test_ppo_learns.py 0 1 2``.
"""
from __future__ import annotations

import sys
import time
from collections import deque

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlmodule_fast as rf
from rlmodule_fast.ppo import PPOCatalog, PPOTorchRLModule

TARGET_RETURN = 150.0  # what the test asserts (training mean, and greedy evaluation)
STOP_RETURN = 200.0  # training stops here: a margin over the target for the greedy evaluation
MAX_ENV_STEPS = 100_000
SEED = 0

# Hyper-parameters (CleanRL-like, a bit more aggressive for speed).
NUM_ENVS = 8
ROLLOUT = 128  # steps per env per iteration -> 1024 transitions
EPOCHS = 4
MINIBATCH = 256
LR = 1e-3
GAMMA = 0.99
LAMBDA = 0.95
CLIP = 0.2
VF_COEF = 0.5
ENT_COEF = 0.0
MAX_GRAD_NORM = 0.5


def train_ppo(seed: int, max_env_steps: int = MAX_ENV_STEPS, target: float = STOP_RETURN) -> dict:
    """Train until the mean of the last 20 episode returns >= target (or max_env_steps);
    returns the final mean, the env steps used and the history."""
    torch.manual_seed(seed)
    rf.manual_seed(seed)
    np.random.seed(seed)
    envs = gym.vector.SyncVectorEnv(
        [lambda: gym.make("CartPole-v1") for _ in range(NUM_ENVS)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    module = rf.RLModuleSpec(
        module_class=PPOTorchRLModule,
        observation_space=envs.single_observation_space,
        action_space=envs.single_action_space,
        model_config_dict={"fcnet_hiddens": [64, 64], "vf_share_layers": False},
        catalog_class=PPOCatalog,
    ).build()
    optim = torch.optim.Adam(module.parameters(), lr=LR, eps=1e-5)
    explore_dist = module.get_exploration_action_dist_cls()
    train_dist = module.get_train_action_dist_cls()

    obs, _ = envs.reset(seed=seed)
    ep_ret = np.zeros(NUM_ENVS)
    finished: deque = deque(maxlen=20)
    history = []
    steps = 0
    while steps < max_env_steps:
        # ---- rollout ---------------------------------------------------------------------------
        b_obs = np.zeros((ROLLOUT, NUM_ENVS, 4), np.float32)
        b_act = np.zeros((ROLLOUT, NUM_ENVS), np.int64)
        b_logp = np.zeros((ROLLOUT, NUM_ENVS), np.float32)
        b_rew = np.zeros((ROLLOUT, NUM_ENVS), np.float32)
        b_term = np.zeros((ROLLOUT, NUM_ENVS), np.float32)
        b_trunc = np.zeros((ROLLOUT, NUM_ENVS), bool)
        b_final_obs = np.zeros((ROLLOUT, NUM_ENVS, 4), np.float32)
        for t in range(ROLLOUT):
            b_obs[t] = obs
            with torch.no_grad():
                out = module.forward_exploration({"obs": torch.from_numpy(np.asarray(obs, np.float32))})
            if "actions" in out and "action_logp" in out:
                actions, logp = out["actions"], out["action_logp"]
            else:
                dist = explore_dist.from_logits(out["action_dist_inputs"])
                actions = dist.sample()
                logp = dist.logp(actions)
            actions = actions.numpy()
            b_act[t], b_logp[t] = actions, logp.numpy()
            obs, rew, term, trunc, info = envs.step(actions)
            b_rew[t], b_term[t], b_trunc[t] = rew, term, trunc & ~term
            ep_ret += rew
            done = term | trunc
            if done.any():
                final = np.stack(info["final_obs"][done])
                b_final_obs[t, done] = final
                finished.extend(ep_ret[done].tolist())
                ep_ret[done] = 0.0
        steps += ROLLOUT * NUM_ENVS
        mean_ret = float(np.mean(finished)) if finished else 0.0
        history.append((steps, mean_ret))
        if len(finished) >= 20 and mean_ret >= target:
            break

        # ---- values and GAE ----------------------------------------------------------------------
        with torch.no_grad():
            flat_obs = torch.from_numpy(b_obs.reshape(-1, 4))
            values = module.forward_train({"obs": flat_obs})["vf_preds"].reshape(ROLLOUT, NUM_ENVS).numpy()
            last_v = module.compute_values({"obs": torch.from_numpy(np.asarray(obs, np.float32))}).numpy()
            # Truncated episodes bootstrap from the value of their final observation.
            trunc_v = np.zeros((ROLLOUT, NUM_ENVS), np.float32)
            if b_trunc.any():
                trunc_v[b_trunc] = module.compute_values({"obs": torch.from_numpy(b_final_obs[b_trunc])}).numpy()
        adv = np.zeros((ROLLOUT, NUM_ENVS), np.float32)
        gae = np.zeros(NUM_ENVS, np.float32)
        for t in reversed(range(ROLLOUT)):
            done = np.maximum(b_term[t], b_trunc[t])
            next_v = last_v if t == ROLLOUT - 1 else values[t + 1]
            next_v = np.where(b_trunc[t], trunc_v[t], next_v * (1.0 - done))
            delta = b_rew[t] + GAMMA * next_v - values[t]
            gae = delta + GAMMA * LAMBDA * (1.0 - done) * gae
            adv[t] = gae
        returns = adv + values

        # ---- PPO update ----------------------------------------------------------------------------
        n = ROLLOUT * NUM_ENVS
        t_obs = torch.from_numpy(b_obs.reshape(n, 4))
        t_act = torch.from_numpy(b_act.reshape(n))
        t_logp = torch.from_numpy(b_logp.reshape(n))
        t_adv = torch.from_numpy(adv.reshape(n))
        t_ret = torch.from_numpy(returns.reshape(n))
        for _ in range(EPOCHS):
            perm = torch.randperm(n)
            for i in range(0, n, MINIBATCH):
                idx = perm[i : i + MINIBATCH]
                fwd = module.forward_train({"obs": t_obs[idx]})
                dist = train_dist.from_logits(fwd["action_dist_inputs"])
                ratio = torch.exp(dist.logp(t_act[idx]) - t_logp[idx])
                a = t_adv[idx]
                a = (a - a.mean()) / (a.std() + 1e-8)
                pi_loss = -torch.min(a * ratio, a * torch.clamp(ratio, 1 - CLIP, 1 + CLIP)).mean()
                vf_loss = (fwd["vf_preds"] - t_ret[idx]).pow(2).mean()
                loss = pi_loss + VF_COEF * vf_loss - ENT_COEF * dist.entropy().mean()
                optim.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(module.parameters(), MAX_GRAD_NORM)
                optim.step()
    envs.close()
    return {"steps": steps, "mean_return": history[-1][1], "history": history, "module": module}


def evaluate(module, seed: int, episodes: int = 10) -> float:
    """Mean return of ``episodes`` greedy episodes: forward_inference + to_deterministic()."""
    envs = gym.vector.SyncVectorEnv(
        [lambda: gym.make("CartPole-v1") for _ in range(episodes)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    dist_cls = module.get_inference_action_dist_cls()
    obs, _ = envs.reset(seed=seed + 1000)
    total = np.zeros(episodes)
    running = np.ones(episodes, bool)
    while running.any():
        with torch.no_grad():
            out = module.forward_inference({"obs": torch.from_numpy(np.asarray(obs, np.float32))})
        actions = dist_cls.from_logits(out["action_dist_inputs"]).to_deterministic().sample().numpy()
        obs, rew, term, trunc, _ = envs.step(actions)
        total += rew * running
        running &= ~(term | trunc)
    envs.close()
    return float(total.mean())


@pytest.fixture
def one_thread():
    """Small nets: one intra-op thread is fastest; restore the caller's setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_ppo_learns_cartpole(one_thread):
    result = train_ppo(SEED)
    assert result["mean_return"] >= TARGET_RETURN, (
        f"PPO reached mean return {result['mean_return']:.1f} after {result['steps']} env steps "
        f"(target {TARGET_RETURN}); history (steps, mean of last 20 returns): {result['history']}"
    )
    assert result["steps"] <= MAX_ENV_STEPS
    # The learned policy, run greedily (forward_inference + to_deterministic), is good too.
    greedy = evaluate(result["module"], SEED)
    assert greedy >= TARGET_RETURN, f"greedy mean return {greedy:.1f} < {TARGET_RETURN}"


if __name__ == "__main__":
    torch.set_num_threads(1)
    for s in [int(a) for a in sys.argv[1:]] or [0, 1, 2]:
        t0 = time.perf_counter()
        r = train_ppo(s)
        greedy = evaluate(r["module"], s)
        print(f"seed {s}: mean return {r['mean_return']:.1f} after {r['steps']} env steps, "
              f"greedy {greedy:.1f}, {time.perf_counter() - t0:.1f} s")
